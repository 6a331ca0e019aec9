//! `lifehook serve` over real HTTP: both phases, joins, repeats, the token,
//! refusing a public address without one, bad requests, the connection cap,
//! silent clients and a starvation attack, stopping, and a sidecar-style run whose grants point at a
//! directory shared with the application.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::http::TestServer;
use crate::support::serve::{Reply, Server};
use crate::support::{Sandbox, send_signal, wait_for_exit};

fn notify_pipeline(server: &TestServer, path: &str) -> String {
    format!(
        r#"
[post-start]
[[post-start.steps]]
name = "warm"
plugin = "@hook"
config = {{ mode = "ok" }}

[pre-stop]
[[pre-stop.steps]]
name = "notify"
plugin = "@notify"
allow.http = ["{}"]
config = {{ url = "{}", body = "bye" }}
"#,
        server.origin(),
        server.url(path)
    )
}

#[test]
fn both_phases_answer_with_their_reports() {
    let (s, backend) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&backend, "/ok"));
    let server = Server::start(&s, &[]);
    assert_eq!(server.get("/healthz", "").status, 200);
    let post = server.get("/post-start", "");
    assert_eq!(post.status, 200, "{}", post.body);
    assert!(
        post.body.starts_with("lifehook post-start: ok - 1 ok"),
        "{}",
        post.body
    );
    let pre = server.request(
        "POST /pre-stop HTTP/1.1\r\nhost: x\r\naccept: application/json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(pre.status, 200, "{}", pre.body);
    let report: serde_json::Value = serde_json::from_str(&pre.body).expect("json report");
    assert_eq!(report["status"], "ok");
    assert_eq!(report["steps"][0]["outcome"], "ok");
    assert_eq!(backend.requests().len(), 1);
}

#[test]
fn a_failed_phase_answers_500_with_the_report() {
    let (s, backend) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&backend, "/status/404").replace(
        "name = \"notify\"",
        "name = \"notify\"\non-failure = \"abort\"",
    ));
    let server = Server::start(&s, &[]);
    let pre = server.get("/pre-stop", "");
    assert_eq!(pre.status, 500, "{}", pre.body);
    assert!(
        pre.body
            .starts_with("lifehook pre-stop: ABORTED by step `notify`"),
        "{}",
        pre.body
    );
    // A failed run is not remembered: the next trigger runs again.
    assert_eq!(server.get("/pre-stop", "").run_kind(), "new");
    assert_eq!(backend.requests().len(), 2);
}

#[test]
fn concurrent_triggers_join_one_run_and_later_ones_get_the_repeat() {
    let (s, backend) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&backend, "/slow/700"));
    let server = Server::start(&s, &[]);
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let server = &server;
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(40 * i));
                    server.get("/pre-stop", "")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request"))
            .collect()
    });
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let mut kinds: Vec<&str> = replies.iter().map(Reply::run_kind).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["joined", "joined", "joined", "joined", "joined", "new"]
    );
    assert_eq!(backend.requests().len(), 1, "one run for all six triggers");

    let again = server.get("/pre-stop", "");
    assert_eq!((again.status, again.run_kind()), (200, "repeat"));
    assert!(again.body.contains("(repeat: completed "), "{}", again.body);
    assert_eq!(backend.requests().len(), 1);
    assert_eq!(server.get("/pre-stop?force=1", "").run_kind(), "new");
    assert_eq!(backend.requests().len(), 2);
}

#[test]
fn a_silent_client_is_cut_off_and_gives_its_slot_to_a_newer_one() {
    let (s, backend) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&backend, "/ok"));
    let server = Server::start(&s, &["--max-connections", "1"]);
    // Holds the only slot without ever sending a request.
    let mut silent = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    // A newer connection takes the slot at once; the silent one is closed.
    let started = std::time::Instant::now();
    let health = server.get("/healthz", "");
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served after {:?} while a silent client held the only slot",
        started.elapsed()
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut rest = Vec::new();
    assert!(
        matches!(silent.read_to_end(&mut rest), Ok(0)),
        "the silent client's connection was closed by the server"
    );
    // Alone, a silent client is still cut off after the 5 s header timeout.
    let started = std::time::Instant::now();
    let mut alone = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    alone
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = alone.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(15)).contains(&waited),
        "a lone silent client was closed after {waited:?}, not after 5 s"
    );
    assert_eq!(backend.requests().len(), 0);
}

