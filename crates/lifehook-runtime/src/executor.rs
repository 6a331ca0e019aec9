//! Runs a phase: groups of steps in order, each step's attempts under its
//! limits, retries with backoff, and the phase deadline over everything.
//!
//! Every wait is bounded by a deadline: loading a plugin, each attempt (an
//! epoch callback stops guest loops; `tokio::time::timeout_at` stops a guest
//! blocked in a host call), and the backoff between attempts. When the phase
//! deadline passes, the running steps are dropped and the rest skipped, so the
//! caller gets its report on time whatever the plugins do.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifehook_manifest::{Fuel, OnFailure, Phase, PhaseName, Step, TcpGrant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::lifehook::hook::types::{Failure, Invocation, Phase as WitPhase};
use crate::cache::ArtifactCache;
use crate::capture::OutputCapture;
use crate::engine::Runtime;
use crate::plugin::{LoadError, Plugin, Pre};
use crate::report::{Outcome, PhaseReport, StepReport, human};
use crate::state::{Denials, StepState};

/// Choices made on the command line for one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only these steps (all when empty).
    pub only: Vec<String>,
    /// Replaces the phase's own deadline.
    pub deadline: Option<Duration>,
    /// Where precompiled plugins are looked up.
    pub cache: Option<ArtifactCache>,
    /// When the deadline started (the process start, for a hook: the
    /// grace period counts the runner's own start-up too). Now by default.
    pub started: Option<Instant>,
}

/// Runs `phase` of the pipeline at `pipeline` and reports what happened.
/// Returns within the phase deadline plus scheduling noise.
pub async fn run_phase(
    rt: &Runtime,
    pipeline: &Path,
    phase: &Phase,
    options: &RunOptions,
) -> PhaseReport {
    let started = options.started.unwrap_or_else(Instant::now);
    let deadline_len = options.deadline.unwrap_or(phase.deadline);
    let deadline = started + deadline_len;
    let steps: Vec<Arc<Step>> = phase
        .steps
        .iter()
        .filter(|s| options.only.is_empty() || options.only.contains(&s.name))
        .map(|s| Arc::new(s.clone()))
        .collect();
    let loader = Arc::new(Loader::start(
        rt,
        options.cache.as_ref(),
        steps.iter().map(|s| s.plugin.as_path()),
    ));

    let mut reports = Vec::with_capacity(steps.len());
    let mut aborted_by: Option<String> = None;
    let mut deadline_hit = false;
    for group in groups(&steps) {
        let skip_reason = if let Some(by) = &aborted_by {
            Some(format!("step `{by}` failed with on-failure = \"abort\""))
        } else if Instant::now() >= deadline {
            deadline_hit = true;
            Some(format!(
                "the phase deadline of {} was reached",
                human(deadline_len)
            ))
        } else {
            None
        };
        if let Some(reason) = skip_reason {
            reports.extend(group.iter().map(|s| skipped(s, &reason)));
            continue;
        }
        let mut set = JoinSet::new();
        for (index, step) in group.iter().enumerate() {
            let (rt, loader, step, name) = (rt.clone(), loader.clone(), step.clone(), phase.name);
            let span = tracing::info_span!("hook", step = %step.name);
            set.spawn(
                async move {
                    let report = run_step(&rt, &loader, name, &step, deadline).await;
                    (index, report)
                }
                .instrument(span),
            );
        }
        let mut results: Vec<Option<StepReport>> = vec![None; group.len()];
        // Each step ends by its own deadline; this one only guards against a
        // bug in that logic keeping the runner past the phase deadline.
        let guard = deadline + Duration::from_millis(50);
        while let Ok(Some(joined)) = tokio::time::timeout_at(guard.into(), set.join_next()).await {
            match joined {
                Ok((index, report)) => results[index] = Some(report),
                Err(e) => tracing::error!("a step task failed: {e}"),
            }
        }
        set.abort_all();
        for (step, result) in group.iter().zip(results) {
            let report = result.unwrap_or_else(|| {
                let mut r = skipped(step, "did not finish by the phase deadline");
                r.outcome = Outcome::TimedOut;
                r.cut_by_deadline = true;
                r
            });
            deadline_hit |= report.cut_by_deadline;
            if report.outcome != Outcome::Ok
                && step.on_failure == OnFailure::Abort
                && aborted_by.is_none()
            {
                aborted_by = Some(step.name.clone());
            }
            reports.push(report);
        }
    }
    PhaseReport {
        phase: phase.name,
        pipeline: pipeline.to_path_buf(),
        deadline: deadline_len,
        duration: started.elapsed(),
        deadline_hit,
        aborted_by,
        exit_code: 0,
        steps: reports,
    }
    .finish()
}

