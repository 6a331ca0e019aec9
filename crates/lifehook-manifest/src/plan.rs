//! The resolved pipeline: absolute paths, concrete limits, parsed grants,
//! interpolated strings and a checked step graph. The runtime takes these
//! types and never re-parses a string.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::grant::{DirGrant, HttpGrant, TcpGrant};
use crate::interpolate::{interpolate, is_env_name};
use crate::schema::{OnFailure, RawDefaults, RawPhase, RawPipeline, RawRetries, RawStep};
use crate::source::{OciReference, PluginRef, PluginSource};
use crate::units::Fuel;

/// Wall-time limit of one attempt when neither the step nor `[defaults]` sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Fuel of one attempt by default: about ten billion WebAssembly instructions,
/// a few seconds of CPU.
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// Memory limit by default.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// Captured output kept per step by default.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 64 << 10;
/// Files, directories and sockets a plugin may hold open by default: far
/// beyond a normal plugin, far below a process's descriptor limit.
pub const DEFAULT_MAX_OPEN: u32 = 256;
/// Bytes a plugin may write to its granted directories by default: room
/// for a 1 GiB snapshot saved (or restored) on a retry too.
pub const DEFAULT_MAX_WRITE: u64 = 4 << 30;
/// Outgoing HTTP requests in flight by default.
pub const DEFAULT_MAX_HTTP: u32 = 16;
/// The `pre-stop` deadline by default: leaves 10 s of Kubernetes' default
/// 30 s grace period for the application to drain.
pub const DEFAULT_PRE_STOP_DEADLINE: Duration = Duration::from_secs(20);
/// The `post-start` deadline by default.
pub const DEFAULT_POST_START_DEADLINE: Duration = Duration::from_secs(30);
/// What the application is assumed to need after pre-stop when a
/// `grace-period` is given without a `reserve`: the kubelet's own minimum.
pub const DEFAULT_APP_RESERVE: Duration = Duration::from_secs(2);
/// Smallest accepted memory limit: one WebAssembly page.
const MIN_MEMORY: u64 = 64 << 10;
/// Most attempts a retry policy may ask for.
const MAX_ATTEMPTS: i64 = 100;
/// Most steps a phase may run at once.
const MAX_CONCURRENCY: i64 = 1024;

/// The lifecycle phase a pipeline section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    /// Kubernetes `preStop`.
    PreStop,
    /// Kubernetes `postStart`.
    PostStart,
}

impl PhaseName {
    /// The name as written in the pipeline file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::PreStop => "pre-stop",
            PhaseName::PostStart => "post-start",
        }
    }
}

impl fmt::Display for PhaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked, resolved pipeline file.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    /// The pipeline file, as given.
    pub path: PathBuf,
    /// The phases resolved (those asked for and present in the file).
    pub phases: Vec<Phase>,
    /// `[state] dir`, absolute, when the file sets it.
    pub state_dir: Option<PathBuf>,
    /// `[oci] insecure-registries`: reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Budget findings: the file is valid, but its time budget does not fit
    /// (errors: `check` fails, `run` warns) or may not fit (warnings).
    #[serde(skip)]
    pub findings: Vec<Diagnostic>,
}

impl Pipeline {
    /// The resolved phase called `name`, if the file has it.
    pub fn phase(&self, name: PhaseName) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}

/// One phase, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Which phase.
    pub name: PhaseName,
    /// The whole phase never outlives this.
    #[serde(with = "millis")]
    pub deadline: Duration,
    /// The pod's grace period, when the file gives it (pre-stop only).
    #[serde(with = "opt_millis")]
    pub grace_period: Option<Duration>,
    /// Time the application needs after the phase, when the file gives it.
    #[serde(with = "opt_millis")]
    pub reserve: Option<Duration>,
    /// Most steps running at once.
    pub max_concurrency: usize,
    /// The steps in file order.
    pub steps: Vec<Step>,
}

impl Phase {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// For each step (by index), the indices of the steps it `needs` and of
    /// those it waits to finish (`after`).
    pub fn edges(&self) -> Vec<Edges> {
        let index: std::collections::HashMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let resolve = |names: &[String]| -> Vec<usize> {
            names
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect()
        };
        self.steps
            .iter()
            .map(|s| Edges {
                needs: resolve(&s.needs),
                after: resolve(&s.after),
            })
            .collect()
    }
}

