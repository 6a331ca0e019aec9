//! A corpus of malformed pipelines (`corpus/<case>/lifehook.toml`), each
//! checked against the exact error it must produce (`expected.txt`).
//! `BLESS=1 cargo test` rewrites the expected files after a deliberate change.

use std::path::Path;

use crate::support::{Sandbox, expand, plugins};

fn normalize(text: &str, sandbox: &Path) -> String {
    text.replace(&sandbox.to_string_lossy().into_owned(), "$DIR")
        .replace(plugins::FIXTURE_HOOK, "@hook")
}

#[test]
fn malformed_pipelines_get_clear_located_errors() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/corpus");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .expect("corpus directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "the corpus went missing");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let s = Sandbox::new();
        let toml = std::fs::read_to_string(case.join("lifehook.toml")).expect("case pipeline");
        s.write("lifehook.toml", expand(&toml, s.dir.path()));
        let run = s.lifehook(&["check"]);
        assert_eq!(
            run.code, 2,
            "case {name}: exit code {}\n{}",
            run.code, run.stderr
        );
        assert!(
            run.stdout.is_empty(),
            "case {name}: stdout {:?}",
            run.stdout
        );
        let actual = normalize(&run.stderr, s.dir.path());
        let expected_file = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_file, &actual).expect("bless");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "case {name}:\n--- expected\n{expected}\n--- actual\n{actual}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with BLESS=1 after a deliberate change)",
        failures.join("\n")
    );
}

#[test]
fn errors_name_file_line_and_column() {
    let s = Sandbox::new();
    s.pipeline("[[pre-stop.steps]]\nname = \"a\"\nplugin = \"@hook\"\ntimeout = \"soon\"\n");
    let run = s.lifehook(&["run"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(" --> lifehook.toml:4:11"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("invalid duration \"soon\""),
        "{}",
        run.stderr
    );
}

#[test]
fn check_lists_every_unusable_plugin() {
    let s = Sandbox::new();
    s.write("script.wasm", "#!/bin/sh\necho hi\n");
    // The smallest valid core module: magic and version, no sections.
    s.write("core.wasm", b"\0asm\x01\0\0\0");
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "script"
plugin = "script.wasm"

[[pre-stop.steps]]
name = "core"
plugin = "core.wasm"

[[pre-stop.steps]]
name = "other"
plugin = "@other"

[[pre-stop.steps]]
name = "fine"
plugin = "@hook"
"#,
    );
    let run = s.lifehook(&["check"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("script.wasm is not a WebAssembly file"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("core.wasm is a core WebAssembly module lifehook cannot run"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("exports neither `run` (the lifehook:hook world) nor `wasi:cli/run` (a command); it exports: hello"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("3 problems found"), "{}", run.stderr);
    assert!(run.stdout.contains("fine (hook "), "{}", run.stdout);
}

#[test]
fn unusable_plugin_fails_its_step_at_run_time() {
    let s = Sandbox::new();
    s.write("core.wasm", b"\0asm\x01\0\0\0");
    s.pipeline(
        "[[pre-stop.steps]]\nname = \"core\"\nplugin = \"core.wasm\"\non-failure = \"abort\"\n",
    );
    let run = s.run(&[]);
    assert_eq!(run.code, 1);
    run.assert_outcome("core", "failed");
    assert!(
        run.message("core")
            .contains("or as a component for wasm32-wasip2"),
        "{}",
        run.message("core")
    );
}

/// Hostile files through the real binary: each rejected with exit code 2
/// and a location, within a second.
#[test]
fn hostile_pipeline_files_exit_2_with_a_location_in_time() {
    let mut chain = String::new();
    for i in 0..3_000 {
        chain += &format!(
            "[[pre-stop.steps]]\nname = \"s{i}\"\nsleep = \"1s\"\nneeds = [\"s{}\"]\n",
            (i + 1) % 3_000
        );
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "deep arrays",
            format!("a = {}", "[".repeat(100_000)).into_bytes(),
        ),
        (
            "deep tables",
            format!("a = {}", "{b = ".repeat(100_000)).into_bytes(),
        ),
        (
            "long dotted key",
            format!("{}= 1", "a.".repeat(50_000)).into_bytes(),
        ),
        (
            "not UTF-8",
            b"[pre-stop]\ndeadline = \"5s\"\n\xff\xfe = 1\n".to_vec(),
        ),
        (
            "a NUL byte",
            b"[pre-stop]\ndeadline = \"5\x00s\"\n".to_vec(),
        ),
        ("a 3000-step cycle", chain.into_bytes()),
        (
            "only a BOM",
            b"\xef\xbb\xbf[[pre-stop.steps]]\nname = 1\n".to_vec(),
        ),
    ];
    for (name, bytes) in cases {
        let s = Sandbox::new();
        s.write("lifehook.toml", bytes);
        let run = s.lifehook(&["check"]);
        assert_eq!(run.code, 2, "{name}: exit {}\n{}", run.code, run.stderr);
        assert!(
            run.stderr.contains("--> lifehook.toml:"),
            "{name}: no location:\n{}",
            run.stderr
        );
        assert!(
            run.elapsed.as_millis() < 1000,
            "{name}: took {:?}",
            run.elapsed
        );
    }
}
