//! A download buffer with a ceiling, which also counts what arrives (for the
//! pull's minimum-rate watch).

use std::sync::atomic::{AtomicU64, Ordering};

/// A buffer that refuses bytes beyond `limit`, and counts what arrives.
pub(super) struct Bounded<'a> {
    pub(super) bytes: Vec<u8>,
    pub(super) limit: u64,
    /// What the limit is, for the error.
    pub(super) what: &'static str,
    pub(super) received: &'a AtomicU64,
}

impl Bounded<'_> {
    /// Appends `buf`, or refuses it whole once the total would pass the
    /// limit: a registry that sends more than it declared is lying, and
    /// nothing it sent is kept.
    pub(super) fn push(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.received.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if self.bytes.len() as u64 + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes {}; stopped reading",
                self.limit, self.what
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(())
    }
}

// oci-client writes a blob into an `AsyncWrite`: the same bound applies to
// the layer as `push` applies to the manifest. Writing to memory never
// blocks, so every poll is ready at once.
impl tokio::io::AsyncWrite for Bounded<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.push(buf).map(|()| buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
