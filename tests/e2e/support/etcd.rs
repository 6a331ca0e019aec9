//! A real etcd on free loopback ports, with its own data directory, driven
//! through its v3 JSON gateway.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{free_port, require_binary, wait_until};

pub struct Etcd {
    pub port: u16,
    /// The HTTPS client port, when started with [`Etcd::start_tls`].
    pub tls_port: Option<u16>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        Self::start_with(None)
    }

    /// With an HTTPS client port beside the plain one (which the test's
    /// own requests use): the server certificate from `certs`, and clients
    /// must present a certificate from its CA (`--client-cert-auth`).
    pub fn start_tls(certs: &super::certs::Certs) -> Etcd {
        Self::start_with(Some(certs))
    }

    fn start_with(certs: Option<&super::certs::Certs>) -> Etcd {
        let etcd = require_binary("etcd", "etcd-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, peer) = (free_port(), free_port());
        let tls_port = certs.map(|_| free_port());
        let mut client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(etcd);
        if let (Some(certs), Some(tls)) = (certs, tls_port) {
            client += &format!(",https://127.0.0.1:{tls}");
            cmd.arg("--cert-file")
                .arg(certs.path("server.crt"))
                .arg("--key-file")
                .arg(certs.path("server.key"))
                .arg("--trusted-ca-file")
                .arg(certs.path("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--name", "lifehook-test"])
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("lifehook-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let etcd = Etcd {
            port,
            tls_port,
            child,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(20), || etcd
                .try_post("/v3/kv/range", &json!({"key": B64.encode("probe")}))
                .is_ok()),
            "etcd did not start on port {port}"
        );
        etcd
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn put(&self, key: &str, value: &str) {
        self.post(
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        );
    }

    /// Puts `key` attached to a new lease; returns the lease id.
    pub fn put_with_lease(&self, key: &str, value: &str) -> String {
        let lease = self.post("/v3/lease/grant", &json!({"TTL": "300"}));
        let id = lease["ID"].as_str().expect("lease id").to_owned();
        self.post(
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value), "lease": id}),
        );
        id
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let reply = self.post("/v3/kv/range", &json!({"key": B64.encode(key)}));
        reply["kvs"][0]["value"]
            .as_str()
            .map(|v| String::from_utf8(B64.decode(v).expect("base64")).expect("utf-8"))
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        self.try_post(path, body).expect("etcd request")
    }

    fn try_post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.endpoint());
        let mut response = super::http_client()
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("POST {url}: {e}"))?;
        if status != 200 {
            return Err(format!("POST {url}: {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("POST {url}: {e}: {text}"))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
