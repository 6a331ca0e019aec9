//! Write lifehook plugins in Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`; it implements
//! [`Hook`] and exports it with [`export!`]:
//!
//! ```ignore
//! use lifehook_sdk::{Failure, Hook, Invocation, config};
//!
//! struct Hello;
//!
//! impl Hook for Hello {
//!     fn run(invocation: Invocation) -> Result<String, Failure> {
//!         let who = config::get("who").unwrap_or_else(|| "world".into());
//!         Ok(format!("hello, {who}, from step {}", invocation.step))
//!     }
//! }
//!
//! lifehook_sdk::export!(Hello);
//! ```
//!
//! `cargo build --release --target wasm32-wasip2` then produces the
//! component in `target/wasm32-wasip2/release/<crate>.wasm`.

pub mod config;
pub mod env;
pub mod files;
pub mod fs;
#[cfg(feature = "http")]
pub mod http;
pub mod log;
#[cfg(feature = "tls")]
pub mod tls;

/// Bindings generated from `wit/hook.wit`; most plugins need only the
/// re-exports at the crate root.
#[allow(missing_docs, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "hook",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "lifehook_sdk::bindings",
        generate_all,
    });
}

/// The trait a hook component implements: `run` is called once per attempt.
pub use bindings::Guest as Hook;
pub use bindings::lifehook::hook::types::{Failure, Invocation, Phase};

/// Exports a type implementing [`Hook`] as the component's `run`.
pub use bindings::export;

/// Time this attempt has left now, as the runner counts it
/// (`lifehook:hook/deadline`, contract 0.1.1 and later).
pub fn time_left_now() -> std::time::Duration {
    std::time::Duration::from_millis(bindings::lifehook::hook::deadline::time_left_ms())
}

impl Failure {
    /// A failure that trying again cannot fix (bad configuration, a lock
    /// held by someone else).
    pub fn fatal(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retryable: false,
            retry_after_ms: None,
        }
    }

    /// A failure that may pass on another attempt (connection refused, 503).
    pub fn retryable(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retryable: true,
            retry_after_ms: None,
        }
    }

    /// A retryable failure that asks for the next attempt no sooner than
    /// `after` (from an HTTP `Retry-After`, say).
    pub fn retry_after(message: impl Into<String>, after: std::time::Duration) -> Failure {
        Failure {
            message: message.into(),
            retryable: true,
            retry_after_ms: Some(after.as_millis().try_into().unwrap_or(u64::MAX)),
        }
    }
}

impl Invocation {
    /// Time this attempt had left when it was called.
    pub fn time_left(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.time_left_ms)
    }

    /// `"pre-stop"` or `"post-start"`.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::PreStop => "pre-stop",
            Phase::PostStart => "post-start",
        }
    }
}
