//! Per-step caps on what a plugin holds outside its linear memory: open
//! files, directories and sockets (`max-open`), bytes written to granted
//! directories (`max-write`) and outgoing HTTP requests in flight
//! (`max-http`). Without them one plugin that opens a file again and again
//! holds the process's whole descriptor limit, and every other step, and
//! lifehook itself, then fails to open anything.
//!
//! When a cap is reached the plugin gets the closest WASI error (`quota`
//! for files, `insufficient-space` for a write through a stream,
//! `new-socket-limit` for sockets, `connection-limit-reached` for HTTP), and
//! the step's report says which cap and how to raise it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use wasmtime::component::{Linker, Resource, ResourceTable};

use crate::contract::WASI_VERSION;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, OutputStream, Pollable, StreamError};

/// What one step may hold and write, and what it ran into; shared by the
/// step's attempts.
#[derive(Clone)]
pub(crate) struct StepQuotas {
    pub(crate) max_open: usize,
    pub(crate) max_http: usize,
    max_write: u64,
    written: Arc<AtomicU64>,
    reached: Arc<Mutex<Vec<String>>>,
}

impl StepQuotas {
    pub(crate) fn new(max_open: usize, max_write: u64, max_http: usize) -> StepQuotas {
        StepQuotas {
            max_open,
            max_http,
            max_write,
            written: Arc::default(),
            reached: Arc::default(),
        }
    }

    /// Records (once per cap) and logs that a cap was reached.
    pub(crate) fn reached(&self, cap: &str, limit: String, what: &str) {
        let line = format!(
            "the {cap} cap of {limit} was reached {what}; raise `{cap}` on the step if this is expected"
        );
        let mut list = self.reached.lock().unwrap_or_else(PoisonError::into_inner);
        if !list
            .iter()
            .any(|l| l.starts_with(&format!("the {cap} cap")))
        {
            tracing::warn!("{line}");
            list.push(line);
        }
    }

    /// The first cap reached, which the report leads with.
    pub(crate) fn first(&self) -> Option<String> {
        self.reached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .cloned()
    }

    /// Every cap reached.
    pub(crate) fn all(&self) -> Vec<String> {
        self.reached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes `n` bytes from the write budget, or reports the cap reached.
    pub(crate) fn take_write(&self, n: u64) -> bool {
        let taken = self
            .written
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                w.checked_add(n).filter(|t| *t <= self.max_write)
            })
            .is_ok();
        if !taken {
            self.reached(
                "max-write",
                lifehook_units::format_size(self.max_write),
                "writing to a granted directory",
            );
        }
        taken
    }

    /// Bytes left in the write budget.
    fn write_left(&self) -> u64 {
        self.max_write
            .saturating_sub(self.written.load(Ordering::Relaxed))
    }
}

/// File streams handed to the guest, by resource rep: a stream keeps its
/// file open after the descriptor is dropped, so it counts as open.
#[derive(Default)]
pub(crate) struct FileStreams(Vec<u32>);

impl FileStreams {
    /// Remembers the stream `rep` the fs gate just handed out.
    pub(crate) fn add(&mut self, rep: u32) {
        self.0.push(rep);
    }
}

/// Files, directories, file streams and sockets the attempt holds now.
/// Counted by walking the table rather than kept as a counter: handles are
/// closed by the guest dropping them, which no hook of ours sees, and a
/// count that missed a drop would refuse a well-behaved plugin.
pub(crate) fn open_handles(table: &mut ResourceTable, streams: &mut FileStreams) -> usize {
    let mut handles = 0;
    for entry in table.iter_mut() {
        if entry.is::<wasmtime_wasi::filesystem::Descriptor>()
            || entry.is::<wasmtime_wasi::p2::TcpSocket>()
            || entry.is::<wasmtime_wasi::p2::UdpSocket>()
        {
            handles += 1;
        }
    }
    // Streams dropped since are forgotten (a rep reused by another stream
    // still counts: the cap errs on the safe side).
    streams.0.retain(|&rep| {
        table
            .get_any_mut(rep)
            .is_ok_and(|e| e.is::<DynOutputStream>() || e.is::<DynInputStream>())
    });
    handles + streams.0.len()
}

/// A file output stream that draws every byte from the step's write budget.
pub(crate) struct CappedOutput {
    inner: DynOutputStream,
    caps: StepQuotas,
}

impl CappedOutput {
    /// Replaces the stream at `stream` in `table` with a capped one.
    pub(crate) fn wrap(
        table: &mut ResourceTable,
        stream: Resource<DynOutputStream>,
        caps: StepQuotas,
    ) -> wasmtime::Result<Resource<DynOutputStream>> {
        let inner = table.delete(stream)?;
        let capped: DynOutputStream = Box::new(CappedOutput { inner, caps });
        Ok(table.push(capped)?)
    }
}

