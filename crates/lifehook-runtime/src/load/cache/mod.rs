//! Precompiled plugins: `lifehook compile` writes one artifact per plugin so
//! that `run` loads optimised machine code instead of compiling (0.4 ms
//! instead of 50 ms for a small Rust plugin, and instead of 6-8 s of
//! Cranelift for a Python or JavaScript one). A plugin `run` finds without
//! one is compiled by the baseline compiler, whose code is kept here too as
//! a *baseline artifact* (`<stem>-<hash>.baseline.cwasm`) for the next run,
//! until `compile` replaces it.
//!
//! Artifacts are written to a temporary file and renamed, so a killed
//! process leaves no half artifact, only a `.tmp*` file; `compile` removes
//! those older than ten minutes.
//!
//! An artifact is named after the plugin's content, so a changed plugin never
//! picks up a stale artifact: `<dir>/<plugin stem>-<xxh3-128 of the plugin>.cwasm`.
//! Its last 40 bytes are a trailer: a checksum of everything before it, the
//! hash of the plugin it was compiled from, and a magic word. A truncated,
//! corrupted or foreign file (or one copied from another plugin) fails that
//! check and is ignored with a warning before wasmtime ever sees it; an artifact from another
//! lifehook or wasmtime version, or for another engine configuration, fails
//! wasmtime's own compatibility check and is ignored the same way. Either
//! way `run` falls back to compiling.
//!
//! Artifacts are compiled for the baseline of an architecture (no CPU
//! feature beyond the architecture's own), so an image built on one machine
//! runs its artifacts on nodes with any CPU of it. `lifehook compile
//! --target` makes them for the other architecture (an arm64 image's,
//! built on an x86-64 machine); the trailer records which, and `run` on
//! the other one ignores the artifact with a warning and compiles.

mod artifact;
mod baseline;

#[cfg(feature = "compiler")]
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_128;

pub(crate) use self::artifact::read_plugin;
use self::artifact::{EXTENSION, load_artifact, map_file, verify_trailer};
#[cfg(feature = "compiler")]
use self::artifact::{TRAILER, write_artifact};
pub use self::baseline::finish_cache_writes;
use crate::engine::Host;
use crate::load::plugin::{self, CodeSource, LoadError, Plugin, PluginKind};

/// A directory of precompiled plugins.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// What `compile` did for one plugin.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The plugin file.
    pub plugin: PathBuf,
    /// The artifact written.
    pub artifact: PathBuf,
    /// Hook component or command.
    pub kind: PluginKind,
    /// Size of the plugin.
    pub plugin_size: u64,
    /// Size of the artifact.
    pub artifact_size: u64,
    /// Compile time.
    pub took: Duration,
}

