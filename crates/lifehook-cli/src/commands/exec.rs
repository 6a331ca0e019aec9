//! `lifehook exec`: the entrypoint mode. lifehook starts the application as
//! its child and plays the kubelet's part around it: post-start alongside
//! the application, pre-stop on SIGTERM or SIGINT, then the signal, then
//! SIGKILL when the grace period is over; and, as PID 1, reaps every zombie.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use lifehook_manifest::{Phase, PhaseName, Pipeline};
use lifehook_runtime::{PhaseReport, PhaseStatus, RunOptions, Runner};
use lifehook_units::format_duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Target;
use super::run::parse_duration;
use super::serve::Probe;
use super::tokio_runtime;
use crate::delivery::Ledger;
use crate::exit::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND};
use crate::output::print_err;
use crate::readiness::Readiness;
use crate::render;
use crate::supervisor::{App, Ended, become_subreaper, signal_name};
use crate::telemetry::Telemetry;

/// Run an application under lifehook: post-start alongside it, pre-stop on
/// SIGTERM/SIGINT before the signal reaches it, SIGKILL when the grace
/// period is over. For runtimes without lifecycle hooks (docker or podman
/// `stop`, Nomad, systemd, a shell) and to rehearse a pod's termination.
///
/// The application runs in its own process group; SIGQUIT, SIGHUP, SIGUSR1,
/// SIGUSR2 and SIGWINCH are forwarded to it at once. A second SIGTERM or
/// SIGINT during pre-stop does not start pre-stop again. If the application
/// exits on its own, pre-stop does not run (as in Kubernetes) unless
/// --pre-stop-on-exit is given. Under a terminal (`docker run -it`) the
/// application's group is made the terminal's foreground group, so it can
/// read it and ^C reaches it directly; when ^C ends it, pre-stop runs once.
/// If post-start fails, the application is stopped as the kubelet does (pre-stop, SIGTERM, SIGKILL after the grace
/// period) and lifehook exits non-zero. lifehook exits with the
/// application's exit code, or 128+N when a signal N killed it, and prints a
/// timeline of what happened to stderr; 127 when the command is not found,
/// 126 when it is found but cannot be executed (as shells do).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook exec -- ./server --port 8080
  lifehook exec -f /etc/lifehook/lifehook.toml --grace-period 45s -- /app
  lifehook exec --stop-signal QUIT -- nginx -g 'daemon off;'   # nginx stops gracefully on SIGQUIT
  lifehook exec --map-exit 143:0 -- java -jar app.jar           # a JVM's 143 after SIGTERM is a clean stop

