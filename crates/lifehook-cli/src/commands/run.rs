//! `lifehook run`: runs one phase of the pipeline.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use lifehook_manifest::{Phase, PhaseName, Pipeline};
use lifehook_runtime::{RunOptions, Runtime};

use super::{CacheArgs, PhaseArg, PipelineArgs, ReportFormat, UsageError, tokio_runtime};

/// Run one phase of the pipeline and print its report.
///
/// Steps run in file order (a run of steps marked `concurrent` runs together),
/// each in its own sandbox under its limits, all within the phase deadline.
/// The report goes to stdout, logs to stderr.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook run                                  # pre-stop phase of ./lifehook.toml
  lifehook run -f /etc/lifehook/lifehook.toml --phase post-start
  lifehook run --only notify --report json
  lifehook run --dry-run                        # check and show the plan, run nothing

In a Kubernetes container spec:
  lifecycle:
    preStop:
      exec: { command: [\"/lifehook\", \"run\", \"--phase\", \"pre-stop\", \"-f\", \"/etc/lifehook/lifehook.toml\"] }")]
pub struct Run {
    #[command(flatten)]
    pipeline: PipelineArgs,

    #[command(flatten)]
    cache: CacheArgs,

    /// The phase to run.
    #[arg(long, value_enum, default_value = "pre-stop")]
    phase: PhaseArg,

    /// Run only this step (repeat for several); the others are not loaded.
    #[arg(long, value_name = "STEP")]
    only: Vec<String>,

    /// Check the pipeline and load its plugins, print the plan, run nothing.
    #[arg(long)]
    dry_run: bool,

    /// Report format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    report: ReportFormat,

    /// Replace the phase's deadline (like "25s"), for example to fit the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    deadline: Option<Duration>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("the deadline must be more than zero".into()),
        Err(e) => Err(format!(
            "{e}; write a number and a unit, like \"500ms\" or \"25s\""
        )),
    }
}

impl Run {
    pub fn execute(self) -> anyhow::Result<i32> {
        let phase_name = PhaseName::from(self.phase);
        let pipeline = lifehook_manifest::load(&self.pipeline.file, Some(phase_name))?;
        let Some(phase) = pipeline.phase(phase_name) else {
            // Nothing to do is not a failure: the same image may define only
            // one of the two hooks in its pipeline file.
            tracing::warn!(
                "{} has no [{phase_name}] section; nothing to run",
                self.pipeline.file.display()
            );
            print_out(&format!("lifehook {phase_name}: ok - no steps\n"))?;
            return Ok(lifehook_runtime::EXIT_OK);
        };
        check_only(phase, &self.only)?;
        let rt = Runtime::new().context("cannot start the WebAssembly engine")?;
        if let Some(started) = crate::STARTED.get() {
            tracing::debug!(
                "pipeline loaded and engine ready {:?} after start",
                started.elapsed()
            );
        }
        let options = RunOptions {
            only: self.only.clone(),
            deadline: self.deadline,
            cache: Some(self.cache.cache(&pipeline.path)),
            started: crate::STARTED.get().copied(),
        };
        if self.dry_run {
            return self.dry_run(&rt, &pipeline, phase, &options);
        }
        let runtime = tokio_runtime()?;
        let report = runtime.block_on(lifehook_runtime::run_phase(
            &rt,
            &pipeline.path,
            phase,
            &options,
        ));
        // Not waiting for the blocking threads: a compile for a step that
        // was skipped may still be running, and even idle ones took ~10 ms
        // here to wake up and exit. The process ends right after the report.
        runtime.shutdown_background();
        match self.report {
            ReportFormat::Text => print_out(&report.to_text())?,
            ReportFormat::Json => print_out(&format!("{}\n", report.to_json()))?,
        }
        Ok(report.exit_code)
    }

    fn dry_run(
        &self,
        rt: &Runtime,
        pipeline: &Pipeline,
        phase: &Phase,
        options: &RunOptions,
    ) -> anyhow::Result<i32> {
        let cache = options.cache.as_ref();
        let steps: Vec<_> = phase
            .steps
            .iter()
            .filter(|s| self.only.is_empty() || self.only.contains(&s.name))
            .collect();
        let mut problems = Vec::new();
        let mut kinds = Vec::new();
        for step in &steps {
            let loaded = match cache {
                Some(c) => c.load(rt, &step.plugin),
                None => lifehook_runtime::Plugin::load(rt, &step.plugin),
            };
            match loaded {
                Ok(p) => kinds.push(Some(p.kind)),
                Err(e) => {
                    kinds.push(None);
                    problems.push(e.to_string());
                }
            }
        }
        let deadline = options.deadline.unwrap_or(phase.deadline);
        match self.report {
            ReportFormat::Json => {
                let plan = serde_json::json!({
                    "pipeline": pipeline.path,
                    "phase": phase.name,
                    "deadline_ms": deadline.as_millis() as u64,
                    "steps": steps.iter().zip(&kinds).map(|(s, k)| {
                        let mut v = serde_json::to_value(s).unwrap_or_default();
                        v["kind"] = serde_json::to_value(k).unwrap_or_default();
                        v
                    }).collect::<Vec<_>>(),
                    "problems": problems,
                });
                print_out(&format!("{}\n", serde_json::to_string_pretty(&plan)?))?;
            }
            ReportFormat::Text => {
                let mut out = format!(
                    "lifehook {} (dry run): {} steps, deadline {}\n",
                    phase.name,
                    steps.len(),
                    lifehook_runtime::human(deadline)
                );
                for (s, k) in steps.iter().zip(&kinds) {
                    out += &super::check::describe_step(s, *k);
                }
                for p in &problems {
                    out += &format!("error: {p}\n");
                }
                print_out(&out)?;
            }
        }
        Ok(if problems.is_empty() {
            lifehook_runtime::EXIT_OK
        } else {
            lifehook_runtime::EXIT_INVALID
        })
    }
}

/// Every `--only` name must be a step of the phase.
fn check_only(phase: &Phase, only: &[String]) -> Result<(), UsageError> {
    let unknown: Vec<&str> = only
        .iter()
        .filter(|name| !phase.steps.iter().any(|s| &&s.name == name))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = phase.steps.iter().map(|s| s.name.as_str()).collect();
    Err(UsageError(format!(
        "--only names no step of [{}]: {}; its steps are: {}",
        phase.name,
        unknown.join(", "),
        names.join(", ")
    )))
}

/// Writes to stdout; a closed pipe (`lifehook run | head`) is not an error.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
