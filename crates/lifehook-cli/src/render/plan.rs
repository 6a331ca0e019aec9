//! The plan of a phase before it runs, for `check` and `run --dry-run`: as
//! text (budget, each step with its limits, graph and grants, the
//! worst-case timeline) and as the dry run's JSON.

use std::path::Path;

use lifehook_manifest::budget;
use lifehook_manifest::{Access, OnFailure, Phase};
use lifehook_runtime::{PluginKind, Selection};
use lifehook_units::{format_duration, format_size};

use crate::plugins::Kinds;

/// The plan of one phase: its budget, then each step (plugin, limits,
/// graph, grants), then the worst-case timeline.
pub fn describe_phase(phase: &Phase, kinds: &Kinds, selection: &Selection) -> String {
    // The reserve of the steps this run would run: `--skip` on an always-
    // step frees its time for the others, as it does in the run itself.
    let reserve = budget::cleanup_reserve(phase, |s| selection.excludes(s).is_none());
    let timeline = budget::timeline(phase);
    let worst = timeline.iter().map(|w| w.end).max().unwrap_or_default();
    let mut out = format!(
        "[{}] deadline {}, {} steps, worst case {}",
        phase.name,
        format_duration(phase.deadline),
        phase.steps.len(),
        format_duration(worst),
    );
    if !reserve.is_zero() {
        out += &format!(", {} kept for always-steps", format_duration(reserve));
    }
    if let Some(grace) = phase.grace_period {
        out += &format!(", grace period {}", format_duration(grace));
    }
    out.push('\n');
    for (i, step) in phase.steps.iter().enumerate() {
        out += &describe_step(phase, i, kinds);
        if let Some(why) = selection.excludes(step) {
            out += &format!("    skipped: {}\n", super::exclusion(&why));
        }
        // A warning, not an error: the pipeline may be checked on a build
        // machine where the pod's volumes do not exist.
        for dir in &step.grants.dirs {
            if !dir.host.is_dir() {
                out += &format!(
                    "    warning: granted directory {} does not exist here\n",
                    dir.host.display()
                );
            }
        }
    }
    // The timeline a reader compares with the grace period: every step's
    // worst case laid along the graph, marked where it passes the deadline.
    out += "  worst-case timeline (every attempt to its timeout, every backoff):\n";
    let width = timeline.iter().map(|w| w.step.len()).max().unwrap_or(0);
    for w in &timeline {
        let late = if w.end > phase.deadline {
            "  past the deadline"
        } else {
            ""
        };
        out += &format!(
            "    {:<width$}  +{:<8} .. +{}{late}\n",
            w.step,
            format_duration(w.start),
            format_duration(w.end),
        );
    }
    out
}

/// Two lines about step `i`: what it runs and its limits, then its grants.
fn describe_step(phase: &Phase, i: usize, kinds: &Kinds) -> String {
    let step = &phase.steps[i];
    let edges = &phase.edges[i];
    // What it runs, and the limits that bound it: the numbers a reader
    // checks against the deadline above.
    let mut what = match step.plugin() {
        None => format!("(sleep {})", format_duration(step.limits.timeout)),
        Some(plugin) => {
            let kind = match kinds.get(&plugin.to_string()) {
                Some(Ok(PluginKind::Hook)) => "hook",
                Some(Ok(PluginKind::Command)) => "command",
                Some(Err(_)) => "unloadable",
                None => "not loaded",
            };
            format!(
                "({kind} {plugin}): timeout {}, fuel {}, memory {}, attempts {}",
                format_duration(step.limits.timeout),
                step.limits.fuel,
                format_size(step.limits.memory),
                step.retry.attempts,
            )
        }
    };
    if step.plugin().is_none() {
        what.push(':');
    }
    let mut flags = vec![format!(
        "on-failure {}",
        match step.on_failure {
            OnFailure::Continue => "continue",
            OnFailure::Abort => "abort",
        }
    )];
    if step.concurrent {
        flags.push("concurrent".into());
    }
    if step.always {
        flags.push("always".into());
    }
    for (word, list) in [("needs", &edges.needs), ("after", &edges.after)] {
        if !list.is_empty() {
            flags.push(format!(
                "{word} {}",
                phase.names(list).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if !step.tags.is_empty() {
        flags.push(format!("tags {}", step.tags.join(", ")));
    }
    // Every grant on one line, so a review of the plan sees all a step can
    // reach; "nothing" when it reaches nothing (the default).
    let mut grants = Vec::new();
    for g in &step.grants.http {
        grants.push(format!("http {g}"));
    }
    for g in &step.grants.tcp {
        grants.push(format!("tcp {g}"));
    }
    for d in &step.grants.dirs {
        let access = if d.access == Access::ReadWrite {
            "rw"
        } else {
            "ro"
        };
        grants.push(format!(
            "dir {} as {} ({access})",
            d.host.display(),
            d.guest
        ));
    }
    for e in &step.grants.env {
        grants.push(format!("env {e}"));
    }
    let grants = if grants.is_empty() {
        "nothing".to_owned()
    } else {
        grants.join(", ")
    };
    format!(
        "  {} {what}{}{}\n    grants: {grants}\n",
        step.name,
        if step.plugin().is_some() { ", " } else { " " },
        flags.join(", ")
    )
}

/// `run --dry-run --report json`: the phase, each step as the pipeline
/// resolved it (with its plugin's kind, why it would be skipped, and the
/// names of the steps it waits for), and the problems found loading plugins.
pub fn dry_run_json(
    pipeline: &Path,
    phase: &Phase,
    kinds: &Kinds,
    selection: &Selection,
    problems: &[String],
) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = phase
        .steps
        .iter()
        .zip(&phase.edges)
        .map(|(s, edges)| {
            // The resolved step as serde gives it, plus what only the CLI
            // knows (the plugin's kind, this run's selection) and the
            // graph by names rather than the indices it is stored as.
            let mut v = serde_json::to_value(s).unwrap_or_default();
            let kind = s
                .plugin()
                .and_then(|p| kinds.get(&p.to_string()))
                .and_then(|k| k.as_ref().ok());
            v["kind"] = serde_json::to_value(kind).unwrap_or_default();
            v["skipped"] = selection
                .excludes(s)
                .map(|why| super::exclusion(&why))
                .into();
            v["needs"] = phase.names(&edges.needs).collect::<Vec<_>>().into();
            v["after"] = phase.names(&edges.after).collect::<Vec<_>>().into();
            v
        })
        .collect();
    serde_json::json!({
        "pipeline": pipeline,
        "phase": phase.name,
        "deadline_ms": phase.deadline.as_millis() as u64,
        "steps": steps,
        "problems": problems,
    })
}