As a container's entrypoint (PID 1, reaping zombies):
  ENTRYPOINT [\"/lifehook\", \"exec\", \"-f\", \"/etc/lifehook/lifehook.toml\", \"--\"]
  CMD [\"/app\"]

Exit codes:
  N        the application's own exit code
  128+N    a signal N killed the application
  126      the command was found but cannot be executed
  127      the command was not found
  1        post-start failed and the application exited 0
  2, 4     as for `run`: an invalid pipeline or command line, an internal failure")]
pub struct Exec {
    #[command(flatten)]
    target: Target,

    /// Time from the stop signal to SIGKILL, like the pod's
    /// terminationGracePeriodSeconds. Pre-stop gets at most this; the
    /// application then gets what is left, and at least 2s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    grace_period: Duration,

    /// Run pre-stop also when the application exits on its own.
    #[arg(long)]
    pre_stop_on_exit: bool,

    /// The signal the application gets after pre-stop, instead of the one
    /// lifehook received (a name like QUIT or SIGQUIT, or a number): nginx
    /// and php-fpm stop gracefully on SIGQUIT.
    #[arg(long, value_name = "SIGNAL", value_parser = parse_signal)]
    stop_signal: Option<i32>,

    /// Exit with TO when the application exits with FROM (repeatable), like
    /// `--map-exit 143:0` for a JVM that exits 143 after SIGTERM.
    #[arg(long, value_name = "FROM:TO", value_parser = parse_exit_map)]
    map_exit: Vec<(i32, i32)>,

    /// Serve `GET /readyz` here, for a readinessProbe or a load balancer:
    /// 200 while the app runs (once post-start has ended), 503 from the
    /// moment the stop signal arrives, before pre-stop starts. A bare port
    /// listens on loopback; any other address needs --token-file or
    /// --token-env, and /readyz then needs `Authorization: Bearer <token>`.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    ready_listen: Option<std::net::SocketAddr>,

    /// A file holding the token /readyz requests must carry.
    #[arg(
        long,
        value_name = "PATH",
        requires = "ready_listen",
        conflicts_with = "token_env"
    )]
    token_file: Option<PathBuf>,

    /// An environment variable holding the token /readyz requests must carry.
    #[arg(long, value_name = "NAME", requires = "ready_listen")]
    token_env: Option<String>,

    /// The application and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// The least time the application gets between the forwarded signal and
/// SIGKILL, whatever pre-stop used: the kubelet's own minimum.
const MIN_DRAIN: Duration = Duration::from_secs(2);

impl Exec {
    pub fn execute(self) -> anyhow::Result<i32> {
        let token =
            super::serve::load_token(self.token_file.as_deref(), self.token_env.as_deref())?;
        if let Some(addr) = self.ready_listen
            && token.is_none()
            && !addr.ip().is_loopback()
        {
            return Err(super::UsageError(format!(
                "refusing to serve /readyz on {addr} without a token: pass --token-file or --token-env (the probe sends it in httpGet.httpHeaders), or listen on loopback"
            ))
            .into());
        }
        let pipeline = lifehook_manifest::load(&self.target.pipeline.file, None)?;
        let runner = self.target.runner(&pipeline)?;
        let runtime = tokio_runtime()?;
        let code = runtime.block_on(self.supervise(&pipeline, runner, token))?;
        runtime.shutdown_background();
        Ok(code)
    }

    async fn supervise(
        &self,
        pipeline: &Pipeline,
        runner: Runner,
        token: Option<Arc<[u8]>>,
    ) -> anyhow::Result<i32> {
        let mut timeline = Timeline::new();
        // Orphans of the application's own children are re-parented to
        // lifehook rather than to init (when lifehook is not PID 1 itself),
        // so they are reaped and none is left a zombie.
        become_subreaper();
        // Handlers go in before the application starts, so that no signal
        // (its SIGCHLD included) can be missed.
        let (tx, mut signals) = mpsc::unbounded_channel();
        for sig in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGWINCH,
        ] {
            let mut stream = signal(SignalKind::from_raw(sig))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
        // Not ready until post-start has ended, as Kubernetes counts it.
        let readiness = Arc::new(match pipeline.phase(PhaseName::PostStart) {
            Some(_) => Readiness::starting("post-start running"),
            None => Readiness::ready(),
        });
        if let Some(addr) = self.ready_listen {
            use anyhow::Context as _;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve /readyz on {addr}"))?;
            let probe = Arc::new(Probe {
                readiness: readiness.clone(),
                token,
            });
            tokio::spawn(super::serve::serve_forever(listener, probe, 64));
        }
        let app = match App::start(&self.command) {
            Ok(app) => app,
            Err(e) => {
                let program = self.command[0].to_string_lossy();
                let (code, hint) = cannot_start(&e);
                print_err(&format!("error: cannot start {program}: {e}{hint}\n"));
                return Ok(code);
            }
        };
        let command: Vec<String> = self
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        timeline.event(format!(
            "app started: {} (pid {})",
            command.join(" "),
            app.pid()
        ));
        let phases = Phases {
            runner,
            pipeline: Arc::new(pipeline.clone()),
            ledger: Arc::new(Ledger::new(pipeline)),
            exports: Arc::default(),
        };
        // The app may have ended already (a command that fails at once):
        // reaped before the loop so the first turn sees it.
        let ended = app.reap();
        // Post-start starts with the app, as in Kubernetes (where it runs
        // beside the container's entrypoint, not before it).
        let mut s = Supervision {
            grace: self.grace_period,
            stop_signal: self.stop_signal,
            readiness,
            pipeline,
            post_start: pipeline
                .phase(PhaseName::PostStart)
                .map(|p| phases.start(p, None)),
            phases,
            app,
            timeline,
            pre_stop: None,
            stop: None,
            kill_at: None,
            ended,
            post_start_failed: false,
            pre_stop_ran: false,
        };
        // One loop over signals, phase ends and the SIGKILL timer, until the
        // app has ended and no pre-stop is running.
        loop {
            if let Some(how) = s.ended {
                s.app.release_terminal();
                s.abandon_post_start("the app is gone");
                // ^C on the terminal the app held went to the app's group,
                // not to lifehook: it still means "stop", so pre-stop runs.
                let interrupted = s.app.has_terminal()
                    && matches!(how, Ended::Killed(libc::SIGINT) | Ended::Exited(130));
                let wanted =
                    (self.pre_stop_on_exit || interrupted) && s.stop.is_none() && !s.pre_stop_ran;
                if let (true, Some(phase)) = (wanted, pipeline.phase(PhaseName::PreStop)) {
                    let why = if interrupted {
                        "interrupted from the terminal"
                    } else {
                        "--pre-stop-on-exit"
                    };
                    s.timeline
                        .event(format!("app {}; {why}: running pre-stop", how.describe()));
                    s.pre_stop = Some(s.phases.start(phase, None));
                    s.pre_stop_ran = true;
                    s.stop = Some((libc::SIGTERM, Instant::now() + self.grace_period));
                }
                if s.pre_stop.is_none() {
                    break;
                }
            }
            tokio::select! {
                Some(sig) = signals.recv() => s.on_signal(sig),
                joined = join(&mut s.post_start), if s.post_start.is_some() => {
                    s.post_start = None;
                    if let Some(report) = joined {
                        s.timeline.phase_done(&report);
                        if report.status == PhaseStatus::Ok {
                            s.readiness.started();
                        }
                        if report.status != PhaseStatus::Ok && s.stop.is_none() && s.ended.is_none() {
                            s.post_start_failed = true;
                            s.timeline.event("post-start failed: stopping the app, as the kubelet does".into());
                            s.begin_stop(libc::SIGTERM);
                        }
                    }
                },
                joined = join(&mut s.pre_stop), if s.pre_stop.is_some() => {
                    s.pre_stop = None;
                    if let Some(report) = joined {
                        s.timeline.phase_done(&report);
                        s.readiness.stopping(format!("pre-stop ended: {}", report.status.as_str()));
                    }
                    if let (None, Some((sig, grace_end))) = (s.ended, s.stop) {
                        s.forward_stop(sig, grace_end);
                    }
                },
                () = sleep_until(s.kill_at), if s.kill_at.is_some() && s.ended.is_none() => {
                    s.kill_at = None;
                    s.app.signal_group(libc::SIGKILL);
                    s.timeline.event("grace period over: SIGKILL sent to the app's process group".into());
                },
            }
        }
        // Orphans that ended with the app.
        let _ = s.app.reap();
        let code = s.ended.map_or(1, Ended::code);
        let code = match self.map_exit.iter().find(|(from, _)| *from == code) {
            Some(&(from, to)) => {
                s.timeline.event(format!(
                    "exit code {from} mapped to {to} (--map-exit {from}:{to})"
                ));
                to
            }
            None => code,
        };
        let code = if s.post_start_failed && code == 0 {
            1
        } else {
            code
        };
        print_err(&s.timeline.render());
        s.phases.finish_exports().await;
        // The process ends next: not unregistering the plugins' machine code
        // saves the static build's quadratic unwinder teardown (see `run`).
        std::mem::forget(s);
        Ok(code)
    }
}

/// The state of one supervised application.
struct Supervision<'a> {
    grace: Duration,
    /// What `/readyz` answers.
    readiness: Arc<Readiness>,
    /// `--stop-signal`: what the app gets after pre-stop.
    stop_signal: Option<i32>,
    pipeline: &'a Pipeline,
    phases: Phases,
    app: App,
    timeline: Timeline,
    post_start: Option<JoinHandle<PhaseReport>>,
    pre_stop: Option<JoinHandle<PhaseReport>>,
    /// The stop signal and when the grace period ends, once stopping.
    stop: Option<(i32, Instant)>,
    /// When to SIGKILL the group.
    kill_at: Option<Instant>,
    ended: Option<Ended>,
    post_start_failed: bool,
    pre_stop_ran: bool,
}

