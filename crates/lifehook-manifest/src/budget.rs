//! Time budgets: the worst case of each step (every attempt running to its
//! timeout, every backoff waited), the worst-case timeline of a phase along
//! its step graph, the reserve kept for `always` steps, and whether it all
//! fits the phase deadline and the pod's grace period.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # std::fs::write(dir.path().join("p.wasm"), b"").unwrap();
//! let source = r#"
//! [pre-stop]
//! deadline = "20s"
//! [[pre-stop.steps]]
//! name = "notify"
//! plugin = "p.wasm"
//! timeout = "2s"
//! retries = { attempts = 2, backoff = "1s" }
//! [[pre-stop.steps]]
//! name = "wait"
//! sleep = "5s"
//! [[pre-stop.steps]]
//! name = "unlock"
//! plugin = "p.wasm"
//! timeout = "3s"
//! always = true
//! "#;
//! let pipeline = lifehook_manifest::parse(source, &dir.path().join("l.toml"), &|_| None, None).unwrap();
//! let phase = &pipeline.phases[0];
//! let timeline = lifehook_manifest::budget::timeline(phase);
//! let ends: Vec<u64> = timeline.iter().map(|w| w.end.as_secs()).collect();
//! assert_eq!(ends, [5, 10, 13]);
//! assert_eq!(lifehook_manifest::budget::cleanup_reserve(phase, |_| true).as_secs(), 3);
//! ```

use std::time::Duration;

use crate::diagnostic::Diagnostic;
use crate::pipeline::{DEFAULT_APP_RESERVE, Phase, Step};

/// The longest a step can take: every attempt to its timeout, and every
/// backoff between them.
pub fn worst_case(step: &Step) -> Duration {
    let attempts = step.retry.attempts.max(1);
    let mut total = step.limits.timeout.saturating_mul(attempts);
    for attempt in 1..attempts {
        total = total.saturating_add(step.retry.backoff_after(attempt));
    }
    total
}

/// When a step would start and end in the worst case, from the phase start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The step.
    pub step: String,
    /// Worst-case start.
    pub start: Duration,
    /// Worst-case end.
    pub end: Duration,
}

/// The worst-case timeline of `phase`, in an order where every step comes
/// after those it waits for. Ignores `max-concurrency` (a limit lower than
/// the graph's width makes it later still).
pub fn timeline(phase: &Phase) -> Vec<Window> {
    let ends = longest_paths(phase, worst_case);
    phase
        .topological_order()
        .into_iter()
        .map(|i| {
            let step = &phase.steps[i];
            Window {
                step: step.name.clone(),
                start: ends[i].saturating_sub(worst_case(step)),
                end: ends[i],
            }
        })
        .collect()
}

/// The time kept at the end of the phase for `always` steps (among those
/// `selected`): the longest chain of their timeouts through the graph. Other
/// steps are clipped to the deadline less this, so every always-step still
/// gets its own timeout before the phase deadline.
pub fn cleanup_reserve(phase: &Phase, selected: impl Fn(&Step) -> bool) -> Duration {
    longest_paths(phase, |s| {
        if s.always && selected(s) {
            s.limits.timeout
        } else {
            Duration::ZERO
        }
    })
    .into_iter()
    .max()
    .unwrap_or_default()
}

/// For each step, the heaviest path ending with it, weighing steps by `weight`.
fn longest_paths(phase: &Phase, weight: impl Fn(&Step) -> Duration) -> Vec<Duration> {
    let mut ends = vec![Duration::ZERO; phase.steps.len()];
    for i in phase.topological_order() {
        let step = &phase.steps[i];
        let start = phase.edges[i]
            .all()
            .map(|j| ends[j])
            .max()
            .unwrap_or_default();
        ends[i] = start.saturating_add(weight(step));
    }
    ends
}

/// A pre-stop deadline and the application's reserve after it, against
/// the pod's grace period: the kubelet kills the container when the grace
/// period ends, whatever is still running. Checked for the pipeline's own
/// `grace-period` and for the pod's `terminationGracePeriodSeconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraceFit {
    /// The pre-stop deadline.
    pub deadline: Duration,
    /// What the application needs after it ([`DEFAULT_APP_RESERVE`] when
    /// the file does not say).
    pub reserve: Duration,
    /// The grace period.
    pub grace: Duration,
}

impl GraceFit {
    /// The fit of `deadline` and `reserve` (or the default) in `grace`.
    pub fn new(deadline: Duration, reserve: Option<Duration>, grace: Duration) -> GraceFit {
        GraceFit {
            deadline,
            reserve: reserve.unwrap_or(DEFAULT_APP_RESERVE),
            grace,
        }
    }

    /// Whether the deadline and the reserve both fit.
    pub fn fits(&self) -> bool {
        self.deadline.saturating_add(self.reserve) <= self.grace
    }

    /// The longest deadline that would fit.
    pub fn longest_deadline(&self) -> Duration {
        self.grace.saturating_sub(self.reserve)
    }
}

/// Budget problems of a resolved phase, located at its deadline (`at` is a
/// diagnostic pointing there, its message replaced).
pub(crate) fn findings(phase: &Phase, at: Diagnostic) -> Vec<Diagnostic> {
    let show = crate::units::format_duration;
    let finding = |message: String, help: String| {
        let mut d = at.clone();
        d.message = message;
        d.help = Some(help);
        d
    };
    let mut out = Vec::new();
    let reserve = cleanup_reserve(phase, |_| true);
    if reserve >= phase.deadline && phase.steps.iter().any(|s| !s.always) {
        out.push(finding(
            format!(
                "the always-steps of [{}] need {} in reserve (their timeouts along the longest chain), which leaves nothing of its deadline of {} to the other steps",
                phase.name,
                show(reserve),
                show(phase.deadline)
            ),
            "raise `deadline`, or lower the `timeout` of the steps with `always = true`".into(),
        ));
    }
    if let Some(grace) = phase.grace_period {
        let fit = GraceFit::new(phase.deadline, phase.reserve, grace);
        if !fit.fits() {
            out.push(finding(
                format!(
                    "[{}] deadline {} and the application's reserve of {} do not fit in the grace period of {}",
                    phase.name,
                    show(fit.deadline),
                    show(fit.reserve),
                    show(grace)
                ),
                format!(
                    "the container is killed when the grace period ends; lower `deadline` to at most {}, or raise terminationGracePeriodSeconds and `grace-period`",
                    show(fit.longest_deadline())
                ),
            ));
        }
    }
    let timeline = timeline(phase);
    if let Some(last) = timeline.iter().max_by_key(|w| w.end)
        && last.end > phase.deadline
    {
        out.push(
            finding(
                format!(
                    "the worst case of [{}] is {}, over its deadline of {}",
                    phase.name,
                    show(last.end),
                    show(phase.deadline)
                ),
                format!(
                    "if every step runs to its timeout and retries, step `{}` (worst-case start +{}) and the steps after the deadline are cut or skipped; `lifehook check` prints the timeline",
                    last.step,
                    show(last.start)
                ),
            )
            .warning(),
        );
    }
    out
}
