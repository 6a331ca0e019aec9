//! What a run did: per step the outcome, attempts, time, fuel and the steps
//! it waited for; for the phase, its status. Data only: the command line
//! renders it (text or JSON) and maps the status to an exit code.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lifehook_manifest::{OnFailure, PhaseName};
use lifehook_units::millis;
use serde::Serialize;

use crate::load::plugin::{CodeSource, PluginKind};

/// How a phase ended, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseStatus {
    /// Every step succeeded, or failed with `on-failure = "continue"`.
    Ok,
    /// A step with `on-failure = "abort"` failed; later steps were skipped.
    Aborted,
    /// The deadline was reached: steps were cut or skipped.
    DeadlineReached,
}

impl PhaseStatus {
    /// The name used in reports (as in the JSON report's `status`).
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::Ok => "ok",
            PhaseStatus::Aborted => "aborted",
            PhaseStatus::DeadlineReached => "deadline-reached",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// The plugin reported a failure, exited non-zero, or could not be loaded.
    Failed,
    /// Stopped at its timeout or at the phase deadline.
    TimedOut,
    /// Used up its fuel.
    OutOfFuel,
    /// Tried to grow memory beyond its limit.
    OutOfMemory,
    /// Failed after trying to reach something it was not granted.
    Denied,
    /// Failed after reaching a cap on host resources (`max-open`,
    /// `max-write`, `max-http`).
    Capped,
    /// Trapped: stack overflow, `unreachable` (a Rust panic), a bad memory
    /// access.
    Trapped,
    /// Not run: not selected, an earlier step aborted the phase, a step it
    /// needs failed, or the deadline passed.
    Skipped,
}

impl Outcome {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed-out",
            Outcome::OutOfFuel => "out-of-fuel",
            Outcome::OutOfMemory => "out-of-memory",
            Outcome::Denied => "denied",
            Outcome::Capped => "capped",
            Outcome::Trapped => "trapped",
            Outcome::Skipped => "skipped",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step's result.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// The plugin, a file or an OCI reference (none for a `sleep` step).
    pub plugin: Option<String>,
    /// Hook component or command, once loaded.
    pub kind: Option<PluginKind>,
    /// Whether the plugin was compiled now or loaded precompiled.
    pub code: Option<CodeSource>,
    /// Time spent compiling or loading the plugin (shared by the steps
    /// that use the same plugin; counted in the first attempt's timeout).
    #[serde(rename = "load_ms", serialize_with = "millis::opt_fractional")]
    pub load_time: Option<Duration>,
    /// How it ended (the last attempt's outcome).
    pub outcome: Outcome,
    /// The plugin's summary on success, otherwise why it did not succeed.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// Wall time of the step, including waits between attempts.
    #[serde(rename = "duration_ms", serialize_with = "millis::whole")]
    pub duration: Duration,
    /// Fuel consumed over all attempts, when known.
    pub fuel_consumed: Option<u64>,
    /// What the step tried to reach without a grant.
    pub denials: Vec<String>,
    /// The caps on host resources it reached, with how to raise them.
    pub caps_reached: Vec<String>,
    /// Bytes of output dropped over the step's output limit.
    pub output_dropped: u64,
    /// The step's failure policy.
    pub on_failure: OnFailure,
    /// True when the phase deadline (not the step's own timeout) cut it.
    pub cut_by_deadline: bool,
    /// When it started, from the phase start (none when skipped).
    #[serde(rename = "started_ms", serialize_with = "millis::opt_whole")]
    pub started: Option<Duration>,
    /// The steps it waited for before starting.
    pub waited_for: Vec<String>,
    /// The xxh3-128 of the plugin file, once loaded (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_hash: Option<String>,
    /// Each attempt, for traces (not in the JSON report: `attempts` and
    /// the step's outcome say what a reader needs).
    #[serde(skip)]
    pub attempt_log: Vec<AttemptLog>,
}

/// One attempt of a step.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    /// When it started.
    pub started: std::time::SystemTime,
    /// How long it ran.
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// The plugin's summary, or why it did not succeed.
    pub message: String,
    /// Fuel it consumed, when known.
    pub fuel: Option<u64>,
}

