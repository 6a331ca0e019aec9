//! What a run did: per step the outcome, attempts, time and fuel, and for the
//! phase the exit code. Rendered as a compact text table (headline first, so
//! the part Kubernetes keeps of a failed hook's output is the useful part) or
//! as JSON.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use lifehook_manifest::{OnFailure, PhaseName};
use serde::Serialize;

use crate::plugin::{CodeSource, PluginKind};

/// Exit code: every step succeeded, or failed with `on-failure = "continue"`.
pub const EXIT_OK: i32 = 0;
/// Exit code: a step with `on-failure = "abort"` failed; later steps skipped.
pub const EXIT_ABORTED: i32 = 1;
/// Exit code: the pipeline file or the command line is invalid.
pub const EXIT_INVALID: i32 = 2;
/// Exit code: the phase deadline was reached; steps were cut or skipped.
pub const EXIT_DEADLINE: i32 = 3;
/// Exit code: lifehook itself failed (could not start its engine, say).
pub const EXIT_INTERNAL: i32 = 4;

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
    /// Trapped: stack overflow, `unreachable` (a Rust panic), a bad memory
    /// access.
    Trapped,
    /// Not run: an earlier step aborted the phase, or the deadline passed.
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
    /// The plugin file.
    pub plugin: PathBuf,
    /// Hook component or command, once loaded.
    pub kind: Option<PluginKind>,
    /// Whether the plugin was compiled now or loaded precompiled.
    pub code: Option<CodeSource>,
    /// Time spent compiling or loading the plugin (shared by the steps
    /// that use the same plugin; counted in the first attempt's timeout).
    #[serde(rename = "load_ms", serialize_with = "opt_millis")]
    pub load_time: Option<Duration>,
    /// How it ended (the last attempt's outcome).
    pub outcome: Outcome,
    /// The plugin's summary on success, otherwise why it did not succeed.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// Wall time of the step, including waits between attempts.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// Fuel consumed over all attempts, when known.
    pub fuel_consumed: Option<u64>,
    /// What the step tried to reach without a grant.
    pub denials: Vec<String>,
    /// Bytes of output dropped over the step's output limit.
    pub output_dropped: u64,
    /// The step's failure policy.
    pub on_failure: OnFailure,
    /// True when the phase deadline (not the step's own timeout) cut it.
    pub cut_by_deadline: bool,
}

/// The result of running one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// The phase.
    pub phase: PhaseName,
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// The deadline the phase ran under.
    #[serde(rename = "deadline_ms", serialize_with = "millis")]
    pub deadline: Duration,
    /// Wall time of the whole phase.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// The deadline was reached.
    pub deadline_hit: bool,
    /// The step whose failure aborted the phase.
    pub aborted_by: Option<String>,
    /// The process exit code this report maps to.
    pub exit_code: i32,
    /// Every step in pipeline order.
    pub steps: Vec<StepReport>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
}

fn opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3),
        None => s.serialize_none(),
    }
}

impl PhaseReport {
    /// Derives the exit code from the steps: deadline over abort over ok.
    pub(crate) fn finish(mut self) -> PhaseReport {
        self.exit_code = if self.deadline_hit {
            EXIT_DEADLINE
        } else if self.aborted_by.is_some() {
            EXIT_ABORTED
        } else {
            EXIT_OK
        };
        self
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The report as a text table, headline first.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut counts: Vec<(Outcome, usize)> = Vec::new();
        for s in &self.steps {
            match counts.iter_mut().find(|(o, _)| *o == s.outcome) {
                Some((_, n)) => *n += 1,
                None => counts.push((s.outcome, 1)),
            }
        }
        let tally = if counts.is_empty() {
            "no steps".to_owned()
        } else {
            counts
                .iter()
                .map(|(o, n)| format!("{n} {o}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let verdict = match self.exit_code {
            EXIT_OK => "ok".to_owned(),
            EXIT_ABORTED => format!(
                "ABORTED by step `{}`",
                self.aborted_by.as_deref().unwrap_or("?")
            ),
            EXIT_DEADLINE => format!("DEADLINE of {} reached", human(self.deadline)),
            code => format!("exit {code}"),
        };
        let _ = writeln!(
            out,
            "lifehook {}: {verdict} - {tally} in {} (deadline {})",
            self.phase,
            human(self.duration),
            human(self.deadline)
        );
        let name_w = self
            .steps
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        for s in &self.steps {
            let fuel = s.fuel_consumed.map_or("-".to_owned(), short_count);
            let _ = write!(
                out,
                "  {:<13} {:<name_w$}  {:>2}x {:>8}  fuel {:>6}",
                s.outcome.as_str(),
                s.name,
                s.attempts,
                human(s.duration),
                fuel,
            );
            if !s.message.is_empty() {
                let _ = write!(out, "  {}", s.message);
            }
            out.push('\n');
        }
        out
    }
}

/// `1.2s`, `35ms`, `2m03s`: short and readable.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{s:.2}s")
        }
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// `950`, `12.3K`, `4.5M`, `1.2G`.
fn short_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, outcome: Outcome) -> StepReport {
        StepReport {
            name: name.into(),
            plugin: "p.wasm".into(),
            kind: Some(PluginKind::Hook),
            code: Some(CodeSource::Compiled),
            load_time: Some(Duration::from_micros(1500)),
            outcome,
            message: "done".into(),
            attempts: 1,
            duration: Duration::from_millis(12),
            fuel_consumed: Some(12_345),
            denials: vec![],
            output_dropped: 0,
            on_failure: OnFailure::Continue,
            cut_by_deadline: false,
        }
    }

    fn report(steps: Vec<StepReport>, deadline_hit: bool, aborted_by: Option<&str>) -> PhaseReport {
        PhaseReport {
            phase: PhaseName::PreStop,
            pipeline: "lifehook.toml".into(),
            deadline: Duration::from_secs(20),
            duration: Duration::from_millis(1500),
            deadline_hit,
            aborted_by: aborted_by.map(Into::into),
            exit_code: -1,
            steps,
        }
        .finish()
    }

    #[test]
    fn exit_codes_follow_deadline_then_abort() {
        assert_eq!(report(vec![], false, None).exit_code, EXIT_OK);
        assert_eq!(report(vec![], false, Some("a")).exit_code, EXIT_ABORTED);
        assert_eq!(report(vec![], true, Some("a")).exit_code, EXIT_DEADLINE);
    }

    #[test]
    fn text_report_leads_with_a_headline() {
        let r = report(
            vec![step("notify", Outcome::Ok), step("lock", Outcome::Failed)],
            false,
            Some("lock"),
        );
        let text = r.to_text();
        let first = text.lines().next().expect("headline");
        assert_eq!(
            first,
            "lifehook pre-stop: ABORTED by step `lock` - 1 ok, 1 failed in 1.50s (deadline 20s)"
        );
        assert!(
            text.contains("  ok            notify   1x     12ms  fuel  12.3K  done"),
            "{text}"
        );
    }

    #[test]
    fn json_report_uses_stable_names() {
        let json = report(vec![step("a", Outcome::OutOfFuel)], false, None).to_json();
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(v["phase"], "pre-stop");
        assert_eq!(v["steps"][0]["outcome"], "out-of-fuel");
        assert_eq!(v["steps"][0]["duration_ms"], 12);
        assert_eq!(v["deadline_ms"], 20_000);
        assert_eq!(v["steps"][0]["load_ms"], 1.5);
    }
}
