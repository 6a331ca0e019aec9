//! Runs lifehook pipeline steps: each step's plugin is a WebAssembly
//! component run in its own wasmtime store, with only the capabilities its
//! grants allow and under four limits (fuel, wall time, memory, and the phase
//! deadline over all steps).
//!
//! The pieces, in the order a run uses them:
//! - [`Host`]: the process's one engine and linker (WASI 0.2, `wasi:http`,
//!   `wasi:config`, `lifehook:hook/log`) and the epoch ticker.
//! - [`Runner`]: owns a runtime and the plugins it loaded; runs a phase as
//!   often as asked (steps by their graph, retries, deadlines, the reserve
//!   for `always` steps) and returns a [`PhaseReport`].
//! - [`Plugin`]: a component checked and pre-instantiated once; a hook
//!   component (exports `run`) or a `wasi:cli/command`.
//! - [`ArtifactCache`]: plugins precompiled by `lifehook compile`.
//!
//! Inside, a run goes `runner` (the scheduling loop) -> `scheduler` (which
//! step starts or is skipped, a pure state machine) -> `step` (one step's
//! attempts) -> `attempt` (one store, one call, `classify`) -> `state` (the
//! sandbox, grouped in `sandbox/`: `fs_gate`, `http_gate`, `memory`,
//! `quotas`, `denials`, `capture`, `files`, and `http_send` and
//! `tls_sockets` with [`tls`], which configures TLS from a grant). Loading a plugin (sources,
//! OCI pulls, the artifact cache) is grouped in `load/`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let pipeline = lifehook_manifest::load("lifehook.toml".as_ref(), None)?;
//! let phase = pipeline.phase(lifehook_manifest::PhaseName::PreStop).unwrap();
//! let sources = lifehook_runtime::sources::Sources::default();
//! let runner = lifehook_runtime::Runner::new(lifehook_runtime::Host::new()?, None, sources);
//! let report = runner.run(&pipeline.path, phase, &Default::default()).await;
//! println!("{}", report.to_json());
//! # Ok(()) }
//! ```

mod atomic;
mod attempt;
mod bindings;
pub mod contract;
mod engine;
mod load;
mod report;
mod runner;
mod sandbox;
mod scheduler;
mod selection;
mod step;
pub mod tls;
pub mod trace;

pub use load::adapt;
#[cfg(feature = "oci")]
pub use load::oci;
pub use load::sources;

pub use atomic::{WriteOptions, atomic_write};
pub use engine::{Arch, EPOCH_TICK, Host, HostError};
pub use load::cache::{ArtifactCache, CompileError, Compiled, finish_cache_writes};
pub use load::loader::LoadResult;
pub use load::plugin::{CodeSource, LoadError, Plugin, PluginKind};
pub use report::{AttemptLog, Outcome, PhaseReport, PhaseStatus, StepReport};
pub use runner::{RunOptions, Runner};
pub use selection::{Exclusion, Selection};
pub use tls::{TlsFileError, check_files as check_tls_files};
