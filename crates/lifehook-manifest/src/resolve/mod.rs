//! From the raw TOML types of [`crate::schema`] to the resolved
//! [`Pipeline`]: relative paths made absolute, `${VAR}` interpolated, limits
//! and retry policies made concrete, grants parsed, the step graph checked
//! and turned into indices.
//!
//! The resolver never stops at the first problem: each part resolves what it
//! can, records a [`Diagnostic`] for what it cannot, and hands back a
//! placeholder so the rest of the file is still checked. A file with three
//! mistakes gets three errors in one `lifehook check`, in line order. The
//! pipeline is returned only when no problem was recorded, so a placeholder
//! never reaches the runtime.
//!
//! One module per thing resolved: [`limits`] (fuel, time, memory, counts,
//! retries, for `[defaults]` and each step alike), [`sources`] (the plugin
//! reference and the OCI settings), [`grants`] (`allow`, `env`),
//! [`config`] (`[config]` flattened to `wasi:config` keys) and [`graph`]
//! (`needs`, `concurrent`, file order).

mod config;
mod grants;
mod graph;
mod limits;
mod sources;
mod telemetry;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics, LineIndex};
use crate::interpolate::interpolate;
use crate::pipeline::{
    Action, DEFAULT_APP_RESERVE, DEFAULT_POST_START_DEADLINE, DEFAULT_PRE_STOP_DEADLINE, Phase,
    PhaseName, Pipeline, RetryPolicy, SleepAction, Step,
};
use crate::schema::{RawPhase, RawPipeline, RawStep};

use self::limits::Defaults;

/// Collects diagnostics while resolving one file.
struct Resolver<'a> {
    path: &'a Path,
    source: &'a str,
    lines: LineIndex,
    /// The pipeline file's directory, absolute: relative plugin paths and
    /// granted directories are relative to it, wherever lifehook runs from.
    base_dir: PathBuf,
    /// Whether plugin files are on this filesystem, to be looked for. False
    /// for a pipeline carried by a Kubernetes manifest: its plugins are in
    /// the container image, not here.
    plugin_files_here: bool,
    /// The variables `${VAR}` reads: the process environment in `run`, a
    /// fixed map in tests and for a pipeline checked against a pod.
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Errors: any of them makes the file invalid.
    problems: Vec<Diagnostic>,
    /// Budget findings of a valid file (see [`Pipeline::findings`]).
    findings: Vec<Diagnostic>,
}

/// Resolves the phases in `only` (or all) of a parsed file. `only` lets a
/// hook resolve just its own phase: a `${VAR}` that only the other phase
/// uses, unset in this container, is then no error.
pub(crate) fn resolve(
    raw: RawPipeline,
    path: &Path,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    only: Option<PhaseName>,
    plugin_files_here: bool,
) -> Result<Pipeline, Diagnostics> {
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Absolute once, here: the runtime may change directory (exec) and
    // every path it is given must still mean the same file.
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    let mut r = Resolver {
        path,
        source,
        lines: LineIndex::new(source),
        base_dir,
        plugin_files_here,
        env,
        problems: Vec::new(),
        findings: Vec::new(),
    };
    // [defaults] first: every step inherits from it.
    let defaults = r.defaults(&raw.defaults);
    let state_dir = raw
        .state
        .dir
        .as_ref()
        .and_then(|d| r.text(d))
        .map(|d| normalize(&r.base_dir.join(d)));
    let insecure_registries = r.insecure_registries(&raw.oci.insecure_registries);
    let telemetry = r.telemetry(&raw.telemetry);
    let mut phases = Vec::new();
    for (name, raw_phase) in [
        (PhaseName::PreStop, raw.pre_stop),
        (PhaseName::PostStart, raw.post_start),
    ] {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        if let Some(raw_phase) = raw_phase {
            phases.push(r.phase(name, raw_phase, &defaults));
        }
    }
    r.problems.sort_by_key(|d| (d.line, d.column));
    if r.problems.is_empty() {
        Ok(Pipeline {
            path: path.to_path_buf(),
            phases,
            state_dir,
            insecure_registries,
            telemetry,
            findings: r.findings,
        })
    } else {
        Err(Diagnostics(r.problems))
    }
}

/// The spans of a step's graph keys, kept for locating graph problems after
/// the step itself has been resolved.
struct StepSpans {
    name: Spanned<String>,
    needs: Option<Spanned<Vec<Spanned<String>>>>,
    concurrent: Option<Spanned<bool>>,
}

