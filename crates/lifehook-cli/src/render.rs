//! Everything lifehook shows of a phase: the run report for people (a
//! compact table, headline first, so that the part Kubernetes keeps of a
//! failed hook's output is the useful part) and for machines (JSON with the
//! exit code); and, in [`plan`], the phase before it runs.

pub mod plan;

use std::fmt::Write as _;

use lifehook_runtime::{Exclusion, Outcome, PhaseReport, PhaseStatus};
use lifehook_units::format_duration;

use crate::exit::exit_code;

/// Why a step is left out, in the words of the command-line flag that left
/// it out.
pub fn exclusion(why: &Exclusion) -> String {
    match why {
        Exclusion::NotListed(only) => format!("not selected (--only {})", only.join(", ")),
        Exclusion::Skipped => "left out with --skip".into(),
        Exclusion::NoTag(tags) => format!("has none of the tags --tag {}", tags.join(", ")),
        Exclusion::SkippedTag(tag) => format!("tagged `{tag}`, left out with --skip-tag"),
    }
}

/// The report as a JSON value, with the exit code it maps to: a collector
/// that keeps only the JSON still knows what the kubelet saw.
pub fn json_value(report: &PhaseReport) -> serde_json::Value {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    value["exit_code"] = exit_code(report.status).into();
    value
}

/// [`json_value`], pretty-printed.
pub fn json(report: &PhaseReport) -> String {
    serde_json::to_string_pretty(&json_value(report))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The report as a text table, headline first.
pub fn text(report: &PhaseReport) -> String {
    let mut out = String::new();
    // Outcomes in the order they first occur (no map: a phase has a handful
    // of steps, and the tally should read in the order they ran).
    let mut counts: Vec<(Outcome, usize)> = Vec::new();
    for s in &report.steps {
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
    let verdict = match report.status {
        PhaseStatus::Ok => "ok".to_owned(),
        PhaseStatus::Aborted => format!(
            "ABORTED by step `{}`",
            report.aborted_by.as_deref().unwrap_or("?")
        ),
        PhaseStatus::DeadlineReached => {
            format!("DEADLINE of {} reached", format_duration(report.deadline))
        }
    };
    let _ = writeln!(
        out,
        "lifehook {}: {verdict} - {tally} in {} (deadline {})",
        report.phase,
        format_duration(report.duration),
        format_duration(report.deadline)
    );
    // Kubernetes keeps only the first 1024 characters of a failed hook's
    // output: say which step decided the verdict, and why, right away.
    if report.status != PhaseStatus::Ok
        && let Some(culprit) = report.culprit()
    {
        let _ = writeln!(
            out,
            "  cause: step `{}` {}: {}",
            culprit.name, culprit.outcome, culprit.message
        );
    }
    // One row a step, columns aligned on the longest name, so a failing
    // row stands out in a terminal and in `kubectl describe`.
    let name_w = report
        .steps
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    for s in &report.steps {
        let fuel = s.fuel_consumed.map_or("-".to_owned(), short_count);
        let started = s
            .started
            .map_or("-".to_owned(), |d| format!("+{}", format_duration(d)));
        let _ = write!(
            out,
            "  {:<13} {:<name_w$}  {:>2}x {:>8}  fuel {:>6}  {:>7}",
            s.outcome.as_str(),
            s.name,
            s.attempts,
            format_duration(s.duration),
            fuel,
            started,
        );
        if !s.message.is_empty() {
            let _ = write!(out, "  {}", s.message);
        }
        // Which steps it waited for, as the graph said: what explains a late
        // start in the `started` column.
        if !s.waited_for.is_empty() {
            let _ = write!(out, "  [after {}]", s.waited_for.join(", "));
        }
        out.push('\n');
    }
    out
}

/// `950`, `12.3K`, `4.5M`, `1.2G`: fuel counts run to billions, and the
/// column has six characters.
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
    use lifehook_manifest::{OnFailure, PhaseName};
    use lifehook_runtime::StepReport;
    use std::time::Duration;

    fn step(name: &str, outcome: Outcome, waited_for: &[&str]) -> StepReport {
        StepReport {
            name: name.into(),
            plugin: Some("p.wasm".into()),
            kind: None,
            code: None,
            load_time: None,
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
            waited_for: waited_for.iter().map(|s| s.to_string()).collect(),
            plugin_hash: None,
            attempt_log: vec![],
        }
    }

    fn report(status: PhaseStatus, aborted_by: Option<&str>) -> PhaseReport {
        PhaseReport {
            phase: PhaseName::PreStop,
            pipeline: "lifehook.toml".into(),
            deadline: Duration::from_secs(20),
            duration: Duration::from_millis(1500),
            cleanup_reserve: Duration::ZERO,
            deadline_hit: status == PhaseStatus::DeadlineReached,
            aborted_by: aborted_by.map(Into::into),
            status,
            steps: vec![
                step("notify", Outcome::Ok, &[]),
                step("lock", Outcome::Failed, &["notify"]),
            ],
            started_at: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn text_report_leads_with_a_headline_and_shows_the_order() {
        let text = text(&report(PhaseStatus::Aborted, Some("lock")));
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "lifehook pre-stop: ABORTED by step `lock` - 1 ok, 1 failed in 1.50s (deadline 20s)"
            )
        );
        assert_eq!(lines.next(), Some("  cause: step `lock` failed: done"));
        assert_eq!(
            lines.next(),
            Some("  ok            notify   1x     12ms  fuel  12.3K     +3ms  done")
        );
        assert_eq!(
            lines.next(),
            Some(
                "  failed        lock     1x     12ms  fuel  12.3K     +3ms  done  [after notify]"
            )
        );
    }

    #[test]
    fn exit_codes_follow_the_status() {
        assert_eq!(exit_code(PhaseStatus::Ok), 0);
        assert_eq!(exit_code(PhaseStatus::Aborted), 1);
        assert_eq!(exit_code(PhaseStatus::DeadlineReached), 3);
        let v: serde_json::Value =
            serde_json::from_str(&json(&report(PhaseStatus::DeadlineReached, None))).expect("json");
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["status"], "deadline-reached");
    }
}
