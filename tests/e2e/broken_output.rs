//! lifehook's own output cannot stop it. Every subcommand runs with stdout
//! and stderr closed, and again with both going into a pipe whose reader
//! has gone away (`lifehook ... | true`): each does its work and exits with
//! its usual code. Under `exec`, the application still gets its signal and
//! lifehook exits with the application's code.

use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::Duration;

use crate::support::http::TestServer;
use crate::support::registry::Registry;
use crate::support::{
    Sandbox, app_events, free_port, lifehook, plugins, send_signal, test_app, wait_for_exit,
    wait_until,
};

/// How lifehook's stdout and stderr are broken.
#[derive(Debug, Clone, Copy)]
enum Broken {
    /// Descriptors 1 and 2 are closed before lifehook starts.
    Closed,
    /// Both write into a pipe nobody reads any more (EPIPE).
    ReaderGone,
}

const BOTH: [Broken; 2] = [Broken::Closed, Broken::ReaderGone];

impl Broken {
    fn apply(self, cmd: &mut Command) {
        match self {
            Broken::Closed => close_stdout_and_stderr(cmd),
            Broken::ReaderGone => {
                let (reader, writer) = std::io::pipe().expect("pipe");
                drop(reader);
                let second = writer.try_clone().expect("clone the pipe");
                cmd.stdout(writer).stderr(second);
            }
        }
    }
}

#[expect(unsafe_code, reason = "close(2) between fork and exec")]
fn close_stdout_and_stderr(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: close is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(1);
            libc::close(2);
            Ok(())
        });
    }
}

/// Starts `lifehook <args>` in the sandbox with broken output.
fn spawn(s: &Sandbox, broken: Broken, args: &[&str]) -> Child {
    let mut cmd = lifehook();
    cmd.args(args).current_dir(s.dir.path());
    broken.apply(&mut cmd);
    cmd.spawn().expect("start lifehook")
}

