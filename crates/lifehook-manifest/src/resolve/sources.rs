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
            // A scheme or a path here would never equal a reference's
            // registry, so plain HTTP would silently not apply: refuse it.
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
    /// reference, with its `sha256` pin and pull policy. `pull` on a file
    /// is an error rather than ignored: it says the author expected a pull
    /// that will never happen.
    pub(super) fn plugin(&mut self, raw: &Spanned<String>, step: &RawStep) -> PluginRef {
        // The pin is checked for its form only here; the bytes are checked
        // against it by the runtime, before they are compiled or run.
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
        // The scheme decides: anything else is a file, so a typo in a
        // scheme (`oc://`) ends as "plugin file ... cannot be read", which
        // names the path. A bad reference still yields a placeholder source
        // so that the rest of the step is checked too.
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
