//! A real OCI registry (`docker-registry`, the CNCF distribution server) on
//! a free loopback port, with its own storage, optionally behind htpasswd
//! basic auth; and raw registry calls for pushing what `lifehook push`
//! refuses to.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::{free_port, require_binary, wait_until};

pub struct Registry {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    /// `(user, password)` when it requires basic auth.
    pub credentials: Option<(String, String)>,
}

impl Registry {
    /// An open registry.
    pub fn start() -> Registry {
        Registry::launch(None, free_port(), tempfile::tempdir().expect("temp dir"))
    }

    /// A registry that requires `user` / `password`.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::launch(
            Some((user.to_owned(), password.to_owned())),
            free_port(),
            tempfile::tempdir().expect("temp dir"),
        )
    }

    fn launch(
        credentials: Option<(String, String)>,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Registry {
        let binary = require_binary("docker-registry", "docker-registry");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = &credentials {
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
            config += &format!(
                "auth:\n  htpasswd:\n    realm: lifehook-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let file = dir.path().join("config.yml");
        std::fs::write(&file, config).expect("write registry config");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            port,
            child,
            dir,
            credentials,
        };
        assert!(
            wait_until(Duration::from_secs(20), || registry.get("/v2/").is_some()),
            "docker-registry did not start on port {port}"
        );
        registry
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `oci://127.0.0.1:PORT/<path>`.
    pub fn reference(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.host())
    }

    /// Stops the registry (its storage is kept).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `Authorization` header's value, when it requires basic auth.
    fn authorization(&self) -> Option<String> {
        use base64::Engine as _;
        self.credentials.as_ref().map(|(user, password)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        })
    }

    /// One request with `headers` (and the credentials, if any); the
    /// status, the response headers and the body. `None` when the registry
    /// cannot be reached.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<(u16, ureq::http::HeaderMap, Vec<u8>)> {
        let url = format!("http://{}{path}", self.host());
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(authorization) = self.authorization() {
            request = request.header("Authorization", authorization);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let client = super::http_client();
        let answered = if body.is_empty() {
            client.run(request.body(()).ok()?)
        } else {
            client.run(request.body(body.to_vec()).ok()?)
        };
        let mut response = answered.ok()?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .ok()?;
        Some((status, headers, body))
    }

    fn get(&self, path: &str) -> Option<(u16, ureq::http::HeaderMap, Vec<u8>)> {
        self.request("GET", path, &[], b"")
    }

    /// Uploads a blob to `repository`; its digest.
    pub fn put_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        let (status, head, _) = self
            .request(
                "POST",
                &format!("/v2/{repository}/blobs/uploads/"),
                &[],
                b"",
            )
            .expect("start upload");
        assert_eq!(status, 202, "{head:?}");
        let location = head
            .get("location")
            .and_then(|l| l.to_str().ok())
            .expect("upload location")
            .trim()
            .to_owned();
        let path = location
            .strip_prefix(&format!("http://{}", self.host()))
            .unwrap_or(&location)
            .to_owned();
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, head, _) = self
            .request(
                "PUT",
                &format!("{path}{sep}digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                bytes,
            )
            .expect("finish upload");
        assert_eq!(status, 201, "{head:?}");
        digest
    }

    /// Pushes an OCI manifest with `config` (of `config_type`) and one layer
    /// per `(media type, bytes)`, under `tag`; the manifest digest.
    pub fn put_artifact(
        &self,
        repository: &str,
        tag: &str,
        config_type: &str,
        config: &[u8],
        layers: &[(&str, &[u8])],
    ) -> String {
        let config_digest = self.put_blob(repository, config);
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(media_type, bytes)| {
                serde_json::json!({
                    "mediaType": media_type,
                    "digest": self.put_blob(repository, bytes),
                    "size": bytes.len(),
                })
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))
        .expect("manifest json");
        let (status, head, _) = self
            .request(
                "PUT",
                &format!("/v2/{repository}/manifests/{tag}"),
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
                &manifest,
            )
            .expect("put manifest");
        assert_eq!(status, 201, "{head:?}");
        format!("sha256:{:x}", Sha256::digest(&manifest))
    }

    /// The manifest digest `tag` points at now, if any.
    pub fn digest_of(&self, repository: &str, tag: &str) -> Option<String> {
        let (status, _, body) = self.request(
            "GET",
            &format!("/v2/{repository}/manifests/{tag}"),
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
            b"",
        )?;
        (status == 200).then(|| format!("sha256:{:x}", Sha256::digest(&body)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
