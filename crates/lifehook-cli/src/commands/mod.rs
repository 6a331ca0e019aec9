//! The subcommands, one file each.

mod check;
mod compile;
mod exec;
mod inject;
mod inspect;
mod install;
mod new;
mod pod;
mod push;
pub mod run;
pub mod serve;
mod status;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lifehook_manifest::PhaseName;
use lifehook_manifest::Pipeline;
use lifehook_runtime::sources::{Lock, Registries, Sources};
use lifehook_runtime::{ArtifactCache, Host, Runner};

use crate::logging::LogArgs;

/// Runs container lifecycle hooks (Kubernetes preStop / postStart) as a
/// pipeline of sandboxed WebAssembly plugins, each under fuel, time and memory
/// limits and with only the capabilities it is granted.
#[derive(Debug, Parser)]
#[command(name = "lifehook", version = VERSION, after_help = crate::exit::help())]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What `--version` says: the version, the target the binary was built for,
/// and which build it is.
#[cfg(feature = "compiler")]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("LIFEHOOK_TARGET"),
    ", full: compiles plugins)"
);
/// What `--version` says (the runtime-only build).
#[cfg(not(feature = "compiler"))]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("LIFEHOOK_TARGET"),
    ", runtime-only: runs precompiled plugins)"
);

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    Run(run::Run),
    Exec(exec::Exec),
    Serve(serve::Serve),
    Check(check::Check),
    Compile(compile::Compile),
    Inject(inject::Inject),
    Inspect(inspect::Inspect),
    Install(install::Install),
    New(new::New),
    Push(push::Push),
    Status(status::Status),
}

impl Command {
    /// Whether stdout is the command's own output (a report, a listing):
    /// every command but `exec` and `serve`, whose stdout is free for log
    /// lines when they are a container's main process.
    pub fn prints_to_stdout(&self) -> bool {
        !matches!(self, Command::Exec(_) | Command::Serve(_))
    }

    /// Runs the subcommand; returns the process exit code.
    pub fn execute(self) -> anyhow::Result<i32> {
        match self {
            Command::Run(c) => c.execute(),
            Command::Exec(c) => c.execute(),
            Command::Serve(c) => c.execute(),
            Command::Check(c) => c.execute(),
            Command::Compile(c) => c.execute(),
            Command::Inject(c) => c.execute(),
            Command::Inspect(c) => c.execute(),
            Command::Install(c) => c.execute(),
            Command::New(c) => c.execute(),
            Command::Push(c) => c.execute(),
            Command::Status(c) => c.execute(),
        }
    }
}

/// What `run`, `check`, `compile`, `exec` and `serve` work on: the pipeline
/// file, the cache of precompiled plugins, the registries.
#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    #[command(flatten)]
    pub registries: RegistryArgs,
}

impl Target {
    /// A runner for `pipeline`: a fresh engine, loading precompiled plugins
    /// from the cache, and OCI plugins through the registries.
    pub fn runner(&self, pipeline: &Pipeline) -> anyhow::Result<Runner> {
        use anyhow::Context as _;
        let cache = self.cache.cache(&pipeline.path);
        let sources = self.registries.sources(pipeline, &cache)?;
        let rt = Host::new().context("cannot start the WebAssembly engine")?;
        Ok(Runner::new(rt, Some(cache), sources))
    }
}

/// The pipeline file when none is given.
pub const DEFAULT_PIPELINE: &str = "lifehook.toml";

/// The pipeline file, shared by every subcommand.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline file.
    #[arg(
        short = 'f',
        long = "file",
        env = "LIFEHOOK_CONFIG",
        default_value = DEFAULT_PIPELINE
    )]
    pub file: PathBuf,
}

/// Where precompiled plugins live.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Directory of precompiled plugins [default: .lifehook-cache next to the
    /// pipeline file].
    #[arg(long = "cache", env = "LIFEHOOK_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

/// Registries reached over plain HTTP, on top of the pipeline's own
/// `[oci] insecure-registries`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// A registry (`host:port`) to reach over plain HTTP instead of HTTPS
    /// (repeat for several). Never the default.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure: Vec<String>,

    /// The longest one plugin's pull from a registry may take, sign-in to
    /// last byte; a registry sending less than 8 KiB/s after the first 10s
    /// is given up sooner. In `run`, the step's timeout also bounds it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = run::parse_duration)]
    pub pull_timeout: std::time::Duration,
}

impl RegistryArgs {
    /// The registry settings: these plain-HTTP registries and the ones of
    /// `pipeline`, and the pull timeout.
    pub fn registries(&self, pipeline: Option<&Pipeline>) -> Registries {
        let mut insecure = pipeline.map_or_else(Vec::new, |p| p.insecure_registries.clone());
        insecure.extend(self.insecure.iter().map(|r| r.to_ascii_lowercase()));
        Registries {
            insecure,
            pull_timeout: self.pull_timeout,
        }
    }