impl Supervision<'_> {
    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGCHLD => {
                if let Some(how) = self.app.reap() {
                    self.timeline.event(format!("app {}", how.describe()));
                    self.readiness
                        .stopping(format!("the app {}", how.describe()));
                    self.ended = Some(how);
                }
            }
            libc::SIGTERM | libc::SIGINT => {
                self.timeline
                    .event(format!("{} received", signal_name(sig)));
                if self.stop.is_some() {
                    self.timeline
                        .event("already stopping: pre-stop is not started again".into());
                } else if self.ended.is_none() {
                    self.begin_stop(sig);
                }
            }
            other => {
                self.app.signal_group(other);
                self.timeline
                    .event(format!("{} forwarded to the app", signal_name(other)));
            }
        }
    }

    /// Stopping, asked by a signal or a failed post-start: pre-stop first,
    /// or the signal at once when there is no pre-stop.
    fn begin_stop(&mut self, sig: i32) {
        // First of all: traffic stops before the drain.
        self.readiness
            .stopping(format!("{} received: stopping", signal_name(sig)));
        let grace_end = Instant::now() + self.grace;
        self.stop = Some((sig, grace_end));
        self.abandon_post_start("stopping");
        match self.pipeline.phase(PhaseName::PreStop) {
            Some(phase) => {
                self.pre_stop = Some(self.phases.start(phase, Some(self.grace)));
                self.pre_stop_ran = true;
                self.timeline.event(format!(
                    "pre-stop started (deadline {})",
                    format_duration(phase.deadline.min(self.grace))
                ));
            }
            None => self.forward_stop(sig, grace_end),
        }
    }

    /// Sends the stop signal on and sets the SIGKILL for what is left of
    /// the grace period, and at least [`MIN_DRAIN`].
    fn forward_stop(&mut self, received: i32, grace_end: Instant) {
        let sig = self.stop_signal.unwrap_or(received);
        self.app.signal_group(sig);
        if sig == received {
            self.timeline
                .event(format!("{} forwarded to the app", signal_name(sig)));
        } else {
            self.timeline.event(format!(
                "{} sent to the app (--stop-signal, for {})",
                signal_name(sig),
                signal_name(received)
            ));
        }
        self.kill_at = Some(grace_end.max(Instant::now() + MIN_DRAIN));
    }

    fn abandon_post_start(&mut self, why: &str) {
        if let Some(handle) = self.post_start.take() {
            handle.abort();
            self.timeline.event(format!("post-start abandoned: {why}"));
        }
    }
}

