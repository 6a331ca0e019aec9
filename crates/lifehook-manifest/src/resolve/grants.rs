//! What a step may reach (`allow`) and the environment it is given (`env`).
//! Nothing is granted by default; each entry is parsed here into the form
//! the runtime's gates compare against, so a grant the runtime would not
//! understand is an error in the file, not a silent denial at run time.

use super::{Resolver, normalize};
use crate::grant::{DirGrant, HttpGrant, TcpGrant};
use crate::interpolate::{interpolate, is_env_name};
use crate::pipeline::Grants;
use crate::schema::RawStep;

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
            if let Some(text) = self.text(entry) {
                match HttpGrant::parse(&text) {
                    Ok(g) => grants.http.push(g),
                    Err(e) => self.problem(entry, e.to_string(), Some(e.help().into())),
                }
            }
        }
        // `host:port`; a name is resolved by the runtime at each attempt.
        for entry in &raw.allow.tcp {
            if let Some(text) = self.text(entry) {
                match TcpGrant::parse(&text) {
                    Ok(g) => grants.tcp.push(g),
                    Err(e) => self.problem(entry, e.to_string(), Some(e.help().into())),
                }
            }
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
        grants
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
