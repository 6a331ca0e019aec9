//! One OTLP/HTTP export: a protobuf body POSTed on a connection of its
//! own (a hook exports once and exits: there is nothing to pool).

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;

/// The most of an error answer's body quoted in the warning.
const QUOTED: usize = 200;

/// POSTs `body` to `url` with `headers`; why it failed, if it did.
pub async fn post(url: &str, headers: &[(String, String)], body: Vec<u8>) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let authority = uri.authority().ok_or("the URL names no host")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot speak HTTP: {e}"))?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::post(path)
        .header(HOST, authority.as_str())
        .header(CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            request.headers_mut().insert(name, value);
        }
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // Only the start is quoted, so only that much is read: a collector
    // answering a huge error body costs no memory.
    let body = http_body_util::Limited::new(response.into_body(), QUOTED * 4)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let quoted: String = String::from_utf8_lossy(&body)
        .chars()
        .take(QUOTED)
        .collect();
    Err(format!(
        "answered {status}{}",
        if quoted.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", quoted.trim())
        }
    ))
}
