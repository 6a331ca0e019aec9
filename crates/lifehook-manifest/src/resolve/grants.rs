//! What a step may reach (`allow`) and the environment it is given (`env`).
//! Nothing is granted by default; each entry is parsed here into the form
//! the runtime's gates compare against, so a grant the runtime would not
//! understand is an error in the file, not a silent denial at run time.

use std::path::PathBuf;

use toml::Spanned;

use super::{Resolver, normalize};
use crate::grant::{ClientCert, DirGrant, GrantTls, HttpGrant, Scheme, TcpGrant};
use crate::interpolate::{interpolate, is_env_name};
use crate::pipeline::Grants;
use crate::schema::{Access, RawStep, RawTls};

impl Resolver<'_> {
    /// The step's `allow` table, every entry parsed. A bad entry is a
    /// problem located at that entry and leaves it out; the others are still
    /// checked, so one `lifehook check` lists every bad grant of the file.
    pub(super) fn grants(&mut self, raw: &RawStep) -> Grants {
        let mut grants = Grants::default();
        // Origins (scheme, host, port), not URLs: the HTTP gate compares a
        // request's origin, and a path in a grant would suggest a narrower
        // grant than the gate enforces.
        for entry in &raw.allow.http {
            let written = entry.get_ref();
            let Some(text) = self.text(&Spanned::new(entry.span(), written.origin.clone())) else {
                continue;
            };
            let mut grant = match HttpGrant::parse(&text) {
                Ok(g) => g,
                Err(e) => {
                    self.problem(entry, e.to_string(), Some(e.help().into()));
                    continue;
                }
            };
            if !written.tls.is_empty() {
                // TLS settings on an origin that may be plain would be
                // settings that silently do nothing for half its requests.
                if grant.scheme != Some(Scheme::Https) {
                    self.problem(
                        entry,
                        format!(
                            "HTTP grant {text:?} has TLS settings but is not an https:// origin"
                        ),
                        Some(format!("write origin = \"https://{}\"", grant.host_port())),
                    );
                    continue;
                }
                grant.tls = self.tls_files(entry, &written.tls);
                if grant.tls.is_none() {
                    continue;
                }
            }
            grants.http.push(grant);
        }
        // `host:port`; a name is resolved by the runtime at each attempt.
        for entry in &raw.allow.tcp {
            let written = entry.get_ref();
            let Some(text) = self.text(&Spanned::new(entry.span(), written.address.clone())) else {
                continue;
            };
            let mut grant = match TcpGrant::parse(&text) {
                Ok(g) => g,
                Err(e) => {
                    self.problem(entry, e.to_string(), Some(e.help().into()));
                    continue;
                }
            };
            if written.tls {
                grant.tls = self.tls_files(entry, &written.files);
                if grant.tls.is_none() {
                    continue;
                }
            } else if !written.files.is_empty() {
                self.problem(
                    entry,
                    format!("TCP grant {text:?} names TLS files but not `tls = true`"),
                    Some("add tls = true (the plugin then speaks TLS through wasi:tls), or drop ca, cert and key".into()),
                );
                continue;
            }
            grants.tcp.push(grant);
        }
        // Directories: the host side is relative to the pipeline file (so a
        // pipeline and its data can move together), the guest side is where
        // the plugin sees it, by default the same absolute path.
        for entry in &raw.allow.dirs {
            let dir = entry.get_ref();
            let host = match interpolate(&dir.host, self.env) {
                Ok(h) => h,
                Err(e) => {
                    self.problem(entry, e.to_string(), Some(e.help()));
                    continue;
                }
            };
            let guest = match dir.guest.as_deref().map(|g| interpolate(g, self.env)) {
                Some(Ok(g)) => Some(g),
                Some(Err(e)) => {
                    self.problem(entry, e.to_string(), Some(e.help()));
                    continue;
                }
                None => None,
            };
            // Lexically normalised: the gate compares paths as strings, and
            // the plugin sees the directory where the file says, without
            // `..` in it.
            let host_path = normalize(&self.base_dir.join(&host));
            let guest = guest.unwrap_or_else(|| host_path.to_string_lossy().into_owned());
            if !guest.starts_with('/') {
                self.problem(
                    entry,
                    format!("guest path {guest:?} is not absolute"),
                    Some("write where the plugin sees the directory as an absolute path, like guest = \"/state\"".into()),
                );
                continue;
            }
            grants.dirs.push(DirGrant {
                host: host_path,
                guest,
                access: dir.access,
            });
        }
        // Variable names only: their values are read from the runner's
        // environment at each attempt, never written into the pipeline.
        for entry in &raw.allow.env {
            if is_env_name(entry.get_ref()) {
                grants.env.push(entry.get_ref().clone());
            } else {
                self.problem(
                    entry,
                    format!(
                        "`{}` is not a valid environment variable name",
                        entry.get_ref()
                    ),
                    Some("list variable names only, like env = [\"POD_NAME\"]".into()),
                );
            }
        }
        self.keys_in_dirs(raw, &grants);
        grants
    }

    /// A grant's TLS files, each interpolated and resolved against the
    /// pipeline file's directory (like `allow.dirs`). `None` after a
    /// problem. The files themselves are read when a step starts, and by
    /// `check`: they are Secrets, mounted in the container, not here.
    fn tls_files<T>(&mut self, entry: &Spanned<T>, raw: &RawTls) -> Option<GrantTls> {
        let mut path = |value: &Option<String>| -> Result<Option<PathBuf>, ()> {
            let Some(value) = value else {
                return Ok(None);
            };
            match interpolate(value, self.env) {
                Ok(v) if v.is_empty() => {
                    self.problem(
                        entry,
                        "a TLS file path is empty",
                        Some("name a PEM file, like ca = \"/etc/tls/ca.crt\"".into()),
                    );
                    Err(())
                }
                Ok(v) => Ok(Some(normalize(&self.base_dir.join(v)))),
                Err(e) => {
                    self.problem(entry, e.to_string(), Some(e.help()));
                    Err(())
                }
            }
        };
        let ca = path(&raw.ca).ok()?;
        let cert = path(&raw.cert).ok()?;
        let key = path(&raw.key).ok()?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                self.problem(
                    entry,
                    "a client certificate needs both `cert` and `key`",
                    Some("name the certificate and its private key: cert = \"/etc/tls/client.crt\", key = \"/etc/tls/client.key\"".into()),
                );
                return None;
            }
        };
        Some(GrantTls {
            ca,
            client,
            written: Some(self.diagnostic(entry, "", None)),
        })
    }

    /// Warns when a client key lies inside a directory the same step
    /// grants: the plugin could read the key it was meant never to hold.
    fn keys_in_dirs(&mut self, raw: &RawStep, grants: &Grants) {
        fn client(tls: &Option<GrantTls>) -> Option<&ClientCert> {
            tls.as_ref()?.client.as_ref()
        }
        let keys = grants
            .http
            .iter()
            .filter_map(|g| Some((client(&g.tls)?, g.to_string())))
            .chain(
                grants
                    .tcp
                    .iter()
                    .filter_map(|g| Some((client(&g.tls)?, g.to_string()))),
            );
        let mut found = Vec::new();
        for (client, grant) in keys {
            for dir in &grants.dirs {
                if client.key.starts_with(&dir.host) {
                    let access = match dir.access {
                        Access::Read => "read-only",
                        Access::ReadWrite => "read-write",
                    };
                    found.push(format!(
                        "the client key {} of grant {grant} is readable by the plugin through the {access} directory grant {}",
                        client.key.display(),
                        dir.host.display()
                    ));
                }
            }
        }
        let Some(at) = raw.allow.dirs.first().map(Spanned::span) else {
            return;
        };
        for message in found {
            let d = self
                .diagnostic(&Spanned::new(at.clone(), ()), message, Some("the runner reads the key itself: keep it outside every granted directory (mount the Secret at a path of its own)".into()))
                .warning();
            self.findings.push(d);
        }
    }

    /// `env`: fixed values set for the plugin, interpolated here. (Passing
    /// the runner's own variables through is a grant: `allow.env`.)
    pub(super) fn env_values(&mut self, raw: &RawStep) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for (key, value) in &raw.env {
            if !is_env_name(key.get_ref()) {
                self.problem(
                    key,
                    format!(
                        "`{}` is not a valid environment variable name",
                        key.get_ref()
                    ),
                    Some("names are letters, digits and `_`, not starting with a digit".into()),
                );
            }
            // Kept even under a bad name, so the problem above is the only
            // one reported for this entry.
            if let Some(v) = self.text(value) {
                env.push((key.get_ref().clone(), v));
            }
        }
        env
    }
}
