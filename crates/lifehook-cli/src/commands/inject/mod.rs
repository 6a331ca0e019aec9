//! `lifehook inject`: adds lifehook to the workloads of a Kubernetes
//! manifest without touching their images. An init container of the
//! lifehook image runs `lifehook install` into an `emptyDir` the
//! application containers mount at `/lifehook`; the pipeline goes into a
//! ConfigMap mounted at `/etc/lifehook`; the containers' `preStop` and
//! `postStart` hooks run the installed binary. With `--mode sidecar`, a
//! native sidecar runs `lifehook serve` instead and the hooks are
//! `httpGet`s to it.
//!
//! Every edit is recorded in an annotation of the pod template, so
//! injecting again first takes the old injection out (same input, same
//! output) and `--remove` takes out exactly what was added. The output is
//! checked as `lifehook check --pod` checks a manifest before it is
//! printed.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use lifehook_manifest::Pipeline;

use super::{PipelineArgs, UsageError};
use crate::exit::EXIT_OK;
use crate::output::print_out;

mod containers;
mod template;
#[cfg(test)]
mod tests;
mod undo;
mod yaml;

use template::PodEdit;
use yaml::Node;

/// The lifehook image of this release.
pub const RELEASE_IMAGE: &str = concat!(
    "ghcr.io/lifehook/lifehook:",
    env!("CARGO_PKG_VERSION_MAJOR"),
    ".",
    env!("CARGO_PKG_VERSION_MINOR")
);

/// The label of the documents inject generates (ConfigMaps, Secrets).
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "lifehook-inject");

/// Add lifehook to the workloads of a Kubernetes manifest, without
/// rebuilding their images; prints the manifest for `kubectl apply -f -`.
#[derive(Debug, Args)]
#[command(after_help = "\
Rewrites the pod templates of Pod, Deployment, StatefulSet, DaemonSet,
ReplicaSet, ReplicationController, Job and CronJob documents; passes every
other document through. Adds a ConfigMap NAME-lifehook with the pipeline
(and its lifehook.lock), an init container of IMAGE that installs lifehook
into an emptyDir mounted at /lifehook, and preStop/postStart hooks running
/lifehook/lifehook run --phase ... -f /etc/lifehook/lifehook.toml. Plugins
must be the image's sample plugins (/lifehook/plugins/...) or pinned
oci:// references, which a second init container pulls. Injecting an
injected manifest replaces the injection; comments are not kept.

Examples:
  lifehook inject -f lifehook.toml deployment.yaml | kubectl apply -f -
  kubectl get deploy web -o yaml | lifehook inject -f lifehook.toml - | kubectl apply -f -
  lifehook inject -f lifehook.toml --mode sidecar --container app pod.yaml
  lifehook inject --remove injected.yaml")]
pub struct Inject {
    #[command(flatten)]
    pipeline: PipelineArgs,

    /// The manifest (several documents allowed); `-` reads standard input.
    #[arg(value_name = "MANIFEST.yaml|-")]
    manifest: PathBuf,

    /// The lifehook image the added containers run.
    #[arg(long, value_name = "IMAGE", default_value = RELEASE_IMAGE)]
    image: String,

    /// The application container to add hooks to (repeat for several)
    /// [default: every container].
    #[arg(long = "container", value_name = "NAME")]
    containers: Vec<String>,

    /// How the hooks reach lifehook: exec hooks running the installed
    /// binary in the application container, or httpGet hooks to a native
    /// sidecar running `lifehook serve`.
    #[arg(long, value_enum, default_value = "exec")]
    mode: Mode,

    /// The sidecar's port (--mode sidecar).
    #[arg(long, value_name = "PORT", default_value_t = 8787)]
    port: u16,

    /// Raise the pod's terminationGracePeriodSeconds when the pre-stop
    /// deadline and reserve do not fit (set it to the pipeline's
    /// grace-period when it declares one), instead of stopping.
    #[arg(long)]
    set_grace_period: bool,

    /// Replace preStop/postStart hooks the containers already have
    /// (--remove puts them back).
    #[arg(long)]
    replace_hooks: bool,

    /// Take out what an earlier inject added, and nothing else.
    #[arg(long, conflicts_with_all = ["containers", "mode", "port", "set_grace_period", "replace_hooks", "image"])]
    remove: bool,
}

