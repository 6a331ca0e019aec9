//! WASI preview-1 command modules as plugins, built from C source here with
//! Debian's clang-16 and wasi-libc: adapted by lifehook itself into command
//! components, then run like any plugin (grants, args, env, exit codes,
//! timeouts, fuel); a reactor and a module with an import the adapter does
//! not provide are refused with what to build instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Run, Sandbox};

/// Compiles `tests/preview1/<source>` into `dir/<out>` with clang-16 for
/// wasm32-wasi (preview 1); `extra` flags beside the defaults.
pub fn build_c(source: &str, dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let clang = crate::support::require_binary("clang-16", "clang-16");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/preview1")
        .join(source);
    let wasm = dir.join(out);
    let status = Command::new(clang)
        .args(["--target=wasm32-wasi", "-O2"])
        .args(extra)
        .arg("-o")
        .arg(&wasm)
        .arg(&src)
        .status()
        .expect("run clang-16");
    assert!(status.success(), "clang-16 could not build {source}");
    wasm
}

/// A sandbox with the probe module and a one-step pre-stop running it.
fn probe(step: &str) -> Sandbox {
    let s = Sandbox::new();
    build_c("probe.c", s.dir.path(), "probe.wasm", &[]);
    std::fs::create_dir_all(s.path("out")).expect("out dir");
    s.pipeline(&format!(
        r#"
[pre-stop]
deadline = "20s"

[[pre-stop.steps]]
name = "probe"
plugin = "probe.wasm"
allow.dirs = [{{ host = "out", guest = "/out", access = "read-write" }}]
{step}
"#
    ));
    s
}

fn run(s: &Sandbox) -> Run {
    s.lifehook(&["run", "--report", "json"])
}

macro_rules! require_clang {
    () => {
        crate::support::require_server!("clang-16", "clang-16"; "wasm-ld-16", "lld-16");
    };
}

#[test]
fn a_c_command_writes_into_its_grant_with_its_args_and_env() {
    require_clang!();
    let s = probe(
        r#"args = ["first", "two words"]
env = { MODE = "write", WHO = "web-0" }"#,
    );
    let run = run(&s);
    let step = run.assert_outcome("probe", "ok");
    assert_eq!(step["kind"], "command");
    assert_eq!(
        std::fs::read_to_string(s.path("out/probe.txt")).expect("written"),
        "argv0=probe who=web-0 arg=first arg=two words\n"
    );
}

