//! The plugins a [`Runner`](crate::Runner) has loaded or is loading, each
//! once per runner whatever the number of runs: a slot per plugin that every
//! step using it waits on.
//!
//! Loads start in the background all at once, so a later step's pull or
//! compile overlaps earlier steps' runs and concurrent steps never wait for
//! each other. A pull (an OCI plugin missing from the cache) and a compile
//! both count against the waiting step's first attempt. The first plugin of
//! a run, which the run waits for anyway, is loaded on the calling thread
//! when it is a file with a usable artifact: that takes milliseconds (no
//! compiling) and saves a thread hand-off, a tenth of a one-step run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use lifehook_manifest::PluginRef;
use tokio::sync::watch;

use crate::engine::Host;
use crate::load::cache::ArtifactCache;
use crate::load::plugin::{LoadError, Plugin};
use crate::load::sources::Sources;

/// A loaded plugin, or why it cannot be used (shared by every step using it).
pub type LoadResult = Result<Arc<Plugin>, Arc<LoadError>>;

type Slot = watch::Receiver<Option<LoadResult>>;

/// Plugin slots by plugin (its file, or its OCI reference). A slot is a
/// `watch` channel: every step using the plugin waits on a clone of the
/// receiver, and the one load fills it once; a failure is kept like a
/// success, so a broken plugin costs one load, not one per step.
pub(crate) struct Loader {
    rt: Host,
    cache: Option<ArtifactCache>,
    sources: Sources,
    slots: Mutex<HashMap<String, Slot>>,
}

fn shared(loaded: Result<Plugin, LoadError>) -> LoadResult {
    loaded.map(Arc::new).map_err(Arc::new)
}

/// Loads a local plugin file from its artifact or by compiling.
fn load_file(rt: &Host, cache: Option<&ArtifactCache>, path: &Path) -> LoadResult {
    shared(match cache {
        Some(cache) => cache.load(rt, path),
        None => Plugin::load(rt, path),
    })
}

