//! `/readyz` over real HTTP: `serve` fails it when a pre-stop trigger
//! arrives and `exec --ready-listen` when the stop signal does, in both
//! cases before the first pre-stop step starts (that step asks `/readyz`
//! itself and reports the answer); the token rules; post-start holds
//! readiness back under `exec`, as Kubernetes does.

use std::time::Duration;

use crate::support::serve::Server;
use crate::support::{
    Sandbox, free_port, http_client, lifehook, send_signal, test_app, wait_until,
};

/// A pre-stop whose first step asks `url` and reports the status.
fn asking_pre_stop(url: &str, origin: &str) -> String {
    format!(
        r#"
[[pre-stop.steps]]
name = "ask"
plugin = "@hook"
allow.http = ["{origin}"]
config = {{ mode = "http", url = "{url}" }}
"#
    )
}

/// `GET url` with `headers`: the status and the body.
fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = http_client().get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let mut answer = request.call().expect("an answer");
    let status = answer.status().as_u16();
    (
        status,
        answer.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn serve_fails_readiness_before_the_pre_stop_runs() {
    let s = Sandbox::new();
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let readyz = format!("{origin}/readyz");
    s.pipeline(&asking_pre_stop(&readyz, &origin));
    let server = Server::start_at(&s, port, &[], |_| {});
    assert_eq!(get(&readyz, None), (200, "ready\n".into()));
    let pre = server.get("/pre-stop", "");
    assert_eq!(pre.status, 200, "{}", pre.body);
    assert!(
        pre.body.contains(&format!("GET {readyz} -> 503")),
        "{}",
        pre.body
    );
    let (status, body) = get(&readyz, None);
    assert_eq!(status, 503);
    assert!(body.contains("pre-stop ended: ok"), "{body}");
    assert_eq!(
        get(&format!("{origin}/healthz"), None).0,
        200,
        "liveness stays"
    );
}

#[test]
fn serve_readiness_needs_the_token_when_there_is_one() {
    let s = Sandbox::new();
    s.pipeline("[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"10ms\"\n");
    let token = "s3cret-token-0123456789";
    s.write("token", token);
    let server = Server::start(&s, &["--token-file", "token"]);
    let readyz = format!("http://127.0.0.1:{}/readyz", server.port);
    assert_eq!(get(&readyz, None).0, 401);
    assert_eq!(get(&readyz, Some(token)), (200, "ready\n".into()));
}

#[test]
fn exec_is_ready_after_post_start_and_unready_before_pre_stop() {
    let s = Sandbox::new();
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let readyz = format!("{origin}/readyz");
    s.pipeline(&format!(
        "[[post-start.steps]]\nname = \"warm\"\nsleep = \"500ms\"\n{}",
        asking_pre_stop(&readyz, &origin)
    ));
    let child = lifehook()
        .args(["exec", "--ready-listen", &port.to_string(), "--"])
        .arg(test_app())
        .current_dir(s.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start lifehook exec");
    let answered = |want: u16| {
        wait_until(Duration::from_secs(10), || {
            http_client()
                .get(&readyz)
                .call()
                .is_ok_and(|a| a.status().as_u16() == want)
        })
    };
    assert!(answered(503), "not unready while post-start runs");
    let (_, body) = get(&readyz, None);
    assert!(
        body.contains("post-start running") || body == "ready\n",
        "{body}"
    );
    assert!(answered(200), "not ready after post-start");
    send_signal(child.id(), libc::SIGTERM);
    let out = child.wait_with_output().expect("exec ended");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("GET {readyz} -> 503")), "{stderr}");
}

#[test]
fn exec_refuses_a_public_readiness_address_without_a_token_and_checks_it_with_one() {
    let s = Sandbox::new();
    s.pipeline("[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"10ms\"\n");
    let run = s.lifehook(&["exec", "--ready-listen", "0.0.0.0:0", "--", "true"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("refusing to serve /readyz on 0.0.0.0:0 without a token"),
        "{}",
        run.stderr
    );
    let run = s.lifehook(&["exec", "--ready-listen", "nowhere", "--", "true"]);
    assert_eq!(run.code, 2, "{}", run.stderr);

    let token = "s3cret-token-0123456789";
    let port = free_port();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let child = lifehook()
        .args([
            "exec",
            "--ready-listen",
            &format!("127.0.0.1:{port}"),
            "--token-env",
            "READY_TOKEN",
            "--",
        ])
        .arg(test_app())
        .env("READY_TOKEN", token)
        .current_dir(s.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start lifehook exec");
    assert!(wait_until(Duration::from_secs(10), || http_client()
        .get(&readyz)
        .call()
        .is_ok()));
    assert_eq!(get(&readyz, None).0, 401);
    assert_eq!(get(&readyz, Some(token)), (200, "ready\n".into()));
    send_signal(child.id(), libc::SIGTERM);
    let _ = child.wait_with_output();
}
