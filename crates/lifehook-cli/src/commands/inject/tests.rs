use std::path::PathBuf;

use super::yaml::{Node, parse_stream};
use super::*;

const PIPELINE: &str = r#"
[pre-stop]
grace-period = "30s"
reserve = "10s"

[[pre-stop.steps]]
name = "notify"
plugin = "/lifehook/plugins/notify_shutdown.wasm"
allow.http = ["http://gateway:8080"]
allow.env = ["POD_NAME"]
config = { url = "http://gateway:8080/drain" }

[[pre-stop.steps]]
name = "save"
plugin = "${LIFEHOOK_PLUGIN_DIR:-/lifehook/plugins}/save_state.wasm"
allow.dirs = [
  { host = "/var/lib/app", guest = "/app" },
  { host = "/snapshots", guest = "/snapshots", access = "read-write" },
]
config = { source = "/app", destination = "/snapshots" }

[post-start]
[[post-start.steps]]
name = "restore"
plugin = "/lifehook/plugins/restore_state.wasm"
allow.dirs = [{ host = "/snapshots", guest = "/snapshots" }]
config = { source = "/snapshots", destination = "/app" }
"#;

const MANIFEST: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
    - port: 80
      targetPort: "8080"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: app
          image: example/app:1
          ports:
            - containerPort: 8080
          env:
            - name: MODE
              value: "on"
          volumeMounts:
            - name: state
              mountPath: /var/lib/app
            - name: snapshots
              mountPath: /snapshots
      volumes:
        - name: state
          emptyDir: {}
        - name: snapshots
          emptyDir: {}
"#;

fn files(toml: &str) -> PipelineFiles {
    PipelineFiles {
        path: PathBuf::from("/nonexistent/deploy/lifehook.toml"),
        toml: toml.to_owned(),
        lock: None,
    }
}

fn token() -> Result<String, UsageError> {
    Ok("0123456789abcdef0123456789abcdef0123456789abcdef".to_owned())
}

fn run(manifest: &str, toml: &str, options: &Options) -> Result<String, UsageError> {
    inject("m.yaml", manifest, &files(toml), options, &token)
}

fn ok(manifest: &str, options: &Options) -> String {
    run(manifest, PIPELINE, options).unwrap_or_else(|e| panic!("inject failed: {e}"))
}

fn err(manifest: &str, toml: &str, options: &Options) -> String {
    match run(manifest, toml, options) {
        Ok(out) => panic!("inject succeeded:\n{out}"),
        Err(e) => e.0,
    }
}

fn docs(text: &str) -> Vec<Node> {
    parse_stream(text).expect("the output is YAML")
}

/// The document of `kind`.
fn doc<'a>(docs: &'a [Node], kind: &str) -> &'a Node {
    docs.iter()
        .find(|d| d.get_str("kind") == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn at<'a>(node: &'a Node, path: &[&str]) -> &'a Node {
    path.iter().fold(node, |n, key| match key.parse::<usize>() {
        Ok(i) => &n.items()[i],
        Err(_) => n.get(key).unwrap_or_else(|| panic!("no {key} in {path:?}")),
    })
}

fn names(list: &Node) -> Vec<&str> {
    list.items()
        .iter()
        .map(|i| i.get_str("name").unwrap_or_default())
        .collect()
}

/// The input as written back unchanged: what `--remove` must give.
fn normalized(manifest: &str) -> String {
    yaml::to_stream(&docs(manifest)).expect("writes")
}

