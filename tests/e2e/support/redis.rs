//! A real redis-server on a free loopback port, with its own data directory.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require_binary, wait_until};

pub struct Redis {
    pub port: u16,
    /// The TLS port, when started with [`Redis::start_tls`].
    pub tls_port: Option<u16>,
    child: Child,
    _dir: tempfile::TempDir,
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with_password(None)
    }

    pub fn start_with_password(password: Option<&str>) -> Redis {
        Self::start_with(password, |_| {}, None)
    }

    /// With a TLS port beside the plain one (which the test's redis-cli
    /// uses): the server certificate from `certs`, clients must present a
    /// certificate from its CA, and an ACL user `lifehook` with password
    /// `s3cret` who may run the release script (the default user needs
    /// `admin-pw`).
    pub fn start_tls(certs: &super::certs::Certs) -> Redis {
        let tls_port = free_port();
        Self::start_with(
            Some("admin-pw"),
            |cmd| {
                cmd.args(["--tls-port", &tls_port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(certs.path("server.crt"))
                    .arg("--tls-key-file")
                    .arg(certs.path("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(certs.path("ca.crt"))
                    .args(["--tls-auth-clients", "yes"])
                    .args([
                        "--user", "lifehook", "on", ">s3cret", "~locks:*", "+eval", "+get", "+del",
                        "+select", "+ping",
                    ]);
            },
            Some(tls_port),
        )
    }

    fn start_with(
        password: Option<&str>,
        extra: impl FnOnce(&mut Command),
        tls_port: Option<u16>,
    ) -> Redis {
        let server = require_binary("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut cmd = Command::new(server);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        extra(&mut cmd);
        let child = cmd.spawn().expect("start redis-server");
        let redis = Redis {
            port,
            tls_port,
            child,
            _dir: dir,
            password: password.map(str::to_owned),
        };
        assert!(
            wait_until(Duration::from_secs(10), || redis.cli(&["PING"]) == "PONG"),
            "redis-server did not start on port {port}"
        );
        redis
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs one command with redis-cli and returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let cli = require_binary("redis-cli", "redis-tools");
        let mut cmd = Command::new(cli);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