/// `--stop-signal`'s parser: a name (`QUIT`, `SIGQUIT`, any case) or a
/// number.
fn parse_signal(text: &str) -> Result<i32, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Ok(n) = name.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is not a signal number (1-64)"))
        };
    }
    crate::supervisor::signal_by_name(name).ok_or_else(|| {
        format!("{text:?} is not a signal: use a name like TERM, QUIT, INT, HUP, USR1, USR2, WINCH or a number")
    })
}

/// `--ready-listen`'s parser: an address, or a bare port on loopback.
fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not an address like 0.0.0.0:8081 or a port"))
}

/// `--map-exit`'s parser: `FROM:TO`, each 0-255.
fn parse_exit_map(text: &str) -> Result<(i32, i32), String> {
    let code = |t: &str| {
        t.trim()
            .parse::<u8>()
            .map(i32::from)
            .map_err(|_| format!("{t:?} is not an exit code (0-255)"))
    };
    let (from, to) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not FROM:TO, like 143:0"))?;
    Ok((code(from)?, code(to)?))
}

/// The exit code for a command that cannot start, as shells give it: 127
/// when it is not found, 126 when it is found but cannot be executed; and a
/// hint for the message.
fn cannot_start(e: &std::io::Error) -> (i32, &'static str) {
    match e.kind() {
        std::io::ErrorKind::NotFound => (
            EXIT_NOT_FOUND,
            " (not found: give a path, or a name on $PATH)",
        ),
        std::io::ErrorKind::PermissionDenied => (
            EXIT_CANNOT_EXECUTE,
            " (found, but not executable: check its mode bits and the mount's noexec)",
        ),
        _ => (EXIT_CANNOT_EXECUTE, ""),
    }
}

