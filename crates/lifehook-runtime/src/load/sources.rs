//! Where plugin bytes come from. A file plugin is read where it is. An OCI
//! plugin lives in the cache, content-addressed by its manifest digest
//! (`<cache>/oci/sha256-<hex>.wasm`), put there by a pull; a tag is turned
//! into a digest by `lifehook compile`, which records it in the lock file
//! (`lifehook.lock`, next to the pipeline) that `run` honours. So a
//! digest-pinned plugin never changes under a running pod, and `run` needs
//! no network for it.
//!
//! Pulling needs the `oci` feature (the full build); without it, pinned
//! plugins still run from the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lifehook_manifest::{OciReference, PluginRef, PluginSource, PullPolicy};
use sha2::{Digest as _, Sha256};

use crate::atomic::{WriteOptions, atomic_write};

/// Why a plugin's bytes cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A tag that neither the reference nor the lock file pins.
    #[error(
        "{reference} is not pinned to a digest: run `lifehook compile` (which pulls it and records its digest in {lock}), pin it with @sha256:..., or set pull = \"always\""
    )]
    NotPinned {
        /// The reference.
        reference: String,
        /// The lock file consulted.
        lock: String,
    },
    /// Pinned, not in the cache, and the policy forbids a pull.
    #[error(
        "{reference} ({digest}) is not in the cache {cache} and pull = \"never\": run `lifehook compile` where the registry is reachable"
    )]
    NotInCache {
        /// The reference.
        reference: String,
        /// Its digest.
        digest: String,
        /// The cache directory.
        cache: String,
    },
    /// OCI plugins need a cache directory to live in.
    #[error(
        "{reference} needs a cache directory to be pulled into: pass --cache or set LIFEHOOK_CACHE"
    )]
    NoCache {
        /// The reference.
        reference: String,
    },
    /// This build cannot pull.
    #[error(
        "{reference} is not in the cache, and this lifehook was built without registry support: pull it with `lifehook compile` in a full build"
    )]
    NoRegistrySupport {
        /// The reference.
        reference: String,
    },
    /// The registry refused or failed.
    #[error("cannot pull {reference}: {message}")]
    Pull {
        /// The reference.
        reference: String,
        /// What went wrong, from the registry or the network.
        message: String,
    },
    /// The registry refused a push or failed.
    #[error("cannot push {reference}: {message}")]
    Push {
        /// The reference.
        reference: String,
        /// What went wrong, from the registry or the network.
        message: String,
    },
    /// The plugin's bytes do not have the pinned SHA-256.
    #[error(
        "plugin {plugin} has SHA-256 {actual}, but the step pins sha256 = \"{expected}\": refusing to run other content than the pinned one"
    )]
    Sha256 {
        /// The plugin.
        plugin: String,
        /// The pin.
        expected: String,
        /// What it has.
        actual: String,
    },
    /// The lock file is not valid TOML of the right shape.
    #[error(
        "cannot parse the lock file {path} (`lifehook compile` writes it; fix it, or delete it and run `lifehook compile` again)"
    )]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// The TOML error, with its line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Registry settings: which registries are plain HTTP, how long a pull may
/// take. Credentials come from the environment at pull time (see `oci`).
#[derive(Debug, Clone)]
pub struct Registries {
    /// `host:port` reached over HTTP; all others over HTTPS only.
    pub insecure: Vec<String>,
    /// The longest one plugin's pull may take, sign-in to last byte.
    pub pull_timeout: std::time::Duration,
}

impl Registries {
    /// The pull timeout when none is given.
    pub const DEFAULT_PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
}

impl Default for Registries {
    fn default() -> Registries {
        Registries {
            insecure: Vec::new(),
            pull_timeout: Registries::DEFAULT_PULL_TIMEOUT,
        }
    }
}

