//! TLS over a granted TCP connection, through `wasi:tls`: the plugin opens
//! the connection with `wasi:sockets` and hands its streams to a
//! `client-handshake`; the runner does the handshake with the rustls
//! configuration of the address's grant (its CA, its client certificate),
//! verifying the server against the granted name. The plugin never sees a
//! certificate or a key.
//!
//! Which grant applies is known from the connection, not from anything the
//! plugin says: `finish-connect` is shadowed to note each connection's peer
//! beside its input stream, and the handshake constructor is shadowed to
//! look the stream up and decide, before wasmtime-wasi-tls's own
//! constructor runs. Its provider then gets a ticket (the number of the
//! decision) in place of the server name. A TLS-required address's
//! streams refuse plain bytes until a handshake takes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use lifehook_manifest::TcpGrant;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, InputStream, OutputStream, Pollable, StreamError,
};
use wasmtime_wasi_tls::{TlsProvider, TlsStream, TlsTransport, WasiTlsCtx, WasiTlsCtxBuilder};

use crate::contract::{TLS_VERSION, WASI_VERSION};
use crate::sandbox::denials::Denials;
use crate::tls::{TlsClient, rustls_cause};

/// The step's TCP grants as the sockets and TLS gates need them: each
/// address a grant resolved to, whether plain bytes and TLS may go there,
/// and the TLS client of each TLS grant.
#[derive(Default)]
pub(crate) struct TcpTargets {
    by_address: HashMap<SocketAddr, Target>,
}

#[derive(Default)]
struct Target {
    /// Some grant for this address is plain TCP.
    plain: Option<String>,
    /// The TLS grants for it: the granted name and its client.
    tls: Vec<(String, Arc<TlsClient>)>,
}

impl TcpTargets {
    /// `resolved` is each grant with the addresses it resolved to;
    /// `clients` the TLS client of each grant (`None` for plain ones).
    pub(crate) fn new(
        resolved: Vec<(&TcpGrant, Vec<SocketAddr>)>,
        clients: &[Option<Arc<TlsClient>>],
    ) -> TcpTargets {
        let mut by_address: HashMap<SocketAddr, Target> = HashMap::new();
        for ((grant, addrs), client) in resolved.into_iter().zip(clients) {
            for addr in addrs {
                let target = by_address.entry(addr).or_default();
                match client {
                    Some(c) => target.tls.push((grant.host.clone(), c.clone())),
                    None => target.plain = Some(grant.to_string()),
                }
            }
        }
        TcpTargets { by_address }
    }

    /// Whether a plugin may connect to `addr` at all.
    pub(crate) fn contains(&self, addr: &SocketAddr) -> bool {
        self.by_address.contains_key(addr)
    }
}

/// What the TLS gate knows of an attempt's connections.
pub(crate) struct TlsGate {
    targets: Arc<TcpTargets>,
    /// Connections made, by the handle of their input stream. A handle is
    /// reused once its stream is dropped, so an entry can outlive its
    /// stream (the next connection on that handle replaces it): a
    /// handshake over another stream then speaks TLS to a file or a pipe
    /// with that connection's grant, and fails, since no server there can
    /// prove the granted name. The map holds at most one entry per live
    /// handle number, which `max-open` bounds.
    connections: HashMap<u32, Connection>,
    /// The decisions taken by handshake constructors, read by the provider.
    tickets: Tickets,
    denials: Denials,
}

struct Connection {
    peer: SocketAddr,
    /// Set once a handshake took the streams: the guards then let bytes
    /// through (they are TLS records from then on).
    handshaken: Arc<AtomicBool>,
}

/// The decisions of an attempt's handshakes not yet started, by ticket.
type Tickets = Arc<Mutex<Pending>>;

/// Decided handshakes waiting for the provider, and the next ticket.
#[derive(Default)]
struct Pending {
    next: u64,
    waiting: HashMap<u64, Ticket>,
}

/// Handshakes constructed but not yet finished an attempt may hold: a
/// plugin that constructs them in a loop and never finishes one is
/// refused past this rather than growing the runner's memory.
const MAX_PENDING_HANDSHAKES: usize = 64;

enum Ticket {
    Connect {
        client: Arc<TlsClient>,
        name: ServerName<'static>,
        peer: String,
    },
    Refuse(String),
}

impl TlsGate {
    /// The gate for one attempt, and the `wasi:tls` context whose provider
    /// reads its decisions.
    pub(crate) fn new(targets: Arc<TcpTargets>, denials: Denials) -> (TlsGate, WasiTlsCtx) {
        let tickets = Tickets::default();
        let provider = GrantProvider {
            tickets: tickets.clone(),
            denials: denials.clone(),
        };
        let ctx = WasiTlsCtxBuilder::new()
            .provider(Box::new(provider))
            .build();
        let gate = TlsGate {
            targets,
            connections: HashMap::new(),
            tickets,
            denials,
        };
        (gate, ctx)
    }

