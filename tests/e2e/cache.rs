//! `lifehook compile` and the artifact cache: used when it matches, ignored
//! with a warning (never trusted, never a crash) when it does not.

use std::path::PathBuf;

use crate::support::{Sandbox, plugins};

fn sandbox_with_plugin() -> Sandbox {
    let s = Sandbox::new();
    std::fs::copy(plugins::FIXTURE_HOOK, s.path("p.wasm")).expect("copy plugin");
    s.pipeline(
        "[[pre-stop.steps]]\nname = \"s\"\nplugin = \"p.wasm\"\nconfig = { mode = \"ok\" }\n",
    );
    s
}

fn artifacts(s: &Sandbox) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(s.path("cache"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn compiled_artifacts_are_used_by_run() {
    let s = sandbox_with_plugin();
    let compiled = s.lifehook(&["compile", "--cache", "cache"]);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    assert!(
        compiled.stdout.contains("hook") && compiled.stdout.contains("p.wasm"),
        "{}",
        compiled.stdout
    );
    let found = artifacts(&s);
    assert_eq!(found.len(), 1);
    // Readable by all: an image built as root runs its hook as another user.
    let mode = std::fs::metadata(&found[0])
        .expect("artifact")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o644
    );
    let run = s.run(&["--cache", "cache"]);
    let step = run.assert_outcome("s", "ok");
    assert_eq!(step["code"], "precompiled", "{step:#}");
}

#[test]
fn default_cache_is_next_to_the_pipeline() {
    let s = sandbox_with_plugin();
    let compiled = s.lifehook_with(&["compile"], |c| {
        c.env_remove("LIFEHOOK_CACHE");
    });
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    assert!(s.path(".lifehook-cache").is_dir());
    let run = s.lifehook_with(&["run", "--report", "json"], |c| {
        c.env_remove("LIFEHOOK_CACHE");
    });
    assert_eq!(run.step("s")["code"], "precompiled");
}

#[test]
fn without_an_artifact_run_compiles_and_says_so() {
    let s = sandbox_with_plugin();
    let run = s.run(&["--cache", "cache", "-v"]);
    assert_eq!(run.step("s")["code"], "compiled");
    assert!(
        run.stderr.contains("no precompiled artifact for"),
        "{}",
        run.stderr
    );
}

#[test]
fn changed_plugin_does_not_use_the_old_artifact() {
    let s = sandbox_with_plugin();
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    std::fs::copy(plugins::FIXTURE_COMMAND, s.path("p.wasm")).expect("replace plugin");
    let run = s.run(&["--cache", "cache"]);
    let step = run.assert_outcome("s", "ok");
    assert_eq!(step["kind"], "command");
    assert_eq!(step["code"], "compiled");
    // Compiling again replaces the old artifact instead of piling them up.
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    assert_eq!(artifacts(&s).len(), 1);
}

#[test]
fn truncated_artifact_is_ignored_with_a_warning() {
    let s = sandbox_with_plugin();
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    let artifact = artifacts(&s).remove(0);
    let data = std::fs::read(&artifact).expect("artifact");
    std::fs::write(&artifact, &data[..data.len() / 2]).expect("truncate");
    let run = s.run(&["--cache", "cache"]);
    let step = run.assert_outcome("s", "ok");
    assert_eq!(step["code"], "compiled");
    assert!(
        run.stderr.contains("ignoring precompiled artifact"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
}

#[test]
fn artifact_of_another_plugin_is_ignored_with_a_warning() {
    let s = sandbox_with_plugin();
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    let hook_artifact = artifacts(&s).remove(0);
    // Compile the command plugin into another cache and plant its artifact
    // under the hook plugin's name.
    std::fs::copy(plugins::FIXTURE_COMMAND, s.path("p.wasm")).expect("swap");
    assert_eq!(s.lifehook(&["compile", "--cache", "other"]).code, 0);
    let foreign = std::fs::read_dir(s.path("other"))
        .expect("dir")
        .flatten()
        .next()
        .expect("artifact")
        .path();
    std::fs::copy(plugins::FIXTURE_HOOK, s.path("p.wasm")).expect("swap back");
    std::fs::copy(&foreign, &hook_artifact).expect("plant");
    let run = s.run(&["--cache", "cache"]);
    let step = run.assert_outcome("s", "ok");
    assert_eq!(step["kind"], "hook", "ran the planted artifact");
    assert!(
        run.stderr.contains("compiled from another plugin"),
        "{}",
        run.stderr
    );
}

#[test]
fn garbage_artifact_is_ignored_with_a_warning() {
    let s = sandbox_with_plugin();
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    let artifact = artifacts(&s).remove(0);
    std::fs::write(&artifact, vec![0x5a; 4096]).expect("overwrite");
    let run = s.run(&["--cache", "cache"]);
    run.assert_outcome("s", "ok");
    assert!(
        run.stderr.contains("ignoring precompiled artifact"),
        "{}",
        run.stderr
    );
}

#[test]
fn compile_removes_writes_a_killed_process_left_behind() {
    let s = sandbox_with_plugin();
    std::fs::create_dir_all(s.path("cache")).expect("cache dir");
    s.write("cache/.tmpOLD123", "half an artifact");
    s.write("cache/.tmpNEW456", "an artifact being written");
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(s.path("cache/.tmpOLD123"))
        .and_then(|f| f.set_modified(hour_ago))
        .expect("age the file");
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    assert!(
        !s.path("cache/.tmpOLD123").exists(),
        "an hour-old temporary file is left from a killed write"
    );
    assert!(
        s.path("cache/.tmpNEW456").exists(),
        "a fresh one may be another process's write in progress"
    );
    assert_eq!(artifacts(&s).len(), 1);
}

#[test]
fn compile_reports_unusable_plugins() {
    let s = Sandbox::new();
    s.pipeline("[[pre-stop.steps]]\nname = \"o\"\nplugin = \"@other\"\n");
    let run = s.lifehook(&["compile", "--cache", "cache"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("exports neither `run`"),
        "{}",
        run.stderr
    );
    assert!(artifacts(&s).is_empty());
}

/// The smallest images carry a build without Cranelift: it runs what
/// `lifehook compile` made, and says clearly what it cannot do.
#[test]
#[ignore = "needs a `--no-default-features` build in LIFEHOOK_STATIC_SLIM_BIN; `cargo xtask test` builds one and runs this"]
fn runtime_only_build_runs_precompiled_plugins() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let binary = std::env::var_os("LIFEHOOK_STATIC_SLIM_BIN")
        .expect("set LIFEHOOK_STATIC_SLIM_BIN to a lifehook built with --no-default-features");
    let s = sandbox_with_plugin();
    let runtime_only = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&binary);
        cmd.args(args)
            .current_dir(s.dir.path())
            .env("LIFEHOOK_STATE_DIR", crate::support::fresh_state_dir());
        crate::support::run_command(cmd)
    };
    // Compiled by the full build, run by the runtime-only one.
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    let run = runtime_only(&["run", "--report", "json", "--cache", "cache"]);
    let step = run.assert_outcome("s", "ok");
    assert_eq!(step["code"], "precompiled");

    let uncompiled = runtime_only(&["run", "--report", "json", "--cache", "elsewhere"]);
    uncompiled.assert_outcome("s", "failed");
    assert!(
        uncompiled.message("s").contains("must be precompiled"),
        "{}",
        uncompiled.message("s")
    );

    let compile = runtime_only(&["compile", "--cache", "cache"]);
    assert_eq!(compile.code, 4);
    assert!(
        compile.stderr.contains("built without a compiler"),
        "{}",
        compile.stderr
    );

    // It inspects plugins without the WIT decoder: what it imports and
    // exports, and whether it runs, but no WIT text.
    let inspected = runtime_only(&["inspect", "p.wasm"]);
    assert_eq!(inspected.code, 0, "{}", inspected.stderr);
    for line in ["runs:     yes", "imports:\n", "exports:\n  run"] {
        assert!(inspected.stdout.contains(line), "{}", inspected.stdout);
    }
    assert!(!inspected.stdout.contains("wit:"), "{}", inspected.stdout);
    assert!(
        s.lifehook(&["inspect", "p.wasm"])
            .stdout
            .contains("\nwit:\n"),
        "the full build prints the WIT text"
    );

    // An OCI plugin pulled and compiled by the full build runs in the
    // runtime-only one, with the registry gone; one it would have to pull
    // is refused by name.
    let mut registry = crate::support::registry::Registry::start();
    let tag = registry.reference("hooks/runtime-only:1");
    let pushed = s.lifehook(&[
        "push",
        "p.wasm",
        &tag,
        "--insecure-registry",
        &registry.host(),
    ]);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    s.write(
        "lifehook.toml",
        format!(
            "[oci]\ninsecure-registries = [\"{}\"]\n[[pre-stop.steps]]\nname = \"s\"\nplugin = \"{tag}\"\nconfig = {{ mode = \"ok\" }}\n",
            registry.host()
        ),
    );
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    registry.stop();
    let run = runtime_only(&["run", "--report", "json", "--cache", "cache"]);
    assert_eq!(run.assert_outcome("s", "ok")["code"], "precompiled");
    let unpulled = runtime_only(&["run", "--report", "json", "--cache", "elsewhere"]);
    unpulled.assert_outcome("s", "failed");
    assert!(
        unpulled
            .message("s")
            .contains("built without registry support"),
        "{}",
        unpulled.message("s")
    );
}

#[test]
fn compiling_at_run_time_counts_against_the_step_timeout() {
    let s = Sandbox::new();
    std::fs::copy(plugins::FIXTURE_HOOK, s.path("p.wasm")).expect("copy plugin");
    s.pipeline("[[pre-stop.steps]]\nname = \"s\"\nplugin = \"p.wasm\"\ntimeout = \"20ms\"\nconfig = { mode = \"ok\" }\n");
    let run = s.run(&["--cache", "empty-cache"]);
    let step = run.assert_outcome("s", "timed-out");
    assert!(
        run.message("s").contains("was still compiling after"),
        "{}",
        run.message("s")
    );
    assert!(
        run.message("s")
            .contains("precompile it with `lifehook compile`"),
        "{}",
        run.message("s")
    );
    assert!(
        step["duration_ms"].as_u64().expect("duration") < 200,
        "{step:#}"
    );
}

#[test]
fn without_an_artifact_the_baseline_compiler_runs_it_under_every_limit_and_leaves_one() {
    let s = Sandbox::new();
    std::fs::copy(plugins::FIXTURE_HOOK, s.path("p.wasm")).expect("copy plugin");
    s.pipeline(
        "[[pre-stop.steps]]\nname = \"ok\"\nplugin = \"p.wasm\"\nconfig = { mode = \"ok\" }\n\n[[pre-stop.steps]]\nname = \"busy\"\nplugin = \"p.wasm\"\ntimeout = \"300ms\"\nfuel = \"unlimited\"\nconfig = { mode = \"busy-loop\" }\n\n[[pre-stop.steps]]\nname = \"fuel\"\nplugin = \"p.wasm\"\nfuel = 2_000_000\nconfig = { mode = \"busy-loop\" }\n",
    );
    // `busy` runs after `ok`, which waited for the compile: its 300 ms are
    // the busy loop's alone, however long compiling takes on a loaded
    // machine (a step's first attempt counts its plugin's load).
    // First run: compiled now, by the baseline compiler (no epochs: a busy
    // loop is stopped at a fuel yield, on time).
    let first = s.run(&["--cache", "cache"]);
    let busy = first.assert_outcome("busy", "timed-out");
    assert_eq!(busy["code"], "compiled", "{busy:#}");
    let took = busy["duration_ms"].as_u64().expect("duration");
    assert!(
        (300..800).contains(&took),
        "a busy loop ran {took} ms against a 300 ms timeout"
    );
    first.assert_outcome("fuel", "out-of-fuel");
    first.assert_outcome("ok", "ok");
    let baseline: Vec<PathBuf> = std::fs::read_dir(s.path("cache"))
        .expect("the run left its baseline artifact")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".baseline.cwasm"))
        .collect();
    assert_eq!(baseline.len(), 1, "{baseline:?}");
    // Second run: loads it, compiles nothing, same limits.
    let second = s.run(&["--cache", "cache"]);
    assert_eq!(second.assert_outcome("busy", "timed-out")["code"], "cached");
    second.assert_outcome("fuel", "out-of-fuel");
    assert_eq!(second.assert_outcome("ok", "ok")["code"], "cached");
    // `lifehook compile` replaces it with the optimised artifact.
    assert_eq!(s.lifehook(&["compile", "--cache", "cache"]).code, 0);
    let left = artifacts(&s);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        !left[0].to_string_lossy().contains(".baseline."),
        "{left:?}"
    );
    assert_eq!(
        s.run(&["--cache", "cache"]).step("ok")["code"],
        "precompiled"
    );
}