/// What one step waits for, as indices into its phase's steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edges {
    /// Steps that must succeed first.
    pub needs: Vec<usize>,
    /// Steps that must finish first, however they end.
    pub after: Vec<usize>,
}

impl Edges {
    /// Every step waited for.
    pub fn all(&self) -> impl Iterator<Item = usize> + '_ {
        self.needs.iter().chain(&self.after).copied()
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Action {
    /// Runs this plugin component.
    Plugin(PluginRef),
    /// Waits this long (the built-in `sleep` step).
    Sleep(SleepAction),
}

/// The built-in wait, as the JSON plan shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SleepAction {
    /// How long.
    #[serde(rename = "sleep", with = "millis")]
    pub duration: Duration,
}

/// One step, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Unique within its phase.
    pub name: String,
    /// The plugin it runs, or the wait it makes.
    #[serde(flatten)]
    pub action: Action,
    /// Fuel, time, memory and output limits of one attempt.
    pub limits: Limits,
    /// What failing does to the rest of the phase.
    pub on_failure: OnFailure,
    /// How retryable failures are retried.
    pub retry: RetryPolicy,
    /// Written with `concurrent = true` (already part of `after`).
    pub concurrent: bool,
    /// Steps that must succeed before this one starts (`needs`).
    pub needs: Vec<String>,
    /// Steps that must finish, however they end, before this one starts:
    /// the file-order default for a step without `needs`.
    pub after: Vec<String>,
    /// Runs even after an abort, a failed need or a deadline cut.
    pub always: bool,
    /// Labels for selecting steps on the command line.
    pub tags: Vec<String>,
    /// What the step may reach.
    pub grants: Grants,
    /// `wasi:config/store` keys and values, flattened and interpolated.
    pub config: Vec<(String, String)>,
    /// Arguments after `argv[0]` (the step name) for command plugins.
    pub args: Vec<String>,
    /// Environment variables set for the plugin (fixed values).
    pub env: Vec<(String, String)>,
}

impl Step {
    /// The plugin, unless this is a `sleep` step.
    pub fn plugin(&self) -> Option<&PluginRef> {
        match &self.action {
            Action::Plugin(plugin) => Some(plugin),
            Action::Sleep(_) => None,
        }
    }

    /// Every step this one waits for: its `needs`, then its `after`.
    pub fn waits_for(&self) -> impl Iterator<Item = &str> {
        self.needs.iter().chain(&self.after).map(String::as_str)
    }
}

/// Limits of one attempt of a step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// Wall time of one attempt (clipped further by the phase deadline).
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// CPU budget.
    #[serde(serialize_with = "fuel_json")]
    pub fuel: Fuel,
    /// Total bytes of linear memory.
    pub memory: u64,
    /// Bytes of captured stdout + stderr kept.
    pub output: u64,
    /// Files, directories and sockets held open at once.
    pub max_open: u32,
    /// Bytes written to granted directories, over all attempts.
    pub max_write: u64,
    /// Outgoing HTTP requests in flight at once.
    pub max_http: u32,
}

/// How retryable failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt.
    #[serde(with = "millis")]
    pub backoff: Duration,
    /// Growth factor of the wait (at least 1).
    pub multiplier: f64,
    /// The longest wait.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            backoff: Duration::from_millis(200),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        self.backoff.mul_f64(factor.min(1e9)).min(self.max_backoff)
    }
}

/// Everything a step may reach. Empty means nothing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Grants {
    /// Outbound HTTP origins.
    pub http: Vec<HttpGrant>,
    /// Outbound TCP addresses.
    pub tcp: Vec<TcpGrant>,
    /// Host directories.
    pub dirs: Vec<DirGrant>,
    /// Environment variables passed through from the runner.
    pub env: Vec<String>,
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }
}

mod opt_millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::millis::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

fn fuel_json<S: serde::Serializer>(f: &Fuel, s: S) -> Result<S::Ok, S::Error> {
    match f {
        Fuel::Limited(n) => s.serialize_u64(*n),
        Fuel::Unlimited => s.serialize_str("unlimited"),
    }
}

/// `[defaults]`, checked once.
struct Defaults {
    timeout: Duration,
    fuel: Fuel,
    memory: u64,
    output: u64,
    max_open: u32,
    max_write: u64,
    max_http: u32,
    on_failure: OnFailure,
    retry: RetryPolicy,
    /// `None`: the number of CPUs, asked only when more than one step
    /// could run at once.
    max_concurrency: Option<usize>,
}

