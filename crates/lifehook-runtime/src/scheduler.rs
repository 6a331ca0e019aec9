//! Which steps of a phase start, and which are skipped and why: a pure state
//! machine over the step graph, driven by the runner with "this step ended"
//! and "the deadline passed", unit-tested without any plugin.
//!
//! Rules:
//! - a step starts once every step it waits for has ended (for `needs`:
//!   succeeded) and a concurrency slot is free; ready steps start in file
//!   order;
//! - after an `abort`, or once the deadline less the always-steps' reserve
//!   has passed, steps that have not started are skipped (once what they
//!   wait for has ended), but `always` steps, which run once their
//!   dependencies have ended, however they ended;
//! - a step whose need failed or was skipped is skipped (a need that was
//!   only deselected on the command line counts as met).

use lifehook_manifest::{OnFailure, Phase};

/// Why a step was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// Left out by `--only`, `--skip`, `--tag` or `--skip-tag`.
    NotSelected(String),
    /// A step with `on-failure = "abort"` failed.
    Aborted { by: String },
    /// A step it needs did not succeed.
    NeedFailed { need: String, skipped: bool },
    /// The deadline passed before it could start.
    Deadline,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Running,
    Ended { ok: bool },
    Skipped(SkipReason),
}

struct Node {
    needs: Vec<usize>,
    after: Vec<usize>,
    always: bool,
    aborts: bool,
}

/// What the runner should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Start(usize),
    Skip(usize, SkipReason),
}

/// The scheduling state of one run of a phase.
pub(crate) struct Schedule {
    nodes: Vec<Node>,
    names: Vec<String>,
    states: Vec<State>,
    running: usize,
    max_running: usize,
    aborted_by: Option<String>,
}

/// Most steps of `phase` running at once: its `max-concurrency`, or the
/// CPUs this process may use. Decided here, not in the manifest, because a
/// pipeline is checked on one machine and run on another.
pub(crate) fn concurrency(phase: &Phase) -> usize {
    match phase.max_concurrency {
        Some(n) => n.max(1),
        None if phase.steps.len() <= 1 => 1,
        None => cpu_count(),
    }
}

