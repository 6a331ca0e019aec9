//! What one attempt of a step owns inside its wasmtime store: the WASI context
//! built from the step's grants, the HTTP gate, the memory limiter, and the
//! record of denied attempts.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lifehook_manifest::{Access, HttpGrant, Scheme, Step};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::bindings::lifehook::hook::log;
use crate::capture::{OutputCapture, Stream};
use crate::fs_gate::FsGate;

/// The store data of one attempt.
pub(crate) struct StepState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) config: WasiConfigVariables,
    pub(crate) limiter: MemoryLimiter,
    gate: HttpGate,
    pub(crate) fs_gate: FsGate,
    output: OutputCapture,
    /// When this attempt must stop; read by the epoch callback.
    pub(crate) deadline: Instant,
}

/// Things a step tried to do without a grant, shared between the store's
/// hooks and the executor's report.
#[derive(Clone, Default)]
pub(crate) struct Denials(Arc<Mutex<Vec<String>>>);

impl Denials {
    /// Records and logs one denied attempt: what was denied, and the grant
    /// that would allow it.
    pub(crate) fn record(&self, what: String, grant: String) {
        let line = format!("denied {what}; to allow it: {grant}");
        tracing::warn!("{line}");
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A plugin retrying in a loop would fill memory; keep the first few.
        if list.len() < 16 {
            list.push(line);
        }
    }

    /// The first denial, which the report leads with.
    pub(crate) fn first(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .cloned()
    }

    /// The denials recorded so far.
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl StepState {
    /// Builds the sandbox for one attempt of `step`. `tcp_allowed` holds the
    /// step's TCP grants resolved to addresses.
    pub(crate) fn new(
        step: &Step,
        tcp_allowed: HashSet<SocketAddr>,
        deadline: Instant,
        denials: Denials,
        output: OutputCapture,
    ) -> anyhow::Result<StepState> {
        let mut b = WasiCtxBuilder::new();
        b.stdout(output.stream(Stream::Stdout));
        b.stderr(output.stream(Stream::Stderr));
        b.arg(&step.name);
        b.args(&step.args);
        for name in &step.grants.env {
            match std::env::var(name) {
                Ok(value) => {
                    b.env(name, value);
                }
                Err(_) => tracing::debug!("granted environment variable {name} is not set"),
            }
        }
        for (k, v) in &step.env {
            b.env(k, v);
        }
        for dir in &step.grants.dirs {
            let perms = match dir.access {
                Access::Read => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                anyhow::anyhow!("cannot open granted directory {}: {e}", dir.host.display())
            })?;
        }
        if !step.grants.dirs.iter().any(|d| d.guest == "/")
            && let Some(empty) = crate::fs_gate::empty_dir()
        {
            // See `fs_gate`: paths outside every grant land in this empty,
            // deleted directory, where they fail and are logged.
            b.preopened_dir(empty, "/", FsPerms::ReadOnly)?;
        }
        // TCP and UDP stay switched on so that every attempt reaches the
        // address check below and a denial is logged with its address.
        b.allow_tcp(true);
        b.allow_udp(true);
        // Name lookups leak data through DNS; allow them only when a TCP
        // grant is written as a name.
        b.allow_ip_name_lookup(
            step.grants
                .tcp
                .iter()
                .any(|g| g.host.parse::<IpAddr>().is_err()),
        );
        let check_denials = denials.clone();
        let tcp_allowed = Arc::new(tcp_allowed);
        b.socket_addr_check(move |addr, use_| {
            let allowed = socket_allowed(&tcp_allowed, addr, use_);
            if !allowed {
                let (what, grant) = match use_ {
                    SocketAddrUse::TcpConnect => (
                        format!("TCP connection to {addr}"),
                        format!("allow.tcp = [\"{addr}\"]"),
                    ),
                    SocketAddrUse::TcpBind
                    | SocketAddrUse::TcpListen
                    | SocketAddrUse::TcpAccept => (
                        format!("listening on TCP {addr}"),
                        "nothing: plugins may not accept connections".to_owned(),
                    ),
                    _ => (
                        format!("UDP to {addr}"),
                        "nothing: UDP is not available to plugins".to_owned(),
                    ),
                };
                check_denials.record(what, grant);
            }
            Box::pin(async move { allowed })
        });
        let config = step.config.iter().cloned().collect();
        Ok(StepState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            config,
            limiter: MemoryLimiter::new(step.limits.memory),
            fs_gate: FsGate::new(
                step.grants
                    .dirs
                    .iter()
                    .map(|d| (d.guest.clone(), (d.access, d.host.display().to_string()))),
                denials.clone(),
            ),
            gate: HttpGate {
                grants: step.grants.http.clone().into(),
                deadline,
                denials,
            },
            output,
            deadline,
        })
    }
}