#[test]
fn a_path_outside_every_grant_is_denied_and_reported() {
    require_clang!();
    let s = probe(r#"env = { MODE = "outside" }"#);
    let run = run(&s);
    let step = run.assert_outcome("probe", "denied");
    let denials = step["denials"].to_string();
    assert!(denials.contains("/etc/hostname"), "{denials}");
}

#[test]
fn it_times_out_and_runs_out_of_fuel_like_any_plugin() {
    require_clang!();
    let s = probe("env = { MODE = \"spin\" }\ntimeout = \"1s\"\nfuel = \"unlimited\"");
    run(&s).assert_outcome("probe", "timed-out");
    let s = probe("env = { MODE = \"spin\" }\nfuel = 5000000");
    run(&s).assert_outcome("probe", "out-of-fuel");
}

/// The preview-1 adapter passes only success or failure to `wasi:cli/exit`
/// (`proc_exit(3)` becomes `exit(err)`), so the code is reported as 1, as
/// for any WASI 0.2 command; the plugin's last stderr line is quoted.
#[test]
fn exit_3_fails_the_step() {
    require_clang!();
    let s = probe(r#"env = { MODE = "exit" }"#);
    let run = run(&s);
    run.assert_outcome("probe", "failed");
    let message = run.message("probe");
    assert!(
        message.contains("exited with code 1") && message.contains("giving up with 3"),
        "{message}"
    );
}

#[test]
fn inspect_and_check_know_a_preview1_command() {
    require_clang!();
    let s = probe("env = { MODE = \"write\" }\nallow.http = [\"http://127.0.0.1:9\"]");
    let inspect = s.lifehook(&["inspect", "probe.wasm"]);
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    assert!(
        inspect
            .stdout
            .contains("kind:     preview-1 command, adapted"),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect.stdout.contains("wasi:cli/run@0.2"),
        "{}",
        inspect.stdout
    );
    let check = s.lifehook(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        check
            .stderr
            .contains("preview 1 has no sockets, so its allow.http grants do nothing"),
        "{}",
        check.stderr
    );
}

#[test]
fn a_reactor_and_an_unknown_import_are_refused_with_what_to_build() {
    require_clang!();
    let s = Sandbox::new();
    build_c(
        "reactor.c",
        s.dir.path(),
        "reactor.wasm",
        &["-mexec-model=reactor"],
    );
    build_c("foreign.c", s.dir.path(), "foreign.wasm", &[]);
    for (plugin, wanted) in [
        ("reactor.wasm", "is a WASI preview-1 reactor"),
        (
            "foreign.wasm",
            "it imports `mystery` from `env`, which the WASI preview-1 adapter does not provide",
        ),
    ] {
        s.pipeline(&format!(
            "[[pre-stop.steps]]\nname = \"p\"\nplugin = \"{plugin}\"\n"
        ));
        let check = s.lifehook(&["check"]);
        assert_eq!(check.code, 2, "{plugin}: {}", check.stderr);
        assert!(check.stderr.contains(wanted), "{plugin}: {}", check.stderr);
        let inspect = s.lifehook(&["inspect", plugin]);
        assert!(
            inspect.stderr.contains(wanted),
            "{plugin}: {}",
            inspect.stderr
        );
    }
}

#[test]
fn the_c_scaffold_builds_checks_and_runs() {
    require_clang!();
    let s = Sandbox::new();
    let made = s.lifehook(&["new", "cleanup", "--lang", "c"]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let build = Command::new(s.path("cleanup/build.sh"))
        .status()
        .expect("run build.sh");
    assert!(build.success());
    std::fs::create_dir_all(s.path("cleanup/state")).expect("state dir");
    let dir = s.path("cleanup");
    let check = crate::support::run_command({
        let mut c = crate::support::lifehook();
        c.arg("check").current_dir(&dir);
        c
    });
    assert_eq!(check.code, 0, "{}", check.stderr);
    let ran = crate::support::run_command({
        let mut c = crate::support::lifehook();
        c.args(["run", "--report", "json"]).current_dir(&dir);
        c
    });
    ran.assert_outcome("cleanup", "ok");
    assert_eq!(
        std::fs::read_to_string(dir.join("state/cleanup.txt")).expect("written"),
        "cleanup: stopping, the cluster\n"
    );
}

/// A preview-1 module published with `lifehook push` is pulled, pinned,
/// adapted and run like a component from a registry.
#[test]
fn a_pushed_preview1_module_runs_from_a_registry() {
    require_clang!();
    crate::support::require_server!("docker-registry", "docker-registry");
    let registry = crate::support::registry::Registry::start();
    let s = Sandbox::new();
    build_c("probe.c", s.dir.path(), "probe.wasm", &[]);
    std::fs::create_dir_all(s.path("out")).expect("out dir");
    let tag = registry.reference("hooks/probe:1");
    let pushed = s.lifehook(&[
        "push",
        "probe.wasm",
        &tag,
        "--insecure-registry",
        &registry.host(),
    ]);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    s.pipeline(&format!(
        r#"
[oci]
insecure-registries = ["{host}"]

[[pre-stop.steps]]
name = "probe"
plugin = "{tag}"
env = {{ MODE = "write", WHO = "oci" }}
allow.dirs = [{{ host = "out", guest = "/out", access = "read-write" }}]
"#,
        host = registry.host()
    ));
    let compiled = s.lifehook(&["compile", "--cache", "cache"]);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    let run = s.lifehook(&["run", "--report", "json", "--cache", "cache"]);
    let step = run.assert_outcome("probe", "ok");
    assert_eq!(step["code"], "precompiled");
    assert!(
        std::fs::read_to_string(s.path("out/probe.txt"))
            .expect("written")
            .contains("who=oci")
    );
}

/// What `lifehook compile` left for an adapted module runs under the
/// runtime-only build, which cannot adapt or compile.
#[test]
#[ignore = "needs a `--no-default-features` build in LIFEHOOK_STATIC_SLIM_BIN; `cargo xtask test` builds one and runs this"]
fn runtime_only_runs_an_adapted_preview1_artifact() {
    require_clang!();
    let binary = std::env::var_os("LIFEHOOK_STATIC_SLIM_BIN")
        .expect("set LIFEHOOK_STATIC_SLIM_BIN to a lifehook built with --no-default-features");
    let s = probe("env = { MODE = \"write\", WHO = \"slim\" }");
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    let slim = |args: &[&str]| {
        let mut cmd = Command::new(&binary);
        cmd.args(args)
            .current_dir(s.dir.path())
            .env("LIFEHOOK_STATE_DIR", crate::support::fresh_state_dir());
        crate::support::run_command(cmd)
    };
    let run = slim(&["run", "--report", "json", "--cache", "cache"]);
    let step = run.assert_outcome("probe", "ok");
    assert_eq!(step["code"], "precompiled");
    assert!(
        std::fs::read_to_string(s.path("out/probe.txt"))
            .expect("written")
            .contains("who=slim")
    );
    let uncompiled = slim(&["run", "--report", "json", "--cache", "elsewhere"]);
    uncompiled.assert_outcome("probe", "failed");
    assert!(
        uncompiled.message("probe").contains("must be precompiled"),
        "{}",
        uncompiled.message("probe")
    );
}
