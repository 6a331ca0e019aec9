//! The lifehook pipeline file (`lifehook.toml`): its TOML schema, checks, and
//! resolution into a [`Pipeline`] the runtime can execute without parsing
//! anything again.
//!
//! Loading goes in two steps. [`schema`] mirrors the TOML with serde (unknown
//! keys rejected, units parsed by their own visitors so that the `toml` crate
//! reports the exact line and column of a bad value). [`plan`] then resolves
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

pub mod diagnostic;
pub mod grant;
pub mod interpolate;
pub mod plan;
pub mod schema;
pub mod units;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics};
pub use grant::{DirGrant, HttpGrant, Scheme, TcpGrant};
pub use plan::{Grants, Limits, Phase, PhaseName, Pipeline, RetryPolicy, Step};
pub use schema::{Access, OnFailure};
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
    let source = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
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
    let raw: schema::RawPipeline = toml::from_str(source).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let help = toml_help(e.message());
        let mut d = Diagnostic::new(path, source, span, e.message().trim_end());
        if let Some(help) = help {
            d = d.with_help(help);
        }
        Diagnostics(vec![d])
    })?;
    plan::resolve(raw, path, source, env, only)
}

/// A hint for the commonest `toml` errors; the crate's own message is kept.
fn toml_help(message: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        Some("check the spelling against the pipeline reference in the README".into())
    } else if message.starts_with("missing field") {
        Some("every step needs at least `name` and `plugin`".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join("p.wasm"), b"").expect("write plugin");
            Fixture { dir }
        }

        fn parse(&self, source: &str) -> Result<Pipeline, Diagnostics> {
            let env = |name: &str| match name {
                "POD_NAME" => Some("web-0".to_string()),
                _ => None,
            };
            parse(source, &self.dir.path().join("lifehook.toml"), &env, None)
        }

        fn error(&self, source: &str) -> String {
            self.parse(source)
                .expect_err("should be rejected")
                .to_string()
        }
    }

    const MINIMAL: &str = "[[pre-stop.steps]]\nname = \"a\"\nplugin = \"p.wasm\"\n";

    #[test]
    fn minimal_pipeline_gets_the_documented_defaults() {
        let p = Fixture::new().parse(MINIMAL).expect("valid");
        let phase = p.phase(PhaseName::PreStop).expect("pre-stop");
        assert_eq!(phase.deadline, plan::DEFAULT_PRE_STOP_DEADLINE);
        let step = &phase.steps[0];
        assert_eq!(step.limits.timeout, plan::DEFAULT_TIMEOUT);
        assert_eq!(step.limits.fuel, Fuel::Limited(plan::DEFAULT_FUEL));
        assert_eq!(step.limits.memory, plan::DEFAULT_MEMORY);
        assert_eq!(step.on_failure, OnFailure::Continue);
        assert_eq!(step.retry.attempts, 1);
        assert!(step.grants.http.is_empty() && step.grants.dirs.is_empty());
        assert!(step.plugin.is_absolute());
    }

    #[test]
    fn defaults_apply_and_steps_override_them() {
        let p = Fixture::new()
            .parse(
                r#"
[defaults]
timeout = "3s"
memory = "16MiB"
on-failure = "abort"
retries = { attempts = 4, backoff = "10ms" }

[pre-stop]
deadline = "9s"

[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"

[[pre-stop.steps]]
name = "b"
plugin = "./p.wasm"
timeout = "1s"
fuel = "unlimited"
on-failure = "continue"
concurrent = true
"#,
            )
            .expect("valid");
        let phase = &p.phases[0];
        assert_eq!(phase.deadline, Duration::from_secs(9));
        let (a, b) = (&phase.steps[0], &phase.steps[1]);
        assert_eq!(a.limits.timeout, Duration::from_secs(3));
        assert_eq!(a.limits.memory, 16 << 20);
        assert_eq!(a.on_failure, OnFailure::Abort);
        assert_eq!(a.retry.attempts, 4);
        assert_eq!(a.retry.backoff, Duration::from_millis(10));
        assert_eq!(b.limits.timeout, Duration::from_secs(1));
        assert_eq!(b.limits.fuel, Fuel::Unlimited);
        assert_eq!(b.on_failure, OnFailure::Continue);
        assert!(b.concurrent && !a.concurrent);
    }

    #[test]
    fn config_is_flattened_and_interpolated() {
        let p = Fixture::new()
            .parse(
                r#"
[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"
[pre-stop.steps.config]
url = "http://x/${POD_NAME}"
port = 8080
ratio = 0.5
on = true
include = ["*.db", "wal/${POD_NAME}"]
headers = { authorization = "Bearer t", x-pod = "${POD_NAME}" }
"#,
            )
            .expect("valid");
        let config: std::collections::BTreeMap<_, _> =
            p.phases[0].steps[0].config.iter().cloned().collect();
        assert_eq!(config["url"], "http://x/web-0");
        assert_eq!(config["port"], "8080");
        assert_eq!(config["ratio"], "0.5");
        assert_eq!(config["on"], "true");
        assert_eq!(config["include"], "*.db\nwal/web-0");
        assert_eq!(config["headers.authorization"], "Bearer t");
        assert_eq!(config["headers.x-pod"], "web-0");
    }

    #[test]
    fn grants_are_parsed_and_dirs_resolved() {
        let f = Fixture::new();
        let p = f
            .parse(
                r#"
[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"
allow.http = ["http://127.0.0.1:8080"]
allow.tcp = ["localhost:6379"]
allow.env = ["POD_NAME"]
allow.dirs = ["data", { host = "./state/../snap", guest = "/snap", access = "read-write" }]
"#,
            )
            .expect("valid");
        let g = &p.phases[0].steps[0].grants;
        assert_eq!(g.http[0].port, Some(8080));
        assert_eq!(g.tcp[0].port, 6379);
        assert_eq!(g.env, ["POD_NAME"]);
        assert_eq!(g.dirs[0].host, f.dir.path().join("data"));
        assert_eq!(g.dirs[0].access, Access::Read);
        assert_eq!(g.dirs[0].guest, f.dir.path().join("data").to_string_lossy());
        assert_eq!(g.dirs[1].host, f.dir.path().join("snap"));
        assert_eq!(g.dirs[1].guest, "/snap");
        assert_eq!(g.dirs[1].access, Access::ReadWrite);
    }

    #[test]
    fn only_resolves_the_chosen_phase() {
        let f = Fixture::new();
        let source =
            format!("{MINIMAL}\n[[post-start.steps]]\nname = \"b\"\nplugin = \"missing.wasm\"\n");
        assert!(f.parse(&source).is_err());
        let p = parse(
            &source,
            &f.dir.path().join("x.toml"),
            &|_| None,
            Some(PhaseName::PreStop),
        )
        .expect("pre-stop alone is valid");
        assert_eq!(p.phases.len(), 1);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let e = Fixture::new()
            .error("[[pre-stop.steps]]\nname = \"a\"\nplugin = \"p.wasm\"\ntimout = \"5s\"\n");
        assert!(e.contains("unknown field `timout`"), "{e}");
        assert!(e.contains("lifehook.toml:4:1"), "{e}");
    }

    #[test]
    fn every_resolution_problem_is_listed() {
        let e = Fixture::new().error(
            r#"
[[pre-stop.steps]]
name = "a"
plugin = "missing.wasm"

[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"
config = { url = "${NOT_SET}" }
"#,
        );
        assert!(e.contains("missing.wasm cannot be read"), "{e}");
        assert!(e.contains("lifehook.toml:4:10"), "{e}");
        assert!(e.contains("duplicate step name `a`"), "{e}");
        assert!(e.contains("first step with this name is on line 3"), "{e}");
        assert!(e.contains("`NOT_SET` is not set"), "{e}");
        assert!(e.contains("lifehook.toml:9:18"), "{e}");
        assert!(e.contains("3 problems found"), "{e}");
    }
}
