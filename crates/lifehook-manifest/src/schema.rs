//! The pipeline file as written: serde types that mirror the TOML, with spans
//! kept on every value a later check may need to point at. Nothing here is
//! resolved; see [`crate::pipeline`] for the checked, resolved form.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use crate::units::{DurationValue, Fuel, SizeValue};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPipeline {
    /// Limits and policies every step starts from.
    ///
    /// Example: `[defaults]` then `timeout = "5s"`
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Where lifehook keeps what it must remember between deliveries of a
    /// hook (the done-markers of completed phases).
    ///
    /// Example: `[state]` then `dir = "/run/lifehook"`
    #[serde(default)]
    pub state: RawState,
    /// Settings for plugins from OCI registries.
    ///
    /// Example: `[oci]` then `insecure-registries = ["127.0.0.1:5000"]`
    #[serde(default)]
    pub oci: RawOci,
    /// Where traces and metrics of each run go (OTLP over HTTP), on top of
    /// the standard `OTEL_*` variables.
    ///
    /// Example: `[telemetry]` then `endpoint = "http://otel-collector:4318"`
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// The steps run before the container stops.
    ///
    /// Example: `[pre-stop]` then `deadline = "20s"`
    pub pre_stop: Option<Spanned<RawPhase>>,
    /// The steps run right after the container starts.
    ///
    /// Example: `[post-start]` then `deadline = "30s"`
    pub post_start: Option<Spanned<RawPhase>>,
}

/// The `[oci]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOci {
    /// Registries reached over plain HTTP (`host:port`); every other one
    /// over HTTPS only.
    ///
    /// Example: `insecure-registries = ["127.0.0.1:5000"]`
    #[serde(default)]
    pub insecure_registries: Vec<Spanned<String>>,
}

/// The `[telemetry]` table. What it sets wins over the `OTEL_*`
/// variables, except `OTEL_SDK_DISABLED=true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTelemetry {
    /// The collector's OTLP/HTTP address; `/v1/traces` and `/v1/metrics`
    /// are added to it.
    ///
    /// Example: `endpoint = "http://otel-collector.observability:4318"`
    pub endpoint: Option<Spanned<String>>,
    /// Where traces go, as a whole URL (beats `endpoint`).
    ///
    /// Example: `traces-endpoint = "http://tempo:4318/v1/traces"`
    pub traces_endpoint: Option<Spanned<String>>,
    /// Where metrics go, as a whole URL (beats `endpoint`).
    ///
    /// Example: `metrics-endpoint = "http://mimir:4318/v1/metrics"`
    pub metrics_endpoint: Option<Spanned<String>>,
    /// Headers sent with every export (an API key, a tenant).
    ///
    /// Example: `headers = { x-scope-orgid = "team-a" }`
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// The `service.name` of the resource (default `lifehook`).
    ///
    /// Example: `service-name = "checkout-hooks"`
    pub service_name: Option<Spanned<String>>,
    /// Put a W3C `traceparent` on the steps' outgoing HTTP requests, so the
    /// services they call join the trace (default true).
    ///
    /// Example: `propagate = false`
    pub propagate: Option<bool>,
    /// Export at all (default true when an endpoint is set).
    ///
    /// Example: `enabled = false`
    pub enabled: Option<bool>,
}

/// The `[state]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawState {
    /// The state directory, relative to the pipeline file; `$LIFEHOOK_STATE_DIR`
    /// or a `lifehook` directory under the system temp dir by default.
    ///
    /// Example: `dir = "/run/lifehook"`
    pub dir: Option<Spanned<String>>,
}

/// Settings a step inherits unless it sets its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDefaults {
    /// Wall-time limit of one attempt.
    ///
    /// Example: `timeout = "5s"`
    pub timeout: Option<Spanned<DurationValue>>,
    /// CPU budget of one attempt.
    ///
    /// Example: `fuel = 1_000_000_000`
    pub fuel: Option<Fuel>,
    /// Total linear memory a plugin may use.
    ///
    /// Example: `memory = "64MiB"`
    pub memory: Option<Spanned<SizeValue>>,
    /// Captured stdout + stderr kept per step; more is dropped and counted.
    ///
    /// Example: `output-limit = "64KiB"`
    pub output_limit: Option<SizeValue>,
    /// What a failed step does to the rest of the phase.
    ///
    /// Example: `on-failure = "abort"`
    pub on_failure: Option<OnFailure>,
    /// How retryable failures are retried.
    ///
    /// Example: `retries = { attempts = 3, backoff = "200ms" }`
    pub retries: Option<Spanned<RawRetries>>,
    /// Most files, directories and sockets the plugin may hold open at
    /// once (default 256).
    ///
    /// Example: `max-open = 64`
    pub max_open: Option<Spanned<i64>>,
    /// Most bytes the plugin may write to its granted directories, over all
    /// attempts (default "4GiB").
    ///
    /// Example: `max-write = "100MiB"`
    pub max_write: Option<SizeValue>,
    /// Most outgoing HTTP requests in flight at once (default 16).
    ///
    /// Example: `max-http = 4`
    pub max_http: Option<Spanned<i64>>,
    /// Most steps running at the same time (default: the number of CPUs).
    ///
    /// Example: `max-concurrency = 4`
    pub max_concurrency: Option<Spanned<i64>>,
}

