//! A small blocking HTTP client over `wasi:http`, with timeouts that never
//! outlive the attempt. Requests reach only origins the step grants in
//! `allow.http`; others fail with "HTTP request denied".

use std::time::Duration;

use wstd::http::{Body, Client, Request};
pub use wstd::http::{Method, StatusCode};

use crate::Failure;

/// A response: status, headers (lower-case names) and the body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Whether a request answered with `status` may succeed if sent again: 408,
/// 429 and every 5xx. The one place every sample plugin asks.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

impl Response {
    /// The failure a non-success response means: retryable for
    /// [`is_retryable`] statuses (honouring `Retry-After`), fatal otherwise.
    pub fn failure(&self, message: String) -> Failure {
        if !is_retryable(self.status) {
            return Failure::fatal(message);
        }
        match self.header("retry-after").and_then(retry_after) {
            Some(after) => Failure::retry_after(message, after),
            None => Failure::retryable(message),
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub message: String,
    /// The runner refused the request: no `allow.http` grant for its origin.
    pub denied: bool,
}

impl From<SendError> for Failure {
    fn from(e: SendError) -> Failure {
        if e.denied {
            Failure::fatal(e.message)
        } else {
            Failure::retryable(e.message)
        }
    }
}

/// Sends one request and reads the whole response, all within `timeout`.
pub fn send(
    method: Method,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Response, SendError> {
    let fail = |message: String| SendError {
        message,
        denied: false,
    };
    let mut request = Request::builder().method(method.clone()).uri(url);
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    // Send the length rather than a chunked body: object stores (S3
    // presigned PUTs among them) refuse uploads without it.
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        request = request.header("content-length", body.len().to_string());
    }
    let request = request
        .body(Body::from(body))
        .map_err(|e| fail(format!("invalid request to {url}: {e}")))?;
    let mut client = Client::new();
    client.set_connect_timeout(timeout);
    client.set_first_byte_timeout(timeout);
    client.set_between_bytes_timeout(timeout);
    wstd::runtime::block_on(async move {
        let response = client.send(request).await.map_err(|e| {
            let code = e.downcast_ref::<wstd::http::ErrorCode>();
            let denied = matches!(code, Some(wstd::http::ErrorCode::HttpRequestDenied));
            let what = match code {
                Some(code) => describe(code),
                None => format!("{e:#}"),
            };
            SendError {
                message: if denied {
                    format!("{method} {url} was denied: grant its origin in allow.http")
                } else {
                    format!("{method} {url} failed: {what}")
                },
                denied,
            }
        })?;
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = response.into_body();
        let body = body
            .contents()
            .await
            .map_err(|e| {
                fail(format!(
                    "{method} {url}: reading the response failed: {e:#}"
                ))
            })?
            .to_vec();
        Ok(Response {
            status,
            headers,
            body,
        })
    })
}

fn describe(code: &wstd::http::ErrorCode) -> String {
    use wstd::http::ErrorCode as E;
    match code {
        E::ConnectionRefused => "connection refused".into(),
        E::ConnectionTimeout => "timed out connecting".into(),
        E::ConnectionReadTimeout | E::HttpResponseTimeout => {
            "timed out waiting for the response".into()
        }
        E::ConnectionTerminated => "the connection was closed".into(),
        E::DnsError(_) => "the host name does not resolve".into(),
        E::DestinationNotFound => "destination not found".into(),
        E::TlsCertificateError => "TLS certificate rejected".into(),
        other => format!("{other:?}"),
    }
}

/// Parses a `Retry-After` header: seconds (`"3"`). HTTP dates are not
/// honoured (a pod's clock and a server's rarely agree to the second).
pub fn retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                is_retryable(StatusCode::from_u16(code).expect("status")),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 409, 412] {
            assert!(
                !is_retryable(StatusCode::from_u16(code).expect("status")),
                "{code}"
            );
        }
    }

    #[test]
    fn failure_honours_retry_after() {
        let response = |code: u16, headers: Vec<(String, String)>| Response {
            status: StatusCode::from_u16(code).expect("status"),
            headers,
            body: Vec::new(),
        };
        let f = response(429, vec![("retry-after".into(), "3".into())]).failure("busy".into());
        assert!(f.retryable);
        assert_eq!(f.retry_after_ms, Some(3000));
        let f = response(404, vec![("retry-after".into(), "3".into())]).failure("gone".into());
        assert!(!f.retryable);
    }
}
