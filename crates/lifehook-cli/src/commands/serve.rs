//! `lifehook serve`: the httpGet mode. A small HTTP server that runs a phase
//! per request, for pods that use `httpGet` hooks and for lifehook as a
//! sidecar container (the application image need not change).
//!
//! The engine, the linker and every plugin are loaded once at start-up, so
//! a trigger costs no compile. A trigger while the same phase runs joins
//! that run; a trigger after the phase completed returns the earlier report
//! (hooks are delivered at least once) unless `?force=1`. The phase runs in
//! a task of its own: a caller that hangs up or reads slowly cannot hold it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use tokio::sync::{Semaphore, watch};

use super::common::{load_plugins, print_problems, tokio_runtime};
use super::{CacheArgs, PipelineArgs, RegistryArgs, UsageError};
use crate::render::{self, EXIT_INVALID, EXIT_OK};

/// Serve the pipeline's phases over HTTP, for `httpGet` hooks or a sidecar.
///
/// `GET` or `POST /pre-stop` and `/post-start` run that phase and answer
/// when it ends: 200 with the report, or 500 with it (`Accept:
/// application/json` for JSON). `/healthz` answers 200. A trigger while the
/// phase runs joins that run; a trigger after it completed returns the
/// earlier report unless `?force=1`.
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
    pipeline: PipelineArgs,

    #[command(flatten)]
    cache: CacheArgs,

    #[command(flatten)]
    registries: RegistryArgs,

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

    /// Most connections served at once; more wait to be accepted. A client
    /// that sends no request for 5 s is disconnected and frees its slot.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
}

/// The longest a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request (headers) accepted.
const MAX_REQUEST: usize = 16 << 10;
/// The largest request body accepted (triggers need none).
const MAX_BODY: u64 = 1 << 10;

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
        let pipeline = lifehook_manifest::load(&self.pipeline.file, None)?;
        let runner = self.cache.runner(&pipeline, &self.registries)?;
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
        eprintln!(
            "lifehook serve: listening on {} ({}; {})",
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
        );
        let server = Arc::new(Server {
            pipeline,
            runner,
            token,
            phases: Arc::default(),
        });
        let slots = Arc::new(Semaphore::new(self.max_connections.max(1)));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit?,
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                },
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            };
            let _ = stream.set_nodelay(true);
            let server = server.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_REQUEST)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!("connection from {peer}: {e}");
                }
                drop(permit);
            });
        }
        eprintln!("lifehook serve: stopping; waiting for running phases");
        server.wait_for_running().await;
        // The process ends next (see `run` on why not to drop plugins).
        std::mem::forget(server);
        Ok(EXIT_OK)
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
}

/// How a trigger was served.
#[derive(Clone, Copy)]
enum Served {
    /// A new run of the phase.
    New,
    /// It joined a run in progress.
    Joined,
    /// The phase had completed; the earlier report.
    Repeat(Instant),
}

impl Server {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path == "/healthz" {
            return respond(StatusCode::OK, "text/plain", "ok\n".into());
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
        let too_big = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_BODY)
            || req.headers().contains_key(header::TRANSFER_ENCODING);
        if too_big {
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