/// Collects diagnostics while resolving one file.
struct Resolver<'a> {
    path: &'a Path,
    source: &'a str,
    lines: crate::diagnostic::LineIndex,
    base_dir: PathBuf,
    /// Whether plugin files are on this filesystem, to be looked for.
    plugin_files_here: bool,
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Diagnostic>,
    findings: Vec<Diagnostic>,
}

/// Resolves the phases in `only` (or all) of a parsed file.
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
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    let mut r = Resolver {
        path,
        source,
        lines: crate::diagnostic::LineIndex::new(source),
        base_dir,
        plugin_files_here,
        env,
        problems: Vec::new(),
        findings: Vec::new(),
    };
    let defaults = r.defaults(&raw.defaults);
    let state_dir = raw
        .state
        .dir
        .as_ref()
        .and_then(|d| r.text(d))
        .map(|d| normalize(&r.base_dir.join(d)));
    let mut insecure_registries = Vec::new();
    for entry in &raw.oci.insecure_registries {
        if let Some(host) = r.text(entry) {
            if host.contains("://") || host.contains('/') || host.is_empty() {
                r.problem(
                    entry,
                    format!("insecure registry {host:?} is not a `host:port`"),
                    Some("write the registry as it appears in oci:// references, like \"127.0.0.1:5000\"".into()),
                );
            } else {
                insecure_registries.push(host.to_ascii_lowercase());
            }
        }
    }
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
            findings: r.findings,
        })
    } else {
        Err(Diagnostics(r.problems))
    }
}

