//! The step graph: `needs`, `always` with its reserve, `sleep` steps,
//! `max-concurrency`, and selecting steps by name and tag. Order is read
//! from the report's `started_ms` and `duration_ms`, never from wall-clock
//! thresholds tighter than the scenario's own sleeps.

use serde_json::Value;

use crate::support::{Run, Sandbox};

fn started(step: &Value) -> u64 {
    step["started_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("not started: {step:#}"))
}

fn ended(step: &Value) -> u64 {
    started(step) + step["duration_ms"].as_u64().expect("duration")
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn run(toml: &str, extra: &[&str]) -> Run {
    let s = Sandbox::new();
    s.pipeline(toml);
    s.run(extra)
}

#[test]
fn a_diamond_runs_its_middle_concurrently_and_joins() {
    let run = run(
        r#"
[[pre-stop.steps]]
name = "a"
plugin = "@hook"
config = { mode = "sleep", duration = "300ms" }

[[pre-stop.steps]]
name = "b"
plugin = "@hook"
needs = ["a"]
config = { mode = "sleep", duration = "400ms" }

[[pre-stop.steps]]
name = "c"
plugin = "@hook"
needs = ["a"]
config = { mode = "sleep", duration = "400ms" }

[[pre-stop.steps]]
name = "d"
plugin = "@hook"
needs = ["b", "c"]
config = { mode = "ok" }
"#,
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| run.assert_outcome(n, "ok"));
    assert!(
        started(&b) >= ended(&a) && started(&c) >= ended(&a),
        "{a:#}\n{b:#}\n{c:#}"
    );
    // b and c overlap: each starts before the other ends.
    assert!(
        started(&c) < ended(&b) && started(&b) < ended(&c),
        "{b:#}\n{c:#}"
    );
    assert!(started(&d) >= ended(&b).max(ended(&c)), "{d:#}");
    assert_eq!(names(&d["waited_for"]), ["b", "c"]);
    assert_eq!(names(&b["waited_for"]), ["a"]);
}

#[test]
fn a_failed_need_skips_its_dependants_but_not_an_always_step() {
    let run = run(
        r#"
[[pre-stop.steps]]
name = "save"
plugin = "@hook"
config = { mode = "fail", message = "disk full" }

[[pre-stop.steps]]
name = "upload"
plugin = "@hook"
needs = ["save"]
config = { mode = "ok" }

[[pre-stop.steps]]
name = "announce"
plugin = "@hook"
needs = ["upload"]
config = { mode = "ok" }

[[pre-stop.steps]]
name = "release"
plugin = "@hook"
needs = ["upload"]
always = true
config = { mode = "ok" }
"#,
        &[],
    );
    assert_eq!(run.code, 0, "continue is the default: {}", run.stderr);
    run.assert_outcome("save", "failed");
    assert_eq!(
        run.message("upload"),
        "skipped: it needs `save`, which failed"
    );
    assert_eq!(
        run.message("announce"),
        "skipped: it needs `upload`, which was skipped"
    );
    run.assert_outcome("release", "ok");
}

#[test]
fn abort_skips_the_rest_but_always_steps_run_and_the_exit_code_stays_1() {
    let run = run(
        r#"
[[pre-stop.steps]]
name = "breaks"
plugin = "@hook"
on-failure = "abort"
config = { mode = "fail", message = "broken" }

[[pre-stop.steps]]
name = "skipped"
plugin = "@hook"
config = { mode = "ok" }

[[pre-stop.steps]]
name = "cleanup"
plugin = "@hook"
always = true
config = { mode = "ok" }
"#,
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    run.assert_outcome("skipped", "skipped");
    run.assert_outcome("cleanup", "ok");
    assert_eq!(run.report()["aborted_by"], "breaks");
}

/// The first step hangs until the deadline: it is cut early enough for the
/// always-step to get its whole timeout, and the process still ends on time.
#[test]
fn the_reserve_holds_when_the_first_step_hangs_until_the_deadline() {
    let run = run(
        r#"
[pre-stop]
deadline = "2s"

[[pre-stop.steps]]
name = "hangs"
plugin = "@hook"
timeout = "30s"
config = { mode = "sleep" }

[[pre-stop.steps]]
name = "never"
plugin = "@hook"
config = { mode = "ok" }

[[pre-stop.steps]]
name = "release"
plugin = "@hook"
always = true
timeout = "800ms"
config = { mode = "sleep", duration = "500ms" }
"#,
        &[],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    let report = run.report();
    assert_eq!(report["cleanup_reserve_ms"], 800);
    let hangs = run.assert_outcome("hangs", "timed-out");
    assert_eq!(hangs["cut_by_deadline"], true);
    assert!(
        hangs["message"]
            .as_str()
            .unwrap_or("")
            .contains("less the 800ms kept for always-steps"),
        "{hangs:#}"
    );
    // Cut at 2s - 800ms, give or take scheduling.
    assert!((1150..1500).contains(&ended(&hangs)), "{hangs:#}");
    run.assert_outcome("never", "skipped");
    let release = run.assert_outcome("release", "ok");
    assert!(started(&release) >= ended(&hangs), "{release:#}");
    assert!(run.elapsed.as_millis() < 2600, "took {:?}", run.elapsed);
}

#[test]
fn sleep_steps_wait_and_are_cut_by_the_deadline() {
    let ok = run(
        r#"
[[pre-stop.steps]]
name = "wait"
sleep = "300ms"

[[pre-stop.steps]]
name = "after"
plugin = "@hook"
config = { mode = "ok" }
"#,
        &[],
    );
    let wait = ok.assert_outcome("wait", "ok");
    assert_eq!(wait["message"], "waited 300ms");
    assert_eq!(wait["plugin"], Value::Null);
    assert!(started(&ok.assert_outcome("after", "ok")) >= 300);

    let cut = run(
        "[pre-stop]\ndeadline = \"400ms\"\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"10s\"\n",
        &[],
    );
    assert_eq!(cut.code, 3, "{}", cut.stderr);
    let wait = cut.assert_outcome("wait", "timed-out");
    assert!(
        wait["message"]
            .as_str()
            .unwrap_or("")
            .contains("of 10s: cut at the phase deadline"),
        "{wait:#}"
    );
    assert!(cut.elapsed.as_millis() < 2000, "took {:?}", cut.elapsed);
}

#[test]
fn max_concurrency_bounds_ready_steps() {
    let toml = |max: u32| {
        format!(
            r#"
[defaults]
max-concurrency = {max}

[[pre-stop.steps]]
name = "a"
plugin = "@hook"
needs = []
config = {{ mode = "sleep", duration = "300ms" }}

[[pre-stop.steps]]
name = "b"
plugin = "@hook"
needs = []
config = {{ mode = "sleep", duration = "300ms" }}
"#
        )
    };
    let one = run(&toml(1), &[]);
    let (a, b) = (one.assert_outcome("a", "ok"), one.assert_outcome("b", "ok"));
    assert!(started(&b) >= ended(&a), "one at a time: {a:#}\n{b:#}");
    let two = run(&toml(2), &[]);
    let (a, b) = (two.assert_outcome("a", "ok"), two.assert_outcome("b", "ok"));
    assert!(started(&b) < ended(&a), "together: {a:#}\n{b:#}");
}

const TAGGED: &str = r#"
[[pre-stop.steps]]
name = "notify"
plugin = "@hook"
tags = ["network"]
config = { mode = "ok" }

[[pre-stop.steps]]
name = "save"
plugin = "@hook"
tags = ["disk", "slow"]
config = { mode = "ok" }

[[pre-stop.steps]]
name = "release"
plugin = "@hook"
tags = ["network"]
config = { mode = "ok" }
"#;

#[test]
fn tags_and_skips_select_steps_and_the_rest_say_why() {
    let by_tag = run(TAGGED, &["--tag", "network"]);
    by_tag.assert_outcome("notify", "ok");
    by_tag.assert_outcome("release", "ok");
    assert_eq!(
        by_tag.message("save"),
        "skipped: has none of the tags --tag network"
    );

    let skip_tag = run(TAGGED, &["--skip-tag", "slow", "--skip", "release"]);
    skip_tag.assert_outcome("notify", "ok");
    assert_eq!(
        skip_tag.message("save"),
        "skipped: tagged `slow`, left out with --skip-tag"
    );
    assert_eq!(skip_tag.message("release"), "skipped: left out with --skip");
    assert_eq!(skip_tag.code, 0);

    let unknown = run(TAGGED, &["--tag", "netwrk"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains(
            "--tag names no tag of [pre-stop]: netwrk; its tags are: disk, network, slow"
        ),
        "{}",
        unknown.stderr
    );
}

#[test]
fn the_text_report_shows_who_waited_for_whom() {
    let s = Sandbox::new();
    s.pipeline(TAGGED);
    let run = s.lifehook(&["run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let save = run
        .stdout
        .lines()
        .find(|l| l.contains(" save "))
        .unwrap_or_default();
    assert!(save.ends_with("[after notify]"), "{}", run.stdout);
}

#[test]
fn check_prints_the_worst_case_timeline_and_refuses_a_reserve_that_does_not_fit() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[pre-stop]
deadline = "5s"

[[pre-stop.steps]]
name = "notify"
plugin = "@hook"
timeout = "1s"
retries = { attempts = 2, backoff = "500ms" }

[[pre-stop.steps]]
name = "wait"
sleep = "2s"

[[pre-stop.steps]]
name = "release"
plugin = "@hook"
timeout = "1s"
always = true
"#,
    );
    let ok = s.lifehook(&["check"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout.contains(
            "[pre-stop] deadline 5s, 3 steps, worst case 5.50s, 1s kept for always-steps"
        ),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("wait     +2.50s    .. +4.50s"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout
            .contains("release  +4.50s    .. +5.50s  past the deadline"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stderr
            .contains("warning: the worst case of [pre-stop] is 5.50s, over its deadline of 5s"),
        "{}",
        ok.stderr
    );

    s.pipeline(
        &std::fs::read_to_string(s.path("lifehook.toml"))
            .expect("pipeline")
            .replace("timeout = \"1s\"\nalways", "timeout = \"6s\"\nalways"),
    );
    let too_big = s.lifehook(&["check"]);
    assert_eq!(too_big.code, 2, "{}", too_big.stderr);
    assert!(
        too_big.stderr.contains("need 6s in reserve"),
        "{}",
        too_big.stderr
    );
    assert!(
        too_big.stderr.contains("lifehook.toml:3:12"),
        "{}",
        too_big.stderr
    );
}
