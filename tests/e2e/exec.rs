//! `lifehook exec`, the entrypoint mode, with a real application (tests/app)
//! as its child and real signals: order of events, deadlines, forwarded
//! signals, exit codes, and no zombies.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::http::TestServer;
use crate::support::{
    Sandbox, app_event_time, app_events, lifehook, send_signal, test_app, unix_ms, wait_until,
};

struct Exec {
    child: Child,
    events: PathBuf,
}

struct Ended {
    code: i32,
    stderr: String,
    took: Duration,
}

impl Exec {
    /// `lifehook exec <args> -- test-app --events <file> <app>`.
    fn start(s: &Sandbox, args: &[&str], app: &[&str]) -> Exec {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let events = s.path(&format!("events-{n}.txt"));
        let mut cmd: Command = lifehook();
        cmd.arg("exec")
            .args(args)
            .arg("--")
            .arg(test_app())
            .arg("--events")
            .arg(&events)
            .args(app)
            .current_dir(s.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("start lifehook exec");
        let exec = Exec { child, events };
        assert!(
            wait_until(Duration::from_secs(10), || exec
                .events()
                .contains(&"start".to_string())),
            "the app did not start"
        );
        exec
    }

    fn events(&self) -> Vec<String> {
        app_events(&self.events)
    }

    fn signal(&self, signal: i32) {
        send_signal(self.child.id(), signal);
    }

    fn wait(self) -> Ended {
        let started = Instant::now();
        let out = self
            .child
            .wait_with_output()
            .expect("wait for lifehook exec");
        Ended {
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    }
}

fn timeline(stderr: &str) -> Vec<String> {
    stderr
        .split("lifehook exec timeline:\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().split_once(' ').map(|(_, e)| e.trim().to_owned()))
        .collect()
}

fn notify_pipeline(server: &TestServer, path: &str, pre_stop_extra: &str) -> String {
    format!(
        r#"
[post-start]
[[post-start.steps]]
name = "warm-up"
sleep = "200ms"

[pre-stop]
{pre_stop_extra}
[[pre-stop.steps]]
name = "notify"
plugin = "@notify"
allow.http = ["{}"]
config = {{ url = "{}", body = "bye" }}

[[pre-stop.steps]]
name = "wait"
sleep = "300ms"
"#,
        server.origin(),
        server.url(path)
    )
}

#[test]
fn pre_stop_runs_before_the_app_gets_sigterm_and_the_timeline_says_so() {
    let (s, server) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&server, "/ok", ""));
    let exec = Exec::start(&s, &[], &[]);
    std::thread::sleep(Duration::from_millis(400));
    let signalled = unix_ms();
    exec.signal(libc::SIGTERM);
    let events_file = exec.events.clone();
    let ended = exec.wait();
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    assert_eq!(server.requests().len(), 1, "pre-stop notified once");
    let got_term = app_event_time(&events_file, "SIGTERM").expect("the app got SIGTERM");
    assert!(
        got_term >= signalled + 300,
        "the app got SIGTERM {}ms after lifehook did: before pre-stop's 300ms wait ended",
        got_term - signalled
    );
    let events = timeline(&ended.stderr);
    let expected = [
        "app started",
        "post-start done: ok",
        "SIGTERM received",
        "pre-stop started",
        "pre-stop done: ok",
        "SIGTERM forwarded to the app",
        "app exited with code 0",
    ];
    let mut at = 0;
    for want in expected {
        match events[at..].iter().position(|e| e.starts_with(want)) {
            Some(i) => at += i + 1,
            None => panic!("timeline lacks {want:?} (in order):\n{}", ended.stderr),
        }
    }
}

#[test]
fn exit_codes_are_the_apps() {
    let s = Sandbox::new();
    s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"50ms\"\n");
    let three = Exec::start(&s, &[], &["--exit-on-term", "3"]);
    three.signal(libc::SIGTERM);
    assert_eq!(three.wait().code, 3);

    let zero = Exec::start(&s, &[], &[]);
    zero.signal(libc::SIGINT);
    let ended = zero.wait();
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    assert!(
        ended.stderr.contains("SIGINT forwarded to the app"),
        "{}",
        ended.stderr
    );

