//! Logs go to stderr through `tracing`: text for people, JSON for machines.
//!
//! Inside a container, a hook's output reaches the user only in the short
//! message of a failure event (cut to 1024 characters), so when stderr is not
//! a terminal the default level is `warn` and the run report (on stdout) says
//! what happened. `--log-file /proc/1/fd/1` additionally sends every `info`
//! line to the container's main process output, which `kubectl logs` shows.

use std::fs::OpenOptions;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Mutex;

use clap::{Args, ValueEnum};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer, fmt};

/// Logging options, accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// More log output: -v for info, -vv for debug, -vvv for trace. The
    /// LIFEHOOK_LOG variable takes a full filter (like `info,plugin=debug`)
    /// instead. Without either, stderr gets info on a terminal, warn elsewhere.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Also append info logs to this file; a file that cannot be opened is
    /// skipped quietly. `/proc/1/fd/1` puts hook logs into `kubectl logs`.
    #[arg(long, value_name = "PATH", env = "LIFEHOOK_LOG_FILE", global = true)]
    pub log_file: Option<PathBuf>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber.
pub fn init(args: &LogArgs) {
    let terminal = std::io::stderr().is_terminal();
    let default = match args.verbose {
        0 if terminal => LevelFilter::INFO,
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = || match std::env::var("LIFEHOOK_LOG") {
        Ok(spec) if args.verbose == 0 => {
            EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(default.to_string()))
        }
        _ => EnvFilter::new(format!("{default},wasmtime=warn,cranelift=warn,hyper=warn")),
    };
    let stderr = match args.log_format {
        // Off a terminal (a hook's output, kept by Kubernetes to 1024
        // characters) lines go without timestamps: the container runtime
        // stamps what it keeps, and the event message has no room to spare.
        LogFormat::Text if !terminal => fmt::layer()
            .log_internal_errors(false)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(false)
            .without_time()
            .with_filter(filter())
            .boxed(),
        LogFormat::Text => fmt::layer()
            .log_internal_errors(false)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(terminal)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .log_internal_errors(false)
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let file = args
        .log_file
        .as_ref()
        .and_then(|path| OpenOptions::new().append(true).create(true).open(path).ok())
        .map(|file| {
            let layer = fmt::layer()
                .log_internal_errors(false)
                .with_writer(Mutex::new(file))
                .with_ansi(false)
                .with_target(false);
            let layer = match args.log_format {
                LogFormat::Text => layer.boxed(),
                LogFormat::Json => layer.json().boxed(),
            };
            layer.with_filter(LevelFilter::INFO)
        });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
}
