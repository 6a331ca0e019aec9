//! One step from start to end: waiting for its plugin, its attempts with
//! backoff between them, all within the step's share of the phase deadline;
//! or, for a `sleep` step, the wait itself.

use std::time::{Duration, Instant};

use lifehook_manifest::{PhaseName, PluginRef, Step};
use lifehook_units::format_duration;

use crate::attempt;
use crate::bindings::lifehook::hook::types::{Invocation, Phase as WitPhase};
use crate::load::loader::Loader;
use crate::report::{Outcome, StepReport};
use crate::sandbox::capture::OutputCapture;
use crate::sandbox::denials::Denials;
use crate::sandbox::quotas::StepQuotas;
use crate::sandbox::state::StepRecord;

/// The part of the phase deadline a step may use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allotment {
    /// The step never runs past this.
    pub(crate) until: Instant,
    /// Time kept after `until` for `always` steps (zero for those steps).
    pub(crate) reserve: Duration,
    /// The most open handles this step may hold: its share of the
    /// process's descriptors (see `Runner`).
    pub(crate) max_open: usize,
}

impl Allotment {
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

/// A report for a step that did not run (yet). Every report starts as this
/// and is filled in as the step goes, so a step cut short at any point
/// still reports what it got to.
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
        plugin_hash: None,
        attempt_log: Vec::new(),
    }
}

/// Runs `step` to its end within `limit`. It never fails: whatever
/// happens becomes the report's outcome and message.
pub(crate) async fn run(
    loader: &Loader,
    phase: PhaseName,
    step: &Step,
    limit: Allotment,
    traceparent: Option<String>,
) -> StepReport {
    match step.plugin() {
        Some(plugin) => run_plugin(loader, phase, step, plugin, limit, traceparent).await,
        None => sleep(step, limit).await,
    }
}

/// The built-in wait: its own length, cut by the deadline.
/// A sleep cut by the deadline is `timed-out`, not `ok`: a pipeline that
/// waits for a drain must learn that the wait did not happen in full.
async fn sleep(step: &Step, limit: Allotment) -> StepReport {
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

/// How an attempt ended, as far as the retry rules care.
struct Ended {
    ok: bool,
    /// The failure may pass on another attempt (the plugin said so, or it
    /// was a trap or a timeout of its own).
    retryable: bool,
    /// The plugin asked for the next attempt no sooner than this.
    retry_after: Option<Duration>,
    /// The phase deadline stopped it: no time is left for anything.
    cut: bool,
}

/// What the retry rules decide after an attempt.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Done: it succeeded, failed for good, had one attempt only, or was
    /// cut by the deadline.
    Stop,
    /// Retryable, but that was the last of several attempts: the report
    /// says it gave up, so a reader knows retries happened.
    GaveUp,
    /// Try again after this wait.
    RetryIn(Duration),
    /// Retryable, but the wait would end past the deadline (`left` from
    /// now): trying would only be cut, so the step ends now with time to
    /// spare for the steps after it.
    NoTime(Duration),
}

/// The retry rules after attempt number `attempt` (1-based) ended as
/// `ended`, with `left` to the step's deadline. The wait is the policy's
/// backoff or the plugin's `retry-after`, whichever is longer: a server's
/// "not before" is a floor, never shortened by a fast policy.
fn next(
    retry: &lifehook_manifest::RetryPolicy,
    attempt: u32,
    ended: &Ended,
    left: Duration,
) -> Next {
    if ended.ok || !ended.retryable || ended.cut {
        return Next::Stop;
    }
    if attempt >= retry.attempts {
        return if retry.attempts > 1 {
            Next::GaveUp
        } else {
            Next::Stop
        };
    }
    let wait = retry
        .backoff_after(attempt)
        .max(ended.retry_after.unwrap_or_default());
    if wait >= left {
        Next::NoTime(wait)
    } else {
        Next::RetryIn(wait)
    }
}

