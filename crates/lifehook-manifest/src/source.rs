//! Where a step's plugin comes from: a file, or an OCI registry
//! (`oci://REGISTRY/REPOSITORY:TAG`, `@sha256:DIGEST`, or both), with an
//! optional pin on the plugin's own SHA-256 and a pull policy.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A step's plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginRef {
    /// Where it comes from.
    #[serde(rename = "plugin")]
    pub source: PluginSource,
    /// The SHA-256 the plugin's bytes must have (`sha256 = "..."`), hex.
    pub sha256: Option<String>,
    /// When to pull an OCI plugin.
    pub pull: PullPolicy,
}

impl PluginRef {
    /// The local file, for a file plugin.
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            PluginSource::File(path) => Some(path),
            PluginSource::Oci(_) => None,
        }
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            PluginSource::File(path) => write!(f, "{}", path.display()),
            PluginSource::Oci(r) => write!(f, "{r}"),
        }
    }
}

/// A file or a registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// An absolute path.
    File(PathBuf),
    /// An OCI artifact.
    Oci(OciReference),
}

impl Serialize for PluginSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PluginSource::File(path) => path.serialize(s),
            PluginSource::Oci(r) => s.collect_str(r),
        }
    }
}

/// When an OCI plugin is pulled (Istio's WasmPlugin policies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Only when its digest is not in the cache (a tag is never pulled by
    /// `run`: `compile` resolves it and records the digest in the lock).
    #[default]
    IfNotPresent,
    /// On every run (resolving a tag again); the cache when the registry
    /// cannot be reached and the digest is pinned.
    Always,
    /// Never: the cache or nothing.
    Never,
}

/// `oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciReference {
    /// `host[:port]`.
    pub registry: String,
    /// `path/to/repo`, lower-case.
    pub repository: String,
    /// The tag, if given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, if given; it wins over the tag.
    pub digest: Option<String>,
}

impl OciReference {
    /// The reference without the scheme, as registries spell it.
    pub fn without_scheme(&self) -> String {
        let mut out = format!("{}/{}", self.registry, self.repository);
        if let Some(tag) = &self.tag {
            out += &format!(":{tag}");
        }
        if let Some(digest) = &self.digest {
            out += &format!("@{digest}");
        }
        out
    }

    /// The same repository, pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> OciReference {
        OciReference {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    /// Parses `oci://...`; the error says what is wrong and how to write it.
    pub fn parse(text: &str) -> Result<OciReference, String> {
        let rest = text
            .strip_prefix("oci://")
            .ok_or_else(|| format!("{text:?} is not an oci:// reference"))?;
        // Right to left, as the distribution grammar is read: the digest
        // after `@`, then the registry before the first `/`, then a tag
        // after the last `:` that follows the last `/` (a registry's port
        // also uses `:`).
        let (rest, digest) = match rest.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (rest, None),
        };
        if let Some(digest) = digest {
            check_digest(digest).map_err(|why| format!("in {text:?}: {why}"))?;
        }
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            format!("{text:?} has no repository: write oci://REGISTRY/REPOSITORY:TAG")
        })?;
        // The registry must be written: without Docker's implicit
        // `docker.io`, a reference says where it is pulled from, and
        // `oci://hooks/notify` cannot silently mean Docker Hub.
        if registry.is_empty() || !registry.contains(['.', ':']) && registry != "localhost" {
            return Err(format!(
                "{text:?} does not start with a registry host: write oci://registry.example.com/hooks/notify:1.0 (a host with a dot or a port, or localhost)"
            ));
        }
        if !is_registry_host(registry) {
            return Err(format!(
                "{text:?}: registry {registry:?} is not a host name or address with an optional port (letters, digits, `.` and `-`, then `:PORT`)"
            ));
        }
        // A tag follows the last `:` after the last `/`.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        if !repository.is_empty()
            && !repository.split('/').all(|part| {
                part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
            })
        {
            return Err(format!(
                "{text:?}: repository {repository:?} must be lower-case letters, digits, `.`, `_`, `-` and `/`"
            ));
        }
        if !repository.split('/').all(is_path_component) {
            return Err(format!(
                "{text:?}: repository {repository:?} is outside the OCI distribution grammar: each `/`-separated part is lower-case letters and digits, joined by single `.`, `_` or `__`, or by `-`s (no empty part, none that starts or ends with a separator, so no `..`)"
            ));
        }
        if let Some(tag) = tag {
            let ok = tag.len() <= 128
                && tag
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(format!(
                    "{text:?}: tag {tag:?} is not a valid tag (up to 128 letters, digits, `.`, `_` and `-`, not starting with `.` or `-`)"
                ));
            }
        }
        // No implicit `latest`: a hook that follows whatever was pushed last
        // is a choice to write out.
        if tag.is_none() && digest.is_none() {
            return Err(format!(
                "{text:?} names neither a tag nor a digest: add `:TAG`, `@sha256:DIGEST` (which can never change) or both"
            ));
        }
        // Host names are case-insensitive; lower-cased once here so that
        // the insecure-registry list and the cache compare them as text.
        Ok(OciReference {
            registry: registry.to_ascii_lowercase(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}", self.without_scheme())
    }
}

