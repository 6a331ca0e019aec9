//! `lifehook serve`: the httpGet mode. A small HTTP server that runs a phase
//! per request, for pods that use `httpGet` hooks and for lifehook as a
//! sidecar container (the application image need not change).
//!
//! The engine, the linker and every plugin are loaded once at start-up, so
//! a trigger costs no compile. A trigger while the same phase runs joins
//! that run; a trigger after the phase completed returns the earlier report
//! (hooks are delivered at least once) unless `?force=1`. The phase runs in
//! a task of its own: a caller that hangs up or reads slowly cannot hold it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use lifehook_manifest::Pipeline;
use lifehook_runtime::Runner;

mod metrics;
mod probe;
mod server;
mod slots;

pub(crate) use probe::Probe;

use server::{Server, respond};
use slots::{Slot, Slots};

use super::tokio_runtime;
use super::{Target, UsageError};
use crate::exit::{EXIT_INVALID, EXIT_OK};
use crate::output::{print_err, print_problems};
use crate::plugins::load_plugins;

/// Serve the pipeline's phases over HTTP, for `httpGet` hooks or a sidecar.
///
/// `GET` or `POST /pre-stop` and `/post-start` run that phase and answer
/// when it ends: 200 with the report, or 500 with it (`Accept:
/// application/json` for JSON). `/healthz` answers 200. `GET /metrics`
/// answers the Prometheus (OpenMetrics) text of what it ran. A trigger while the
/// phase runs joins that run; a trigger after it completed returns the
/// earlier report unless `?force=1`. A trigger takes no body (413).
///
/// Each connection serves one request and is closed. On SIGTERM or SIGINT
/// the server finishes the runs in progress, answering their callers and
/// `/healthz`, refuses to start new ones (503), and exits when they end.
///
/// On any address but loopback a token is required (--token-file or
/// --token-env): requests must send `Authorization: Bearer <token>` (in
/// Kubernetes, through `httpGet.httpHeaders`) or get 401.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook serve --listen 127.0.0.1:8787
  lifehook serve --listen 0.0.0.0:8787 --token-env LIFEHOOK_TOKEN -f /etc/lifehook/lifehook.toml

In a container spec (the kubelet calls the pod IP):
  lifecycle:
    preStop:
      httpGet:
        path: /pre-stop
        port: 8787
        httpHeaders: [{ name: Authorization, value: \"Bearer <token>\" }]")]
pub struct Serve {
    #[command(flatten)]
    target: Target,

    /// Where to listen, like 127.0.0.1:8787, or 0.0.0.0:8787 for the
    /// kubelet (which calls the pod IP; a token is then required).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,

    /// A file holding the token requests must carry.
    #[arg(long, value_name = "PATH", conflicts_with = "token_env")]
    token_file: Option<PathBuf>,

    /// An environment variable holding the token requests must carry.
    #[arg(long, value_name = "NAME")]
    token_env: Option<String>,

    /// Most connections open at once. Each serves one request and closes.
    /// When all are taken, a new connection replaces the oldest one that has
    /// not finished sending its request (so idle or slow clients cannot
    /// keep a trigger out); one that sends nothing for 5 s is disconnected.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,

    /// Answer `GET /metrics` without the token (for a scraper that cannot
    /// send one). Without it, /metrics needs the token as triggers do.
    #[arg(long)]
    metrics_public: bool,
}

/// The longest a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request (headers) accepted.
const MAX_REQUEST: usize = 16 << 10;
/// How long a stopping server waits for the answers of its last runs to
/// be written.
const SETTLE: Duration = Duration::from_secs(1);

impl Serve {
    /// The address it listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Whether it requires a token.
    pub fn has_token(&self) -> bool {
        self.token_file.is_some() || self.token_env.is_some()
    }

    pub fn execute(self) -> anyhow::Result<i32> {
        let token = self.token()?;
        if token.is_none() && !self.listen.ip().is_loopback() {
            return Err(UsageError(format!(
                "refusing to listen on {} without a token: the kubelet calls the pod IP, so any pod could trigger a hook; pass --token-file or --token-env and send `Authorization: Bearer <token>` (httpGet.httpHeaders)",
                self.listen
            ))
            .into());
        }
        let pipeline = lifehook_manifest::load(&self.target.pipeline.file, None)?;
        let runner = self.target.runner(&pipeline)?;
        let (_, problems) = load_plugins(&runner, pipeline.phases.iter().flat_map(|p| &p.steps));
        if !problems.is_empty() {
            print_problems(&problems);
            return Ok(EXIT_INVALID);
        }
        let runtime = tokio_runtime()?;
        let result = runtime.block_on(self.serve(pipeline, runner, token));
        runtime.shutdown_background();
        result
    }

