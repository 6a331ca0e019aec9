//! {{name}}: a lifehook hook component.
//!
//! lifehook calls `run` once per attempt with the phase, the step's name,
//! the attempt number and the milliseconds left; it answers with a one-line
//! summary, or a failure saying whether trying again could help. The step's
//! `[config]` table is read through `wasi:config/store`. The contract is in
//! `wit/hook.wit`.

wit_bindgen::generate!({ world: "hook", path: "wit", generate_all });

use lifehook::hook::log::{self, Level};
use wasi::config::store;

struct Plugin;

impl Guest for Plugin {
    fn run(invocation: Invocation) -> Result<String, Failure> {
        let who = store::get("who").ok().flatten().ok_or_else(|| Failure {
            message: "missing config key `who`: set it in the step's [config]".into(),
            retryable: false,
            retry_after_ms: None,
        })?;
        log::emit(Level::Info, &format!("{} ms left", invocation.time_left_ms));
        Ok(format!(
            "said hello to {who} from step {} (attempt {}/{})",
            invocation.step, invocation.attempt, invocation.max_attempts
        ))
    }
}

export!(Plugin);