impl Resolver<'_> {
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

    fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>, help: Option<String>) {
        let d = self.diagnostic(at, message, help);
        self.problems.push(d);
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

    fn defaults(&mut self, raw: &RawDefaults) -> Defaults {
        let max_concurrency = match &raw.max_concurrency {
            None => None,
            Some(n) if (1..=MAX_CONCURRENCY).contains(n.get_ref()) => Some(*n.get_ref() as usize),
            Some(n) => {
                self.problem(
                    n,
                    format!(
                        "max-concurrency is {}, expected 1 to {MAX_CONCURRENCY}",
                        n.get_ref()
                    ),
                    Some("1 runs one step at a time; the default is the number of CPUs".into()),
                );
                Some(1)
            }
        };
        Defaults {
            timeout: raw
                .timeout
                .as_ref()
                .map_or(DEFAULT_TIMEOUT, |t| t.get_ref().0),
            fuel: raw.fuel.unwrap_or(Fuel::Limited(DEFAULT_FUEL)),
            memory: raw
                .memory
                .as_ref()
                .map_or(DEFAULT_MEMORY, |m| self.memory(m)),
            output: raw.output_limit.map_or(DEFAULT_OUTPUT_LIMIT, |s| s.0),
            max_open: raw
                .max_open
                .as_ref()
                .map_or(DEFAULT_MAX_OPEN, |n| self.count(n, "max-open", 4, 65_536)),
            max_write: raw.max_write.map_or(DEFAULT_MAX_WRITE, |s| s.0),
            max_http: raw
                .max_http
                .as_ref()
                .map_or(DEFAULT_MAX_HTTP, |n| self.count(n, "max-http", 1, 1024)),
            on_failure: raw.on_failure.unwrap_or(OnFailure::Continue),
            retry: raw
                .retries
                .as_ref()
                .map_or_else(RetryPolicy::default, |r| self.retries(r)),
            max_concurrency,
        }
    }

    /// A count limit within `min..=max`; a problem (and `min`) otherwise.
    fn count(&mut self, n: &Spanned<i64>, key: &str, min: u32, max: u32) -> u32 {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (min..=max).contains(&v) => v,
            _ => {
                self.problem(
                    n,
                    format!("{key} is {}, expected {min} to {max}", n.get_ref()),
                    Some(format!(
                        "{key} bounds what one step holds at once; the default suits normal plugins"
                    )),
                );
                min
            }
        }
    }

    fn memory(&mut self, m: &Spanned<crate::units::SizeValue>) -> u64 {
        if m.get_ref().0 < MIN_MEMORY {
            self.problem(
                m,
                format!("memory limit {} is below the 64KiB minimum", m.get_ref()),
                Some("a WebAssembly page is 64KiB; most plugins need a few MiB".into()),
            );
        }
        m.get_ref().0
    }

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
        // Step names and where each was first written.
        let mut seen: BTreeMap<String, std::ops::Range<usize>> = BTreeMap::new();
        let mut steps = Vec::with_capacity(raw.steps.len());
        let mut spans = Vec::with_capacity(raw.steps.len());
        for raw_step in raw.steps {
            let step_span = raw_step.span();
            let raw_step = raw_step.into_inner();
            let Some(step_name) = raw_step.name.clone() else {
                self.problem(
                    &Spanned::new(step_span, ()),
                    format!("a step of [{name}] has no `name`"),
                    Some(
                        "every step needs a `name`, unique in its phase, like name = \"notify\""
                            .into(),
                    ),
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
        let mut phase = Phase {
            name,
            deadline,
            grace_period,
            reserve,
            max_concurrency: match (defaults.max_concurrency, steps.len()) {
                (Some(n), _) => n,
                (None, 0 | 1) => 1,
                (None, _) => cpu_count(),
            },
            steps,
        };
        let graph_ok = self.graph(&mut phase, &spans);
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

    fn step(
        &mut self,
        raw: &RawStep,
        name: &Spanned<String>,
        span: std::ops::Range<usize>,
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
                Action::Sleep(SleepAction {
                    duration: Duration::ZERO,
                })
            }
            (None, None) => {
                self.problem(
                    &Spanned::new(span, ()),
                    format!("step `{}` has neither `plugin` nor `sleep`", name.get_ref()),
                    Some("give it a plugin (plugin = \"plugins/notify.wasm\") or make it a wait (sleep = \"5s\")".into()),
                );
                Action::Sleep(SleepAction {
                    duration: Duration::ZERO,
                })
            }
        };
        let timeout = match &action {
            Action::Sleep(s) => s.duration,
            Action::Plugin(_) => raw
                .timeout
                .as_ref()
                .map_or(defaults.timeout, |t| t.get_ref().0),
        };
        let limits = Limits {
            timeout,
            fuel: raw.fuel.unwrap_or(defaults.fuel),
            memory: raw
                .memory
                .as_ref()
                .map_or(defaults.memory, |m| self.memory(m)),
            output: raw.output_limit.map_or(defaults.output, |s| s.0),
            max_open: raw
                .max_open
                .as_ref()
                .map_or(defaults.max_open, |n| self.count(n, "max-open", 4, 65_536)),
            max_write: raw.max_write.map_or(defaults.max_write, |s| s.0),
            max_http: raw
                .max_http
                .as_ref()
                .map_or(defaults.max_http, |n| self.count(n, "max-http", 1, 1024)),
        };
        let retry = match (&action, &raw.retries) {
            (Action::Sleep(_), _) => RetryPolicy::default(),
            (_, Some(r)) => self.retries(r),
            (_, None) => defaults.retry,
        };
        let grants = self.grants(raw);
        let args = raw.args.iter().filter_map(|a| self.text(a)).collect();
        let mut env = Vec::new();
        for (key, value) in &raw.env {
            if !is_env_name(key.get_ref()) {
                self.problem(
                    key,
                    format!(
                        "`{}` is not a valid environment variable name",
                        key.get_ref()
                    ),
                    Some("names are letters, digits and `_`, not starting with a digit".into()),
                );
            }
            if let Some(v) = self.text(value) {
                env.push((key.get_ref().clone(), v));
            }
        }
        let mut config = Vec::new();
        for (key, value) in &raw.config {
            self.flatten_config(key.clone(), value.span(), value.get_ref(), &mut config);
        }
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
            needs: Vec::new(),
            after: Vec::new(),
            always: raw.always.as_ref().is_some_and(|a| *a.get_ref()),
            tags,
            grants,
            config,
            args,
            env,
        }
    }

    /// A `sleep` step runs no plugin: keys that only mean something to a
    /// plugin are mistakes.
    fn sleep_only(&mut self, raw: &RawStep) {
        let mut spans: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
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
        if let Some(g) = allow
            .http
            .first()
            .or(allow.tcp.first())
            .or(allow.env.first())
        {
            spans.push(("allow", g.span()));
        } else if let Some(d) = allow.dirs.first() {
            spans.push(("allow", d.span()));
        }
        for (key, span) in spans {
            self.problem(
                &Spanned::new(span, ()),
                format!("`{key}` has no effect on a `sleep` step"),
                Some(
                    "a sleep step only waits; its `sleep` is also its timeout. Remove the key"
                        .into(),
                ),
            );
        }
    }

    /// The plugin reference: a file (which must exist) or an OCI
    /// reference, with its `sha256` pin and pull policy.
    fn plugin(&mut self, raw: &Spanned<String>, step: &RawStep) -> PluginRef {
        let sha256 = step.sha256.as_ref().and_then(|pin| {
            let hex = self.text(pin)?;
            match crate::source::check_sha256(&hex) {
                Ok(()) => Some(hex),
                Err(why) => {
                    self.problem(
                        pin,
                        format!("invalid sha256 pin: {why}"),
                        Some("pin the plugin with `sha256sum plugin.wasm`".into()),
                    );
                    None
                }
            }
        });
        let text = self.text(raw).unwrap_or_default();
        let source = if text.starts_with("oci://") {
            match OciReference::parse(&text) {
                Ok(r) => PluginSource::Oci(r),
                Err(why) => {
                    self.problem(
                        raw,
                        why,
                        Some("write oci://REGISTRY/REPOSITORY:TAG, @sha256:DIGEST, or both".into()),
                    );
                    PluginSource::File(PathBuf::new())
                }
            }
        } else {
            if step.pull.is_some() {
                self.problem(
                    raw,
                    "`pull` applies to oci:// plugins only",
                    Some("a file plugin is read where it is; remove `pull`".into()),
                );
            }
            PluginSource::File(self.plugin_file(raw, &text))
        };
        PluginRef {
            source,
            sha256,
            pull: step.pull.unwrap_or_default(),
        }
    }

    fn plugin_file(&mut self, raw: &Spanned<String>, text: &str) -> PathBuf {
        if text.is_empty() {
            return PathBuf::new();
        }
        let path = self.base_dir.join(text);
        if !self.plugin_files_here {
            return path;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.problem(
                raw,
                format!("plugin {} is not a file", path.display()),
                Some("`plugin` names a .wasm component file".into()),
            ),
            Err(e) => self.problem(
                raw,
                format!("plugin file {} cannot be read: {e}", path.display()),
                Some("plugin paths are relative to the pipeline file's directory; build the plugin or fix the path".into()),
            ),
        }
        path
    }

    fn retries(&mut self, raw: &Spanned<RawRetries>) -> RetryPolicy {
        let r = raw.get_ref();
        let mut policy = RetryPolicy::default();
        if let Some(a) = &r.attempts {
            match u32::try_from(*a.get_ref()) {
                Ok(n) if (1..=MAX_ATTEMPTS).contains(&i64::from(n)) => policy.attempts = n,
                _ => self.problem(
                    a,
                    format!(
                        "retries.attempts is {}, expected 1 to {MAX_ATTEMPTS}",
                        a.get_ref()
                    ),
                    Some("`attempts` counts the first attempt too: 3 means up to 2 retries".into()),
                ),
            }
        }
        if let Some(m) = &r.multiplier {
            let v = *m.get_ref();
            if v.is_finite() && (1.0..=100.0).contains(&v) {
                policy.multiplier = v;
            } else {
                self.problem(
                    m,
                    format!("retries.multiplier is {v}, expected 1.0 to 100.0"),
                    Some("1.0 keeps the wait constant, 2.0 doubles it each time".into()),
                );
            }
        }
        if let Some(b) = r.backoff {
            policy.backoff = b.0;
        }
        policy.max_backoff = r
            .max_backoff
            .map_or(policy.max_backoff.max(policy.backoff), |m| m.0);
        policy
    }

    fn grants(&mut self, raw: &RawStep) -> Grants {
        let mut grants = Grants::default();
        for entry in &raw.allow.http {
            if let Some(text) = self.text(entry) {
                match HttpGrant::parse(&text) {
                    Ok(g) => grants.http.push(g),
                    Err(e) => self.problem(entry, e.to_string(), Some(e.help().into())),
                }
            }
        }
        for entry in &raw.allow.tcp {
            if let Some(text) = self.text(entry) {
                match TcpGrant::parse(&text) {
                    Ok(g) => grants.tcp.push(g),
                    Err(e) => self.problem(entry, e.to_string(), Some(e.help().into())),
                }
            }
        }
        for entry in &raw.allow.dirs {
            let dir = entry.get_ref();
            let host = match interpolate(&dir.host, self.env) {
                Ok(h) => h,
                Err(e) => {
                    self.problem(entry, e.to_string(), Some(e.help()));
                    continue;
                }
            };
            let guest = match dir.guest.as_deref().map(|g| interpolate(g, self.env)) {
                Some(Ok(g)) => Some(g),
                Some(Err(e)) => {
                    self.problem(entry, e.to_string(), Some(e.help()));
                    continue;
                }
                None => None,
            };
            let host_path = normalize(&self.base_dir.join(&host));
            let guest = guest.unwrap_or_else(|| host_path.to_string_lossy().into_owned());
            if !guest.starts_with('/') {
                self.problem(
                    entry,
                    format!("guest path {guest:?} is not absolute"),
                    Some("write where the plugin sees the directory as an absolute path, like guest = \"/state\"".into()),
                );
                continue;
            }
            grants.dirs.push(DirGrant {
                host: host_path,
                guest,
                access: dir.access,
            });
        }
        for entry in &raw.allow.env {
            if is_env_name(entry.get_ref()) {
                grants.env.push(entry.get_ref().clone());
            } else {
                self.problem(
                    entry,
                    format!(
                        "`{}` is not a valid environment variable name",
                        entry.get_ref()
                    ),
                    Some("list variable names only, like env = [\"POD_NAME\"]".into()),
                );
            }
        }
        grants
    }

    /// Flattens one `[config]` value. Nested values carry no span of their
    /// own, so their problems point at the top-level key's value.
    fn flatten_config(
        &mut self,
        key: String,
        span: std::ops::Range<usize>,
        value: &toml::Value,
        out: &mut Vec<(String, String)>,
    ) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    self.flatten_config(format!("{key}.{k}"), span.clone(), v, out);
                }
            }
            toml::Value::Array(items) => {
                let mut lines = Vec::with_capacity(items.len());
                for item in items {
                    match self.scalar(span.clone(), item) {
                        Some(text) if text.contains('\n') => self.problem(
                            &Spanned::new(span.clone(), ()),
                            "array items in [config] cannot contain line breaks",
                            Some("arrays reach the plugin one item per line; use a plain string for multi-line text".into()),
                        ),
                        Some(text) => lines.push(text),
                        None => {}
                    }
                }
                out.push((key, lines.join("\n")));
            }
            _ => {
                if let Some(text) = self.scalar(span, value) {
                    out.push((key, text));
                }
            }
        }
    }

    fn scalar(&mut self, span: std::ops::Range<usize>, value: &toml::Value) -> Option<String> {
        match value {
            toml::Value::String(s) => self.text(&Spanned::new(span, s.clone())),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            toml::Value::Datetime(d) => Some(d.to_string()),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                self.problem(
                    &Spanned::new(span, ()),
                    "nested arrays and tables inside arrays are not supported in [config]",
                    Some("use an array of strings, numbers or booleans, or a table of them".into()),
                );
                None
            }
        }
    }
}

