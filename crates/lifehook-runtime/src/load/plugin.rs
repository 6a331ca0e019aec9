//! Loading a plugin file: telling a component from a core module or a stray
//! file, compiling it, telling a hook component from a `wasi:cli/command` by
//! its exports, and pre-instantiating it against the linker once so each
//! attempt only instantiates.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, types::ComponentItem};
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::bindings::HookPre;
use crate::engine::Host;
use crate::sandbox::state::StepState;

/// Plugins bigger than this get a loud warning when they must be compiled at
/// run time: interpreters built as components (Python, JavaScript) take many
/// seconds of a grace period to compile.
#[cfg(feature = "compiler")]
const LARGE_PLUGIN: u64 = 2 << 20;
/// Compiling for longer than this is worth a warning.
#[cfg(feature = "compiler")]
const SLOW_COMPILE: Duration = Duration::from_secs(1);

/// What a plugin exports, and so how it is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Exports `run` from the `lifehook:hook` world.
    Hook,
    /// Exports `wasi:cli/run` (a command with a `main`).
    Command,
}

/// How a plugin's machine code was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeSource {
    /// Compiled in this process (by the baseline compiler, Winch, when the
    /// build has it).
    Compiled,
    /// Loaded from an artifact made by `lifehook compile` (optimised).
    Precompiled,
    /// Loaded from the baseline artifact an earlier run wrote to the cache
    /// after compiling the plugin itself.
    Cached,
}

/// A plugin ready to instantiate.
pub struct Plugin {
    /// The plugin file.
    pub path: PathBuf,
    /// Hook component or command.
    pub kind: PluginKind,
    /// Where its machine code came from.
    pub source: CodeSource,
    /// Time spent compiling or loading it.
    pub load_time: Duration,
    /// The xxh3-128 of its file (what names its artifacts).
    pub hash: u128,
    pub(crate) pre: Pre,
    /// The engine its code belongs to (its stores are made from it).
    pub(crate) engine: wasmtime::Engine,
    /// Compiled by the baseline compiler: bounded in wall time by fuel
    /// yields rather than epochs.
    pub(crate) baseline: bool,
}

pub(crate) enum Pre {
    Hook(HookPre<StepState>),
    Command(CommandPre<StepState>),
}

/// Why a plugin cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error(
        "plugin {path} is not a WebAssembly file (it does not start with `\\0asm`): build the plugin for wasm32-wasip2 and point `plugin` at the .wasm file"
    )]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// A core module that is not a WASI preview-1 command, or that the
    /// adapter could not wrap.
    #[error("plugin {path} is a core WebAssembly module lifehook cannot run: {why}")]
    Preview1 {
        /// The plugin file.
        path: PathBuf,
        /// What it is, and what to build instead.
        why: String,
    },
    /// The component is malformed or uses features this runner lacks.
    #[error("plugin {path} is not a valid component: {message}")]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// A component exporting neither interface lifehook calls.
    #[error(
        "plugin {path} exports neither `run` (the lifehook:hook world) nor `wasi:cli/run` (a command); it exports: {exports}"
    )]
    WrongExports {
        /// The plugin file.
        path: PathBuf,
        /// What it does export.
        exports: String,
    },
    /// `run` is exported with another signature.
    #[error(
        "plugin {path} exports `run` with a signature other than {}'s (built against another version of wit/hook.wit?): {message}",
        crate::contract::CONTRACT
    )]
    HookSignature {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// It imports something lifehook does not provide.
    #[error(
        "plugin {path} imports something lifehook does not provide (lifehook offers {}): {message}",
        crate::contract::offered()
    )]
    Imports {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// The plugin's bytes could not be had: not pinned, not pulled, or
    /// other content than its `sha256` pin.
    #[error(transparent)]
    Source(#[from] crate::load::sources::SourceError),
    /// Loading stopped for a reason of lifehook's own (a thread that died).
    #[error("plugin {path} could not be loaded: {message}")]
    Internal {
        /// The plugin file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// This build cannot compile and no usable precompiled artifact exists.
    #[error(
        "plugin {path} must be precompiled: this lifehook was built without a compiler; run `lifehook compile` with a full build"
    )]
    NeedsCompiler {
        /// The plugin file.
        path: PathBuf,
    },
}

/// What the first bytes of a file say it is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WasmFormat {
    Component,
    CoreModule,
    NotWasm,
}

pub(crate) fn sniff(bytes: &[u8]) -> WasmFormat {
    if wasmparser::Parser::is_component(bytes) {
        WasmFormat::Component
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        WasmFormat::CoreModule
    } else {
        WasmFormat::NotWasm
    }
}

impl Plugin {
    /// Reads, checks and compiles the plugin at `path`. Blocking and
    /// CPU-heavy: call from a blocking thread.
    pub fn load(rt: &Host, path: &Path) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let rt = rt.for_run_time_compile();
        let component = compile(rt, path, &bytes, true)?;
        let hash = xxhash_rust::xxh3::xxh3_128(&bytes);
        Self::prepare(rt, path, component, hash, CodeSource::Compiled, started)
    }

    /// Classifies `component` by its exports and pre-instantiates it.
    pub(crate) fn prepare(
        rt: &Host,
        path: &Path,
        component: Component,
        hash: u128,
        source: CodeSource,
        started: Instant,
    ) -> Result<Plugin, LoadError> {
        let kind = classify(rt, path, &component)?;
        let instance_pre =
            rt.linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::Imports {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        let pre =
            match kind {
                PluginKind::Hook => {
                    Pre::Hook(
                        HookPre::new(instance_pre).map_err(|e| LoadError::HookSignature {
                            path: path.to_path_buf(),
                            message: format!("{e:#}"),
                        })?,
                    )
                }
                PluginKind::Command => Pre::Command(CommandPre::new(instance_pre).map_err(
                    |e| LoadError::Invalid {
                        path: path.to_path_buf(),
                        message: format!("{e:#}"),
                    },
                )?),
            };
        Ok(Plugin {
            path: path.to_path_buf(),
            kind,
            source,
            load_time: started.elapsed(),
            hash,
            pre,
            engine: rt.engine.clone(),
            baseline: rt.is_baseline,
        })
    }
}

