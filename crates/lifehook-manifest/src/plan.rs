//! The resolved pipeline: absolute paths, concrete limits, parsed grants and
//! interpolated strings. The runtime takes these types and never re-parses a
//! string.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::grant::{DirGrant, HttpGrant, TcpGrant};
use crate::interpolate::{interpolate, is_env_name};
use crate::schema::{
    ConfigValue, OnFailure, RawDefaults, RawPhase, RawPipeline, RawRetries, RawStep,
};
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
/// The `pre-stop` deadline by default: leaves 10 s of Kubernetes' default
/// 30 s grace period for the application to drain.
pub const DEFAULT_PRE_STOP_DEADLINE: Duration = Duration::from_secs(20);
/// The `post-start` deadline by default.
pub const DEFAULT_POST_START_DEADLINE: Duration = Duration::from_secs(30);
/// Smallest accepted memory limit: one WebAssembly page.
const MIN_MEMORY: u64 = 64 << 10;
/// Most attempts a retry policy may ask for.
const MAX_ATTEMPTS: i64 = 100;

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
    /// The steps in file order.
    pub steps: Vec<Step>,
}

/// One step, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Unique within its phase.
    pub name: String,
    /// The plugin component, absolute.
    pub plugin: PathBuf,
    /// Fuel, time, memory and output limits of one attempt.
    pub limits: Limits,
    /// What failing does to the rest of the phase.
    pub on_failure: OnFailure,
    /// How retryable failures are retried.
    pub retry: RetryPolicy,
    /// Runs together with neighbouring concurrent steps.
    pub concurrent: bool,
    /// What the step may reach.
    pub grants: Grants,
    /// `wasi:config/store` keys and values, flattened and interpolated.
    pub config: Vec<(String, String)>,
    /// Arguments after `argv[0]` (the step name) for command plugins.
    pub args: Vec<String>,
    /// Environment variables set for the plugin (fixed values).
    pub env: Vec<(String, String)>,
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
        s.serialize_u128(d.as_millis())
    }
}

fn fuel_json<S: serde::Serializer>(f: &Fuel, s: S) -> Result<S::Ok, S::Error> {
    match f {
        Fuel::Limited(n) => s.serialize_u64(*n),
        Fuel::Unlimited => s.serialize_str("unlimited"),
    }
}

/// Collects diagnostics while resolving one file.
struct Resolver<'a> {
    path: &'a Path,
    source: &'a str,
    base_dir: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Diagnostic>,
}

/// Resolves the phases in `only` (or all) of a parsed file.
pub(crate) fn resolve(
    raw: RawPipeline,
    path: &Path,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    only: Option<PhaseName>,
) -> Result<Pipeline, Diagnostics> {
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    let mut r = Resolver {
        path,
        source,
        base_dir,
        env,
        problems: Vec::new(),
    };
    let mut phases = Vec::new();
    for (name, raw_phase) in [
        (PhaseName::PreStop, raw.pre_stop),
        (PhaseName::PostStart, raw.post_start),
    ] {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        if let Some(raw_phase) = raw_phase {
            phases.push(r.phase(name, raw_phase, &raw.defaults));
        }
    }
    r.problems.sort_by_key(|d| (d.line, d.column));
    if r.problems.is_empty() {
        Ok(Pipeline {
            path: path.to_path_buf(),
            phases,
        })
    } else {
        Err(Diagnostics(r.problems))
    }
}

