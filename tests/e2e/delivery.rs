//! At-least-once delivery: a phase that completed is not run again in the
//! same container incarnation; a failed one is; a concurrent delivery waits
//! for the first and reports its result. Side effects are counted by a real
//! HTTP server.

use std::path::Path;

use crate::support::http::TestServer;
use crate::support::{Run, Sandbox, run_command};

fn pipeline(s: &Sandbox, server: &TestServer, path: &str, on_failure: &str) {
    s.pipeline(&format!(
        r#"
[[pre-stop.steps]]
name = "notify"
plugin = "@notify"
on-failure = "{on_failure}"
allow.http = ["{}"]
config = {{ url = "{}", body = "bye" }}
"#,
        server.origin(),
        server.url(path)
    ));
}

fn deliver(s: &Sandbox, state: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    s.lifehook_with(&args, |cmd| {
        cmd.env("LIFEHOOK_STATE_DIR", state);
    })
}

#[test]
fn a_second_delivery_reports_the_first_and_runs_nothing() {
    let (s, server) = (Sandbox::new(), TestServer::start());
    pipeline(&s, &server, "/ok", "abort");
    let state = s.path("state");
    let first = deliver(&s, &state, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(server.requests().len(), 1);

    let second = deliver(&s, &state, &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second.stdout.starts_with(
            "lifehook pre-stop: ok (repeat: an earlier delivery completed this phase "
        ),
        "{}",
        second.stdout
    );
    assert!(
        second.stdout.contains(&first.stdout),
        "the first report follows:\n{}",
        second.stdout
    );
    let json = deliver(&s, &state, &["--report", "json"]);
    assert_eq!(json.report()["repeat"], true);
    assert_eq!(server.requests().len(), 1, "a repeat must not notify again");

    let forced = deliver(&s, &state, &["--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(server.requests().len(), 2, "--force runs again");
}

#[test]
fn a_failed_delivery_leaves_no_marker_and_the_next_one_tries_again() {
    let (s, server) = (Sandbox::new(), TestServer::start());
    pipeline(&s, &server, "/status/404", "abort");
    let state = s.path("state");
    assert_eq!(deliver(&s, &state, &[]).code, 1);
    assert_eq!(deliver(&s, &state, &[]).code, 1);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn a_marker_of_another_container_incarnation_is_ignored() {
    let (s, server) = (Sandbox::new(), TestServer::start());
    pipeline(&s, &server, "/ok", "abort");
    let state = s.path("state");
    assert_eq!(deliver(&s, &state, &[]).code, 0);
    let marker = std::fs::read_dir(&state)
        .expect("state dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "done"))
        .expect("a done-marker");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).expect("marker")).expect("json marker");
    value["incarnation"] = "another-boot:1".into();
    std::fs::write(&marker, value.to_string()).expect("rewrite marker");
    assert_eq!(deliver(&s, &state, &[]).code, 0);
    assert_eq!(
        server.requests().len(),
        2,
        "a restarted container runs its hooks again"
    );
}

#[test]
fn concurrent_deliveries_do_the_work_once_and_both_report_it() {
    let (s, server) = (Sandbox::new(), TestServer::start());
    pipeline(&s, &server, "/slow/800", "abort");
    let state = s.path("state");
    let spawn = || {
        let mut cmd = crate::support::lifehook();
        cmd.arg("run")
            .current_dir(s.dir.path())
            .env("LIFEHOOK_STATE_DIR", &state);
        cmd
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run_command(spawn()));
        std::thread::sleep(std::time::Duration::from_millis(150));
        let b = scope.spawn(|| run_command(spawn()));
        (a.join().expect("first"), b.join().expect("second"))
    });
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);
    assert_eq!(server.requests().len(), 1, "the side effect happened once");
    let repeats = [&a, &b]
        .iter()
        .filter(|r| r.stdout.contains("(repeat:"))
        .count();
    assert_eq!(repeats, 1, "{}\n---\n{}", a.stdout, b.stdout);
}

#[test]
fn an_unwritable_state_dir_warns_once_and_runs() {
    let (s, server) = (Sandbox::new(), TestServer::start());
    pipeline(&s, &server, "/ok", "abort");
    for _ in 0..2 {
        let mut cmd = crate::support::lifehook();
        cmd.args(["run"])
            .current_dir(s.dir.path())
            .env("LIFEHOOK_STATE_DIR", "/proc/lifehook-cannot-be-here");
        let run = run_command(cmd);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(
            run.stderr.matches("running without done-markers").count(),
            1,
            "{}",
            run.stderr
        );
    }
    assert_eq!(server.requests().len(), 2);
}
