//! Runs lifehook pipeline steps: each step's plugin is a WebAssembly
//! component run in its own wasmtime store, with only the capabilities its
//! grants allow and under four limits (fuel, wall time, memory, and the phase
//! deadline over all steps).
//!
//! The pieces, in the order a run uses them:
//! - [`Runtime`]: the process's one engine and linker (WASI 0.2, `wasi:http`,
//!   `wasi:config`, `lifehook:hook/log`) and the epoch ticker.
//! - [`Plugin`]: a component checked and pre-instantiated once; a hook
//!   component (exports `run`) or a `wasi:cli/command`.
//! - [`ArtifactCache`]: plugins precompiled by `lifehook compile`.
//! - [`run_phase`]: the executor; steps in order, concurrent groups, retries,
//!   deadlines; returns a [`PhaseReport`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let pipeline = lifehook_manifest::load("lifehook.toml".as_ref(), None)?;
//! let phase = pipeline.phase(lifehook_manifest::PhaseName::PreStop).unwrap();
//! let rt = lifehook_runtime::Runtime::new()?;
//! let report = lifehook_runtime::run_phase(&rt, &pipeline.path, phase, &Default::default()).await;
//! print!("{}", report.to_text());
//! # Ok(()) }
//! ```

mod bindings;
mod cache;
mod capture;
mod engine;
mod executor;
mod fs_gate;
mod plugin;
mod report;
mod state;

pub use cache::{ArtifactCache, CompileError, Compiled};
pub use engine::{EPOCH_TICK, Runtime};
pub use executor::{RunOptions, run_phase};
pub use plugin::{CodeSource, LoadError, Plugin, PluginKind};
pub use report::{
    EXIT_ABORTED, EXIT_DEADLINE, EXIT_INTERNAL, EXIT_INVALID, EXIT_OK, Outcome, PhaseReport,
    StepReport, human,
};
