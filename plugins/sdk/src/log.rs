//! Leveled log lines, tagged by the runner with the step name. Plain
//! `println!`/`eprintln!` output is captured too, at `info`.
//!
//! The macros take `format!` arguments: `lifehook_sdk::info!("kept {n}")`.

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

/// Logs a `format!` message at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        $crate::log::debug(&::std::format!($($arg)*))
    };
}

/// Logs a `format!` message at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        $crate::log::info(&::std::format!($($arg)*))
    };
}

/// Logs a `format!` message at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::log::warn(&::std::format!($($arg)*))
    };
}

/// Logs a `format!` message at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::log::error(&::std::format!($($arg)*))
    };
}
