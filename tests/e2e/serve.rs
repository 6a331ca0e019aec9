//! `lifehook serve` over real HTTP: both phases, joins, repeats, the token,
//! refusing a public address without one, bad requests, the connection cap
//! and a silent client, and a sidecar-style run whose grants point at a
//! directory shared with the application.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::http::TestServer;
use crate::support::{Sandbox, free_port, lifehook, send_signal, wait_until};

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(s: &Sandbox, extra: &[&str]) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = lifehook();
        cmd.args(["serve", "--listen", &listen])
            .args(extra)
            .current_dir(s.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start lifehook serve");
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(&listen).is_ok()
        });
        assert!(up, "lifehook serve did not listen on {listen}");
        Server { child, port }
    }

    fn request(&self, raw: &str) -> Reply {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.write_all(raw.as_bytes()).expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Reply {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    fn get(&self, path: &str, headers: &str) -> Reply {
        self.request(&format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n"
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        send_signal(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn run_kind(&self) -> &str {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix("lifehook-run: "))
            .unwrap_or("")
    }
}

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
fn connections_are_capped_and_a_silent_client_is_cut_off() {
    let (s, backend) = (Sandbox::new(), TestServer::start());
    s.pipeline(&notify_pipeline(&backend, "/ok"));
    let server = Server::start(&s, &["--max-connections", "1"]);
    // Holds the only slot without ever sending a request.
    let mut silent = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let mut waiting = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("send");
    waiting
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut first = [0u8; 1];
    assert!(
        waiting.read(&mut first).is_err(),
        "a second connection was served while the only slot was held"
    );
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut text = String::new();
    waiting.read_to_string(&mut text).expect("read");
    let waited = started.elapsed();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(15)).contains(&waited),
        "served after {waited:?}: the silent client should be cut off after 5 s"
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    assert!(
        silent.read_to_end(&mut rest).is_ok(),
        "the silent client's connection was closed by the server"
    );
    assert_eq!(backend.requests().len(), 0);
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