/// How the hooks reach lifehook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// exec hooks running lifehook in the application container.
    Exec,
    /// httpGet hooks to a native sidecar running `lifehook serve`.
    Sidecar,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Exec => "exec",
            Mode::Sidecar => "sidecar",
        }
    }
}

/// The choices of one inject.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub containers: Vec<String>,
    pub mode: Mode,
    pub port: u16,
    pub set_grace_period: bool,
    pub replace_hooks: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            image: RELEASE_IMAGE.to_owned(),
            containers: Vec::new(),
            mode: Mode::Exec,
            port: 8787,
            set_grace_period: false,
            replace_hooks: false,
        }
    }
}

impl Inject {
    pub fn execute(self) -> anyhow::Result<i32> {
        let (label, text) = self.read_manifest()?;
        let out = if self.remove {
            remove(&label, &text)?
        } else {
            let files = PipelineFiles::read(&self.pipeline.file)?;
            let options = Options {
                image: self.image,
                containers: self.containers,
                mode: self.mode,
                port: self.port,
                set_grace_period: self.set_grace_period,
                replace_hooks: self.replace_hooks,
            };
            inject(&label, &text, &files, &options, &random_token)?
        };
        print_out(&out);
        Ok(EXIT_OK)
    }

    /// The manifest's name for messages, and its text.
    fn read_manifest(&self) -> Result<(String, String), UsageError> {
        if self.manifest == Path::new("-") {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| {
                UsageError(format!("cannot read the manifest from standard input: {e}"))
            })?;
            return Ok(("<stdin>".to_owned(), text));
        }
        let text = std::fs::read_to_string(&self.manifest).map_err(|e| {
            UsageError(format!(
                "cannot read the Kubernetes manifest {}: {e}",
                self.manifest.display()
            ))
        })?;
        Ok((self.manifest.display().to_string(), text))
    }
}

/// The pipeline file and its lock file, as they go into the ConfigMap.
pub struct PipelineFiles {
    pub path: PathBuf,
    pub toml: String,
    pub lock: Option<String>,
}

impl PipelineFiles {
    pub fn read(path: &Path) -> Result<PipelineFiles, UsageError> {
        let toml = std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!(
                "cannot read the pipeline file {}: {e}",
                path.display()
            ))
        })?;
        let lock_path = path.with_file_name("lifehook.lock");
        let lock = match std::fs::read_to_string(&lock_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(UsageError(format!(
                    "cannot read the lock file {}: {e}",
                    lock_path.display()
                )));
            }
        };
        Ok(PipelineFiles {
            path: path.to_path_buf(),
            toml,
            lock,
        })
    }

    /// A short hash of what the ConfigMap holds.
    pub fn hash(&self) -> String {
        let mut bytes = self.toml.clone().into_bytes();
        if let Some(lock) = &self.lock {
            bytes.push(0);
            bytes.extend_from_slice(lock.as_bytes());
        }
        let mut hex = lifehook_runtime::sources::sha256_hex(&bytes);
        hex.truncate(16);
        hex
    }

    /// The pipeline as it runs in the pod, in the environment `env`: its
    /// problems are reported against the file given, its relative plugin
    /// paths resolved as in the pod (next to /etc/lifehook/lifehook.toml).
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Pipeline, String> {
        let here = lifehook_manifest::parse_elsewhere(&self.toml, &self.path, env, None)
            .map_err(|d| d.to_string())?;
        if let Some(error) = here
            .findings
            .iter()
            .find(|f| f.severity == lifehook_manifest::Severity::Error)
        {
            return Err(error.to_string());
        }
        lifehook_manifest::parse_elsewhere(
            &self.toml,
            Path::new(template::PIPELINE_PATH),
            env,
            None,
        )
        .map_err(|d| d.to_string())
    }
}

/// A token for the sidecar: 24 random bytes, in hex.
fn random_token() -> Result<String, UsageError> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| {
            UsageError(format!(
                "cannot read /dev/urandom for the sidecar's token: {e}"
            ))
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The workload kinds with a pod template, and where it is.
const WORKLOADS: [(&str, &[&str]); 8] = [
    ("Pod", &[]),
    ("Deployment", &["spec", "template"]),
    ("StatefulSet", &["spec", "template"]),
    ("DaemonSet", &["spec", "template"]),
    ("ReplicaSet", &["spec", "template"]),
    ("ReplicationController", &["spec", "template"]),
    ("Job", &["spec", "template"]),
    ("CronJob", &["spec", "jobTemplate", "spec", "template"]),
];

/// A document with a pod template.
struct Workload {
    kind: String,
    name: String,
    namespace: Option<String>,
    path: &'static [&'static str],
}

