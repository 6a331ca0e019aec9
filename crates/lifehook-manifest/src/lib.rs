//! The lifehook pipeline file (`lifehook.toml`): its TOML schema, checks, and
//! resolution into a [`Pipeline`] the runtime can execute without parsing
//! anything again.
//!
//! Loading goes in two steps. [`schema`] mirrors the TOML with serde (unknown
//! keys rejected, units parsed by their own visitors so that the `toml` crate
//! reports the exact line and column of a bad value). The resolver then turns
//! that into absolute plugin paths, concrete limits, parsed capability grants
//! and `${VAR}`-interpolated strings, collecting every problem it finds rather
//! than stopping at the first. Every error is a [`Diagnostic`] naming the file,
//! the line, the column, what is wrong and how to fix it.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # std::fs::write(dir.path().join("hook.wasm"), b"").unwrap();
//! let path = dir.path().join("lifehook.toml");
//! let source = r#"
//! [pre-stop]
//! deadline = "20s"
//!
//! [[pre-stop.steps]]
//! name = "notify"
//! plugin = "hook.wasm"
//! timeout = "2s"
//! config = { url = "http://${HOST:-127.0.0.1}:8080/bye" }
//! "#;
//! let pipeline = lifehook_manifest::parse(source, &path, &|_| None, None).unwrap();
//! let step = &pipeline.phases[0].steps[0];
//! assert_eq!(step.config, [("url".to_string(), "http://127.0.0.1:8080/bye".to_string())]);
//! ```

pub mod budget;
pub mod diagnostic;
#[cfg(test)]
mod fuzz;
pub mod grant;
pub mod interpolate;
mod keys;
pub mod pipeline;
mod resolve;
pub mod schema;
pub mod source;
pub mod units;

use std::path::{Path, PathBuf};

use serde::Deserialize as _;

pub use diagnostic::{Diagnostic, Diagnostics, Severity, render_problems};
pub use grant::{ClientCert, DirGrant, GrantError, GrantTls, HttpGrant, Scheme, TcpGrant};
pub use pipeline::{
    Action, Edges, Grants, Limits, Phase, PhaseName, Pipeline, RetryPolicy, SleepAction, Step,
    Telemetry,
};
pub use schema::{Access, OnFailure};
pub use source::{OciReference, PluginRef, PluginSource, PullPolicy};
pub use units::Fuel;

/// Why a pipeline file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("failed to read pipeline file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid pipeline.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and resolves a pipeline file, interpolating from the process
/// environment. With `only`, resolves just that phase (the other phases are
/// still parsed, so syntax errors anywhere are reported).
pub fn load(path: &Path, only: Option<PhaseName>) -> Result<Pipeline, ManifestError> {
    let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let source = match String::from_utf8(bytes) {
        Ok(source) => source,
        Err(e) => {
            // Located like any other problem: at the first bad byte.
            let at = e.utf8_error().valid_up_to();
            let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let valid = String::from_utf8_lossy(&e.as_bytes()[..at]).len();
            return Err(ManifestError::Invalid(Diagnostics(vec![
                Diagnostic::new(
                    path,
                    &shown,
                    valid..valid + 1,
                    format!("the file is not UTF-8 text (a bad byte at offset {at})"),
                )
                .with_help("pipeline files are TOML, which is UTF-8: save the file as UTF-8"),
            ])));
        }
    };
    parse(&source, path, &|name| std::env::var(name).ok(), only).map_err(ManifestError::Invalid)
}

/// Parses and resolves pipeline `source` read from `path` (used to resolve
/// relative paths and to locate errors). `env` looks up variables for
/// `${VAR}` interpolation.
pub fn parse(
    source: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    only: Option<PhaseName>,
) -> Result<Pipeline, Diagnostics> {
    parse_with(source, path, env, only, true)
}

/// Like [`parse`], for a pipeline that runs on another filesystem (the one
/// a Kubernetes manifest carries in a ConfigMap for its container): plugin
/// files are not looked for here.
pub fn parse_elsewhere(
    source: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    only: Option<PhaseName>,
) -> Result<Pipeline, Diagnostics> {
    parse_with(source, path, env, only, false)
}

fn parse_with(
    source: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    only: Option<PhaseName>,
    plugin_files_here: bool,
) -> Result<Pipeline, Diagnostics> {
    // The toml crate's own errors (syntax, wrong types, our unit visitors'
    // messages) are kept as they are, located at their span.
    let toml_error = |e: toml::de::Error| {
        let span = e.span().unwrap_or(0..0);
        Diagnostics(vec![Diagnostic::new(
            path,
            source,
            span,
            e.message().trim_end(),
        )])
    };
    let doc = toml::de::DeTable::parse(source).map_err(toml_error)?;
    let unknown = keys::check(&doc, path, source);
    if !unknown.is_empty() {
        return Err(Diagnostics(unknown));
    }
    let raw =
        schema::RawPipeline::deserialize(toml::de::Deserializer::from(doc)).map_err(toml_error)?;
    resolve::resolve(raw, path, source, env, only, plugin_files_here)
}
