//! `lifehook run`: runs one phase of the pipeline.

use std::time::{Duration, Instant};

use clap::Args;
use lifehook_manifest::{Phase, PhaseName, Pipeline};
use lifehook_runtime::{RunOptions, Runner, Selection};

use super::tokio_runtime;
use super::{PhaseArg, ReportFormat, Target, UsageError};
use crate::delivery::{Claim, Delivery, Guard};
use crate::exit::{EXIT_DEADLINE, EXIT_INVALID, EXIT_OK};
use crate::output::{print_out, print_problems};
use crate::plugins::load_plugins;
use crate::render;
use crate::render::plan::{describe_phase, dry_run_json};
use crate::telemetry::Telemetry;

/// Run one phase of the pipeline and print its report.
///
/// Steps run by their graph: a step starts once the steps it `needs` have
/// succeeded (by default, once the step or `concurrent` group before it in
/// the file has ended), each in its own sandbox under its limits, all within
/// the phase deadline; `always` steps run even after a failure, with time
/// kept for them. The report goes to stdout, logs to stderr.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook run                                  # pre-stop phase of ./lifehook.toml
  lifehook run -f /etc/lifehook/lifehook.toml --phase post-start
  lifehook run --only notify --report json
  lifehook run --skip-tag slow --skip save-state
  lifehook run --dry-run                        # check and show the plan, run nothing

In a Kubernetes container spec:
  lifecycle:
    preStop:
      exec: { command: [\"/lifehook\", \"run\", \"--phase\", \"pre-stop\", \"-f\", \"/etc/lifehook/lifehook.toml\"] }")]
pub struct Run {
    #[command(flatten)]
    target: Target,

    /// The phase to run.
    #[arg(long, value_enum, default_value = "pre-stop")]
    phase: PhaseArg,

    #[command(flatten)]
    select: SelectArgs,

    /// Check the pipeline and load its plugins, print the plan, run nothing.
    #[arg(long)]
    dry_run: bool,

    /// Report format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    report: ReportFormat,

    /// Run even if an earlier delivery already completed this phase in this
    /// container (hooks are delivered at least once: without it, a repeat
    /// prints the first run's report and runs nothing).
    #[arg(long)]
    force: bool,

    /// Replace the phase's deadline (like "25s"), for example to fit the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    deadline: Option<Duration>,
}

/// Which steps run; the others appear in the report as skipped, with why.
#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// Run only this step (repeat for several). A step it needs that is not
    /// selected counts as succeeded.
    #[arg(long, value_name = "STEP")]
    only: Vec<String>,

    /// Leave this step out (repeat for several).
    #[arg(long, value_name = "STEP")]
    skip: Vec<String>,

    /// Run only steps with this tag (repeat for any of several).
    #[arg(long, value_name = "TAG")]
    tag: Vec<String>,

    /// Leave out steps with this tag (repeat for several).
    #[arg(long, value_name = "TAG")]
    skip_tag: Vec<String>,
}

impl SelectArgs {
    /// The selection, after checking every name and tag against `phase`.
    pub fn selection(&self, phase: &Phase) -> Result<Selection, UsageError> {
        let steps: Vec<&str> = phase.steps.iter().map(|s| s.name.as_str()).collect();
        let mut tags: Vec<&str> = phase
            .steps
            .iter()
            .flat_map(|s| &s.tags)
            .map(String::as_str)
            .collect();
        tags.sort_unstable();
        tags.dedup();
        // A name that matches nothing is an error, not an empty selection:
        // a typo in `--only` inside a hook would otherwise run nothing and
        // report ok at every shutdown.
        for (flag, given, known, what) in [
            ("--only", &self.only, &steps, "steps"),
            ("--skip", &self.skip, &steps, "steps"),
            ("--tag", &self.tag, &tags, "tags"),
            ("--skip-tag", &self.skip_tag, &tags, "tags"),
        ] {
            let unknown: Vec<&str> = given
                .iter()
                .map(String::as_str)
                .filter(|g| !known.contains(g))
                .collect();
            if !unknown.is_empty() {
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                let noun = if what == "steps" { "step" } else { "tag" };
                return Err(UsageError(format!(
                    "{flag} names no {noun} of [{}]: {}; its {what} are: {known}",
                    phase.name,
                    unknown.join(", "),
                )));
            }
        }
        Ok(Selection {
            only: self.only.clone(),
            skip: self.skip.clone(),
            tags: self.tag.clone(),
            skip_tags: self.skip_tag.clone(),
        })
    }
}

impl Run {
    /// The phase this invocation runs.
    pub fn phase_name(&self) -> PhaseName {
        self.phase.into()
    }

    /// The pipeline file it names.
    pub fn pipeline_file(&self) -> &std::path::Path {
        &self.target.pipeline.file
    }

    /// Its `--deadline`, if given.
    pub fn deadline_override(&self) -> Option<Duration> {
        self.deadline
    }
}

/// What a delivery does after its claim.
enum Turn {
    /// Run the phase (recording its marker through the guard, if any).
    Run(Option<Guard>),
    /// Nothing to run: exit with this code.
    Done(i32),
}

