//! `lifehook serve`'s `GET /metrics`: the token as for triggers (unless
//! `--metrics-public`), the series it counts, a real Prometheus scraping it
//! with the token, and `lifehook status` after a served run.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::serve::Server;
use crate::support::{Sandbox, free_port, http_client, require_server, wait_until};

const TOKEN: &str = "s3cret-token-0123456789";

/// Both phases, each one step; `[state] dir` so that `status -f` finds
/// the runs.
const PIPELINE: &str = r#"
[state]
dir = "state"

[[post-start.steps]]
name = "warm"
plugin = "@hook"
config = { mode = "ok" }

[[pre-stop.steps]]
name = "release-lock"
plugin = "@hook"
config = { mode = "fail", message = "lock held by web-1" }
"#;

fn bearer() -> String {
    format!("authorization: Bearer {TOKEN}\r\n")
}

#[test]
fn metrics_need_the_token_and_count_runs_steps_and_triggers() {
    let s = Sandbox::new();
    s.pipeline(PIPELINE);
    s.write("token", format!("{TOKEN}\n"));
    let server = Server::start(&s, &["--token-file", "token"]);
    assert_eq!(server.get("/metrics", "").status, 401);
    let wrong = server.get(
        "/metrics",
        "authorization: Bearer wrong-token-0123456789\r\n",
    );
    assert_eq!(wrong.status, 401);
    let post = server.request(&format!(
        "POST /metrics HTTP/1.1\r\nhost: x\r\n{}content-length: 0\r\nconnection: close\r\n\r\n",
        bearer()
    ));
    assert_eq!(post.status, 405);

    assert_eq!(server.get("/pre-stop", &bearer()).status, 200);
    assert_eq!(server.get("/pre-stop", &bearer()).run_kind(), "repeat");
    assert_eq!(server.get("/post-start", "").status, 401);
    assert_eq!(server.get("/post-start", &bearer()).status, 200);
    let scrape = server.get("/metrics", &bearer());
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    assert!(
        scrape
            .head
            .contains("content-type: application/openmetrics-text"),
        "{}",
        scrape.head
    );
    for series in [
        r#"lifehook_phase_runs_total{phase="pre-stop",outcome="ok"} 1"#,
        r#"lifehook_phase_runs_total{phase="post-start",outcome="ok"} 1"#,
        r#"lifehook_phase_duration_seconds_count{phase="pre-stop"} 1"#,
        r#"lifehook_phase_duration_seconds_bucket{le="+Inf",phase="pre-stop"} 1"#,
        r#"lifehook_step_outcomes_total{phase="pre-stop",step="release-lock",outcome="failed"} 1"#,
        r#"lifehook_step_outcomes_total{phase="post-start",step="warm",outcome="ok"} 1"#,
        r#"lifehook_triggers_total{phase="pre-stop",result="ran"} 1"#,
        r#"lifehook_triggers_total{phase="pre-stop",result="repeat"} 1"#,
        r#"lifehook_triggers_total{phase="post-start",result="unauthorized"} 1"#,
        r#"lifehook_build_info{version="0.1.0""#,
    ] {
        assert!(
            scrape.body.contains(series),
            "{series} is not in:\n{}",
            scrape.body
        );
    }
    assert!(scrape.body.ends_with("# EOF\n"), "{}", scrape.body);

    // What the sidecar ran, as `lifehook status` shows it.
    let status = s.lifehook(&["status", "--json", "-f", "lifehook.toml"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{json}");
    assert!(runs.iter().all(|r| r["by"] == "serve"), "{json}");
}

#[test]
fn metrics_public_answers_without_the_token_and_triggers_still_need_it() {
    let s = Sandbox::new();
    s.pipeline(PIPELINE);
    s.write("token", format!("{TOKEN}\n"));
    let server = Server::start(&s, &["--token-file", "token", "--metrics-public"]);
    let scrape = server.get("/metrics", "");
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    assert!(
        scrape.body.contains("lifehook_build_info"),
        "{}",
        scrape.body
    );
    assert_eq!(server.get("/pre-stop", "").status, 401);
}

/// A Prometheus server started by the test, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: lifehook\n    scrape_interval: 1s\n    authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of the single series `query` selects, once it has one.
    fn value(&self, query: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let mut answer = http_client().get(&url).query("query", query).call().ok()?;
        let body: serde_json::Value =
            serde_json::from_str(&answer.body_mut().read_to_string().ok()?).ok()?;
        let result = body["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str().map(str::to_owned),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_serve_with_the_token() {
    require_server!("prometheus", "prometheus");
    let s = Sandbox::new();
    s.pipeline(PIPELINE);
    s.write("token", format!("{TOKEN}\n"));
    let server = Server::start(&s, &["--token-file", "token"]);
    for _ in 0..3 {
        assert_eq!(server.get("/pre-stop", &bearer()).status, 200);
    }
    assert_eq!(server.get("/post-start", &bearer()).status, 200);
    let prometheus = Prometheus::start(server.port);
    let expected = [
        (r#"up{job="lifehook"}"#, "1"),
        (
            r#"lifehook_triggers_total{phase="pre-stop",result="repeat"}"#,
            "2",
        ),
        (
            r#"lifehook_triggers_total{phase="pre-stop",result="ran"}"#,
            "1",
        ),
        (
            r#"lifehook_phase_runs_total{phase="post-start",outcome="ok"}"#,
            "1",
        ),
        (
            r#"lifehook_step_outcomes_total{step="release-lock",outcome="failed"}"#,
            "1",
        ),
        (
            r#"lifehook_phase_duration_seconds_count{phase="pre-stop"}"#,
            "1",
        ),
    ];
    let scraped = wait_until(Duration::from_secs(30), || {
        expected
            .iter()
            .all(|(q, v)| prometheus.value(q).as_deref() == Some(*v))
    });
    let got: Vec<_> = expected
        .iter()
        .map(|(q, _)| (q, prometheus.value(q)))
        .collect();
    assert!(scraped, "Prometheus has: {got:?}");
}
