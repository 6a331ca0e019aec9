//! TLS over TCP, through `wasi:tls` (contract 0.1.3, world `hook-tls`): for
//! an address the step grants with `tls = true`, such as a Redis behind
//! TLS. The runner does the handshake with the grant's CA and client
//! certificate and checks the server against the granted name; the plugin
//! passes only the connection and that name, and never holds a key.
//!
//! ```ignore
//! let stream = lifehook_sdk::tls::TlsStream::connect("redis.db:6380").await?;
//! stream.write_all(b"PING\r\n").await?;
//! ```
//!
//! The server name is the host part of the address, as granted: write the
//! address the way the grant does (`redis.db:6380`, not its IP address).

use std::io::{Error, ErrorKind, Result};
use std::net::{SocketAddr, ToSocketAddrs};

use wasip2::io::streams::{InputStream, OutputStream};
use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::network::{ErrorCode, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress};
use wasip2::sockets::tcp::{IpAddressFamily, TcpSocket};
use wasip2::sockets::tcp_create_socket::create_tcp_socket;
use wstd::io::{AsyncInputStream, AsyncOutputStream, AsyncPollable};

#[allow(missing_docs, reason = "generated code")]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasi:tls/imports@0.2.0-draft",
        with: {
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/error@0.2.12": wasip2::io::error,
        },
    });
}

use bindings::wasi::tls::types::{ClientConnection, ClientHandshake};

/// A TLS connection: read and write it like a TCP stream
/// (`wstd::io::AsyncRead` / `AsyncWrite`).
pub struct TlsStream {
    // Field order is drop order: the encrypted streams first, then the
    // connection they are children of, then the socket.
    input: AsyncInputStream,
    output: AsyncOutputStream,
    connection: ClientConnection,
    _socket: TcpSocket,
}

impl TlsStream {
    /// Connects to `address` (`host:port`) and does the TLS handshake with
    /// `host` as the server name.
    pub async fn connect(address: &str) -> Result<TlsStream> {
        let host = match address.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{address:?} has no port: write host:port"),
                ));
            }
        };
        TlsStream::connect_as(address, host).await
    }

    /// Connects to `address` and does the handshake asking for
    /// `server_name` (which the runner checks against the grant).
    pub async fn connect_as(address: &str, server_name: &str) -> Result<TlsStream> {
        let mut last = None;
        for addr in address.to_socket_addrs()? {
            match tcp(addr).await {
                Ok((socket, input, output)) => {
                    return handshake(socket, input, output, server_name).await;
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("{address} resolves to no address"),
            )
        }))
    }

    /// Sends TLS close_notify; the peer sees the end of the stream.
    pub fn close(&self) {
        self.connection.close_output();
    }
}

async fn tcp(addr: SocketAddr) -> Result<(TcpSocket, InputStream, OutputStream)> {
    let (family, remote) = match addr {
        SocketAddr::V4(a) => {
            let [a0, a1, a2, a3] = a.ip().octets();
            (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress {
                    port: a.port(),
                    address: (a0, a1, a2, a3),
                }),
            )
        }
        SocketAddr::V6(a) => {
            let s = a.ip().segments();
            (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port: a.port(),
                    flow_info: a.flowinfo(),
                    address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                    scope_id: a.scope_id(),
                }),
            )
        }
    };
    let socket = create_tcp_socket(family).map_err(io_error)?;
    socket
        .start_connect(&instance_network(), remote)
        .map_err(io_error)?;
    AsyncPollable::new(socket.subscribe()).wait_for().await;
    let (input, output) = socket.finish_connect().map_err(io_error)?;
    Ok((socket, input, output))
}

async fn handshake(
    socket: TcpSocket,
    input: InputStream,
    output: OutputStream,
    server_name: &str,
) -> Result<TlsStream> {
    let pending = ClientHandshake::finish(ClientHandshake::new(server_name, input, output));
    AsyncPollable::new(pending.subscribe()).wait_for().await;
    match pending.get() {
        Some(Ok(Ok((connection, input, output)))) => Ok(TlsStream {
            input: AsyncInputStream::new(input),
            output: AsyncOutputStream::new(output),
            connection,
            _socket: socket,
        }),
        // The runner's message says why (the CA, the name, the grant).
        Some(Ok(Err(e))) => Err(Error::new(
            ErrorKind::ConnectionRefused,
            e.to_debug_string(),
        )),
        _ => Err(Error::other("the TLS handshake did not finish")),
    }
}

fn io_error(code: ErrorCode) -> Error {
    let kind = match code {
        ErrorCode::AccessDenied => ErrorKind::PermissionDenied,
        ErrorCode::ConnectionRefused => ErrorKind::ConnectionRefused,
        ErrorCode::ConnectionReset => ErrorKind::ConnectionReset,
        ErrorCode::Timeout => ErrorKind::TimedOut,
        _ => ErrorKind::Other,
    };
    Error::new(kind, format!("{code:?}"))
}

impl wstd::io::AsyncRead for TlsStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.input.read(buf).await
    }
}

impl wstd::io::AsyncWrite for TlsStream {
    async fn write(&mut self, buf: &[u8]) -> Result<usize> {
        self.output.write(buf).await
    }

    async fn flush(&mut self) -> Result<()> {
        self.output.flush().await
    }
}
