//! What Kubernetes keeps of a failed hook: the first 1024 characters of its
//! combined output. They must name the step that failed and why. And the
//! `--log-file /proc/1/fd/1` trick must fall back quietly where it cannot
//! be opened (another user, as in a pod with `runAsUser`).

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};

use crate::support::{Sandbox, lifehook, plugins, shared_cache};

/// Runs `lifehook` with stdout and stderr on one pipe, as the kubelet
/// collects an exec hook's output.
fn combined(mut cmd: Command) -> (i32, String) {
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let mut child = cmd
        .stdout(writer.try_clone().expect("clone"))
        .stderr(writer)
        .spawn()
        .expect("spawn");
    // The command holds the pipe's write ends: close them, or the read
    // below never sees the end.
    drop(cmd);
    let status = child.wait().expect("wait");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut reader, &mut out).expect("read");
    (status.code().unwrap_or(-1), out)
}

#[test]
fn the_first_1024_bytes_name_the_failed_step_and_why() {
    let s = Sandbox::new();
    let mut toml = String::new();
    for i in 0..30 {
        toml += &format!(
            "[[pre-stop.steps]]\nname = \"step-{i:02}-with-a-longish-name\"\nplugin = \"@hook\"\nconfig = {{ mode = \"ok\" }}\n\n"
        );
    }
    // Noise first: a denied request logs warnings before the real failure.
    toml += "[[pre-stop.steps]]\nname = \"probe\"\nplugin = \"@hook\"\nconfig = { mode = \"http\", url = \"http://127.0.0.1:9/x\" }\n\n";
    toml += "[[pre-stop.steps]]\nname = \"release-lock\"\nplugin = \"@hook\"\non-failure = \"abort\"\nconfig = { mode = \"fail\", message = \"lock held by web-1, not by web-0\" }\n";
    s.pipeline(&toml);
    let mut cmd = lifehook();
    cmd.args(["run"]).current_dir(s.dir.path());
    let (code, out) = combined(cmd);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.len() > 1024,
        "the scenario must produce more than the kubelet keeps"
    );
    let kept: String = out.chars().take(1024).collect();
    assert!(
        kept.contains("release-lock"),
        "the failed step is not named in:\n{kept}"
    );
    assert!(
        kept.contains("lock held by web-1, not by web-0"),
        "why it failed is not in:\n{kept}"
    );
    assert!(
        kept.contains("cause: step `release-lock` failed: lock held by web-1"),
        "{kept}"
    );
}

/// Copies what a run needs into a directory another user can read.
fn world_readable(s: &Sandbox) -> std::path::PathBuf {
    let dir = s.path("shared");
    std::fs::create_dir_all(dir.join("state")).expect("dir");
    std::fs::copy(plugins::FIXTURE_HOOK, dir.join("fixture_hook.wasm")).expect("copy plugin");
    std::fs::write(
        dir.join("lifehook.toml"),
        "[[pre-stop.steps]]\nname = \"hello\"\nplugin = \"fixture_hook.wasm\"\nconfig = { mode = \"log\" }\n",
    )
    .expect("pipeline");
    for p in [s.dir.path().to_path_buf(), dir.clone()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(dir.join("state"), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    dir
}

#[test]
fn log_file_fallback_is_quiet_for_another_user() {
    let s = Sandbox::new();
    let dir = world_readable(&s);
    // As root, /proc/1/fd/1 opens: the log lines land there. Check the
    // same option with a file we can read back.
    let log = dir.join("log.txt");
    let mut cmd = lifehook();
    cmd.args(["run", "-f"])
        .arg(dir.join("lifehook.toml"))
        .arg("--log-file")
        .arg(&log)
        .env("LIFEHOOK_STATE_DIR", dir.join("state"));
    let (code, out) = combined(cmd);
    assert_eq!(code, 0, "{out}");
    let logged = std::fs::read_to_string(&log).expect("log file");
    assert!(logged.contains("info line"), "{logged}");

    // As nobody, /proc/1/fd/1 (the container's PID 1 output) cannot be
    // opened: no word about it, and the hook still succeeds.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_lifehook"))
        .args(["run", "-f"])
        .arg(dir.join("lifehook.toml"))
        .args(["--log-file", "/proc/1/fd/1"])
        .env("LIFEHOOK_CACHE", shared_cache())
        .env("LIFEHOOK_STATE_DIR", dir.join("state"))
        .stdin(Stdio::null());
    let (code, out) = combined(cmd);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("lifehook pre-stop: ok - 1 ok"), "{out}");
    // The plugin's own warn and error lines are there; nothing of
    // lifehook's about files it could not open.
    let lifehook_lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.ends_with("warn line") && !l.ends_with("error line"))
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(lifehook_lines.is_empty(), "not quiet: {out}");
    assert!(!out.contains("/proc/1/fd/1"), "{out}");
}

