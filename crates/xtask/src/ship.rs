//! What users download: the static binaries for both architectures (full
//! and runtime-only), the lifehook image per architecture joined in one
//! manifest list, and `cargo xtask dist`, which writes them all with their
//! checksums into `target/dist/`.
//!
//! Cross-building for arm64 uses Debian's `gcc-aarch64-linux-gnu` as the C
//! compiler (mimalloc, ring) and linker; Rust's own musl target brings the
//! C library, start files and unwinder, so no musl cross toolchain is
//! needed. The images are `FROM scratch` with `COPY` only, so building the
//! arm64 one needs no emulator; the tests run the arm64 binary itself under
//! `qemu-aarch64-static`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{cargo, ensure_packages, ensure_target, root, run};

/// A musl target lifehook ships for.
#[derive(Debug, Clone, Copy)]
pub struct Musl {
    /// The Rust target triple.
    pub triple: &'static str,
    /// The architecture as `lifehook compile --target` names it.
    pub arch: &'static str,
    /// The OCI platform.
    pub platform: &'static str,
    /// The environment cargo and cc read for this target: the C compiler,
    /// and the linker when it is not the host's.
    env: &'static [(&'static str, &'static str)],
}

pub const X86_64: Musl = Musl {
    triple: "x86_64-unknown-linux-musl",
    arch: "x86_64",
    platform: "linux/amd64",
    env: &[("CC_x86_64_unknown_linux_musl", "musl-gcc")],
};

pub const AARCH64: Musl = Musl {
    triple: "aarch64-unknown-linux-musl",
    arch: "aarch64",
    platform: "linux/arm64",
    env: &[
        ("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc"),
        (
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
            "aarch64-linux-gnu-gcc",
        ),
    ],
};

/// The full and the runtime-only static binary of one target.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub full: PathBuf,
    pub slim: PathBuf,
}

/// Installs what building for `target` needs: the Rust target, the C
/// compiler (and, for the tests, the emulator).
pub fn ensure_toolchain(target: Musl) -> anyhow::Result<()> {
    ensure_target(target.triple)?;
    match target.arch {
        "aarch64" => ensure_packages(&[
            ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
            ("qemu-aarch64-static", "qemu-user-static"),
        ]),
        _ => ensure_packages(&[("musl-gcc", "musl-tools")]),
    }
}

/// Builds `package`'s binaries for `target` with `profile`, `features`
/// (`None`: the defaults; `Some("")`: none); returns the directory they are in.
pub fn static_build(
    target: Musl,
    profile: &str,
    package: &str,
    features: Option<&str>,
) -> anyhow::Result<PathBuf> {
    ensure_toolchain(target)?;
    let mut cmd = cargo();
    cmd.args(["build", "--profile", profile, "--target", target.triple])
        .args(["--package", package, "--bins"]);
    if let Some(features) = features {
        cmd.arg("--no-default-features");
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
    }
    // Paths in panic messages name the project, not this machine's
    // directories: the same commit builds the same bytes anywhere.
    let home = std::env::var("CARGO_HOME")
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cargo")))
        .unwrap_or_default();
    let remap = format!(
        "--remap-path-prefix={}=/lifehook --remap-path-prefix={home}=/cargo",
        root().display()
    );
    cmd.env(
        format!(
            "CARGO_TARGET_{}_RUSTFLAGS",
            target.triple.to_uppercase().replace('-', "_")
        ),
        format!("-C relocation-model=static {remap}"),
    );
    for (key, value) in target.env {
        cmd.env(key, value);
    }
    // mimalloc's C prints `__DATE__` and `__TIME__` in its banner: GCC
    // takes them from SOURCE_DATE_EPOCH, set to the commit's time (two
    // builds of one commit otherwise differ in those 17 bytes and the
    // build id).
    if let Some(epoch) = commit_time() {
        cmd.env("SOURCE_DATE_EPOCH", epoch);
    }
    run(&mut cmd)?;
    let dir = if profile == "dev" { "debug" } else { profile };
    Ok(root().join("target").join(target.triple).join(dir))
}

/// The time of the commit checked out (seconds since the epoch), if git
/// can tell.
fn commit_time() -> Option<String> {
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root())
        .output()
        .ok()?;
    let time = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !time.is_empty()).then_some(time)
}

/// The full and the runtime-only lifehook for `target`, each copied out to
/// a name of its own (both builds write `lifehook`).
pub fn lifehook_binaries(target: Musl, profile: &str) -> anyhow::Result<Binaries> {
    let mut built = Vec::new();
    for (features, name) in [(None, "lifehook-full"), (Some(""), "lifehook-slim")] {
        let dir = static_build(target, profile, "lifehook-cli", features)?;
        let to = dir.join(name);
        std::fs::copy(dir.join("lifehook"), &to)
            .with_context(|| format!("cannot copy {}", to.display()))?;
        built.push(to);
    }
    let slim = built.pop().context("slim build")?;
    let full = built.pop().context("full build")?;
    Ok(Binaries { full, slim })
}