/// Splits steps into groups run one after another: a run of consecutive
/// `concurrent` steps is one group; every other step is a group of its own.
fn groups(steps: &[Arc<Step>]) -> Vec<&[Arc<Step>]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < steps.len() {
        let mut end = start + 1;
        if steps[start].concurrent {
            while end < steps.len() && steps[end].concurrent {
                end += 1;
            }
        }
        out.push(&steps[start..end]);
        start = end;
    }
    out
}

fn skipped(step: &Step, reason: &str) -> StepReport {
    StepReport {
        name: step.name.clone(),
        plugin: step.plugin.clone(),
        kind: None,
        code: None,
        load_time: None,
        outcome: Outcome::Skipped,
        message: format!("skipped: {reason}"),
        attempts: 0,
        duration: Duration::ZERO,
        fuel_consumed: None,
        denials: Vec::new(),
        output_dropped: 0,
        on_failure: step.on_failure,
        cut_by_deadline: false,
    }
}

type LoadResult = Result<Arc<Plugin>, String>;

fn shared(loaded: Result<Plugin, LoadError>) -> LoadResult {
    loaded.map(Arc::new).map_err(|e| e.to_string())
}

/// Loads `path` (compiling it if need be) on a blocking thread.
fn load_in_background(
    rt: &Runtime,
    cache: Option<&ArtifactCache>,
    path: &Path,
) -> watch::Receiver<Option<LoadResult>> {
    let (tx, rx) = watch::channel(None);
    let (rt, cache, path) = (rt.clone(), cache.cloned(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let loaded = match &cache {
            Some(cache) => cache.load(&rt, &path),
            None => Plugin::load(&rt, &path),
        };
        let _ = tx.send(Some(shared(loaded)));
    });
    rx
}

/// Loads each plugin of the phase once, all at the same time on blocking
/// threads, so a later step's compile overlaps earlier steps' runs and
/// concurrent steps never wait for each other's compilation.
///
/// The first plugin, which the run waits for anyway, is loaded on the
/// calling thread when it has a usable artifact: that takes milliseconds
/// (no compiling) and saves a thread, a tenth of a one-step run.
struct Loader {
    slots: HashMap<PathBuf, watch::Receiver<Option<LoadResult>>>,
}

impl Loader {
    fn start<'a>(
        rt: &Runtime,
        cache: Option<&ArtifactCache>,
        plugins: impl Iterator<Item = &'a Path>,
    ) -> Loader {
        let mut paths: Vec<&Path> = Vec::new();
        for path in plugins {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        let mut slots = HashMap::new();
        for path in paths.iter().skip(1) {
            slots.insert(path.to_path_buf(), load_in_background(rt, cache, path));
        }
        if let Some(first) = paths.first() {
            let inline = cache.and_then(|c| c.try_precompiled(rt, first));
            let slot = match inline {
                Some(loaded) => watch::channel(Some(shared(loaded))).1,
                None => load_in_background(rt, cache, first),
            };
            slots.insert(first.to_path_buf(), slot);
        }
        Loader { slots }
    }

    async fn get(&self, path: &Path) -> LoadResult {
        let Some(rx) = self.slots.get(path) else {
            return Err(format!(
                "plugin {} was not scheduled for loading",
                path.display()
            ));
        };
        let mut rx = rx.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(value) => value
                .clone()
                .unwrap_or_else(|| Err("plugin load vanished".into())),
            Err(_) => Err(format!(
                "loading plugin {} stopped unexpectedly",
                path.display()
            )),
        }
    }
}