    /// Where plugins of `pipeline` come from: files, and OCI plugins in
    /// `cache` pinned by the pipeline's lock file.
    pub fn sources(&self, pipeline: &Pipeline, cache: &ArtifactCache) -> anyhow::Result<Sources> {
        let lock = Lock::for_pipeline(&pipeline.path)?;
        Ok(Sources::new(
            Some(cache.dir().to_path_buf()),
            lock,
            self.registries(Some(pipeline)),
        ))
    }
}

impl CacheArgs {
    /// The cache for the pipeline at `pipeline`.
    pub fn cache(&self, pipeline: &Path) -> ArtifactCache {
        ArtifactCache::new(self.cache.clone().unwrap_or_else(|| {
            let dir = pipeline.parent().filter(|p| !p.as_os_str().is_empty());
            dir.unwrap_or(Path::new(".")).join(".lifehook-cache")
        }))
    }
}

/// A phase, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// Before the container stops (Kubernetes preStop).
    PreStop,
    /// After the container starts (Kubernetes postStart).
    PostStart,
}

impl From<PhaseArg> for PhaseName {
    fn from(p: PhaseArg) -> PhaseName {
        match p {
            PhaseArg::PreStop => PhaseName::PreStop,
            PhaseArg::PostStart => PhaseName::PostStart,
        }
    }
}

/// Report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A table, headline first.
    Text,
    /// One JSON document.
    Json,
}

/// A mistake on the command line that clap cannot see (an unknown step name).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The tokio runtime a run uses: one thread. Concurrent steps interleave on
/// it (a busy plugin yields at every epoch tick); compiling goes to blocking
/// threads. Worker threads would cost start-up time and, worse, make every
/// memory unmap of a finished plugin interrupt the other cores.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The README's command-line synopsis, one invocation per command with
    /// every optional part filled in (the first of each alternative).
    fn readme_synopsis() -> Vec<(String, Vec<String>)> {
        let readme = include_str!("../../../../README.md");
        let block = readme
            .split("## The command line\n\n```text\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the README has a command-line synopsis");
        let mut lines: Vec<String> = Vec::new();
        for line in block.lines() {
            let line = line.split(" # ").next().unwrap_or_default();
            match lines.last_mut() {
                Some(last) if line.starts_with(' ') => *last += line,
                _ => lines.push(line.to_owned()),
            }
        }
        lines
            .iter()
            .map(|line| (line.clone(), invocation(line)))
            .collect()
    }

    /// `[a B | c D]` -> `a B`, brackets and `...` dropped, `x|y` -> `x`,
    /// placeholders replaced by sample values.
    fn invocation(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut skipping_alternative = false;
        for word in line.split_whitespace() {
            if word == "|" {
                skipping_alternative = true;
                continue;
            }
            let closes = word.ends_with(']');
            let bare = word.trim_matches(['[', ']']).trim_end_matches("...");
            let bare = bare.trim_end_matches(']');
            if !skipping_alternative && !bare.is_empty() {
                let first = bare.split('|').next().unwrap_or(bare);
                words.push(sample(first).to_owned());
            }
            if closes {
                skipping_alternative = false;
            }
        }
        words
    }

    fn sample(word: &str) -> &str {
        match word {
            "FILE" => "lifehook.toml",
            "DURATION" => "5s",
            "DIR" => "cache",
            "STEP" | "TAG" | "NAME" => "x",
            "ADDR" => "127.0.0.1:8787",
            "PATH" => "token",
            "HOST:PORT" => "registry.example.com:5000",
            "MANIFEST.yaml" => "pod.yaml",
            "IMAGE" => "registry.example.com/lifehook:0.1",
            "PORT" => "8787",
            "SIGNAL" => "QUIT",
            "FROM:TO" => "143:0",
            "PLUGIN.wasm" => "plugin.wasm",
            "oci://REGISTRY/REPO:TAG" => "oci://registry.example.com/hooks/x:1",
            "COMMAND" => "sh",
            "ARGS" => "-c",
            other => other,
        }
    }

    /// `--pull-timeout`'s default is a string for clap; it must stay the
    /// runtime's own default.
    #[test]
    fn the_pull_timeout_default_is_the_runtimes() {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            registries: RegistryArgs,
        }
        let parsed = Only::try_parse_from(["lifehook"]).expect("parse");
        assert_eq!(
            parsed.registries.registries(None).pull_timeout,
            Registries::DEFAULT_PULL_TIMEOUT
        );
    }

    #[test]
    fn every_synopsis_line_of_the_readme_parses() {
        let synopsis = readme_synopsis();
        assert!(synopsis.len() >= 8, "{synopsis:?}");
        for (line, words) in &synopsis {
            if let Err(e) = Cli::try_parse_from(words) {
                panic!("the README's synopsis line\n  {line}\nas {words:?} does not parse:\n{e}");
            }
        }
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            assert!(
                synopsis
                    .iter()
                    .any(|(_, words)| words.get(1).map(String::as_str) == Some(name)),
                "the README's synopsis lacks `lifehook {name}`"
            );
        }
    }
}
