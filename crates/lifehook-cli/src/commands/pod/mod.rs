//! `lifehook check --pod`: reads a Kubernetes manifest (Pod, Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, Job, CronJob; several documents per
//! file), finds the lifecycle hooks that run lifehook, and checks each
//! against the pipeline: a valid `lifehook run` invocation for the right
//! phase, an absolute pipeline path (present in its ConfigMap when the
//! manifest has it), and a pre-stop deadline that leaves the application its
//! reserve within `terminationGracePeriodSeconds`. `httpGet` hooks are
//! checked against the `lifehook serve` container of the same pod.
//!
//! The Kubernetes objects are modelled in [`k8s`], with only the fields
//! the checks read.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use lifehook_manifest::budget::GraceFit;
use lifehook_manifest::{Diagnostic, PhaseName, Pipeline};
use lifehook_units::format_duration;
use serde_saphyr::Spanned;

use super::{Cli, Command, UsageError};

mod k8s;

use k8s::{Container, DEFAULT_GRACE, ExecAction, HttpGet, Object, Port, Spec, pod_spec};

/// What checking a manifest found: one line per lifehook hook that is
/// right, and the problems.
pub struct PodCheck {
    pub ok: Vec<String>,
    pub problems: Vec<Diagnostic>,
}

/// The text of the manifest at `path`; unreadable is a usage error (exit 2).
fn read_manifest(path: &Path) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read the Kubernetes manifest {}: {e}",
            path.display()
        ))
    })
}

/// A pipeline a manifest carries in a ConfigMap.
pub struct CarriedPipeline {
    /// Where it is, for messages: `ConfigMap NAME, key KEY`.
    pub origin: String,
    /// The pipeline's text.
    pub source: String,
}

/// The pipeline the manifest at `path` carries in a ConfigMap (a data key
/// ending in `.toml`): `Ok(None)` if it carries none; an error if it
/// carries several (which one is meant needs `-f`) or cannot be read.
pub fn carried_pipeline(path: &Path) -> anyhow::Result<Option<CarriedPipeline>> {
    let source = read_manifest(path)?;
    // A manifest that does not parse has no pipeline to offer; `check`
    // then reports the YAML error itself.
    let objects: Vec<Option<Object>> = serde_saphyr::from_multiple(&source).unwrap_or_default();
    let mut found: Vec<CarriedPipeline> = Vec::new();
    for object in objects.into_iter().flatten() {
        if object.kind.as_deref() != Some("ConfigMap") {
            continue;
        }
        let name = object.metadata.name.unwrap_or_else(|| "(unnamed)".into());
        for (key, text) in object.data {
            if key.ends_with(".toml") {
                found.push(CarriedPipeline {
                    origin: format!("ConfigMap {name}, key {key}"),
                    source: text,
                });
            }
        }
    }
    if found.len() > 1 {
        let all: Vec<&str> = found.iter().map(|p| p.origin.as_str()).collect();
        return Err(UsageError(format!(
            "{} carries several pipelines ({}): pass -f FILE with the one to check",
            path.display(),
            all.join("; ")
        ))
        .into());
    }
    Ok(found.pop())
}