/// What goes into the log file (PID 1's output by default in a container,
/// `kubectl logs`): every info line and the report, each marked as
/// lifehook's, in text and JSON; and a pipeline error, which stops the hook
/// before any report.
#[test]
fn the_log_file_gets_marked_log_lines_the_report_and_errors() {
    let s = Sandbox::new();
    s.pipeline(
        "[[pre-stop.steps]]\nname = \"quick\"\nplugin = \"@hook\"\nconfig = { mode = \"log\" }\n\n[[pre-stop.steps]]\nname = \"release-lock\"\nplugin = \"@hook\"\non-failure = \"abort\"\nconfig = { mode = \"fail\", message = \"lock held by web-1\" }\n",
    );
    let log = s.path("hook.log");
    let run = s.lifehook_with(&["run"], |c| {
        c.env(crate::support::LOG_FILE, &log);
    });
    assert_eq!(run.code, 1, "{}", run.stderr);
    let text = std::fs::read_to_string(&log).expect("the log file");
    for line in text.lines() {
        assert!(line.starts_with("lifehook: "), "unmarked: {line:?}");
    }
    assert!(text.contains(" INFO hook{step=quick}: info line"), "{text}");
    // The report, line by line, as stdout has it.
    for line in run.stdout.lines().filter(|l| !l.is_empty()) {
        let marked = format!(
            "lifehook: {}",
            line.strip_prefix("lifehook ").unwrap_or(line)
        );
        assert!(text.contains(&marked), "{marked:?} is not in:\n{text}");
    }
    assert!(
        text.contains("lifehook: pre-stop: ABORTED by step `release-lock`"),
        "{text}"
    );

    let json_log = s.path("hook.json");
    let run = s.lifehook_with(&["run", "--log-format", "json", "--report", "json"], |c| {
        c.env(crate::support::LOG_FILE, &json_log);
    });
    assert_eq!(run.code, 1);
    let lines = std::fs::read_to_string(&json_log).expect("the JSON log");
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(events.iter().all(|e| e["source"] == "lifehook"), "{lines}");
    let report: Vec<&str> = events
        .iter()
        .filter(|e| e["target"] == "lifehook::report")
        .filter_map(|e| e["fields"]["message"].as_str())
        .collect();
    assert!(
        report
            .first()
            .is_some_and(|l| l.starts_with("pre-stop: ABORTED")),
        "{report:?}"
    );
    assert!(
        report.iter().any(|l| l.contains("lock held by web-1")),
        "{report:?}"
    );

    // `none` writes nothing anywhere; a bad pipeline's error is logged.
    s.write("bad.toml", "[pre-stop\n");
    let run = s.lifehook_with(&["check", "-f", "bad.toml"], |c| {
        c.env(crate::support::LOG_FILE, &log);
    });
    assert_eq!(run.code, 2);
    let text = std::fs::read_to_string(&log).expect("the log file");
    assert!(
        text.contains("lifehook: error") && text.contains("bad.toml:1"),
        "{text}"
    );
    let before = text.len();
    let run = s.lifehook_with(&["run", "--log-file", "none"], |_| {});
    assert_eq!(run.code, 1);
    assert_eq!(std::fs::read_to_string(&log).expect("log").len(), before);
}

/// lifehook as a container's main process: the log file's default is its
/// own stdout, where `run` prints its report; no log line may enter it.
#[test]
fn a_log_file_that_is_stdout_keeps_the_report_clean() {
    let s = Sandbox::new();
    s.pipeline(
        "[[pre-stop.steps]]\nname = \"quick\"\nplugin = \"@hook\"\nconfig = { mode = \"log\" }\n",
    );
    let run = s.lifehook_with(&["run", "--report", "json"], |c| {
        c.env(crate::support::LOG_FILE, "/proc/self/fd/1");
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.report()["status"], "ok", "{}", run.stdout);
    assert!(!run.stdout.contains("lifehook: "), "{}", run.stdout);
}