#[test]
fn exec_mode_adds_the_install_the_configmap_the_mounts_and_the_hooks() {
    let out = ok(MANIFEST, &Options::default());
    let all = docs(&out);
    let kinds: Vec<&str> = all.iter().filter_map(|d| d.get_str("kind")).collect();
    assert_eq!(kinds, ["Service", "ConfigMap", "Deployment"], "{out}");
    // Untouched documents and fields keep their values and order.
    assert_eq!(all[0], docs(MANIFEST)[0]);
    let cm = doc(&all, "ConfigMap");
    assert_eq!(at(cm, &["metadata", "name"]).as_str(), Some("web-lifehook"));
    assert_eq!(at(cm, &["metadata", "namespace"]).as_str(), Some("shop"));
    assert_eq!(at(cm, &["data", "lifehook.toml"]).as_str(), Some(PIPELINE));
    let deploy = doc(&all, "Deployment");
    let keys: Vec<&str> = match deploy.get("spec") {
        Some(Node::Map(e)) => e.iter().filter_map(|(k, _)| k.as_str()).collect(),
        _ => panic!("no spec"),
    };
    assert_eq!(keys, ["replicas", "selector", "template"]);
    let spec = at(deploy, &["spec", "template", "spec"]);
    let init = at(spec, &["initContainers", "0"]);
    assert_eq!(init.get_str("name"), Some("lifehook-install"));
    assert_eq!(init.get_str("image"), Some(RELEASE_IMAGE));
    assert_eq!(
        init.get("command"),
        Some(&Node::strs(&["/lifehook/lifehook", "install", "/shared"]))
    );
    assert_eq!(
        names(at(spec, &["volumes"])),
        ["state", "snapshots", "lifehook", "lifehook-pipeline"]
    );
    let app = at(spec, &["containers", "0"]);
    assert_eq!(
        names(at(app, &["volumeMounts"])),
        ["state", "snapshots", "lifehook", "lifehook-pipeline"]
    );
    // MODE is the app's own; POD_NAME because a step's allow.env reads it.
    assert_eq!(
        names(at(app, &["env"])),
        ["MODE", "LIFEHOOK_CACHE", "POD_NAME"]
    );
    assert_eq!(at(app, &["env", "0", "value"]).as_str(), Some("on"));
    assert_eq!(
        at(app, &["env", "2", "valueFrom", "fieldRef", "fieldPath"]).as_str(),
        Some("metadata.name")
    );
    for (hook, phase) in [("preStop", "pre-stop"), ("postStart", "post-start")] {
        assert_eq!(
            at(app, &["lifecycle", hook, "exec", "command"]),
            &Node::strs(&[
                "/lifehook/lifehook",
                "run",
                "--phase",
                phase,
                "-f",
                "/etc/lifehook/lifehook.toml"
            ])
        );
    }
    let annotations = at(deploy, &["spec", "template", "metadata", "annotations"]);
    assert_eq!(
        annotations.get_str(template::HASH),
        Some(files(PIPELINE).hash().as_str())
    );
    assert!(annotations.get_str(template::RECORD).is_some());
}

#[test]
fn injecting_again_gives_the_same_output_and_a_new_pipeline_changes_only_its_configmap_and_hash() {
    let once = ok(MANIFEST, &Options::default());
    assert_eq!(ok(&once, &Options::default()), once);
    let newer = PIPELINE.replace("reserve = \"10s\"", "reserve = \"12s\"");
    let updated = run(&once, &newer, &Options::default()).expect("injects");
    let changed: Vec<(&str, &str)> = once
        .lines()
        .zip(updated.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(once.lines().count(), updated.lines().count());
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed[0].1.contains("reserve = \"12s\""), "{changed:?}");
    assert!(changed[1].1.contains(template::HASH), "{changed:?}");
}

#[test]
fn remove_takes_out_exactly_what_inject_added() {
    for options in [
        Options::default(),
        Options {
            mode: Mode::Sidecar,
            ..Options::default()
        },
    ] {
        let out = ok(MANIFEST, &options);
        assert_eq!(
            remove("m.yaml", &out).expect("removes"),
            normalized(MANIFEST)
        );
    }
    // A manifest without an injection is left as it is.
    assert_eq!(
        remove("m.yaml", MANIFEST).expect("removes"),
        normalized(MANIFEST)
    );
}