impl Workload {
    /// The workload document `doc` is (`None`: not one, passed through),
    /// or why it cannot be rewritten.
    fn of(label: &str, number: usize, doc: &Node) -> Result<Option<Workload>, UsageError> {
        let fail = |what: String| UsageError(format!("{label}: document {number}: {what}"));
        if !matches!(doc, Node::Map(_)) {
            return Err(fail(format!(
                "is {}, not a Kubernetes object (a mapping with apiVersion and kind)",
                doc.kind()
            )));
        }
        let Some(kind) = doc.get_str("kind") else {
            return Err(fail(
                "has no `kind`: not a Kubernetes object (a mapping with apiVersion and kind)"
                    .to_owned(),
            ));
        };
        let Some((_, path)) = WORKLOADS.iter().find(|(k, _)| *k == kind) else {
            let spec = doc.get("spec");
            let templated = spec.is_some_and(|s| {
                s.get("template").is_some_and(|t| t.get("spec").is_some())
                    || s.get("jobTemplate").is_some()
                    || s.get("containers").is_some()
            });
            if kind == "List" || templated {
                let known: Vec<&str> = WORKLOADS.iter().map(|(k, _)| *k).collect();
                return Err(fail(format!(
                    "kind {kind} is not one lifehook knows how to rewrite (it rewrites {}); give those documents one by one",
                    known.join(", ")
                )));
            }
            return Ok(None);
        };
        let metadata = doc.get("metadata");
        let Some(name) = metadata.and_then(|m| m.get_str("name")) else {
            return Err(fail(format!(
                "{kind} has no metadata.name; inject names its ConfigMap after the workload"
            )));
        };
        let workload = Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: metadata
                .and_then(|m| m.get_str("namespace"))
                .map(str::to_owned),
            path,
        };
        let mut at = doc;
        for (i, key) in path.iter().enumerate() {
            at = at.get(key).ok_or_else(|| {
                UsageError(format!(
                    "{}: {} is missing",
                    workload.place(label, number),
                    path[..=i].join(".")
                ))
            })?;
        }
        Ok(Some(workload))
    }

    fn place(&self, label: &str, number: usize) -> String {
        format!("{label}: document {number} ({} {})", self.kind, self.name)
    }

    /// Where the pod spec is, for messages.
    fn spec_path(&self) -> String {
        self.path
            .iter()
            .copied()
            .chain(["spec"])
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The pod template in `doc` (the document itself for a Pod).
    fn template<'a>(&self, doc: &'a mut Node) -> Result<&'a mut Node, UsageError> {
        self.path
            .iter()
            .try_fold(doc, |at, key| at.get_mut(key))
            .ok_or_else(|| UsageError(format!("{} {}: no pod template", self.kind, self.name)))
    }

    /// The metadata of a document inject generates for this workload.
    fn metadata(&self, name: &str) -> Node {
        let mut meta = Node::map_of([("name", Node::str(name))]);
        if let Some(ns) = &self.namespace {
            meta.set("namespace", Node::str(ns));
        }
        meta.set(
            "labels",
            Node::map_of([
                (MANAGED_BY.0, Node::str(MANAGED_BY.1)),
                ("app.kubernetes.io/part-of", Node::str(&self.name)),
            ]),
        );
        meta
    }
}

/// Documents with their number in the input (from 1).
type Numbered = Vec<(usize, Node)>;

/// The documents of `text`, numbered from 1.
fn parse(label: &str, text: &str) -> Result<Numbered, UsageError> {
    let docs = yaml::parse_stream(text).map_err(|e| {
        UsageError(format!(
            "{label}:{}:{}: not YAML: {}",
            e.line, e.column, e.message
        ))
    })?;
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(i, d)| (i + 1, d))
        .collect())
}

/// Whether inject generated `doc`.
fn generated(doc: &Node) -> bool {
    doc.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.get_str(MANAGED_BY.0))
        == Some(MANAGED_BY.1)
        && matches!(doc.get_str("kind"), Some("ConfigMap" | "Secret"))
}