impl Resolver<'_> {
    fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::new(self.path, self.source, at.span(), message);
        if let Some(help) = help {
            d = d.with_help(help);
        }
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

    fn phase(&mut self, name: PhaseName, raw: RawPhase, defaults: &RawDefaults) -> Phase {
        let deadline = raw.deadline.map(|d| d.0).unwrap_or(match name {
            PhaseName::PreStop => DEFAULT_PRE_STOP_DEADLINE,
            PhaseName::PostStart => DEFAULT_POST_START_DEADLINE,
        });
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut steps = Vec::with_capacity(raw.steps.len());
        for raw_step in raw.steps {
            let raw_step = raw_step.into_inner();
            let name_value = raw_step.name.get_ref().clone();
            if let Some(first_line) = seen.get(&name_value) {
                self.problem(
                    &raw_step.name,
                    format!("duplicate step name `{name_value}` in [{name}]"),
                    Some(format!(
                        "the first step with this name is on line {first_line}; step names must be unique within a phase"
                    )),
                );
            } else {
                let line = self.source[..raw_step.name.span().start]
                    .matches('\n')
                    .count()
                    + 1;
                seen.insert(name_value, line);
            }
            steps.push(self.step(raw_step, defaults));
        }
        Phase {
            name,
            deadline,
            steps,
        }
    }

    fn step(&mut self, raw: RawStep, defaults: &RawDefaults) -> Step {
        let name = raw.name.get_ref().clone();
        if !is_step_name(&name) {
            self.problem(
                &raw.name,
                format!("invalid step name {name:?}"),
                Some(
                    "use 1-64 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
                        .into(),
                ),
            );
        }
        let plugin = self.plugin(&raw.plugin);
        let timeout = raw.timeout.as_ref().or(defaults.timeout.as_ref());
        let memory = raw.memory.as_ref().or(defaults.memory.as_ref());
        if let Some(m) = memory.filter(|m| m.get_ref().0 < MIN_MEMORY) {
            self.problem(
                m,
                format!("memory limit {} is below the 64KiB minimum", m.get_ref()),
                Some("a WebAssembly page is 64KiB; most plugins need a few MiB".into()),
            );
        }
        let limits = Limits {
            timeout: timeout.map_or(DEFAULT_TIMEOUT, |t| t.get_ref().0),
            fuel: raw
                .fuel
                .or(defaults.fuel)
                .unwrap_or(Fuel::Limited(DEFAULT_FUEL)),
            memory: memory.map_or(DEFAULT_MEMORY, |m| m.get_ref().0),
            output: raw
                .output_limit
                .or(defaults.output_limit)
                .map_or(DEFAULT_OUTPUT_LIMIT, |s| s.0),
        };
        let retry = match raw.retries.as_ref().or(defaults.retries.as_ref()) {
            Some(r) => self.retries(r),
            None => RetryPolicy::default(),
        };
        let grants = self.grants(&raw);
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
            self.flatten_config(key.clone(), value, &mut config);
        }
        Step {
            name,
            plugin,
            limits,
            on_failure: raw
                .on_failure
                .or(defaults.on_failure)
                .unwrap_or(OnFailure::Continue),
            retry,
            concurrent: raw.concurrent,
            grants,
            config,
            args,
            env,
        }
    }

    fn plugin(&mut self, raw: &Spanned<String>) -> PathBuf {
        let Some(text) = self.text(raw) else {
            return PathBuf::new();
        };
        let path = self.base_dir.join(&text);
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
                    Err(why) => self.problem(
                        entry,
                        why,
                        Some("write an origin like \"https://api.example.com\" or \"http://127.0.0.1:8080\"".into()),
                    ),
                }
            }
        }
        for entry in &raw.allow.tcp {
            if let Some(text) = self.text(entry) {
                match TcpGrant::parse(&text) {
                    Ok(g) => grants.tcp.push(g),
                    Err(why) => self.problem(entry, why, None),
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
            let host_path = self.base_dir.join(&host);
            let host_path = normalize(&host_path);
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

    fn flatten_config(
        &mut self,
        key: String,
        value: &Spanned<ConfigValue>,
        out: &mut Vec<(String, String)>,
    ) {
        match value.get_ref() {
            ConfigValue::Table(table) => {
                for (k, v) in table {
                    self.flatten_config(format!("{key}.{k}"), v, out);
                }
            }
            ConfigValue::Array(items) => {
                let mut lines = Vec::with_capacity(items.len());
                for item in items {
                    match self.scalar(item) {
                        Some(text) if text.contains('\n') => self.problem(
                            item,
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
                if let Some(text) = self.scalar(value) {
                    out.push((key, text));
                }
            }
        }
    }

    fn scalar(&mut self, value: &Spanned<ConfigValue>) -> Option<String> {
        match value.get_ref() {
            ConfigValue::String(s) => {
                let spanned = Spanned::new(value.span(), s.clone());
                self.text(&spanned)
            }
            ConfigValue::Integer(i) => Some(i.to_string()),
            ConfigValue::Float(f) => Some(f.to_string()),
            ConfigValue::Boolean(b) => Some(b.to_string()),
            ConfigValue::Datetime(d) => Some(d.clone()),
            ConfigValue::Array(_) | ConfigValue::Table(_) => {
                self.problem(
                    value,
                    "nested arrays and tables inside arrays are not supported in [config]",
                    Some("use an array of strings, numbers or booleans, or a table of them".into()),
                );
                None
            }
        }
    }
}

/// Removes `.` components and resolves `..` lexically, so the plugin sees a
/// clean path.
fn normalize(path: &Path) -> PathBuf {
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
