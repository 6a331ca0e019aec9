//! The one wasmtime [`Engine`] and [`Linker`] a process uses, configured
//! identically whether it compiles plugins or runs them (precompiled artifacts
//! only load into an engine with the same settings).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use target_lexicon::{Architecture, Triple};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::bindings;
use crate::sandbox::state::StepState;

/// How often the epoch advances. A CPU-bound plugin yields to the runner at
/// every tick, so this is the granularity of wall-time limits on guest loops.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Fuel between two yields of a plugin compiled by the baseline compiler,
/// which has no epoch interruption: its wall-time limit is checked at each
/// yield (about every millisecond of busy guest code).
pub(crate) const BASELINE_YIELD_FUEL: u64 = 1_000_000;

/// A wasmtime engine with every host interface lifehook offers linked in.
/// Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Host {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<StepState>>,
    /// True for the baseline (Winch) engine.
    pub(crate) is_baseline: bool,
    /// The architecture its code is for: this machine's, but for
    /// `lifehook compile --target` of another.
    pub(crate) arch: Architecture,
    /// The baseline engine, built the first time a plugin has to be
    /// compiled at run time.
    #[cfg_attr(
        not(feature = "compiler"),
        expect(
            dead_code,
            reason = "only a build with a compiler compiles at run time"
        )
    )]
    baseline: Arc<OnceLock<Option<Host>>>,
}

/// Why the engine could not be built: wasmtime refused the configuration
/// (this build's settings on this CPU) or the linker could not be wired.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostError(String);

impl HostError {
    fn new(e: impl Into<anyhow::Error>) -> HostError {
        HostError(format!("{:#}", e.into()))
    }
}

impl Host {
    /// Builds the engine, links WASI (p2), `wasi:http`, `wasi:config` and
    /// `lifehook:hook/log`, and starts the epoch ticker thread.
    pub fn new() -> Result<Host, HostError> {
        let engine = Engine::new(&shipped_config(&Triple::host()).map_err(HostError::new)?)
            .map_err(HostError::new)?;
        let linker = Arc::new(build_linker(&engine).map_err(HostError::new)?);
        start_epoch_ticker(&engine);
        Ok(Host {
            engine,
            linker,
            is_baseline: false,
            arch: native_arch(),
            baseline: Arc::default(),
        })
    }

    /// The engine that compiles plugins with no precompiled artifact:
    /// Winch, wasmtime's baseline compiler, which compiles in one pass,
    /// several times faster than Cranelift, to code that runs slower. Its
    /// code needs its own engine (another calling convention), and it has
    /// no epoch interruption: plugins it compiled yield every
    /// [`BASELINE_YIELD_FUEL`] instead, where their deadline is checked.
    /// `None` when it cannot be built (it is then Cranelift at run time).
    #[cfg(feature = "compiler")]
    pub(crate) fn baseline(&self) -> Option<&Host> {
        self.baseline
            .get_or_init(|| {
                let mut config = engine_config();
                config.strategy(wasmtime::Strategy::Winch);
                config.epoch_interruption(false);
                let built = Engine::new(&config)
                    .map_err(anyhow::Error::from)
                    .and_then(|engine| {
                        let linker = Arc::new(build_linker(&engine)?);
                        Ok(Host {
                            engine,
                            linker,
                            is_baseline: true,
                            arch: native_arch(),
                            baseline: Arc::default(),
                        })
                    });
                built
                    .inspect_err(|e| {
                        tracing::warn!(
                            "cannot start the baseline compiler ({e:#}); compiling with Cranelift"
                        )
                    })
                    .ok()
            })
            .as_ref()
    }

