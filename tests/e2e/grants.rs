//! Deny by default: files, sockets, HTTP and environment variables are out of
//! reach until granted, and a denied attempt says which grant would allow it.

use std::io::Read as _;
use std::net::TcpListener;

use crate::support::Sandbox;
use crate::support::http::TestServer;

#[test]
fn files_outside_every_grant_are_denied_and_logged() {
    let s = Sandbox::new();
    let secret = s.write("secret/token", "s3cret");
    let path = secret.display();
    s.pipeline(&format!(
        "[[pre-stop.steps]]\nname = \"read\"\nplugin = \"@hook\"\nconfig = {{ mode = \"read-file\", path = \"{path}\" }}\n"
    ));
    let run = s.run(&[]);
    run.assert_outcome("read", "denied");
    let message = run.message("read");
    let dir = secret.parent().expect("parent").display().to_string();
    assert!(
        message.contains(&format!("file access to {path}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("allow.dirs = [\"{dir}\"]")),
        "{message}"
    );
    assert!(
        run.stderr.contains("denied file access"),
        "not logged:\n{}",
        run.stderr
    );
}

#[test]
fn granted_directory_is_readable_but_not_writable() {
    let s = Sandbox::new();
    s.write("data/in.txt", "hello");
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "read"
plugin = "@hook"
allow.dirs = [{ host = "data", guest = "/data" }]
config = { mode = "read-file", path = "/data/in.txt" }

[[pre-stop.steps]]
name = "write"
plugin = "@hook"
allow.dirs = [{ host = "data", guest = "/data" }]
config = { mode = "write-file", path = "/data/out.txt" }

[[pre-stop.steps]]
name = "write-granted"
plugin = "@hook"
allow.dirs = [{ host = "data", guest = "/data", access = "read-write" }]
config = { mode = "write-file", path = "/data/out2.txt" }
"#,
    );
    let run = s.run(&[]);
    assert_eq!(run.message("read"), "read 5 bytes from /data/in.txt");
    run.assert_outcome("write", "denied");
    assert!(
        run.message("write").contains("access = \"read-write\""),
        "{}",
        run.message("write")
    );
    assert!(
        !s.path("data/out.txt").exists(),
        "a read-only grant let a write through"
    );
    run.assert_outcome("write-granted", "ok");
    assert_eq!(
        std::fs::read_to_string(s.path("data/out2.txt")).expect("written"),
        "written by fixture"
    );
}

#[test]
fn tcp_connections_need_a_grant() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let s = Sandbox::new();
    s.pipeline(&format!(
        r#"
[[pre-stop.steps]]
name = "denied"
plugin = "@hook"
config = {{ mode = "connect", addr = "{addr}" }}

[[pre-stop.steps]]
name = "granted"
plugin = "@hook"
allow.tcp = ["{addr}"]
config = {{ mode = "connect", addr = "{addr}" }}
"#
    ));
    let accepted = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 6];
        conn.read_exact(&mut buf).expect("read");
        buf
    });
    let run = s.run(&[]);
    run.assert_outcome("denied", "denied");
    assert!(
        run.message("denied")
            .contains(&format!("allow.tcp = [\"{addr}\"]")),
        "{}",
        run.message("denied")
    );
    run.assert_outcome("granted", "ok");
    assert_eq!(&accepted.join().expect("listener thread"), b"PING\r\n");
}

#[test]
fn tcp_grant_by_host_name_resolves_on_the_host() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let s = Sandbox::new();
    s.pipeline(&format!(
        "[[pre-stop.steps]]\nname = \"by-name\"\nplugin = \"@hook\"\nallow.tcp = [\"localhost:{port}\"]\nconfig = {{ mode = \"connect\", addr = \"localhost:{port}\" }}\n"
    ));
    let run = s.run(&[]);
    run.assert_outcome("by-name", "ok");
}

#[test]
fn http_requests_need_a_grant_for_their_origin() {
    let server = TestServer::start();
    let s = Sandbox::new();
    s.pipeline(&format!(
        r#"
[[pre-stop.steps]]
name = "denied"
plugin = "@hook"
config = {{ mode = "http", url = "{url}" }}

[[pre-stop.steps]]
name = "other-port"
plugin = "@hook"
allow.http = ["http://127.0.0.1:1"]
config = {{ mode = "http", url = "{url}" }}

[[pre-stop.steps]]
name = "granted"
plugin = "@hook"
allow.http = ["{origin}"]
config = {{ mode = "http", url = "{url}" }}
"#,
        url = server.url("/ok"),
        origin = server.origin()
    ));
    let run = s.run(&[]);
    run.assert_outcome("denied", "denied");
    assert!(
        run.message("denied")
            .contains(&format!("allow.http = [\"{}\"]", server.origin())),
        "{}",
        run.message("denied")
    );
    run.assert_outcome("other-port", "denied");
    run.assert_outcome("granted", "ok");
    assert_eq!(
        run.message("granted"),
        format!("GET {} -> 204", server.url("/ok"))
    );
    assert_eq!(
        server.requests().len(),
        1,
        "denied requests must not reach the server"
    );
}

#[test]
fn environment_variables_need_a_grant() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "hidden"
plugin = "@hook"
config = { mode = "env", name = "LH_TEST_SECRET" }

[[pre-stop.steps]]
name = "granted"
plugin = "@hook"
allow.env = ["LH_TEST_SECRET"]
config = { mode = "env", name = "LH_TEST_SECRET" }

[[pre-stop.steps]]
name = "set"
plugin = "@hook"
env = { LH_TEST_SECRET = "fixed" }
config = { mode = "env", name = "LH_TEST_SECRET" }
"#,
    );
    let run = s.lifehook_with(&["run", "--report", "json"], |c| {
        c.env("LH_TEST_SECRET", "from-runner");
    });
    run.assert_outcome("hidden", "failed");
    assert!(
        run.message("hidden")
            .contains("allow.env = [\"LH_TEST_SECRET\"]"),
        "{}",
        run.message("hidden")
    );
    assert_eq!(run.message("granted"), "LH_TEST_SECRET=from-runner");
    assert_eq!(run.message("set"), "LH_TEST_SECRET=fixed");
}

#[test]
fn command_plugin_sees_only_its_args_and_env() {
    let s = Sandbox::new();
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "cmd"
plugin = "@command"
args = ["--drain", "${LH_TEST_POD:-none}"]
env = { MODE = "fast" }
"#,
    );
    let run = s.lifehook_with(&["run", "--report", "json", "-v"], |c| {
        c.env("LH_TEST_POD", "web-1").env("LH_TEST_SECRET", "x");
    });
    run.assert_outcome("cmd", "ok");
    assert!(run.stderr.contains("args=--drain web-1"), "{}", run.stderr);
    assert!(
        run.stderr.contains("env=MODE=fast stream"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("LH_TEST_SECRET"),
        "leaked env:\n{}",
        run.stderr
    );
}