/// The documents without inject's own, and the workloads without what
/// inject added to them; the sidecar tokens found, by Secret name.
fn strip(label: &str, docs: Numbered) -> Result<(Numbered, BTreeMap<String, String>), UsageError> {
    let mut tokens = BTreeMap::new();
    let mut kept = Vec::new();
    for (number, mut doc) in docs {
        if generated(&doc) {
            continue;
        }
        if let Some(w) = Workload::of(label, number, &doc)? {
            let place = w.place(label, number);
            if let Some(token) = undo::remove(&place, w.template(&mut doc)?)? {
                tokens.insert(secret_name(&w.name), token);
            }
        }
        kept.push((number, doc));
    }
    Ok((kept, tokens))
}

fn config_map_name(workload: &str) -> String {
    format!("{workload}-lifehook")
}

fn secret_name(workload: &str) -> String {
    format!("{workload}-lifehook-token")
}

/// `--remove`: the manifest without anything inject added.
pub fn remove(label: &str, text: &str) -> Result<String, UsageError> {
    let (docs, _) = strip(label, parse(label, text)?)?;
    write(label, docs.into_iter().map(|(_, d)| d).collect())
}

fn write(label: &str, docs: Vec<Node>) -> Result<String, UsageError> {
    yaml::to_stream(&docs)
        .map_err(|e| UsageError(format!("{label}: cannot write the manifest back: {e}")))
}

/// The manifest `text` (read from `label`) with lifehook added to every
/// workload; `token` makes a sidecar token when there is none to keep.
pub fn inject(
    label: &str,
    text: &str,
    files: &PipelineFiles,
    options: &Options,
    token: &dyn Fn() -> Result<String, UsageError>,
) -> Result<String, UsageError> {
    let (docs, mut tokens) = strip(label, parse(label, text)?)?;
    let mut out: Vec<Node> = Vec::new();
    let mut emitted: Vec<String> = Vec::new();
    let mut pipeline = None;
    for (number, mut doc) in docs {
        let Some(w) = Workload::of(label, number, &doc)? else {
            out.push(doc);
            continue;
        };
        let config_map = config_map_name(&w.name);
        let secret = secret_name(&w.name);
        let sidecar = options.mode == Mode::Sidecar;
        let secret_token = if sidecar {
            match tokens.get(&secret) {
                Some(t) => t.clone(),
                None => {
                    let t = token()?;
                    tokens.insert(secret.clone(), t.clone());
                    t
                }
            }
        } else {
            String::new()
        };
        let place = w.place(label, number);
        let edit = PodEdit {
            options,
            files,
            place: &place,
            spec_path: &w.spec_path(),
            config_map: &config_map,
            secret: &secret,
            token: &secret_token,
        };
        pipeline = Some(edit.apply(w.template(&mut doc)?)?);
        // One ConfigMap (and Secret) per name and namespace, before the
        // workload that mounts it.
        let ns = w.namespace.clone().unwrap_or_default();
        if !emitted.contains(&format!("{ns}/{config_map}")) {
            let mut data = Node::map_of([("lifehook.toml", Node::str(&files.toml))]);
            if let Some(lock) = &files.lock {
                data.set("lifehook.lock", Node::str(lock));
            }
            out.push(Node::map_of([
                ("apiVersion", Node::str("v1")),
                ("kind", Node::str("ConfigMap")),
                ("metadata", w.metadata(&config_map)),
                ("data", data),
            ]));
            emitted.push(format!("{ns}/{config_map}"));
        }
        if sidecar && !emitted.contains(&format!("{ns}/{secret}")) {
            out.push(Node::map_of([
                ("apiVersion", Node::str("v1")),
                ("kind", Node::str("Secret")),
                ("metadata", w.metadata(&secret)),
                ("type", Node::str("Opaque")),
                (
                    "stringData",
                    Node::map_of([("token", Node::str(&secret_token))]),
                ),
            ]));
            emitted.push(format!("{ns}/{secret}"));
        }
        out.push(doc);
    }
    let Some(pipeline) = pipeline else {
        return Err(UsageError(format!(
            "{label}: no document has a pod template (kinds: {})",
            WORKLOADS.map(|(k, _)| k).join(", ")
        )));
    };
    let text = write(label, out)?;
    // What `check --pod` would say of it: inject never prints a manifest
    // that check rejects.
    let found = super::pod::check_text(Path::new(label), &text, &pipeline);
    if let Some(problem) = found.problems.first() {
        return Err(UsageError(format!(
            "{label}: the injected manifest does not pass `lifehook check --pod` (a bug in inject; please report it):\n{problem}"
        )));
    }
    Ok(text)
}
