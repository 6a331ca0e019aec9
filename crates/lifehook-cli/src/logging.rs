//! Logs go to stderr through `tracing`: text for people, JSON for machines.
//!
//! A hook's own output reaches nobody in a cluster: the kubelet records
//! only "PreStopHook failed" in its event and keeps the output in its own
//! log on the node. So in a container, lifehook also writes its `info`
//! lines and each report it makes (verdict, cause, a line per step) to the
//! container's main process output, `/proc/1/fd/1`, which `kubectl logs`
//! shows: each line marked as lifehook's (`lifehook: ` in text, a
//! `"source":"lifehook"` field in JSON). When lifehook is that process
//! (`exec`, `serve` as a sidecar) it is its own stdout. `--log-file PATH`
//! chooses another file, `--log-file none` turns it off; a file that cannot
//! be opened (another user's descriptor, a closed or read-only one) is
//! skipped quietly.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal as _, Write};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
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

    /// Also append info logs and reports to this file, `none` for no file.
    /// The default in a container is `/proc/1/fd/1`, the main process's
    /// output, which `kubectl logs` shows; elsewhere, none. A file that
    /// cannot be opened is skipped quietly.
    #[arg(long, value_name = "PATH", env = "LIFEHOOK_LOG_FILE", global = true)]
    pub log_file: Option<PathBuf>,
}

/// The container's main process output, where `kubectl logs` reads.
const MAIN_OUTPUT: &str = "/proc/1/fd/1";

/// The target of report lines: written to the log file only.
const REPORT: &str = "lifehook::report";

impl LogArgs {
    /// The file log lines are mirrored to, if any.
    fn mirror_path(&self) -> Option<PathBuf> {
        match &self.log_file {
            Some(path) if path.as_os_str() == "none" || path.as_os_str().is_empty() => None,
            Some(path) => Some(path.clone()),
            None => crate::delivery::in_a_container().then(|| PathBuf::from(MAIN_OUTPUT)),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `stdout_is_output`: the command prints
/// its result on stdout (a report, JSON), which log lines must not enter
/// when the log file turns out to be that same stdout (lifehook as a
/// container's main process running `run --report json`).
pub fn init(args: &LogArgs, stdout_is_output: bool) {
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
    let mirror = args
        .mirror_path()
        .and_then(|path| Mirror::open(&path, args.log_format))
        .filter(|m| !(m.is_stdout && stdout_is_output));
    let mirror_layer = mirror.map(|mirror| {
        let _ = MIRRORED.set(());
        mirror_layers(mirror, args.log_format)
    });
    let stderr = stderr
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target() != REPORT
        }))
        .boxed();
    let layers: Vec<_> = std::iter::once(stderr).chain(mirror_layer).collect();
    tracing_subscriber::registry().with(layers).init();
}

/// Set by [`init`] when there is a log file.
static MIRRORED: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Writes a report's lines to the log file (only there, not to stderr),
/// if there is one. It is never the stdout a report was printed on: `init`
/// keeps no such file for commands whose stdout is their output.
pub fn mirror_report(text: &str) {
    if MIRRORED.get().is_none() {
        return;
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // The headline says "lifehook pre-stop: ..."; the mark says
        // "lifehook: " already.
        let line = line.strip_prefix("lifehook ").unwrap_or(line);
        tracing::info!(target: REPORT, "{line}");
    }
}

/// The layers writing to the log file: log lines with their level, report
/// lines as they are.
fn mirror_layers(
    mirror: Mirror,
    format: LogFormat,
) -> Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> {
    // lifehook as the main process: its stderr is in the same log, and
    // shows warnings and errors already.
    let only_info = mirror.is_stdout;
    let levels = tracing_subscriber::filter::filter_fn(move |m| {
        if only_info {
            *m.level() == tracing::Level::INFO
        } else {
            *m.level() <= tracing::Level::INFO
        }
    });
    let quiet = || EnvFilter::new("info,wasmtime=warn,cranelift=warn,hyper=warn");
    let stamped = mirror.stamped;
    match format {
        LogFormat::Json => fmt::layer()
            .log_internal_errors(false)
            .json()
            .with_writer(mirror)
            .with_filter(quiet())
            .with_filter(levels)
            .boxed(),
        LogFormat::Text => {
            let logs = fmt::layer()
                .log_internal_errors(false)
                .with_writer(mirror.clone())
                .with_ansi(false)
                .with_target(false);
            let logs = if stamped {
                logs.boxed()
            } else {
                logs.without_time().boxed()
            };
            let report = fmt::layer()
                .log_internal_errors(false)
                .with_writer(mirror)
                .with_ansi(false)
                .with_target(false)
                .with_level(false)
                .without_time()
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.target() == REPORT
                }));
            let logs =
                logs.with_filter(quiet())
                    .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                        m.target() != REPORT
                    }));
            logs.and_then(report).with_filter(levels).boxed()
        }
    }
}

/// The log file, opened for appending.
#[derive(Clone)]
struct Mirror {
    file: Arc<File>,
    json: bool,
    /// Lines carry a timestamp: a regular file. A pipe (a container's
    /// output) is stamped by the container runtime that reads it.
    stamped: bool,
    is_stdout: bool,
}

impl Mirror {
    fn open(path: &Path, format: LogFormat) -> Option<Mirror> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .ok()?;
        let meta = file.metadata().ok()?;
        let is_stdout = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| File::from(fd).metadata().ok())
            .is_some_and(|out| out.dev() == meta.dev() && out.ino() == meta.ino());
        Some(Mirror {
            file: Arc::new(file),
            json: format == LogFormat::Json,
            stamped: meta.is_file(),
            is_stdout,
        })
    }
}

impl<'a> MakeWriter<'a> for Mirror {
    type Writer = MarkedLine;

    fn make_writer(&'a self) -> MarkedLine {
        MarkedLine {
            file: Arc::clone(&self.file),
            json: self.json,
            buf: Vec::new(),
        }
    }
}

/// One event's output, marked as lifehook's and written with one `write`
/// when it is dropped, so that it does not interleave with the lines the
/// application writes to the same pipe (writes of up to 4 KiB to a pipe
/// are atomic).
struct MarkedLine {
    file: Arc<File>,
    json: bool,
    buf: Vec<u8>,
}

impl Write for MarkedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MarkedLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let marked = mark(&self.buf, self.json);
        let _ = (&*self.file).write_all(&marked);
    }
}

/// `lines` with lifehook's mark: `lifehook: ` before each text line, a
/// `"source":"lifehook"` field first in each JSON object.
fn mark(lines: &[u8], json: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + 32);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        match line.strip_prefix(b"{") {
            Some(rest) if json => {
                out.extend_from_slice(br#"{"source":"lifehook","#);
                out.extend_from_slice(rest);
            }
            _ => {
                out.extend_from_slice(b"lifehook: ");
                out.extend_from_slice(line);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mark;

    #[test]
    fn every_line_is_marked() {
        assert_eq!(
            mark(b"INFO one\n  two\n", false),
            b"lifehook: INFO one\nlifehook:   two\n"
        );
        assert_eq!(
            mark(b"{\"level\":\"INFO\"}\n", true),
            b"{\"source\":\"lifehook\",\"level\":\"INFO\"}\n"
        );
    }
}