/// The static binaries the runtime-only, container, image and arm64 tests
/// run, each with the variable that passes it to them: x86-64 full and
/// runtime-only, the test app, arm64 full and runtime-only (the last two
/// with a profile that builds sooner: under emulation, speed is not what is
/// tested). The runtime-only x86-64 binary comes second.
pub fn test_binaries() -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let x86 = lifehook_binaries(X86_64, "static-test")?;
    let app = static_build(X86_64, "static-test", "lifehook-test-app", None)?.join("test-app");
    let arm = lifehook_binaries(AARCH64, "cross-test")?;
    Ok(vec![
        ("LIFEHOOK_STATIC_BIN", x86.full),
        ("LIFEHOOK_STATIC_SLIM_BIN", x86.slim),
        ("LIFEHOOK_STATIC_APP", app),
        ("LIFEHOOK_AARCH64_BIN", arm.full),
        ("LIFEHOOK_AARCH64_SLIM_BIN", arm.slim),
    ])
}

/// The sample plugins' `.wasm` files in `dir` (a release build of the
/// plugins workspace).
pub fn sample_plugins(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut plugins: Vec<PathBuf> = [
        "notify_shutdown",
        "save_state",
        "restore_state",
        "release_lock",
        "drain_connections",
    ]
    .iter()
    .map(|name| dir.join(format!("{name}.wasm")))
    .collect();
    plugins.sort();
    for plugin in &plugins {
        if !plugin.is_file() {
            bail!("{} was not built", plugin.display());
        }
    }
    Ok(plugins)
}

/// Lays out the context of examples/image/Containerfile in `context`:
/// `lifehook`, `plugins/`, and `cache/` with the plugins precompiled for
/// `target` by `compiler` (an x86-64 full build, which cross-compiles).
pub fn image_context(
    context: &Path,
    binary: &Path,
    plugins: &[PathBuf],
    compiler: &Path,
    target: Musl,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(context);
    std::fs::create_dir_all(context.join("plugins"))?;
    std::fs::copy(
        root().join("examples/image/Containerfile"),
        context.join("Containerfile"),
    )?;
    std::fs::copy(binary, context.join("lifehook"))?;
    let mut compile = Command::new(compiler);
    compile
        .args(["compile", "--target", target.arch, "--cache"])
        .arg(context.join("cache"));
    for plugin in plugins {
        let to = context
            .join("plugins")
            .join(plugin.file_name().context("plugin name")?);
        std::fs::copy(plugin, &to)?;
        compile.arg(to);
    }
    run(&mut compile)
}

/// `podman` with the flags this machine needs (runc: crun refuses the
/// hybrid cgroup layout; cgroupfs: no systemd).
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

/// Builds the lifehook image for `target` from `context` as `tag`.
pub fn build_image(context: &Path, target: Musl, tag: &str, version: &str) -> anyhow::Result<()> {
    run(podman()
        .args(["build", "--quiet", "--platform", target.platform])
        .args(["--build-arg", &format!("VERSION={version}")])
        .args(["-t", tag, "-f"])
        .arg(context.join("Containerfile"))
        .arg(context))
}

/// The workspace version (what the binaries say).
pub fn version() -> anyhow::Result<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .context("no version in [workspace.package]")
}

/// The image name a release publishes.
pub const IMAGE: &str = "ghcr.io/lifehook/lifehook";

/// `cargo xtask dist`: the release binaries (fat LTO) for both
/// architectures, full and slim, the images (one per architecture and
/// build, joined in one manifest list per build) as OCI archives, and
/// `SHA256SUMS`, in `target/dist/`.
pub fn dist() -> anyhow::Result<u8> {
    ensure_packages(&[("podman", "podman"), ("sha256sum", "coreutils")])?;
    let version = version()?;
    let dist = root().join("target/dist");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist)?;
    let x86 = lifehook_binaries(X86_64, "release")?;
    let arm = lifehook_binaries(AARCH64, "release")?;
    let plugins = sample_plugins(&crate::build_plugins()?)?;
    let mut files = Vec::new();
    for (target, binaries) in [(X86_64, &x86), (AARCH64, &arm)] {
        for (binary, suffix) in [(&binaries.full, ""), (&binaries.slim, "-slim")] {
            let name = format!("lifehook-{version}-{}-linux-musl{suffix}", target.arch);
            std::fs::copy(binary, dist.join(&name))?;
            files.push(name);
        }
    }
    for (suffix, pick) in [("", false), ("-slim", true)] {
        let list = format!("{IMAGE}:{version}{suffix}");
        let _ = podman().args(["manifest", "rm", &list]).output();
        run(podman().args(["manifest", "create", &list]))?;
        for (target, binaries) in [(X86_64, &x86), (AARCH64, &arm)] {
            let binary = if pick { &binaries.slim } else { &binaries.full };
            let context = root()
                .join("target/image-context")
                .join(format!("{}{suffix}", target.arch));
            image_context(&context, binary, &plugins, &x86.full, target)?;
            let tag = format!("{IMAGE}:{version}{suffix}-{}", target.arch);
            build_image(&context, target, &tag, &version)?;
            run(podman().args([
                "manifest",
                "add",
                &list,
                &format!("containers-storage:{tag}"),
            ]))?;
        }
        let archive = format!("lifehook-image-{version}{suffix}.oci.tar");
        run(podman()
            .args(["manifest", "push", "--all", &list])
            .arg(format!(
                "oci-archive:{}:{list}",
                dist.join(&archive).display()
            )))?;
        files.push(archive);
    }
    let sums = Command::new("sha256sum")
        .args(&files)
        .current_dir(&dist)
        .output()
        .context("cannot run sha256sum")?;
    if !sums.status.success() {
        bail!("sha256sum failed");
    }
    std::fs::write(dist.join("SHA256SUMS"), &sums.stdout)?;
    print!("{}", String::from_utf8_lossy(&sums.stdout));
    println!("wrote {}", dist.display());
    Ok(0)
}