/// `--deadline`'s parser: the pipeline file's duration grammar, and not
/// zero (a zero deadline would skip every step).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match lifehook_units::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("it must be more than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl Run {
    pub fn execute(self) -> anyhow::Result<i32> {
        let phase_name = PhaseName::from(self.phase);
        let pipeline = lifehook_manifest::load(&self.target.pipeline.file, Some(phase_name))?;
        let Some(phase) = pipeline.phase(phase_name) else {
            // Nothing to do is not a failure: the same image may define only
            // one of the two hooks in its pipeline file.
            tracing::warn!(
                "{} has no [{phase_name}] section; nothing to run",
                self.target.pipeline.file.display()
            );
            print_out(&format!("lifehook {phase_name}: ok - no steps\n"));
            return Ok(EXIT_OK);
        };
        // Selection errors are usage errors (exit 2), found before a
        // delivery is claimed: a bad command line records no marker.
        let selection = self.select.selection(phase)?;
        for finding in &pipeline.findings {
            tracing::info!("{}", finding.message);
        }
        let started = crate::STARTED.get().copied().unwrap_or_else(Instant::now);
        let deadline = started + self.deadline.unwrap_or(phase.deadline);
        let telemetry = Telemetry::new(&pipeline, None);
        // Only a run of the whole phase counts as its delivery.
        let guard = match (self.dry_run, selection.is_everything()) {
            (false, true) => match self.claim(&pipeline, phase_name, deadline, &telemetry)? {
                Turn::Run(guard) => guard,
                Turn::Done(code) => return Ok(code),
            },
            _ => None,
        };
        let runner = self.target.runner(&pipeline)?;
        if let Some(started) = crate::STARTED.get() {
            tracing::debug!(
                "pipeline loaded and engine ready {:?} after start",
                started.elapsed()
            );
        }
        if self.dry_run {
            return self.dry_run(&runner, &pipeline.path, phase, &selection);
        }
        let options = RunOptions {
            selection,
            exclusion_words: Some(render::exclusion),
            deadline: self.deadline,
            started: Some(started),
            trace: telemetry.trace(),
        };
        let runtime = tokio_runtime()?;
        let report = runtime.block_on(runner.run(&pipeline.path, phase, &options));
        let text = render::text(&report);
        let json = render::json_value(&report);
        match self.report {
            ReportFormat::Text => print_out(&text),
            ReportFormat::Json => print_out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            )),
        }
        crate::logging::mirror_report(&text);
        let code = crate::exit::exit_code(report.status);
        if let Some(guard) = guard {
            guard.finish(code == EXIT_OK, text, json);
        }
        if telemetry.enabled() {
            runtime.block_on(telemetry.export(&report, "run", false, deadline));
        }
        // Not waiting for the blocking threads: a compile for a step that
        // was skipped may still be running, and even idle ones took ~10 ms
        // here to wake up and exit. The process ends right after the report.
        runtime.shutdown_background();
        // The process ends right after this: dropping the loaded plugins
        // would only unregister their machine code's unwind tables, which
        // the static (musl) build's unwinder does one entry at a time,
        // quadratically: 90% of a run of a large Python plugin.
        std::mem::forget(runner);
        Ok(code)
    }

    /// This delivery's turn (see `delivery`): run, or report an earlier
    /// delivery's run, or give up waiting for a concurrent one.
    fn claim(
        &self,
        pipeline: &Pipeline,
        phase: PhaseName,
        deadline: Instant,
        telemetry: &Telemetry,
    ) -> anyhow::Result<Turn> {
        let contents = std::fs::read(&pipeline.path).unwrap_or_default();
        let Some(delivery) = Delivery::new(pipeline, &contents, phase) else {
            return Ok(Turn::Run(None));
        };
        match delivery.claim(deadline, self.force) {
            Ok(Claim::Run(guard)) => Ok(Turn::Run(Some(guard))),
            Ok(Claim::Repeat(marker)) => {
                crate::logging::mirror_report(&marker.repeat_text(phase));
                match self.report {
                    ReportFormat::Text => print_out(&marker.repeat_text(phase)),
                    ReportFormat::Json => print_out(&format!("{}\n", marker.repeat_json())),
                }
                if telemetry.enabled() {
                    let length = self
                        .deadline
                        .or_else(|| pipeline.phase(phase).map(|p| p.deadline))
                        .unwrap_or_default();
                    let report = crate::telemetry::repeat_report(pipeline, phase, length);
                    tokio_runtime()?.block_on(telemetry.export(&report, "run", true, deadline));
                }
                Ok(Turn::Done(EXIT_OK))
            }
            Ok(Claim::Busy) => {
                let text = format!(
                    "lifehook {phase}: DEADLINE reached while another delivery of this phase was still running; not run again\n"
                );
                print_out(&text);
                crate::logging::mirror_report(&text);
                Ok(Turn::Done(EXIT_DEADLINE))
            }
            Err(e) => {
                tracing::warn!(
                    "cannot lock the done-marker of [{phase}] ({e}); running without it"
                );
                Ok(Turn::Run(None))
            }
        }
    }

    fn dry_run(
        &self,
        runner: &Runner,
        pipeline: &std::path::Path,
        phase: &Phase,
        selection: &Selection,
    ) -> anyhow::Result<i32> {
        let selected = phase
            .steps
            .iter()
            .filter(|s| selection.excludes(s).is_none());
        let (kinds, problems) = load_plugins(runner, selected);
        let mut phase = phase.clone();
        if let Some(deadline) = self.deadline {
            phase.deadline = deadline;
        }
        match self.report {
            ReportFormat::Json => {
                let plan = dry_run_json(pipeline, &phase, &kinds, selection, &problems);
                print_out(&format!("{}\n", serde_json::to_string_pretty(&plan)?));
            }
            ReportFormat::Text => {
                let mut out = format!("lifehook {} (dry run)\n", phase.name);
                out += &describe_phase(&phase, &kinds, selection);
                print_out(&out);
                print_problems(&problems);
            }
        }
        Ok(if problems.is_empty() {
            EXIT_OK
        } else {
            EXIT_INVALID
        })
    }
}
