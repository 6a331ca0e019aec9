//! The edits of one pod template: the checks that everything inject adds
//! fits (names, mounts, hooks, plugins, the grace period), then the edits,
//! written down in the record [`super::undo`] takes them out by. The
//! containers it adds are built in [`super::containers`].

use std::collections::BTreeSet;
use std::path::{Component, Path};
use std::time::Duration;

use lifehook_manifest::budget::GraceFit;
use lifehook_manifest::{PhaseName, Pipeline, PluginSource};
use lifehook_runtime::sources::Lock;
use lifehook_units::format_duration;

use super::containers::downward_env;
use super::undo::{ContainerRecord, Record};
use super::yaml::Node;
use super::{Mode, Options, PipelineFiles};
use crate::commands::UsageError;

/// The annotation holding what inject changed, so `--remove` undoes it.
pub const RECORD: &str = "lifehook.dev/injected";
/// The annotation holding the pipeline's hash: a changed pipeline changes
/// the pod template, which rolls the pods.
pub const HASH: &str = "lifehook.dev/pipeline-hash";

/// The volume the install init container fills with lifehook.
pub(super) const VOLUME: &str = "lifehook";
/// The volume of the pipeline's ConfigMap.
pub(super) const PIPELINE_VOLUME: &str = "lifehook-pipeline";
/// Where the application containers (exec mode) and the sidecar see
/// the pipeline.
pub const PIPELINE_DIR: &str = "/etc/lifehook";
pub const PIPELINE_PATH: &str = "/etc/lifehook/lifehook.toml";
/// Where the application containers see the installed lifehook.
pub(super) const HOME: &str = "/lifehook";
pub(super) const BINARY: &str = "/lifehook/lifehook";
/// Where an init container sees the shared volume.
pub(super) const SHARED: &str = "/shared";
/// The init containers inject adds, by name.
pub(super) const INSTALL: &str = "lifehook-install";
pub(super) const PULL: &str = "lifehook-pull";
pub(super) const SIDECAR: &str = "lifehook";
/// The sample plugins the lifehook image carries in /lifehook/plugins.
pub const IMAGE_PLUGINS: [&str; 5] = [
    "notify_shutdown.wasm",
    "save_state.wasm",
    "restore_state.wasm",
    "release_lock.wasm",
    "drain_connections.wasm",
];
/// The user the added containers run as when the application container
/// names none (the lifehook image has no user of its own).
pub(super) const DEFAULT_USER: i64 = 65532;
/// The variables the downward API gives, and their fields.
pub(super) const DOWNWARD: [(&str, &str); 4] = [
    ("POD_NAME", "metadata.name"),
    ("POD_NAMESPACE", "metadata.namespace"),
    ("POD_UID", "metadata.uid"),
    ("NODE_NAME", "spec.nodeName"),
];

/// One workload's pod template to inject into, and what to name things.
pub struct PodEdit<'a> {
    pub options: &'a Options,
    pub files: &'a PipelineFiles,
    /// `MANIFEST: document N (Kind name)`, to begin every message.
    pub place: &'a str,
    /// Where the pod spec is in the document (`spec.template.spec`).
    pub spec_path: &'a str,
    pub config_map: &'a str,
    pub secret: &'a str,
    /// The sidecar's token (sidecar mode).
    pub token: &'a str,
}

/// What a pod template needs from the pipeline: the pipeline as resolved
/// in the container, the downward variables it reads.
struct Resolved {
    pipeline: Pipeline,
    downward: Vec<&'static str>,
    oci: bool,
}

