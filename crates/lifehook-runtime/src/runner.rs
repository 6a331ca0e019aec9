//! [`Runner`]: one engine, one linker and the loaded plugins, running phases
//! as often as asked, concurrently if asked, with no per-run compile.
//! `lifehook run` makes one and runs one phase; a server makes one at
//! start-up, loads every plugin, and runs a phase per trigger.
//!
//! Every wait is bounded by a deadline: loading a plugin, each attempt (an
//! epoch callback stops guest loops; `tokio::time::timeout_at` stops a guest
//! blocked in a host call), and the backoff between attempts. Steps other
//! than `always` ones stop at the deadline less the time kept for the
//! always-steps; those stop at the deadline. When a deadline passes, the
//! steps still running are dropped and the rest skipped, so the caller gets
//! its report on time whatever the plugins do.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifehook_manifest::{Phase, PluginRef, Step};
use lifehook_units::format_duration;
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument as _;

use crate::engine::Host;
use crate::load::cache::ArtifactCache;
use crate::load::loader::{LoadResult, Loader};
use crate::load::sources::Sources;
use crate::report::{Outcome, PhaseReport, PhaseStatus, StepReport};
use crate::scheduler::{Decision, Schedule, SkipReason};
use crate::selection::{Exclusion, Selection};
use crate::step::{self, Allotment};

/// Choices made for one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Which steps run.
    pub selection: Selection,
    /// How the report words a step the selection left out (the caller
    /// knows the names of its filters); [`Exclusion`]'s `Display` when
    /// `None`.
    pub exclusion_words: Option<fn(&Exclusion) -> String>,
    /// Replaces the phase's own deadline.
    pub deadline: Option<Duration>,
    /// When the deadline started (the process start, for a hook: the
    /// grace period counts the runner's own start-up too). Now by default.
    pub started: Option<Instant>,
    /// The trace the run belongs to: the steps' outgoing HTTP requests
    /// carry their span's `traceparent` when it says to propagate.
    pub trace: Option<crate::trace::TraceContext>,
}

/// Runs phases with one engine and the plugins it loaded. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    loader: Arc<Loader>,
}

/// How long a step task may outlive its deadline before it is abandoned:
/// each step ends by its own deadline; this only guards against a bug in
/// that logic keeping the runner late.
const GUARD: Duration = Duration::from_millis(50);

impl Runner {
    /// A runner on `rt`, loading precompiled plugins from `cache` when it
    /// has them.
    pub fn new(rt: Host, cache: Option<ArtifactCache>, sources: Sources) -> Runner {
        Runner {
            loader: Arc::new(Loader::new(rt, cache, sources)),
        }
    }

    /// The engine and linker.
    pub fn host(&self) -> &Host {
        self.loader.host()
    }

    /// Loads `plugins` now, in parallel, blocking (pulling those that need
    /// it): for checks and for a server's start-up. They stay loaded for
    /// every later run. Call outside any tokio runtime.
    pub fn load_all(&self, plugins: &[&PluginRef]) -> Vec<(PluginRef, LoadResult)> {
        self.loader.load_all(plugins)
    }