/// Connections go only to granted addresses; binds only implicitly (the
/// wildcard address and port 0 that `connect` uses).
fn socket_allowed(allowed: &HashSet<SocketAddr>, addr: SocketAddr, use_: SocketAddrUse) -> bool {
    match use_ {
        SocketAddrUse::TcpConnect => allowed.contains(&addr),
        SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
        _ => false,
    }
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StepState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.gate,
        }
    }
}

impl log::Host for StepState {
    fn emit(&mut self, level: log::Level, message: String) {
        self.output.emit_log(level, &message);
    }
}

/// Lets a request out only when a grant allows its origin, and never with
/// timeouts beyond the attempt's deadline.
struct HttpGate {
    grants: Arc<[HttpGrant]>,
    deadline: Instant,
    denials: Denials,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let uri = request.uri();
        let scheme = uri.scheme_str().and_then(Scheme::parse);
        let host = uri.host().unwrap_or_default();
        let allowed = scheme.is_some_and(|scheme| {
            let port = uri.port_u16().unwrap_or(scheme.default_port());
            self.grants.iter().any(|g| g.allows(scheme, host, port))
        });
        if !allowed {
            let origin = match uri.authority() {
                Some(a) => format!("{}://{a}", uri.scheme_str().unwrap_or("http")),
                None => uri.to_string(),
            };
            self.denials.record(
                format!("HTTP {} {origin}{}", request.method(), uri.path()),
                format!("allow.http = [\"{origin}\"]"),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let cap = |t: Option<Duration>| Some(t.map_or(left, |t| t.min(left)));
        let options = RequestOptions {
            connect_timeout: cap(options.and_then(|o| o.connect_timeout)),
            first_byte_timeout: cap(options.and_then(|o| o.first_byte_timeout)),
            between_bytes_timeout: cap(options.and_then(|o| o.between_bytes_timeout)),
        };
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Caps the total linear memory of an attempt (wasmtime's own limits apply
/// per memory; a component has several).
pub(crate) struct MemoryLimiter {
    limit: u64,
    used: u64,
    /// The total the plugin asked for when it went over the limit.
    pub(crate) exceeded: Option<u64>,
}

impl MemoryLimiter {
    fn new(limit: u64) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            used: 0,
            exceeded: None,
        }
    }

    /// The limit, in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current as u64) + desired as u64;
        if total > self.limit {
            self.exceeded = Some(total);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real
        // plugin and bounds what a hostile one can allocate.
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        1_000
    }

    fn tables(&self) -> usize {
        1_000
    }

    fn memories(&self) -> usize {
        1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_all_memories_together() {
        let mut l = MemoryLimiter::new(100);
        assert!(l.memory_growing(0, 60, None).expect("no error"));
        assert!(l.memory_growing(0, 30, None).expect("no error"));
        assert!(!l.memory_growing(30, 50, None).expect("no error"));
        assert_eq!(l.exceeded, Some(110));
        assert!(l.memory_growing(30, 40, None).expect("no error"));
    }

    #[test]
    fn only_granted_connections_and_implicit_binds_pass() {
        let granted: SocketAddr = "127.0.0.1:6379".parse().expect("addr");
        let set = HashSet::from([granted]);
        assert!(socket_allowed(&set, granted, SocketAddrUse::TcpConnect));
        let other: SocketAddr = "127.0.0.1:6380".parse().expect("addr");
        assert!(!socket_allowed(&set, other, SocketAddrUse::TcpConnect));
        let wildcard: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        assert!(socket_allowed(&set, wildcard, SocketAddrUse::TcpBind));
        assert!(!socket_allowed(&set, granted, SocketAddrUse::TcpBind));
        assert!(!socket_allowed(&set, wildcard, SocketAddrUse::TcpListen));
    }
}