/// The starvation attack: every slot held by peers that send an
/// unauthenticated `GET /healthz` every 0.5 s over keep-alive (reconnecting
/// when closed), and as many again that connect and send nothing. An
/// authenticated trigger must still be answered within ~100 ms of its run.
#[test]
fn neither_health_checks_nor_idle_peers_starve_an_authenticated_trigger() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Sandbox::new();
    s.pipeline(
        "[pre-stop]\n[[pre-stop.steps]]\nname = \"quick\"\nplugin = \"@hook\"\nconfig = { mode = \"ok\" }\n",
    );
    let token = "s3cret-token-0123456789";
    s.write("token", format!("{token}\n"));
    let cap = 8;
    let server = Server::start(
        &s,
        &[
            "--token-file",
            "token",
            "--max-connections",
            &cap.to_string(),
        ],
    );
    let port = server.port;
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..cap {
        let stop = stop.clone();
        attackers.push(std::thread::spawn(move || {
            let mut served = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_millis(600)));
                // Keep-alive: the same connection, again and again.
                while !stop.load(Ordering::Relaxed) {
                    if stream
                        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                        .is_err()
                    {
                        break;
                    }
                    let mut buf = [0u8; 512];
                    match stream.read(&mut buf) {
                        Ok(n) if n > 0 => served += 1,
                        _ => break,
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            served
        }));
    }
    let idle: Vec<TcpStream> = (0..cap)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let reply = server.get(
            "/pre-stop?force=1",
            &format!("authorization: Bearer {token}\r\n"),
        );
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{}", reply.body);
        worst = worst.max(took);
        // A new idle peer each round, as an attacker would keep opening.
        drop(TcpStream::connect(("127.0.0.1", port)));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let health_checks: u32 = attackers
        .into_iter()
        .map(|a| a.join().expect("attacker"))
        .sum();
    drop(idle);
    eprintln!(
        "trigger latency under the attack: worst of 5 {worst:?}; {health_checks} health checks answered"
    );
    assert!(health_checks > 0, "the attack ran");
    assert!(
        worst < Duration::from_secs(1),
        "an authenticated trigger took {worst:?} under the attack"
    );
}

