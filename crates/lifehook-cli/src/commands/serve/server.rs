//! The state of `lifehook serve` behind its connections: which phase runs,
//! which completed (a repeated trigger gets the earlier report), the
//! bearer-token check and draining on SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use lifehook_manifest::{PhaseName, Pipeline};
use lifehook_runtime::{PhaseReport, PhaseStatus, RunOptions, Runner};
use tokio::sync::watch;

use super::metrics::{self, Metrics, TriggerKind};
use crate::delivery::Ledger;
use crate::output::print_err;
use crate::readiness::Readiness;
use crate::render;
use crate::telemetry::Telemetry;

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

pub(super) struct Server {
    pipeline: Pipeline,
    runner: Runner,
    token: Option<Arc<[u8]>>,
    phases: Arc<Mutex<HashMap<PhaseName, PhaseRuns>>>,
    /// Each phase's last run, for `lifehook status`.
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// `/metrics` answers without the token.
    metrics_public: bool,
    /// `/readyz`: ready until a pre-stop trigger arrives.
    readiness: Arc<Readiness>,
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

impl super::Handler for Server {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        self.answer(req, peer).await
    }
}

impl Server {
    pub(super) fn new(
        pipeline: Pipeline,
        runner: Runner,
        token: Option<Arc<[u8]>>,
        metrics_public: bool,
    ) -> Server {
        Server {
            ledger: Arc::new(Ledger::new(&pipeline)),
            metrics: Arc::new(Metrics::new()),
            metrics_public,
            readiness: Arc::new(Readiness::ready()),
            pipeline,
            runner,
            token,
            phases: Arc::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// Answers one request. The checks run cheapest and most general
    /// first (path, method, token, body), so an unauthenticated caller
    /// learns nothing about the pipeline and can start nothing: the token
    /// is checked before the phase is even looked up.
    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
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
        if path == "/metrics" {
            return self.scrape(&req, peer);
        }
        if path == "/readyz" {
            if !self.authorized(&req) {
                return unauthorized("");
            }
            return readyz(&self.readiness);
        }
        let phase = match path {
            "/pre-stop" => PhaseName::PreStop,
            "/post-start" => PhaseName::PostStart,
            _ => {
                return respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found: use /pre-stop, /post-start, /healthz, /readyz or /metrics\n".into(),
                );
            }
        };
        if !matches!(*req.method(), Method::GET | Method::POST) {
            return method_not_allowed("GET, POST");
        }
        if !self.authorized(&req) {
            tracing::warn!("refused a trigger of {phase} from {peer}: missing or wrong token");
            self.metrics.trigger(phase, TriggerKind::Unauthorized);
            return unauthorized("");
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
        // `?force=1` runs a completed phase again (an operator's retry);
        // without it a repeated delivery gets the earlier report, as the
        // kubelet may deliver a hook more than once.
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
        // A trigger's trace context, continued by the run it starts.
        let parent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Traffic stops before the drain: readiness fails before the
        // phase's first step can start.
        if phase == PhaseName::PreStop {
            self.readiness.stopping("pre-stop running");
        }
        let (finished, served) = self.trigger(phase, force, parent.as_deref()).await;
        let kind = match served {
            Served::New => TriggerKind::Ran,
            Served::Joined => TriggerKind::Joined,
            Served::Repeat(_) => TriggerKind::Repeat,
            Served::Refused => TriggerKind::Refused,
        };
        self.metrics.trigger(phase, kind);
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
        // 500 for a failed phase: the kubelet records a failed httpGet
        // hook (an event) only for a non-2xx answer.
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
        // How the trigger was served, for callers and tests: a joined or
        // repeated answer ran nothing new.
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

    /// `GET /metrics`: the token is needed as for triggers, unless
    /// `--metrics-public`.
    fn scrape(&self, req: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if *req.method() != Method::GET {
            return method_not_allowed("GET");
        }
        if !self.metrics_public && !self.authorized(req) {
            tracing::warn!("refused a scrape of /metrics from {peer}: missing or wrong token");
            return unauthorized(" (or serve with --metrics-public)");
        }
        respond(StatusCode::OK, metrics::CONTENT_TYPE, self.metrics.encode())
    }

    /// Constant-time comparison of the bearer token, when one is set: a
    /// comparison that stopped at the first wrong byte would let a peer
    /// on the pod network find the token byte by byte from the timings.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        bearer_ok(req, self.token.as_deref())
    }

    /// The phases' runs, locked briefly (never across an await). Poison
    /// is ignored: every update of the map is a single assignment.
    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<PhaseName, PhaseRuns>> {
        self.phases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `phase`, joins its run, or returns its earlier success.
    async fn trigger(
        &self,
        phase: PhaseName,
        force: bool,
        parent: Option<&str>,
    ) -> (Option<Arc<Finished>>, Served) {
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
                    self.start(phase, tx, parent);
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

    /// Runs `phase` in a task of its own and publishes its result. Only a
    /// success is kept as `completed`: a failed phase runs again at the
    /// next trigger, which is what a retried hook wants.
    fn start(
        &self,
        phase: PhaseName,
        tx: watch::Sender<Option<Arc<Finished>>>,
        parent: Option<&str>,
    ) {
        let Some(p) = self.pipeline.phase(phase).cloned() else {
            return;
        };
        let telemetry = Telemetry::new(&self.pipeline, parent);
        let (runner, path, runs) = (
            self.runner.clone(),
            self.pipeline.path.clone(),
            self.phases.clone(),
        );
        let books = (self.ledger.clone(), self.metrics.clone());
        let readiness = self.readiness.clone();
        tokio::spawn(async move {
            let (finished, report) = run_phase(&runner, &path, &p, &books, &telemetry).await;
            let finished = Arc::new(finished);
            if phase == PhaseName::PreStop {
                readiness.stopping(format!("pre-stop ended: {}", report.status.as_str()));
            }
            {
                let mut map = runs.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = map.entry(phase).or_default();
                entry.running = None;
                if finished.status == PhaseStatus::Ok {
                    entry.completed = Some((Instant::now(), finished.clone()));
                }
            }
            let _ = tx.send(Some(finished));
            // After the callers have their answer.
            let bound = Instant::now() + crate::telemetry::BOUND;
            telemetry.export(&report, "serve", false, bound).await;
        });
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Begins stopping: see [`Server::draining`].
    pub(super) fn drain(&self) {
        // Under the runs' lock, so that `trigger` sees either no drain and
        // starts its run before `wait_for_running` counts them, or the
        // drain and starts nothing.
        let _runs = self.runs();
        self.draining.store(true, Ordering::Release);
        self.readiness.stopping("lifehook serve is stopping");
        print_err("lifehook serve: stopping; waiting for running phases\n");
    }

    /// Waits until no phase is running (those running now; none can start
    /// once draining).
    pub(super) async fn wait_for_running(&self) {
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

/// One run of `phase`, rendered both ways at once: a joined or repeated
/// trigger may ask for either, and rendering again per caller would cost
/// each of a hundred concurrent callers the same work.
async fn run_phase(
    runner: &Runner,
    path: &Path,
    phase: &lifehook_manifest::Phase,
    (ledger, metrics): &(Arc<Ledger>, Arc<Metrics>),
    telemetry: &Telemetry,
) -> (Finished, PhaseReport) {
    let options = RunOptions {
        started: Some(Instant::now()),
        trace: telemetry.trace(),
        ..RunOptions::default()
    };
    let report = runner.run(path, phase, &options).await;
    let text = render::text(&report);
    // The caller gets the report; the sidecar's log and `status` too.
    crate::logging::mirror_report(&text);
    ledger.record(phase.name, "serve", &text, render::json_value(&report));
    metrics.phase_ran(&report);
    let finished = Finished {
        status: report.status,
        text,
        json: render::json(&report),
    };
    (finished, report)
}

/// Whether `req` carries `Authorization: Bearer <token>` (always, when no
/// token is set), compared in constant time.
pub(crate) fn bearer_ok(req: &Request<Incoming>, token: Option<&[u8]>) -> bool {
    let Some(token) = token else {
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

/// `GET /readyz`'s answer: 200 when ready, else 503 saying why not.
pub(crate) fn readyz(readiness: &Readiness) -> Response<Full<Bytes>> {
    match readiness.answer() {
        Ok(text) => respond(StatusCode::OK, "text/plain", text.into()),
        Err(why) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
    }
}

/// 405, naming the methods `allow`ed.
fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        format!("use {}\n", allow.replace(", ", " or ")),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// 401 asking for the bearer token (`more` adds to the message).
pub(crate) fn unauthorized(more: &str) -> Response<Full<Bytes>> {
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        format!("a valid `Authorization: Bearer <token>` header is required{more}\n"),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// A response with `body` as `kind` (the connection closes after it:
/// keep-alive is off, see `serve_connection`).
pub(super) fn respond(code: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}
