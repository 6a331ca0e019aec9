//! `lifehook serve`: the httpGet mode. A small HTTP server that runs a phase
//! per request, for pods that use `httpGet` hooks and for lifehook as a
//! sidecar container (the application image need not change).
//!
//! The engine, the linker and every plugin are loaded once at start-up, so
//! a trigger costs no compile. A trigger while the same phase runs joins
//! that run; a trigger after the phase completed returns the earlier report
//! (hooks are delivered at least once) unless `?force=1`. The phase runs in
//! a task of its own: a caller that hangs up or reads slowly cannot hold it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use lifehook_manifest::{PhaseName, Pipeline};
use lifehook_runtime::{PhaseStatus, RunOptions, Runner};
use tokio::sync::{Notify, watch};

use super::plugins::load_plugins;
use super::tokio_runtime;
use super::{Target, UsageError};
use crate::exit::{EXIT_INVALID, EXIT_OK};
use crate::output::print_err;
use crate::output::print_problems;
use crate::render;

/// Serve the pipeline's phases over HTTP, for `httpGet` hooks or a sidecar.
///
/// `GET` or `POST /pre-stop` and `/post-start` run that phase and answer
/// when it ends: 200 with the report, or 500 with it (`Accept:
/// application/json` for JSON). `/healthz` answers 200. A trigger while the
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
        let token = match (&self.token_file, &self.token_env) {
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
        let server = Arc::new(Server {
            pipeline,
            runner,
            token,
            phases: Arc::default(),
            draining: AtomicBool::new(false),
        });
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

/// Serves one request on `stream`, then closes it (no keep-alive: a
/// trigger is one request, and a connection kept open would hold a slot);
/// the connection ends early if `slot` is taken back for a newer one.
async fn serve_connection(
    server: Arc<Server>,
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

/// The connection slots of the server. A slot is held from accept to close.
/// With every slot taken, a new connection takes the slot of the oldest one
/// still waiting for its request (idle, or sending slowly), which is then
/// closed: peers that connect and send nothing, or send slowly, cannot keep
/// an authenticated trigger waiting; only connections whose request is
/// being answered keep their slot, and a new one waits for one of them.
struct Slots {
    max: usize,
    open: Mutex<VecDeque<Arc<SlotState>>>,
    freed: Notify,
}

/// One connection's part in [`Slots`].
struct SlotState {
    /// 0 waiting for the request, 1 answering it, 2 taken back.
    phase: AtomicU8,
    taken_back: Notify,
}

const WAITING: u8 = 0;
const ANSWERING: u8 = 1;
const TAKEN_BACK: u8 = 2;

impl SlotState {
    /// Marks the request as complete; false if the slot was taken back.
    fn begin_request(&self) -> bool {
        self.phase
            .compare_exchange(WAITING, ANSWERING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Takes the slot back if its connection has not sent a request yet.
    fn take_back(&self) -> bool {
        let taken = self
            .phase
            .compare_exchange(WAITING, TAKEN_BACK, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if taken {
            self.taken_back.notify_one();
        }
        taken
    }
}

/// A held slot; dropping it frees it.
struct Slot {
    slots: Arc<Slots>,
    state: Arc<SlotState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(i) = open.iter().position(|s| Arc::ptr_eq(s, &self.state)) {
            open.remove(i);
        }
        drop(open);
        self.slots.freed.notify_one();
    }
}

impl Slots {
    fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            open: Mutex::new(VecDeque::with_capacity(max)),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<SlotState>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits, at most `limit`, until no connection is being answered.
    async fn settle(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let freed = self.freed.notified();
            let answering = self
                .lock()
                .iter()
                .any(|s| s.phase.load(Ordering::Acquire) == ANSWERING);
            if !answering || tokio::time::timeout_at(until, freed).await.is_err() {
                return;
            }
        }
    }

    /// A slot for a new connection: a free one, the oldest waiting one's,
    /// or, when every connection is being answered, the first to free up.
    async fn admit(self: &Arc<Slots>) -> Slot {
        loop {
            let freed = self.freed.notified();
            {
                let mut open = self.lock();
                if open.len() >= self.max
                    && let Some(i) = open.iter().position(|s| s.take_back())
                {
                    open.remove(i);
                }
                if open.len() < self.max {
                    let state = Arc::new(SlotState {
                        phase: AtomicU8::new(WAITING),
                        taken_back: Notify::new(),
                    });
                    open.push_back(state.clone());
                    return Slot {
                        slots: self.clone(),
                        state,
                    };
                }
            }
            freed.await;
        }
    }
}

/// What a finished run answers with.
struct Finished {
    status: PhaseStatus,
    text: String,
    json: String,
}

/// One phase's runs: the one in progress, and the last that succeeded.
#[derive(Default)]
struct PhaseRuns {
    running: Option<watch::Receiver<Option<Arc<Finished>>>>,
    completed: Option<(Instant, Arc<Finished>)>,
}

struct Server {
    pipeline: Pipeline,
    runner: Runner,
    token: Option<Arc<[u8]>>,
    phases: Arc<Mutex<HashMap<PhaseName, PhaseRuns>>>,
    /// Stopping (SIGTERM or SIGINT): runs in progress finish and their
    /// callers are answered, `/healthz` still answers, no new run starts.
    draining: AtomicBool,
}

/// How a trigger was served.
#[derive(Clone, Copy)]
enum Served {
    /// A new run of the phase.
    New,
    /// None: the server is stopping and the phase was not running.
    Refused,
    /// It joined a run in progress.
    Joined,
    /// The phase had completed; the earlier report.
    Repeat(Instant),
}

impl Server {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path == "/healthz" {
            // Still 200 while stopping: a sidecar's liveness probe must not
            // get it restarted in the middle of a pre-stop.
            let body = if self.is_draining() {
                "ok: stopping, waiting for running phases\n"
            } else {
                "ok\n"
            };
            return respond(StatusCode::OK, "text/plain", body.into());
        }
        let phase = match path {
            "/pre-stop" => PhaseName::PreStop,
            "/post-start" => PhaseName::PostStart,
            _ => {
                return respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found: use /pre-stop, /post-start or /healthz\n".into(),
                );
            }
        };
        if !matches!(*req.method(), Method::GET | Method::POST) {
            let mut r = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use GET or POST\n".into(),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            return r;
        }
        if !self.authorized(&req) {
            tracing::warn!("refused a trigger of {phase} from {peer}: missing or wrong token");
            let mut r = respond(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "a valid `Authorization: Bearer <token>` header is required\n".into(),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        // A trigger takes no body: any length but 0, or a chunked one, is
        // refused before a byte of it is read.
        let has_body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v != "0")
            || req.headers().contains_key(header::TRANSFER_ENCODING);
        if has_body {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "triggers take no body\n".into(),
            );
        }
        if self.pipeline.phase(phase).is_none() {
            return respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("the pipeline has no [{phase}] section\n"),
            );
        }
        let force = req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|kv| matches!(kv, "force=1" | "force=true"))
        });
        let json = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        tracing::info!(
            "trigger of {phase} from {peer}{}",
            if force { " (force)" } else { "" }
        );
        let (finished, served) = self.trigger(phase, force).await;
        if let Served::Refused = served {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("lifehook serve is stopping: {phase} is not started any more\n"),
            );
        }
        let Some(finished) = finished else {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("the {phase} run stopped unexpectedly\n"),
            );
        };
        let code = if finished.status == PhaseStatus::Ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let (kind, body) = match (json, served) {
            (true, Served::Repeat(at)) => {
                let mut v: serde_json::Value =
                    serde_json::from_str(&finished.json).unwrap_or_default();
                v["repeat"] = true.into();
                v["completed_ms_ago"] = (at.elapsed().as_millis() as u64).into();
                (
                    "application/json",
                    format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
                )
            }
            (true, _) => ("application/json", format!("{}\n", finished.json)),
            (false, Served::Repeat(at)) => (
                "text/plain",
                format!(
                    "lifehook {phase}: ok (repeat: completed {} ago; nothing was run, ?force=1 runs it again)\n{}",
                    lifehook_units::format_duration(at.elapsed()),
                    finished.text
                ),
            ),
            (false, _) => ("text/plain", finished.text.clone()),
        };
        let mut r = respond(code, kind, body);
        let how = match served {
            Served::New => "new",
            Served::Refused => "refused",
            Served::Joined => "joined",
            Served::Repeat(_) => "repeat",
        };
        r.headers_mut()
            .insert("lifehook-run", HeaderValue::from_static(how));
        r
    }

    /// Constant-time comparison of the bearer token, when one is set.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        use subtle::ConstantTimeEq as _;
        bool::from(given.ct_eq(token))
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<PhaseName, PhaseRuns>> {
        self.phases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `phase`, joins its run, or returns its earlier success.
    async fn trigger(&self, phase: PhaseName, force: bool) -> (Option<Arc<Finished>>, Served) {
        let (mut rx, served) = {
            let mut runs = self.runs();
            let runs = runs.entry(phase).or_default();
            match (&runs.running, &runs.completed) {
                (Some(rx), _) => (rx.clone(), Served::Joined),
                (None, Some((at, done))) if !force => {
                    return (Some(done.clone()), Served::Repeat(*at));
                }
                // Checked under the same lock `drain` takes, so that no run
                // starts after the drain counted the running ones.
                _ if self.is_draining() => return (None, Served::Refused),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    runs.running = Some(rx.clone());
                    self.start(phase, tx);
                    (rx, Served::New)
                }
            }
        };
        let finished = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        (finished, served)
    }

    /// Runs `phase` in a task of its own and publishes its result.
    fn start(&self, phase: PhaseName, tx: watch::Sender<Option<Arc<Finished>>>) {
        let Some(p) = self.pipeline.phase(phase).cloned() else {
            return;
        };
        let (runner, path, runs) = (
            self.runner.clone(),
            self.pipeline.path.clone(),
            self.phases.clone(),
        );
        tokio::spawn(async move {
            let finished = Arc::new(run_phase(&runner, &path, &p).await);
            {
                let mut map = runs.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = map.entry(phase).or_default();
                entry.running = None;
                if finished.status == PhaseStatus::Ok {
                    entry.completed = Some((Instant::now(), finished.clone()));
                }
            }
            let _ = tx.send(Some(finished));
        });
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Begins stopping: see [`Server::draining`].
    fn drain(&self) {
        let _runs = self.runs();
        self.draining.store(true, Ordering::Release);
        print_err("lifehook serve: stopping; waiting for running phases\n");
    }

    /// Waits until no phase is running.
    async fn wait_for_running(&self) {
        let running: Vec<_> = self
            .runs()
            .values()
            .filter_map(|r| r.running.clone())
            .collect();
        for mut rx in running {
            let _ = rx.wait_for(Option::is_some).await;
        }
    }
}

async fn run_phase(runner: &Runner, path: &Path, phase: &lifehook_manifest::Phase) -> Finished {
    let options = RunOptions {
        started: Some(Instant::now()),
        ..RunOptions::default()
    };
    let report = runner.run(path, phase, &options).await;
    Finished {
        status: report.status,
        text: render::text(&report),
        json: render::json(&report),
    }
}

fn respond(code: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}