/// Why an artifact could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The plugin itself is unusable.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The artifact could not be written.
    #[error("cannot write artifact {path}: {source}")]
    Write {
        /// The artifact path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ArtifactCache {
    /// A cache in `dir` (created by `compile` when missing).
    pub fn new(dir: impl Into<PathBuf>) -> ArtifactCache {
        ArtifactCache { dir: dir.into() }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact of `plugin`, whose contents hash to
    /// `plugin_hash`, lives.
    fn artifact_path(&self, plugin: &Path, plugin_hash: u128) -> PathBuf {
        let stem = plugin
            .file_stem()
            .map_or("plugin".into(), |s| s.to_string_lossy());
        self.dir
            .join(format!("{stem}-{plugin_hash:032x}.{EXTENSION}"))
    }

    /// The artifact of `plugin` in this cache, if there is one whose
    /// checksum and source hash check out (wasmtime's own compatibility
    /// check happens only when loading it).
    pub fn artifact_of(&self, plugin: &Path) -> std::io::Result<Option<PathBuf>> {
        let bytes = read_plugin(plugin)?;
        let plugin_hash = xxh3_128(&bytes);
        let artifact = self.artifact_path(plugin, plugin_hash);
        let data = match map_file(&artifact) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(verify_trailer(
            &data,
            plugin_hash,
            &crate::engine::native_arch().to_string(),
        )
        .is_ok()
        .then_some(artifact))
    }

    /// Loads `plugin` from its artifact when a valid one exists, otherwise
    /// compiles it (saying why).
    pub fn load(&self, rt: &Host, plugin: &Path) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let (bytes, plugin_hash) = read_and_hash(plugin)?;
        let artifact = self.artifact_path(plugin, plugin_hash);
        match load_artifact(rt, &artifact, plugin_hash) {
            Ok(Some(component)) => {
                tracing::debug!("loaded precompiled {}", artifact.display());
                return Plugin::prepare(
                    rt,
                    plugin,
                    component,
                    plugin_hash,
                    CodeSource::Precompiled,
                    started,
                );
            }
            Ok(None) => tracing::info!(
                "no precompiled artifact for {} in {}; compiling it now",
                plugin.display(),
                self.dir.display()
            ),
            Err(why) => tracing::warn!(
                "ignoring precompiled artifact {}: {why}; compiling the plugin instead",
                artifact.display()
            ),
        }
        #[cfg(feature = "compiler")]
        if let Some(baseline) = rt.baseline() {
            return self.load_baseline(baseline, plugin, &bytes, plugin_hash, started);
        }
        let component = plugin::compile(rt, plugin, &bytes, true)?;
        Plugin::prepare(
            rt,
            plugin,
            component,
            plugin_hash,
            CodeSource::Compiled,
            started,
        )
    }

    /// Loads `plugin` from its artifact if a usable one exists; `None`
    /// (quietly) otherwise, for [`ArtifactCache::load`] to find out why and
    /// compile. It never compiles, so it takes milliseconds and the executor
    /// may call it on its own thread without holding up timers for long.
    pub fn try_precompiled(&self, rt: &Host, plugin: &Path) -> Option<Result<Plugin, LoadError>> {
        let started = Instant::now();
        let bytes = read_plugin(plugin).ok()?;
        let plugin_hash = xxh3_128(&bytes);
        let artifact = self.artifact_path(plugin, plugin_hash);
        let component = load_artifact(rt, &artifact, plugin_hash).ok()??;
        Some(Plugin::prepare(
            rt,
            plugin,
            component,
            plugin_hash,
            CodeSource::Precompiled,
            started,
        ))
    }

    /// Precompiles `plugin` with `compiler` (see [`Host::for_precompiling`])
    /// and writes its artifact atomically, removing older artifacts of the
    /// same plugin. The plugin is checked (format, exports, imports) first.
    #[cfg(feature = "compiler")]
    pub fn compile(&self, compiler: &Host, plugin: &Path) -> Result<Compiled, CompileError> {
        let started = Instant::now();
        let (bytes, plugin_hash) = read_and_hash(plugin)?;
        let (kind, code) = if compiler.is_native() {
            let component = plugin::compile(compiler, plugin, &bytes, false)?;
            let loaded = Plugin::prepare(
                compiler,
                plugin,
                component.clone(),
                plugin_hash,
                CodeSource::Compiled,
                started,
            )?;
            (loaded.kind, component.serialize())
        } else {
            // wasmtime loads no code for another architecture, not even to
            // check its types: this machine's baseline compiler (a fraction
            // of Cranelift's time) checks the plugin, then Cranelift writes
            // the other architecture's code.
            let checker = compiler.for_run_time_compile();
            let component = plugin::compile(checker, plugin, &bytes, false)?;
            let checked = Plugin::prepare(
                checker,
                plugin,
                component,
                plugin_hash,
                CodeSource::Compiled,
                started,
            )?;
            (checked.kind, compiler.engine.precompile_component(&bytes))
        };
        let code = code.map_err(|e| LoadError::Invalid {
            path: plugin.to_path_buf(),
            message: format!("{e:#}"),
        })?;
        let artifact = self.artifact_path(plugin, plugin_hash);
        write_artifact(&artifact, &code, plugin_hash, &compiler.arch_name()).map_err(|source| {
            CompileError::Write {
                path: artifact.clone(),
                source,
            }
        })?;
        self.remove_stale(plugin, &artifact);
        Ok(Compiled {
            plugin: plugin.to_path_buf(),
            artifact,
            kind,
            plugin_size: bytes.len() as u64,
            artifact_size: (code.len() + TRAILER) as u64,
            took: started.elapsed(),
        })
    }

    /// Removes artifacts of earlier versions of `plugin`, and temporary
    /// files of writes that never finished.
    #[cfg(feature = "compiler")]
    fn remove_stale(&self, plugin: &Path, keep: &Path) {
        let Some(stem) = plugin.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            return;
        };
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // Older optimised artifacts, and every baseline one (the
            // optimised artifact replaces it).
            let is_old = name
                .strip_prefix(&stem)
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|rest| rest.strip_suffix(&format!(".{EXTENSION}")))
                .map(|rest| rest.strip_suffix(".baseline").unwrap_or(rest))
                .is_some_and(|hash| {
                    hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit())
                });
            if (is_old && path != keep) || is_abandoned_write(&entry) {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// A temporary file of [`write_artifact`] that a killed process left
/// behind: one still being written is seconds old (the code is compiled
/// before the file is made).
#[cfg(feature = "compiler")]
fn is_abandoned_write(entry: &fs::DirEntry) -> bool {
    const ABANDONED_AFTER: Duration = Duration::from_secs(600);
    entry.file_name().to_string_lossy().starts_with(".tmp")
        && entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER)
}

