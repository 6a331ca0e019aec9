//! `lifehook inject` under podman: a Pod manifest whose application image
//! is a `FROM scratch` image without lifehook, injected, then played with
//! `podman kube play` (the lifehook image as the init container copying
//! lifehook into an `emptyDir`). podman ignores lifecycle hooks, so the
//! test plays the kubelet's part: it runs the injected hooks exactly as the
//! injected manifest writes them (`podman exec` of the exec command, an
//! HTTP GET with the header of the `httpGet`), and checks their effects.
//!
//! Ignored by a plain `cargo test`: `cargo xtask test` builds the static
//! binaries (`LIFEHOOK_STATIC_BIN`, `LIFEHOOK_STATIC_APP`) and runs these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::http::TestServer;
use crate::support::podman::{RELEASE_IMAGE, checked, podman, release_image, unrelated_image};
use crate::support::{Sandbox, free_port, http_client, lifehook, wait_until};

/// The classic pre-stop (notify, snapshot, unlock) and a post-start
/// notify, over the app's /data volume.
fn pipeline(server: &TestServer) -> String {
    format!(
        r#"
[pre-stop]
deadline = "20s"
reserve = "5s"

[[pre-stop.steps]]
name = "notify"
plugin = "/lifehook/plugins/notify_shutdown.wasm"
allow.http = ["{origin}"]
allow.env = ["POD_NAME"]
config = {{ url = "{url}", body = '{{"phase":"{{{{phase}}}}"}}' }}

[[pre-stop.steps]]
name = "save"
plugin = "/lifehook/plugins/save_state.wasm"
allow.dirs = [
  {{ host = "/data/app", guest = "/app" }},
  {{ host = "/data/snapshots", guest = "/snapshots", access = "read-write" }},
]
config = {{ source = "/app", destination = "/snapshots", keep = 3 }}

[[pre-stop.steps]]
name = "unlock"
plugin = "/lifehook/plugins/release_lock.wasm"
allow.dirs = [{{ host = "/data/locks", guest = "/locks", access = "read-write" }}]
config = {{ backend = "file", path = "/locks/leader.lock", token = "pod-0" }}

[post-start]
[[post-start.steps]]
name = "hello"
plugin = "/lifehook/plugins/notify_shutdown.wasm"
allow.http = ["{origin}"]
config = {{ url = "{started}", body = '{{"phase":"{{{{phase}}}}"}}' }}
"#,
        origin = server.origin(),
        url = server.url("/shutdown"),
        started = server.url("/started"),
    )
}

/// A Pod of the unrelated image, on the host network (the receiver is on
/// loopback), with /data a host directory holding the app's state.
fn manifest(name: &str, data: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    app: inject-test
spec:
  hostNetwork: true
  containers:
    - name: app
      image: {image}
      imagePullPolicy: Never
      args: ["--events", "/data/events"]
      volumeMounts:
        - name: data
          mountPath: /data
  volumes:
    - name: data
      hostPath:
        path: {data}
        type: Directory
"#,
        image = unrelated_image(),
        data = data.display(),
    )
}

/// The sandbox's files: the app's state and the lock it holds.
fn data(s: &Sandbox) -> PathBuf {
    s.write("data/app/state.txt", "counter = 41\n");
    s.write("data/locks/leader.lock", "pod-0\n");
    std::fs::create_dir_all(s.path("data/snapshots")).expect("snapshots");
    s.path("data")
}

/// `podman kube play` needs the sandbox's limits in a containers.conf.
fn containers_conf(s: &Sandbox) -> PathBuf {
    s.write(
        "containers.conf",
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n",
    )
}

/// A played pod, taken down on drop.
struct Played {
    manifest: PathBuf,
    conf: PathBuf,
}

impl Played {
    fn play(manifest: PathBuf, conf: PathBuf) -> Played {
        let mut play = podman();
        play.env("CONTAINERS_CONF", &conf)
            .args(["kube", "play"])
            .arg(&manifest);
        checked(play);
        Played { manifest, conf }
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        let _ = podman()
            .env("CONTAINERS_CONF", &self.conf)
            .args(["kube", "down"])
            .arg(&self.manifest)
            .output();
    }
}

