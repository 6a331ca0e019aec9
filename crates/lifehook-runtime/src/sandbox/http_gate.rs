//! The outbound HTTP gate: a request leaves only when one of the step's
//! `allow.http` grants matches its origin, and never with timeouts beyond the
//! attempt's deadline. wasi-http calls [`HttpGate::send_request`] for every
//! request a plugin sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lifehook_manifest::{HttpGrant, Scheme};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::sandbox::denials::Denials;
use crate::sandbox::http_send::{SendError, Timeouts};
use crate::sandbox::quotas::StepQuotas;
use crate::tls::TlsClient;

/// Lets a request out only when a grant allows its origin, and never with
/// timeouts beyond the attempt's deadline.
pub(crate) struct HttpGate {
    pub(crate) grants: Arc<[HttpGrant]>,
    /// Beside each grant, its TLS client when the grant has TLS settings of
    /// its own (read when the step started); `None` for the others, whose
    /// `https://` requests trust the public web roots.
    pub(crate) tls: Arc<[Option<Arc<TlsClient>>]>,
    /// The attempt's deadline: every timeout of a request is capped by it,
    /// so a hanging server costs the step its own time and no more.
    pub(crate) deadline: Instant,
    pub(crate) denials: Denials,
    pub(crate) caps: StepQuotas,
    /// Requests sent whose connection has not ended yet.
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// The step's span as a W3C `traceparent`, added to every request
    /// that does not carry one of its own.
    pub(crate) traceparent: Option<http::HeaderValue>,
}

/// Counts one request in flight until dropped (when its connection ends,
/// or when it fails).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

/// `scheme://authority` of a request, as a grant would write it.
fn origin_of(uri: &http::Uri) -> String {
    match uri.authority() {
        Some(a) => format!("{}://{a}", uri.scheme_str().unwrap_or("http")),
        None => uri.to_string(),
    }
}

impl HttpGate {
    /// Whether a grant allows `scheme://host:port`: `None` when none does,
    /// else the TLS client of an allowing grant with TLS settings of its
    /// own, if one has them (it wins over the others: a plain
    /// `"https://*.svc"` beside a table for one service must not take that
    /// service's CA away).
    fn allowing(&self, scheme: Scheme, host: &str, port: u16) -> Option<Option<Arc<TlsClient>>> {
        let mut allowing = self
            .grants
            .iter()
            .zip(self.tls.iter())
            .filter(|(g, _)| g.allows(scheme, host, port))
            .map(|(_, tls)| tls)
            .peekable();
        allowing.peek()?;
        Some(allowing.find_map(Clone::clone))
    }
}

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        // wasi-http's own sending future is replaced by ours below, which
        // sends with capped timeouts and counts the request in flight.
        drop(fut);
        // The origin is judged as the URI says it (scheme, host, port; the
        // default port when none is written), so `http://a` and `http://a:80`
        // are one origin, and a host header cannot change where it goes.
        let uri = request.uri();
        let scheme = uri.scheme_str().and_then(Scheme::parse);
        let host = uri.host().unwrap_or_default();
        let allowed = scheme.and_then(|scheme| {
            let port = uri.port_u16().unwrap_or(scheme.default_port());
            self.allowing(scheme, host, port).map(|own| (scheme, own))
        });
        // A denial names the origin to grant, ready to paste: that is what
        // the author needs, not wasi-http's error code.
        let Some((scheme, own_tls)) = allowed else {
            let origin = origin_of(uri);
            self.denials.record(
                format!("HTTP {} {origin}{}", request.method(), uri.path()),
                format!("allow.http = [\"{origin}\"]"),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        // `max-http` bounds requests in flight, not in all: a poll loop may
        // send many, one after another, but not open them all at once.
        let max = self.caps.max_http;
        let counted = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !counted {
            self.caps.reached(
                "max-http",
                max.to_string(),
                &format!("sending {} {}", request.method(), uri),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
        }
        let in_flight = InFlight(self.in_flight.clone());
        // Only a TLS failure's denial names it.
        let origin = (scheme == Scheme::Https).then(|| origin_of(uri));
        if let Some(traceparent) = &self.traceparent
            && !request.headers().contains_key("traceparent")
        {
            request
                .headers_mut()
                .insert("traceparent", traceparent.clone());
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let cap = |t: Option<Duration>| t.map_or(left, |t| t.min(left));
        let timeouts = Timeouts {
            connect: cap(options.and_then(|o| o.connect_timeout)),
            first_byte: cap(options.and_then(|o| o.first_byte_timeout)),
            between_bytes: cap(options.and_then(|o| o.between_bytes_timeout)),
        };
        let tls =
            (scheme == Scheme::Https).then(|| own_tls.unwrap_or_else(crate::tls::public_roots));
        let denials = self.denials.clone();
        Box::new(async move {
            let sent = crate::sandbox::http_send::send(request, timeouts, tls.clone()).await;
            let (response, io) = match (sent, tls) {
                (Ok(sent), _) => sent,
                (Err(SendError::Tls(e)), Some(client)) => {
                    let origin = origin.unwrap_or_default();
                    denials.record_tls(&origin, &client.explain(&e, &origin));
                    return Err(crate::tls::wasi_http_error(&e));
                }
                (Err(SendError::Tls(_)), None) => {
                    return Err(wasmtime_wasi_http::Error::TlsProtocolError);
                }
                (Err(SendError::Http(e)), _) => return Err(e),
            };
            // The request stays in flight until its connection ends.
            let io = async move {
                let result = io.await;
                drop(in_flight);
                result
            };
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}
