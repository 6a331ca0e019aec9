//! The one wasmtime [`Engine`] and [`Linker`] a process uses, configured
//! identically whether it compiles plugins or runs them (precompiled artifacts
//! only load into an engine with the same settings).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::bindings;
use crate::state::StepState;

/// How often the epoch advances. A CPU-bound plugin yields to the runner at
/// every tick, so this is the granularity of wall-time limits on guest loops.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A wasmtime engine with every host interface lifehook offers linked in.
/// Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<StepState>>,
}

impl Runtime {
    /// Builds the engine, links WASI (p2), `wasi:http`, `wasi:config` and
    /// `lifehook:hook/log`, and starts the epoch ticker thread.
    pub fn new() -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config())?;
        let linker = Arc::new(build_linker(&engine)?);
        start_epoch_ticker(&engine);
        Ok(Runtime { engine, linker })
    }

    /// An engine for `lifehook compile`: the same settings as [`Runtime::new`]
    /// but code generated for the baseline of this architecture (no CPU
    /// feature detection), so its artifacts load on any CPU of the
    /// architecture. wasmtime accepts code using a subset of the host's CPU
    /// features, so `run`'s own engine loads these artifacts.
    #[cfg(feature = "compiler")]
    pub fn for_precompiling() -> anyhow::Result<Runtime> {
        let mut config = engine_config();
        config.target(&target_lexicon::Triple::host().to_string())?;
        let engine = Engine::new(&config)?;
        let linker = Arc::new(build_linker(&engine)?);
        Ok(Runtime { engine, linker })
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
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
    crate::fs_gate::add_to_linker(&mut linker)?;
    crate::caps::add_sockets_to_linker(&mut linker)?;
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
