//! One step from start to end: waiting for its plugin, its attempts with
//! backoff between them, all within the step's share of the phase deadline;
//! or, for a `sleep` step, the wait itself.

use std::time::{Duration, Instant};

use lifehook_manifest::{PhaseName, PluginRef, Step};
use lifehook_units::format_duration;

use crate::attempt;
use crate::bindings::lifehook::hook::types::{Invocation, Phase as WitPhase};
use crate::caps::StepCaps;
use crate::capture::OutputCapture;
use crate::denials::Denials;
use crate::loader::Loader;
use crate::report::{Outcome, StepReport};
use crate::state::StepRecord;

/// The part of the phase deadline a step may use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    /// The step never runs past this.
    pub(crate) until: Instant,
    /// Time kept after `until` for `always` steps (zero for those steps).
    pub(crate) reserve: Duration,
    /// The most open handles this step may hold: its share of the
    /// process's descriptors (see `Runner`).
    pub(crate) max_open: usize,
}

impl Limit {
    /// Why a step stopped at `until`.
    fn cut_message(&self, ran: Duration) -> String {
        if self.reserve.is_zero() {
            format!("cut at the phase deadline after {}", format_duration(ran))
        } else {
            format!(
                "cut after {}: the phase deadline less the {} kept for always-steps",
                format_duration(ran),
                format_duration(self.reserve)
            )
        }
    }
}

/// A report for a step that did not run (yet).
pub(crate) fn not_run(step: &Step, outcome: Outcome, message: String) -> StepReport {
    StepReport {
        name: step.name.clone(),
        plugin: step.plugin().map(ToString::to_string),
        kind: None,
        code: None,
        load_time: None,
        outcome,
        message,
        attempts: 0,
        duration: Duration::ZERO,
        fuel_consumed: None,
        denials: Vec::new(),
        caps_reached: Vec::new(),
        output_dropped: 0,
        on_failure: step.on_failure,
        cut_by_deadline: false,
        started: None,
        // Filled in by the runner, which has the phase's graph.
        waited_for: Vec::new(),
    }
}

/// Runs `step` to its end within `limit`.
pub(crate) async fn run(
    loader: &Loader,
    phase: PhaseName,
    step: &Step,
    limit: Limit,
) -> StepReport {
    match step.plugin() {
        Some(plugin) => run_plugin(loader, phase, step, plugin, limit).await,
        None => sleep(step, limit).await,
    }
}

/// The built-in wait: its own length, cut by the deadline.
async fn sleep(step: &Step, limit: Limit) -> StepReport {
    let started = Instant::now();
    let wanted = step.limits.timeout;
    let until = (started + wanted).min(limit.until);
    tokio::time::sleep_until(until.into()).await;
    let mut report = not_run(step, Outcome::Ok, String::new());
    report.attempts = 1;
    report.duration = started.elapsed();
    if until < started + wanted {
        report.outcome = Outcome::TimedOut;
        report.cut_by_deadline = true;
        report.message = format!(
            "waited {} of {}: {}",
            format_duration(report.duration),
            format_duration(wanted),
            limit.cut_message(report.duration)
        );
    } else {
        report.message = format!("waited {}", format_duration(wanted));
    }
    report
}

async fn run_plugin(
    loader: &Loader,
    phase: PhaseName,
    step: &Step,
    plugin_ref: &PluginRef,
    limit: Limit,
) -> StepReport {
    let started = Instant::now();
    let record = StepRecord {
        denials: Denials::default(),
        caps: StepCaps::new(
            (step.limits.max_open as usize).min(limit.max_open),
            step.limits.max_write,
            step.limits.max_http as usize,
        ),
        output: OutputCapture::new(step.limits.output),
    };
    let mut report = not_run(step, Outcome::Failed, String::new());

    // Loading counts against the first attempt's time.
    let first_deadline = (started + step.limits.timeout).min(limit.until);
    let plugin = match tokio::time::timeout_at(first_deadline.into(), loader.get(plugin_ref)).await
    {
        Ok(Ok(plugin)) => plugin,
        Ok(Err(e)) => {
            report.message = e.to_string();
            report.duration = started.elapsed();
            return report;
        }
        Err(_) => {
            report.outcome = Outcome::TimedOut;
            report.cut_by_deadline = first_deadline == limit.until;
            report.message = format!(
                "plugin {} was still {} after {}: precompile it with `lifehook compile`",
                plugin_ref,
                if plugin_ref.file().is_some() {
                    "compiling"
                } else {
                    "being pulled or compiled"
                },
                format_duration(started.elapsed())
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
        plugin_ref,
        plugin.source,
        plugin.load_time,
        started.elapsed()
    );

    // None once any attempt's fuel is unknown (see `attempt::run`).
    let mut fuel_total: Option<u64> = Some(0);
    let attempts = step.retry.attempts;
    let mut attempt = 1;
    loop {
        let attempt_start = Instant::now();
        let deadline = (attempt_start + step.limits.timeout).min(limit.until);
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
        let result = attempt::run(&plugin, step, &invocation, deadline, &record).await;
        record.output.flush();
        report.attempts = attempt;
        fuel_total = fuel_total
            .zip(result.fuel)
            .map(|(a, b)| a.saturating_add(b));
        report.outcome = result.outcome;
        report.message = result.message;
        report.cut_by_deadline = result.outcome == Outcome::TimedOut && deadline == limit.until;
        if report.cut_by_deadline {
            report.message = limit.cut_message(started.elapsed());
        }
        if result.outcome == Outcome::Ok
            || !result.retryable
            || attempt >= attempts
            || report.cut_by_deadline
        {
            if result.outcome != Outcome::Ok
                && result.retryable
                && attempts > 1
                && !report.cut_by_deadline
            {
                report.message = format!("{} (gave up after {attempt} attempts)", report.message);
            }
            break;
        }
        let wait = step
            .retry
            .backoff_after(attempt)
            .max(result.retry_after.unwrap_or_default());
        let left = limit.until.saturating_duration_since(Instant::now());
        if wait >= left {
            report.message = format!(
                "{} (no retry: the next attempt would start in {}, after the phase deadline)",
                report.message,
                format_duration(wait)
            );
            break;
        }
        tracing::info!(
            "attempt {attempt}/{attempts} {}: {}; retrying in {}",
            result.outcome,
            report.message,
            format_duration(wait)
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
    report.fuel_consumed = fuel_total;
    report.denials = record.denials.snapshot();
    report.caps_reached = record.caps.all();
    report.output_dropped = record.output.dropped();
    report.duration = started.elapsed();
    match report.outcome {
        Outcome::Ok => tracing::info!("ok: {}", report.message),
        outcome => tracing::warn!("step {outcome}: {}", report.message),
    }
    report
}
