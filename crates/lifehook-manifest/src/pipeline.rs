//! The resolved pipeline: absolute paths, concrete limits, parsed grants,
//! interpolated strings and a checked step graph. The runtime takes these
//! types and never re-parses a string; [`crate::resolve`] builds them from
//! the raw [`crate::schema`] types.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lifehook_units::millis;
use serde::Serialize;

use crate::diagnostic::Diagnostic;
use crate::grant::{DirGrant, HttpGrant, TcpGrant};
use crate::schema::OnFailure;
use crate::source::PluginRef;
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
    /// `[telemetry]`, as the file sets it (the `OTEL_*` variables fill in
    /// the rest when the run starts).
    pub telemetry: Telemetry,
    /// Budget findings: the file is valid, but its time budget does not fit
    /// (errors: `check` fails, `run` warns) or may not fit (warnings).
    #[serde(skip)]
    pub findings: Vec<Diagnostic>,
}

/// The `[telemetry]` table, checked: endpoints are `http://` URLs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Telemetry {
    /// The OTLP/HTTP base address.
    pub endpoint: Option<String>,
    /// The traces URL, whole.
    pub traces_endpoint: Option<String>,
    /// The metrics URL, whole.
    pub metrics_endpoint: Option<String>,
    /// Headers of every export (not shown: they may carry keys).
    #[serde(skip)]
    pub headers: Vec<(String, String)>,
    /// `service.name`.
    pub service_name: Option<String>,
    /// Put `traceparent` on the steps' outgoing requests.
    pub propagate: Option<bool>,
    /// Export at all.
    pub enabled: Option<bool>,
}

impl Telemetry {
    /// Why `url` is no OTLP/HTTP endpoint lifehook can send to, if it is
    /// not: it must be `http://host[:port][/path]`.
    pub fn check_endpoint(url: &str) -> Result<(), String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(if url.starts_with("https://") {
                "uses https, which lifehook does not export over yet: use the collector's plain-HTTP port (4318) on the pod network or a node-local agent".into()
            } else {
                "is not an http:// URL".into()
            });
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, after)) => (host, after.strip_prefix(':')),
                None => return Err("has an unclosed `[` in its host".into()),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if let Some(port) = port
            && port.parse::<u16>().is_err()
        {
            return Err(format!("has a bad port {port:?}"));
        }
        if host.is_empty() || authority.contains('@') {
            return Err("names no host (or carries credentials: use headers)".into());
        }
        Ok(())
    }

    /// Why `name: value` cannot be sent as a header, if it cannot.
    pub fn check_header(name: &str, value: &str) -> Result<(), String> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err("is not a header name".into());
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err("has a line break in its value".into());
        }
        Ok(())
    }
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
    #[serde(serialize_with = "millis::whole")]
    pub deadline: Duration,
    /// The pod's grace period, when the file gives it (pre-stop only).
    #[serde(serialize_with = "millis::opt_whole")]
    pub grace_period: Option<Duration>,
    /// Time the application needs after the phase, when the file gives it.
    #[serde(serialize_with = "millis::opt_whole")]
    pub reserve: Option<Duration>,
    /// Most steps running at once, when the file sets `max-concurrency`.
    /// `None` leaves it to the runner, which knows the machine's CPUs (the
    /// file is resolved where it is written, not always where it runs).
    pub max_concurrency: Option<usize>,
    /// The steps in file order.
    pub steps: Vec<Step>,
    /// What each step waits for, by index into `steps` (one entry a step).
    /// Indices, not names, so the scheduler, the budget and the graph
    /// checks share one resolved graph and never look a name up again.
    #[serde(skip)]
    pub edges: Vec<Edges>,
}

impl Phase {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The names of the steps that step `i` waits for: its `needs`, then
    /// its `after`.
    pub fn waits_for(&self, i: usize) -> impl Iterator<Item = &str> {
        self.edges
            .get(i)
            .into_iter()
            .flat_map(Edges::all)
            .map(|j| self.steps[j].name.as_str())
    }

    /// Indices of the steps, each after every step it waits for; steps
    /// that do not wait on each other keep their file order (the timeline
    /// `check` prints reads like the file).
    pub fn topological_order(&self) -> Vec<usize> {
        let n = self.steps.len();
        let mut waiting = vec![0usize; n];
        let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, edges) in self.edges.iter().enumerate() {
            for j in edges.all() {
                waiting[i] += 1;
                dependants[j].push(i);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(j) = ready.pop_first() {
            order.push(j);
            for &i in &dependants[j] {
                waiting[i] -= 1;
                if waiting[i] == 0 {
                    ready.insert(i);
                }
            }
        }
        order
    }

    /// The names of the steps of `list` (indices into `steps`).
    pub fn names<'a>(&'a self, list: &'a [usize]) -> impl Iterator<Item = &'a str> + 'a {
        list.iter().map(|&j| self.steps[j].name.as_str())
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
    #[serde(rename = "sleep", serialize_with = "millis::whole")]
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
    /// Written with `concurrent = true` (already part of its phase's
    /// [`Edges`]).
    pub concurrent: bool,
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
}

/// Limits of one attempt of a step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// Wall time of one attempt (clipped further by the phase deadline).
    #[serde(serialize_with = "millis::whole")]
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

impl Limits {
    /// The limits of a step when neither it nor `[defaults]` sets any.
    pub const DEFAULT: Limits = Limits {
        timeout: DEFAULT_TIMEOUT,
        fuel: Fuel::Limited(DEFAULT_FUEL),
        memory: DEFAULT_MEMORY,
        output: DEFAULT_OUTPUT_LIMIT,
        max_open: DEFAULT_MAX_OPEN,
        max_write: DEFAULT_MAX_WRITE,
        max_http: DEFAULT_MAX_HTTP,
    };
}

/// How retryable failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt.
    #[serde(serialize_with = "millis::whole")]
    pub backoff: Duration,
    /// Growth factor of the wait (at least 1).
    pub multiplier: f64,
    /// The longest wait.
    #[serde(serialize_with = "millis::whole")]
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

fn fuel_json<S: serde::Serializer>(f: &Fuel, s: S) -> Result<S::Ok, S::Error> {
    match f {
        Fuel::Limited(n) => s.serialize_u64(*n),
        Fuel::Unlimited => s.serialize_str("unlimited"),
    }
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
}
