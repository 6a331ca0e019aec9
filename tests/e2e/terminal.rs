//! `lifehook exec` under a pseudo-terminal, as `docker run -it` and
//! `podman run -it` start it: the application's group gets the terminal,
//! so an application that reads its input is not stopped by SIGTTIN, and
//! ^C typed on the terminal still runs pre-stop, once.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::http::TestServer;
use crate::support::{Sandbox, lifehook, wait_for_exit, wait_until};

/// The controlling side of a pseudo-terminal, and what was read from it.
struct Pty {
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
}

#[expect(
    unsafe_code,
    reason = "posix_openpt, grantpt, unlockpt, ptsname_r and open with checked results"
)]
fn open_pty() -> (File, OwnedFd) {
    // SAFETY: each call gets valid arguments; every descriptor returned is
    // checked and owned exactly once.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt failed");
        assert_eq!(libc::grantpt(master), 0, "grantpt");
        assert_eq!(libc::unlockpt(master), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(master, name.as_mut_ptr(), name.len()),
            0,
            "ptsname_r"
        );
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(slave >= 0, "open the pty's terminal side");
        (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
    }
}

#[expect(
    unsafe_code,
    reason = "setsid and ioctl(TIOCSCTTY) between fork and exec"
)]
fn start_on_terminal(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Standard input (the pty) becomes the controlling terminal.
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `lifehook exec <args>` in the sandbox, its three standard descriptors
/// on a new pseudo-terminal that is its controlling terminal.
fn exec_on_pty(s: &Sandbox, args: &[&str]) -> (Child, Pty) {
    let (master, slave) = open_pty();
    let mut cmd = lifehook();
    cmd.arg("exec")
        .args(args)
        .current_dir(s.dir.path())
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave));
    start_on_terminal(&mut cmd);
    let child = cmd.spawn().expect("start lifehook exec on a pty");
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut reader = master.try_clone().expect("dup the master");
    let sink = output.clone();
    // Drains the terminal, so that nothing blocks writing to it.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    (child, Pty { master, output })
}

impl Pty {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("lock")).into_owned()
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type on the terminal");
    }
}

#[test]
fn the_app_reads_the_terminal_and_control_c_runs_pre_stop_once() {
    let (s, backend) = (Sandbox::new(), TestServer::start());
    s.pipeline(&format!(
        "[pre-stop]\n[[pre-stop.steps]]\nname = \"notify\"\nplugin = \"@notify\"\nallow.http = [\"{}\"]\nconfig = {{ url = \"{}\", body = \"bye\" }}\n",
        backend.origin(),
        backend.url("/ok")
    ));
    // Reads a line from the terminal: in a background group, SIGTTIN would
    // stop it and it would never answer.
    let (mut child, mut pty) = exec_on_pty(
        &s,
        &[
            "--",
            "sh",
            "-c",
            "read line; echo \"got:$line\"; exec sleep 30",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    pty.type_keys(b"hello\n");
    assert!(
        wait_until(Duration::from_secs(10), || pty.text().contains("got:hello")),
        "the app could not read its terminal:\n{}",
        pty.text()
    );
    // ^C goes to the foreground group, the app's.
    pty.type_keys(b"\x03");
    let code = wait_for_exit(&mut child, Duration::from_secs(20)).map(|s| s.code().unwrap_or(-1));
    let text = pty.text();
    assert_eq!(code, Some(130), "{text}");
    assert!(
        text.contains("interrupted from the terminal: running pre-stop"),
        "{text}"
    );
    assert_eq!(text.matches("lifehook pre-stop: ok").count(), 1, "{text}");
    assert_eq!(backend.requests().len(), 1, "pre-stop ran once:\n{text}");
}