    /// An engine for `lifehook compile`: the same settings as [`Host::new`]
    /// but code generated for the baseline of the architecture (no CPU
    /// feature detection), so its artifacts load on any CPU of it. wasmtime
    /// accepts code using a subset of the host's CPU features, so `run`'s own
    /// engine loads these artifacts. `target` is this machine's architecture
    /// when `None`; for another one, the engine can only write artifacts
    /// (see [`Host::is_native`]).
    #[cfg(feature = "compiler")]
    pub fn for_precompiling(target: Option<Arch>) -> Result<Host, HostError> {
        let mut triple = Triple::host();
        if let Some(arch) = target {
            triple.architecture = arch.architecture();
        }
        let engine = Engine::new(&shipped_config(&triple).map_err(HostError::new)?)
            .map_err(HostError::new)?;
        let linker = Arc::new(build_linker(&engine).map_err(HostError::new)?);
        Ok(Host {
            engine,
            linker,
            is_baseline: false,
            arch: triple.architecture,
            baseline: Arc::default(),
        })
    }

    /// Whether this engine's code runs here. wasmtime loads no code for
    /// another architecture, not even to check its types: an engine for
    /// another one only writes artifacts.
    pub fn is_native(&self) -> bool {
        self.arch == native_arch()
    }

    /// The architecture this engine's code is for (`x86_64`, `aarch64`).
    pub fn arch_name(&self) -> String {
        self.arch.to_string()
    }

    /// The engine to compile with when a plugin must be compiled at run
    /// time: the baseline one when the build has it, else this one.
    pub(crate) fn for_run_time_compile(&self) -> &Host {
        #[cfg(feature = "compiler")]
        if let Some(baseline) = self.baseline() {
            return baseline;
        }
        self
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The architecture this lifehook runs on.
pub(crate) fn native_arch() -> Architecture {
    Triple::host().architecture
}

/// An architecture lifehook is built for, and makes artifacts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86-64 (amd64).
    X86_64,
    /// 64-bit Arm (arm64).
    Aarch64,
}

impl Arch {
    #[cfg(feature = "compiler")]
    fn architecture(self) -> Architecture {
        match self {
            Arch::X86_64 => Architecture::X86_64,
            Arch::Aarch64 => Architecture::Aarch64(target_lexicon::Aarch64Architecture::Aarch64),
        }
    }
}

/// The settings of the engine that runs `lifehook compile`'s artifacts and
/// of the one that writes them: [`engine_config`] for the baseline of the
/// `target` architecture (no CPU feature detection), so artifacts load on
/// any CPU of it. Naming the target also spares every run detecting the CPU's
/// features for a compiler it does not use (the baseline compiler, which
/// compiles at run time, has an engine of its own).
fn shipped_config(target: &Triple) -> anyhow::Result<Config> {
    let mut config = engine_config();
    config.target(&target.to_string())?;
    Ok(config)
}

/// The engine settings. Fuel and epoch interruption are compiled into the
/// machine code, so they must match between `lifehook compile` and `run`.
pub(crate) fn engine_config() -> Config {
    let mut config = Config::new();
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    // A plugin that recurses without bound hits this and traps with a stack
    // overflow instead of taking the host thread down.
    config.max_wasm_stack(1 << 20);
    config
}

fn build_linker(engine: &Engine) -> anyhow::Result<Linker<StepState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::sandbox::fs_gate::add_to_linker(&mut linker)?;
    crate::sandbox::quotas::add_sockets_to_linker(&mut linker)?;
    crate::sandbox::tls_sockets::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, |s: &mut StepState| {
        wasmtime_wasi_config::WasiConfig::from(&s.config)
    })?;
    bindings::lifehook::hook::log::add_to_linker::<StepState, HasSelf<StepState>>(
        &mut linker,
        |s| s,
    )?;
    bindings::lifehook::hook::deadline::add_to_linker::<StepState, HasSelf<StepState>>(
        &mut linker,
        |s| s,
    )?;
    crate::sandbox::files::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a plain thread (a busy
/// guest would starve a tokio task). The thread ends with the engine.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("lifehook-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        // Without the ticker, tokio's timeout still bounds every step; guest
        // loops are then stopped at their next host call or by fuel.
        tracing::warn!(
            "cannot start the epoch thread ({e}); busy plugins are bounded by fuel only"
        );
    }
}
