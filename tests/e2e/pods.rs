//! `lifehook check --pod`: every example manifest passes with its pipeline,
//! and a corpus of broken manifests (`pods/<case>/pod.yaml`, checked against
//! `pods/lifehook.toml` or the case's own) gets the exact errors in
//! `expected.txt`. `BLESS=1 cargo test` rewrites them after a deliberate
//! change.

use std::path::Path;

use crate::support::{Sandbox, expand, lifehook, plugins, run_command};

#[test]
fn every_example_manifest_passes_with_its_pipeline() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernetes");
    let plugin_dir = Path::new(plugins::NOTIFY_SHUTDOWN)
        .parent()
        .expect("plugin dir");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("examples").flatten() {
        let manifest = entry.path();
        if manifest.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut cmd = lifehook();
        cmd.arg("check")
            .arg("-f")
            .arg(examples.join("lifehook.toml"))
            .arg("--pod")
            .arg(&manifest)
            .env("LIFEHOOK_PLUGIN_DIR", plugin_dir);
        let run = run_command(cmd);
        assert_eq!(
            run.code,
            0,
            "{}:\n{}{}",
            manifest.display(),
            run.stdout,
            run.stderr
        );
        assert!(run.stdout.contains("preStop: ok"), "{}", run.stdout);
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} example manifests found");
}

#[test]
fn broken_manifests_get_clear_located_errors() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/pods");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .flatten()
        .map(|e| e.path())
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
        let pipeline = if case.join("lifehook.toml").is_file() {
            case.join("lifehook.toml")
        } else {
            corpus.join("lifehook.toml")
        };
        let toml = std::fs::read_to_string(&pipeline).expect("pipeline");
        s.write("lifehook.toml", expand(&toml, s.dir.path()));
        s.write(
            "pod.yaml",
            std::fs::read(case.join("pod.yaml")).expect("pod.yaml"),
        );
        let run = s.lifehook(&["check", "--pod", "pod.yaml"]);
        assert_eq!(
            run.code, 2,
            "case {name}: exit {}\n{}{}",
            run.code, run.stdout, run.stderr
        );
        let expected_file = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_file, &run.stderr).expect("bless");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if run.stderr != expected {
            failures.push(format!(
                "case {name}:\n--- expected\n{expected}\n--- actual\n{}",
                run.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
