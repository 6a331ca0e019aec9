//! The step graph of a phase. A step waits for the steps it `needs` (which
//! must succeed) or, without `needs`, for the step or `concurrent` group
//! before it in the file (which must only finish). This module turns both
//! into [`Edges`] (indices) and rejects what cannot run: unknown names, a
//! step needing itself, `needs` beside `concurrent`, and cycles.
//!
//! A cycle is reported once, naming every step in it and why each waits for
//! the next (a `needs` entry, or file order), at the `needs` entry that
//! closes it: file order alone cannot make a cycle, so one is always there.

use std::collections::HashMap;

use super::{Resolver, StepSpans};
use crate::pipeline::{Edges, PhaseName, Step};

/// Why one step waits for another.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge {
    /// `needs`: the other must succeed.
    Needs,
    /// File order: the other must finish.
    After,
}

impl Resolver<'_> {
    /// The edges of every step of `phase` (one entry a step), recording a
    /// problem for each reason the graph cannot run.
    pub(super) fn graph(
        &mut self,
        phase: PhaseName,
        steps: &[Step],
        spans: &[StepSpans],
    ) -> Vec<Edges> {
        // Problems are gathered and recorded at the end: the closure borrows
        // them, not `self`, while the loop below reads `spans`.
        let mut problems = Vec::new();
        let mut problem = |at: std::ops::Range<usize>, message: String, help: String| {
            problems.push((at, message, help));
        };
        // Names to indices, the first step of a name winning (a duplicate
        // name is reported by the step checks, not here).
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            index.entry(s.name.as_str()).or_insert(i);
        }
        let n = steps.len();
        let mut edges: Vec<Vec<(usize, Edge)>> = vec![Vec::new(); n];
        // Where each `needs` entry is written, to point at the one closing a cycle.
        let mut needs_at: HashMap<(usize, usize), std::ops::Range<usize>> = HashMap::new();
        // File order in groups: a run of neighbouring `concurrent` steps is
        // one group, any other step a group of its own; a step without
        // `needs` waits for every member of the group before its own.
        let mut previous_group: Vec<usize> = Vec::new();
        let mut group: Vec<usize> = Vec::new();
        let mut group_is_concurrent = false;
        for i in 0..n {
            let step = &steps[i];
            let explicit = spans[i].needs.as_ref();
            if let (Some(_), Some(c)) = (
                explicit,
                spans[i].concurrent.as_ref().filter(|c| *c.get_ref()),
            ) {
                problem(
                c.span(),
                format!("step `{}` has both `needs` and `concurrent`", step.name),
                "with `needs`, a step starts as soon as what it needs has succeeded, alongside anything else that is ready; remove `concurrent`".into(),
            );
            }
            // A step with `needs` leaves file order entirely: it neither
            // joins a concurrent group nor lets one continue past it.
            let concurrent = step.concurrent && explicit.is_none();
            if concurrent && group_is_concurrent {
                group.push(i);
            } else {
                previous_group = std::mem::replace(&mut group, vec![i]);
                group_is_concurrent = concurrent;
            }
            let Some(needs) = explicit else {
                edges[i] = previous_group.iter().map(|&j| (j, Edge::After)).collect();
                continue;
            };
            for entry in needs.get_ref() {
                let name = entry.get_ref().as_str();
                match index.get(name) {
                    Some(&j) if j == i => problem(
                        entry.span(),
                        format!("step `{name}` needs itself"),
                        "list the steps that must succeed before this one".into(),
                    ),
                    Some(&j) => {
                        // Listing a step twice is harmless: one edge.
                        if !edges[i].iter().any(|(k, _)| *k == j) {
                            edges[i].push((j, Edge::Needs));
                            needs_at.insert((i, j), entry.span());
                        }
                    }
                    None => problem(
                        entry.span(),
                        format!(
                            "step `{}` needs `{name}`, which is not a step of [{}]",
                            step.name, phase
                        ),
                        format!(
                            "the steps of [{}] are: {}",
                            phase,
                            steps
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                }
            }
        }
        // One cycle is enough to report: breaking it is the fix, and a
        // second would show up on the next check.
        if let Some(cycle) = find_cycle(&edges) {
            let names = |i: usize| format!("`{}`", steps[i].name);
            let mut why = Vec::new();
            let mut at = None;
            for pair in cycle.windows(2) {
                let (from, to) = (pair[0], pair[1]);
                let kind = edges[from]
                    .iter()
                    .find(|(j, _)| *j == to)
                    .map_or(Edge::After, |(_, k)| *k);
                match kind {
                    Edge::Needs => {
                        at = at.or_else(|| needs_at.get(&(from, to)).cloned());
                        why.push(format!("{} needs {}", names(from), names(to)));
                    }
                    Edge::After => why.push(format!(
                        "{} runs after {} in file order (give {} its own `needs` to change that)",
                        names(from),
                        names(to),
                        names(from)
                    )),
                }
            }
            let members: Vec<String> = cycle[..cycle.len() - 1].iter().map(|&i| names(i)).collect();
            let at = at.unwrap_or_else(|| spans[cycle[0]].name.span());
            problem(
                at,
                format!("steps {} wait for each other", members.join(", ")),
                format!("{}; break the cycle", why.join("; ")),
            );
        }
        for (at, message, help) in problems {
            self.problem_at(at, message, help);
        }
        // Kept even when there were problems: the resolver reports them all
        // and the pipeline is refused as a whole.
        edges
            .into_iter()
            .map(|list| {
                let of = |kind: Edge| {
                    list.iter()
                        .filter(|(_, k)| *k == kind)
                        .map(|&(j, _)| j)
                        .collect()
                };
                Edges {
                    needs: of(Edge::Needs),
                    after: of(Edge::After),
                }
            })
            .collect()
    }
}

/// A cycle as step indices, first repeated at the end, when there is one.
/// Iterative (Kahn's algorithm, then a walk inside what is left), so a
/// file with thousands of steps cannot overflow the stack.
fn find_cycle(edges: &[Vec<(usize, Edge)>]) -> Option<Vec<usize>> {
    let n = edges.len();
    let mut waiting: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, list) in edges.iter().enumerate() {
        for &(j, _) in list {
            dependants[j].push(i);
        }
    }
    // Remove steps that wait for nothing, then those that waited only for
    // removed ones: what cannot be removed is in, or waits for, a cycle.
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(j) = ready.pop() {
        done[j] = true;
        for &i in &dependants[j] {
            waiting[i] -= 1;
            if waiting[i] == 0 {
                ready.push(i);
            }
        }
    }
    // Every step left waits for another step left: walking from any of
    // them must come back to a step already seen.
    let start = (0..n).find(|&i| !done[i])?;
    let mut seen_at = vec![usize::MAX; n];
    let mut walk = Vec::new();
    let mut at = start;
    while seen_at[at] == usize::MAX {
        seen_at[at] = walk.len();
        walk.push(at);
        at = edges[at].iter().map(|&(j, _)| j).find(|&j| !done[j])?;
    }
    let mut cycle = walk.split_off(seen_at[at]);
    cycle.push(at);
    Some(cycle)
}
