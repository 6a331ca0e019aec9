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
    target: Target,

    /// Compile only the plugins of this phase (both by default).
    #[arg(long, value_enum)]
    phase: Option<PhaseArg>,

    /// Resolve every tag again and update `lifehook.lock` (by default a tag
    /// already in the lock keeps its digest, so rebuilding an image is
    /// reproducible).
    #[arg(long)]
    update: bool,
}

impl Compile {
    #[cfg(feature = "compiler")]
    pub fn execute(self) -> anyhow::Result<i32> {
        use crate::output::{print_out, print_problems};
        use crate::plugins::distinct_plugins;
        use anyhow::Context as _;
        use lifehook_manifest::{PluginRef, PluginSource, PullPolicy};
        use lifehook_runtime::Host;
        use std::path::PathBuf;

        let pipeline =
            lifehook_manifest::load(&self.target.pipeline.file, self.phase.map(Into::into))?;
        let cache = self.target.cache.cache(&pipeline.path);
        let mut sources = self.target.registries.sources(&pipeline, &cache)?;
        let plugins = distinct_plugins(pipeline.phases.iter().flat_map(|p| &p.steps));
        let mut out = format!("compiled into {}\n", cache.dir().display());
        let mut problems = Vec::new();
        // OCI plugins first: a tag resolved now is pinned in the lock file.
        let io = super::tokio_runtime()?;
        let mut files: Vec<(PluginRef, PathBuf)> = Vec::new();
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
                Ok(path) => files.push((plugin.clone(), path)),
                Err(e) => problems.push(format!("error: {e}")),
            }
        }
        drop(io);
        sources.lock.save()?;
        let compiler = Host::for_precompiling().context("cannot start the compiler")?;
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

    #[cfg(not(feature = "compiler"))]
    pub fn execute(self) -> anyhow::Result<i32> {
        let _ = (&self.target, self.phase, self.update);
        anyhow::bail!(
            "this lifehook was built without a compiler (runtime-only); run `lifehook compile` with a full build of the same version"
        )
    }
}