/// One phase: its deadline, its place in the pod's grace period, and its
/// steps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPhase {
    /// The whole phase never outlives this; steps get what is left.
    ///
    /// Example: `deadline = "20s"`
    pub deadline: Option<Spanned<DurationValue>>,
    /// The pod's `terminationGracePeriodSeconds`, for `lifehook check` to
    /// verify that the deadline leaves the application its `reserve`.
    ///
    /// Example: `grace-period = "30s"`
    pub grace_period: Option<Spanned<DurationValue>>,
    /// Time the application needs after this phase (to drain and exit).
    ///
    /// Example: `reserve = "10s"`
    pub reserve: Option<Spanned<DurationValue>>,
    /// The steps, in file order.
    ///
    /// Example: `[[pre-stop.steps]]` then `name = "notify"`
    #[serde(default)]
    pub steps: Vec<Spanned<RawStep>>,
}

/// What a failed step does to the rest of its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Go on with the next step; the run still exits 0.
    Continue,
    /// Skip the remaining steps (but `always` ones) and exit non-zero.
    Abort,
}

/// A retry policy as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRetries {
    /// Attempts in all, including the first.
    ///
    /// Example: `attempts = 3`
    pub attempts: Option<Spanned<i64>>,
    /// Wait before the second attempt; later waits grow by `multiplier`.
    ///
    /// Example: `backoff = "200ms"`
    pub backoff: Option<DurationValue>,
    /// Growth factor of the wait between attempts.
    ///
    /// Example: `multiplier = 2.0`
    pub multiplier: Option<Spanned<f64>>,
    /// The longest wait between two attempts.
    ///
    /// Example: `max-backoff = "5s"`
    pub max_backoff: Option<DurationValue>,
}