impl Loader {
    pub(crate) fn new(rt: Host, cache: Option<ArtifactCache>, sources: Sources) -> Loader {
        Loader {
            rt,
            cache,
            sources,
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn host(&self) -> &Host {
        &self.rt
    }

    /// The slots, locked briefly (never across an await). A poisoned lock
    /// is taken anyway: the map holds only channels, never half-updated.
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts loading every plugin in `plugins` that has no slot yet. Call
    /// from within a tokio runtime.
    pub(crate) fn start(&self, plugins: &[&PluginRef]) {
        let missing: Vec<&PluginRef> = {
            let slots = self.slots();
            let mut missing: Vec<&PluginRef> = Vec::new();
            for &p in plugins {
                if !slots.contains_key(&p.to_string()) && !missing.contains(&p) {
                    missing.push(p);
                }
            }
            missing
        };
        // Only the first plugin, a file, unpinned (a pin means reading and
        // hashing it first) and with a cache, may be loaded inline.
        for (i, plugin) in missing.iter().enumerate() {
            let inline = match (i, plugin.file(), &plugin.sha256, &self.cache) {
                (0, Some(path), None, Some(cache)) => cache.try_precompiled(&self.rt, path),
                _ => None,
            };
            let slot = match inline {
                Some(loaded) => watch::channel(Some(shared(loaded))).1,
                None => self.load_in_background(plugin),
            };
            self.insert(plugin, slot);
        }
    }

    /// Keeps the first slot made for `plugin` (another run may have raced us).
    fn insert(&self, plugin: &PluginRef, slot: Slot) {
        self.slots().entry(plugin.to_string()).or_insert(slot);
    }

    /// Resolves the plugin to a file (pulling it if need be), then loads it
    /// on a blocking thread.
    fn load_in_background(&self, plugin: &PluginRef) -> Slot {
        let (tx, rx) = watch::channel(None);
        let (rt, cache, sources, plugin) = (
            self.rt.clone(),
            self.cache.clone(),
            self.sources.clone(),
            plugin.clone(),
        );
        tokio::spawn(async move {
            let result = match sources.local(&plugin).await {
                Err(e) => Err(Arc::new(LoadError::Source(e))),
                Ok(path) => {
                    tokio::task::spawn_blocking(move || load_file(&rt, cache.as_ref(), &path))
                        .await
                        .unwrap_or_else(|e| {
                            Err(Arc::new(LoadError::Internal {
                                path: plugin.to_string().into(),
                                message: format!("its loading thread failed: {e}"),
                            }))
                        })
                }
            };
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// Loads every plugin in `plugins` now, in parallel, and keeps them for
    /// later runs: for `check`, `run --dry-run` and a server's start-up. Call
    /// outside any tokio runtime (pulls get one of their own).
    pub(crate) fn load_all(&self, plugins: &[&PluginRef]) -> Vec<(PluginRef, LoadResult)> {
        let results: Vec<(PluginRef, LoadResult)> = std::thread::scope(|scope| {
            let handles: Vec<_> = plugins
                .iter()
                .map(|&p| {
                    (
                        p,
                        scope.spawn(move || self.ready(p).unwrap_or_else(|| self.load_blocking(p))),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(p, h)| {
                    let result = h.join().unwrap_or_else(|_| {
                        Err(Arc::new(LoadError::Internal {
                            path: p.to_string().into(),
                            message: "the loading thread panicked".into(),
                        }))
                    });
                    (p.clone(), result)
                })
                .collect()
        });
        for (plugin, result) in &results {
            self.insert(plugin, watch::channel(Some(result.clone())).1);
        }
        results
    }

    /// Resolves and loads `plugin` on this thread, with a runtime of its
    /// own for the pull: `load_all` runs outside any tokio runtime, and one
    /// thread a plugin keeps slow pulls from queueing behind each other.
    fn load_blocking(&self, plugin: &PluginRef) -> LoadResult {
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Arc::new(LoadError::Internal {
                    path: plugin.to_string().into(),
                    message: format!("cannot start an I/O runtime: {e}"),
                })
            })?
            .block_on(self.sources.local(plugin))
            .map_err(|e| Arc::new(LoadError::Source(e)))?;
        load_file(&self.rt, self.cache.as_ref(), &local)
    }

    /// The result for `plugin` if it is already loaded.
    fn ready(&self, plugin: &PluginRef) -> Option<LoadResult> {
        self.slots()
            .get(&plugin.to_string())
            .and_then(|rx| rx.borrow().clone())
    }

    /// Waits for `plugin`'s load to end.
    pub(crate) async fn get(&self, plugin: &PluginRef) -> LoadResult {
        let slot = self.slots().get(&plugin.to_string()).cloned();
        let internal = |message: &str| {
            Arc::new(LoadError::Internal {
                path: plugin.to_string().into(),
                message: message.to_owned(),
            })
        };
        let Some(mut rx) = slot else {
            return Err(internal("it was not scheduled for loading"));
        };
        match rx.wait_for(Option::is_some).await {
            Ok(value) => value
                .clone()
                .unwrap_or_else(|| Err(internal("its load vanished"))),
            Err(_) => Err(internal("its loading thread stopped unexpectedly")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifehook_manifest::{PluginSource, PullPolicy};

    fn file(path: &str) -> PluginRef {
        PluginRef {
            source: PluginSource::File(path.into()),
            sha256: None,
            pull: PullPolicy::default(),
        }
    }

    fn loader() -> Loader {
        Loader::new(Host::new().expect("engine"), None, Sources::default())
    }

    fn tokio() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio")
    }

    #[test]
    fn a_plugin_named_by_several_steps_is_loaded_once_and_shared() {
        let loader = loader();
        let plugin = file(lifehook_test_artifacts::FIXTURE_HOOK);
        let (first, second) = tokio().block_on(async {
            loader.start(&[&plugin, &plugin.clone()]);
            // A later run asking again makes no second load either.
            loader.start(&[&plugin]);
            tokio::join!(loader.get(&plugin), loader.get(&plugin))
        });
        assert_eq!(loader.slots().len(), 1);
        let (first, second) = (first.expect("loads"), second.expect("loads"));
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn load_all_keeps_failures_for_the_steps_that_wait_later() {
        let loader = loader();
        let missing = file("/nonexistent/plugin.wasm");
        let fixture = file(lifehook_test_artifacts::FIXTURE_HOOK);
        let results = loader.load_all(&[&missing, &fixture]);
        assert_eq!(results.len(), 2);
        let Err(error) = &results[0].1 else {
            panic!("a missing file loaded");
        };
        assert!(
            error.to_string().contains("/nonexistent/plugin.wasm"),
            "{error}"
        );
        let Ok(loaded) = results[1].1.clone() else {
            panic!("the fixture did not load");
        };
        // A run after `load_all` finds both without loading again.
        let rt = tokio();
        let again = rt.block_on(async {
            loader.start(&[&missing, &fixture]);
            (loader.get(&missing).await, loader.get(&fixture).await)
        });
        let (Err(still_failed), Ok(still_loaded)) = again else {
            panic!("the results changed after load_all");
        };
        assert!(Arc::ptr_eq(error, &still_failed));
        assert!(Arc::ptr_eq(&loaded, &still_loaded));
    }

    #[test]
    fn waiting_for_a_plugin_never_scheduled_is_an_error_not_a_hang() {
        let loader = loader();
        let result = tokio().block_on(loader.get(&file("/never/started.wasm")));
        let Err(error) = result else {
            panic!("an unscheduled plugin loaded");
        };
        assert!(
            error.to_string().contains("not scheduled for loading"),
            "{error}"
        );
    }
}