/// The spans of a step's graph keys, kept for locating graph problems.
pub(crate) struct StepSpans {
    pub(crate) name: Spanned<String>,
    pub(crate) needs: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) concurrent: Option<Spanned<bool>>,
}

impl Resolver<'_> {
    /// Resolves `needs` and the file-order default into each step's
    /// `needs` and `after`, and rejects unknown names, self-references,
    /// `needs` beside `concurrent`, and cycles. True when the graph is valid.
    fn graph(&mut self, phase: &mut Phase, spans: &[StepSpans]) -> bool {
        let before = self.problems.len();
        let problems = crate::graph::resolve(phase, spans, self.path, self.source);
        self.problems.extend(problems);
        self.problems.len() == before
    }
}

/// Removes `.` components and resolves `..` lexically, so the plugin sees a
/// clean path.
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

fn is_step_name(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=64).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The CPUs this process may use, asked once: the answer reads cgroup files,
/// a noticeable part of a one-step run's start-up.
fn cpu_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(p.backoff_after(1), Duration::from_millis(100));
        assert_eq!(p.backoff_after(2), Duration::from_millis(200));
        assert_eq!(p.backoff_after(3), Duration::from_millis(350));
        assert_eq!(p.backoff_after(1000), Duration::from_millis(350));
    }

    #[test]
    fn normalize_removes_dots() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