impl Resolver<'_> {
    /// A diagnostic at `at`'s span. Only the span of `at` is used, so any
    /// `Spanned` value (or `Spanned::new(span, ())`) locates it.
    fn diagnostic<T>(
        &self,
        at: &Spanned<T>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let mut d = Diagnostic::indexed(&self.lines, self.path, self.source, at.span(), message);
        if let Some(help) = help {
            d = d.with_help(help);
        }
        d
    }

    /// Records an error at `at`: the file is refused, resolving goes on.
    fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>, help: Option<String>) {
        let d = self.diagnostic(at, message, help);
        self.problems.push(d);
    }

    /// [`Self::problem`] at a bare span.
    fn problem_at(
        &mut self,
        at: Range<usize>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.problem(&Spanned::new(at, ()), message, Some(help.into()));
    }

    /// Interpolates one string value, recording a problem on failure.
    fn text(&mut self, value: &Spanned<String>) -> Option<String> {
        match interpolate(value.get_ref(), self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(value, e.to_string(), Some(e.help()));
                None
            }
        }
    }

    /// One phase: its deadline (written, or derived from the grace
    /// period), its steps, its graph and, for a valid file, the budget
    /// findings (a worst case past the deadline, a reserve that leaves no
    /// time).
    fn phase(&mut self, name: PhaseName, raw: Spanned<RawPhase>, defaults: &Defaults) -> Phase {
        let phase_span = raw.span();
        let raw = raw.into_inner();
        if name == PhaseName::PostStart {
            for key in [&raw.grace_period, &raw.reserve].into_iter().flatten() {
                self.problem(
                    key,
                    "`grace-period` and `reserve` belong to [pre-stop]",
                    Some("the pod's grace period bounds only the preStop hook; post-start has just its `deadline`".into()),
                );
            }
        }
        let grace_period = raw.grace_period.as_ref().map(|g| g.get_ref().0);
        let reserve = raw.reserve.as_ref().map(|r| r.get_ref().0);
        let deadline = match (&raw.deadline, grace_period) {
            (Some(d), _) => d.get_ref().0,
            // With the grace period known, the deadline defaults to what the
            // application's reserve leaves of it.
            (None, Some(grace)) => grace
                .saturating_sub(reserve.unwrap_or(DEFAULT_APP_RESERVE))
                .max(Duration::from_secs(1)),
            (None, None) => match name {
                PhaseName::PreStop => DEFAULT_PRE_STOP_DEADLINE,
                PhaseName::PostStart => DEFAULT_POST_START_DEADLINE,
            },
        };
        // Step names and where each was first written: a duplicate's error
        // points at the second and names the first's line, since either may
        // be the one to rename.
        let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
        let mut steps = Vec::with_capacity(raw.steps.len());
        let mut spans = Vec::with_capacity(raw.steps.len());
        for raw_step in raw.steps {
            let step_span = raw_step.span();
            let raw_step = raw_step.into_inner();
            // Without a name a step cannot be in the graph (nothing could
            // need it), so it is left out after its error.
            let Some(step_name) = raw_step.name.clone() else {
                self.problem_at(
                    step_span,
                    format!("a step of [{name}] has no `name`"),
                    "every step needs a `name`, unique in its phase, like name = \"notify\"",
                );
                continue;
            };
            let name_value = step_name.get_ref().clone();
            if let Some(first) = seen.get(&name_value) {
                let first_line = self
                    .diagnostic(&Spanned::new(first.clone(), ()), "", None)
                    .line;
                self.problem(
                    &step_name,
                    format!("duplicate step name `{name_value}` in [{name}]"),
                    Some(format!(
                        "the first step with this name is on line {first_line}; step names must be unique within a phase"
                    )),
                );
            } else {
                seen.insert(name_value, step_name.span());
            }
            let step = self.step(&raw_step, &step_name, step_span.clone(), defaults);
            spans.push(StepSpans {
                name: step_name,
                needs: raw_step.needs,
                concurrent: raw_step.concurrent,
            });
            steps.push(step);
        }
        // Graph errors are counted apart: the budget below walks the
        // graph, and must not on a broken one.
        let problems_before = self.problems.len();
        let edges = self.graph(name, &steps, &spans);
        let graph_ok = self.problems.len() == problems_before;
        let phase = Phase {
            name,
            deadline,
            grace_period,
            reserve,
            max_concurrency: defaults.max_concurrency,
            steps,
            edges,
        };
        // The budget is only worth checking on a file with no errors: a
        // placeholder (a zero sleep for a step without a plugin, a missing
        // edge) would make its figures wrong.
        if graph_ok && self.problems.is_empty() {
            let deadline_at = match &raw.deadline {
                Some(d) => self.diagnostic(d, "", None),
                None => self.diagnostic(&Spanned::new(phase_span, ()), "", None),
            };
            self.findings
                .extend(crate::budget::findings(&phase, deadline_at));
        }
        phase
    }

    /// One step, over `defaults`. Every key is checked even after an error
    /// in another, so the step's problems are all reported at once.
    fn step(
        &mut self,
        raw: &RawStep,
        name: &Spanned<String>,
        span: Range<usize>,
        defaults: &Defaults,
    ) -> Step {
        if !is_step_name(name.get_ref()) {
            self.problem(
                name,
                format!("invalid step name {:?}", name.get_ref()),
                Some(
                    "use 1-64 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
                        .into(),
                ),
            );
        }
        // A step with a mistake in its action still resolves (as a zero
        // sleep) so that the rest of it is checked too.
        let placeholder = Action::Sleep(SleepAction {
            duration: Duration::ZERO,
        });
        let action = match (&raw.plugin, &raw.sleep) {
            (Some(plugin), None) => Action::Plugin(self.plugin(plugin, raw)),
            (None, Some(sleep)) => {
                self.sleep_only(raw);
                Action::Sleep(SleepAction {
                    duration: sleep.get_ref().0,
                })
            }
            (Some(plugin), Some(_)) => {
                self.problem(
                    plugin,
                    format!("step `{}` has both `plugin` and `sleep`", name.get_ref()),
                    Some("a step either runs a plugin or waits; split it into two steps".into()),
                );
                placeholder
            }
            (None, None) => {
                self.problem_at(
                    span,
                    format!("step `{}` has neither `plugin` nor `sleep`", name.get_ref()),
                    "give it a plugin (plugin = \"plugins/notify.wasm\") or make it a wait (sleep = \"5s\")",
                );
                placeholder
            }
        };
        let mut limits = self.limits(&raw.limit_keys(), &defaults.limits);
        // A sleep's duration is its timeout: the budget and the deadline
        // cut treat it like any other step.
        let retry = match &action {
            Action::Sleep(s) => {
                limits.timeout = s.duration;
                RetryPolicy::default()
            }
            Action::Plugin(_) => match &raw.retries {
                Some(r) => self.retries(r),
                None => defaults.retry,
            },
        };
        // What the step may reach and what it is told: each in its module.
        let grants = self.grants(raw);
        let args = raw.args.iter().filter_map(|a| self.text(a)).collect();
        let env = self.env_values(raw);
        let mut config = Vec::new();
        for (key, value) in &raw.config {
            self.flatten_config(key.clone(), value.span(), value.get_ref(), &mut config);
        }
        // Tags are deduplicated (selection only asks whether a step has
        // one) and keep their first order for the plan and the report.
        let mut tags: Vec<String> = Vec::new();
        for tag in &raw.tags {
            if !is_step_name(tag.get_ref()) {
                self.problem(
                    tag,
                    format!("invalid tag {:?}", tag.get_ref()),
                    Some("tags are like step names: 1-64 letters, digits, `-`, `_` or `.`".into()),
                );
            } else if !tags.contains(tag.get_ref()) {
                tags.push(tag.get_ref().clone());
            }
        }
        Step {
            name: name.get_ref().clone(),
            action,
            limits,
            on_failure: raw.on_failure.unwrap_or(defaults.on_failure),
            retry,
            concurrent: raw.concurrent.as_ref().is_some_and(|c| *c.get_ref()),
            always: raw.always.as_ref().is_some_and(|a| *a.get_ref()),
            tags,
            grants,
            config,
            args,
            env,
        }
    }

    /// A `sleep` step runs no plugin: keys that only mean something to a
    /// plugin are mistakes, reported rather than silently ignored.
    fn sleep_only(&mut self, raw: &RawStep) {
        let mut spans: Vec<(&str, Range<usize>)> = Vec::new();
        if let Some(t) = &raw.timeout {
            spans.push(("timeout", t.span()));
        }
        if let Some(m) = &raw.memory {
            spans.push(("memory", m.span()));
        }
        if let Some(r) = &raw.retries {
            spans.push(("retries", r.span()));
        }
        if let Some(a) = raw.args.first() {
            spans.push(("args", a.span()));
        }
        if let Some((k, _)) = raw.env.iter().next() {
            spans.push(("env", k.span()));
        }
        if let Some((_, v)) = raw.config.iter().next() {
            spans.push(("config", v.span()));
        }
        let allow = &raw.allow;
        let first = allow
            .http
            .first()
            .map(Spanned::span)
            .or(allow.tcp.first().map(Spanned::span))
            .or(allow.env.first().map(Spanned::span))
            .or(allow.dirs.first().map(Spanned::span));
        if let Some(span) = first {
            spans.push(("allow", span));
        }
        for (key, span) in spans {
            self.problem_at(
                span,
                format!("`{key}` has no effect on a `sleep` step"),
                "a sleep step only waits; its `sleep` is also its timeout. Remove the key",
            );
        }
    }
}

/// Removes `.` components and resolves `..` lexically, so the plugin sees a
/// clean path. Lexically on purpose: the directory may not exist where the
/// file is checked, and a symlink's target is the sandbox's business (the
/// preopen follows it) rather than the path's.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Step names (and tags) appear in logs, reports, metrics labels and on
/// the command line: kept to a charset that needs no quoting anywhere.
fn is_step_name(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=64).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_removes_dots() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }

    #[test]
    fn step_names_are_a_shell_safe_charset() {
        assert!(is_step_name("notify-2.v1_x"));
        assert!(!is_step_name("-leading"));
        assert!(!is_step_name("has space"));
        assert!(!is_step_name(&"a".repeat(65)));
    }
}