/// The CPUs this process may use, asked once: the answer reads cgroup files,
/// a noticeable part of a one-step run's start-up.
fn cpu_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl Schedule {
    /// A schedule for `phase`; `deselected` gives, for each step left out on
    /// the command line, why.
    pub(crate) fn new(phase: &Phase, deselected: impl Fn(usize) -> Option<String>) -> Schedule {
        Schedule {
            nodes: phase
                .steps
                .iter()
                .zip(&phase.edges)
                .map(|(s, e)| Node {
                    needs: e.needs.clone(),
                    after: e.after.clone(),
                    always: s.always,
                    aborts: s.on_failure == OnFailure::Abort,
                })
                .collect(),
            names: phase.steps.iter().map(|s| s.name.clone()).collect(),
            states: (0..phase.steps.len())
                .map(|i| match deselected(i) {
                    Some(why) => State::Skipped(SkipReason::NotSelected(why)),
                    None => State::Pending,
                })
                .collect(),
            running: 0,
            max_running: concurrency(phase),
            aborted_by: None,
        }
    }

    /// The step whose failure aborted the phase.
    pub(crate) fn aborted_by(&self) -> Option<&str> {
        self.aborted_by.as_deref()
    }

    /// True when every step has ended or been skipped.
    pub(crate) fn is_done(&self) -> bool {
        self.states
            .iter()
            .all(|s| matches!(s, State::Ended { .. } | State::Skipped(_)))
    }

    /// Steps skipped before the run (not selected), for the report.
    pub(crate) fn initially_skipped(&self) -> Vec<(usize, SkipReason)> {
        self.states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                State::Skipped(r) => Some((i, r.clone())),
                _ => None,
            })
            .collect()
    }

    /// Records that step `i` ended.
    pub(crate) fn ended(&mut self, i: usize, ok: bool) {
        if self.states[i] == State::Running {
            self.running -= 1;
        }
        self.states[i] = State::Ended { ok };
        if !ok && self.nodes[i].aborts && self.aborted_by.is_none() {
            self.aborted_by = Some(self.names[i].clone());
        }
    }

    /// What to start and skip now. `main_passed`: the deadline less the
    /// always-steps' reserve has passed; `phase_passed`: the deadline itself.
    pub(crate) fn next(&mut self, main_passed: bool, phase_passed: bool) -> Vec<Decision> {
        let mut decisions = Vec::new();
        loop {
            let before = decisions.len();
            for i in 0..self.nodes.len() {
                if self.states[i] != State::Pending {
                    continue;
                }
                if let Some(decision) = self.decide(i, main_passed, phase_passed) {
                    match &decision {
                        Decision::Start(_) => {
                            self.states[i] = State::Running;
                            self.running += 1;
                        }
                        Decision::Skip(_, reason) => {
                            self.states[i] = State::Skipped(reason.clone())
                        }
                    }
                    decisions.push(decision);
                }
            }
            // A skip can release steps earlier in file order: go again.
            if decisions.len() == before {
                return decisions;
            }
        }
    }

    fn decide(&self, i: usize, main_passed: bool, phase_passed: bool) -> Option<Decision> {
        let node = &self.nodes[i];
        // Even a step about to be skipped waits for its dependencies to end,
        // so that what follows it (an always-step) follows them too.
        let unfinished = node
            .needs
            .iter()
            .chain(&node.after)
            .any(|&j| matches!(self.states[j], State::Pending | State::Running));
        if unfinished {
            return None;
        }
        if !node.always {
            if let Some(by) = &self.aborted_by {
                return Some(Decision::Skip(i, SkipReason::Aborted { by: by.clone() }));
            }
            if main_passed {
                return Some(Decision::Skip(i, SkipReason::Deadline));
            }
        } else if phase_passed {
            return Some(Decision::Skip(i, SkipReason::Deadline));
        }
        if !node.always {
            for &j in &node.needs {
                let failed = match &self.states[j] {
                    State::Ended { ok } => (!ok).then_some(false),
                    State::Skipped(SkipReason::NotSelected(_)) => None,
                    State::Skipped(_) => Some(true),
                    State::Pending | State::Running => None,
                };
                if let Some(skipped) = failed {
                    let need = self.names[j].clone();
                    return Some(Decision::Skip(i, SkipReason::NeedFailed { need, skipped }));
                }
            }
        }
        (self.running < self.max_running).then_some(Decision::Start(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase from `name:needs:after:flags` lines (flags: `A` always,
    /// `X` abort on failure); needs and after are comma-separated.
    fn phase(spec: &[&str], max_concurrency: usize) -> Phase {
        let source: String = spec
            .iter()
            .map(|line| {
                let parts: Vec<&str> = line.split(':').collect();
                let list = |s: &str| {
                    s.split(',')
                        .filter(|n| !n.is_empty())
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut step = format!(
                    "[[pre-stop.steps]]\nname = \"{}\"\nsleep = \"1s\"\n",
                    parts[0]
                );
                if !parts[1].is_empty() || parts[2] == "-" {
                    step += &format!("needs = [{}]\n", list(parts[1]));
                }
                if parts[3].contains('A') {
                    step += "always = true\n";
                }
                if parts[3].contains('X') {
                    step += "on-failure = \"abort\"\n";
                }
                step
            })
            .collect();
        let source = format!("[defaults]\nmax-concurrency = {max_concurrency}\n{source}");
        let pipeline = lifehook_manifest::parse(&source, "l.toml".as_ref(), &|_| None, None)
            .unwrap_or_else(|e| panic!("{e}\n{source}"));
        pipeline.phases[0].clone()
    }

    fn started(d: &[Decision]) -> Vec<usize> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Start(i) => Some(*i),
                Decision::Skip(..) => None,
            })
            .collect()
    }

    #[test]
    fn a_diamond_runs_its_middle_together() {
        // a; b and c need a; d needs b and c.
        let p = phase(&["a::-:", "b:a::", "c:a::", "d:b,c::"], 8);
        let mut s = Schedule::new(&p, |_| None);
        assert_eq!(started(&s.next(false, false)), [0]);
        assert!(s.next(false, false).is_empty());
        s.ended(0, true);
        assert_eq!(started(&s.next(false, false)), [1, 2]);
        s.ended(2, true);
        assert!(s.next(false, false).is_empty(), "d must wait for b too");
        s.ended(1, true);
        assert_eq!(started(&s.next(false, false)), [3]);
        s.ended(3, true);
        assert!(s.is_done());
    }

    #[test]
    fn max_concurrency_bounds_what_runs() {
        let p = phase(&["a::-:", "b::-:", "c::-:"], 2);
        let mut s = Schedule::new(&p, |_| None);
        assert_eq!(started(&s.next(false, false)), [0, 1]);
        s.ended(1, true);
        assert_eq!(started(&s.next(false, false)), [2]);
    }

    #[test]
    fn a_failed_need_skips_its_dependants_but_not_an_always_step() {
        let p = phase(&["a::-:", "b:a::", "c:b::", "z:b::A"], 8);
        let mut s = Schedule::new(&p, |_| None);
        s.next(false, false);
        s.ended(0, false);
        let d = s.next(false, false);
        assert_eq!(
            d,
            [
                Decision::Skip(
                    1,
                    SkipReason::NeedFailed {
                        need: "a".into(),
                        skipped: false
                    }
                ),
                Decision::Skip(
                    2,
                    SkipReason::NeedFailed {
                        need: "b".into(),
                        skipped: true
                    }
                ),
                Decision::Start(3),
            ]
        );
    }

    #[test]
    fn abort_skips_the_rest_but_always_steps() {
        let p = phase(&["a::-:X", "b::-:", "z:a::A"], 1);
        let mut s = Schedule::new(&p, |_| None);
        assert_eq!(started(&s.next(false, false)), [0]);
        s.ended(0, false);
        assert_eq!(s.aborted_by(), Some("a"));
        assert_eq!(
            s.next(false, false),
            [
                Decision::Skip(1, SkipReason::Aborted { by: "a".into() }),
                Decision::Start(2)
            ]
        );
    }

    #[test]
    fn the_deadline_skips_what_has_not_started_and_always_steps_wait_for_their_turn() {
        // b follows a in file order; z (always) follows b.
        let p = phase(&["a:::", "b:::", "z:::A"], 8);
        let mut s = Schedule::new(&p, |_| None);
        assert_eq!(started(&s.next(false, false)), [0]);
        // a hangs until the main deadline: b and z wait for it to be cut.
        assert!(s.next(true, false).is_empty());
        s.ended(0, false);
        assert_eq!(
            s.next(true, false),
            [Decision::Skip(1, SkipReason::Deadline), Decision::Start(2)]
        );
    }

    #[test]
    fn a_deselected_need_counts_as_met() {
        let p = phase(&["a::-:", "b:a::"], 8);
        let mut s = Schedule::new(&p, |i| (i == 0).then(|| "--only b".to_string()));
        assert_eq!(s.initially_skipped().len(), 1);
        assert_eq!(started(&s.next(false, false)), [1]);
    }
}
