//! What one attempt of a step owns inside its wasmtime store: the WASI context
//! built from the step's grants and the sockets check, with the gates
//! (`http_gate`, `fs_gate`), the memory limiter and the denial record it
//! wires in.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use lifehook_manifest::{Access, Step};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::lifehook::hook::{deadline, log};
use crate::sandbox::capture::{OutputCapture, Stream};
use crate::sandbox::denials::Denials;
use crate::sandbox::fs_gate::{FsGate, FsGateView};
use crate::sandbox::http_gate::HttpGate;
use crate::sandbox::memory::MemoryLimiter;
use crate::sandbox::quotas::{FileStreams, QuotaView, StepQuotas};
use crate::sandbox::tls_sockets::{TcpTargets, TlsGate, TlsGateView};

/// What a step's attempts share and its report reads: what was denied,
/// the caps reached, the output. It outlives every attempt's store (each
/// attempt gets a fresh store, so that a trap leaves nothing behind), which
/// is why these are shared handles rather than fields of [`StepState`]:
/// quotas like `max-write` count over all attempts, and the report lists the
/// denials of the attempt that failed as well as of the one that passed.
pub(crate) struct StepRecord {
    pub(crate) denials: Denials,
    pub(crate) caps: StepQuotas,
    pub(crate) output: OutputCapture,
    /// The step's span, put on its outgoing HTTP requests.
    pub(crate) traceparent: Option<http::HeaderValue>,
}

/// The store data of one attempt: every host interface the plugin can call
/// reaches its state through here (the `*View` traits below), so what an
/// attempt can touch is exactly what this struct holds.
pub(crate) struct StepState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    /// The resources (streams, sockets, descriptors) the guest holds handles
    /// to; dropped with the store, which closes them all.
    table: ResourceTable,
    /// The step's `[config]` table, served as `wasi:config/store`.
    pub(crate) config: WasiConfigVariables,
    /// Refuses memory growth past the step's `memory` limit.
    pub(crate) limiter: MemoryLimiter,
    /// The `wasi:http` hooks: origin grants, `max-http`, the deadline.
    gate: HttpGate,
    /// Logs file access the grants refuse, with the grant that would allow it.
    fs_gate: FsGate,
    /// Decides `wasi:tls` handshakes by the connection's grant.
    tls_gate: TlsGate,
    tls: wasmtime_wasi_tls::WasiTlsCtx,
    caps: StepQuotas,
    /// Byte counters of the files open for writing (`max-write`).
    file_streams: FileStreams,
    output: OutputCapture,
    /// The directory grants again, for `lifehook:hook/files`, which resolves
    /// guest paths itself.
    dir_grants: Arc<[lifehook_manifest::DirGrant]>,
    denials: Denials,
    /// When this attempt must stop; read by the epoch callback.
    pub(crate) deadline: Instant,
}