    /// Runs `phase` of the pipeline at `pipeline` and reports what
    /// happened. Returns within the phase deadline plus scheduling noise.
    pub async fn run(&self, pipeline: &Path, phase: &Phase, options: &RunOptions) -> PhaseReport {
        let started = options.started.unwrap_or_else(Instant::now);
        let deadline_len = options.deadline.unwrap_or(phase.deadline);
        let deadline = started + deadline_len;
        let selection = &options.selection;
        let reserve =
            lifehook_manifest::budget::cleanup_reserve(phase, |s| selection.excludes(s).is_none());
        let main_deadline = deadline
            .checked_sub(reserve)
            .unwrap_or(started)
            .max(started);
        let budget = Budget {
            deadline: deadline_len,
            reserve,
            ends: deadline,
        };
        let steps: Vec<Arc<Step>> = phase.steps.iter().cloned().map(Arc::new).collect();
        // Steps running at once share the process's descriptors, less what
        // lifehook keeps for itself (its log file, the report, markers).
        let max_open = descriptor_budget() / crate::scheduler::concurrency(phase);
        let words = options.exclusion_words.unwrap_or(|e| e.to_string());
        let mut schedule = Schedule::new(phase, |i| {
            selection.excludes(&phase.steps[i]).map(|e| words(&e))
        });
        let plugins: Vec<&PluginRef> = phase
            .steps
            .iter()
            .filter(|s| selection.excludes(s).is_none())
            .filter_map(Step::plugin)
            .collect();
        self.loader.start(&plugins);

        let mut reports: Vec<Option<StepReport>> = vec![None; steps.len()];
        for (i, reason) in schedule.initially_skipped() {
            reports[i] = Some(skipped(&steps[i], &reason, &budget));
        }
        let mut deadline_hit = false;
        let mut set: JoinSet<(usize, StepReport)> = JoinSet::new();
        let mut running: HashMap<usize, (AbortHandle, Instant)> = HashMap::new();
        loop {
            let now = Instant::now();
            for decision in schedule.next(now >= main_deadline, now >= deadline) {
                match decision {
                    Decision::Skip(i, reason) => {
                        deadline_hit |= reason == SkipReason::Deadline;
                        reports[i] = Some(skipped(&steps[i], &reason, &budget));
                    }
                    Decision::Start(i) => {
                        let step = steps[i].clone();
                        let allotment = if step.always {
                            Allotment {
                                until: deadline,
                                reserve: Duration::ZERO,
                                max_open,
                            }
                        } else {
                            Allotment {
                                until: main_deadline,
                                reserve,
                                max_open,
                            }
                        };
                        let (loader, name) = (self.loader.clone(), phase.name);
                        let traceparent = options
                            .trace
                            .filter(|t| t.propagate)
                            .map(|t| t.traceparent(t.step_span(&step.name)));
                        let offset = now.saturating_duration_since(started);
                        let span = tracing::info_span!("hook", step = %step.name);
                        let handle = set.spawn(
                            async move {
                                let mut report =
                                    step::run(&loader, name, &step, allotment, traceparent).await;
                                report.started = Some(offset);
                                (i, report)
                            }
                            .instrument(span),
                        );
                        running.insert(i, (handle, allotment.until + GUARD));
                    }
                }
            }
            if schedule.is_done() {
                break;
            }
            if running.is_empty() {
                // Unreachable by the scheduler's rules (a step whose
                // dependencies have all ended is started or skipped); a
                // guard against waiting for nothing.
                tracing::error!("no step is running, yet the phase is not done");
                break;
            }
            // Wake for the next step to end, the main deadline (to skip what
            // has not started), or the earliest guard of a running step.
            let mut wake = running.values().map(|(_, guard)| *guard).min();
            if now < main_deadline {
                wake = Some(wake.map_or(main_deadline, |w| w.min(main_deadline)));
            }
            let wake = wake.unwrap_or(deadline + GUARD);
            tokio::select! {
                joined = set.join_next(), if !set.is_empty() => match joined {
                    Some(Ok((i, report))) => {
                        running.remove(&i);
                        deadline_hit |= report.cut_by_deadline;
                        schedule.ended(i, report.outcome == Outcome::Ok);
                        reports[i] = Some(report);
                    }
                    Some(Err(e)) if e.is_cancelled() => {}
                    Some(Err(e)) => tracing::error!("a step task failed: {e}"),
                    None => {}
                },
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    let late: Vec<usize> = running
                        .iter()
                        .filter(|(_, (_, guard))| now >= *guard)
                        .map(|(i, _)| *i)
                        .collect();
                    for i in late {
                        if let Some((handle, _)) = running.remove(&i) {
                            handle.abort();
                        }
                        let mut r = step::not_run(&steps[i], Outcome::TimedOut, "did not finish by the phase deadline".into());
                        r.cut_by_deadline = true;
                        deadline_hit = true;
                        schedule.ended(i, false);
                        reports[i] = Some(r);
                    }
                }
            }
        }
        set.abort_all();
        let steps: Vec<StepReport> = reports
            .into_iter()
            .zip(&steps)
            .enumerate()
            .map(|(i, (r, s))| {
                let mut r = r.unwrap_or_else(|| {
                    step::not_run(s, Outcome::Skipped, "skipped: not reached".into())
                });
                r.waited_for = phase.waits_for(i).map(str::to_owned).collect();
                r
            })
            .collect();
        PhaseReport {
            phase: phase.name,
            pipeline: pipeline.to_path_buf(),
            deadline: deadline_len,
            duration: started.elapsed(),
            cleanup_reserve: reserve,
            deadline_hit,
            aborted_by: schedule.aborted_by().map(str::to_owned),
            status: PhaseStatus::Ok,
            steps,
            started_at: std::time::SystemTime::now()
                .checked_sub(started.elapsed())
                .unwrap_or(std::time::UNIX_EPOCH),
        }
        .finish()
    }
}

