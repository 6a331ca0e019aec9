//! Sends one granted HTTP request: TCP, then TLS with the grant's own
//! configuration for `https://`, then HTTP/1.1, each under the timeouts the
//! gate capped. wasi-http's default sender trusts only the public web roots
//! and cannot present a client certificate; this one takes the grant's
//! [`TlsClient`], and hands a TLS failure back as a rustls error the gate
//! explains in the grant's terms.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

use crate::tls::{TlsClient, rustls_cause};

/// The three timeouts of a request, already capped by the deadline.
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) first_byte: Duration,
    pub(crate) between_bytes: Duration,
}

/// Why a request could not be sent.
pub(crate) enum SendError {
    /// A TLS failure: the handshake, or an alert the server sent right
    /// after it (TLS 1.3 servers check the client certificate then).
    Tls(rustls::Error),
    /// Anything else, as wasi-http reports it to the plugin.
    Http(Error),
}

impl From<Error> for SendError {
    fn from(e: Error) -> Self {
        SendError::Http(e)
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// What [`send`] returns: the response, and the connection's own future,
/// which ends when the connection does.
pub(crate) type Sent = (
    http::Response<WasiBody>,
    Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>,
);

/// Sends `request` to its URI's authority; `tls` is the grant's client for
/// an `https://` request, `None` for plain HTTP.
pub(crate) async fn send(
    mut request: http::Request<WasiBody>,
    timeouts: Timeouts,
    tls: Option<Arc<TlsClient>>,
) -> Result<Sent, SendError> {
    use http_body_util::BodyExt as _;
    let uri = request.uri();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let bare_host = uri
        .host()
        .ok_or(Error::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::time::timeout(
        timeouts.connect,
        TcpStream::connect((bare_host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Connect)?;
    let stream: Box<dyn Stream> = match &tls {
        None => Box::new(tcp),
        Some(client) => {
            let name = match bare_host.parse::<std::net::IpAddr>() {
                Ok(ip) => ServerName::from(ip),
                Err(_) => ServerName::try_from(bare_host.clone())
                    .map_err(|_| Error::HttpRequestUriInvalid)?,
            };
            let connector = tokio_rustls::TlsConnector::from(client.config.clone());
            let handshake = tokio::time::timeout(timeouts.connect, connector.connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?;
            Box::new(handshake.map_err(|e| tls_or(e, Error::Tls))?)
        }
    };
    let (mut sender, conn) = tokio::time::timeout(
        timeouts.connect,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::from)?;
    // The request line carries the path only; the authority went into the
    // connection (no proxy here).
    let path = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<http::Uri>()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    *request.uri_mut() = path;
    let mut conn = Box::pin(conn);
    let mut answer = Box::pin(tokio::time::timeout(
        timeouts.first_byte,
        sender.send_request(request),
    ));
    // The response needs the connection driven while it is awaited; the
    // connection may end first (a server that closes after an alert).
    let mut conn_done: Option<Result<(), hyper::Error>> = None;
    let response = std::future::poll_fn(|cx| {
        if conn_done.is_none()
            && let Poll::Ready(r) = conn.as_mut().poll(cx)
        {
            conn_done = Some(r);
        }
        answer.as_mut().poll(cx)
    })
    .await
    .map_err(|_| Error::ConnectionReadTimeout)?;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            if let Some(Err(conn_error)) = &conn_done
                && let Some(r) = rustls_cause(conn_error)
            {
                return Err(SendError::Tls(r.clone()));
            }
            return Err(tls_or(e, Error::from));
        }
    };
    let between = timeouts.between_bytes.max(Duration::from_nanos(1));
    let response = response.map(|incoming| {
        TimedBody {
            incoming,
            between,
            timer: Box::pin(tokio::time::sleep(between)),
        }
        .boxed_unsync()
    });
    let io: Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> = match conn_done {
        Some(r) => Box::pin(async move { r.map_err(Error::from) }),
        None => Box::pin(async move { conn.await.map_err(Error::from) }),
    };
    Ok((response, io))
}

/// `e` as the TLS error somewhere in its causes, or as `otherwise` makes it.
fn tls_or<E: std::error::Error + 'static>(e: E, otherwise: impl FnOnce(E) -> Error) -> SendError {
    match rustls_cause(&e).cloned() {
        Some(r) => SendError::Tls(r),
        None => SendError::Http(otherwise(e)),
    }
}

/// A response body that fails when the server pauses longer than the
/// between-bytes timeout.
struct TimedBody {
    incoming: hyper::body::Incoming,
    between: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between;
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