/// One step as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawStep {
    /// Unique within the phase; tags the step's logs and report line.
    ///
    /// Example: `name = "notify-shutdown"`
    pub name: Option<Spanned<String>>,
    /// The plugin component: a file, relative to the pipeline file, or an
    /// OCI reference `oci://REGISTRY/REPOSITORY:TAG` / `@sha256:DIGEST`.
    ///
    /// Example: `plugin = "plugins/notify_shutdown.wasm"`
    pub plugin: Option<Spanned<String>>,
    /// The SHA-256 the plugin's bytes must have; other content is refused.
    ///
    /// Example: `sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"`
    pub sha256: Option<Spanned<String>>,
    /// When an OCI plugin is pulled: `if-not-present` (default), `always`,
    /// `never`.
    ///
    /// Example: `pull = "always"`
    pub pull: Option<crate::source::PullPolicy>,
    /// A built-in wait instead of a plugin: the step sleeps this long
    /// (cut by the phase deadline like any step).
    ///
    /// Example: `sleep = "5s"`
    pub sleep: Option<Spanned<DurationValue>>,
    /// Wall-time limit of one attempt.
    ///
    /// Example: `timeout = "3s"`
    pub timeout: Option<Spanned<DurationValue>>,
    /// CPU budget of one attempt.
    ///
    /// Example: `fuel = "unlimited"`
    pub fuel: Option<Fuel>,
    /// Total linear memory the plugin may use.
    ///
    /// Example: `memory = "32MiB"`
    pub memory: Option<Spanned<SizeValue>>,
    /// Captured stdout + stderr kept for this step.
    ///
    /// Example: `output-limit = "16KiB"`
    pub output_limit: Option<SizeValue>,
    /// What this step failing does to the rest of the phase.
    ///
    /// Example: `on-failure = "continue"`
    pub on_failure: Option<OnFailure>,
    /// How retryable failures of this step are retried.
    ///
    /// Example: `retries = { attempts = 5, backoff = "100ms", max-backoff = "1s" }`
    pub retries: Option<Spanned<RawRetries>>,
    /// Most files, directories and sockets the plugin may hold open at
    /// once (default 256).
    ///
    /// Example: `max-open = 64`
    pub max_open: Option<Spanned<i64>>,
    /// Most bytes the plugin may write to its granted directories, over all
    /// attempts (default "4GiB").
    ///
    /// Example: `max-write = "100MiB"`
    pub max_write: Option<SizeValue>,
    /// Most outgoing HTTP requests in flight at once (default 16).
    ///
    /// Example: `max-http = 4`
    pub max_http: Option<Spanned<i64>>,
    /// Run at the same time as the neighbouring steps also marked
    /// `concurrent`; the group finishes before the next step starts. Sugar
    /// for the graph it describes; cannot be combined with `needs`.
    ///
    /// Example: `concurrent = true`
    pub concurrent: Option<Spanned<bool>>,
    /// The steps that must have succeeded before this one starts. Replaces
    /// the default order (after the step or concurrent group before it in
    /// the file); `needs = []` starts the step at once.
    ///
    /// Example: `needs = ["notify", "drain"]`
    pub needs: Option<Spanned<Vec<Spanned<String>>>>,
    /// Run even after an abort, a failed need or the deadline cutting an
    /// earlier step; time is kept in reserve for it.
    ///
    /// Example: `always = true`
    pub always: Option<Spanned<bool>>,
    /// Labels for `run --tag` and `--skip-tag`.
    ///
    /// Example: `tags = ["notify", "slow"]`
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    /// Arguments of a `wasi:cli/command` plugin (`argv[1..]`).
    ///
    /// Example: `args = ["--drain", "${POD_NAME}"]`
    #[serde(default)]
    pub args: Vec<Spanned<String>>,
    /// Environment variables set for the plugin, with these values.
    ///
    /// Example: `env = { LOG_LEVEL = "debug" }`
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Capabilities granted to the step; nothing else is reachable.
    ///
    /// Example: `allow = { http = ["http://127.0.0.1:8080"] }`
    #[serde(default)]
    pub allow: RawAllow,
    /// Settings read by the plugin through `wasi:config/store`: strings,
    /// numbers, booleans, dates, and arrays or tables of them.
    ///
    /// Example: `[pre-stop.steps.config]` then `url = "http://${HOST}/drain"`
    #[serde(default)]
    pub config: BTreeMap<String, Spanned<toml::Value>>,
}

/// Capability grants as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAllow {
    /// Outbound HTTP: origins (`"https://api.example.com"`), authorities
    /// (`"10.0.0.7:8080"`) or host names, `*.` wildcards allowed; or a table
    /// with TLS settings for an `https://` origin.
    ///
    /// Example: `http = ["https://*.example.com", { origin = "https://etcd.db:2379", ca = "/etc/etcd/ca.crt" }]`
    #[serde(default)]
    pub http: Vec<Spanned<RawHttpGrant>>,
    /// Outbound TCP connections, `host:port`; or a table with `tls = true`
    /// and its TLS settings.
    ///
    /// Example: `tcp = ["redis.default.svc:6379", { address = "redis.db:6380", tls = true, ca = "/etc/redis/ca.crt" }]`
    #[serde(default)]
    pub tcp: Vec<Spanned<RawTcpGrant>>,
    /// Host directories, read-only unless `access = "read-write"`.
    ///
    /// Example: `dirs = ["/etc/app", { host = "./state", guest = "/state", access = "read-write" }]`
    #[serde(default)]
    pub dirs: Vec<Spanned<RawDir>>,
    /// Environment variables passed through from the runner.
    ///
    /// Example: `env = ["POD_NAME", "POD_NAMESPACE"]`
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
}

/// TLS files of a grant, as written (paths relative to the pipeline file,
/// `${VAR}` allowed).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// A PEM bundle of CAs to trust instead of the public web roots.
    ///
    /// Example: `ca = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"`
    pub ca: Option<String>,
    /// A client certificate (PEM) to present; needs `key`.
    ///
    /// Example: `cert = "/etc/etcd/client.crt"`
    pub cert: Option<String>,
    /// The client certificate's private key (PEM); needs `cert`.
    ///
    /// Example: `key = "/etc/etcd/client.key"`
    pub key: Option<String>,
}

