//! The plugins of a pipeline, loaded once for `check`, `run --dry-run`,
//! `compile` and `serve`: what each is (hook or command), or why it cannot
//! be used, as one problem line a plugin.

use std::collections::HashMap;

use lifehook_manifest::{PluginRef, Step};
use lifehook_runtime::{PluginKind, Runner};

/// What loading each plugin came to (by its file or reference): its kind,
/// or the error text.
pub type Kinds = HashMap<String, Result<PluginKind, String>>;

/// The distinct plugins of `steps`, in pipeline order.
pub fn distinct_plugins<'a>(steps: impl Iterator<Item = &'a Step>) -> Vec<PluginRef> {
    let mut seen: Vec<PluginRef> = Vec::new();
    for p in steps.filter_map(Step::plugin) {
        if !seen.contains(p) {
            seen.push(p.clone());
        }
    }
    seen
}

/// Loads every plugin of `steps` with `runner`; the kinds, and one problem
/// line per plugin that cannot be used.
pub fn load_plugins<'a>(
    runner: &Runner,
    steps: impl Iterator<Item = &'a Step>,
) -> (Kinds, Vec<String>) {
    let plugins = distinct_plugins(steps);
    let refs: Vec<&PluginRef> = plugins.iter().collect();
    let mut kinds = Kinds::new();
    let mut problems = Vec::new();
    for (plugin, loaded) in runner.load_all(&refs) {
        match loaded {
            Ok(p) => {
                kinds.insert(plugin.to_string(), Ok(p.kind));
            }
            Err(e) => {
                problems.push(format!("error: {e}"));
                kinds.insert(plugin.to_string(), Err(e.to_string()));
            }
        }
    }
    (kinds, problems)
}