/// A plugin step: waits for its plugin (loading counts against the first
/// attempt, so a step never waits for a compile longer than its timeout),
/// then runs attempts until one passes, the retry rules stop, or the
/// step's share of the deadline is spent.
async fn run_plugin(
    loader: &Loader,
    phase: PhaseName,
    step: &Step,
    plugin_ref: &PluginRef,
    limit: Allotment,
    traceparent: Option<String>,
) -> StepReport {
    let started = Instant::now();
    // Shared by every attempt: quotas count over all of them, and the
    // report lists every denial.
    let record = StepRecord {
        denials: Denials::default(),
        caps: StepQuotas::new(
            (step.limits.max_open as usize).min(limit.max_open),
            step.limits.max_write,
            step.limits.max_http as usize,
        ),
        output: OutputCapture::new(step.limits.output),
        traceparent: traceparent.and_then(|t| http::HeaderValue::from_str(&t).ok()),
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
    report.plugin_hash = Some(format!("{:032x}", plugin.hash));
    tracing::debug!(
        "plugin {} ready ({:?}, {:?}); step started {:?} ago",
        plugin_ref,
        plugin.source,
        plugin.load_time,
        started.elapsed()
    );

    // None once any attempt's fuel is unknown (see `attempt::run`): a sum
    // with an unknown part would understate what the step burned.
    let mut fuel_total: Option<u64> = Some(0);
    let attempts = step.retry.attempts;
    let mut attempt = 1;
    loop {
        // Each attempt has the full timeout, bounded by the phase's deadline
        // for this step; the first also by the load, which came out of it.
        let attempt_start = Instant::now();
        let attempt_wall = std::time::SystemTime::now();
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
        report.attempt_log.push(crate::report::AttemptLog {
            started: attempt_wall,
            duration: attempt_start.elapsed(),
            outcome: result.outcome,
            message: result.message.clone(),
            fuel: result.fuel,
        });
        fuel_total = fuel_total
            .zip(result.fuel)
            .map(|(a, b)| a.saturating_add(b));
        report.outcome = result.outcome;
        report.message = result.message;
        // A timeout at the phase's deadline is the phase's doing, not the
        // step's: the message says so, and no retry is tried.
        report.cut_by_deadline = result.outcome == Outcome::TimedOut && deadline == limit.until;
        if report.cut_by_deadline {
            report.message = limit.cut_message(started.elapsed());
        }
        let ended = Ended {
            ok: result.outcome == Outcome::Ok,
            retryable: result.retryable,
            retry_after: result.retry_after,
            cut: report.cut_by_deadline,
        };
        let left = limit.until.saturating_duration_since(Instant::now());
        let wait = match next(&step.retry, attempt, &ended, left) {
            Next::Stop => break,
            Next::GaveUp => {
                report.message = format!("{} (gave up after {attempt} attempts)", report.message);
                break;
            }
            Next::NoTime(wait) => {
                report.message = format!(
                    "{} (no retry: the next attempt would start in {}, after the phase deadline)",
                    report.message,
                    format_duration(wait)
                );
                break;
            }
            Next::RetryIn(wait) => wait,
        };
        tracing::info!(
            "attempt {attempt}/{attempts} {}: {}; retrying in {}",
            result.outcome,
            report.message,
            format_duration(wait)
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
    // What the sandbox recorded over all attempts goes into the report,
    // whichever attempt it happened in.
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

#[cfg(test)]
mod tests {
    use super::*;
    use lifehook_manifest::RetryPolicy;

    const SECOND: Duration = Duration::from_secs(1);

    fn failed(retryable: bool) -> Ended {
        Ended {
            ok: false,
            retryable,
            retry_after: None,
            cut: false,
        }
    }

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(300),
        }
    }

    #[test]
    fn success_fatal_failures_and_cuts_stop_at_once() {
        let ok = Ended {
            ok: true,
            ..failed(true)
        };
        let cut = Ended {
            cut: true,
            ..failed(true)
        };
        for ended in [ok, failed(false), cut] {
            assert_eq!(next(&policy(5), 1, &ended, SECOND), Next::Stop);
        }
    }

    #[test]
    fn the_wait_grows_by_the_multiplier_up_to_the_ceiling() {
        let waits: Vec<Next> = (1..=4)
            .map(|attempt| next(&policy(5), attempt, &failed(true), SECOND))
            .collect();
        let ms = |n| Next::RetryIn(Duration::from_millis(n));
        assert_eq!(waits, [ms(100), ms(200), ms(300), ms(300)]);
    }

    #[test]
    fn the_last_attempt_gives_up_and_a_single_one_just_stops() {
        assert_eq!(next(&policy(3), 3, &failed(true), SECOND), Next::GaveUp);
        assert_eq!(next(&policy(1), 1, &failed(true), SECOND), Next::Stop);
    }

    #[test]
    fn retry_after_is_a_floor_on_the_wait() {
        let asked = |after| Ended {
            retry_after: Some(after),
            ..failed(true)
        };
        let long = Duration::from_millis(700);
        assert_eq!(
            next(&policy(3), 1, &asked(long), SECOND),
            Next::RetryIn(long)
        );
        // Shorter than the backoff: the backoff wins.
        assert_eq!(
            next(&policy(3), 1, &asked(Duration::from_millis(10)), SECOND),
            Next::RetryIn(Duration::from_millis(100))
        );
    }

    #[test]
    fn no_retry_when_the_wait_would_pass_the_deadline() {
        let left = Duration::from_millis(150);
        assert_eq!(
            next(&policy(5), 2, &failed(true), left),
            Next::NoTime(Duration::from_millis(200))
        );
        // A wait of exactly what is left would start the attempt at the
        // deadline: no retry either.
        assert_eq!(
            next(&policy(5), 1, &failed(true), Duration::from_millis(100)),
            Next::NoTime(Duration::from_millis(100))
        );
    }
}