    // An application without a handler dies of the signal: 128 + 15.
    let mut cmd = lifehook();
    cmd.args(["exec", "--", "sleep", "30"])
        .current_dir(s.dir.path())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start");
    std::thread::sleep(Duration::from_millis(300));
    send_signal(child.id(), libc::SIGTERM);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The grace period bounds pre-stop; the app then still gets 2s before
/// SIGKILL, and an app that ignores SIGTERM ends with 137.
#[test]
fn the_deadline_holds_and_the_app_gets_two_seconds_before_sigkill() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[pre-stop]
[[pre-stop.steps]]
name = "hangs"
plugin = "@hook"
timeout = "1m"
config = { mode = "sleep" }
"#,
    );
    let exec = Exec::start(&s, &["--grace-period", "1500ms"], &["--ignore-term"]);
    let signalled = unix_ms();
    exec.signal(libc::SIGTERM);
    let events_file = exec.events.clone();
    let ended = exec.wait();
    assert_eq!(ended.code, 137, "{}", ended.stderr);
    let got_term = app_event_time(&events_file, "SIGTERM").expect("forwarded");
    let pre_stop = got_term - signalled;
    assert!(
        (1400..2200).contains(&pre_stop),
        "pre-stop took {pre_stop}ms of a 1.5s grace period"
    );
    // SIGTERM at ~1.5s, SIGKILL at least 2s later.
    assert!(
        ended.took >= Duration::from_millis(3400) && ended.took < Duration::from_secs(6),
        "took {:?}\n{}",
        ended.took,
        ended.stderr
    );
    assert!(
        ended.stderr.contains("DEADLINE of 1.50s reached"),
        "{}",
        ended.stderr
    );
    assert!(
        ended
            .stderr
            .contains("SIGKILL sent to the app's process group"),
        "{}",
        ended.stderr
    );
}

#[test]
fn other_signals_are_forwarded_at_once() {
    let s = Sandbox::new();
    s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"50ms\"\n");
    let exec = Exec::start(&s, &[], &[]);
    let wanted = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGWINCH, "SIGWINCH"),
    ];
    for (signal, name) in wanted {
        exec.signal(signal);
        assert!(
            wait_until(Duration::from_secs(5), || exec
                .events()
                .iter()
                .any(|e| e == name)),
            "{name} did not reach the app: {:?}",
            exec.events()
        );
    }
    exec.signal(libc::SIGTERM);
    assert_eq!(exec.wait().code, 0);
}

#[test]
fn a_second_sigterm_during_pre_stop_does_not_run_it_twice() {
    let (s, server) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&server, "/slow/500", ""));
    let exec = Exec::start(&s, &[], &[]);
    exec.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(150));
    exec.signal(libc::SIGTERM);
    let ended = exec.wait();
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    assert_eq!(server.requests().len(), 1);
    assert!(
        ended
            .stderr
            .contains("already stopping: pre-stop is not started again"),
        "{}",
        ended.stderr
    );
}

#[test]
fn an_app_that_exits_on_its_own_skips_pre_stop_unless_asked() {
    let (s, server) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&server, "/ok", ""));
    let run = |args: &[&str]| {
        let mut cmd = lifehook();
        cmd.arg("exec")
            .args(args)
            .arg("--")
            .arg(test_app())
            .args(["--exit-after", "300", "5"])
            .current_dir(s.dir.path())
            .stderr(Stdio::piped());
        crate::support::run_command(cmd)
    };
    let plain = run(&[]);
    assert_eq!(plain.code, 5, "{}", plain.stderr);
    assert_eq!(
        server.requests().len(),
        0,
        "pre-stop ran after a plain exit"
    );
    let asked = run(&["--pre-stop-on-exit"]);
    assert_eq!(asked.code, 5, "{}", asked.stderr);
    assert_eq!(server.requests().len(), 1);
    assert!(
        asked
            .stderr
            .contains("--pre-stop-on-exit: running pre-stop"),
        "{}",
        asked.stderr
    );
}

#[test]
fn a_failed_post_start_stops_the_app_and_exits_non_zero() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[post-start]
# Gives the app time to set up its handlers before it is stopped.
[[post-start.steps]]
name = "settle"
sleep = "300ms"

[[post-start.steps]]
name = "restore"
plugin = "@hook"
on-failure = "abort"
config = { mode = "fail", message = "no snapshot" }
"#,
    );
    let exec = Exec::start(&s, &[], &[]);
    let events_file = exec.events.clone();
    let ended = exec.wait();
    assert_eq!(ended.code, 1, "{}", ended.stderr);
    assert!(app_events(&events_file).contains(&"SIGTERM".to_string()));
    assert!(
        ended.stderr.contains("post-start failed: stopping the app"),
        "{}",
        ended.stderr
    );
    assert!(ended.stderr.contains("no snapshot"), "{}", ended.stderr);
}

/// Processes whose parent is `pid`, with their state letter.
fn children(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push((child, state));
        }
    }
    out
}