impl StepState {
    /// Builds the sandbox for one attempt of `step`. `tcp` holds the step's
    /// TCP grants resolved to addresses. The grants' TLS files are read
    /// here, so a rotated certificate counts from the next attempt on.
    pub(crate) fn new(
        step: &Step,
        tcp: Vec<(&lifehook_manifest::TcpGrant, Vec<SocketAddr>)>,
        deadline: Instant,
        record: &StepRecord,
    ) -> anyhow::Result<StepState> {
        let tls_files = |tls: Option<&lifehook_manifest::GrantTls>, grant: String| {
            tls.map(|t| {
                crate::tls::client(t).map_err(|e| {
                    anyhow::anyhow!(
                        "the TLS files of grant {grant} cannot be used: {e} ({})",
                        e.help()
                    )
                })
            })
            .transpose()
        };
        let http_tls = step
            .grants
            .http
            .iter()
            .map(|g| tls_files(g.tls.as_ref(), g.to_string()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tcp_tls = step
            .grants
            .tcp
            .iter()
            .map(|g| tls_files(g.tls.as_ref(), g.to_string()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (denials, caps, output) = (
            record.denials.clone(),
            record.caps.clone(),
            record.output.clone(),
        );
        let mut b = WasiCtxBuilder::new();
        // No stdin (a hook has no one to read from), stdout and stderr into
        // the capture, which tags them with the step and bounds them by
        // `output-limit`; argv[0] is the step's name, as a command sees it.
        b.stdout(output.stream(Stream::Stdout));
        b.stderr(output.stream(Stream::Stderr));
        b.arg(&step.name);
        b.args(&step.args);
        // Only granted variables, read now, from this process: a plugin never
        // sees the rest of the container's environment (secrets live there).
        // A granted but unset variable is absent, as in a shell.
        for name in &step.grants.env {
            match std::env::var(name) {
                Ok(value) => {
                    b.env(name, value);
                }
                Err(_) => tracing::debug!("granted environment variable {name} is not set"),
            }
        }
        // Literal `env` values of the step, already interpolated by the
        // manifest (no grant needed: the pipeline wrote them).
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
            && let Some(empty) = crate::sandbox::fs_gate::empty_dir()
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
        let targets = Arc::new(TcpTargets::new(tcp, &tcp_tls));
        let tcp_allowed = targets.clone();
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
        let (tls_gate, tls) = TlsGate::new(targets, denials.clone());
        Ok(StepState {
            tls_gate,
            tls,
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
                tls: http_tls.into(),
                deadline,
                denials: denials.clone(),
                caps: caps.clone(),
                in_flight: Default::default(),
                traceparent: record.traceparent.clone(),
            },
            caps,
            file_streams: FileStreams::default(),
            output,
            dir_grants: step.grants.dirs.clone().into(),
            denials,
            deadline,
        })
    }
}

/// Connections go only to granted addresses; binds only implicitly (the
/// wildcard address and port 0 that `connect` uses). A plugin never listens:
/// a hook that accepted connections could be reached from the pod network
/// while the application is being stopped.
fn socket_allowed(allowed: &TcpTargets, addr: SocketAddr, use_: SocketAddrUse) -> bool {
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

impl wasmtime_wasi_tls::WasiTlsView for StepState {
    fn tls(&mut self) -> wasmtime_wasi_tls::WasiTlsCtxView<'_> {
        wasmtime_wasi_tls::WasiTlsCtxView {
            ctx: &mut self.tls,
            table: &mut self.table,
        }
    }
}

impl TlsGateView for StepState {
    fn tls_gate(&mut self) -> (&mut TlsGate, &mut ResourceTable) {
        (&mut self.tls_gate, &mut self.table)
    }
}

impl QuotaView for StepState {
    fn caps(&self) -> &StepQuotas {
        &self.caps
    }

    fn file_streams(&mut self) -> &mut FileStreams {
        &mut self.file_streams
    }
}

impl FsGateView for StepState {
    fn fs_gate(&mut self) -> &mut FsGate {
        &mut self.fs_gate
    }
}

impl crate::sandbox::files::FilesView for StepState {
    fn dir_grants(&self) -> &Arc<[lifehook_manifest::DirGrant]> {
        &self.dir_grants
    }

    fn denials(&self) -> &Denials {
        &self.denials
    }

    fn files_caps(&self) -> &StepQuotas {
        &self.caps
    }
}

/// `lifehook:hook/deadline`: the attempt's time left, read fresh at each
/// call, so a plugin that loops (a readiness poll) can stop before it is
/// cut rather than be cut mid-write.
impl deadline::Host for StepState {
    fn time_left_ms(&mut self) -> u64 {
        self.deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }
}

/// `lifehook:hook/log`: leveled lines into the same capture as stdout and
/// stderr, so their order is kept in the report.
impl log::Host for StepState {
    fn emit(&mut self, level: log::Level, message: String) {
        self.output.emit_log(level, &message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_connections_and_implicit_binds_pass() {
        let granted: SocketAddr = "127.0.0.1:6379".parse().expect("addr");
        let grant = lifehook_manifest::TcpGrant::parse("127.0.0.1:6379").expect("grant");
        let set = TcpTargets::new(vec![(&grant, vec![granted])], &[None]);
        assert!(socket_allowed(&set, granted, SocketAddrUse::TcpConnect));
        let other: SocketAddr = "127.0.0.1:6380".parse().expect("addr");
        assert!(!socket_allowed(&set, other, SocketAddrUse::TcpConnect));
        let wildcard: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        assert!(socket_allowed(&set, wildcard, SocketAddrUse::TcpBind));
        assert!(!socket_allowed(&set, granted, SocketAddrUse::TcpBind));
        assert!(!socket_allowed(&set, wildcard, SocketAddrUse::TcpListen));
    }
}
