//! `lifehook serve` started by a test, and raw HTTP requests to it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Sandbox, free_port, lifehook, send_signal, wait_until};

/// A `lifehook serve` on a free loopback port, stopped with SIGTERM when
/// dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    pub fn start(s: &Sandbox, extra: &[&str]) -> Server {
        Server::start_with(s, extra, |_| {})
    }

    /// Like [`Server::start`], after letting `setup` adjust the command.
    pub fn start_with(s: &Sandbox, extra: &[&str], setup: impl FnOnce(&mut Command)) -> Server {
        Server::start_at(s, free_port(), extra, setup)
    }

    /// Like [`Server::start_with`], on `port` (a pipeline that calls the
    /// server itself needs it before the server starts).
    pub fn start_at(
        s: &Sandbox,
        port: u16,
        extra: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Server {
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = lifehook();
        cmd.args(["serve", "--listen", &listen])
            .args(extra)
            .current_dir(s.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        setup(&mut cmd);
        let child = cmd.spawn().expect("start lifehook serve");
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(&listen).is_ok()
        });
        assert!(up, "lifehook serve did not listen on {listen}");
        Server { child, port }
    }

    pub fn request(&self, raw: &str) -> Reply {
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

    pub fn get(&self, path: &str, headers: &str) -> Reply {
        self.request(&format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n"
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            send_signal(self.child.id(), libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// An answer: its status, its head (lowercased) and its body.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn run_kind(&self) -> &str {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix("lifehook-run: "))
            .unwrap_or("")
    }
}