/// The tags `lifehook compile` resolved, by reference without digest.
#[derive(Debug, Clone, Default)]
pub struct Lock {
    path: PathBuf,
    pins: BTreeMap<String, String>,
    changed: bool,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct LockFile {
    #[serde(default)]
    plugins: BTreeMap<String, String>,
}

impl Lock {
    /// The lock file of the pipeline at `pipeline` (missing is empty).
    pub fn for_pipeline(pipeline: &Path) -> Result<Lock, SourceError> {
        let path = pipeline.with_file_name("lifehook.lock");
        let pins = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: LockFile =
                    toml::from_str(&text).map_err(|source| SourceError::LockFile {
                        path: path.clone(),
                        source,
                    })?;
                file.plugins
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(SourceError::Io {
                    what: "cannot read the lock file",
                    path,
                    source,
                });
            }
        };
        Ok(Lock {
            path,
            pins,
            changed: false,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn key(r: &OciReference) -> String {
        OciReference {
            digest: None,
            ..r.clone()
        }
        .to_string()
    }

    /// The digest recorded for `r`'s tag.
    pub fn get(&self, r: &OciReference) -> Option<&str> {
        self.pins.get(&Lock::key(r)).map(String::as_str)
    }

    /// Records that `r`'s tag resolved to `digest`.
    pub fn set(&mut self, r: &OciReference, digest: &str) {
        let old = self.pins.insert(Lock::key(r), digest.to_owned());
        self.changed |= old.as_deref() != Some(digest);
    }

    /// Writes the lock file (atomically) when a pin changed, so a
    /// read-only pipeline directory with an up-to-date lock is fine.
    pub fn save(&self) -> Result<(), SourceError> {
        if !self.changed {
            return Ok(());
        }
        let io = |source| SourceError::Io {
            what: "cannot write the lock file",
            path: self.path.clone(),
            source,
        };
        let body = toml::to_string(&LockFile {
            plugins: self.pins.clone(),
        })
        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let text = format!(
            "# Written by `lifehook compile`: the digest each tagged plugin resolved to.\n# `lifehook run` uses these and never pulls a tag on its own.\n{body}"
        );
        atomic_write(&self.path, &[text.as_bytes()], WriteOptions::default()).map_err(io)
    }
}

/// Resolves plugins to local files.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    cache_dir: Option<PathBuf>,
    /// The pins of tagged references.
    pub lock: Lock,
    /// Registry settings.
    pub registries: Registries,
}

impl Sources {
    /// Plugins for a pipeline whose cache is `cache_dir`.
    pub fn new(cache_dir: Option<PathBuf>, lock: Lock, registries: Registries) -> Sources {
        Sources {
            cache_dir,
            lock,
            registries,
        }
    }

    /// Where the plugin of manifest `digest` is kept.
    fn blob(&self, reference: &OciReference, digest: &str) -> Result<PathBuf, SourceError> {
        let cache = self
            .cache_dir
            .as_ref()
            .ok_or_else(|| SourceError::NoCache {
                reference: reference.to_string(),
            })?;
        Ok(cache
            .join("oci")
            .join(format!("{}.wasm", digest.replace(':', "-"))))
    }

