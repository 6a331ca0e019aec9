//! The drain-connections sample plugin against real sockets: it reads
//! `/proc/net/tcp` and `/proc/net/tcp6` through a read-only grant and
//! waits until the established connections to the given ports end, not
//! before `min`; other ports and listening sockets do not count; IPv6
//! counts; when the time runs out, the step fails with the count.

use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Sandbox, lifehook, wait_until};

/// A listener with connections held open: each client and the server's
/// accepted end.
struct Held {
    listener: TcpListener,
    pairs: Vec<(TcpStream, TcpStream)>,
}

impl Held {
    fn open(addr: &str, n: usize) -> Held {
        let listener = TcpListener::bind(addr).expect("listen");
        let at = listener.local_addr().expect("address");
        let pairs = (0..n)
            .map(|_| {
                let client = TcpStream::connect(at).expect("connect");
                let (server, _) = listener.accept().expect("accept");
                (client, server)
            })
            .collect();
        Held { listener, pairs }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().expect("address").port()
    }

    /// Closes one connection, both ends.
    fn close_one(&mut self) {
        drop(self.pairs.pop());
    }
}

/// A pipeline whose first step marks that the phase has started (a file
/// the test waits for), then drains `ports`.
fn pipeline(s: &Sandbox, ports: &[u16], min: &str, timeout: &str) {
    std::fs::create_dir_all(s.path("marks")).expect("dir");
    s.pipeline(&format!(
        r#"
[[pre-stop.steps]]
name = "started"
plugin = "@hook"
allow.dirs = [{{ host = "marks", guest = "/marks", access = "read-write" }}]
config = {{ mode = "write-file", path = "/marks/started" }}

[[pre-stop.steps]]
name = "drain"
plugin = "@drain"
timeout = "{timeout}"
allow.dirs = [{{ host = "/proc/net", guest = "/proc/net" }}]
config = {{ ports = {ports:?}, min = "{min}", poll = "50ms" }}
"#
    ));
}

/// Runs the pre-stop; once its drain step has begun, `meanwhile` runs.
/// The drain step's report, and when lifehook ended.
fn drain_while(s: &Sandbox, meanwhile: impl FnOnce()) -> (Value, Instant) {
    let child = lifehook()
        .args(["run", "--report", "json"])
        .current_dir(s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lifehook");
    assert!(
        wait_until(Duration::from_secs(30), || s.path("marks/started").exists()),
        "the phase did not start"
    );
    meanwhile();
    let out = child.wait_with_output().expect("lifehook ended");
    let ended = Instant::now();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report["steps"][1].clone(), ended)
}

fn message(step: &Value) -> &str {
    step["message"].as_str().expect("message")
}

#[test]
fn the_drain_ends_soon_after_the_last_connection_closes() {
    let s = Sandbox::new();
    let mut app = Held::open("127.0.0.1:0", 3);
    // Another service's connections, and the app's listening socket: not
    // counted.
    let other = Held::open("127.0.0.1:0", 2);
    pipeline(&s, &[app.port()], "300ms", "20s");
    let port = app.port();
    let mut last_close = Instant::now();
    let (step, ended) = drain_while(&s, || {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(250));
            app.close_one();
        }
        last_close = Instant::now();
    });
    assert_eq!(step["outcome"], "ok", "{step:#}");
    assert!(
        message(&step).starts_with(&format!("3 -> 0 connections on :{port} in ")),
        "{step:#}"
    );
    assert!(message(&step).ends_with("(min 300ms)"), "{step:#}");
    assert!(
        step["duration_ms"].as_u64().expect("duration") >= 700,
        "{step:#}"
    );
    assert!(
        ended - last_close < Duration::from_millis(200),
        "ended {:?} after the last close",
        ended - last_close
    );
    drop(other);
}

#[test]
fn with_no_connections_the_drain_still_waits_min() {
    let s = Sandbox::new();
    let idle = Held::open("127.0.0.1:0", 0);
    pipeline(&s, &[idle.port()], "700ms", "20s");
    let (step, _) = drain_while(&s, || {});
    assert_eq!(step["outcome"], "ok", "{step:#}");
    assert!(
        step["duration_ms"].as_u64().expect("duration") >= 700,
        "{step:#}"
    );
    assert!(message(&step).starts_with("0 -> 0 connections"), "{step:#}");
}

#[test]
fn ipv6_connections_count() {
    let s = Sandbox::new();
    let mut app = Held::open("[::1]:0", 2);
    let port = app.port();
    pipeline(&s, &[port], "0s", "20s");
    let (step, _) = drain_while(&s, || {
        std::thread::sleep(Duration::from_millis(300));
        app.close_one();
        app.close_one();
    });
    assert_eq!(step["outcome"], "ok", "{step:#}");
    assert!(
        message(&step).starts_with(&format!("2 -> 0 connections on :{port}")),
        "{step:#}"
    );
    assert!(
        step["duration_ms"].as_u64().expect("duration") >= 250,
        "{step:#}"
    );
}

#[test]
fn when_the_time_runs_out_the_step_fails_with_the_count() {
    let s = Sandbox::new();
    let app = Held::open("127.0.0.1:0", 2);
    pipeline(&s, &[app.port()], "0s", "600ms");
    let (step, _) = drain_while(&s, || {});
    assert_eq!(step["outcome"], "failed", "{step:#}");
    assert_eq!(step["attempts"], 1, "not retried: {step:#}");
    assert!(
        message(&step).starts_with(&format!(
            "2 connections still open on :{} after ",
            app.port()
        )),
        "{step:#}"
    );
    drop(app);
}

#[test]
fn without_the_grant_the_step_is_denied_and_says_which_to_add() {
    let s = Sandbox::new();
    s.pipeline(
        "[[pre-stop.steps]]\nname = \"drain\"\nplugin = \"@drain\"\nconfig = { ports = [8080] }\n",
    );
    let run = s.run(&[]);
    let step = run.assert_outcome("drain", "denied");
    assert!(
        step["denials"][0]
            .as_str()
            .is_some_and(|d| d.contains("/proc/net/tcp") && d.contains("allow.dirs")),
        "{step:#}"
    );
}

#[test]
fn bad_ports_are_named() {
    let s = Sandbox::new();
    s.pipeline(
        "[[pre-stop.steps]]\nname = \"drain\"\nplugin = \"@drain\"\nallow.dirs = [\"/proc/net\"]\nconfig = { ports = [0] }\n",
    );
    let run = s.run(&[]);
    run.assert_outcome("drain", "failed");
    assert!(
        run.message("drain").contains("is not a port"),
        "{}",
        run.message("drain")
    );
}

#[test]
fn max_open_is_low_enough() {
    let s = Sandbox::new();
    let app = Held::open("127.0.0.1:0", 2);
    let port = app.port();
    pipeline(&s, &[port], "0s", "20s");
    let text = std::fs::read_to_string(s.path("lifehook.toml")).expect("pipeline");
    s.write(
        "lifehook.toml",
        text.replace("poll = \"50ms\"", "poll = \"50ms\", max-open = 2"),
    );
    let (step, _) = drain_while(&s, || {});
    assert_eq!(step["outcome"], "ok", "{step:#}");
    assert!(
        message(&step).starts_with(&format!("2 -> 2 connections on :{port}")),
        "{step:#}"
    );
    drop(app);
}
