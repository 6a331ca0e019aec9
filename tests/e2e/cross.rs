//! The arm64 static binaries, cross-built on this x86-64 machine, run under
//! `qemu-aarch64-static` (user-mode emulation: no privileges, no binfmt) on
//! artifacts the x86-64 binary cross-compiled with `compile --target
//! aarch64`. Emulated, so times say nothing here; what is checked is that
//! every step runs, from precompiled code, and that an artifact of the
//! wrong architecture is refused by name rather than loaded.
//!
//! Ignored by a plain `cargo test`: `cargo xtask test` builds the binaries
//! and passes them in `LIFEHOOK_AARCH64_BIN` and `LIFEHOOK_AARCH64_SLIM_BIN`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::http::TestServer;
use crate::support::{Run, Sandbox, classic, plugins, require_binary, run_command};

fn arm64_binary(var: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(var).unwrap_or_else(|| panic!("set {var} (cargo xtask test builds it)")),
    )
}

/// `binary args` under qemu, in `s`.
fn emulated(binary: &Path, s: &Sandbox, args: &[&str]) -> Run {
    let mut cmd = Command::new(require_binary("qemu-aarch64-static", "qemu-user-static"));
    cmd.arg(binary)
        .args(args)
        .current_dir(s.dir.path())
        .env("LIFEHOOK_STATE_DIR", crate::support::fresh_state_dir());
    run_command(cmd)
}

/// A sandbox with the classic pre-stop, its plugins copied into
/// `plugins/`.
fn classic_sandbox(server: &TestServer) -> Sandbox {
    let s = Sandbox::new();
    for plugin in [
        plugins::NOTIFY_SHUTDOWN,
        plugins::SAVE_STATE,
        plugins::RELEASE_LOCK,
    ] {
        let name = Path::new(plugin).file_name().expect("name");
        s.write(
            &format!("plugins/{}", name.to_string_lossy()),
            std::fs::read(plugin).expect("plugin"),
        );
    }
    classic::write(&s, &s.path("plugins"), server);
    s
}

#[test]
#[ignore = "needs the arm64 builds and qemu-aarch64-static: `cargo xtask test` runs it"]
fn cross_arm64_binaries_run_the_classic_pre_stop_from_cross_compiled_artifacts() {
    let server = TestServer::start();
    let s = classic_sandbox(&server);
    let compiled = s.lifehook(&["compile", "--target", "aarch64", "--cache", "arm64"]);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    assert!(
        compiled.stdout.contains("for aarch64"),
        "{}",
        compiled.stdout
    );
    for (var, build) in [
        ("LIFEHOOK_AARCH64_BIN", "full: compiles plugins"),
        (
            "LIFEHOOK_AARCH64_SLIM_BIN",
            "runtime-only: runs precompiled plugins",
        ),
    ] {
        let binary = arm64_binary(var);
        let version = emulated(&binary, &s, &["--version"]);
        assert_eq!(
            version.stdout.trim(),
            format!(
                "lifehook {} (aarch64-unknown-linux-musl, {build})",
                env!("CARGO_PKG_VERSION")
            )
        );
        // A fresh lock and no snapshot for each binary.
        s.write("locks/leader.lock", "pod-0\n");
        for entry in std::fs::read_dir(s.path("snapshots"))
            .expect("snapshots")
            .flatten()
        {
            std::fs::remove_file(entry.path()).expect("remove snapshot");
        }
        let run = emulated(
            &binary,
            &s,
            &["run", "--report", "json", "--cache", "arm64"],
        );
        classic::assert_done(&run, &s, &server, "precompiled");
        assert!(
            !run.stderr.contains("ignoring"),
            "{var}: an artifact was refused:\n{}",
            run.stderr
        );
    }
}

/// A pipeline of one step whose plugin does nothing: the smallest the arm64
/// build's baseline compiler can compile under emulation (an unoptimised
/// build, so seconds here).
fn noop_sandbox() -> Sandbox {
    let s = Sandbox::new();
    s.write(
        "p.wasm",
        std::fs::read(plugins::FIXTURE_NOOP).expect("plugin"),
    );
    s.write(
        "lifehook.toml",
        "[[pre-stop.steps]]\nname = \"s\"\nplugin = \"p.wasm\"\ntimeout = \"120s\"\n\n[pre-stop]\ndeadline = \"150s\"\n",
    );
    s
}

#[test]
#[ignore = "needs the arm64 builds and qemu-aarch64-static: `cargo xtask test` runs it"]
fn cross_an_artifact_for_the_other_architecture_is_ignored_with_a_warning() {
    let s = noop_sandbox();
    // An x86-64 artifact, given to the arm64 binary: one warning, then its
    // baseline compiler compiles the plugin.
    let native = s.lifehook(&["compile", "--cache", "x86"]);
    assert_eq!(native.code, 0, "{}", native.stderr);
    let run = emulated(
        &arm64_binary("LIFEHOOK_AARCH64_BIN"),
        &s,
        &["run", "--report", "json", "--cache", "x86"],
    );
    let step = run.assert_outcome("s", "ok");
    assert_eq!(step["code"], "compiled", "{step:#}");
    let warning = "was compiled for x86_64 and this lifehook runs on aarch64";
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.stderr);

    // The runtime-only arm64 binary cannot compile: the step fails, saying
    // why, and the artifact is still not loaded.
    let slim = emulated(
        &arm64_binary("LIFEHOOK_AARCH64_SLIM_BIN"),
        &s,
        &["run", "--report", "json", "--cache", "x86"],
    );
    slim.assert_outcome("s", "failed");
    assert!(slim.stderr.contains(warning), "{}", slim.stderr);
    assert!(
        slim.message("s").contains("must be precompiled"),
        "{}",
        slim.message("s")
    );

    // With the artifact compiled for it, the runtime-only binary runs it.
    let arm = s.lifehook(&["compile", "--target", "arm64", "--cache", "arm64"]);
    assert_eq!(arm.code, 0, "{}", arm.stderr);
    let fixed = emulated(
        &arm64_binary("LIFEHOOK_AARCH64_SLIM_BIN"),
        &s,
        &["run", "--report", "json", "--cache", "arm64"],
    );
    let step = fixed.assert_outcome("s", "ok");
    assert_eq!(step["code"], "precompiled", "{step:#}");
}
