//! podman as the tests drive it, and the lifehook image
//! (examples/image/Containerfile) built from the static binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::plugins;

/// `podman` with the flags this machine needs (runc: crun refuses the
/// hybrid cgroup layout; cgroupfs: no systemd).
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd.stdin(Stdio::null());
    cmd
}

/// `podman run` with the limits this sandbox allows (podman's defaults ask
/// for more open files and processes than it may grant).
pub fn podman_run() -> Command {
    let mut cmd = podman();
    cmd.args([
        "run",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    cmd
}

/// Runs `cmd`, failing the test with its output when it fails.
pub fn checked(mut cmd: Command) -> Output {
    let out = cmd.output().expect("run podman");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The path in the environment variable `var`, which `cargo xtask test`
/// sets to a binary it built.
pub fn built_file(var: &str) -> PathBuf {
    let path =
        std::env::var_os(var).unwrap_or_else(|| panic!("set {var} (cargo xtask test builds it)"));
    PathBuf::from(path)
}

/// The sample plugins the lifehook image carries.
pub const SAMPLE_PLUGINS: [&str; 5] = [
    plugins::NOTIFY_SHUTDOWN,
    plugins::SAVE_STATE,
    plugins::RESTORE_STATE,
    plugins::RELEASE_LOCK,
    plugins::DRAIN_CONNECTIONS,
];

/// An OCI platform and the architecture `lifehook compile --target` names
/// for it.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    pub os_arch: &'static str,
    pub arch: &'static str,
    pub oci_arch: &'static str,
}

pub const AMD64: Platform = Platform {
    os_arch: "linux/amd64",
    arch: "x86_64",
    oci_arch: "amd64",
};

pub const ARM64: Platform = Platform {
    os_arch: "linux/arm64",
    arch: "aarch64",
    oci_arch: "arm64",
};

/// Builds the lifehook image for `platform` from `binary` as `tag`, the way
/// `cargo xtask dist` does: the sample plugins, precompiled for the
/// platform by the x86-64 binary under test (cross-compiling for arm64),
/// and only COPY steps (no emulator for the arm64 image).
pub fn build_lifehook_image(binary: &Path, platform: Platform, tag: &str) {
    let context = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("lifehook-image")
        .join(tag.replace(['/', ':'], "_"));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(context.join("plugins")).expect("context dir");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/image/Containerfile");
    std::fs::copy(recipe, context.join("Containerfile")).expect("Containerfile");
    std::fs::copy(binary, context.join("lifehook")).expect("binary");
    let mut compile = Command::new(env!("CARGO_BIN_EXE_lifehook"));
    compile
        .args(["compile", "--target", platform.arch, "--cache"])
        .arg(context.join("cache"));
    for plugin in SAMPLE_PLUGINS {
        let to = context
            .join("plugins")
            .join(Path::new(plugin).file_name().expect("name"));
        std::fs::copy(plugin, &to).expect("plugin");
        compile.arg(to);
    }
    let compiled = super::quiet(&mut compile)
        .output()
        .expect("run lifehook compile");
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let mut build = podman();
    build
        .args(["build", "--quiet", "--platform", platform.os_arch])
        .args([
            "--build-arg",
            &format!("VERSION={}", env!("CARGO_PKG_VERSION")),
        ])
        .args(["-t", tag, "-f"])
        .arg(context.join("Containerfile"))
        .arg(&context);
    checked(build);
}

/// The name examples/container/Containerfile and examples/kubernetes/Dockerfile
/// copy from (a release publishes it); the tests tag their local build so.
pub const RELEASE_IMAGE: &str = "ghcr.io/lifehook/lifehook:0.1";

/// The lifehook image of the x86-64 static binary, tagged [`RELEASE_IMAGE`]
/// as a release publishes it; built once per test process.
pub fn release_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        build_lifehook_image(&built_file("LIFEHOOK_STATIC_BIN"), AMD64, RELEASE_IMAGE);
    });
    RELEASE_IMAGE
}

/// An image with nothing of lifehook in it, only the test app at
/// /app/test-app (its entrypoint); built once per test process.
pub fn unrelated_image() -> &'static str {
    const IMAGE: &str = "localhost/lifehook-test-unrelated:latest";
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let context = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("unrelated-context");
        let _ = std::fs::remove_dir_all(&context);
        std::fs::create_dir_all(&context).expect("context");
        std::fs::copy(built_file("LIFEHOOK_STATIC_APP"), context.join("test-app")).expect("app");
        std::fs::write(
            context.join("Containerfile"),
            "FROM scratch\nCOPY test-app /app/test-app\nENTRYPOINT [\"/app/test-app\"]\n",
        )
        .expect("Containerfile");
        let mut build = podman();
        build.args(["build", "--quiet", "-t", IMAGE]).arg(&context);
        checked(build);
    });
    IMAGE
}