#[test]
fn replaced_hooks_and_a_raised_grace_period_come_back_on_remove() {
    let with_hook = MANIFEST.replace(
        "          image: example/app:1\n",
        "          image: example/app:1\n          lifecycle:\n            preStop:\n              exec:\n                command: [\"sleep\", \"5\"]\n",
    );
    let refused = err(&with_hook, PIPELINE, &Options::default());
    assert!(
        refused.contains("document 2 (Deployment web)")
            && refused.contains(
                "spec.template.spec.containers[0] (app).lifecycle.preStop is already set"
            )
            && refused.contains("--replace-hooks"),
        "{refused}"
    );
    let options = Options {
        replace_hooks: true,
        set_grace_period: true,
        ..Options::default()
    };
    let long = PIPELINE.replace("grace-period = \"30s\"", "grace-period = \"45s\"");
    let out = run(&with_hook, &long, &options).expect("injects");
    let all = docs(&out);
    let spec = at(doc(&all, "Deployment"), &["spec", "template", "spec"]);
    assert_eq!(
        spec.get("terminationGracePeriodSeconds"),
        Some(&Node::Int(45))
    );
    assert_eq!(
        remove("m.yaml", &out).expect("removes"),
        normalized(&with_hook)
    );
}

#[test]
fn a_grace_period_that_does_not_fit_is_refused_with_the_arithmetic() {
    let tight = PIPELINE.replace("grace-period = \"30s\"\n", "deadline = \"25s\"\n");
    let e = err(MANIFEST, &tight, &Options::default());
    assert!(
        e.contains("the pre-stop deadline 25s + the application's reserve 10s = 35s does not fit in spec.template.spec.terminationGracePeriodSeconds: unset (30)")
            && e.contains("lower the deadline to 20s")
            && e.contains("--set-grace-period to raise it to 35"),
        "{e}"
    );
    let out = run(
        MANIFEST,
        &tight,
        &Options {
            set_grace_period: true,
            ..Options::default()
        },
    )
    .expect("injects");
    let all = docs(&out);
    let spec = at(doc(&all, "Deployment"), &["spec", "template", "spec"]);
    assert_eq!(
        spec.get("terminationGracePeriodSeconds"),
        Some(&Node::Int(35))
    );
    let declared = PIPELINE.replace("grace-period = \"30s\"", "grace-period = \"60s\"");
    let e = err(MANIFEST, &declared, &Options::default());
    assert!(
        e.contains("grace-period is 1m00s but spec.template.spec.terminationGracePeriodSeconds is unset (30)")
            && e.contains("--set-grace-period to set the pod's to 60"),
        "{e}"
    );
}

#[test]
fn a_plugin_the_image_does_not_carry_is_named_and_oci_is_suggested() {
    let mine = PIPELINE.replace(
        "/lifehook/plugins/restore_state.wasm",
        "/opt/hooks/warm_cache.wasm",
    );
    let e = err(MANIFEST, &mine, &Options::default());
    assert!(
        e.contains("[post-start] step restore: the plugin /opt/hooks/warm_cache.wasm is not in the lifehook image")
            && e.contains("oci://"),
        "{e}"
    );
    let relative = PIPELINE.replace("/lifehook/plugins/restore_state.wasm", "restore.wasm");
    let e = err(MANIFEST, &relative, &Options::default());
    assert!(
        e.contains("/etc/lifehook/restore.wasm is not in the lifehook image"),
        "{e}"
    );
}

#[test]
fn oci_plugins_must_be_pinned_and_get_a_pull_init_container() {
    let tagged = PIPELINE.replace(
        "/lifehook/plugins/restore_state.wasm",
        "oci://registry.example.com/hooks/restore:1",
    );
    let e = err(MANIFEST, &tagged, &Options::default());
    assert!(
        e.contains("is not pinned to a digest") && e.contains("lifehook compile -f"),
        "{e}"
    );
    let digest = format!(
        "oci://registry.example.com/hooks/restore@sha256:{}",
        "a".repeat(64)
    );
    let pinned = PIPELINE.replace("/lifehook/plugins/restore_state.wasm", &digest);
    let out = run(MANIFEST, &pinned, &Options::default()).expect("injects");
    let all = docs(&out);
    let spec = at(doc(&all, "Deployment"), &["spec", "template", "spec"]);
    assert_eq!(
        names(at(spec, &["initContainers"])),
        ["lifehook-install", "lifehook-pull"]
    );
    assert_eq!(
        at(spec, &["initContainers", "1", "command"]),
        &Node::strs(&[
            "/lifehook/lifehook",
            "compile",
            "-f",
            "/etc/lifehook/lifehook.toml",
            "--cache",
            "/shared/cache"
        ])
    );
}