impl PodEdit<'_> {
    fn fail(&self, what: impl std::fmt::Display) -> UsageError {
        UsageError(format!("{}: {what}", self.place))
    }

    /// Adds lifehook to `template` (a pod template: `metadata` and `spec`);
    /// returns the pipeline as the pod will run it.
    pub fn apply(&self, template: &mut Node) -> Result<Pipeline, UsageError> {
        let sidecar = self.options.mode == Mode::Sidecar;
        let spec = template
            .get("spec")
            .filter(|s| matches!(s, Node::Map(_)))
            .ok_or_else(|| self.fail(format!("{} is missing", self.spec_path)))?;
        let chosen = self.chosen(spec)?;
        self.check_free(spec, &chosen)?;
        // The pipeline runs where its environment is: in each chosen
        // container (exec), or in the sidecar.
        let mut resolved: Option<Resolved> = None;
        let mut downward: BTreeSet<&'static str> = BTreeSet::new();
        if sidecar {
            let r = self.resolve(None, "the sidecar")?;
            downward.extend(&r.downward);
            resolved = Some(r);
        } else {
            for &i in &chosen {
                let container = &spec.items_of("containers")[i];
                let r = self.resolve(Some(container), &self.container_name(container))?;
                downward.extend(&r.downward);
                resolved.get_or_insert(r);
            }
        }
        let Some(resolved) = resolved else {
            return Err(self.fail("no container chosen"));
        };
        let pipeline = resolved.pipeline;
        let grace = self.fit_grace(spec, &pipeline)?;
        let sidecar_mounts = if sidecar {
            self.shared_mounts(spec, &chosen, &pipeline)?
        } else {
            Vec::new()
        };
        let user = chosen
            .first()
            .and_then(|&i| spec.items_of("containers")[i].get("securityContext"))
            .and_then(|s| match s.get("runAsUser") {
                Some(Node::Int(u)) => Some(*u),
                _ => None,
            })
            .unwrap_or(DEFAULT_USER);

        // Everything is checked: from here on, only edits.
        let mut record = Record {
            mode: self.options.mode.as_str().to_owned(),
            ..Record::default()
        };
        let phases: Vec<PhaseName> = pipeline.phases.iter().map(|p| p.name).collect();
        let spec = template
            .get_mut("spec")
            .ok_or_else(|| self.fail("the pod spec vanished"))?;
        let shared = !sidecar || resolved.oci;
        let mut inits = Vec::new();
        if !sidecar {
            inits.push(self.install_container(user));
        }
        if resolved.oci {
            inits.push(self.pull_container(user));
        }
        if sidecar {
            inits.push(self.sidecar_container(user, &downward, resolved.oci, sidecar_mounts));
        }
        let list = entry(
            spec,
            "initContainers",
            Node::Seq(Vec::new()),
            &mut record.created,
        );
        if let Some(Node::Seq(items)) = list {
            items.splice(0..0, inits);
        }
        let volumes = entry(spec, "volumes", Node::Seq(Vec::new()), &mut record.created);
        if let Some(Node::Seq(items)) = volumes {
            if shared {
                items.push(Node::map_of([
                    ("name", Node::str(VOLUME)),
                    ("emptyDir", Node::map()),
                ]));
            }
            items.push(Node::map_of([
                ("name", Node::str(PIPELINE_VOLUME)),
                (
                    "configMap",
                    Node::map_of([("name", Node::str(self.config_map))]),
                ),
            ]));
        }
        if let Some(seconds) = grace {
            let before = match spec.get("terminationGracePeriodSeconds") {
                Some(Node::Int(i)) => Some(*i),
                _ => None,
            };
            record.grace_set = true;
            record.grace_before = before;
            spec.set("terminationGracePeriodSeconds", Node::Int(seconds));
        }
        if let Some(Node::Seq(containers)) = spec.get_mut("containers") {
            for &i in &chosen {
                let container = &mut containers[i];
                let r = self.edit_container(container, &phases, &downward);
                record.containers.push(r);
            }
        }

        let mut meta_created = false;
        let mut annotations_created = false;
        let meta = template
            .entry("metadata", Node::map(), &mut meta_created)
            .ok_or_else(|| self.fail("the pod template is not a mapping"))?;
        let annotations = meta
            .entry("annotations", Node::map(), &mut annotations_created)
            .ok_or_else(|| self.fail("metadata is not a mapping"))?;
        if annotations_created {
            record.created.push("annotations".into());
        }
        if meta_created {
            record.created.push("metadata".into());
        }
        annotations.set(HASH, Node::str(self.files.hash()));
        let json = serde_json::to_string(&record)
            .map_err(|e| self.fail(format!("cannot write the record: {e}")))?;
        annotations.set(RECORD, Node::str(json));
        Ok(pipeline)
    }

    /// The indexes of the containers to add hooks to: those named by
    /// `--container`, else all.
    fn chosen(&self, spec: &Node) -> Result<Vec<usize>, UsageError> {
        let containers = spec.items_of("containers");
        if containers.is_empty() {
            return Err(self.fail(format!(
                "{}.containers is missing or empty: a pod template needs its containers",
                self.spec_path
            )));
        }
        let names: Vec<&str> = containers
            .iter()
            .map(|c| c.get_str("name").unwrap_or_default())
            .collect();
        if self.options.containers.is_empty() {
            return Ok((0..containers.len()).collect());
        }
        self.options
            .containers
            .iter()
            .map(|wanted| {
                names.iter().position(|n| n == wanted).ok_or_else(|| {
                    self.fail(format!(
                        "{}.containers has no container named {wanted} (it has: {})",
                        self.spec_path,
                        names.join(", ")
                    ))
                })
            })
            .collect()
    }

    fn container_name(&self, container: &Node) -> String {
        format!(
            "container {}",
            container.get_str("name").unwrap_or("(unnamed)")
        )
    }

    /// Nothing inject adds may already be there under the same name or path,
    /// and hooks may only be replaced when asked to.
    fn check_free(&self, spec: &Node, chosen: &[usize]) -> Result<(), UsageError> {
        let taken = |list: &str, name: &str| {
            spec.items_of(list)
                .iter()
                .any(|c| c.get_str("name") == Some(name))
        };
        for name in [INSTALL, PULL, SIDECAR] {
            if taken("initContainers", name) || taken("containers", name) {
                return Err(self.fail(format!(
                    "{}: a container is already named {name}, which inject adds; rename it",
                    self.spec_path
                )));
            }
        }
        for name in [VOLUME, PIPELINE_VOLUME] {
            if taken("volumes", name) {
                return Err(self.fail(format!(
                    "{}.volumes: a volume is already named {name}, which inject adds; rename it",
                    self.spec_path
                )));
            }
        }
        let sidecar = self.options.mode == Mode::Sidecar;
        for (i, container) in spec.items_of("containers").iter().enumerate() {
            let at = format!(
                "{}.containers[{i}] ({})",
                self.spec_path,
                container.get_str("name").unwrap_or("unnamed")
            );
            let ports = container.items_of("ports");
            if sidecar
                && ports.iter().any(|p| {
                    p.get("containerPort") == Some(&Node::Int(i64::from(self.options.port)))
                })
            {
                return Err(self.fail(format!(
                    "{at} listens on port {}, which the sidecar would take: pass --port with a free one",
                    self.options.port
                )));
            }
            if !chosen.contains(&i) {
                continue;
            }
            if !sidecar {
                for mount in container.items_of("volumeMounts") {
                    let path = mount.get_str("mountPath").unwrap_or_default();
                    if [HOME, PIPELINE_DIR]
                        .iter()
                        .any(|p| Path::new(path) == Path::new(p))
                    {
                        return Err(self.fail(format!(
                            "{at}.volumeMounts already mounts something at {path}, where inject mounts lifehook"
                        )));
                    }
                }
                if container
                    .items_of("env")
                    .iter()
                    .any(|e| e.get_str("name") == Some("LIFEHOOK_CACHE"))
                {
                    return Err(self.fail(format!(
                        "{at}.env already sets LIFEHOOK_CACHE, which inject sets to {HOME}/cache; remove it"
                    )));
                }
            }
            let lifecycle = container.get("lifecycle");
            for hook in ["preStop", "postStart"] {
                if lifecycle.and_then(|l| l.get(hook)).is_some() && !self.options.replace_hooks {
                    return Err(self.fail(format!(
                        "{at}.lifecycle.{hook} is already set; pass --replace-hooks to replace it with lifehook's (--remove puts it back)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The pipeline resolved in the environment it runs in: the container's
    /// own `env` as the manifest gives it (a value from a Secret or a field
    /// counts as set), the downward variables inject adds, LIFEHOOK_CACHE.
    /// Also checks every plugin is there: a sample plugin of the image, or
    /// an `oci://` reference pinned to a digest.
    fn resolve(&self, container: Option<&Node>, who: &str) -> Result<Resolved, UsageError> {
        let mut env: Vec<(String, Option<String>)> = Vec::new();
        if let Some(c) = container {
            for e in c.items_of("env") {
                if let Some(name) = e.get_str("name") {
                    env.push((name.to_owned(), e.get_str("value").map(str::to_owned)));
                }
            }
        }
        let used = std::cell::RefCell::new(BTreeSet::new());
        let lookup = |name: &str| -> Option<String> {
            used.borrow_mut().insert(name.to_owned());
            if let Some((_, value)) = env.iter().find(|(n, _)| n == name) {
                // From a Secret, a ConfigMap or a field: set, value unknown.
                return Some(value.clone().unwrap_or_else(|| format!("({name})")));
            }
            if DOWNWARD.iter().any(|(n, _)| *n == name) {
                return Some(format!("({name})"));
            }
            (name == "LIFEHOOK_CACHE").then(|| format!("{HOME}/cache"))
        };
        let pipeline = self
            .files
            .resolve(&lookup)
            .map_err(|e| self.fail(format!("the pipeline as {who} would run it:\n{e}")))?;
        let mut names = used.into_inner();
        for step in pipeline.phases.iter().flat_map(|p| &p.steps) {
            names.extend(step.grants.env.iter().cloned());
        }
        let downward = DOWNWARD
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| names.contains(*n) && !env.iter().any(|(e, _)| e == n))
            .collect();
        let oci = self.check_plugins(&pipeline)?;
        Ok(Resolved {
            pipeline,
            downward,
            oci,
        })
    }

    /// Every plugin file must be one the image installs; an OCI plugin must
    /// be pinned (a digest, or the lock file) so every pod pulls the same
    /// bytes. Returns whether there is any OCI plugin.
    fn check_plugins(&self, pipeline: &Pipeline) -> Result<bool, UsageError> {
        let lock = Lock::for_pipeline(&self.files.path)
            .map_err(|e| self.fail(format!("the lock file: {e}")))?;
        let mut oci = false;
        for phase in &pipeline.phases {
            for step in &phase.steps {
                let Some(plugin) = step.plugin() else {
                    continue;
                };
                let at = format!("[{}] step {}", phase.name, step.name);
                match &plugin.source {
                    PluginSource::File(path) => {
                        let carried = path
                            .parent()
                            .is_some_and(|d| d == Path::new(HOME).join("plugins"))
                            && path
                                .file_name()
                                .is_some_and(|n| IMAGE_PLUGINS.iter().any(|p| n == *p));
                        if !carried {
                            return Err(self.fail(format!(
                                "{at}: the plugin {} is not in the lifehook image, which carries {HOME}/plugins/{{{}}}; publish it to a registry (`lifehook push`) and name it `oci://REGISTRY/REPO@sha256:...`, which an init container pulls",
                                path.display(),
                                IMAGE_PLUGINS.join(",")
                            )));
                        }
                    }
                    PluginSource::Oci(r) => {
                        if r.digest.is_none() && lock.get(r).is_none() {
                            return Err(self.fail(format!(
                                "{at}: oci://{} is not pinned to a digest; write it as oci://...@sha256:..., or run `lifehook compile -f {}` to pin it in lifehook.lock beside the pipeline, so every pod runs the same plugin",
                                r.without_scheme(),
                                self.files.path.display()
                            )));
                        }
                        oci = true;
                    }
                }
            }
        }
        Ok(oci)
    }

    /// The pod's grace period against the pre-stop deadline and reserve:
    /// `Some(seconds)` to set (with --set-grace-period), an error with the
    /// arithmetic when it does not fit.
    fn fit_grace(&self, spec: &Node, pipeline: &Pipeline) -> Result<Option<i64>, UsageError> {
        let Some(phase) = pipeline.phase(PhaseName::PreStop) else {
            return Ok(None);
        };
        let field = format!("{}.terminationGracePeriodSeconds", self.spec_path);
        let current = match spec.get("terminationGracePeriodSeconds") {
            None | Some(Node::Null) => None,
            Some(Node::Int(i)) => Some(*i),
            Some(other) => {
                return Err(self.fail(format!("{field} is {}, not a number", other.kind())));
            }
        };
        let grace = Duration::from_secs(current.unwrap_or(30).max(0) as u64);
        let shown = current.map_or_else(|| "unset (30)".to_owned(), |g| g.to_string());
        let fit = GraceFit::new(phase.deadline, phase.reserve, grace);
        let needed = (fit.deadline + fit.reserve).as_secs_f64().ceil() as i64;
        let set = self.options.set_grace_period;
        if let Some(declared) = phase.grace_period.filter(|d| *d != grace) {
            let secs = declared.as_secs_f64().ceil() as i64;
            if set {
                return Ok(Some(secs.max(needed)));
            }
            return Err(self.fail(format!(
                "the pipeline's [pre-stop] grace-period is {} but {field} is {shown}; set grace-period = \"{}s\" in the pipeline, or pass --set-grace-period to set the pod's to {}",
                format_duration(declared),
                grace.as_secs(),
                secs.max(needed)
            )));
        }
        if fit.fits() {
            return Ok(None);
        }
        if set {
            return Ok(Some(needed));
        }
        Err(self.fail(format!(
            "the pre-stop deadline {} + the application's reserve {} = {} does not fit in {field}: {shown}; lower the deadline to {} or pass --set-grace-period to raise it to {needed}",
            format_duration(fit.deadline),
            format_duration(fit.reserve),
            format_duration(fit.deadline + fit.reserve),
            format_duration(fit.longest_deadline()),
        )))
    }

    /// The application containers' volume mounts the sidecar needs for the
    /// pipeline's directory grants: a grant's host path is a path in the
    /// sidecar, so the volume holding it is mounted there at the same path.
    fn shared_mounts(
        &self,
        spec: &Node,
        chosen: &[usize],
        pipeline: &Pipeline,
    ) -> Result<Vec<Node>, UsageError> {
        let containers = spec.items_of("containers");
        let mut mounts: Vec<Node> = Vec::new();
        for step in pipeline.phases.iter().flat_map(|p| &p.steps) {
            for dir in &step.grants.dirs {
                let found = chosen.iter().find_map(|&i| {
                    containers[i].items_of("volumeMounts").iter().find(|m| {
                        m.get_str("mountPath")
                            .is_some_and(|p| is_within(&dir.host, Path::new(p)))
                    })
                });
                let Some(mount) = found else {
                    return Err(self.fail(format!(
                        "step {}: allow.dirs {} is on no volume the application containers mount; the sidecar sees only volumes: put it on one (an emptyDir shared by both), or use --mode exec",
                        step.name,
                        dir.host.display()
                    )));
                };
                if !mounts.contains(mount) {
                    mounts.push(mount.clone());
                }
            }
        }
        Ok(mounts)
    }

    /// Adds to one application container: the mounts, the environment and
    /// the hooks (exec mode), or only the `httpGet` hooks (sidecar mode).
    fn edit_container(
        &self,
        container: &mut Node,
        phases: &[PhaseName],
        downward: &BTreeSet<&'static str>,
    ) -> ContainerRecord {
        let mut record = ContainerRecord {
            name: container.get_str("name").unwrap_or_default().to_owned(),
            ..ContainerRecord::default()
        };
        if self.options.mode == Mode::Exec {
            if let Some(Node::Seq(mounts)) = entry(
                container,
                "volumeMounts",
                Node::Seq(Vec::new()),
                &mut record.created,
            ) {
                mounts.push(Self::mount(VOLUME, HOME, true));
                mounts.push(Self::mount(PIPELINE_VOLUME, PIPELINE_DIR, true));
            }
            let mut added = vec![Node::map_of([
                ("name", Node::str("LIFEHOOK_CACHE")),
                ("value", Node::str(format!("{HOME}/cache"))),
            ])];
            added.extend(downward_env(downward));
            record.env = added
                .iter()
                .filter_map(|e| e.get_str("name").map(str::to_owned))
                .collect();
            if let Some(Node::Seq(env)) =
                entry(container, "env", Node::Seq(Vec::new()), &mut record.created)
            {
                env.extend(added);
            }
        }
        let Some(lifecycle) = entry(container, "lifecycle", Node::map(), &mut record.created)
        else {
            return record;
        };
        for phase in phases {
            let (hook, handler) = match phase {
                PhaseName::PreStop => ("preStop", self.handler(*phase)),
                PhaseName::PostStart => ("postStart", self.handler(*phase)),
            };
            let replaced = lifecycle
                .get(hook)
                .and_then(|h| serde_json::to_value(h).ok());
            record.hooks.push((hook.to_owned(), replaced));
            lifecycle.set(hook, handler);
        }
        record
    }
}

/// `node[key]`, created as `empty` when missing (and noted in `created`);
/// `None` when `node` is not a mapping.
fn entry<'a>(
    node: &'a mut Node,
    key: &str,
    empty: Node,
    created: &mut Vec<String>,
) -> Option<&'a mut Node> {
    let mut made = false;
    let value = node.entry(key, empty, &mut made)?;
    if made {
        created.push(key.to_owned());
    }
    Some(value)
}

/// Whether `path` is `dir` or under it (component-wise).
fn is_within(path: &Path, dir: &Path) -> bool {
    fn clean(p: &Path) -> Vec<Component<'_>> {
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    }
    clean(path).starts_with(&clean(dir))
}