#[test]
fn orphans_are_reaped_and_no_zombie_is_left() {
    let s = Sandbox::new();
    s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"50ms\"\n");
    let exec = Exec::start(&s, &[], &["--orphan"]);
    let pid = exec.child.id();
    // The grandchild (alive for 200ms) is orphaned at once and lands on
    // lifehook, a child subreaper: lifehook has two children for a while.
    let adopted = wait_until(Duration::from_secs(2), || children(pid).len() >= 2);
    assert!(
        adopted,
        "the orphan was not reparented to lifehook: {:?}",
        children(pid)
    );
    std::thread::sleep(Duration::from_millis(600));
    let left = children(pid);
    assert_eq!(left.len(), 1, "only the app is left: {left:?}");
    assert!(
        left.iter().all(|(_, state)| *state != 'Z'),
        "zombie: {left:?}"
    );
    exec.signal(libc::SIGTERM);
    assert_eq!(exec.wait().code, 0);
}

/// As shells do: 127 when the command is not found, 126 when it is found
/// but cannot be executed (no execute bit, a directory).
#[test]
fn a_command_that_cannot_start_exits_127_or_126() {
    let s = Sandbox::new();
    s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"10ms\"\n");
    let missing = s.lifehook(&["exec", "--", "/no/such/program"]);
    assert_eq!(missing.code, 127, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("cannot start /no/such/program")
            && missing.stderr.contains("not found"),
        "{}",
        missing.stderr
    );
    let on_path = s.lifehook(&["exec", "--", "no-such-program-on-path"]);
    assert_eq!(on_path.code, 127, "{}", on_path.stderr);
    let plain = s.write("not-executable.sh", "#!/bin/sh\nexit 0\n");
    let plain = plain.to_string_lossy().into_owned();
    let denied = s.lifehook(&["exec", "--", &plain]);
    assert_eq!(denied.code, 126, "{}", denied.stderr);
    assert!(
        denied.stderr.contains("found, but not executable"),
        "{}",
        denied.stderr
    );
    let dir = s.dir.path().to_string_lossy().into_owned();
    assert_eq!(s.lifehook(&["exec", "--", &dir]).code, 126);
}

/// `--stop-signal`: after pre-stop the app gets that signal, not the one
/// lifehook received; `--map-exit FROM:TO` turns an exit code into another.
#[test]
fn the_app_gets_its_stop_signal_and_exit_codes_can_be_mapped() {
    let s = Sandbox::new();
    s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"50ms\"\n");
    // test-app records signals and ignores SIGQUIT: SIGKILL ends it.
    let app = Exec::start(&s, &["--stop-signal", "quit", "--grace-period", "2s"], &[]);
    app.signal(libc::SIGTERM);
    let events = app.events.clone();
    let ended = app.wait();
    let seen = app_events(&events);
    assert!(seen.contains(&"SIGQUIT".to_string()), "{seen:?}");
    assert!(!seen.contains(&"SIGTERM".to_string()), "{seen:?}");
    assert!(
        ended
            .stderr
            .contains("SIGQUIT sent to the app (--stop-signal, for SIGTERM)"),
        "{}",
        ended.stderr
    );
    assert_eq!(ended.code, 137, "{}", ended.stderr);

    // A process without a handler dies of the stop signal (128 + 3);
    // mapped, its code is the mapped one.
    for (extra, code) in [(None, 131), (Some("131:0"), 0)] {
        let mut cmd = lifehook();
        cmd.args(["exec", "--stop-signal", "SIGQUIT"]);
        if let Some(map) = extra {
            cmd.args(["--map-exit", map]);
        }
        cmd.args(["--", "sleep", "30"])
            .current_dir(s.dir.path())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("start");
        std::thread::sleep(Duration::from_millis(300));
        send_signal(child.id(), libc::SIGTERM);
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        if code == 0 {
            assert!(
                stderr.contains("exit code 131 mapped to 0 (--map-exit 131:0)"),
                "{stderr}"
            );
        }
    }
    let mapped = Exec::start(
        &s,
        &["--map-exit", "3:0", "--map-exit", "4:1"],
        &["--exit-on-term", "3"],
    );
    mapped.signal(libc::SIGTERM);
    assert_eq!(mapped.wait().code, 0);

    for (flag, value, why) in [
        ("--stop-signal", "BOGUS", "is not a signal"),
        ("--stop-signal", "99", "is not a signal number"),
        ("--map-exit", "143", "is not FROM:TO"),
        ("--map-exit", "1:300", "is not an exit code"),
    ] {
        let run = s.lifehook(&["exec", flag, value, "--", "true"]);
        assert_eq!(run.code, 2, "{flag} {value}");
        assert!(run.stderr.contains(why), "{flag} {value}: {}", run.stderr);
    }
}