/// What one attempt came to.
struct AttemptResult {
    outcome: Outcome,
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
    fuel: Option<u64>,
}

impl AttemptResult {
    fn failed(outcome: Outcome, message: String, retryable: bool) -> AttemptResult {
        AttemptResult {
            outcome,
            message,
            retryable,
            retry_after: None,
            fuel: None,
        }
    }
}

async fn run_step(
    rt: &Runtime,
    loader: &Loader,
    phase: PhaseName,
    step: &Step,
    phase_deadline: Instant,
) -> StepReport {
    let started = Instant::now();
    let output = OutputCapture::new(step.limits.output);
    let denials = Denials::default();
    let mut report = skipped(step, "");
    report.outcome = Outcome::Failed;

    // Loading counts against the first attempt's time.
    let first_deadline = (started + step.limits.timeout).min(phase_deadline);
    let plugin =
        match tokio::time::timeout_at(first_deadline.into(), loader.get(&step.plugin)).await {
            Ok(Ok(plugin)) => plugin,
            Ok(Err(message)) => {
                report.message = message;
                report.duration = started.elapsed();
                return report;
            }
            Err(_) => {
                report.outcome = Outcome::TimedOut;
                report.cut_by_deadline = first_deadline == phase_deadline;
                report.message = format!(
                    "plugin {} was still compiling after {}: precompile it with `lifehook compile`",
                    step.plugin.display(),
                    human(started.elapsed())
                );
                report.duration = started.elapsed();
                return report;
            }
        };
    report.kind = Some(plugin.kind);
    report.code = Some(plugin.source);
    report.load_time = Some(plugin.load_time);
    tracing::debug!(
        "plugin {} ready ({:?}, {:?}); step started {:?} ago",
        step.plugin.display(),
        plugin.source,
        plugin.load_time,
        started.elapsed()
    );

    // None once any attempt's fuel is unknown (see `run_attempt`).
    let mut fuel_total: Option<u64> = Some(0);
    let attempts = step.retry.attempts;
    let mut attempt = 1;
    loop {
        let attempt_start = Instant::now();
        let deadline = (attempt_start + step.limits.timeout).min(phase_deadline);
        let deadline = if attempt == 1 {
            deadline.min(first_deadline)
        } else {
            deadline
        };
        let invocation = Invocation {
            phase: match phase {
                PhaseName::PreStop => WitPhase::PreStop,
                PhaseName::PostStart => WitPhase::PostStart,
            },
            step: step.name.clone(),
            attempt,
            max_attempts: attempts,
            time_left_ms: deadline
                .saturating_duration_since(attempt_start)
                .as_millis() as u64,
        };
        let result = run_attempt(rt, &plugin, step, &invocation, deadline, &denials, &output).await;
        output.flush();
        report.attempts = attempt;
        fuel_total = fuel_total
            .zip(result.fuel)
            .map(|(a, b)| a.saturating_add(b));
        report.outcome = result.outcome;
        report.message = result.message;
        report.cut_by_deadline = result.outcome == Outcome::TimedOut && deadline == phase_deadline;
        if result.outcome == Outcome::Ok || !result.retryable || attempt >= attempts {
            if result.outcome != Outcome::Ok && result.retryable && attempts > 1 {
                report.message = format!("{} (gave up after {attempt} attempts)", report.message);
            }
            break;
        }
        let wait = step
            .retry
            .backoff_after(attempt)
            .max(result.retry_after.unwrap_or_default());
        let left = phase_deadline.saturating_duration_since(Instant::now());
        if wait >= left {
            report.message = format!(
                "{} (no retry: the next attempt would start in {}, after the phase deadline)",
                report.message,
                human(wait)
            );
            break;
        }
        tracing::info!(
            "attempt {attempt}/{attempts} {}: {}; retrying in {}",
            result.outcome,
            report.message,
            human(wait)
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
    report.fuel_consumed = fuel_total;
    report.denials = denials.snapshot();
    report.output_dropped = output.dropped();
    report.duration = started.elapsed();
    match report.outcome {
        Outcome::Ok => tracing::info!("ok: {}", report.message),
        outcome => tracing::warn!("step {outcome}: {}", report.message),
    }
    report
}

/// What a call into the plugin returned, before classification.
enum Returned {
    Hook(Result<String, Failure>),
    Command(Result<(), ()>),
}

async fn run_attempt(
    rt: &Runtime,
    plugin: &Plugin,
    step: &Step,
    invocation: &Invocation,
    deadline: Instant,
    denials: &Denials,
    output: &OutputCapture,
) -> AttemptResult {
    let tcp = match tokio::time::timeout_at(deadline.into(), resolve_tcp(&step.grants.tcp)).await {
        Ok(addrs) => addrs,
        Err(_) => {
            return AttemptResult::failed(
                Outcome::TimedOut,
                "timed out resolving the step's TCP grants".into(),
                true,
            );
        }
    };
    let state = match StepState::new(step, tcp, deadline, denials.clone(), output.clone()) {
        Ok(state) => state,
        Err(e) => return AttemptResult::failed(Outcome::Failed, format!("{e:#}"), false),
    };
    let mut store = Store::new(&rt.engine, state);
    store.limiter(|s| &mut s.limiter);
    let fuel = match step.limits.fuel {
        Fuel::Limited(n) => n,
        Fuel::Unlimited => u64::MAX,
    };
    if let Err(e) = store.set_fuel(fuel) {
        return AttemptResult::failed(Outcome::Failed, format!("cannot set fuel: {e}"), false);
    }
    // At every epoch tick: stop the guest when its deadline has passed,
    // otherwise yield so timers and concurrent steps make progress.
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);

    let call = async {
        match &plugin.pre {
            Pre::Hook(pre) => {
                let hook = pre.instantiate_async(&mut store).await?;
                hook.call_run(&mut store, invocation)
                    .await
                    .map(Returned::Hook)
            }
            Pre::Command(pre) => {
                let command = pre.instantiate_async(&mut store).await?;
                command
                    .wasi_cli_run()
                    .call_run(&mut store)
                    .await
                    .map(Returned::Command)
            }
        }
    };
    let returned = tokio::time::timeout_at(deadline.into(), call).await;
    // Fuel is exact after a normal return, a trap or out-of-fuel. After a
    // timeout it is not: an epoch interrupt (or dropping the call mid-loop)
    // leaves the store's counter behind what the loop burned, so report it
    // as unknown rather than as a wrong number.
    let interrupted = match &returned {
        Err(_) => true,
        Ok(Err(e)) => matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)),
        Ok(Ok(_)) => false,
    };
    let fuel_used = (!interrupted)
        .then(|| store.get_fuel().ok().map(|left| fuel - left))
        .flatten();
    let memory = &store.data().limiter;
    let mut result = classify(
        returned,
        step,
        memory.exceeded,
        memory.limit(),
        denials,
        output,
    );
    result.fuel = fuel_used;
    result
}