/// A write refused by the cap: ENOSPC, which WASI reports as
/// `insufficient-space` (it has no code for a quota through a stream).
fn over_cap() -> StreamError {
    StreamError::LastOperationFailed(wasmtime::Error::new(std::io::Error::from_raw_os_error(
        ENOSPC,
    )))
}

/// `ENOSPC` on Linux.
const ENOSPC: i32 = 28;

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if !self.caps.take_write(bytes.len() as u64) {
            return Err(over_cap());
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()
    }

    // The permit is capped by what is left, so a well-behaved guest writes
    // exactly up to the cap; at zero left the next write is refused here,
    // counted once (so the report records the cap reached).
    fn check_write(&mut self) -> Result<usize, StreamError> {
        let permit = self.inner.check_write()?;
        match self.caps.write_left() {
            0 if permit > 0 => {
                self.caps.take_write(1);
                Err(over_cap())
            }
            left => Ok(permit.min(usize::try_from(left).unwrap_or(usize::MAX))),
        }
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

/// A store's data that keeps caps: the filesystem and sockets gates reach
/// the caps and the table through this.
pub(crate) trait QuotaView: wasmtime_wasi::WasiView + Send + 'static {
    /// This step's caps.
    fn caps(&self) -> &StepQuotas;
    /// The attempt's file streams.
    fn file_streams(&mut self) -> &mut FileStreams;
}

/// Shadows socket creation in `linker` so that a new socket counts against
/// `max-open`.
pub(crate) fn add_sockets_to_linker<T: QuotaView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    use wasmtime_wasi::p2::bindings::sockets::network::{self, IpAddressFamily};
    use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
    use wasmtime_wasi::sockets::WasiSocketsView as _;
    // Shadowing replaces wasmtime-wasi's own definitions, linked just
    // before; it is switched off again so nothing else is replaced by
    // accident.
    linker.allow_shadowing(true);
    linker
        .instance(&format!("wasi:sockets/tcp-create-socket@{WASI_VERSION}"))?
        .func_wrap(
            "create-tcp-socket",
            |mut store, (family,): (IpAddressFamily,)| {
                let state = store.data_mut();
                if let Some(refused) = socket_refused(state) {
                    return Ok((Err(refused),));
                }
                let mut view = state.sockets();
                let result = match tcp_create_socket::Host::create_tcp_socket(&mut view, family) {
                    Ok(socket) => Ok(socket),
                    Err(e) => Err(network::Host::convert_error_code(&mut view, e)?),
                };
                Ok((result,))
            },
        )?;
    linker
        .instance(&format!("wasi:sockets/udp-create-socket@{WASI_VERSION}"))?
        .func_wrap_async(
            "create-udp-socket",
            |mut store, (family,): (IpAddressFamily,)| {
                Box::new(async move {
                    let state = store.data_mut();
                    if let Some(refused) = socket_refused(state) {
                        return Ok((Err(refused),));
                    }
                    let mut view = state.sockets();
                    let created =
                        udp_create_socket::Host::create_udp_socket(&mut view, family).await;
                    let result = match created {
                        Ok(socket) => Ok(socket),
                        Err(e) => Err(network::Host::convert_error_code(&mut view, e)?),
                    };
                    Ok((result,))
                })
            },
        )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `new-socket-limit` when the attempt already holds `max-open` handles.
fn socket_refused<T: QuotaView>(
    state: &mut T,
) -> Option<wasmtime_wasi::p2::bindings::sockets::network::ErrorCode> {
    let max = state.caps().max_open;
    // Taken out and put back: counting needs the table and the streams
    // mutably at once, both behind `state`.
    let mut streams = std::mem::take(state.file_streams());
    let open = open_handles(state.ctx().table, &mut streams);
    *state.file_streams() = streams;
    if open < max {
        return None;
    }
    state
        .caps()
        .reached("max-open", max.to_string(), "creating a socket");
    Some(wasmtime_wasi::p2::bindings::sockets::network::ErrorCode::NewSocketLimit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_budget_is_shared_and_reported_once() {
        let caps = StepQuotas::new(8, 100, 1);
        assert!(caps.take_write(60));
        let other_attempt = caps.clone();
        assert!(!other_attempt.take_write(41));
        assert!(caps.take_write(40));
        assert!(!caps.take_write(1));
        assert_eq!(caps.write_left(), 0);
        let first = caps.first().expect("reported");
        assert!(
            first.starts_with("the max-write cap of 100 B was reached"),
            "{first}"
        );
        assert_eq!(caps.reached.lock().expect("lock").len(), 1);
    }
}