/// Descriptors kept back for lifehook itself, whatever its plugins hold.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The descriptors plugins may share: the process's limit (raised to the
/// hard limit once, at the first run) less [`RESERVED_DESCRIPTORS`].
fn descriptor_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            if setrlimit(Resource::Nofile, limit).is_err() {
                limit = getrlimit(Resource::Nofile);
            }
        }
        // "Unlimited" is taken as a million: a budget divided among steps
        // must be a number.
        let soft = limit.current.unwrap_or(1 << 20).min(1 << 20);
        usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS).max(8)).unwrap_or(usize::MAX)
    })
}

/// A run's time, for saying why a step was skipped for lack of it.
struct Budget {
    /// The phase deadline.
    deadline: Duration,
    /// What of it is kept for always-steps.
    reserve: Duration,
    /// When the phase deadline ends.
    ends: Instant,
}

/// The report of a step that never started, with a reason a reader can act
/// on: which step aborted, which need failed, or how the deadline and the
/// always-step reserve left no time (and what to change).
fn skipped(step: &Step, reason: &SkipReason, budget: &Budget) -> StepReport {
    let why = match reason {
        SkipReason::NotSelected(why) => why.clone(),
        SkipReason::Aborted { by } => format!("step `{by}` failed with on-failure = \"abort\""),
        SkipReason::NeedFailed {
            need,
            skipped: false,
        } => format!("it needs `{need}`, which failed"),
        SkipReason::NeedFailed {
            need,
            skipped: true,
        } => format!("it needs `{need}`, which was skipped"),
        SkipReason::Deadline if !step.always && budget.reserve >= budget.deadline => format!(
            "no time was left for it: the {} kept for always-steps (the longest chain of their timeouts) takes the whole phase deadline of {}; raise `deadline` or shorten the always-steps' timeouts (`lifehook check` reports this)",
            format_duration(budget.reserve),
            format_duration(budget.deadline)
        ),
        SkipReason::Deadline if !step.always && Instant::now() < budget.ends => format!(
            "the phase deadline of {} was reached, less the {} kept for always-steps",
            format_duration(budget.deadline),
            format_duration(budget.reserve)
        ),
        SkipReason::Deadline => format!(
            "the phase deadline of {} was reached",
            format_duration(budget.deadline)
        ),
    };
    step::not_run(step, Outcome::Skipped, format!("skipped: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase() -> (tempfile::TempDir, lifehook_manifest::Pipeline) {
        let dir = tempfile::tempdir().expect("dir");
        let source = format!(
            "[[pre-stop.steps]]\nname = \"a\"\nplugin = \"{}\"\nconfig = {{ mode = \"ok\" }}\n\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"50ms\"\n",
            lifehook_test_artifacts::FIXTURE_HOOK
        );
        let pipeline =
            lifehook_manifest::parse(&source, &dir.path().join("l.toml"), &|_| None, None)
                .expect("valid pipeline");
        (dir, pipeline)
    }

    /// One runner serves many runs, concurrent ones too, from one load.
    #[test]
    fn one_runner_runs_a_phase_many_times_without_loading_again() {
        let (_dir, pipeline) = phase();
        let phase = &pipeline.phases[0];
        let runner = Runner::new(Host::new().expect("engine"), None, Sources::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let options = RunOptions::default();
        let first = rt.block_on(runner.run(&pipeline.path, phase, &options));
        let (second, third) = rt.block_on(async {
            tokio::join!(
                runner.run(&pipeline.path, phase, &options),
                runner.run(&pipeline.path, phase, &options)
            )
        });
        for report in [&first, &second, &third] {
            assert_eq!(report.status, PhaseStatus::Ok, "{}", report.to_json());
            assert_eq!(report.steps[1].message, "waited 50ms");
        }
        // The same loaded plugin (its load time, to the nanosecond) served
        // every run.
        let load = first.steps[0].load_time.expect("loaded");
        assert_eq!(second.steps[0].load_time, Some(load));
        assert_eq!(third.steps[0].load_time, Some(load));
    }
}