/// The result of running one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// The phase.
    pub phase: PhaseName,
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// The deadline the phase ran under.
    #[serde(rename = "deadline_ms", serialize_with = "millis::whole")]
    pub deadline: Duration,
    /// Wall time of the whole phase.
    #[serde(rename = "duration_ms", serialize_with = "millis::whole")]
    pub duration: Duration,
    /// Time kept at the end of the phase for `always` steps.
    #[serde(rename = "cleanup_reserve_ms", serialize_with = "millis::whole")]
    pub cleanup_reserve: Duration,
    /// The deadline was reached.
    pub deadline_hit: bool,
    /// The step whose failure aborted the phase.
    pub aborted_by: Option<String>,
    /// Deadline over abort over ok.
    pub status: PhaseStatus,
    /// Every step in pipeline order.
    pub steps: Vec<StepReport>,
    /// When the phase started (its deadline's start), by the wall clock.
    #[serde(skip)]
    pub started_at: std::time::SystemTime,
}

impl PhaseReport {
    /// Derives the status from the steps: deadline over abort over ok.
    pub(crate) fn finish(mut self) -> PhaseReport {
        self.status = if self.deadline_hit {
            PhaseStatus::DeadlineReached
        } else if self.aborted_by.is_some() {
            PhaseStatus::Aborted
        } else {
            PhaseStatus::Ok
        };
        self
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The step that decides the phase's verdict: the one that aborted it,
    /// else the first cut by the deadline, else the first that failed.
    pub fn culprit(&self) -> Option<&StepReport> {
        let failed = |s: &&StepReport| !matches!(s.outcome, Outcome::Ok | Outcome::Skipped);
        self.aborted_by
            .as_deref()
            .and_then(|name| self.steps.iter().find(|s| s.name == name))
            .or_else(|| self.steps.iter().find(|s| s.cut_by_deadline))
            .or_else(|| self.steps.iter().find(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn step(name: &str, outcome: Outcome) -> StepReport {
        StepReport {
            name: name.into(),
            plugin: Some("p.wasm".into()),
            kind: Some(PluginKind::Hook),
            code: Some(CodeSource::Compiled),
            load_time: Some(Duration::from_micros(1500)),
            outcome,
            message: "done".into(),
            attempts: 1,
            duration: Duration::from_millis(12),
            fuel_consumed: Some(12_345),
            denials: vec![],
            caps_reached: vec![],
            output_dropped: 0,
            on_failure: OnFailure::Continue,
            cut_by_deadline: false,
            started: Some(Duration::from_millis(3)),
            waited_for: vec![],
            plugin_hash: None,
            attempt_log: vec![],
        }
    }

    fn report(steps: Vec<StepReport>, deadline_hit: bool, aborted_by: Option<&str>) -> PhaseReport {
        PhaseReport {
            phase: PhaseName::PreStop,
            pipeline: "lifehook.toml".into(),
            deadline: Duration::from_secs(20),
            duration: Duration::from_millis(1500),
            cleanup_reserve: Duration::ZERO,
            deadline_hit,
            aborted_by: aborted_by.map(Into::into),
            status: PhaseStatus::Ok,
            steps,
            started_at: std::time::SystemTime::UNIX_EPOCH,
        }
        .finish()
    }

    #[test]
    fn status_is_deadline_then_abort() {
        assert_eq!(report(vec![], false, None).status, PhaseStatus::Ok);
        assert_eq!(
            report(vec![], false, Some("a")).status,
            PhaseStatus::Aborted
        );
        assert_eq!(
            report(vec![], true, Some("a")).status,
            PhaseStatus::DeadlineReached
        );
    }

    #[test]
    fn the_culprit_is_the_aborting_step_then_the_first_failure() {
        let r = report(
            vec![
                step("a", Outcome::Ok),
                step("b", Outcome::Failed),
                step("c", Outcome::Failed),
            ],
            false,
            Some("c"),
        );
        assert_eq!(r.culprit().map(|s| s.name.as_str()), Some("c"));
        let r = report(
            vec![step("a", Outcome::Ok), step("b", Outcome::Denied)],
            false,
            None,
        );
        assert_eq!(r.culprit().map(|s| s.name.as_str()), Some("b"));
        assert!(
            report(vec![step("a", Outcome::Ok)], false, None)
                .culprit()
                .is_none()
        );
    }

    #[test]
    fn json_report_uses_stable_names() {
        let json = report(vec![step("a", Outcome::OutOfFuel)], false, None).to_json();
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(v["phase"], "pre-stop");
        assert_eq!(v["status"], "ok");
        assert_eq!(v["steps"][0]["outcome"], "out-of-fuel");
        assert_eq!(v["steps"][0]["duration_ms"], 12);
        assert_eq!(v["steps"][0]["started_ms"], 3);
        assert_eq!(v["deadline_ms"], 20_000);
        assert_eq!(v["steps"][0]["load_ms"], 1.5);
    }
}