    /// The local file of `plugin`, pulling an OCI plugin when its policy
    /// allows; the `sha256` pin, if any, checked.
    pub async fn local(&self, plugin: &PluginRef) -> Result<PathBuf, SourceError> {
        let path = match &plugin.source {
            PluginSource::File(path) => path.clone(),
            PluginSource::Oci(r) => self.oci(r, plugin.pull).await?,
        };
        if let Some(expected) = &plugin.sha256 {
            // Hashing a large plugin takes milliseconds: off the runtime's
            // one thread, where it would stall every concurrent step.
            let (file, expected, name) = (path.clone(), expected.clone(), plugin.to_string());
            tokio::task::spawn_blocking(move || verify_sha256(&file, &expected, &name))
                .await
                .map_err(|e| SourceError::Io {
                    what: "cannot check the SHA-256 of",
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??;
        }
        Ok(path)
    }

    async fn oci(&self, r: &OciReference, policy: PullPolicy) -> Result<PathBuf, SourceError> {
        let pinned = r
            .digest
            .clone()
            .or_else(|| self.lock.get(r).map(str::to_owned));
        if policy == PullPolicy::Always {
            match self.pull(r).await {
                Ok((_, path)) => return Ok(path),
                Err(e) => match &pinned {
                    // The registry is down or refuses: a pinned plugin runs
                    // from the cache.
                    Some(digest) if self.blob(r, digest)?.is_file() => {
                        tracing::warn!("{e}; running the cached {digest} instead");
                        return self.blob(r, digest);
                    }
                    _ => return Err(e),
                },
            }
        }
        let digest = pinned.ok_or_else(|| SourceError::NotPinned {
            reference: r.to_string(),
            lock: self.lock.path().display().to_string(),
        })?;
        let blob = self.blob(r, &digest)?;
        if blob.is_file() {
            return Ok(blob);
        }
        if policy == PullPolicy::Never {
            return Err(SourceError::NotInCache {
                reference: r.to_string(),
                digest,
                cache: self
                    .cache_dir
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
                    .to_string(),
            });
        }
        Ok(self.pull(&r.pinned(&digest)).await?.1)
    }

    /// Pulls `r` (a tag is resolved anew) into the cache: its manifest
    /// digest and local file. Every digest is verified while downloading;
    /// the bytes must be a component, or a WASI preview-1 command module
    /// (adapted when compiled, like a local one), before they are stored.
    pub async fn pull(&self, r: &OciReference) -> Result<(String, PathBuf), SourceError> {
        #[cfg(feature = "oci")]
        {
            let (digest, bytes) = crate::load::oci::pull(r, &self.registries).await?;
            let refused = if wasmparser::Parser::is_component(&bytes) {
                None
            } else if wasmparser::Parser::is_core_wasm(&bytes) {
                crate::load::adapt::refusal(&bytes).map(|why| {
                    format!("its wasm layer is a core module lifehook cannot run: {why}")
                })
            } else {
                Some("its wasm layer is not a WebAssembly component or module (another file was pushed)".to_owned())
            };
            if let Some(message) = refused {
                return Err(SourceError::Pull {
                    reference: r.to_string(),
                    message,
                });
            }
            let blob = self.blob(r, &digest)?;
            write_atomically(&blob, &bytes)?;
            Ok((digest, blob))
        }
        #[cfg(not(feature = "oci"))]
        {
            Err(SourceError::NoRegistrySupport {
                reference: r.to_string(),
            })
        }
    }
}

/// Refuses a file whose SHA-256 is not `expected`.
pub fn verify_sha256(path: &Path, expected: &str, plugin: &str) -> Result<(), SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::Io {
        what: "cannot read plugin",
        path: path.to_path_buf(),
        source,
    })?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(SourceError::Sha256 {
            plugin: plugin.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// The SHA-256 of `bytes`, in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(feature = "oci")]
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        what: "cannot store the pulled plugin",
        path: path.to_path_buf(),
        source,
    };
    let options = WriteOptions {
        readable_by_all: true,
        durable: true,
        create_dir: true,
        ..WriteOptions::default()
    };
    atomic_write(path, &[bytes], options).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_round_trips_and_keys_ignore_digests() {
        let dir = tempfile::tempdir().expect("dir");
        let pipeline = dir.path().join("lifehook.toml");
        let mut lock = Lock::for_pipeline(&pipeline).expect("no lock is an empty one");
        let r = OciReference::parse("oci://127.0.0.1:5000/hooks/notify:1.0").expect("ref");
        let digest = format!("sha256:{}", "a".repeat(64));
        lock.set(&r, &digest);
        lock.save().expect("save");
        let again = Lock::for_pipeline(&pipeline).expect("read");
        assert_eq!(again.get(&r), Some(digest.as_str()));
        assert_eq!(again.get(&r.pinned(&digest)), Some(digest.as_str()));
        let text = std::fs::read_to_string(dir.path().join("lifehook.lock")).expect("file");
        assert!(
            text.starts_with("# Written by `lifehook compile`"),
            "{text}"
        );
    }

    #[test]
    fn a_pin_refuses_other_content() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("p.wasm");
        std::fs::write(&file, b"test").expect("write");
        let good = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        verify_sha256(&file, good, "p.wasm").expect("sha256(test)");
        let bad = verify_sha256(&file, &"0".repeat(64), "p.wasm")
            .unwrap_err()
            .to_string();
        assert!(bad.contains(good) && bad.contains(&"0".repeat(64)), "{bad}");
    }
}