impl RawTls {
    /// True when no TLS file is named.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// An `allow.http` entry: an origin, or a table with TLS settings.
#[derive(Debug)]
pub struct RawHttpGrant {
    /// The origin, as in the string form.
    pub origin: String,
    /// Its TLS files (none in the string form).
    pub tls: RawTls,
}

/// The table form of an HTTP grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpTable {
    /// Example: `origin = "https://etcd.db:2379"`
    origin: String,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// An `allow.tcp` entry: `host:port`, or a table with `tls = true`.
#[derive(Debug)]
pub struct RawTcpGrant {
    /// `host:port`, as in the string form.
    pub address: String,
    /// `tls = true`: TLS is required on this connection.
    pub tls: bool,
    /// Its TLS files (none in the string form).
    pub files: RawTls,
}

/// The table form of a TCP grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcpTable {
    /// Example: `address = "redis.db:6380"`
    address: String,
    /// Example: `tls = true`
    tls: Option<bool>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// How a granted directory may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// List and read files only.
    Read,
    /// Also create, write, rename and delete.
    ReadWrite,
}

/// A directory grant: a bare path (read-only, same path in the plugin) or a
/// table.
#[derive(Debug)]
pub struct RawDir {
    /// The directory on the host, relative to the pipeline file.
    pub host: String,
    /// Where the plugin sees it; defaults to the host path as written.
    pub guest: Option<String>,
    /// Read-only unless `read-write`.
    pub access: Access,
}

/// The table form of a directory grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirTable {
    /// The directory on the host, relative to the pipeline file.
    ///
    /// Example: `host = "./state"`
    pub host: String,
    /// Where the plugin sees it.
    ///
    /// Example: `guest = "/state"`
    pub guest: Option<String>,
    /// `read` (the default) or `read-write`.
    ///
    /// Example: `access = "read-write"`
    pub access: Option<Access>,
}

/// A schema value written either as a string (its short form) or as a
/// table: `allow.dirs`, `allow.http` and `allow.tcp` entries.
trait StringOrTable: Sized {
    /// The table form.
    type Table: de::DeserializeOwned;
    /// What serde says it expected when it finds neither.
    const EXPECTING: &'static str;
    /// The value of the short form.
    fn from_text(text: &str) -> Self;
    /// The value of the table form.
    fn from_table(table: Self::Table) -> Self;
}

fn string_or_table<'de, D: Deserializer<'de>, T: StringOrTable>(d: D) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: StringOrTable> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::EXPECTING)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            Ok(T::from_text(v))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::Table::deserialize(de::value::MapAccessDeserializer::new(map)).map(T::from_table)
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

impl StringOrTable for RawDir {
    type Table = RawDirTable;
    const EXPECTING: &'static str = "a path, or a table like { host = \"./state\", guest = \"/state\", access = \"read-write\" }";
    fn from_text(text: &str) -> Self {
        RawDir {
            host: text.to_owned(),
            guest: None,
            access: Access::Read,
        }
    }
    fn from_table(t: RawDirTable) -> Self {
        RawDir {
            host: t.host,
            guest: t.guest,
            access: t.access.unwrap_or(Access::Read),
        }
    }
}

impl StringOrTable for RawHttpGrant {
    type Table = RawHttpTable;
    const EXPECTING: &'static str = "an origin, or a table like { origin = \"https://etcd.db:2379\", ca = \"/etc/etcd/ca.crt\" }";
    fn from_text(text: &str) -> Self {
        RawHttpGrant {
            origin: text.to_owned(),
            tls: RawTls::default(),
        }
    }
    fn from_table(t: RawHttpTable) -> Self {
        RawHttpGrant {
            origin: t.origin,
            tls: RawTls {
                ca: t.ca,
                cert: t.cert,
                key: t.key,
            },
        }
    }
}

impl StringOrTable for RawTcpGrant {
    type Table = RawTcpTable;
    const EXPECTING: &'static str =
        "`host:port`, or a table like { address = \"redis.db:6380\", tls = true }";
    fn from_text(text: &str) -> Self {
        RawTcpGrant {
            address: text.to_owned(),
            tls: false,
            files: RawTls::default(),
        }
    }
    fn from_table(t: RawTcpTable) -> Self {
        RawTcpGrant {
            address: t.address,
            tls: t.tls.unwrap_or(false),
            files: RawTls {
                ca: t.ca,
                cert: t.cert,
                key: t.key,
            },
        }
    }
}

impl<'de> Deserialize<'de> for RawDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_table(d)
    }
}

impl<'de> Deserialize<'de> for RawHttpGrant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_table(d)
    }
}

impl<'de> Deserialize<'de> for RawTcpGrant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_table(d)
    }
}