#[test]
fn bad_manifests_get_the_document_and_the_path() {
    let o = Options::default();
    let cases: [(&str, &str); 7] = [
        ("a: [unclosed\n", "m.yaml:"),
        (
            "kind: Service\nmetadata: {name: s}\n",
            "no document has a pod template",
        ),
        (
            "apiVersion: v1\nmetadata: {name: x}\n",
            "document 1: has no `kind`",
        ),
        (
            "- a\n- b\n",
            "document 1: is a list, not a Kubernetes object",
        ),
        (
            "kind: Service\nmetadata: {name: s}\n---\nkind: Rollout\nmetadata: {name: r}\nspec:\n  template:\n    spec:\n      containers: [{name: a}]\n",
            "document 2: kind Rollout is not one lifehook knows how to rewrite",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n",
            "document 1 (Deployment d): spec.template is missing",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers: []\n",
            "document 1 (Pod p): spec.containers is missing or empty",
        ),
    ];
    for (manifest, expected) in cases {
        let e = err(manifest, PIPELINE, &o);
        assert!(e.contains(expected), "{manifest:?}: {e}");
    }
    let e = err(
        MANIFEST,
        PIPELINE,
        &Options {
            containers: vec!["worker".into()],
            ..o
        },
    );
    assert!(
        e.contains("document 2 (Deployment web): spec.template.spec.containers has no container named worker (it has: app)"),
        "{e}"
    );
}

#[test]
fn every_workload_kind_is_rewritten_at_its_pod_template() {
    let pod = "    containers:\n      - name: app\n        image: example/app\n";
    let indent = |n: usize| -> String {
        pod.lines()
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect()
    };
    let cases = [
        ("Pod", format!("spec:\n{}", &pod[2..].replace("\n  ", "\n"))),
        (
            "Deployment",
            format!("spec:\n  template:\n    spec:\n{}", indent(2)),
        ),
        (
            "StatefulSet",
            format!("spec:\n  template:\n    spec:\n{}", indent(2)),
        ),
        (
            "DaemonSet",
            format!("spec:\n  template:\n    spec:\n{}", indent(2)),
        ),
        (
            "ReplicaSet",
            format!("spec:\n  template:\n    spec:\n{}", indent(2)),
        ),
        (
            "Job",
            format!("spec:\n  template:\n    spec:\n{}", indent(2)),
        ),
        (
            "CronJob",
            format!(
                "spec:\n  schedule: \"*/5 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n{}",
                indent(6)
            ),
        ),
    ];
    let simple = "[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"1s\"\n";
    for (kind, body) in cases {
        let manifest = format!("apiVersion: v1\nkind: {kind}\nmetadata:\n  name: w\n{body}");
        let out = run(&manifest, simple, &Options::default())
            .unwrap_or_else(|e| panic!("{kind}: {e}\n{manifest}"));
        let all = docs(&out);
        let w = doc(&all, kind);
        let spec = match kind {
            "Pod" => at(w, &["spec"]),
            "CronJob" => at(w, &["spec", "jobTemplate", "spec", "template", "spec"]),
            _ => at(w, &["spec", "template", "spec"]),
        };
        assert_eq!(
            at(
                spec,
                &[
                    "containers",
                    "0",
                    "lifecycle",
                    "preStop",
                    "exec",
                    "command",
                    "0"
                ]
            )
            .as_str(),
            Some("/lifehook/lifehook"),
            "{kind}"
        );
        assert_eq!(
            remove("m.yaml", &out).expect("removes"),
            normalized(&manifest),
            "{kind}"
        );
    }
}

