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
//! Artifacts are compiled for baseline x86-64 (no CPU feature beyond the
//! architecture's own), so an image built on one machine runs its artifacts
//! on nodes with any x86-64 CPU.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use xxhash_rust::xxh3::xxh3_128;

use crate::engine::Runtime;
use crate::plugin::{self, CodeSource, LoadError, Plugin, PluginKind};

const MAGIC: &[u8; 8] = b"LHCWASM1";
const TRAILER: usize = 16 + 16 + MAGIC.len();
/// The file extension of artifacts.
pub const EXTENSION: &str = "cwasm";

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
        Ok(verify_trailer(&data, plugin_hash)
            .is_ok()
            .then_some(artifact))
    }

    /// Loads `plugin` from its artifact when a valid one exists, otherwise
    /// compiles it (saying why).
    pub fn load(&self, rt: &Runtime, plugin: &Path) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let bytes = read_plugin(plugin).map_err(|source| LoadError::Read {
            path: plugin.to_path_buf(),
            source,
        })?;
        let plugin_hash = xxh3_128(&bytes);
        let artifact = self.artifact_path(plugin, plugin_hash);
        match load_artifact(rt, &artifact, plugin_hash) {
            Ok(Some(component)) => {
                tracing::debug!("loaded precompiled {}", artifact.display());
                return Plugin::prepare(rt, plugin, component, CodeSource::Precompiled, started);
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
            // The baseline artifact an earlier run left, else compile with
            // the baseline compiler and leave one for the next run.
            let cached = self.baseline_path(plugin, plugin_hash);
            match load_artifact(baseline, &cached, plugin_hash) {
                Ok(Some(component)) => {
                    tracing::info!(
                        "loaded the baseline artifact {} an earlier run left; `lifehook compile` makes an optimised one",
                        cached.display()
                    );
                    return Plugin::prepare(
                        baseline,
                        plugin,
                        component,
                        CodeSource::Cached,
                        started,
                    );
                }
                Ok(None) => {}
                Err(why) => tracing::warn!(
                    "ignoring baseline artifact {}: {why}; compiling the plugin instead",
                    cached.display()
                ),
            }
            let component = plugin::compile(baseline, plugin, &bytes, true)?;
            let loaded = Plugin::prepare(
                baseline,
                plugin,
                component.clone(),
                CodeSource::Compiled,
                started,
            )?;
            self.keep_in_background(component, cached, plugin_hash);
            return Ok(loaded);
        }
        let component = plugin::compile(rt, plugin, &bytes, true)?;
        Plugin::prepare(rt, plugin, component, CodeSource::Compiled, started)
    }

    /// Where the baseline artifact of `plugin` goes: next to the optimised
    /// one, which replaces it when `lifehook compile` runs.
    #[cfg(feature = "compiler")]
    fn baseline_path(&self, plugin: &Path, plugin_hash: u128) -> PathBuf {
        self.artifact_path(plugin, plugin_hash)
            .with_extension(format!("baseline.{EXTENSION}"))
    }

    /// Writes `component`'s baseline artifact on a thread of its own, while
    /// the plugin runs; [`finish_cache_writes`] waits for it before the
    /// process exits. A cache that cannot be written is skipped quietly:
    /// the next run compiles again.
    #[cfg(feature = "compiler")]
    fn keep_in_background(&self, component: Component, path: PathBuf, plugin_hash: u128) {
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("lifehook-cache-write".into())
            .spawn(move || {
                let written = component
                    .serialize()
                    .map_err(std::io::Error::other)
                    .and_then(|code| write_artifact(&dir, &path, &code, plugin_hash));
                match written {
                    Ok(()) => tracing::debug!("wrote baseline artifact {}", path.display()),
                    Err(e) => {
                        tracing::debug!("cannot write baseline artifact {}: {e}", path.display())
                    }
                }
            });
        if let Ok(handle) = spawned {
            pending_writes().push(handle);
        }
    }

    /// Loads `plugin` from its artifact if a usable one exists; `None`
    /// (quietly) otherwise, for [`ArtifactCache::load`] to find out why and
    /// compile. It never compiles, so it takes milliseconds and the executor
    /// may call it on its own thread without holding up timers for long.
    pub fn try_precompiled(
        &self,
        rt: &Runtime,
        plugin: &Path,
    ) -> Option<Result<Plugin, LoadError>> {
        let started = Instant::now();
        let bytes = read_plugin(plugin).ok()?;
        let plugin_hash = xxh3_128(&bytes);
        let artifact = self.artifact_path(plugin, plugin_hash);
        let component = load_artifact(rt, &artifact, plugin_hash).ok()??;
        Some(Plugin::prepare(
            rt,
            plugin,
            component,
            CodeSource::Precompiled,
            started,
        ))
    }

    /// Precompiles `plugin` with `compiler` (see [`Runtime::for_precompiling`])
    /// and writes its artifact atomically, removing older artifacts of the
    /// same plugin. The plugin is checked (format, exports, imports) first.
    #[cfg(feature = "compiler")]
    pub fn compile(&self, compiler: &Runtime, plugin: &Path) -> Result<Compiled, CompileError> {
        let started = Instant::now();
        let bytes = read_plugin(plugin).map_err(|source| LoadError::Read {
            path: plugin.to_path_buf(),
            source,
        })?;
        let plugin_hash = xxh3_128(&bytes);
        let component = plugin::compile(compiler, plugin, &bytes, false)?;
        let loaded = Plugin::prepare(
            compiler,
            plugin,
            component.clone(),
            CodeSource::Compiled,
            started,
        )?;
        let code = component.serialize().map_err(|e| LoadError::Invalid {
            path: plugin.to_path_buf(),
            message: e.to_string(),
        })?;
        let artifact = self.artifact_path(plugin, plugin_hash);
        write_artifact(&self.dir, &artifact, &code, plugin_hash).map_err(|source| {
            CompileError::Write {
                path: artifact.clone(),
                source,
            }
        })?;
        self.remove_stale(plugin, &artifact);
        Ok(Compiled {
            plugin: plugin.to_path_buf(),
            artifact,
            kind: loaded.kind,
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

/// Writes an artifact of `code` atomically (a temporary file in `dir`,
/// flushed, renamed), readable by all: an image built as root is run as
/// another user.
#[cfg(feature = "compiler")]
fn write_artifact(
    dir: &Path,
    artifact: &Path,
    code: &[u8],
    plugin_hash: u128,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(code)?;
    tmp.write_all(&trailer(code, plugin_hash))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(artifact).map_err(|e| e.error)?;
    Ok(())
}

/// Artifact writes still going on in the background.
#[cfg(feature = "compiler")]
fn pending_writes() -> std::sync::MutexGuard<'static, Vec<std::thread::JoinHandle<()>>> {
    static PENDING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
        std::sync::Mutex::new(Vec::new());
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits, up to `limit`, for the baseline artifacts still being written to
/// the cache, so that a process about to exit leaves whole artifacts (or
/// none) behind. Call before exiting.
pub fn finish_cache_writes(limit: Duration) {
    #[cfg(feature = "compiler")]
    {
        let deadline = Instant::now() + limit;
        let handles: Vec<_> = pending_writes().drain(..).collect();
        for handle in handles {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
    #[cfg(not(feature = "compiler"))]
    let _ = limit;
}

/// Checks an artifact and loads it: `Ok(None)` when there is none, `Err`
/// with the reason when there is one that cannot be used.
///
/// The checks read the file through a memory map (no copy), then wasmtime
/// maps it again to run it: code pages and the plugin's initial memory
/// images come straight from the page cache, copy-on-write. That is what
/// makes a 38 MB artifact of a Python plugin load in milliseconds.
fn load_artifact(
    rt: &Runtime,
    path: &Path,
    plugin_hash: u128,
) -> Result<Option<Component>, String> {
    match fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    }
    let data = map_file(path).map_err(|e| format!("cannot read it: {e}"))?;
    let code = verify_trailer(&data, plugin_hash)?;
    if wasmtime::Engine::detect_precompiled(code) != Some(wasmtime::Precompiled::Component) {
        return Err("it is not a precompiled component".into());
    }
    drop(data);
    deserialize_file(rt, path).map(Some)
}

/// A plugin file's bytes, read, not mapped: a user may rewrite a plugin in
/// place (`cp new.wasm plugin.wasm`) while `serve` or a long run is loading
/// it, and a mapped file that shrinks kills the process with SIGBUS at the
/// next touch of a page past its end. An 18 MB Python plugin reads in a few
/// milliseconds; only lifehook's own artifacts are mapped.
fn read_plugin(path: &Path) -> std::io::Result<Vec<u8>> {
    fs::read(path)
}

/// Maps an artifact read-only. Artifacts are lifehook's own files, replaced
/// only by rename (a new file), never rewritten in place, so a mapping never
/// changes under it. Plugins are read instead ([`read_plugin`]).
#[expect(
    unsafe_code,
    reason = "memory-mapping a file is unsafe if another process truncates it while mapped; artifacts are replaced by rename, not rewritten"
)]
fn map_file(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = fs::File::open(path)?;
    // SAFETY: see the `reason` above.
    unsafe { memmap2::Mmap::map(&file) }
}

/// The trailer of an artifact holding `code` compiled from a plugin whose
/// contents hash to `plugin_hash`.
#[cfg(any(feature = "compiler", test))]
fn trailer(code: &[u8], plugin_hash: u128) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRAILER);
    t.extend_from_slice(&xxh3_128(code).to_le_bytes());
    t.extend_from_slice(&plugin_hash.to_le_bytes());
    t.extend_from_slice(MAGIC);
    t
}