/// Awaits a phase's task, if there is one (`None` if it was aborted).
async fn join(task: &mut Option<JoinHandle<PhaseReport>>) -> Option<PhaseReport> {
    match task {
        Some(handle) => handle.await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Starts phases on the runner.
struct Phases {
    runner: Runner,
    /// The pipeline as loaded: its file, its `[telemetry]`.
    pipeline: Arc<Pipeline>,
    /// Each phase's last run, for `lifehook status`.
    ledger: Arc<Ledger>,
    /// Telemetry exports under way.
    exports: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Phases {
    /// Waits for the telemetry exports under way (each bounds itself).
    async fn finish_exports(&self) {
        let exports = std::mem::take(
            &mut *self
                .exports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for export in exports {
            let _ = tokio::time::timeout(crate::telemetry::BOUND, export).await;
        }
    }

    /// Runs `phase` from now, its deadline clipped to `within` (the grace
    /// period, for pre-stop), and prints its report to stderr.
    fn start(&self, phase: &Phase, within: Option<Duration>) -> JoinHandle<PhaseReport> {
        let (runner, pipeline, phase) = (self.runner.clone(), self.pipeline.clone(), phase.clone());
        let ledger = self.ledger.clone();
        let telemetry = Telemetry::new(&self.pipeline, None);
        let exports = self.exports.clone();
        let options = RunOptions {
            deadline: within.map(|w| phase.deadline.min(w)),
            started: Some(Instant::now()),
            trace: telemetry.trace(),
            ..RunOptions::default()
        };
        let deadline = Instant::now() + options.deadline.unwrap_or(phase.deadline);
        tokio::spawn(async move {
            let report = runner.run(&pipeline.path, &phase, &options).await;
            let text = render::text(&report);
            print_err(&text);
            ledger.record(phase.name, "exec", &text, render::json_value(&report));
            // Not awaited here: the application's stop signal must not
            // wait for a collector. `finish_exports` waits at the end.
            let export = report.clone();
            exports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(tokio::spawn(async move {
                    telemetry.export(&export, "exec", false, deadline).await;
                }));
            report
        })
    }
}

/// What happened, when, from the start: printed at the end so a user can
/// rehearse a pod's termination and read it back.
struct Timeline {
    start: Instant,
    events: Vec<(Duration, String)>,
}

impl Timeline {
    fn new() -> Timeline {
        let start = crate::STARTED.get().copied().unwrap_or_else(Instant::now);
        Timeline {
            start,
            events: Vec::new(),
        }
    }

    fn event(&mut self, text: String) {
        tracing::info!("{text}");
        self.events.push((self.start.elapsed(), text));
    }

    fn phase_done(&mut self, report: &PhaseReport) {
        let headline = render::text(report);
        let headline = headline.lines().next().unwrap_or_default();
        let text = headline
            .strip_prefix("lifehook ")
            .unwrap_or(headline)
            .replacen(": ", " done: ", 1);
        self.event(text);
    }

    fn render(&self) -> String {
        let mut out = String::from("lifehook exec timeline:\n");
        for (at, text) in &self.events {
            out += &format!("  +{:<8} {text}\n", format_duration(*at));
        }
        out
    }
}