fn inject(s: &Sandbox, args: &[&str], manifest: &str) -> String {
    let input = s.write("pod.yaml", manifest);
    let mut cmd = lifehook();
    cmd.arg("inject")
        .args(args)
        .arg(&input)
        .current_dir(s.dir.path());
    let out = cmd.output().expect("run lifehook inject");
    assert!(
        out.status.success(),
        "inject failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).expect("the output is YAML")
}

/// The documents as `podman kube play` 4 takes them: it refuses annotation
/// values over 63 characters (podman#21663, fixed in podman 5; Kubernetes
/// allows 256 KiB), so inject's record annotation, which only `--remove`
/// reads, is left out. podman 4 also reads a `secretKeyRef` from its own
/// secret store in a format of its own, so the Secret's value is written
/// into the variable instead. And podman 4 removes a finished init
/// container in a race with its own state ("cannot remove container ... as
/// it is running", one play in two here): its `always` init container type
/// keeps them. Nothing else changes.
fn playable(s: &Sandbox, mut docs: Vec<Value>) -> PathBuf {
    let secrets: Vec<(Value, Value)> = docs
        .iter()
        .filter(|d| d["kind"] == "Secret")
        .map(|d| (d["metadata"]["name"].clone(), d["stringData"].clone()))
        .collect();
    docs.retain(|d| d["kind"] != "Secret");
    for doc in &mut docs {
        for list in ["/spec/containers", "/spec/initContainers"] {
            let containers = doc.pointer_mut(list).and_then(Value::as_array_mut);
            for container in containers.into_iter().flatten() {
                let env = container.get_mut("env").and_then(Value::as_array_mut);
                for var in env.into_iter().flatten() {
                    let from = var["valueFrom"]["secretKeyRef"].clone();
                    if let Some((_, data)) = secrets.iter().find(|(n, _)| *n == from["name"]) {
                        let key = from["key"].as_str().expect("key");
                        var["value"] = data[key].clone();
                        var.as_object_mut().expect("env").remove("valueFrom");
                    }
                }
            }
        }
        if let Some(annotations) = doc
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            annotations.retain(|_, v| v.as_str().is_none_or(|v| v.len() <= 63));
            annotations.insert(
                "io.podman.annotations.init.container.type".into(),
                "always".into(),
            );
        }
    }
    s.write(
        "played.yaml",
        serde_saphyr::to_string_multiple(&docs).expect("YAML"),
    )
}

fn pod_of(docs: &[Value]) -> &Value {
    docs.iter().find(|d| d["kind"] == "Pod").expect("the Pod")
}