#[test]
fn sidecar_mode_serves_the_phases_with_a_token_and_shares_the_granted_volumes() {
    let options = Options {
        mode: Mode::Sidecar,
        ..Options::default()
    };
    let out = ok(MANIFEST, &options);
    let all = docs(&out);
    let kinds: Vec<&str> = all.iter().filter_map(|d| d.get_str("kind")).collect();
    assert_eq!(kinds, ["Service", "ConfigMap", "Secret", "Deployment"]);
    let secret = doc(&all, "Secret");
    assert_eq!(
        at(secret, &["metadata", "name"]).as_str(),
        Some("web-lifehook-token")
    );
    let token = token().expect("token");
    assert_eq!(
        at(secret, &["stringData", "token"]).as_str(),
        Some(token.as_str())
    );
    let spec = at(doc(&all, "Deployment"), &["spec", "template", "spec"]);
    let sidecar = at(spec, &["initContainers", "0"]);
    assert_eq!(sidecar.get_str("name"), Some("lifehook"));
    assert_eq!(sidecar.get_str("restartPolicy"), Some("Always"));
    assert_eq!(
        names(at(sidecar, &["volumeMounts"])),
        ["lifehook-pipeline", "state", "snapshots"]
    );
    assert_eq!(
        names(at(sidecar, &["env"])),
        ["LIFEHOOK_TOKEN", "LIFEHOOK_CACHE", "POD_NAME"]
    );
    // No install and no shared lifehook volume: the sidecar runs the image.
    assert_eq!(
        names(at(spec, &["volumes"])),
        ["state", "snapshots", "lifehook-pipeline"]
    );
    let app = at(spec, &["containers", "0"]);
    let get = at(app, &["lifecycle", "preStop", "httpGet"]);
    assert_eq!(get.get_str("path"), Some("/pre-stop"));
    assert_eq!(get.get("port"), Some(&Node::Int(8787)));
    assert_eq!(
        at(get, &["httpHeaders", "0", "value"]).as_str(),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(
        names(at(app, &["env"])),
        ["MODE"],
        "exec-mode env not added"
    );
    // Injecting again keeps the token, even with another token source.
    let again = inject("m.yaml", &out, &files(PIPELINE), &options, &|| {
        Ok("another".to_owned())
    })
    .expect("injects");
    assert_eq!(again, out);
    // A directory grant on no shared volume cannot be reached by the sidecar.
    let outside = PIPELINE.replace("host = \"/var/lib/app\"", "host = \"/var/lib/other\"");
    let e = err(MANIFEST, &outside, &options);
    assert!(
        e.contains("step save: allow.dirs /var/lib/other is on no volume"),
        "{e}"
    );
    // The app's own port is not the sidecar's.
    let e = err(
        MANIFEST,
        PIPELINE,
        &Options {
            port: 8080,
            ..options
        },
    );
    assert!(e.contains("listens on port 8080"), "{e}");
}

#[test]
fn the_release_image_is_this_versions() {
    let version = env!("CARGO_PKG_VERSION");
    let (major_minor, _) = version.rsplit_once('.').expect("x.y.z");
    assert_eq!(
        RELEASE_IMAGE,
        format!("ghcr.io/lifehook/lifehook:{major_minor}")
    );
}

#[test]
fn a_pipeline_problem_names_the_pipeline_file() {
    let e = err(MANIFEST, "[pre-stop]\nbogus = 1\n", &Options::default());
    assert!(e.contains("/nonexistent/deploy/lifehook.toml"), "{e}");
    let unset = PIPELINE.replace("http://gateway:8080/drain", "http://${GATEWAY}/drain");
    let e = err(MANIFEST, &unset, &Options::default());
    assert!(
        e.contains("container app would run it") && e.contains("GATEWAY"),
        "{e}"
    );
}