    fn token(&self) -> anyhow::Result<Option<Arc<[u8]>>> {
        load_token(self.token_file.as_deref(), self.token_env.as_deref())
    }

    async fn serve(
        &self,
        pipeline: Pipeline,
        runner: Runner,
        token: Option<Arc<[u8]>>,
    ) -> anyhow::Result<i32> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let phases: Vec<&str> = pipeline.phases.iter().map(|p| p.name.as_str()).collect();
        print_err(&format!(
            "lifehook serve: listening on {} ({}; {})\n",
            listener.local_addr().unwrap_or(self.listen),
            if phases.is_empty() {
                "no phases".to_owned()
            } else {
                phases.join(", ")
            },
            if token.is_some() {
                "token required"
            } else {
                "loopback only, no token"
            }
        ));
        let server = Arc::new(Server::new(pipeline, runner, token, self.metrics_public));
        let slots = Slots::new(self.max_connections.max(1));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let draining = server.is_draining();
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                },
                _ = term.recv(), if !draining => {
                    server.drain();
                    continue;
                }
                _ = tokio::signal::ctrl_c(), if !draining => {
                    server.drain();
                    continue;
                }
                () = server.wait_for_running(), if draining => break,
            };
            let slot = tokio::select! {
                slot = slots.admit() => slot,
                () = server.wait_for_running(), if draining => break,
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_connection(server.clone(), slot, stream, peer));
        }
        // The last runs have ended; their callers' answers are being
        // written.
        slots.settle(SETTLE).await;
        // The process ends next (see `run` on why not to drop plugins).
        std::mem::forget(server);
        Ok(EXIT_OK)
    }
}

/// What answers the requests of a connection: `serve`'s server, or
/// `exec`'s readiness probe.
pub(crate) trait Handler: Send + Sync + 'static {
    /// The answer to `req` from `peer`.
    fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send;
}

/// The token requests must carry: read from `file` or the variable `env`
/// (trimmed, at least 16 characters), or none.
pub(crate) fn load_token(
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> anyhow::Result<Option<Arc<[u8]>>> {
    let token = match (file, env) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?,
        (None, Some(name)) => std::env::var(name)
            .map_err(|_| UsageError(format!("--token-env names {name}, which is not set")))?,
        (None, None) => return Ok(None),
    };
    let token = token.trim();
    if token.len() < 16 {
        return Err(UsageError(
            "the token must be at least 16 characters (a random one: `head -c 24 /dev/urandom | base64`)".into(),
        )
        .into());
    }
    Ok(Some(token.as_bytes().into()))
}

/// Accepts connections on `listener` for ever, each answered by
/// `handler` under the same caps as `serve`'s (`max` at once, 5 s for the
/// headers, one request each).
pub(crate) async fn serve_forever<H: Handler>(
    listener: tokio::net::TcpListener,
    handler: Arc<H>,
    max: usize,
) {
    let slots = Slots::new(max.max(1));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let slot = slots.admit().await;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(handler.clone(), slot, stream, peer));
    }
}

/// Serves one request on `stream`, then closes it (no keep-alive: a
/// trigger is one request, and a connection kept open would hold a slot);
/// the connection ends early if `slot` is taken back for a newer one.
async fn serve_connection<H: Handler>(
    server: Arc<H>,
    slot: Slot,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let state = slot.state.clone();
    let service = hyper::service::service_fn(move |req| {
        let (server, state) = (server.clone(), state.clone());
        async move {
            // The request is complete: from now on the slot is not taken
            // back. Taken back already: the connection is being closed.
            let response = if state.begin_request() {
                server.handle(req, peer).await
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "too many connections\n".into(),
                )
            };
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                tracing::debug!("connection from {peer}: {e}");
            }
        }
        () = slot.state.taken_back.notified() => {
            tracing::debug!("connection from {peer} closed: its slot went to a newer connection before it sent a request");
        }
    }
    drop(slot);
}