/// Checks every lifehook hook in the manifest at `path` against `pipeline`.
pub fn check(path: &Path, pipeline: &Pipeline) -> anyhow::Result<PodCheck> {
    let source = read_manifest(path)?;
    let mut out = PodCheck {
        ok: Vec::new(),
        problems: Vec::new(),
    };
    let objects: Vec<Option<Object>> = match serde_saphyr::from_multiple(&source) {
        Ok(objects) => objects,
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let d = Diagnostic::new(
                path,
                &source,
                offset(&source, line, column)..offset(&source, line, column) + 1,
                format!("not a valid Kubernetes manifest: {}", e.without_snippet()),
            )
            .with_help("the file must be YAML: one or more documents separated by `---`");
            out.problems.push(d);
            return Ok(out);
        }
    };
    let objects: Vec<Object> = objects.into_iter().flatten().collect();
    let checker = Checker {
        path,
        source: &source,
        pipeline,
        config_maps: objects
            .iter()
            .filter(|o| o.kind.as_deref() == Some("ConfigMap"))
            .filter_map(|o| Some((o.metadata.name.clone()?, &o.data)))
            .collect(),
    };
    let mut hooks = 0;
    for object in &objects {
        let kind = object.kind.as_deref().unwrap_or("object");
        let Some(spec) = object.spec.as_ref().and_then(|s| pod_spec(kind, s)) else {
            continue;
        };
        let workload = format!(
            "{kind} {}",
            object.metadata.name.as_deref().unwrap_or("(unnamed)")
        );
        hooks += checker.pod(&workload, spec, &mut out);
    }
    if hooks == 0 {
        out.problems.push(
            Diagnostic::new(path, &source, 0..0, "no container of this manifest runs lifehook in a lifecycle hook")
                .with_help("hooks run lifehook through `lifecycle.preStop.exec.command: [\"/lifehook\", \"run\", ...]` or an httpGet to `lifehook serve`"),
        );
    }
    Ok(out)
}

/// The byte offset of a 1-based line and column (in characters).
fn offset(source: &str, line: u64, column: u64) -> usize {
    let mut at = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            return at
                + l.chars()
                    .take(column.saturating_sub(1) as usize)
                    .map(char::len_utf8)
                    .sum::<usize>();
        }
        at += l.len();
    }
    source.len()
}

struct Checker<'a> {
    path: &'a Path,
    source: &'a str,
    pipeline: &'a Pipeline,
    config_maps: BTreeMap<String, &'a BTreeMap<String, String>>,
}

/// A `lifehook serve` container of a pod.
struct Serve {
    port: u16,
    loopback: bool,
    token: bool,
    sidecar_ok: bool,
    name: String,
}