fn classify(
    returned: Result<wasmtime::Result<Returned>, tokio::time::error::Elapsed>,
    step: &Step,
    memory_exceeded: Option<u64>,
    memory_limit: u64,
    denials: &Denials,
    output: &OutputCapture,
) -> AttemptResult {
    let with_stderr = |message: String| match output.last_stderr_line() {
        Some(line) => format!("{message}: {line}"),
        None => message,
    };
    if let Some(asked) = memory_exceeded {
        return AttemptResult::failed(
            Outcome::OutOfMemory,
            format!(
                "memory limit of {} reached (the plugin asked for {} in all); raise `memory` if this is expected",
                mib(memory_limit),
                mib(asked)
            ),
            false,
        );
    }
    let returned = match returned {
        Err(_) => return timed_out(step),
        Ok(r) => r,
    };
    let e = match returned {
        Ok(Returned::Hook(Ok(summary))) => {
            return AttemptResult::failed(Outcome::Ok, summary, false);
        }
        Ok(Returned::Command(Ok(()))) => {
            return AttemptResult::failed(Outcome::Ok, "exited with code 0".into(), false);
        }
        Ok(Returned::Hook(Err(failure))) => {
            let mut result =
                denied_or(Outcome::Failed, failure.message, failure.retryable, denials);
            if result.outcome == Outcome::Failed {
                result.retry_after = failure.retry_after_ms.map(Duration::from_millis);
            }
            return result;
        }
        Ok(Returned::Command(Err(()))) => return command_failed(1, denials, with_stderr),
        Err(e) => e,
    };
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return match exit.0 {
            0 => AttemptResult::failed(Outcome::Ok, "exited with code 0".into(), false),
            code => command_failed(code, denials, with_stderr),
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => AttemptResult::failed(
            Outcome::OutOfFuel,
            format!(
                "fuel limit of {} exhausted; raise `fuel` if this is expected",
                step.limits.fuel
            ),
            false,
        ),
        Some(Trap::Interrupt) => timed_out(step),
        Some(trap) => {
            let hint = match trap {
                Trap::StackOverflow => " (unbounded recursion?)",
                Trap::MemoryOutOfBounds => {
                    " (a plugin overflowing its own stack ends like this too)"
                }
                _ => "",
            };
            denied_or(
                Outcome::Trapped,
                with_stderr(format!("{trap}{hint}")),
                false,
                denials,
            )
        }
        None => denied_or(
            Outcome::Failed,
            with_stderr(format!("{e:#}")),
            false,
            denials,
        ),
    }
}