/// Checks the file's format, then compiles it with Cranelift. `at_run_time`
/// says the compile is eating into a hook's deadline, which deserves a
/// warning when it is slow.
pub(crate) fn compile(
    rt: &Host,
    path: &Path,
    bytes: &[u8],
    at_run_time: bool,
) -> Result<Component, LoadError> {
    match sniff(bytes) {
        WasmFormat::Component => jit(rt, path, bytes, at_run_time),
        WasmFormat::CoreModule => preview1(rt, path, bytes, at_run_time),
        WasmFormat::NotWasm => Err(LoadError::NotWasm {
            path: path.to_path_buf(),
        }),
    }
}

/// A WASI preview-1 command module, adapted into a command component and
/// compiled. Its artifacts are named by the module's hash, so a later load
/// finds them and never comes here.
#[cfg(feature = "compiler")]
fn preview1(
    rt: &Host,
    path: &Path,
    module: &[u8],
    at_run_time: bool,
) -> Result<Component, LoadError> {
    let component = crate::load::adapt::adapt(path, module)?;
    jit(rt, path, &component, at_run_time)
}

/// Without a compiler, a module cannot be adapted: only the artifact a
/// full build's `lifehook compile` made for it runs.
#[cfg(not(feature = "compiler"))]
fn preview1(_: &Host, path: &Path, module: &[u8], _: bool) -> Result<Component, LoadError> {
    match crate::load::adapt::refusal(module) {
        Some(why) => Err(LoadError::Preview1 {
            path: path.to_path_buf(),
            why,
        }),
        None => Err(LoadError::NeedsCompiler {
            path: path.to_path_buf(),
        }),
    }
}

/// Compiles a component with Cranelift, warning when it eats into a hook's
/// deadline.
#[cfg(feature = "compiler")]
fn jit(rt: &Host, path: &Path, bytes: &[u8], at_run_time: bool) -> Result<Component, LoadError> {
    let size = bytes.len() as u64;
    if at_run_time && size > LARGE_PLUGIN {
        tracing::warn!(
            "compiling plugin {} ({} MiB) at run time; this can take many seconds of the deadline: precompile it with `lifehook compile` when building the image",
            path.display(),
            size >> 20
        );
    }
    let started = Instant::now();
    let component = Component::new(&rt.engine, bytes).map_err(|e| LoadError::Invalid {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    let took = started.elapsed();
    if at_run_time && took > SLOW_COMPILE {
        tracing::warn!(
            "compiling plugin {} took {:.1}s; precompile it with `lifehook compile`",
            path.display(),
            took.as_secs_f64()
        );
    } else {
        tracing::debug!("compiled plugin {} in {took:?}", path.display());
    }
    Ok(component)
}

/// Without a compiler only precompiled plugins run.
#[cfg(not(feature = "compiler"))]
fn jit(_: &Host, path: &Path, _: &[u8], _: bool) -> Result<Component, LoadError> {
    Err(LoadError::NeedsCompiler {
        path: path.to_path_buf(),
    })
}

/// Tells a hook component from a command by its exports.
fn classify(rt: &Host, path: &Path, component: &Component) -> Result<PluginKind, LoadError> {
    let ty = component.component_type();
    let mut names = Vec::new();
    let mut has_run_func = false;
    let mut has_cli_run = false;
    for (name, item) in ty.exports(&rt.engine) {
        match (name, &item.ty) {
            ("run", ComponentItem::ComponentFunc(_)) => has_run_func = true,
            (n, ComponentItem::ComponentInstance(_)) if is_cli_run(n) => has_cli_run = true,
            _ => {}
        }
        names.push(name.to_owned());
    }
    if has_run_func {
        Ok(PluginKind::Hook)
    } else if has_cli_run {
        Ok(PluginKind::Command)
    } else {
        Err(LoadError::WrongExports {
            path: path.to_path_buf(),
            exports: if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            },
        })
    }
}

/// `wasi:cli/run@0.2.x`: any 0.2 release.
fn is_cli_run(name: &str) -> bool {
    name.strip_prefix("wasi:cli/run@0.2.").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats() {
        assert_eq!(sniff(b"\0asm\x01\0\0\0"), WasmFormat::CoreModule);
        assert_eq!(sniff(b"\0asm\x0d\0\x01\0"), WasmFormat::Component);
        assert_eq!(sniff(b"#!/bin/sh\n"), WasmFormat::NotWasm);
        assert_eq!(sniff(b""), WasmFormat::NotWasm);
    }

    #[test]
    fn recognises_any_wasi_0_2_run() {
        assert!(is_cli_run("wasi:cli/run@0.2.0"));
        assert!(is_cli_run("wasi:cli/run@0.2.6"));
        assert!(!is_cli_run("wasi:cli/run@0.3.0"));
        assert!(!is_cli_run("wasi:http/incoming-handler@0.2.0"));
    }
}
