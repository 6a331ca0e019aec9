//! Bulk work on granted files, done by the runner at native speed
//! (`lifehook:hook/files`, contract 0.1.2): copy a byte range from one file
//! into another while hashing it, or hash a range. Use these for data of
//! any size; moving it through the plugin's own memory costs about a
//! hundred units of fuel a byte, these one.
//!
//! Paths are the plugin's own, inside the step's `allow.dirs`; the runner
//! opens them under the same rules as the plugin's own opens.

use std::io;
use std::path::Path;

use crate::bindings::lifehook::hook::files::{self, ErrorKind};

/// Copies `length` bytes of `source` from `offset` into the existing file
/// `destination` at `at` (extending it as needed, never truncating it);
/// returns their SHA-256. A source shorter than asked for is an
/// [`io::ErrorKind::UnexpectedEof`] error.
pub fn copy(
    source: &Path,
    offset: u64,
    length: u64,
    destination: &Path,
    at: u64,
) -> io::Result<[u8; 32]> {
    files::copy(&text(source), offset, length, &text(destination), at)
        .map_err(to_io)
        .and_then(digest)
}

/// The SHA-256 of `length` bytes of `path` from `offset`.
pub fn sha256(path: &Path, offset: u64, length: u64) -> io::Result<[u8; 32]> {
    files::sha256(&text(path), offset, length)
        .map_err(to_io)
        .and_then(digest)
}

/// Makes everything written so far to the file system holding the
/// directory `dir` durable, in one flush (`syncfs`): call it once after
/// writing many files instead of `sync_all` on each. `dir` must be under a
/// read-write grant.
pub fn sync(dir: &Path) -> io::Result<()> {
    files::sync(&text(dir)).map_err(to_io)
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn digest(bytes: Vec<u8>) -> io::Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| io::Error::other("the runner returned a digest that is not 32 bytes"))
}

fn to_io(e: files::Error) -> io::Error {
    let kind = match e.kind {
        ErrorKind::NotFound => io::ErrorKind::NotFound,
        ErrorKind::ReadOnly => io::ErrorKind::ReadOnlyFilesystem,
        ErrorKind::NoSpace => io::ErrorKind::StorageFull,
        ErrorKind::ShortRead => io::ErrorKind::UnexpectedEof,
        ErrorKind::NotGranted | ErrorKind::Other => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.message)
}