/// Waits for `child` (at most 60 s); its exit code.
fn code(mut child: Child, what: &str) -> i32 {
    let status = wait_for_exit(&mut child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{what}: lifehook did not exit"));
    status
        .code()
        .unwrap_or_else(|| panic!("{what}: lifehook was killed by a signal ({status:?})"))
}

fn run_args(s: &Sandbox, broken: Broken, args: &[&str]) -> i32 {
    code(spawn(s, broken, args), &format!("{args:?} with {broken:?}"))
}

#[test]
fn run_check_compile_inspect_and_new_do_their_work_with_broken_output() {
    for broken in BOTH {
        let (s, backend) = (Sandbox::new(), TestServer::start());
        s.pipeline(&format!(
            "[pre-stop]\n[[pre-stop.steps]]\nname = \"notify\"\nplugin = \"@notify\"\nallow.http = [\"{}\"]\nconfig = {{ url = \"{}\", body = \"bye\" }}\n\n[[pre-stop.steps]]\nname = \"fails\"\nplugin = \"@hook\"\non-failure = \"abort\"\nconfig = {{ mode = \"fail\" }}\n",
            backend.origin(),
            backend.url("/ok")
        ));
        // The report is lost; the work and the exit code are not.
        assert_eq!(run_args(&s, broken, &["run"]), 1, "{broken:?}");
        assert_eq!(
            run_args(&s, broken, &["run", "--report", "json", "-vv"]),
            1,
            "{broken:?}"
        );
        assert_eq!(
            backend.requests().len(),
            2,
            "{broken:?}: both runs notified"
        );
        assert_eq!(run_args(&s, broken, &["check"]), 0, "{broken:?}");
        assert_eq!(
            run_args(&s, broken, &["compile", "--cache", "own-cache"]),
            0,
            "{broken:?}"
        );
        let compiled = std::fs::read_dir(s.path("own-cache"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(compiled >= 2, "{broken:?}: artifacts written: {compiled}");
        assert_eq!(
            run_args(&s, broken, &["inspect", plugins::FIXTURE_HOOK]),
            0,
            "{broken:?}"
        );
        assert_eq!(
            run_args(&s, broken, &["new", "drain", "--lang", "rust"]),
            0,
            "{broken:?}"
        );
        assert!(s.path("drain/Cargo.toml").is_file(), "{broken:?}");
        // Invalid input still exits 2, with nobody to read why.
        s.write("bad.toml", "[pre-stop\n");
        assert_eq!(
            run_args(&s, broken, &["check", "-f", "bad.toml"]),
            2,
            "{broken:?}"
        );
    }
}

/// With descriptor 1 closed, the next file lifehook opens would get it:
/// the report must not end up in the log file.
#[test]
fn a_closed_stdout_does_not_send_the_report_into_the_log_file() {
    let s = Sandbox::new();
    s.pipeline(
        "[pre-stop]\n[[pre-stop.steps]]\nname = \"quick\"\nplugin = \"@hook\"\nconfig = { mode = \"ok\" }\n",
    );
    let log = s.path("hook.log");
    let log_arg = log.to_string_lossy().into_owned();
    let code = run_args(
        &s,
        Broken::Closed,
        &["run", "--report", "json", "--log-file", &log_arg],
    );
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("\"exit_code\""),
        "the report went into the log file:\n{text}"
    );
}

#[test]
fn exec_exits_with_the_apps_code_when_nobody_reads_its_output() {
    for broken in BOTH {
        let s = Sandbox::new();
        s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"50ms\"\n");
        let exec = spawn(&s, broken, &["exec", "--", "sh", "-c", "sleep 0.3; exit 3"]);
        assert_eq!(code(exec, "exec"), 3, "{broken:?}");
    }
}

/// The worst case of the first round: lifehook aborted while printing the
/// pre-stop report, before forwarding SIGTERM, and the app was never
/// signalled.
#[test]
fn exec_forwards_sigterm_after_pre_stop_when_nobody_reads_its_output() {
    for broken in BOTH {
        let (s, backend) = (Sandbox::new(), TestServer::start());
        s.pipeline(&format!(
            "[pre-stop]\n[[pre-stop.steps]]\nname = \"notify\"\nplugin = \"@notify\"\nallow.http = [\"{}\"]\nconfig = {{ url = \"{}\", body = \"bye\" }}\n",
            backend.origin(),
            backend.url("/ok")
        ));
        let events = s.path("events.txt");
        let events_arg = events.to_string_lossy().into_owned();
        let app = test_app().to_string_lossy().into_owned();
        // The app's own output goes elsewhere: what is tested is lifehook's.
        let app_command =
            format!("exec '{app}' --events '{events_arg}' --exit-on-term 7 >/dev/null 2>&1");
        let exec = spawn(&s, broken, &["exec", "-v", "--", "sh", "-c", &app_command]);
        assert!(
            wait_until(Duration::from_secs(10), || app_events(&events)
                .contains(&"start".to_owned())),
            "{broken:?}: the app did not start"
        );
        send_signal(exec.id(), libc::SIGTERM);
        assert_eq!(code(exec, "exec"), 7, "{broken:?}");
        assert!(
            app_events(&events).contains(&"SIGTERM".to_owned()),
            "{broken:?}: the app got no SIGTERM: {:?}",
            app_events(&events)
        );
        assert_eq!(backend.requests().len(), 1, "{broken:?}: pre-stop ran");
    }
}

#[test]
fn serve_answers_and_stops_with_broken_output() {
    for broken in BOTH {
        let s = Sandbox::new();
        s.pipeline("[pre-stop]\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"10ms\"\n");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let server = spawn(&s, broken, &["serve", "-v", "--listen", &listen]);
        assert!(
            wait_until(Duration::from_secs(20), || TcpStream::connect(&listen)
                .is_ok()),
            "{broken:?}: serve did not listen"
        );
        let reply = get(&listen, "/pre-stop");
        assert!(reply.starts_with("HTTP/1.1 200"), "{broken:?}: {reply}");
        send_signal(server.id(), libc::SIGTERM);
        assert_eq!(code(server, "serve"), 0, "{broken:?}");
    }
}

/// One `GET` over HTTP/1.1; the whole response.
fn get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}

#[test]
fn push_publishes_with_broken_output() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let registry = Registry::start();
    for broken in BOTH {
        let s = Sandbox::new();
        let reference = registry.reference(&format!("hooks/quiet-{broken:?}:1").to_lowercase());
        let host = registry.host();
        let code = run_args(
            &s,
            broken,
            &[
                "push",
                "--insecure-registry",
                &host,
                plugins::FIXTURE_HOOK,
                &reference,
            ],
        );
        assert_eq!(code, 0, "{broken:?}");
        let repository = format!("hooks/quiet-{broken:?}").to_lowercase();
        assert!(
            registry.digest_of(&repository, "1").is_some(),
            "{broken:?}: nothing was pushed"
        );
    }
}
