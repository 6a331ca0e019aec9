//! `lifehook check`: validates a pipeline, every plugin it names, and its
//! time budget.

use std::path::{Path, PathBuf};

use clap::Args;
use lifehook_manifest::{Pipeline, Severity};
use lifehook_runtime::Selection;

use super::{DEFAULT_PIPELINE, PhaseArg, Target, UsageError};
use crate::exit::{EXIT_INVALID, EXIT_OK};
use crate::output::{print_out, print_problems};
use crate::plugins::{Kinds, load_plugins};
use crate::render::plan::describe_phase;

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
    target: Target,

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
        let only = self.phase.map(Into::into);
        let mut out = String::new();
        let (pipeline, kinds, mut problems) = match self.carried_pipeline(only)? {
            // Its plugin paths are paths inside the container: not here.
            Some((pipeline, origin)) => {
                out += &format!(
                    "pipeline: {origin} (plugins not loaded: they are paths in the container; pass -f FILE to check them too)\n"
                );
                (pipeline, Kinds::new(), Vec::new())
            }
            None => {
                let pipeline = lifehook_manifest::load(&self.target.pipeline.file, only)?;
                let runner = self.target.runner(&pipeline)?;
                let (kinds, mut problems) =
                    load_plugins(&runner, pipeline.phases.iter().flat_map(|p| &p.steps));
                problems.extend(tls_file_problems(&pipeline));
                (pipeline, kinds, problems)
            }
        };
        // The plan first, then the verdict: a reader sees what would run
        // even when something is wrong with it.
        for phase in &pipeline.phases {
            out += &describe_phase(phase, &kinds, &Selection::default());
        }
        if pipeline.phases.is_empty() {
            out += "warning: the pipeline has no [pre-stop] or [post-start] section\n";
        }
        // Budget findings: an error fails the check (a worst case that
        // cannot fit), a warning only says so (a tight reserve); so do
        // network grants a preview-1 module cannot use.
        let mut warnings = preview1_network_warnings(&pipeline);
        for finding in &pipeline.findings {
            match finding.severity {
                Severity::Error => problems.push(finding.to_string()),
                Severity::Warning => warnings.push(finding.to_string()),
            }
        }
        if let Some(manifest) = &self.pod {
            let found = super::pod::check(manifest, &pipeline)?;
            for line in &found.ok {
                out += &format!("{}: {line}\n", manifest.display());
            }
            problems.extend(found.problems.iter().map(ToString::to_string));
        }
        if problems.is_empty() {
            out += &format!("ok: {} is valid\n", pipeline.path.display());
        }
        print_out(&out);
        for w in &warnings {
            crate::output::print_err(&format!("{w}\n\n"));
        }
        print_problems(&problems);
        Ok(if problems.is_empty() {
            EXIT_OK
        } else {
            EXIT_INVALID
        })
    }

    /// With `--pod` and no pipeline file given (no `-f`, none at the
    /// default path), the pipeline the manifest carries in a ConfigMap, and
    /// where it is; without one there either, "no pipeline given".
    fn carried_pipeline(
        &self,
        only: Option<lifehook_manifest::PhaseName>,
    ) -> anyhow::Result<Option<(Pipeline, String)>> {
        let Some(manifest) = &self.pod else {
            return Ok(None);
        };
        // A pipeline named any way at all (a flag, the environment, the
        // default file being here) wins over the one the manifest carries.
        let given = self.target.pipeline.file != Path::new(DEFAULT_PIPELINE)
            || std::env::var_os("LIFEHOOK_CONFIG").is_some()
            || self.target.pipeline.file.exists();
        if given {
            return Ok(None);
        }
        let Some(carried) = super::pod::carried_pipeline(manifest)? else {
            return Err(UsageError(format!(
                "no pipeline given: pass -f FILE (there is no {DEFAULT_PIPELINE} here, and {} has no ConfigMap holding one)",
                manifest.display()
            ))
            .into());
        };
        let origin = format!("{} in {}", carried.origin, manifest.display());
        // Diagnostics name the ConfigMap; relative plugin paths resolve next
        // to the manifest.
        let path = manifest.with_file_name(format!("{}[{}]", file_name(manifest), carried.origin));
        let pipeline = lifehook_manifest::parse_elsewhere(
            &carried.source,
            &path,
            &|name| std::env::var(name).ok(),
            only,
        )
        .map_err(lifehook_manifest::ManifestError::Invalid)?;
        Ok(Some((pipeline, origin)))
    }
}

/// Every grant's TLS files read as a step would read them (readable, PEM,
/// the key the certificate's, nothing expired), each problem located at
/// its grant. Not for a pipeline carried in a manifest: its files are in
/// the container.
fn tls_file_problems(pipeline: &Pipeline) -> Vec<String> {
    let grants = pipeline.phases.iter().flat_map(|p| &p.steps).flat_map(|s| {
        let http = s.grants.http.iter().filter_map(|g| g.tls.as_ref());
        http.chain(s.grants.tcp.iter().filter_map(|g| g.tls.as_ref()))
    });
    let mut problems = Vec::new();
    for tls in grants {
        if let Err(e) = lifehook_runtime::check_tls_files(tls) {
            problems.push(match &tls.written {
                Some(at) => at
                    .clone()
                    .with_message(e.to_string())
                    .with_help(e.help())
                    .to_string(),
                None => e.to_string(),
            });
        }
    }
    problems
}

/// Network grants given to a WASI preview-1 module: preview 1 has no
/// sockets (and no HTTP), so they do nothing for it. (A pipeline carried
/// in a manifest names plugins in the container: none is found here.)
fn preview1_network_warnings(pipeline: &Pipeline) -> Vec<String> {
    let mut warnings = Vec::new();
    for step in pipeline.phases.iter().flat_map(|p| &p.steps) {
        let Some(file) = step.plugin().and_then(|p| p.file()) else {
            continue;
        };
        let mut head = [0u8; 8];
        let read = std::fs::File::open(file).and_then(|mut f| {
            use std::io::Read as _;
            f.read_exact(&mut head)
        });
        if read.is_err() || !wasmparser::Parser::is_core_wasm(&head) {
            continue;
        }
        let mut granted = Vec::new();
        if !step.grants.http.is_empty() {
            granted.push("allow.http");
        }
        if !step.grants.tcp.is_empty() {
            granted.push("allow.tcp");
        }
        if !granted.is_empty() {
            warnings.push(format!(
                "warning: step `{}`: {} is a WASI preview-1 module; preview 1 has no sockets, so its {} grants do nothing (drop them, or build the plugin as a component for wasm32-wasip2)",
                step.name,
                file.display(),
                granted.join(" and ")
            ));
        }
    }
    warnings
}

/// The file name of `path`, or all of it when it has none.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
