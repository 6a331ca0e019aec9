//! What several subcommands share: the pipeline, plugin loading with its
//! problems, the one description of a phase (`check` and `run --dry-run`),
//! output helpers.

use std::collections::HashMap;

use lifehook_manifest::budget;
use lifehook_manifest::{Access, OnFailure, Phase, PluginRef, Step};
use lifehook_runtime::{PluginKind, Runner, Selection};
use lifehook_units::{format_duration, format_size};

use crate::output::print_err;

/// What loading each plugin came to (by its file or reference): its kind,
/// or the error text.
pub type Kinds = HashMap<String, Result<PluginKind, String>>;

/// The distinct plugins of `steps`, in pipeline order.
pub fn distinct_plugins<'a>(steps: impl Iterator<Item = &'a Step>) -> Vec<PluginRef> {
    let mut seen: Vec<PluginRef> = Vec::new();
    for p in steps.filter_map(Step::plugin) {
        if !seen.contains(p) {
            seen.push(p.clone());
        }
    }
    seen
}

/// Loads every plugin of `steps` with `runner`; the kinds, and one problem
/// line per plugin that cannot be used.
pub fn load_plugins<'a>(
    runner: &Runner,
    steps: impl Iterator<Item = &'a Step>,
) -> (Kinds, Vec<String>) {
    let plugins = distinct_plugins(steps);
    let refs: Vec<&PluginRef> = plugins.iter().collect();
    let mut kinds = Kinds::new();
    let mut problems = Vec::new();
    for (plugin, loaded) in runner.load_all(&refs) {
        match loaded {
            Ok(p) => {
                kinds.insert(plugin.to_string(), Ok(p.kind));
            }
            Err(e) => {
                problems.push(format!("error: {e}"));
                kinds.insert(plugin.to_string(), Err(e.to_string()));
            }
        }
    }
    (kinds, problems)
}

/// The plan of one phase: its budget, then each step (plugin, limits,
/// graph, grants), then the worst-case timeline.
pub fn describe_phase(phase: &Phase, kinds: &Kinds, selection: &Selection) -> String {
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
    for step in &phase.steps {
        out += &describe_step(step, kinds);
        if let Some(why) = selection.excludes(step) {
            out += &format!("    skipped: {why}\n");
        }
        for dir in &step.grants.dirs {
            if !dir.host.is_dir() {
                out += &format!(
                    "    warning: granted directory {} does not exist here\n",
                    dir.host.display()
                );
            }
        }
    }
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

/// Two lines about a step: what it runs and its limits, then its grants.
fn describe_step(step: &Step, kinds: &Kinds) -> String {
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
    if !step.needs.is_empty() {
        flags.push(format!("needs {}", step.needs.join(", ")));
    }
    if !step.after.is_empty() {
        flags.push(format!("after {}", step.after.join(", ")));
    }
    if !step.tags.is_empty() {
        flags.push(format!("tags {}", step.tags.join(", ")));
    }
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

pub use crate::output::print_out;

/// Prints problems to stderr the one way lifehook lists problems.
pub fn print_problems(problems: &[String]) {
    if !problems.is_empty() {
        print_err(&format!(
            "{}\n",
            lifehook_manifest::render_problems(problems)
        ));
    }
}

/// The tokio runtime a run uses: one thread. Concurrent steps interleave on
/// it (a busy plugin yields at every epoch tick); compiling goes to blocking
/// threads. Worker threads would cost start-up time and, worse, make every
/// memory unmap of a finished plugin interrupt the other cores.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