#[test]
fn a_trigger_takes_no_body() {
    let s = Sandbox::new();
    s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"10ms\"\n");
    let server = Server::start(&s, &[]);
    for body in ["x", "0123456789"] {
        let refused = server.request(&format!(
            "POST /pre-stop HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ));
        assert_eq!(
            refused.status,
            413,
            "a {}-byte body: {}",
            body.len(),
            refused.body
        );
    }
    let chunked = server.request(
        "POST /pre-stop HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.status, 413);
    let empty = server.request(
        "POST /pre-stop HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(empty.status, 200, "{}", empty.body);
}

/// After SIGTERM the server finishes the runs in progress: their callers
/// get their reports, `/healthz` still answers 200, a phase that is not
/// running is not started, and it exits once the runs are done.
#[test]
fn while_stopping_health_answers_and_no_new_run_starts() {
    let s = Sandbox::new();
    s.pipeline(
        "[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"1500ms\"\n\n[post-start]\n[[post-start.steps]]\nname = \"warm\"\nsleep = \"10ms\"\n",
    );
    let mut server = Server::start(&s, &[]);
    let port = server.port;
    let trigger = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .write_all(b"GET /pre-stop HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        text
    });
    std::thread::sleep(Duration::from_millis(400));
    send_signal(server.child.id(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let health = server.get("/healthz", "");
    assert_eq!(health.status, 200);
    assert!(health.body.contains("stopping"), "{}", health.body);
    let refused = server.get("/post-start", "");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("stopping"), "{}", refused.body);
    let joined = server.get("/pre-stop", "");
    assert_eq!(
        joined.status, 200,
        "a trigger of the running phase joins it"
    );
    assert_eq!(joined.run_kind(), "joined");
    let first = trigger.join().expect("trigger");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let status = wait_for_exit(&mut server.child, Duration::from_secs(10))
        .expect("serve exits after its last run");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_token_is_checked_and_bad_requests_are_refused() {
    let (s, backend) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&backend, "/ok"));
    let token = "s3cret-token-0123456789";
    s.write("token", format!("{token}\n"));
    let server = Server::start(&s, &["--token-file", "token"]);
    assert_eq!(server.get("/pre-stop", "").status, 401);
    assert_eq!(
        server
            .get(
                "/pre-stop",
                "authorization: Bearer wrong-token-0123456789\r\n"
            )
            .status,
        401
    );
    assert_eq!(
        server
            .get("/pre-stop", &format!("authorization: {token}\r\n"))
            .status,
        401
    );
    assert_eq!(backend.requests().len(), 0, "nothing ran without the token");
    let ok = server.get("/pre-stop", &format!("authorization: Bearer {token}\r\n"));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        server.get("/healthz", "").status,
        200,
        "health needs no token"
    );
    assert_eq!(server.get("/nope", "").status, 404);
    let put = server.request("PUT /pre-stop HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(put.status, 405);
    let big = server.request(&format!(
        "POST /pre-stop HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n{}",
        "x".repeat(5000)
    ));
    assert_eq!(big.status, 413);
    let huge_header = server.request(&format!(
        "GET /pre-stop HTTP/1.1\r\nhost: x\r\nx-junk: {}\r\nconnection: close\r\n\r\n",
        "x".repeat(64 << 10)
    ));
    assert_ne!(
        huge_header.status, 200,
        "an oversized request must not run a phase"
    );
    assert_eq!(backend.requests().len(), 1);
}

#[test]
fn a_public_address_without_a_token_is_refused() {
    let s = Sandbox::new();
    s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"10ms\"\n");
    let run = s.lifehook(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{}",
        run.stderr
    );
    let short = s.lifehook_with(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--token-env",
            "LIFEHOOK_TEST_TOKEN",
        ],
        |c| {
            c.env("LIFEHOOK_TEST_TOKEN", "short");
        },
    );
    assert_eq!(short.code, 2);
    assert!(
        short.stderr.contains("at least 16 characters"),
        "{}",
        short.stderr
    );
}

/// A sidecar shares a volume with the application: the pipeline's grants
/// point at it, and a trigger snapshots what the application wrote there.
#[test]
fn a_sidecar_snapshots_the_shared_directory() {
    let s = Sandbox::new();
    s.write("shared/app/data.db", "rows");
    std::fs::create_dir_all(s.path("shared/snapshots")).expect("dir");
    s.pipeline(
        r#"
[pre-stop]
[[pre-stop.steps]]
name = "save-state"
plugin = "@save"
allow.dirs = [
  { host = "shared/app", guest = "/app" },
  { host = "shared/snapshots", guest = "/snapshots", access = "read-write" },
]
config = { source = "/app", destination = "/snapshots" }
"#,
    );
    let server = Server::start(&s, &[]);
    // The application keeps writing while the sidecar waits.
    s.write("shared/app/data.db", "rows, more rows");
    let pre = server.get("/pre-stop", "");
    assert_eq!(pre.status, 200, "{}", pre.body);
    let snapshots: Vec<_> = std::fs::read_dir(s.path("shared/snapshots"))
        .expect("snapshots")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{}", pre.body);
    let tar = std::fs::read(snapshots[0].path()).expect("snapshot");
    assert!(
        tar.windows(15).any(|w| w == b"rows, more rows"),
        "the snapshot holds what the app wrote last"
    );
}
