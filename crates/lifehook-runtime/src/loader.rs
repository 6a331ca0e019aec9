//! The plugins a [`Runner`](crate::Runner) has loaded or is loading, each
//! once per runner whatever the number of runs: a slot per plugin file that
//! every step using it waits on.
//!
//! Loads start on blocking threads all at once, so a later step's compile
//! overlaps earlier steps' runs and concurrent steps never wait for each
//! other's compilation. The first plugin of a run, which the run waits for
//! anyway, is loaded on the calling thread when it has a usable artifact:
//! that takes milliseconds (no compiling) and saves a thread hand-off, a tenth
//! of a one-step run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::cache::ArtifactCache;
use crate::engine::Runtime;
use crate::plugin::{LoadError, Plugin};

/// A loaded plugin, or why it cannot be used (shared by every step using it).
pub type LoadResult = Result<Arc<Plugin>, Arc<LoadError>>;

type Slot = watch::Receiver<Option<LoadResult>>;

/// Plugin slots by file.
pub(crate) struct Loader {
    rt: Runtime,
    cache: Option<ArtifactCache>,
    slots: Mutex<HashMap<PathBuf, Slot>>,
}

fn shared(loaded: Result<Plugin, LoadError>) -> LoadResult {
    loaded.map(Arc::new).map_err(Arc::new)
}

impl Loader {
    pub(crate) fn new(rt: Runtime, cache: Option<ArtifactCache>) -> Loader {
        Loader {
            rt,
            cache,
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.rt
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads `path` now, on this thread: from its artifact or by compiling.
    fn load_blocking(&self, path: &Path) -> LoadResult {
        shared(match &self.cache {
            Some(cache) => cache.load(&self.rt, path),
            None => Plugin::load(&self.rt, path),
        })
    }

    /// Starts loading every plugin in `paths` that has no slot yet. Call
    /// from within a tokio runtime.
    pub(crate) fn start(&self, paths: &[&Path]) {
        let missing: Vec<&Path> = {
            let slots = self.slots();
            let mut missing: Vec<&Path> = Vec::new();
            for &p in paths {
                if !slots.contains_key(p) && !missing.contains(&p) {
                    missing.push(p);
                }
            }
            missing
        };
        for path in missing.iter().skip(1) {
            self.insert(path, self.load_in_background(path));
        }
        if let Some(first) = missing.first() {
            let inline = self
                .cache
                .as_ref()
                .and_then(|c| c.try_precompiled(&self.rt, first));
            let slot = match inline {
                Some(loaded) => watch::channel(Some(shared(loaded))).1,
                None => self.load_in_background(first),
            };
            self.insert(first, slot);
        }
    }

    /// Keeps the first slot made for `path` (another run may have raced us).
    fn insert(&self, path: &Path, slot: Slot) {
        self.slots().entry(path.to_path_buf()).or_insert(slot);
    }

    fn load_in_background(&self, path: &Path) -> Slot {
        let (tx, rx) = watch::channel(None);
        let (rt, cache, path) = (self.rt.clone(), self.cache.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || {
            let loaded = match &cache {
                Some(cache) => cache.load(&rt, &path),
                None => Plugin::load(&rt, &path),
            };
            let _ = tx.send(Some(shared(loaded)));
        });
        rx
    }

    /// Loads every plugin in `paths` now, in parallel, and keeps them for
    /// later runs: for `check`, `run --dry-run` and a server's start-up.
    pub(crate) fn load_all(&self, paths: &[&Path]) -> Vec<(PathBuf, LoadResult)> {
        let results: Vec<(PathBuf, LoadResult)> = std::thread::scope(|scope| {
            let handles: Vec<_> = paths
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
                            path: p.to_path_buf(),
                            message: "the loading thread panicked".into(),
                        }))
                    });
                    (p.to_path_buf(), result)
                })
                .collect()
        });
        for (path, result) in &results {
            self.insert(path, watch::channel(Some(result.clone())).1);
        }
        results
    }

    /// The result for `path` if it is already loaded.
    fn ready(&self, path: &Path) -> Option<LoadResult> {
        self.slots().get(path).and_then(|rx| rx.borrow().clone())
    }

    /// Waits for `path`'s load to end.
    pub(crate) async fn get(&self, path: &Path) -> LoadResult {
        let slot = self.slots().get(path).cloned();
        let Some(mut rx) = slot else {
            return Err(Arc::new(LoadError::Internal {
                path: path.to_path_buf(),
                message: "it was not scheduled for loading".into(),
            }));
        };
        match rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or_else(|| {
                Err(Arc::new(LoadError::Internal {
                    path: path.to_path_buf(),
                    message: "its load vanished".into(),
                }))
            }),
            Err(_) => Err(Arc::new(LoadError::Internal {
                path: path.to_path_buf(),
                message: "its loading thread stopped unexpectedly".into(),
            })),
        }
    }
}
