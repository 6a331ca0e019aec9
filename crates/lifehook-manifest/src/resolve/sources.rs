//! Where a step's plugin comes from: a file next to the pipeline (which must
//! exist, when the file is checked where it runs) or an OCI reference, with
//! its `sha256` pin and pull policy; and the `[oci]` settings.

use std::path::PathBuf;

use toml::Spanned;

use super::Resolver;
use crate::schema::RawStep;
use crate::source::{OciReference, PluginRef, PluginSource};

impl Resolver<'_> {
    /// `[oci] insecure-registries`, lower-cased as `OciReference` keeps its
    /// registry, so the runtime compares them as they are.
    pub(super) fn insecure_registries(&mut self, entries: &[Spanned<String>]) -> Vec<String> {
        let mut hosts = Vec::new();
        for entry in entries {
            let Some(host) = self.text(entry) else {
                continue;
            };
            if host.contains("://") || host.contains('/') || host.is_empty() {
                self.problem(
                    entry,
                    format!("insecure registry {host:?} is not a `host:port`"),
                    Some("write the registry as it appears in oci:// references, like \"127.0.0.1:5000\"".into()),
                );
            } else {
                hosts.push(host.to_ascii_lowercase());
            }
        }
        hosts
    }

    /// The plugin reference: a file (which must exist) or an OCI
    /// reference, with its `sha256` pin and pull policy.
    pub(super) fn plugin(&mut self, raw: &Spanned<String>, step: &RawStep) -> PluginRef {
        let sha256 = step.sha256.as_ref().and_then(|pin| {
            let hex = self.text(pin)?;
            match crate::source::check_sha256(&hex) {
                Ok(()) => Some(hex),
                Err(why) => {
                    self.problem(
                        pin,
                        format!("invalid sha256 pin: {why}"),
                        Some("pin the plugin with `sha256sum plugin.wasm`".into()),
                    );
                    None
                }
            }
        });
        let text = self.text(raw).unwrap_or_default();
        let source = if text.starts_with("oci://") {
            match OciReference::parse(&text) {
                Ok(r) => PluginSource::Oci(r),
                Err(why) => {
                    self.problem(
                        raw,
                        why,
                        Some("write oci://REGISTRY/REPOSITORY:TAG, @sha256:DIGEST, or both".into()),
                    );
                    PluginSource::File(PathBuf::new())
                }
            }
        } else {
            if step.pull.is_some() {
                self.problem(
                    raw,
                    "`pull` applies to oci:// plugins only",
                    Some("a file plugin is read where it is; remove `pull`".into()),
                );
            }
            PluginSource::File(self.plugin_file(raw, &text))
        };
        PluginRef {
            source,
            sha256,
            pull: step.pull.unwrap_or_default(),
        }
    }

    /// A plugin file, relative to the pipeline's directory. Looked for only
    /// when the pipeline runs on this filesystem: a missing plugin is then
    /// a mistake in the file, better found by `check` than at shutdown.
    fn plugin_file(&mut self, raw: &Spanned<String>, text: &str) -> PathBuf {
        if text.is_empty() {
            return PathBuf::new();
        }
        let path = self.base_dir.join(text);
        if !self.plugin_files_here {
            return path;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.problem(
                raw,
                format!("plugin {} is not a file", path.display()),
                Some("`plugin` names a .wasm component file".into()),
            ),
            Err(e) => self.problem(
                raw,
                format!("plugin file {} cannot be read: {e}", path.display()),
                Some("plugin paths are relative to the pipeline file's directory; build the plugin or fix the path".into()),
            ),
        }
        path
    }
}