/// Returns the code part of an artifact whose trailer checks out.
fn verify_trailer(data: &[u8], plugin_hash: u128) -> Result<&[u8], String> {
    if data.len() < TRAILER || !data.ends_with(MAGIC) {
        return Err("it is truncated or was not written by `lifehook compile`".into());
    }
    let (code, trailer) = data.split_at(data.len() - TRAILER);
    let word = |at: usize| {
        let mut w = [0u8; 16];
        w.copy_from_slice(&trailer[at..at + 16]);
        u128::from_le_bytes(w)
    };
    if word(0) != xxh3_128(code) {
        return Err("its checksum does not match (a partial or corrupted write)".into());
    }
    if word(16) != plugin_hash {
        return Err("it was compiled from another plugin".into());
    }
    Ok(code)
}

#[expect(
    unsafe_code,
    reason = "deserializing machine code is unsafe in wasmtime; the file passed here carries the checksum `lifehook compile` wrote, and wasmtime checks its version and the engine configuration"
)]
fn deserialize_file(rt: &Runtime, path: &Path) -> Result<Component, String> {
    // SAFETY: see the `reason` above. wasmtime ignores the trailer after
    // its ELF image.
    unsafe { Component::deserialize_file(&rt.engine, path) }.map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_rejects_truncation_corruption_and_other_plugins() {
        let code = b"machine code".to_vec();
        let mut good = code.clone();
        good.extend_from_slice(&trailer(&code, 7));
        assert_eq!(verify_trailer(&good, 7), Ok(&code[..]));

        let truncated = &good[..good.len() - 3];
        assert!(
            verify_trailer(truncated, 7)
                .unwrap_err()
                .contains("truncated")
        );

        let mut corrupted = good.clone();
        corrupted[0] ^= 1;
        assert!(
            verify_trailer(&corrupted, 7)
                .unwrap_err()
                .contains("checksum")
        );

        assert!(
            verify_trailer(&good, 8)
                .unwrap_err()
                .contains("another plugin")
        );
        assert!(verify_trailer(b"short", 7).is_err());
    }

    /// An image is built on one machine and run on nodes with other CPUs:
    /// what `lifehook compile` makes must load on the oldest x86-64.
    #[test]
    #[expect(
        unsafe_code,
        reason = "deserializing artifacts this test just compiled"
    )]
    fn baseline_artifacts_load_on_a_cpu_without_optional_features() {
        let bytes = fs::read(lifehook_test_artifacts::FIXTURE_HOOK).expect("fixture plugin");
        let baseline = Runtime::for_precompiling().expect("compiler");
        let portable = baseline
            .engine
            .precompile_component(&bytes)
            .expect("precompile");

        // An engine that believes the CPU has no optional feature at all (its
        // own compiler told not to use any either, or it would fail its own
        // check).
        let mut config = crate::engine::engine_config();
        config
            .target(&target_lexicon::Triple::host().to_string())
            .expect("target");
        // SAFETY: the detector only ever answers "absent".
        unsafe {
            config.detect_host_feature(|_| Some(false));
        }
        let oldest_cpu = wasmtime::Engine::new(&config).expect("engine");
        // SAFETY: bytes produced by `precompile_component` just above.
        let loaded = unsafe { Component::deserialize(&oldest_cpu, &portable) };
        assert!(loaded.is_ok(), "{:?}", loaded.err());

        // Code compiled for this machine's own CPU is refused there, which is
        // what makes `run` fall back to compiling instead of crashing.
        let native = wasmtime::Engine::new(&crate::engine::engine_config())
            .expect("engine")
            .precompile_component(&bytes)
            .expect("precompile");
        // SAFETY: as above.
        let refused = unsafe { Component::deserialize(&oldest_cpu, &native) };
        let message = format!(
            "{:#}",
            refused.expect_err("native code must not load on the oldest CPU")
        );
        assert!(
            message.contains("incompatible with native host"),
            "{message}"
        );
    }

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
