//! Plugin stdout, stderr and `log` lines: split into lines, re-emitted as
//! tracing events in the step's span, and bounded. A plugin that floods
//! output has the excess dropped and counted; its writes never fail (a
//! failing `println!` would crash an otherwise healthy plugin).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::bindings::lifehook::hook::log::Level;

/// Longest line kept whole; longer lines are split. Bounds the buffer a
/// plugin can make the host hold while it writes without a newline.
const MAX_LINE: usize = 4096;
/// Longest text kept of the plugin's last stderr line, for the report.
const MAX_LAST_LINE: usize = 300;

/// Which output a line came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The output of one step (all its attempts share the budget).
#[derive(Clone)]
pub(crate) struct OutputCapture(Arc<Mutex<Captured>>);

/// The shared state behind [`OutputCapture`]: one mutex for both streams
/// and the log import, so lines of the three keep the order they were
/// written in.
struct Captured {
    /// Bytes of `output-limit` not yet used (over all attempts).
    remaining: u64,
    limit: u64,
    /// Bytes over the limit, reported so a reader knows output is missing.
    dropped: u64,
    /// The unterminated end of stdout and of stderr (by [`Stream`] index).
    partial: [Vec<u8>; 2],
    /// For the report: a failed plugin usually says why on its last line.
    last_stderr: String,
}

impl OutputCapture {
    /// A capture keeping at most `limit` bytes of output.
    pub(crate) fn new(limit: u64) -> OutputCapture {
        OutputCapture(Arc::new(Mutex::new(Captured {
            remaining: limit,
            limit,
            dropped: 0,
            partial: [Vec::new(), Vec::new()],
            last_stderr: String::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A WASI stdout/stderr writing into this capture.
    pub(crate) fn stream(&self, stream: Stream) -> CaptureStream {
        CaptureStream {
            capture: self.clone(),
            stream,
        }
    }

    /// A line from the `lifehook:hook/log` import, at the plugin's level:
    /// `-v` and `RUST_LOG` filter plugin lines like lifehook's own. It
    /// counts against the same budget as stdout and stderr, or a plugin
    /// could flood through the log import instead.
    pub(crate) fn emit_log(&self, level: Level, message: &str) {
        let mut c = self.lock();
        for line in message.lines() {
            if c.take_budget(line.len()) {
                match level {
                    Level::Trace => tracing::trace!(target: "plugin", "{line}"),
                    Level::Debug => tracing::debug!(target: "plugin", "{line}"),
                    Level::Info => tracing::info!(target: "plugin", "{line}"),
                    Level::Warn => tracing::warn!(target: "plugin", "{line}"),
                    Level::Error => tracing::error!(target: "plugin", "{line}"),
                }
            }
        }
    }

    /// Emits what is left of unterminated lines; call when an attempt ends
    /// (a plugin trapped mid-line still shows that half line).
    pub(crate) fn flush(&self) {
        let mut c = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut c.partial[stream as usize]);
            if !rest.is_empty() {
                c.emit(stream, &rest);
            }
        }
    }

    /// Bytes of output dropped over the limit so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The last non-empty line the plugin wrote to stderr, shortened.
    pub(crate) fn last_stderr_line(&self) -> Option<String> {
        let c = self.lock();
        (!c.last_stderr.is_empty()).then(|| c.last_stderr.clone())
    }

    /// Splits `bytes` into lines, joining them to the stream's unterminated
    /// rest; a line reaching [`MAX_LINE`] without a newline is emitted as it
    /// is, so one endless line costs the host at most that much memory.
    fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut c = self.lock();
        while !bytes.is_empty() {
            let buf = &mut c.partial[stream as usize];
            let room = MAX_LINE - buf.len();
            match bytes.iter().take(room).position(|&b| b == b'\n') {
                Some(nl) => {
                    buf.extend_from_slice(&bytes[..nl]);
                    bytes = &bytes[nl + 1..];
                }
                None => {
                    let n = room.min(bytes.len());
                    buf.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if buf.len() < MAX_LINE {
                        break;
                    }
                }
            }
            let line = std::mem::take(&mut c.partial[stream as usize]);
            c.emit(stream, &line);
        }
    }
}

impl Captured {
    /// Takes `n` bytes from the budget; on overrun counts them as dropped and
    /// warns once.
    fn take_budget(&mut self, n: usize) -> bool {
        let n = n as u64;
        if n <= self.remaining {
            self.remaining -= n;
            return true;
        }
        if self.dropped == 0 {
            tracing::warn!(
                "plugin output is over the step's {} byte output-limit; dropping the rest",
                self.limit
            );
        }
        self.dropped += n;
        false
    }

    /// One whole line to the log (lossy UTF-8: a plugin's bytes are not
    /// trusted to be text), remembering stderr's last for the report.
    fn emit(&mut self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        // Rust's panic output ends with a hint about backtraces; the line
        // before it is the panic message, which is what the report wants.
        let boilerplate = text.starts_with("note: run with `RUST_BACKTRACE");
        if stream == Stream::Stderr && !text.trim().is_empty() && !boilerplate {
            self.last_stderr = text.chars().take(MAX_LAST_LINE).collect();
        }
        if self.take_budget(line.len() + 1) {
            tracing::info!(target: "plugin", stream = stream.name(), "{text}");
        }
    }
}

/// One of a step's output streams, as WASI sees it.
pub(crate) struct CaptureStream {
    capture: OutputCapture,
    stream: Stream,
}

// Never a terminal: plugins must not emit colour codes or prompts into
// logs that end up in a collector.
impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }
}

impl CaptureStream {
    fn writer(&self) -> CaptureWriter {
        CaptureWriter {
            capture: self.capture.clone(),
            stream: self.stream,
        }
    }
}

/// Always ready, never full: writes go to the capture at once.
struct CaptureWriter {
    capture: OutputCapture,
    stream: Stream,
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureWriter {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.capture.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    // Any size is accepted (the capture copies or drops at once), so the
    // guest never waits on its output.
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CaptureWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.capture.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_drops_and_counts_the_excess() {
        let c = OutputCapture::new(10);
        c.write(Stream::Stdout, b"12345\n");
        c.write(Stream::Stdout, b"abcdefgh\n");
        assert_eq!(c.dropped(), 9);
    }

    #[test]
    fn long_lines_are_split_and_buffers_stay_bounded() {
        let c = OutputCapture::new(u64::MAX);
        c.write(Stream::Stderr, &vec![b'x'; MAX_LINE * 3 + 5]);
        assert_eq!(c.lock().partial[Stream::Stderr as usize].len(), 5);
        c.flush();
        assert!(c.lock().partial[Stream::Stderr as usize].is_empty());
    }

    #[test]
    fn keeps_the_last_stderr_line_for_the_report() {
        let c = OutputCapture::new(u64::MAX);
        c.write(
            Stream::Stderr,
            b"first\nthread 'main' panicked at src/main.rs:3:5:\n\n",
        );
        c.write(Stream::Stdout, b"not this\n");
        assert_eq!(
            c.last_stderr_line().as_deref(),
            Some("thread 'main' panicked at src/main.rs:3:5:")
        );
    }
}
