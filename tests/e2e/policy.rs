//! on-failure = abort vs continue, concurrent groups, and exit codes.

use std::time::Duration;

use crate::support::Sandbox;

const THREE_STEPS: &str = r#"
[[pre-stop.steps]]
name = "first"
plugin = "@hook"
config = { mode = "ok" }

[[pre-stop.steps]]
name = "breaks"
plugin = "@hook"
on-failure = "POLICY"
config = { mode = "fail", message = "broken" }

[[pre-stop.steps]]
name = "last"
plugin = "@hook"
config = { mode = "ok" }
"#;

#[test]
fn abort_skips_the_remaining_steps_and_exits_1() {
    let s = Sandbox::new();
    s.pipeline(&THREE_STEPS.replace("POLICY", "abort"));
    let run = s.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.report()["aborted_by"], "breaks");
    run.assert_outcome("first", "ok");
    run.assert_outcome("breaks", "failed");
    let last = run.assert_outcome("last", "skipped");
    assert!(
        last["message"]
            .as_str()
            .unwrap_or("")
            .contains("step `breaks` failed")
    );
}

#[test]
fn continue_runs_the_remaining_steps_and_exits_0() {
    let s = Sandbox::new();
    s.pipeline(&THREE_STEPS.replace("POLICY", "continue"));
    let run = s.run(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.assert_outcome("breaks", "failed");
    run.assert_outcome("last", "ok");
}

#[test]
fn text_report_leads_with_the_verdict() {
    let s = Sandbox::new();
    s.pipeline(&THREE_STEPS.replace("POLICY", "abort"));
    let run = s.lifehook(&["run"]);
    assert_eq!(run.code, 1);
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(
            "lifehook pre-stop: ABORTED by step `breaks` - 1 ok, 1 failed, 1 skipped in "
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("failed        breaks"),
        "{}",
        run.stdout
    );
}

#[test]
fn concurrent_steps_run_at_the_same_time() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "a"
plugin = "@hook"
concurrent = true
config = { mode = "sleep", duration = "700ms" }

[[pre-stop.steps]]
name = "b"
plugin = "@hook"
concurrent = true
config = { mode = "sleep", duration = "700ms" }

[[pre-stop.steps]]
name = "after"
plugin = "@hook"
config = { mode = "ok" }
"#,
    );
    let run = s.run(&[]);
    for name in ["a", "b", "after"] {
        run.assert_outcome(name, "ok");
    }
    let total = Duration::from_millis(run.report()["duration_ms"].as_u64().expect("duration"));
    assert!(
        total < Duration::from_millis(1300),
        "the two 700ms steps ran one after the other: {total:?}"
    );
}
