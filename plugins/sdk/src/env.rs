//! Environment variables. A plugin sees only those its step grants
//! (`allow.env`) or sets (`env`); these helpers say so when one is missing,
//! instead of a bare "not present".

use crate::Failure;

/// The value of `name`, or a fatal failure explaining how to grant it.
pub fn var(name: &str) -> Result<String, Failure> {
    std::env::var(name).map_err(|_| {
        Failure::fatal(format!(
            "environment variable {name} is not visible to this plugin: grant it with allow.env = [\"{name}\"] (and make sure the container sets it)"
        ))
    })
}

/// The value of `name`, if granted and set.
pub fn get(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
