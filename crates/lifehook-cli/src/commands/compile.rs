//! `lifehook compile`: precompiles the pipeline's plugins.

use clap::Args;

use super::{CacheArgs, PhaseArg, PipelineArgs};

/// Precompile every plugin the pipeline names, so `run` loads machine code
/// instead of compiling (do it once, when building the image).
///
/// Artifacts are made for baseline x86-64, so they load on nodes with any
/// x86-64 CPU; `run` ignores, with a warning, any artifact that does not match
/// the plugin's content or this lifehook's engine, and compiles instead.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook compile                          # into ./.lifehook-cache
  lifehook compile -f /etc/lifehook/lifehook.toml --cache /var/cache/lifehook

In a Dockerfile, after copying the pipeline and its plugins:
  RUN [\"/lifehook\", \"compile\", \"-f\", \"/etc/lifehook/lifehook.toml\"]")]
pub struct Compile {
    #[command(flatten)]
    pipeline: PipelineArgs,

    #[command(flatten)]
    cache: CacheArgs,

    /// Compile only the plugins of this phase (both by default).
    #[arg(long, value_enum)]
    phase: Option<PhaseArg>,
}

impl Compile {
    #[cfg(feature = "compiler")]
    pub fn execute(self) -> anyhow::Result<i32> {
        use super::common::{distinct_plugins, print_out, print_problems};
        use anyhow::Context as _;
        use lifehook_runtime::Runtime;

        let pipeline = lifehook_manifest::load(&self.pipeline.file, self.phase.map(Into::into))?;
        let cache = self.cache.cache(&pipeline.path);
        let compiler = Runtime::for_precompiling().context("cannot start the compiler")?;
        let plugins = distinct_plugins(pipeline.phases.iter().flat_map(|p| &p.steps));
        // Plugins compile in parallel; Cranelift also spreads each one's
        // functions over the cores.
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = plugins
                .iter()
                .map(|plugin| scope.spawn(|| cache.compile(&compiler, plugin)))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut out = format!("compiled into {}\n", cache.dir().display());
        let mut problems = Vec::new();
        for result in results {
            match result {
                Ok(Ok(c)) => {
                    out += &format!(
                        "  {:<7} {}  {} KiB -> {} KiB in {}\n",
                        format!("{:?}", c.kind).to_lowercase(),
                        c.plugin.display(),
                        c.plugin_size.div_ceil(1024),
                        c.artifact_size.div_ceil(1024),
                        lifehook_units::format_duration(c.took),
                    );
                }
                Ok(Err(e)) => problems.push(format!("error: {e}")),
                Err(_) => problems.push("error: a compile thread panicked".into()),
            }
        }
        print_out(&out)?;
        print_problems(&problems);
        Ok(if problems.is_empty() {
            crate::render::EXIT_OK
        } else {
            crate::render::EXIT_INVALID
        })
    }

    #[cfg(not(feature = "compiler"))]
    pub fn execute(self) -> anyhow::Result<i32> {
        let _ = (&self.pipeline, &self.cache, self.phase);
        anyhow::bail!(
            "this lifehook was built without a compiler (runtime-only); run `lifehook compile` with a full build of the same version"
        )
    }
}
