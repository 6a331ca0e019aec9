//! Retries: only retryable failures, with growing backoff, honouring a
//! plugin's retry-after, never past the phase deadline.

use crate::support::Sandbox;

#[test]
fn retryable_failure_is_retried_with_backoff_until_it_succeeds() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "flaky"
plugin = "@hook"
retries = { attempts = 4, backoff = "100ms", multiplier = 2.0 }
config = { mode = "flaky", succeed-at = 3 }
"#,
    );
    let run = s.run(&[]);
    let step = run.assert_outcome("flaky", "ok");
    assert_eq!(step["attempts"], 3);
    assert_eq!(step["message"], "succeeded on attempt 3");
    // Waits of 100 ms and 200 ms between the three attempts.
    let took = step["duration_ms"].as_u64().expect("duration");
    assert!((300..800).contains(&took), "took {took} ms");
}

#[test]
fn retries_give_up_after_the_last_attempt() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "flaky"
plugin = "@hook"
retries = { attempts = 2, backoff = "10ms" }
config = { mode = "flaky", succeed-at = 5 }
"#,
    );
    let run = s.run(&[]);
    let step = run.assert_outcome("flaky", "failed");
    assert_eq!(step["attempts"], 2);
    assert!(
        run.message("flaky").contains("gave up after 2 attempts"),
        "{}",
        run.message("flaky")
    );
}

#[test]
fn fatal_failure_is_not_retried() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "fatal"
plugin = "@hook"
retries = { attempts = 5, backoff = "10ms" }
config = { mode = "fail", message = "bad config", retryable = false }
"#,
    );
    let run = s.run(&[]);
    let step = run.assert_outcome("fatal", "failed");
    assert_eq!(step["attempts"], 1);
    assert_eq!(step["message"], "bad config");
}

#[test]
fn retry_after_from_the_plugin_sets_the_wait() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "later"
plugin = "@hook"
retries = { attempts = 2, backoff = "10ms" }
config = { mode = "fail", message = "busy", retry-after-ms = 600 }
"#,
    );
    let run = s.run(&[]);
    let step = run.assert_outcome("later", "failed");
    assert_eq!(step["attempts"], 2);
    let took = step["duration_ms"].as_u64().expect("duration");
    assert!(took >= 600, "the wait ignored retry-after: {took} ms");
}

#[test]
fn no_retry_when_the_wait_would_pass_the_deadline() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[pre-stop]
deadline = "2s"

[[pre-stop.steps]]
name = "later"
plugin = "@hook"
retries = { attempts = 3, backoff = "10ms" }
config = { mode = "fail", message = "busy", retry-after-ms = 30000 }
"#,
    );
    let run = s.run(&[]);
    let step = run.assert_outcome("later", "failed");
    assert_eq!(step["attempts"], 1);
    assert!(
        run.message("later").contains("after the phase deadline"),
        "{}",
        run.message("later")
    );
    assert!(run.elapsed.as_millis() < 1500, "took {:?}", run.elapsed);
}

/// WASI 0.2's `exit` carries success or failure only (unless the guest
/// imports `exit-with-code`, which Rust's std does not yet), so
/// `process::exit(3)` arrives as 1.
#[test]
fn command_exit_code_fails_and_is_retried() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "cmd"
plugin = "@command"
args = ["--exit", "3"]
retries = { attempts = 2, backoff = "10ms" }
"#,
    );
    let run = s.run(&[]);
    let step = run.assert_outcome("cmd", "failed");
    assert_eq!(step["attempts"], 2);
    assert_eq!(step["kind"], "command");
    assert!(
        run.message("cmd")
            .contains("exited with code 1: fixture-command exiting with 3"),
        "{}",
        run.message("cmd")
    );
}