impl Checker<'_> {
    fn at<T>(&self, s: &Spanned<T>, message: String, help: impl Into<String>) -> Diagnostic {
        let start = offset(self.source, s.referenced.line(), s.referenced.column());
        Diagnostic::new(self.path, self.source, start..start + 1, message).with_help(help)
    }

    /// Checks the hooks of one pod spec; returns how many run lifehook.
    fn pod(&self, workload: &str, spec: &Spec, out: &mut PodCheck) -> usize {
        let grace = spec
            .termination_grace_period_seconds
            .as_ref()
            .map_or(
                DEFAULT_GRACE,
                |g| Duration::from_secs(g.value.max(0) as u64),
            );
        // A serving init container must be a native sidecar, or the pod
        // waits for it to exit before starting the application.
        let serve = spec.containers.iter().find_map(serve_of).or_else(|| {
            spec.init_containers.iter().find_map(|c| {
                serve_of(c).map(|mut s| {
                    s.sidecar_ok = c.restart_policy.as_deref() == Some("Always");
                    s
                })
            })
        });
        let mut hooks = 0;
        for container in spec.containers.iter().chain(&spec.init_containers) {
            let Some(lifecycle) = &container.lifecycle else {
                continue;
            };
            for (hook, handler, phase) in [
                ("preStop", &lifecycle.pre_stop, PhaseName::PreStop),
                ("postStart", &lifecycle.post_start, PhaseName::PostStart),
            ] {
                let Some(handler) = handler else { continue };
                let place = format!("{workload}, container {}, {hook}", container.name.value);
                let before = out.problems.len();
                let found = if let Some(exec) = &handler.exec {
                    self.exec(&place, exec, phase, grace, container, spec, out)
                } else if let Some(get) = &handler.http_get {
                    self.http(&place, get, phase, grace, serve.as_ref(), out)
                } else {
                    false
                };
                if found {
                    hooks += 1;
                    if out.problems.len() == before {
                        out.ok.push(format!("{place}: ok"));
                    }
                }
            }
        }
        if let Some(serve) = serve.filter(|s| !s.sidecar_ok) {
            out.ok.push(format!(
                "warning: {workload}, init container {} runs `lifehook serve` without restartPolicy: Always; the pod will not start until it exits",
                serve.name
            ));
        }
        hooks
    }

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        place: &str,
        exec: &ExecAction,
        phase: PhaseName,
        grace: Duration,
        container: &Container,
        spec: &Spec,
        out: &mut PodCheck,
    ) -> bool {
        let argv = &exec.command.value;
        let runs_lifehook = argv
            .first()
            .is_some_and(|p| Path::new(p).file_name().is_some_and(|n| n == "lifehook"));
        if !runs_lifehook {
            return false;
        }
        let cli = match Cli::try_parse_from(argv) {
            Ok(cli) => cli,
            Err(e) => {
                let message = e.to_string();
                let first = message
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                out.problems.push(self.at(
                    &exec.command,
                    format!("{place}: not a valid lifehook command: {first}"),
                    "run `lifehook run --help` for the options; hooks run `lifehook run --phase pre-stop|post-start -f /path/lifehook.toml`",
                ));
                return true;
            }
        };
        let Command::Run(run) = cli.command else {
            out.problems.push(self.at(
                &exec.command,
                format!("{place}: runs a lifehook command other than `run`"),
                "exec hooks run `lifehook run --phase ... -f ...`; `exec` is an entrypoint and `serve` a sidecar",
            ));
            return true;
        };
        if run.phase_name() != phase {
            out.problems.push(self.at(
                &exec.command,
                format!("{place}: runs the {} phase", run.phase_name()),
                format!("pass `--phase {phase}`"),
            ));
        }
        let file = run.pipeline_file();
        if !file.is_absolute() {
            out.problems.push(self.at(
                &exec.command,
                format!("{place}: the pipeline path {} is relative", file.display()),
                "the kubelet runs exec hooks in the container's working directory; write an absolute path, like -f /etc/lifehook/lifehook.toml",
            ));
        } else {
            self.config_map_has(place, &exec.command, file, container, spec, out);
        }
        self.budget(
            place,
            &exec.command,
            phase,
            run.deadline_override(),
            grace,
            out,
        );
        true
    }

    /// When the pipeline path is in a ConfigMap volume whose ConfigMap is in
    /// this manifest, the ConfigMap must have that key.
    fn config_map_has(
        &self,
        place: &str,
        at: &Spanned<Vec<String>>,
        file: &Path,
        container: &Container,
        spec: &Spec,
        out: &mut PodCheck,
    ) {
        let Some(mount) = container
            .volume_mounts
            .iter()
            .find(|m| file.parent() == Some(Path::new(&m.mount_path)))
        else {
            return;
        };
        let Some(map) = spec
            .volumes
            .iter()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.config_map.as_ref())
        else {
            return;
        };
        let Some(data) = self.config_maps.get(&map.name) else {
            return;
        };
        let key = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !data.contains_key(&key) {
            out.problems.push(self.at(
                at,
                format!(
                    "{place}: ConfigMap {} (mounted at {}) has no key {key}",
                    map.name, mount.mount_path
                ),
                format!(
                    "its keys are: {}",
                    data.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }

    /// The pre-stop deadline and the application's reserve must fit in
    /// the grace period; the pipeline's own `grace-period` must agree.
    fn budget<T>(
        &self,
        place: &str,
        at: &Spanned<T>,
        phase: PhaseName,
        deadline: Option<Duration>,
        grace: Duration,
        out: &mut PodCheck,
    ) {
        let Some(p) = self.pipeline.phase(phase) else {
            out.ok.push(format!(
                "warning: {place}: the pipeline has no [{phase}] section, so this hook does nothing"
            ));
            return;
        };
        if phase != PhaseName::PreStop {
            return;
        }
        if let Some(declared) = p.grace_period.filter(|d| *d != grace) {
            out.problems.push(self.at(
                at,
                format!(
                    "{place}: the pipeline's grace-period is {} but the pod's terminationGracePeriodSeconds is {}",
                    format_duration(declared),
                    grace.as_secs()
                ),
                "set [pre-stop] grace-period to the pod's value, so `lifehook check` budgets for the real thing",
            ));
        }
        let fit = GraceFit::new(deadline.unwrap_or(p.deadline), p.reserve, grace);
        if !fit.fits() {
            out.problems.push(self.at(
                at,
                format!(
                    "{place}: the pre-stop deadline of {} and the application's reserve of {} do not fit in terminationGracePeriodSeconds: {}",
                    format_duration(fit.deadline),
                    format_duration(fit.reserve),
                    grace.as_secs()
                ),
                format!(
                    "the kubelet kills the container when the grace period ends; lower the deadline to {} or raise terminationGracePeriodSeconds to {}",
                    format_duration(fit.longest_deadline()),
                    (fit.deadline + fit.reserve).as_secs_f64().ceil()
                ),
            ));
        }
    }

    fn http(
        &self,
        place: &str,
        get: &HttpGet,
        phase: PhaseName,
        grace: Duration,
        serve: Option<&Serve>,
        out: &mut PodCheck,
    ) -> bool {
        let wanted = format!("/{phase}");
        let Some(path) = &get.path else { return false };
        if !matches!(path.value.as_str(), "/pre-stop" | "/post-start") {
            return false;
        }
        if path.value != wanted {
            out.problems.push(self.at(
                path,
                format!("{place}: calls {}", path.value),
                format!("the {phase} hook calls `{wanted}`"),
            ));
        }
        let Some(serve) = serve else {
            out.problems.push(self.at(
                path,
                format!("{place}: calls {} but no container of the pod runs `lifehook serve`", path.value),
                "add a sidecar (an init container with restartPolicy: Always) running `lifehook serve --listen 0.0.0.0:PORT --token-env ...`",
            ));
            return true;
        };
        match &get.port.value {
            Port::Number(n) if *n == serve.port => {}
            Port::Number(n) => out.problems.push(self.at(
                &get.port,
                format!(
                    "{place}: calls port {n}, but `lifehook serve` in container {} listens on {}",
                    serve.name, serve.port
                ),
                format!("use port: {}", serve.port),
            )),
            Port::Name(_) => {}
        }
        if serve.loopback {
            out.problems.push(self.at(
                path,
                format!(
                    "{place}: `lifehook serve` in container {} listens on loopback only",
                    serve.name
                ),
                "the kubelet calls the pod IP: listen on 0.0.0.0:PORT (with a token)",
            ));
        }
        let sends_token = get.http_headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("authorization") && h.value.starts_with("Bearer ")
        });
        if serve.token && !sends_token {
            out.problems.push(self.at(
                path,
                format!("{place}: sends no `Authorization: Bearer` header, and `lifehook serve` requires a token"),
                "add httpHeaders: [{ name: Authorization, value: \"Bearer <token>\" }]",
            ));
        }
        self.budget(place, path, phase, None, grace, out);
        true
    }
}

/// The container's `lifehook serve` invocation, if it runs one.
fn serve_of(container: &Container) -> Option<Serve> {
    let argv: Vec<&String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .collect();
    let first = argv.first()?;
    if Path::new(first.as_str()).file_name()? != "lifehook" {
        return None;
    }
    let Command::Serve(serve) = Cli::try_parse_from(argv).ok()?.command else {
        return None;
    };
    let listen = serve.listen_addr();
    Some(Serve {
        port: listen.port(),
        loopback: listen.ip().is_loopback(),
        token: serve.has_token(),
        sidecar_ok: true,
        name: container.name.value.clone(),
    })
}

#[cfg(test)]
mod tests;