/// A command cannot say whether trying again helps; assume it may.
fn command_failed(
    code: i32,
    denials: &Denials,
    with_stderr: impl Fn(String) -> String,
) -> AttemptResult {
    denied_or(
        Outcome::Failed,
        with_stderr(format!("exited with code {code}")),
        true,
        denials,
    )
}

/// A failure becomes `denied` when the step tried something it was not
/// granted: that, not the plugin's own message, is what to fix.
fn denied_or(
    outcome: Outcome,
    message: String,
    retryable: bool,
    denials: &Denials,
) -> AttemptResult {
    match denials.first() {
        None => AttemptResult::failed(outcome, message, retryable),
        Some(denial) => AttemptResult::failed(
            Outcome::Denied,
            format!("{denial}; the plugin said: {message}"),
            false,
        ),
    }
}

fn timed_out(step: &Step) -> AttemptResult {
    AttemptResult::failed(
        Outcome::TimedOut,
        format!(
            "stopped after its timeout of {}",
            human(step.limits.timeout)
        ),
        true,
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Resolves TCP grants to the addresses a plugin may connect to. A name that
/// does not resolve is logged and grants nothing.
async fn resolve_tcp(grants: &[TcpGrant]) -> HashSet<SocketAddr> {
    let mut out = HashSet::new();
    for g in grants {
        match tokio::net::lookup_host((g.host.as_str(), g.port)).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => tracing::warn!("TCP grant {g} does not resolve: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifehook_manifest::{Grants, Limits, RetryPolicy};

    fn step(name: &str, concurrent: bool) -> Arc<Step> {
        Arc::new(Step {
            name: name.into(),
            plugin: PathBuf::from("p.wasm"),
            limits: Limits {
                timeout: Duration::from_secs(1),
                fuel: Fuel::Unlimited,
                memory: 1 << 20,
                output: 1024,
            },
            on_failure: OnFailure::Continue,
            retry: RetryPolicy::default(),
            concurrent,
            grants: Grants::default(),
            config: vec![],
            args: vec![],
            env: vec![],
        })
    }

    #[test]
    fn consecutive_concurrent_steps_form_one_group() {
        let steps = [
            step("a", false),
            step("b", true),
            step("c", true),
            step("d", false),
            step("e", true),
        ];
        let names: Vec<Vec<&str>> = groups(&steps)
            .iter()
            .map(|g| g.iter().map(|s| s.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["a"], vec!["b", "c"], vec!["d"], vec!["e"]]);
    }
}
