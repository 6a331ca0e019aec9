//! `lifehook check`: validates a pipeline, every plugin it names, and its
//! time budget.

use std::path::PathBuf;

use clap::Args;
use lifehook_manifest::Severity;
use lifehook_runtime::Selection;

use super::common::{describe_phase, load_plugins, print_out, print_problems};
use super::{CacheArgs, PhaseArg, PipelineArgs, RegistryArgs};
use crate::render::{EXIT_INVALID, EXIT_OK};

/// Check the pipeline file, that every plugin loads and has the right
/// exports, and that the time budget fits; print each phase's plan and
/// worst-case timeline. Lists every problem and exits 2 when there is any.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook check
  lifehook check -f deploy/lifehook.toml --phase pre-stop
  lifehook check -f deploy/lifehook.toml --pod deploy/deployment.yaml")]
pub struct Check {
    #[command(flatten)]
    pipeline: PipelineArgs,

    #[command(flatten)]
    cache: CacheArgs,

    #[command(flatten)]
    registries: RegistryArgs,

    /// Check only this phase (both by default).
    #[arg(long, value_enum)]
    phase: Option<PhaseArg>,

    /// Also check a Kubernetes manifest (Pod, Deployment, StatefulSet,
    /// DaemonSet, Job, CronJob; several documents allowed) whose lifecycle
    /// hooks run this pipeline: valid lifehook commands for the right
    /// phase, and a deadline that fits terminationGracePeriodSeconds.
    #[arg(long, value_name = "FILE.yaml")]
    pod: Option<PathBuf>,
}

impl Check {
    pub fn execute(self) -> anyhow::Result<i32> {
        let pipeline = lifehook_manifest::load(&self.pipeline.file, self.phase.map(Into::into))?;
        let runner = self.cache.runner(&pipeline, &self.registries)?;
        let (kinds, mut problems) =
            load_plugins(&runner, pipeline.phases.iter().flat_map(|p| &p.steps));
        let mut out = String::new();
        for phase in &pipeline.phases {
            out += &describe_phase(phase, &kinds, &Selection::default());
        }
        if pipeline.phases.is_empty() {
            out += "warning: the pipeline has no [pre-stop] or [post-start] section\n";
        }
        let mut warnings = Vec::new();
        for finding in &pipeline.findings {
            match finding.severity {
                Severity::Error => problems.push(finding.to_string()),
                Severity::Warning => warnings.push(finding.to_string()),
            }
        }
        if let Some(manifest) = &self.pod {
            let found = crate::pod::check(manifest, &pipeline)?;
            for line in &found.ok {
                out += &format!("{}: {line}\n", manifest.display());
            }
            problems.extend(found.problems.iter().map(ToString::to_string));
        }
        if problems.is_empty() {
            out += &format!("ok: {} is valid\n", pipeline.path.display());
        }
        print_out(&out)?;
        for w in &warnings {
            eprintln!("{w}\n");
        }
        print_problems(&problems);
        Ok(if problems.is_empty() {
            EXIT_OK
        } else {
            EXIT_INVALID
        })
    }
}
