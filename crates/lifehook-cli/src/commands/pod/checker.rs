//! The checks of one pod spec's lifecycle hooks against the pipeline: a
//! valid `lifehook run` for the right phase, an absolute pipeline path
//! present in its ConfigMap, a pre-stop that fits the grace period, and
//! `httpGet` hooks that reach the pod's `lifehook serve`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use lifehook_manifest::budget::GraceFit;
use lifehook_manifest::{Diagnostic, PhaseName, Pipeline};
use lifehook_units::format_duration;
use serde_saphyr::Spanned;

use super::super::{Cli, Command};
use super::PodCheck;
use super::k8s::{Container, DEFAULT_GRACE, ExecAction, HttpGet, Port, Spec};
use super::offset;

/// What every check of one manifest needs: the file (diagnostics point into
/// it), the pipeline the hooks run, and the manifest's ConfigMaps by name
/// (a hook's pipeline path is checked against the one mounted there).
pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) source: &'a str,
    pub(super) pipeline: &'a Pipeline,
    pub(super) config_maps: BTreeMap<String, &'a BTreeMap<String, String>>,
}

/// A `lifehook serve` container of a pod, as its command line says it
/// runs: what an `httpGet` hook of the same pod is checked against.
struct Serve {
    /// The port it listens on; the hook must call it.
    port: u16,
    /// Listening on loopback only: the kubelet, which calls the pod IP,
    /// cannot reach it.
    loopback: bool,
    /// It requires a bearer token; the hook must send one.
    token: bool,
    /// False for an init container without `restartPolicy: Always`, which
    /// the pod waits for instead of running beside the application.
    sidecar_ok: bool,
    name: String,
}

impl Checker<'_> {
    /// A diagnostic at a YAML value: serde-saphyr gives line and column,
    /// the diagnostic wants a byte offset into the file.
    fn at<T>(&self, s: &Spanned<T>, message: String, help: impl Into<String>) -> Diagnostic {
        let start = offset(self.source, s.referenced.line(), s.referenced.column());
        Diagnostic::new(self.path, self.source, start..start + 1, message).with_help(help)
    }

    /// Checks the hooks of one pod spec; returns how many run lifehook. A
    /// hook that runs something else is none of lifehook's business and is
    /// skipped; a hook that runs lifehook wrongly is a problem, located at
    /// its command or path.
    pub(super) fn pod(&self, workload: &str, spec: &Spec, out: &mut PodCheck) -> usize {
        // Unset is Kubernetes' 30 s, not "no limit": the kubelet kills at 30 s
        // whether or not the manifest says so. A negative value is read as 0.
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
        // Init containers too: a native sidecar (restartPolicy: Always) has
        // lifecycle hooks like any container.
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
                // "ok" only for a hook with no problem of its own.
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

    /// An `exec` hook: lifehook is recognised by the program's file name
    /// (`/lifehook/lifehook`, `/usr/local/bin/lifehook`), then the whole
    /// command line is parsed with the CLI's own definition, so any flag
    /// `lifehook run` accepts is accepted here and nothing else is.
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
        // clap's first line is the useful one (`unexpected argument ...`);
        // the usage text after it is for a terminal, not a diagnostic.
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
        // The kubelet's working directory for an exec hook is the image's,
        // which the manifest does not say: only an absolute path is sure.
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
    /// this manifest, the ConfigMap must have that key. A ConfigMap defined
    /// elsewhere cannot be checked here and is trusted: the check reports
    /// what is wrong in this file, never what it cannot see.
    fn config_map_has(
        &self,
        place: &str,
        at: &Spanned<Vec<String>>,
        file: &Path,
        container: &Container,
        spec: &Spec,
        out: &mut PodCheck,
    ) {
        // The mount whose path is the pipeline file's directory, as a
        // ConfigMap volume mounts its keys as files there.
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
        // Only pre-stop runs against the grace period; post-start has just
        // its own deadline, which nothing in the pod bounds.
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
        // `--deadline` on the hook's command line overrides the pipeline's;
        // the same sum as `lifehook check`'s own (GraceFit), so the two
        // never disagree on whether it fits.
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

    /// An `httpGet` hook: recognised by its path (`/pre-stop` or
    /// `/post-start`), then checked against the pod's `lifehook serve`
    /// container: the port, an address the kubelet can reach, the token,
    /// and the same deadline budget as an exec hook.
    fn http(
        &self,
        place: &str,
        get: &HttpGet,
        phase: PhaseName,
        grace: Duration,
        serve: Option<&Serve>,
        out: &mut PodCheck,
    ) -> bool {
        // Any other path is some other server's hook, not lifehook's.
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
            // A named port resolves against the container's ports, which
            // may be another container's: not checked.
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
        // Only the header's presence can be checked: the token's value is
        // in a Secret, or pasted, and never in this file's business.
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

/// The container's `lifehook serve` invocation, if it runs one (command
/// and args together, as the container runtime joins them).
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
