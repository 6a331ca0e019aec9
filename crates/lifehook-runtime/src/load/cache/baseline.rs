//! The run-time fallback for a plugin without a precompiled artifact: it is
//! compiled by the baseline compiler (Winch: about ten times faster to
//! compile than Cranelift, slower code), and that code is kept as a
//! *baseline artifact* next to where the optimised one would be, so the
//! next run loads it instead of compiling again. `lifehook compile`
//! replaces it with an optimised artifact.
//!
//! The baseline artifact is written on a thread of its own while the plugin
//! runs: serializing a large plugin's code takes longer than a small hook's
//! whole run. The threads are tracked here, process-wide, so that
//! [`finish_cache_writes`] can wait for them before the process exits and
//! leave whole artifacts (or none) behind.

#[cfg(feature = "compiler")]
use std::path::{Path, PathBuf};
use std::time::Duration;
#[cfg(feature = "compiler")]
use std::time::Instant;

#[cfg(feature = "compiler")]
use wasmtime::component::Component;

use super::ArtifactCache;
#[cfg(feature = "compiler")]
use super::artifact::{EXTENSION, load_artifact, write_artifact};
#[cfg(feature = "compiler")]
use crate::engine::Host;
#[cfg(feature = "compiler")]
use crate::load::plugin::{self, CodeSource, LoadError, Plugin};

impl ArtifactCache {
    /// Loads `plugin` (whose bytes are `bytes`) with the `baseline`
    /// engine: from the baseline artifact an earlier run left, else
    /// compiled now, its artifact then written in the background.
    #[cfg(feature = "compiler")]
    pub(super) fn load_baseline(
        &self,
        baseline: &Host,
        plugin: &Path,
        bytes: &[u8],
        plugin_hash: u128,
        started: Instant,
    ) -> Result<Plugin, LoadError> {
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
                    plugin_hash,
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
        let component = plugin::compile(baseline, plugin, bytes, true)?;
        let loaded = Plugin::prepare(
            baseline,
            plugin,
            component.clone(),
            plugin_hash,
            CodeSource::Compiled,
            started,
        )?;
        self.keep_in_background(component, cached, plugin_hash, baseline.arch_name());
        Ok(loaded)
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
    fn keep_in_background(
        &self,
        component: Component,
        path: PathBuf,
        plugin_hash: u128,
        arch: String,
    ) {
        let spawned = std::thread::Builder::new()
            .name("lifehook-cache-write".into())
            .spawn(move || {
                let written = component
                    .serialize()
                    .map_err(std::io::Error::other)
                    .and_then(|code| write_artifact(&path, &code, plugin_hash, &arch));
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
