//! `[telemetry]`: where traces and metrics go, checked so that a typo in
//! an endpoint is an error at `check`, not a silent loss at shutdown.

use toml::Spanned;

use super::Resolver;
use crate::pipeline::Telemetry;
use crate::schema::RawTelemetry;

impl Resolver<'_> {
    pub(super) fn telemetry(&mut self, raw: &RawTelemetry) -> Telemetry {
        let endpoint = |r: &mut Self, value: &Option<Spanned<String>>| {
            let value = value.as_ref()?;
            let url = r.text(value)?;
            match Telemetry::check_endpoint(&url) {
                Ok(()) => Some(url),
                Err(why) => {
                    r.problem(value, format!("endpoint {url:?} {why}"), Some(
                        "write the collector's OTLP/HTTP address, like \"http://otel-collector.observability:4318\"".into(),
                    ));
                    None
                }
            }
        };
        let base = endpoint(self, &raw.endpoint);
        let traces = endpoint(self, &raw.traces_endpoint);
        let metrics = endpoint(self, &raw.metrics_endpoint);
        let mut headers = Vec::new();
        for (name, value) in &raw.headers {
            let Some(text) = self.text(value) else {
                continue;
            };
            match Telemetry::check_header(name, &text) {
                Ok(()) => headers.push((name.to_ascii_lowercase(), text)),
                Err(why) => self.problem(
                    value,
                    format!("telemetry header {name:?} {why}"),
                    Some("header names are letters, digits and `-`; values are one line".into()),
                ),
            }
        }
        let service_name = raw.service_name.as_ref().and_then(|s| self.text(s));
        Telemetry {
            endpoint: base,
            traces_endpoint: traces,
            metrics_endpoint: metrics,
            headers,
            service_name,
            propagate: raw.propagate,
            enabled: raw.enabled,
        }
    }
}
