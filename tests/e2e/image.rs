//! The lifehook image (examples/image/Containerfile) as a release ships it:
//! one image per architecture, built here from the static binaries and the
//! artifacts the x86-64 binary cross-compiled, joined in one manifest list
//! and pushed to a real registry; and used as an init container that
//! installs lifehook into a volume another, unrelated image runs it from.
//!
//! Ignored by a plain `cargo test`: `cargo xtask test` builds the binaries
//! (`LIFEHOOK_STATIC_BIN`, `LIFEHOOK_STATIC_SLIM_BIN`, `LIFEHOOK_AARCH64_BIN`,
//! `LIFEHOOK_AARCH64_SLIM_BIN`, `LIFEHOOK_STATIC_APP`) and runs these.

use std::path::Path;
use std::process::Command;

use crate::support::http::TestServer;
use crate::support::podman::{
    AMD64, ARM64, Platform, SAMPLE_PLUGINS, build_lifehook_image, built_file, checked, podman,
    podman_run, unrelated_image,
};
use crate::support::registry::Registry;
use crate::support::{Run, Sandbox, classic, http_client};

fn inspect(image: &str, format: &str) -> String {
    let mut cmd = podman();
    cmd.args(["image", "inspect", "--format", format, image]);
    String::from_utf8_lossy(&checked(cmd).stdout)
        .trim()
        .to_owned()
}

/// The paths in `image`'s file system (from `podman export` of a container
/// created, not started, from it).
fn files_of(image: &str, platform: Platform) -> Vec<String> {
    let mut create = podman();
    create.args(["create", "--platform", platform.os_arch, image]);
    let id = String::from_utf8_lossy(&checked(create).stdout)
        .trim()
        .to_owned();
    let tar = tempfile::NamedTempFile::new().expect("temp file");
    let mut export = podman();
    export.args(["export", "-o"]).arg(tar.path()).arg(&id);
    checked(export);
    let _ = podman().args(["rm", &id]).output();
    let listed = Command::new("tar")
        .arg("-tf")
        .arg(tar.path())
        .output()
        .expect("tar");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_owned())
        .collect()
}

#[test]
#[ignore = "needs podman, a registry and the static binaries: `cargo xtask test` runs it"]
fn image_per_architecture_joined_in_a_manifest_list_pushed_to_a_registry() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let version = env!("CARGO_PKG_VERSION");
    let mut registry = Registry::start();
    for (suffix, x86, arm) in [
        ("", "LIFEHOOK_STATIC_BIN", "LIFEHOOK_AARCH64_BIN"),
        (
            "-slim",
            "LIFEHOOK_STATIC_SLIM_BIN",
            "LIFEHOOK_AARCH64_SLIM_BIN",
        ),
    ] {
        let list = format!("{}/lifehook/lifehook:{version}{suffix}", registry.host());
        let _ = podman().args(["manifest", "rm", &list]).output();
        let mut create = podman();
        create.args(["manifest", "create", &list]);
        checked(create);
        for (platform, var) in [(AMD64, x86), (ARM64, arm)] {
            let tag = format!(
                "localhost/lifehook-image-test:{}{suffix}",
                platform.oci_arch
            );
            build_lifehook_image(&built_file(var), platform, &tag);
            assert_eq!(inspect(&tag, "{{.Architecture}}"), platform.oci_arch);
            assert_eq!(
                inspect(
                    &tag,
                    "{{index .Labels \"org.opencontainers.image.version\"}}"
                ),
                version
            );
            assert_eq!(
                inspect(
                    &tag,
                    "{{index .Labels \"org.opencontainers.image.licenses\"}}"
                ),
                "Apache-2.0"
            );
            assert!(
                inspect(
                    &tag,
                    "{{index .Labels \"org.opencontainers.image.source\"}}"
                )
                .starts_with("https://github.com/lifehook/"),
            );
            let files = files_of(&tag, platform);
            for wanted in [
                "lifehook/lifehook",
                "lifehook/plugins/notify_shutdown.wasm",
                "lifehook/plugins/release_lock.wasm",
            ] {
                assert!(files.iter().any(|f| f == wanted), "{wanted}: {files:?}");
            }
            let artifacts = files
                .iter()
                .filter(|f| f.starts_with("lifehook/cache/") && f.ends_with(".cwasm"))
                .count();
            assert_eq!(artifacts, SAMPLE_PLUGINS.len(), "{files:?}");
            let mut add = podman();
            add.args([
                "manifest",
                "add",
                &list,
                &format!("containers-storage:{tag}"),
            ]);
            checked(add);
        }
        // The amd64 image runs here: its entrypoint is lifehook.
        let mut version_of = podman_run();
        version_of.args([
            "--rm",
            &format!("localhost/lifehook-image-test:amd64{suffix}"),
            "--version",
        ]);
        let said = String::from_utf8_lossy(&checked(version_of).stdout).into_owned();
        let build = if suffix.is_empty() {
            "full"
        } else {
            "runtime-only"
        };
        assert!(
            said.contains("x86_64-unknown-linux-musl") && said.contains(build),
            "{said}"
        );

        let mut push = podman();
        push.args(["manifest", "push", "--all", "--tls-verify=false", &list])
            .arg(format!("docker://{list}"));
        checked(push);
        // What the registry now serves for the tag: an index naming both
        // platforms.
        let url = format!(
            "http://{}/v2/lifehook/lifehook/manifests/{version}{suffix}",
            registry.host()
        );
        let mut answer = http_client()
            .get(&url)
            .header(
                "Accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
            )
            .call()
            .expect("GET the manifest list");
        assert_eq!(answer.status(), 200);
        let index: serde_json::Value =
            serde_json::from_str(&answer.body_mut().read_to_string().expect("body")).expect("JSON");
        let mut platforms: Vec<String> = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap_or(""),
                    m["platform"]["architecture"].as_str().unwrap_or("")
                )
            })
            .collect();
        platforms.sort();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{index:#}");
        let _ = podman().args(["manifest", "rm", &list]).output();
    }
    registry.stop();
}

#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn image_installs_lifehook_into_a_shared_volume_that_an_unrelated_image_runs() {
    let image = "localhost/lifehook-image-test:install";
    build_lifehook_image(&built_file("LIFEHOOK_STATIC_BIN"), AMD64, image);
    let unrelated = unrelated_image();
    // The volume: the classic pre-stop's files, and lifehook installed
    // under lh/ by a container of the lifehook image (an init container).
    let server = TestServer::start();
    let s = Sandbox::new();
    classic::write(&s, Path::new("/shared/lh/plugins"), &server);
    let volume = format!("{}:/shared", s.dir.path().display());
    let mut init = podman_run();
    init.args(["--rm", "-v", &volume, image, "install", "/shared/lh"]);
    let installed = String::from_utf8_lossy(&checked(init).stdout).into_owned();
    assert!(installed.contains("wrote     lifehook"), "{installed}");
    assert!(
        installed.contains("wrote     cache/notify_shutdown-"),
        "{installed}"
    );
    // The application container: another image, lifehook only from the
    // volume.
    let mut app = podman_run();
    app.args(["--rm", "--network", "host", "-v", &volume])
        .args(["-e", "LIFEHOOK_STATE_DIR=/shared/state"])
        .args(["--entrypoint", "/shared/lh/lifehook", unrelated])
        .args(["run", "--report", "json", "-f", "/shared/lifehook.toml"])
        .args(["--cache", "/shared/lh/cache"]);
    let started = std::time::Instant::now();
    let out = app.output().expect("podman run");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    classic::assert_done(&run, &s, &server, "precompiled");
}
