//! `lifehook compile`: pulls the pipeline's OCI plugins (recording what
//! their tags resolved to in the lock file) and precompiles every plugin.

use clap::Args;

use super::{PhaseArg, Target};

/// Precompile every plugin the pipeline names, so `run` loads machine code
/// instead of compiling (do it once, when building the image). OCI plugins
/// are pulled into the cache first, and the digest each tag resolves to is
/// recorded in `lifehook.lock` next to the pipeline (a tag already there
/// keeps its digest unless --update), which `run` honours:
/// an image (or an init container writing to a shared volume) then carries
/// everything, and `run` needs no network.
///
/// Artifacts are made for the baseline of an architecture (this machine's, or
/// the one --target names), so they load on nodes with any CPU of it; `run`
/// ignores, with a warning, any artifact that does not match the plugin's
/// content, this machine's architecture or this lifehook's engine, and
/// compiles instead.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook compile                          # into ./.lifehook-cache
  lifehook compile -f /etc/lifehook/lifehook.toml --cache /var/cache/lifehook
  lifehook compile --target aarch64 --cache arm64-cache   # for an arm64 image
  lifehook compile --cache /lifehook/cache /lifehook/plugins/*.wasm

In a Dockerfile, after copying the pipeline and its plugins:
  RUN [\"/lifehook\", \"compile\", \"-f\", \"/etc/lifehook/lifehook.toml\"]")]
pub struct Compile {
    #[command(flatten)]
    target: Target,

    /// Compile only the plugins of this phase (both by default).
    #[arg(long, value_enum)]
    phase: Option<PhaseArg>,

    /// Resolve every tag again and update `lifehook.lock` (by default a tag
    /// already in the lock keeps its digest, so rebuilding an image is
    /// reproducible).
    #[arg(long)]
    update: bool,

    /// The architecture the artifacts are for [default: this machine's]:
    /// an x86-64 machine builds an arm64 image's artifacts with `aarch64`.
    /// Artifacts of one architecture go in a cache of their own.
    #[arg(long = "target", value_enum, value_name = "ARCH")]
    arch: Option<ArchArg>,

    /// Compile these plugin files instead of the pipeline's (no pipeline is
    /// read; --cache or LIFEHOOK_CACHE names where the artifacts go). How
    /// the lifehook image precompiles its sample plugins.
    #[arg(value_name = "PLUGIN")]
    plugins: Vec<std::path::PathBuf>,
}

/// What to compile: the cache, each plugin (as named, and its file), what
/// to print so far, and the problems found so far.
#[cfg(feature = "compiler")]
type Planned = (
    lifehook_runtime::ArtifactCache,
    Vec<(String, std::path::PathBuf)>,
    String,
    Vec<String>,
);

/// The architectures `compile --target` takes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ArchArg {
    /// x86-64 (amd64).
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    /// 64-bit Arm (arm64).
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

#[cfg(feature = "compiler")]
impl From<ArchArg> for lifehook_runtime::Arch {
    fn from(arch: ArchArg) -> Self {
        match arch {
            ArchArg::X86_64 => lifehook_runtime::Arch::X86_64,
            ArchArg::Aarch64 => lifehook_runtime::Arch::Aarch64,
        }
    }
}

impl Compile {
    #[cfg(feature = "compiler")]
    pub fn execute(self) -> anyhow::Result<i32> {
        use crate::output::{print_out, print_problems};
        use anyhow::Context as _;
        use lifehook_runtime::Host;

        let (cache, files, mut out, mut problems) = if self.plugins.is_empty() {
            self.pipeline_plugins()?
        } else {
            self.named_plugins()?
        };
        let compiler = Host::for_precompiling(self.arch.map(Into::into))
            .context("cannot start the compiler")?;
        if !compiler.is_native() {
            out += &format!(
                "  for {} (this machine cannot run these artifacts; the image of that architecture does)\n",
                compiler.arch_name()
            );
        }
        // Plugins compile in parallel; Cranelift also spreads each one's
        // functions over the cores.
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = files
                .iter()
                .map(|(plugin, path)| (plugin, scope.spawn(|| cache.compile(&compiler, path))))
                .collect();
            handles.into_iter().map(|(p, h)| (p, h.join())).collect()
        });
        for (plugin, result) in results {
            match result {
                Ok(Ok(c)) => {
                    out += &format!(
                        "  {:<7} {plugin}  {} KiB -> {} KiB in {}\n",
                        format!("{:?}", c.kind).to_lowercase(),
                        c.plugin_size.div_ceil(1024),
                        c.artifact_size.div_ceil(1024),
                        lifehook_units::format_duration(c.took),
                    );
                }
                Ok(Err(e)) => problems.push(format!("error: {e}")),
                Err(_) => problems.push("error: a compile thread panicked".into()),
            }
        }
        print_out(&out);
        print_problems(&problems);
        Ok(if problems.is_empty() {
            crate::exit::EXIT_OK
        } else {
            crate::exit::EXIT_INVALID
        })
    }

    /// The plugin files named on the command line, for the cache --cache
    /// (or LIFEHOOK_CACHE) names: no pipeline is read.
    #[cfg(feature = "compiler")]
    fn named_plugins(&self) -> anyhow::Result<Planned> {
        let Some(dir) = &self.target.cache.cache else {
            anyhow::bail!(
                "compiling plugin files needs the cache to write to: add --cache DIR (or set LIFEHOOK_CACHE)"
            );
        };
        let cache = lifehook_runtime::ArtifactCache::new(dir);
        let mut problems = Vec::new();
        let mut files = Vec::new();
        for path in &self.plugins {
            if path.is_file() {
                files.push((path.display().to_string(), path.clone()));
            } else {
                problems.push(format!(
                    "error: plugin {} does not exist (or is not a file)",
                    path.display()
                ));
            }
        }
        let out = format!("compiled into {}\n", cache.dir().display());
        Ok((cache, files, out, problems))
    }

    /// The pipeline's plugins, OCI ones pulled first (a tag resolved now is
    /// pinned in the lock file).
    #[cfg(feature = "compiler")]
    fn pipeline_plugins(&self) -> anyhow::Result<Planned> {
        use crate::plugins::distinct_plugins;
        use lifehook_manifest::{PluginRef, PluginSource, PullPolicy};

        let pipeline =
            lifehook_manifest::load(&self.target.pipeline.file, self.phase.map(Into::into))?;
        let cache = self.target.cache.cache(&pipeline.path);
        let mut sources = self.target.registries.sources(&pipeline, &cache)?;
        let plugins = distinct_plugins(pipeline.phases.iter().flat_map(|p| &p.steps));
        let mut out = format!("compiled into {}\n", cache.dir().display());
        let mut problems = Vec::new();
        let io = super::tokio_runtime()?;
        let mut files = Vec::new();
        for plugin in &plugins {
            let local = match &plugin.source {
                PluginSource::File(path) => Ok(path.clone()),
                PluginSource::Oci(r) => {
                    let locked = sources.lock.get(r).map(str::to_owned);
                    let tag_to_resolve = r.digest.is_none() && (self.update || locked.is_none());
                    if tag_to_resolve || plugin.pull == PullPolicy::Always {
                        io.block_on(sources.pull(r)).map(|(digest, path)| {
                            out += &format!("  pulled  {r} -> {digest}\n");
                            if r.digest.is_none() {
                                sources.lock.set(r, &digest);
                            }
                            path
                        })
                    } else {
                        if let (None, Some(digest)) = (&r.digest, &locked) {
                            out += &format!(
                                "  locked  {r} -> {digest} (--update to resolve the tag again)\n"
                            );
                        }
                        // Pulled here if missing, whatever the run-time policy.
                        let here = PluginRef {
                            pull: PullPolicy::IfNotPresent,
                            ..plugin.clone()
                        };
                        io.block_on(sources.local(&here))
                    }
                }
            };
            let checked = local.and_then(|path| match &plugin.sha256 {
                Some(pin) => {
                    lifehook_runtime::sources::verify_sha256(&path, pin, &plugin.to_string())
                        .map(|()| path)
                }
                None => Ok(path),
            });
            match checked {
                Ok(path) => files.push((plugin.to_string(), path)),
                Err(e) => problems.push(format!("error: {e}")),
            }
        }
        drop(io);
        sources.lock.save()?;
        Ok((cache, files, out, problems))
    }

    #[cfg(not(feature = "compiler"))]
    pub fn execute(self) -> anyhow::Result<i32> {
        let _ = (
            &self.target,
            self.phase,
            self.update,
            self.arch,
            &self.plugins,
        );
        anyhow::bail!(
            "this lifehook was built without a compiler (runtime-only); run `lifehook compile` with a full build of the same version"
        )
    }
}