/// `lifehook check --pod` on the output, with the pipeline it carries.
fn assert_checks(s: &Sandbox, injected: &Path) {
    let empty = s.path("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let out = lifehook()
        .args(["check", "--pod"])
        .arg(injected)
        .current_dir(&empty)
        .env_remove("LIFEHOOK_CONFIG")
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "check --pod failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--remove` on the injected manifest gives the original, as inject
/// writes YAML.
fn assert_removes(s: &Sandbox, injected: &str, original: &str) {
    assert_eq!(
        inject(s, &["--remove"], injected),
        inject(s, &["--remove"], original)
    );
}

/// Waits for the container `name` to be running.
fn wait_running(name: &str) {
    let running = wait_until(Duration::from_secs(60), || {
        podman()
            .args(["inspect", "--format", "{{.State.Running}}", name])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
    });
    assert!(running, "{name} is not running");
}

fn assert_pre_stop_done(s: &Sandbox, server: &TestServer) {
    let told = server.requests();
    assert!(
        told.iter()
            .any(|r| r.path == "/shutdown" && r.text().contains("pre-stop")),
        "{told:?}"
    );
    let snapshots = std::fs::read_dir(s.path("data/snapshots"))
        .expect("snapshots")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .count();
    assert_eq!(snapshots, 1, "one snapshot");
    assert!(
        !s.path("data/locks/leader.lock").exists(),
        "the lock is released"
    );
}

#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn inject_exec_hooks_run_lifehook_installed_by_the_init_container() {
    release_image();
    let server = TestServer::start();
    let s = Sandbox::new();
    s.write("lifehook.toml", pipeline(&server));
    let name = format!("inject-exec-{}", std::process::id());
    let original = manifest(&name, &data(&s));
    let out = inject(
        &s,
        &["-f", "lifehook.toml", "--image", RELEASE_IMAGE],
        &original,
    );
    let injected = s.write("injected.yaml", &out);
    assert_checks(&s, &injected);
    assert_removes(&s, &out, &original);

    let docs = documents(&out);
    let container = &pod_of(&docs)["spec"]["containers"][0];
    let hook = |name: &str| -> Vec<String> {
        container["lifecycle"][name]["exec"]["command"]
            .as_array()
            .expect("an exec hook")
            .iter()
            .map(|a| a.as_str().expect("a string").to_owned())
            .collect()
    };
    let _played = Played::play(playable(&s, docs.clone()), containers_conf(&s));
    let app = format!("{name}-app");
    wait_running(&app);
    // The kubelet's part: each hook's command, as written, in the app.
    for (phase, path) in [("postStart", "/started"), ("preStop", "/shutdown")] {
        let mut exec = podman();
        exec.args(["exec", &app]).args(hook(phase));
        let ran = exec.output().expect("podman exec");
        assert!(
            ran.status.success(),
            "{phase}: {}{}",
            String::from_utf8_lossy(&ran.stdout),
            String::from_utf8_lossy(&ran.stderr)
        );
        assert!(
            server.requests().iter().any(|r| r.path == path),
            "{phase} did not notify {path}"
        );
    }
    assert_pre_stop_done(&s, &server);
}

#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn inject_sidecar_serves_the_hooks_with_its_token() {
    release_image();
    let server = TestServer::start();
    let s = Sandbox::new();
    s.write("lifehook.toml", pipeline(&server));
    let name = format!("inject-sidecar-{}", std::process::id());
    let original = manifest(&name, &data(&s));
    // The sidecar runs as 65532 (the app names no user): the directories
    // it writes are writable to it, as an fsGroup makes a volume in a
    // cluster.
    for dir in ["data/snapshots", "data/locks", "data/locks/leader.lock"] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(s.path(dir), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
    }
    let port = free_port().to_string();
    let out = inject(
        &s,
        &["-f", "lifehook.toml", "--mode", "sidecar", "--port", &port],
        &original,
    );
    let injected = s.write("injected.yaml", &out);
    assert_checks(&s, &injected);
    assert_removes(&s, &out, &original);
    // Injecting the injected manifest again keeps its token.
    assert_eq!(
        inject(
            &s,
            &["-f", "lifehook.toml", "--mode", "sidecar", "--port", &port],
            &out
        ),
        out
    );

    // podman 4 waits for every init container to exit, native sidecars
    // too: the test runs the sidecar as a regular container beside the
    // app, otherwise as injected.
    let mut docs = documents(&out);
    let pod = docs
        .iter_mut()
        .find(|d| d["kind"] == "Pod")
        .expect("the Pod");
    let mut sidecar = pod["spec"]["initContainers"]
        .as_array_mut()
        .expect("init containers")
        .remove(0);
    assert_eq!(sidecar["restartPolicy"], "Always");
    sidecar
        .as_object_mut()
        .expect("a container")
        .remove("restartPolicy");
    pod["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(sidecar);
    let get = pod["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"].clone();
    let started = pod["spec"]["containers"][0]["lifecycle"]["postStart"]["httpGet"].clone();
    let _played = Played::play(playable(&s, docs), containers_conf(&s));
    wait_running(&format!("{name}-app"));
    let ready = wait_until(Duration::from_secs(60), || {
        http_client()
            .get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
    assert!(ready, "the sidecar never became ready");

    // The kubelet's part: a GET to the pod IP (the host network here) with
    // the hook's headers.
    let send = |get: &Value, with_header: bool| -> u16 {
        let url = format!(
            "http://127.0.0.1:{}{}",
            get["port"],
            get["path"].as_str().expect("path")
        );
        let mut request = http_client().get(&url);
        if with_header {
            let header = &get["httpHeaders"][0];
            request = request.header(
                header["name"].as_str().expect("name"),
                header["value"].as_str().expect("value"),
            );
        }
        request.call().map_or(0, |r| r.status().as_u16())
    };
    assert_eq!(send(&get, false), 401, "no token, no pre-stop");
    assert!(
        !server.requests().iter().any(|r| r.path == "/shutdown"),
        "an unauthenticated request ran the pre-stop"
    );
    assert_eq!(send(&started, true), 200);
    assert!(server.requests().iter().any(|r| r.path == "/started"));
    assert_eq!(send(&get, true), 200);
    assert_pre_stop_done(&s, &server);
}

/// The command line: a manifest from standard input, and bad input with
/// its document and path and exit code 2.
#[test]
fn inject_reads_standard_input_and_names_bad_input() {
    let s = Sandbox::new();
    s.write(
        "lifehook.toml",
        "[pre-stop]\n[[pre-stop.steps]]\nname = \"w\"\nsleep = \"1s\"\n",
    );
    let mut child = lifehook()
        .args(["inject", "-f", "lifehook.toml", "-"])
        .current_dir(s.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        b"kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: x}]\n",
    )
    .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let docs = documents(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(docs[0]["kind"], "ConfigMap");
    assert_eq!(
        pod_of(&docs)["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1],
        "run"
    );

    let out = lifehook()
        .args(["inject", "-f", "lifehook.toml", "missing.yaml"])
        .current_dir(s.dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
    let bad = s.write(
        "bad.yaml",
        "kind: Deployment\nmetadata: {name: d}\nspec: {}\n",
    );
    let out = lifehook()
        .args(["inject", "-f", "lifehook.toml"])
        .arg(&bad)
        .current_dir(s.dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 1 (Deployment d): spec.template is missing"),
        "{stderr}"
    );
}