    /// Notes a connection to `peer` whose streams are now in `table`; for
    /// an address granted only with TLS, puts guards in front of them.
    fn connected(
        &mut self,
        table: &mut ResourceTable,
        peer: SocketAddr,
        input: &Resource<DynInputStream>,
        output: &Resource<DynOutputStream>,
    ) -> wasmtime::Result<()> {
        let handshaken = Arc::new(AtomicBool::new(false));
        let plain_refused = self
            .targets
            .by_address
            .get(&peer)
            .is_some_and(|t| t.plain.is_none());
        if plain_refused {
            let guard = Guard {
                handshaken: handshaken.clone(),
                peer,
                denials: self.denials.clone(),
            };
            let stream = table.get_mut(input)?;
            let inner =
                std::mem::replace(stream, Box::new(wasmtime_wasi::p2::pipe::ClosedInputStream));
            *stream = Box::new(GuardedInput {
                inner,
                guard: guard.clone(),
            });
            let stream = table.get_mut(output)?;
            let inner = std::mem::replace(
                stream,
                Box::new(wasmtime_wasi::p2::pipe::ClosedOutputStream),
            );
            *stream = Box::new(GuardedOutput { inner, guard });
        }
        self.connections
            .insert(input.rep(), Connection { peer, handshaken });
        Ok(())
    }

    /// Decides a handshake over the connection whose input stream is
    /// `input`, asked for `server_name`: the ticket the provider gets.
    fn handshake(&mut self, input: u32, server_name: &str) -> String {
        let tickets = self.tickets.clone();
        let mut pending = tickets.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = if pending.waiting.len() >= MAX_PENDING_HANDSHAKES {
            Ticket::Refuse(format!(
                "more than {MAX_PENDING_HANDSHAKES} TLS handshakes constructed and not finished"
            ))
        } else {
            self.ticket(input, server_name)
        };
        let number = pending.next;
        pending.next += 1;
        pending.waiting.insert(number, ticket);
        number.to_string()
    }

    /// The decision for a handshake over `input`.
    fn ticket(&mut self, input: u32, server_name: &str) -> Ticket {
        match self.connections.remove(&input) {
            None => {
                let message =
                    "TLS over a stream that is not a TCP connection of this step".to_owned();
                self.denials.record(
                    message.clone(),
                    "nothing: open the connection with wasi:sockets and pass its streams".into(),
                );
                Ticket::Refuse(message)
            }
            Some(conn) => self.decide(conn, server_name),
        }
    }

    fn decide(&mut self, conn: Connection, server_name: &str) -> Ticket {
        let peer = conn.peer;
        let Some(target) = self.targets.by_address.get(&peer) else {
            return Ticket::Refuse(format!("TCP connection to {peer} is not granted"));
        };
        if target.tls.is_empty() {
            let grant = target.plain.clone().unwrap_or_else(|| peer.to_string());
            let message = format!("TLS to {peer}: the address is granted without TLS");
            self.denials.record(
                message.clone(),
                format!("allow.tcp = [{{ address = \"{grant}\", tls = true }}]"),
            );
            return Ticket::Refuse(message);
        }
        // The server is verified against the granted name: the plugin may
        // not ask for another one (that would let a certificate for any
        // name the CA signed pass for this address).
        let granted = target
            .tls
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(server_name.trim_end_matches('.')));
        let Some((name, client)) = granted else {
            let names: Vec<&str> = target.tls.iter().map(|(n, _)| n.as_str()).collect();
            let message = format!(
                "TLS to {peer} as {server_name:?}: the grant names {}",
                names.join(", ")
            );
            self.denials.record(
                message.clone(),
                format!(
                    "connect with the granted name as the server name, or allow.tcp = [{{ address = \"{server_name}:{}\", tls = true }}]",
                    peer.port()
                ),
            );
            return Ticket::Refuse(message);
        };
        let granted_name = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::from(ip),
            Err(_) => match ServerName::try_from(name.clone()) {
                Ok(n) => n,
                Err(_) => return Ticket::Refuse(format!("{name:?} is not a TLS server name")),
            },
        };
        conn.handshaken.store(true, Ordering::Relaxed);
        Ticket::Connect {
            client: client.clone(),
            name: granted_name,
            peer: format!("{name}:{}", peer.port()),
        }
    }
}

/// A store's data that has a TLS gate.
pub(crate) trait TlsGateView:
    wasmtime_wasi::WasiView + wasmtime_wasi_tls::WasiTlsView + Send + 'static
{
    /// The attempt's TLS gate, and the resource table beside it.
    fn tls_gate(&mut self) -> (&mut TlsGate, &mut ResourceTable);
}