/// One part of a repository name in the OCI distribution grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(part: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = part.as_bytes();
    let mut i = 0;
    loop {
        // A run of letters and digits...
        let start = i;
        while i < bytes.len() && alnum(char::from(bytes[i])) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // ...then one separator before the next run.
        let sep = i;
        while i < bytes.len() && !alnum(char::from(bytes[i])) {
            i += 1;
        }
        let separator = &part[sep..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
}

/// `host[:port]`: a DNS name or an IPv4 address, then an optional port.
fn is_registry_host(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    port_ok && host_ok
}

/// `sha256:` and 64 lower-case hex digits.
pub fn check_digest(digest: &str) -> Result<(), String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {digest:?} must start with `sha256:`"))?;
    check_sha256(hex).map_err(|why| format!("digest {digest:?}: {why}"))
}

/// 64 lower-case hex digits.
pub fn check_sha256(hex: &str) -> Result<(), String> {
    if hex.len() == 64
        && hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        Ok(())
    } else {
        Err(format!(
            "{hex:?} is not a SHA-256: 64 lower-case hex digits, as `sha256sum` prints"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_in_every_form() {
        let r = OciReference::parse("oci://127.0.0.1:5000/hooks/notify:1.0").expect("tag");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "hooks/notify")
        );
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        let r = OciReference::parse(&format!("oci://ghcr.io/acme/notify@{D}")).expect("digest");
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(D)));
        let both = format!("oci://localhost/notify:v2@{D}");
        let r = OciReference::parse(&both).expect("both");
        assert_eq!(r.to_string(), both);
        assert_eq!(r.pinned(D).digest.as_deref(), Some(D));
    }

    #[test]
    fn bad_references_say_how_to_write_them() {
        let err = |t: &str| OciReference::parse(t).unwrap_err();
        assert!(err("oci://notify:1.0").contains("has no repository"));
        assert!(err("oci://hub/notify:1.0").contains("does not start with a registry host"));
        assert!(err("oci://r.io/Notify:1").contains("must be lower-case"));
        assert!(err("oci://r.io/notify").contains("neither a tag nor a digest"));
        assert!(err("oci://r.io/notify@sha256:abc").contains("64 lower-case hex"));
        assert!(err("oci://r.io/notify@md5:abc").contains("must start with `sha256:`"));
        assert!(err("oci://r.io/notify:a b").contains("not a valid tag"));
        assert!(err("oci://r.io/notify:.hidden").contains("not a valid tag"));
        for outside in [
            "oci://r.io/../../etc:1",
            "oci://r.io/hooks/..:1",
            "oci://r.io//notify:1",
            "oci://r.io/notify-:1",
            "oci://r.io/_notify:1",
            "oci://r.io/a...b:1",
            "oci://r.io/a___b:1",
        ] {
            assert!(
                err(outside).contains("outside the OCI distribution grammar"),
                "{outside}: {}",
                err(outside)
            );
        }
        for inside in ["oci://r.io/a.b/c_d/e__f/g-h/i--j:1", "oci://r.io/0/9:_x"] {
            OciReference::parse(inside).expect(inside);
        }
        assert!(err("oci://r.io:x/notify:1").contains("is not a host name"));
        assert!(err("oci://r.io:5000:1/notify:1").contains("is not a host name"));
    }
}
