//! notify-shutdown against a real HTTP server on loopback.

use crate::support::Sandbox;
use crate::support::http::TestServer;

fn notify(server: &TestServer, path: &str, extra: &str) -> Sandbox {
    let s = Sandbox::new();
    s.pipeline(&format!(
        r#"
[pre-stop]
deadline = "15s"

[[pre-stop.steps]]
name = "notify"
plugin = "@notify"
allow.http = ["{origin}"]
allow.env = ["POD_NAME", "POD_NAMESPACE"]
{extra}
[pre-stop.steps.config]
url = "{url}"
"#,
        origin = server.origin(),
        url = server.url(path),
    ));
    s
}

fn run_with_pod(s: &Sandbox) -> crate::support::Run {
    s.lifehook_with(&["run", "--report", "json"], |c| {
        c.env("POD_NAME", "web-7").env("POD_NAMESPACE", "shop");
    })
}

#[test]
fn posts_the_default_event_and_succeeds_on_2xx() {
    let server = TestServer::start();
    let s = notify(&server, "/ok", "");
    let run = run_with_pod(&s);
    run.assert_outcome("notify", "ok");
    assert_eq!(
        run.message("notify"),
        format!("POST {} -> 204", server.url("/ok"))
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).expect("JSON body");
    assert_eq!(body["event"], "pre-stop");
    assert_eq!(body["pod"], "web-7");
    assert_eq!(body["namespace"], "shop");
    assert_eq!(body["step"], "notify");
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
}

#[test]
fn deregisters_with_a_custom_method_headers_and_template() {
    let server = TestServer::start();
    let s = notify(&server, "/registry/web", "");
    let toml = std::fs::read_to_string(s.path("lifehook.toml")).expect("pipeline");
    s.write(
        "lifehook.toml",
        format!("{toml}method = \"DELETE\"\nbody = \"{{{{pod}}}}.{{{{namespace}}}} leaving ({{{{phase}}}})\"\n[pre-stop.steps.config.headers]\nauthorization = \"Bearer t0k\"\n"),
    );
    let run = run_with_pod(&s);
    run.assert_outcome("notify", "ok");
    let request = &server.requests()[0];
    assert_eq!(request.method, "DELETE");
    assert_eq!(request.path, "/registry/web");
    assert_eq!(request.text(), "web-7.shop leaving (pre-stop)");
    assert_eq!(request.header("authorization"), Some("Bearer t0k"));
}

#[test]
fn server_errors_are_retried_until_it_recovers() {
    let server = TestServer::start();
    let s = notify(
        &server,
        "/flaky/2",
        "retries = { attempts = 3, backoff = \"50ms\" }",
    );
    let run = run_with_pod(&s);
    let step = run.assert_outcome("notify", "ok");
    assert_eq!(step["attempts"], 3);
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn too_many_requests_honours_retry_after() {
    let server = TestServer::start();
    let s = notify(
        &server,
        "/busy/1",
        "retries = { attempts = 2, backoff = \"10ms\" }",
    );
    let run = run_with_pod(&s);
    let step = run.assert_outcome("notify", "ok");
    assert_eq!(step["attempts"], 2);
    let took = step["duration_ms"].as_u64().expect("duration");
    assert!(
        took >= 1000,
        "retried after {took} ms despite Retry-After: 1"
    );
}

#[test]
fn client_errors_are_fatal() {
    let server = TestServer::start();
    let s = notify(
        &server,
        "/status/404",
        "retries = { attempts = 3, backoff = \"10ms\" }",
    );
    let run = run_with_pod(&s);
    let step = run.assert_outcome("notify", "failed");
    assert_eq!(step["attempts"], 1);
    assert!(
        run.message("notify").contains("-> 404"),
        "{}",
        run.message("notify")
    );
}

#[test]
fn hanging_server_is_cut_at_the_step_timeout() {
    let server = TestServer::start();
    let s = notify(&server, "/hang", "timeout = \"700ms\"");
    let run = run_with_pod(&s);
    let step = run.assert_outcome("notify", "timed-out");
    let took = step["duration_ms"].as_u64().expect("duration");
    assert!((700..1000).contains(&took), "stopped after {took} ms");
}

#[test]
fn server_down_is_a_retryable_failure() {
    let port = crate::support::free_port();
    let s = Sandbox::new();
    s.pipeline(&format!(
        r#"
[[pre-stop.steps]]
name = "notify"
plugin = "@notify"
allow.http = ["http://127.0.0.1:{port}"]
retries = {{ attempts = 2, backoff = "10ms" }}
config = {{ url = "http://127.0.0.1:{port}/bye", body = "bye" }}
"#
    ));
    let run = s.run(&[]);
    let step = run.assert_outcome("notify", "failed");
    assert_eq!(step["attempts"], 2, "connection errors are retryable");
    assert!(
        run.message("notify").contains("connection refused"),
        "{}",
        run.message("notify")
    );
}

#[test]
fn missing_pod_env_grant_is_explained() {
    let server = TestServer::start();
    let s = Sandbox::new();
    s.pipeline(&format!(
        "[[pre-stop.steps]]\nname = \"notify\"\nplugin = \"@notify\"\nallow.http = [\"{}\"]\nconfig = {{ url = \"{}\" }}\n",
        server.origin(),
        server.url("/ok")
    ));
    let run = run_with_pod(&s);
    run.assert_outcome("notify", "failed");
    assert!(
        run.message("notify").contains("allow.env = [\"POD_NAME\"]"),
        "{}",
        run.message("notify")
    );
    assert!(server.requests().is_empty());
}
