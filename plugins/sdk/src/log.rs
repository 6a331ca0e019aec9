//! Leveled log lines, tagged by the runner with the step name. Plain
//! `println!`/`eprintln!` output is captured too, at `info`.

use crate::bindings::lifehook::hook::log::{Level, emit};

/// Logs at debug level.
pub fn debug(message: &str) {
    emit(Level::Debug, message);
}

/// Logs at info level.
pub fn info(message: &str) {
    emit(Level::Info, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    emit(Level::Warn, message);
}

/// Logs at error level.
pub fn error(message: &str) {
    emit(Level::Error, message);
}