/// The plugin's bytes and the hash that names its artifacts.
fn read_and_hash(plugin: &Path) -> Result<(Vec<u8>, u128), LoadError> {
    let bytes = read_plugin(plugin).map_err(|source| LoadError::Read {
        path: plugin.to_path_buf(),
        source,
    })?;
    let hash = xxh3_128(&bytes);
    Ok((bytes, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin rewritten in place (`cp new.wasm plugin.wasm` truncates it
    /// first) while lifehook reads it must not kill the process: a mapped
    /// file that shrinks raises SIGBUS, which would end this test binary.
    #[test]
    fn a_plugin_rewritten_in_place_while_it_is_read_is_not_fatal() {
        let dir = tempfile::tempdir().expect("dir");
        let plugin = dir.path().join("plugin.wasm");
        let content = vec![7u8; 16 << 20];
        fs::write(&plugin, &content).expect("write");
        let cache = ArtifactCache::new(dir.path().join("cache"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (plugin, stop) = (plugin.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::io::Write as _;
                let mut rewrites = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Truncated, then written again, in the same inode.
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&plugin)
                        .expect("open in place");
                    for chunk in content.chunks(1 << 20) {
                        f.write_all(chunk).expect("write");
                    }
                    rewrites += 1;
                }
                rewrites
            })
        };
        let started = Instant::now();
        let mut reads = 0u32;
        while started.elapsed() < Duration::from_millis(1500) {
            // Whatever it reads, it reads; no artifact is there either way.
            assert!(matches!(cache.artifact_of(&plugin), Ok(None)));
            reads += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rewrites = writer.join().expect("writer");
        assert!(
            reads > 5 && rewrites > 5,
            "{reads} reads, {rewrites} rewrites"
        );
    }

    #[test]
    fn artifact_name_follows_content() {
        let cache = ArtifactCache::new("/c");
        let a = cache.artifact_path(Path::new("/p/notify.wasm"), xxh3_128(b"one"));
        let b = cache.artifact_path(Path::new("/p/notify.wasm"), xxh3_128(b"two"));
        assert_ne!(a, b);
        assert!(a.starts_with("/c"));
        let name = a.file_name().expect("name").to_string_lossy().into_owned();
        assert!(
            name.starts_with("notify-") && name.ends_with(".cwasm"),
            "{name}"
        );
    }
}
