//! Where telemetry goes: the pipeline's `[telemetry]` table over the
//! standard `OTEL_*` variables, and the resource every export describes.

use lifehook_manifest::Telemetry;

/// What a run exports, and where.
#[derive(Debug, Clone)]
pub struct Config {
    /// The OTLP/HTTP traces URL, when traces are exported.
    pub traces: Option<String>,
    /// The OTLP/HTTP metrics URL, when metrics are exported.
    pub metrics: Option<String>,
    /// Headers of every export.
    pub headers: Vec<(String, String)>,
    /// The resource's attributes, `service.name` first.
    pub resource: Vec<(String, String)>,
}

/// The downward-API variables the examples and `inject` set, and the
/// resource attributes they become (`OTEL_RESOURCE_ATTRIBUTES` cannot be
/// built from the downward API, so lifehook reads them itself).
const KUBERNETES: [(&str, &str); 5] = [
    ("POD_NAME", "k8s.pod.name"),
    ("POD_NAMESPACE", "k8s.namespace.name"),
    ("POD_UID", "k8s.pod.uid"),
    ("NODE_NAME", "k8s.node.name"),
    ("CONTAINER_NAME", "k8s.container.name"),
];

impl Config {
    /// The configuration of a run of a pipeline with `file`'s
    /// `[telemetry]` table; `None` when nothing is exported. `env` reads a
    /// variable (the process's, in use).
    pub fn new(file: &Telemetry, env: &dyn Fn(&str) -> Option<String>) -> Option<Config> {
        let flag = |name: &str| env(name).map(|v| v.trim().to_ascii_lowercase());
        if flag("OTEL_SDK_DISABLED").as_deref() == Some("true") || file.enabled == Some(false) {
            return None;
        }
        let signal = |path: &str, whole_file: &Option<String>, whole_env: &str, off: &str| {
            if flag(off).as_deref() == Some("none") {
                return None;
            }
            let from_file = whole_file
                .clone()
                .or_else(|| file.endpoint.as_ref().map(|base| join(base, path)));
            if from_file.is_some() {
                return from_file;
            }
            let (url, var) = match env(whole_env) {
                Some(url) => (url, whole_env),
                None => (
                    join(&env("OTEL_EXPORTER_OTLP_ENDPOINT")?, path),
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                ),
            };
            match Telemetry::check_endpoint(&url) {
                Ok(()) => Some(url),
                Err(why) => {
                    tracing::warn!("${var} = {url:?} {why}; not exporting to it");
                    None
                }
            }
        };
        let traces = signal(
            "v1/traces",
            &file.traces_endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_TRACES_EXPORTER",
        );
        let metrics = signal(
            "v1/metrics",
            &file.metrics_endpoint,
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_METRICS_EXPORTER",
        );
        if traces.is_none() && metrics.is_none() {
            return None;
        }
        let mut headers = env("OTEL_EXPORTER_OTLP_HEADERS")
            .map(|h| pairs(&h))
            .unwrap_or_default();
        headers.retain(|(k, v)| Telemetry::check_header(k, v).is_ok());
        for (k, v) in &file.headers {
            headers.retain(|(have, _)| !have.eq_ignore_ascii_case(k));
            headers.push((k.clone(), v.clone()));
        }
        Some(Config {
            traces,
            metrics,
            headers,
            resource: resource(file, env),
        })
    }
}

/// The resource: `service.name` (the file's, `OTEL_SERVICE_NAME`, the
/// one in `OTEL_RESOURCE_ATTRIBUTES`, or `lifehook`), `service.version`,
/// the Kubernetes attributes from the downward-API variables, then
/// `OTEL_RESOURCE_ATTRIBUTES` (which wins over those).
fn resource(file: &Telemetry, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let given = env("OTEL_RESOURCE_ATTRIBUTES")
        .map(|a| pairs(&a))
        .unwrap_or_default();
    let named = |key: &str| given.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let service = file
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME").filter(|s| !s.is_empty()))
        .or_else(|| named("service.name"))
        .unwrap_or_else(|| "lifehook".into());
    let mut out = vec![
        ("service.name".to_owned(), service),
        (
            "service.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ];
    for (var, key) in KUBERNETES {
        if let Some(value) = env(var).filter(|v| !v.is_empty()) {
            out.push((key.to_owned(), value));
        }
    }
    for (k, v) in given {
        if k == "service.name" {
            continue;
        }
        out.retain(|(have, _)| *have != k);
        out.push((k, v));
    }
    out
}

/// `base` with the signal's path: `http://c:4318` + `v1/traces`.
fn join(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// `k=v,k2=v2` as the OTel variables write lists (values
/// percent-encoded); malformed entries are left out.
fn pairs(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let (k, v) = (k.trim(), percent_decode(v.trim()));
            (!k.is_empty()).then(|| (k.to_owned(), v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)], file: &Telemetry) -> Option<Config> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::new(file, &|name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn nothing_is_exported_unless_asked() {
        assert!(with(&[], &Telemetry::default()).is_none());
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")];
        let c = with(&on, &Telemetry::default()).expect("on");
        assert_eq!(c.traces.as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(c.metrics.as_deref(), Some("http://c:4318/v1/metrics"));
        let off = [on[0], ("OTEL_SDK_DISABLED", "TRUE")];
        assert!(with(&off, &Telemetry::default()).is_none());
        let no_metrics = [on[0], ("OTEL_METRICS_EXPORTER", "none")];
        assert!(
            with(&no_metrics, &Telemetry::default())
                .expect("on")
                .metrics
                .is_none()
        );
        let bad = [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")];
        assert!(with(&bad, &Telemetry::default()).is_none());
    }

    #[test]
    fn the_file_wins_over_the_variables_and_signals_over_the_base() {
        let file = Telemetry {
            endpoint: Some("http://file:4318".into()),
            headers: vec![("x-tenant".into(), "file".into())],
            service_name: Some("checkout-hooks".into()),
            propagate: Some(false),
            ..Telemetry::default()
        };
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:9/m"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-tenant=env,authorization=Bearer%20abc",
            ),
            ("OTEL_SERVICE_NAME", "env-name"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,k8s.pod.name=given",
            ),
            ("POD_NAME", "web-0"),
            ("POD_NAMESPACE", "shop"),
        ];
        let c = with(&vars, &file).expect("on");
        assert_eq!(c.traces.as_deref(), Some("http://file:4318/v1/traces"));
        assert_eq!(c.metrics.as_deref(), Some("http://file:4318/v1/metrics"));
        assert_eq!(
            c.headers,
            vec![
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-tenant".to_owned(), "file".to_owned()),
            ]
        );
        let get = |k: &str| {
            c.resource
                .iter()
                .find(|(have, _)| have == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            c.resource[0],
            ("service.name".into(), "checkout-hooks".into())
        );
        assert_eq!(get("k8s.pod.name"), Some("given"));
        assert_eq!(get("k8s.namespace.name"), Some("shop"));
        assert_eq!(get("deployment.environment"), Some("prod"));
        let env_only = with(&vars, &Telemetry::default()).expect("on");
        assert_eq!(env_only.metrics.as_deref(), Some("http://metrics:9/m"));
        assert_eq!(env_only.resource[0].1, "env-name");
    }
}
