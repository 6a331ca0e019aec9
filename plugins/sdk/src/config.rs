//! The step's `[config]` table, read through `wasi:config/store`.
//!
//! Keys are flat: nested tables arrive as dotted keys (`headers.accept`),
//! numbers and booleans as their TOML text, arrays one item per line.

use std::str::FromStr;
use std::time::Duration;

use crate::Failure;
use crate::bindings::wasi::config::store;

/// The value of `key`, if set.
pub fn get(key: &str) -> Option<String> {
    store::get(key).ok().flatten()
}

/// The value of `key`, or a fatal failure naming the missing key.
pub fn require(key: &str) -> Result<String, Failure> {
    get(key).ok_or_else(|| {
        Failure::fatal(format!(
            "missing config key `{key}`: set it in the step's [config] table"
        ))
    })
}

/// The value of `key` parsed as `T`, `Ok(None)` when unset, a fatal failure
/// when it does not parse.
pub fn parse<T: FromStr>(key: &str) -> Result<Option<T>, Failure>
where
    T::Err: std::fmt::Display,
{
    match get(key) {
        None => Ok(None),
        Some(text) => {
            text.trim().parse().map(Some).map_err(|e| {
                Failure::fatal(format!("config key `{key}` = {text:?} is invalid: {e}"))
            })
        }
    }
}

/// A boolean key (`true`/`false`), `default` when unset.
pub fn flag(key: &str, default: bool) -> Result<bool, Failure> {
    Ok(parse::<bool>(key)?.unwrap_or(default))
}

/// A duration key written like `"500ms"`, `"5s"` or `"1m 30s"`: the
/// grammar of the pipeline file's own durations.
pub fn duration(key: &str) -> Result<Option<Duration>, Failure> {
    let Some(text) = get(key) else {
        return Ok(None);
    };
    lifehook_units::parse_duration(&text)
        .map(Some)
        .map_err(|e| Failure::fatal(format!("config key `{key}`: {e}")))
}

/// A size key written like `"64MiB"` or `"512KiB"`.
pub fn size(key: &str) -> Result<Option<u64>, Failure> {
    let Some(text) = get(key) else {
        return Ok(None);
    };
    lifehook_units::parse_size(&text)
        .map(Some)
        .map_err(|e| Failure::fatal(format!("config key `{key}`: {e}")))
}

/// An array key: one item per line (empty when unset).
pub fn list(key: &str) -> Vec<String> {
    get(key)
        .map(|v| {
            v.lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Every key under `prefix.` (a nested table), with the prefix removed.
pub fn table(prefix: &str) -> Vec<(String, String)> {
    let dotted = format!("{prefix}.");
    let mut out: Vec<(String, String)> = store::get_all()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&dotted).map(|k| (k.to_owned(), v)))
        .collect();
    out.sort();
    out
}
