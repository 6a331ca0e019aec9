//! `lifehook`: runs Kubernetes preStop/postStart pipelines of sandboxed
//! WebAssembly plugins. This file is glue: argument parsing, logging, and the
//! mapping from results to exit codes. The work is in `lifehook-manifest` and
//! `lifehook-runtime`.

// Every write of lifehook's own output goes through `output`, which a
// closed or broken stdout or stderr cannot make panic.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod delivery;
mod exit;
mod logging;
mod output;
mod plugins;
mod readiness;
mod render;
mod supervisor;
mod telemetry;

// See Cargo.toml: musl's own allocator costs start-up time and makes
// compiling plugins 2-3x slower.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write as _;

use clap::Parser as _;

use commands::Cli;

/// When the process started: the phase deadline counts from here.
pub static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() {
    STARTED.get_or_init(std::time::Instant::now);
    output::reopen_closed_stdio();
    disable_huge_pages();
    let cli = Cli::parse();
    logging::init(&cli.log, cli.command.prints_to_stdout());
    let code = match cli.command.execute() {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            error_code(&e)
        }
    };
    let _ = std::io::stdout().flush();
    // A baseline artifact being written for the next run: finish it (it
    // is written while the plugin runs, so this rarely waits).
    lifehook_runtime::finish_cache_writes(std::time::Duration::from_secs(2));
    exit_now(code)
}

/// Ends the process at once. Background work (a plugin still compiling on a
/// blocking thread for a step that was skipped) must not hold the hook past its
/// deadline, and the allocator's tidy-up at `exit` (collecting and returning
/// every heap page to the kernel, ~0.2 ms of a 3.5 ms run here) is wasted on
/// memory the kernel is about to take back anyway. Stdout is flushed above;
/// stderr and log files are unbuffered.
fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    #[expect(unsafe_code, reason = "_exit takes an integer and does not return")]
    // SAFETY: `_exit` only ends the process; no Rust state is observed after it.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// Turns transparent huge pages off for this process. A hook lives for
/// milliseconds; on hosts with THP set to `always`, the first touch of each
/// large mapping (allocator arenas, plugin memories, fiber stacks) zeroes a
/// whole 2 MiB page, which was a quarter of a no-op run's time here.
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    #[expect(unsafe_code, reason = "prctl with integer arguments only")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of ours; failure (an old kernel) just leaves THP as it was.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Prints an error and its causes the way anyhow does, except for pipeline
/// diagnostics, which carry their own layout.
/// The text goes to the log file as well: a hook that cannot even start
/// must say why where `kubectl logs` looks.
fn report_error(e: &anyhow::Error) {
    let text = if let Some(lifehook_manifest::ManifestError::Invalid(d)) = e.downcast_ref() {
        format!("{d}\n")
    } else {
        let mut text = format!("error: {e}\n");
        let causes = new_causes(e);
        if !causes.is_empty() {
            text += "\nCaused by:\n";
            for (i, cause) in causes.iter().enumerate() {
                text += &format!("    {i}: {cause}\n");
            }
        }
        text
    };
    output::print_err(&text);
    logging::mirror_report(&text);
}

/// The causes of `e` that say something new: an error whose message
/// already ends with its source's (`cannot read x: permission denied`
/// with the I/O error as its source) does not repeat it below.
fn new_causes(e: &anyhow::Error) -> Vec<String> {
    let mut shown = e.to_string();
    let mut causes = Vec::new();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !shown.ends_with(&text) {
            causes.push(text.clone());
        }
        shown = text;
    }
    causes
}

/// Invalid input exits with 2, anything else with 4 (see `--help`).
fn error_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<lifehook_manifest::ManifestError>()
        .is_some()
        || e.downcast_ref::<commands::UsageError>().is_some()
    {
        exit::EXIT_INVALID
    } else {
        exit::EXIT_INTERNAL
    }
}
