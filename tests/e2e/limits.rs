//! Each limit stops its offender, with the right outcome in the report, and
//! the process returns on time.

use std::time::Duration;

use crate::support::Sandbox;

fn one_step(step: &str) -> Sandbox {
    let s = Sandbox::new();
    s.pipeline(&format!(
        "[pre-stop]\ndeadline = \"20s\"\n\n[[pre-stop.steps]]\nname = \"offender\"\nplugin = \"@hook\"\n{step}\n"
    ));
    s
}

#[test]
fn busy_loop_is_stopped_by_fuel() {
    let s = one_step("fuel = 5_000_000\nconfig = { mode = \"busy-loop\" }");
    let run = s.run(&[]);
    let step = run.assert_outcome("offender", "out-of-fuel");
    // Fuel is exact when it runs out: all of it was used.
    assert_eq!(step["fuel_consumed"], 5_000_000, "{step:#}");
    assert!(
        run.message("offender")
            .contains("fuel limit of 5000000 exhausted")
    );
    assert_eq!(run.code, 0, "on-failure defaults to continue");
}

#[test]
fn busy_loop_with_unlimited_fuel_is_stopped_by_wall_time() {
    let s =
        one_step("fuel = \"unlimited\"\ntimeout = \"400ms\"\nconfig = { mode = \"busy-loop\" }");
    let run = s.run(&[]);
    let step = run.assert_outcome("offender", "timed-out");
    let took = step["duration_ms"].as_u64().expect("duration");
    assert!((400..600).contains(&took), "stopped after {took} ms");
    // After an interrupt the fuel counter is not trustworthy: reported as unknown.
    assert!(step["fuel_consumed"].is_null(), "{step:#}");
    assert!(
        run.elapsed < Duration::from_secs(3),
        "process took {:?}",
        run.elapsed
    );
}

#[test]
fn plugin_sleeping_in_a_host_call_is_stopped_by_wall_time() {
    let s = one_step("timeout = \"300ms\"\nconfig = { mode = \"sleep\", duration = \"1h\" }");
    let run = s.run(&[]);
    let step = run.assert_outcome("offender", "timed-out");
    let took = step["duration_ms"].as_u64().expect("duration");
    assert!((300..500).contains(&took), "stopped after {took} ms");
    assert!(run.message("offender").contains("timeout of 300ms"));
}

#[test]
fn memory_growth_is_stopped_by_the_memory_limit() {
    let s = one_step("memory = \"24MiB\"\nconfig = { mode = \"grow-memory\" }");
    let run = s.run(&[]);
    run.assert_outcome("offender", "out-of-memory");
    let message = run.message("offender");
    assert!(
        message.contains("memory limit of 24.0 MiB reached"),
        "{message}"
    );
}

#[test]
fn stack_overflow_traps() {
    let s = one_step("config = { mode = \"stack-overflow\" }");
    let run = s.run(&[]);
    run.assert_outcome("offender", "trapped");
    assert!(
        run.message("offender").contains("call stack exhausted"),
        "{}",
        run.message("offender")
    );
}

#[test]
fn panic_traps_and_the_report_quotes_the_panic_message() {
    let s = one_step("config = { mode = \"panic\" }");
    let run = s.run(&[]);
    run.assert_outcome("offender", "trapped");
    let message = run.message("offender");
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("fixture asked to panic"), "{message}");
}

#[test]
fn phase_deadline_bounds_the_process_whatever_the_plugins_do() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[pre-stop]
deadline = "1s"

[[pre-stop.steps]]
name = "sleeper"
plugin = "@hook"
timeout = "30s"
concurrent = true
config = { mode = "sleep", duration = "1h" }

[[pre-stop.steps]]
name = "spinner"
plugin = "@hook"
timeout = "30s"
fuel = "unlimited"
concurrent = true
config = { mode = "busy-loop" }

[[pre-stop.steps]]
name = "never-reached"
plugin = "@hook"
config = { mode = "ok" }
"#,
    );
    let run = s.run(&[]);
    assert!(
        run.elapsed < Duration::from_millis(1100),
        "the process took {:?} with a 1s deadline",
        run.elapsed
    );
    assert_eq!(run.code, 3, "deadline exit code; stderr:\n{}", run.stderr);
    let report = run.report();
    assert_eq!(report["deadline_hit"], true);
    for name in ["sleeper", "spinner"] {
        let step = run.assert_outcome(name, "timed-out");
        assert_eq!(step["cut_by_deadline"], true);
    }
    let skipped = run.assert_outcome("never-reached", "skipped");
    assert!(
        skipped["message"]
            .as_str()
            .unwrap_or("")
            .contains("deadline of 1s")
    );
}

#[test]
fn deadline_flag_replaces_the_phase_deadline() {
    let s = one_step("timeout = \"30s\"\nconfig = { mode = \"sleep\", duration = \"1h\" }");
    let run = s.run(&["--deadline", "500ms"]);
    assert_eq!(run.code, 3);
    assert_eq!(run.report()["deadline_ms"], 500);
    assert!(
        run.elapsed < Duration::from_millis(600),
        "took {:?}",
        run.elapsed
    );
}

#[test]
fn flooding_output_is_bounded_and_counted() {
    let s = one_step("output-limit = \"8KiB\"\nconfig = { mode = \"flood\", bytes = 5_000_000 }");
    let run = s.run(&["-v"]);
    let step = run.assert_outcome("offender", "ok");
    let dropped = step["output_dropped"].as_u64().expect("dropped");
    assert!(dropped > 4_900_000, "dropped only {dropped} bytes");
    assert!(
        run.stderr.len() < 100_000,
        "stderr is {} bytes",
        run.stderr.len()
    );
    assert!(
        run.stderr.contains("output-limit"),
        "{}",
        &run.stderr[..500.min(run.stderr.len())]
    );
}

#[test]
fn plugin_output_is_re_emitted_tagged_with_the_step() {
    let s = one_step("config = { mode = \"log\" }");
    let run = s.run(&["-vv"]);
    run.assert_outcome("offender", "ok");
    for line in [
        "line on stdout",
        "line on stderr",
        "debug line",
        "info line",
        "warn line",
        "error line",
    ] {
        let found = run.stderr.lines().find(|l| l.contains(line));
        let found = found.unwrap_or_else(|| panic!("no `{line}` in stderr:\n{}", run.stderr));
        assert!(found.contains("hook{step=offender}"), "untagged: {found}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let s = one_step("config = { mode = \"log\" }");
    let run = s.run(&["-v", "--log-format", "json"]);
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let warn = lines
        .iter()
        .find(|l| l["fields"]["message"] == "warn line")
        .expect("the plugin's warn line");
    assert_eq!(warn["level"], "WARN");
    assert_eq!(warn["span"]["name"], "hook");
    assert_eq!(warn["span"]["step"], "offender");
}
