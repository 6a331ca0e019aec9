//! `lifehook check`: validates a pipeline and every plugin it names.

use clap::Args;
use lifehook_manifest::{Access, Step};
use lifehook_runtime::{PluginKind, Runtime};

use super::run::print_out;
use super::{CacheArgs, PhaseArg, PipelineArgs, distinct_plugins};

/// Check the pipeline file and that every plugin loads and has the right
/// exports. Lists every problem and exits 2 when there is any.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook check
  lifehook check -f deploy/lifehook.toml --phase pre-stop")]
pub struct Check {
    #[command(flatten)]
    pipeline: PipelineArgs,

    #[command(flatten)]
    cache: CacheArgs,

    /// Check only this phase (both by default).
    #[arg(long, value_enum)]
    phase: Option<PhaseArg>,
}

impl Check {
    pub fn execute(self) -> anyhow::Result<i32> {
        let pipeline = lifehook_manifest::load(&self.pipeline.file, self.phase.map(Into::into))?;
        let rt = Runtime::new()?;
        let cache = self.cache.cache(&pipeline.path);
        let mut out = String::new();
        let mut problems = Vec::new();
        let steps = pipeline.phases.iter().flat_map(|p| &p.steps);
        let mut kinds = Vec::new();
        for plugin in distinct_plugins(steps) {
            match cache.load(&rt, &plugin) {
                Ok(p) => kinds.push((plugin, p.kind)),
                Err(e) => problems.push(format!("error: {e}")),
            }
        }
        for phase in &pipeline.phases {
            out += &format!(
                "[{}] deadline {}, {} steps\n",
                phase.name,
                lifehook_runtime::human(phase.deadline),
                phase.steps.len()
            );
            for step in &phase.steps {
                let kind = kinds
                    .iter()
                    .find(|(p, _)| p == &step.plugin)
                    .map(|(_, k)| *k);
                out += &describe_step(step, kind);
                for dir in &step.grants.dirs {
                    if !dir.host.is_dir() {
                        out += &format!(
                            "    warning: granted directory {} does not exist here\n",
                            dir.host.display()
                        );
                    }
                }
            }
        }
        if pipeline.phases.is_empty() {
            out += "warning: the pipeline has no [pre-stop] or [post-start] section\n";
        }
        if problems.is_empty() {
            out += &format!("ok: {} is valid\n", pipeline.path.display());
            print_out(&out)?;
            Ok(lifehook_runtime::EXIT_OK)
        } else {
            print_out(&out)?;
            eprintln!(
                "{}\n\n{} problems found",
                problems.join("\n\n"),
                problems.len()
            );
            Ok(lifehook_runtime::EXIT_INVALID)
        }
    }
}

/// Two lines about a step: plugin and limits, then grants.
pub fn describe_step(step: &Step, kind: Option<PluginKind>) -> String {
    let kind = match kind {
        Some(PluginKind::Hook) => "hook",
        Some(PluginKind::Command) => "command",
        None => "unloadable",
    };
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
        "  {} ({kind} {}): timeout {}, fuel {}, memory {}, attempts {}, on-failure {}{}\n    grants: {grants}\n",
        step.name,
        step.plugin.display(),
        lifehook_runtime::human(step.limits.timeout),
        step.limits.fuel,
        lifehook_manifest::units::SizeValue(step.limits.memory),
        step.retry.attempts,
        match step.on_failure {
            lifehook_manifest::OnFailure::Continue => "continue",
            lifehook_manifest::OnFailure::Abort => "abort",
        },
        if step.concurrent { ", concurrent" } else { "" },
    )
}