/// An x86-64 build machine makes an arm64 image's artifacts; here, on
/// x86-64, `run` refuses them by name, once, and compiles instead.
#[test]
fn artifacts_for_the_other_architecture_are_made_and_ignored_here_with_one_warning() {
    let s = sandbox_with_plugin();
    let made = s.lifehook(&["compile", "--target", "aarch64", "--cache", "cache"]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    assert!(made.stdout.contains("for aarch64"), "{}", made.stdout);
    let found = artifacts(&s);
    assert_eq!(found.len(), 1, "{found:?}");
    // wasmtime's artifact is an ELF file: its machine is arm64 (183).
    let bytes = std::fs::read(&found[0]).expect("artifact");
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 183);
    let run = s.run(&["--cache", "cache"]);
    let step = run.assert_outcome("s", "ok");
    assert_eq!(step["code"], "compiled", "{step:#}");
    let warning = "was compiled for aarch64 and this lifehook runs on x86_64";
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.stderr);
    // And compiled for here, it loads.
    let native = s.lifehook(&["compile", "--target", "x86_64", "--cache", "cache"]);
    assert_eq!(native.code, 0, "{}", native.stderr);
    let step = s.run(&["--cache", "cache"]).assert_outcome("s", "ok");
    assert_eq!(step["code"], "precompiled", "{step:#}");
}

/// `compile PLUGIN...` precompiles files without a pipeline, into the cache
/// it is given (and says so when it is given none).
#[test]
fn compile_takes_plugin_files_without_a_pipeline() {
    let s = sandbox_with_plugin();
    let made = s.lifehook_with(&["compile", "p.wasm", "missing.wasm"], |cmd| {
        cmd.env("LIFEHOOK_CACHE", s.path("files"));
    });
    assert_eq!(made.code, 2, "{}", made.stderr);
    assert!(
        made.stderr.contains("missing.wasm does not exist"),
        "{}",
        made.stderr
    );
    assert!(made.stdout.contains("hook    p.wasm"), "{}", made.stdout);
    let step = s.run(&["--cache", "files"]).assert_outcome("s", "ok");
    assert_eq!(step["code"], "precompiled", "{step:#}");

    let no_cache = s.lifehook_with(&["compile", "p.wasm"], |cmd| {
        cmd.env_remove("LIFEHOOK_CACHE");
    });
    assert_ne!(no_cache.code, 0);
    assert!(
        no_cache.stderr.contains("add --cache DIR"),
        "{}",
        no_cache.stderr
    );
}
