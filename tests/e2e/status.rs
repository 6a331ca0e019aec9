//! `lifehook status`: each phase's last run in this container, whoever ran
//! it (`run`, `exec`), failed runs included, newest first, in text and JSON.

use std::path::Path;

use crate::support::{Run, Sandbox, fresh_state_dir};

const PIPELINE: &str = "\
[[post-start.steps]]
name = \"warm\"
plugin = \"@hook\"
config = { mode = \"ok\" }

[[pre-stop.steps]]
name = \"release-lock\"
plugin = \"@hook\"
on-failure = \"abort\"
config = { mode = \"fail\", message = \"lock held by web-1\" }
";

/// `lifehook <args>` with `state` as its state directory.
fn with_state(s: &Sandbox, state: &Path, args: &[&str]) -> Run {
    s.lifehook_with(args, |c| {
        c.env("LIFEHOOK_STATE_DIR", state);
    })
}

fn status_json(s: &Sandbox, state: &Path) -> serde_json::Value {
    let status = with_state(s, state, &["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    serde_json::from_str(&status.stdout).expect("status --json is JSON")
}

#[test]
fn status_shows_each_phases_last_run_failed_ones_included() {
    let s = Sandbox::new();
    s.pipeline(PIPELINE);
    let state = fresh_state_dir();
    let empty = with_state(&s, &state, &["status"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert!(
        empty.stdout.contains("no phase has run in this container"),
        "{}",
        empty.stdout
    );

    let post_start = with_state(&s, &state, &["run", "--phase", "post-start"]);
    assert_eq!(post_start.code, 0, "{}", post_start.stderr);
    let pre_stop = with_state(&s, &state, &["run"]);
    assert_eq!(pre_stop.code, 1, "{}", pre_stop.stderr);

    let json = status_json(&s, &state);
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{json}");
    // Newest first: pre-stop, failed, not completed.
    assert_eq!(runs[0]["phase"], "pre-stop");
    assert_eq!(runs[0]["by"], "run");
    assert_eq!(runs[0]["completed"], false);
    assert_eq!(runs[0]["exit_code"], 1);
    assert_eq!(runs[0]["text"], pre_stop.stdout.as_str());
    assert_eq!(runs[1]["phase"], "post-start");
    assert_eq!(runs[1]["completed"], true);
    assert_eq!(runs[1]["text"], post_start.stdout.as_str());
    assert_eq!(json["state_dir"], state.to_string_lossy().as_ref());

    let text = with_state(&s, &state, &["status"]).stdout;
    assert!(text.starts_with("lifehook status: 2 phase runs"), "{text}");
    assert!(
        text.contains("pre-stop by run, ") && text.contains("not completed"),
        "{text}"
    );
    assert!(
        text.contains("  lifehook pre-stop: ABORTED by step `release-lock`"),
        "{text}"
    );
    assert!(
        text.contains("post-start by run, ") && text.contains(", completed ("),
        "{text}"
    );

    // A retried pre-stop that now succeeds replaces the failed run.
    s.pipeline(&PIPELINE.replace(
        "mode = \"fail\", message = \"lock held by web-1\"",
        "mode = \"ok\"",
    ));
    assert_eq!(with_state(&s, &state, &["run"]).code, 0);
    let json = status_json(&s, &state);
    let pre_stops: Vec<_> = json["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["phase"] == "pre-stop" && r["completed"] == true)
        .collect();
    assert_eq!(pre_stops.len(), 1, "{json}");
}

#[test]
fn status_shows_what_exec_ran() {
    let s = Sandbox::new();
    s.pipeline(PIPELINE);
    let state = fresh_state_dir();
    let exec = with_state(&s, &state, &["exec", "--", "sh", "-c", "sleep 0.5"]);
    assert_eq!(exec.code, 0, "{}", exec.stderr);
    let json = status_json(&s, &state);
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{json}");
    assert_eq!(runs[0]["phase"], "post-start");
    assert_eq!(runs[0]["by"], "exec");
    assert_eq!(runs[0]["exit_code"], 0);
}

#[test]
fn status_names_what_it_cannot_read() {
    let s = Sandbox::new();
    let file = s.write("not-a-dir", "x");
    let run = s.lifehook(&["status", "--state-dir", &file.to_string_lossy()]);
    assert_eq!(run.code, 4, "{}", run.stdout);
    assert!(
        run.stderr.contains("cannot read the state directory") && run.stderr.contains("not-a-dir"),
        "{}",
        run.stderr
    );
    let run = s.lifehook(&["status", "-f", "missing.toml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("missing.toml"), "{}", run.stderr);
}