/// Links `wasi:tls` (its draft, switched on) and shadows the two calls the
/// gate watches.
pub(crate) fn add_to_linker<T: TlsGateView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    use wasmtime_wasi::p2::bindings::sockets::{network, tcp};
    use wasmtime_wasi::sockets::WasiSocketsView as _;
    use wasmtime_wasi_tls::p2::bindings::types::HostClientHandshake as _;
    let mut options = wasmtime_wasi_tls::p2::LinkOptions::default();
    options.tls(true);
    wasmtime_wasi_tls::p2::add_to_linker(linker, &options)?;
    linker.allow_shadowing(true);
    linker
        .instance(&format!("wasi:sockets/tcp@{WASI_VERSION}"))?
        .func_wrap(
            "[method]tcp-socket.finish-connect",
            |mut store, (socket,): (Resource<wasmtime_wasi::p2::TcpSocket>,)| {
                let state = store.data_mut();
                let rep = socket.rep();
                let mut view = state.sockets();
                let (input, output) = match tcp::HostTcpSocket::finish_connect(&mut view, socket) {
                    Ok(streams) => streams,
                    Err(e) => {
                        return Ok((Err(network::Host::convert_error_code(&mut view, e)?),));
                    }
                };
                let peer = tcp::HostTcpSocket::remote_address(&mut view, Resource::new_borrow(rep))
                    .ok()
                    .map(SocketAddr::from);
                if let Some(peer) = peer {
                    let (gate, table) = state.tls_gate();
                    gate.connected(table, peer, &input, &output)?;
                }
                Ok((Ok((input, output)),))
            },
        )?;
    linker
        .instance(&format!("wasi:tls/types@{TLS_VERSION}"))?
        .func_wrap(
            "[constructor]client-handshake",
            |mut store,
             (server_name, input, output): (
                String,
                Resource<DynInputStream>,
                Resource<DynOutputStream>,
            )| {
                let state = store.data_mut();
                let ticket = state.tls_gate().0.handshake(input.rep(), &server_name);
                let mut view = state.tls();
                let handshake = view.new(ticket, input, output)?;
                Ok((handshake,))
            },
        )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The `wasi:tls` provider of one attempt: connects as the gate decided.
struct GrantProvider {
    tickets: Tickets,
    denials: Denials,
}

impl TlsProvider for GrantProvider {
    fn connect(
        &self,
        ticket: String,
        transport: Box<dyn TlsTransport>,
    ) -> Pin<Box<dyn Future<Output = Result<Box<dyn TlsStream>, wasmtime_wasi_tls::Error>> + Send>>
    {
        let decided = ticket.parse::<u64>().ok().and_then(|number| {
            self.tickets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .waiting
                .remove(&number)
        });
        let denials = self.denials.clone();
        Box::pin(async move {
            let (client, name, peer) = match decided {
                Some(Ticket::Connect { client, name, peer }) => (client, name, peer),
                Some(Ticket::Refuse(message)) => {
                    return Err(wasmtime_wasi_tls::Error::msg(message));
                }
                None => {
                    return Err(wasmtime_wasi_tls::Error::msg(
                        "TLS handshake not prepared by the runner",
                    ));
                }
            };
            let connector = tokio_rustls::TlsConnector::from(client.config.clone());
            match connector.connect(name, transport).await {
                Ok(stream) => Ok(Box::new(Watched {
                    stream,
                    client,
                    peer,
                    denials,
                    reported: false,
                }) as Box<dyn TlsStream>),
                Err(e) => Err(wasmtime_wasi_tls::Error::msg(match rustls_cause(&e) {
                    Some(r) => {
                        let refusal = client.explain(r, &peer);
                        denials.record_tls(&peer, &refusal);
                        format!("TLS to {peer}: {}", refusal.cause)
                    }
                    None => format!("TLS to {peer}: {e}"),
                })),
            }
        })
    }
}

/// An established TLS stream that explains an alert the server sends after
/// the handshake: a TLS 1.3 server checks the client certificate only then,
/// so "no client certificate" arrives as the first read's error.
struct Watched {
    stream: tokio_rustls::client::TlsStream<Box<dyn TlsTransport>>,
    client: Arc<TlsClient>,
    peer: String,
    denials: Denials,
    reported: bool,
}

impl TlsStream for Watched {}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &result
            && !this.reported
            && let Some(r) = rustls_cause(e)
        {
            this.reported = true;
            this.denials
                .record_tls(&this.peer, &this.client.explain(r, &this.peer));
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Refuses plain bytes on a connection to a TLS-only address until a
/// handshake takes its streams.
#[derive(Clone)]
struct Guard {
    handshaken: Arc<AtomicBool>,
    peer: SocketAddr,
    denials: Denials,
}

impl Guard {
    fn check(&self) -> Result<(), StreamError> {
        if self.handshaken.load(Ordering::Relaxed) {
            return Ok(());
        }
        let peer = self.peer;
        self.denials.record(
            format!("plain TCP to {peer}, which is granted with tls = true"),
            "speak TLS on it (wasi:tls client-handshake), or grant the address without tls".into(),
        );
        Err(StreamError::LastOperationFailed(wasmtime::format_err!(
            "plain TCP to {peer} is refused: the address is granted with tls = true"
        )))
    }
}

struct GuardedInput {
    inner: DynInputStream,
    guard: Guard,
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuardedInput {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for GuardedInput {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        self.guard.check()?;
        self.inner.read(size)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

struct GuardedOutput {
    inner: DynOutputStream,
    guard: Guard,
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuardedOutput {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuardedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.guard.check()?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}
