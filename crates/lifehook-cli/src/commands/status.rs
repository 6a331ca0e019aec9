//! `lifehook status`: what the hooks did in this container.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::UsageError;
use crate::delivery::{self, Marker, STATE_DIR_ENV};
use crate::exit::EXIT_OK;
use crate::output::print_out;

/// Show what the phases did in this container: each phase's last run
/// (by `run`, `exec` or `serve`), whether it completed, and its report,
/// read from the state directory.
///
/// Only this container incarnation counts: a restarted container starts
/// with none.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kubectl exec POD -c app -- /lifehook/lifehook status
  lifehook status --json
  lifehook status -f /etc/lifehook/lifehook.toml   # a pipeline with its own [state] dir")]
pub struct Status {
    /// A pipeline whose `[state] dir` to read [default: $LIFEHOOK_STATE_DIR,
    /// or the state directory lifehook uses in a container].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,

    /// The state directory to read.
    #[arg(long, value_name = "DIR", conflicts_with = "file")]
    state_dir: Option<PathBuf>,

    /// Print JSON: `{"state_dir", "runs": [{"phase", "by", "completed",
    /// "at_ms", "exit_code", "pipeline", "text", "report"}]}`.
    #[arg(long)]
    json: bool,
}

/// One phase's last run, as `status` shows it.
struct Run<'a> {
    last: &'a Marker,
    /// A done-marker of the same run's key exists: the phase completed.
    completed: bool,
}

impl Status {
    pub fn execute(self) -> anyhow::Result<i32> {
        let dir = self.dir()?;
        let records = match delivery::last_runs(&dir) {
            Ok(records) => records,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the state directory {}", dir.display()));
            }
        };
        let runs: Vec<Run> = records
            .iter()
            .map(|(last, completed)| Run {
                last,
                completed: *completed,
            })
            .collect();
        if self.json {
            let runs: Vec<serde_json::Value> = runs
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "phase": r.last.phase,
                        "by": r.last.by,
                        "completed": r.completed,
                        "at_ms": r.last.completed_at_ms,
                        "exit_code": r.last.report.get("exit_code"),
                        "pipeline": r.last.pipeline,
                        "text": r.last.text,
                        "report": r.last.report,
                    })
                })
                .collect();
            let out = serde_json::json!({ "state_dir": dir, "runs": runs });
            print_out(&format!("{}\n", serde_json::to_string_pretty(&out)?));
            return Ok(EXIT_OK);
        }
        let mut out = match runs.len() {
            0 => format!(
                "lifehook status: no phase has run in this container (state directory {})\n",
                dir.display()
            ),
            n => format!(
                "lifehook status: {n} phase run{} in this container, newest first (state directory {})\n",
                if n == 1 { "" } else { "s" },
                dir.display()
            ),
        };
        for r in &runs {
            let ago = lifehook_units::format_duration(std::time::Duration::from_millis(
                delivery::now_ms().saturating_sub(r.last.completed_at_ms),
            ));
            out += &format!(
                "\n{} by {}, {ago} ago, {} ({})\n",
                r.last.phase,
                r.last.by,
                if r.completed {
                    "completed"
                } else {
                    "not completed: it runs again at the next delivery"
                },
                r.last.pipeline.display()
            );
            for line in r.last.text.lines() {
                out += &format!("  {line}\n");
            }
        }
        print_out(&out);
        Ok(EXIT_OK)
    }

    /// The state directory: `--state-dir`, the pipeline's, the variable's,
    /// or the one lifehook uses in a container.
    fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        if let Some(file) = &self.file {
            let pipeline = lifehook_manifest::load(file, None)?;
            return delivery::state_dir(&pipeline).ok_or_else(|| {
                UsageError(format!(
                    "{} keeps no state here: it has no [state] dir, ${STATE_DIR_ENV} is not set, and this is not a container",
                    file.display()
                ))
                .into()
            });
        }
        delivery::default_state_dir().ok_or_else(|| {
            UsageError(format!(
                "no state directory: ${STATE_DIR_ENV} is not set and this is not a container; name one with --state-dir or -f PIPELINE"
            ))
            .into()
        })
    }
}
