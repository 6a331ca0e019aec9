//! `lifehook:hook/files`: bulk work on granted files at native speed. A
//! plugin that copies and digests data through its own memory pays about a
//! hundred instructions of fuel a byte and a thread hand-off per 8 KiB; here
//! one call copies a whole byte range in 4 MiB reads and writes and hashes
//! it on the way (SHA-256 with the CPU's SHA extensions where present).
//!
//! Paths are resolved the way the plugin's own opens are: the longest
//! granted guest directory that contains the (lexically normalised) path,
//! then `cap-primitives` opens the rest beneath the granted host directory,
//! so neither `..` nor a symbolic link leads out of it. Outside every grant,
//! or a write under a read-only one, is refused and recorded as a denial
//! with the grant that would allow it.
//!
//! `sync` flushes the file system holding a read-write granted directory
//! (`syncfs`), so a plugin that wrote many files makes them durable at the
//! cost of one flush instead of one per file.
//!
//! Costs are taken up front, before any byte moves: one unit of fuel per
//! byte read (too little traps as out of fuel), and a copy's length from the
//! `max-write` budget. The work runs on a blocking thread that checks,
//! between chunks, whether the call was abandoned (the attempt's deadline
//! dropped it), so a timed-out step stops copying within one chunk.

use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lifehook_manifest::{Access, DirGrant};
use sha2::{Digest as _, Sha256};
use wasmtime::component::Linker;

use crate::bindings::lifehook::hook::files::{Error, ErrorKind};
use crate::sandbox::denials::Denials;
use crate::sandbox::quotas::StepQuotas;

/// The contract version whose `files` interface this implements.
const INTERFACE: &str = concat!("lifehook:hook/files@", crate::contract::version!());
/// Bytes per read and write.
const CHUNK: u64 = 4 << 20;

/// What the `files` functions need from a store's data.
pub(crate) trait FilesView: Send + 'static {
    /// The step's directory grants.
    fn dir_grants(&self) -> &Arc<[DirGrant]>;
    /// Where denials are recorded.
    fn denials(&self) -> &Denials;
    /// The step's caps (`max-write`).
    fn files_caps(&self) -> &StepQuotas;
}

/// The interface's error record: a kind the plugin can branch on, and a
/// message that names the file (the plugin usually just passes it on).
fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error {
        kind,
        message: message.into(),
    }
}

/// Adds `copy` and `sha256` to `linker`.
pub(crate) fn add_to_linker<T: FilesView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    let mut files = linker.instance(INTERFACE)?;
    files.func_wrap_async(
        "copy",
        |mut store,
         (source, offset, length, destination, at): (String, u64, u64, String, u64)| {
            Box::new(async move {
                // Fuel and `max-write` first: a copy too big for the budget
                // fails before it has written anything.
                charge_fuel(&mut store, length)?;
                let state = store.data();
                let from = match resolve(state, &source, false) {
                    Ok(p) => p,
                    Err(e) => return Ok((Err(e),)),
                };
                let to = match resolve(state, &destination, true) {
                    Ok(p) => p,
                    Err(e) => return Ok((Err(e),)),
                };
                if !state.files_caps().take_write(length) {
                    return Ok((Err(error(
                        ErrorKind::NoSpace,
                        format!(
                            "copying {length} bytes into {destination} would pass the step's max-write cap"
                        ),
                    )),));
                }
                let names = (source, destination);
                let result = blocking(move |cancelled| {
                    copy(&from, offset, length, &to, at, cancelled, &names)
                })
                .await;
                Ok((result,))
            })
        },
    )?;
    files.func_wrap_async(
        "sha256",
        |mut store, (path, offset, length): (String, u64, u64)| {
            Box::new(async move {
                charge_fuel(&mut store, length)?;
                let from = match resolve(store.data(), &path, false) {
                    Ok(p) => p,
                    Err(e) => return Ok((Err(e),)),
                };
                let result =
                    blocking(move |cancelled| digest(&from, offset, length, cancelled, &path))
                        .await;
                Ok((result,))
            })
        },
    )?;
    files.func_wrap_async("sync", |store, (path,): (String,)| {
        Box::new(async move {
            let dir = match resolve(store.data(), &path, true) {
                Ok(p) => p,
                Err(e) => return Ok((Err(e),)),
            };
            let result = blocking(move |_| {
                let fail = |e: io::Error| io_error(&e, &path);
                let base = std::fs::File::open(&dir.dir).map_err(fail)?;
                let opened = if dir.relative.as_os_str().is_empty() {
                    base
                } else {
                    // Read-only (not `O_PATH`, which `syncfs` refuses).
                    let mut options = cap_primitives::fs::OpenOptions::new();
                    options.read(true);
                    cap_primitives::fs::open(&base, &dir.relative, &options).map_err(fail)?
                };
                rustix::fs::syncfs(&opened).map_err(|e| fail(e.into()))
            })
            .await;
            Ok((result,))
        })
    })?;
    Ok(())
}

/// Takes `bytes` units of fuel, or traps as out of fuel. A trap (not an
/// error the plugin could ignore and call again) so that `fuel` bounds the
/// bulk work exactly as it bounds the plugin's own.
fn charge_fuel<T>(
    store: &mut wasmtime::StoreContextMut<'_, T>,
    bytes: u64,
) -> wasmtime::Result<()> {
    let left = store.get_fuel()?;
    if left < bytes {
        store.set_fuel(0)?;
        return Err(wasmtime::Trap::OutOfFuel.into());
    }
    store.set_fuel(left - bytes)?;
    Ok(())
}

/// Runs `work` on a blocking thread; it sees `cancelled` turn true when the
/// call is dropped.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce(&AtomicBool) -> Result<R, Error> + Send + 'static,
) -> Result<R, Error> {
    struct Cancel(Arc<AtomicBool>);
    impl Drop for Cancel {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let flag = Arc::new(AtomicBool::new(false));
    let _cancel = Cancel(flag.clone());
    tokio::task::spawn_blocking(move || work(&flag))
        .await
        .unwrap_or_else(|e| {
            Err(error(
                ErrorKind::Other,
                format!("the copy thread failed: {e}"),
            ))
        })
}

/// A path the plugin named, resolved to a granted host directory and the
/// rest of the path beneath it.
#[derive(Debug)]
struct Resolved {
    dir: PathBuf,
    relative: PathBuf,
}

/// Resolves the guest path `path` (for writing when `write`). The longest
/// matching grant wins, as with nested preopens: `/data/out` granted
/// read-write inside `/data` granted read-only makes `/data/out/x`
/// writable.
fn resolve<T: FilesView>(state: &T, path: &str, write: bool) -> Result<Resolved, Error> {
    let guest = normalise(path);
    let grant = state
        .dir_grants()
        .iter()
        .filter_map(|g| {
            guest
                .strip_prefix(normalise(&g.guest))
                .ok()
                .map(|rest| (g, rest))
        })
        .max_by_key(|(g, _)| normalise(&g.guest).components().count());
    let Some((grant, rest)) = grant else {
        let dir = guest
            .parent()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string();
        state.denials().record(
            format!(
                "file access to {} (outside every granted directory)",
                guest.display()
            ),
            format!("allow.dirs = [\"{dir}\"]"),
        );
        return Err(error(
            ErrorKind::NotGranted,
            format!(
                "{} is outside every directory the step is granted: add its directory to allow.dirs",
                guest.display()
            ),
        ));
    };
    if write && grant.access == Access::Read {
        state.denials().record(
            format!(
                "writing {} (its directory is granted read-only)",
                guest.display()
            ),
            format!(
                "allow.dirs = [{{ host = \"{}\", guest = \"{}\", access = \"read-write\" }}]",
                grant.host.display(),
                grant.guest
            ),
        );
        return Err(error(
            ErrorKind::ReadOnly,
            format!(
                "{} is under {}, which is granted read-only: grant it with access = \"read-write\"",
                guest.display(),
                grant.guest
            ),
        ));
    }
    Ok(Resolved {
        dir: grant.host.clone(),
        relative: rest.to_path_buf(),
    })
}

/// `path` made absolute (relative to `/`) with `.` and `..` applied, as the
/// guest's own libc would before a preopen lookup; `..` above `/` stays at
/// `/`, so it can never climb out of the grant's guest prefix.
fn normalise(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Opens `r` beneath its granted directory, never outside it.
fn open(r: &Resolved, write: bool, name: &str) -> Result<std::fs::File, Error> {
    let fail = |e: io::Error| io_error(&e, name);
    let dir = std::fs::File::open(&r.dir).map_err(fail)?;
    let mut options = cap_primitives::fs::OpenOptions::new();
    options.read(!write).write(write);
    cap_primitives::fs::open(&dir, &r.relative, &options).map_err(fail)
}

/// An I/O error as the interface's error, naming the guest's path (never
/// the host's: the plugin should not learn where its grants live).
fn io_error(e: &io::Error, name: &str) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::NoSpace,
        io::ErrorKind::PermissionDenied if e.raw_os_error() == Some(libc_eperm()) => {
            ErrorKind::NotGranted
        }
        _ => ErrorKind::Other,
    };
    error(kind, format!("{name}: {e}"))
}

/// `EPERM`, what `cap-primitives` answers to a path leading out of its base.
const fn libc_eperm() -> i32 {
    1
}

/// Copies `length` bytes of `from` at `offset` into `to` at `at` and
/// returns their SHA-256: positioned reads and writes, so a plugin can fill
/// one file (a tar archive) from many sources without seeking.
fn copy(
    from: &Resolved,
    offset: u64,
    length: u64,
    to: &Resolved,
    at: u64,
    cancelled: &AtomicBool,
    (source, destination): &(String, String),
) -> Result<Vec<u8>, Error> {
    let input = open(from, false, source)?;
    let output = open(to, true, destination)?;
    hash_chunks(&input, offset, length, cancelled, source, |chunk, done| {
        output
            .write_all_at(chunk, at + done)
            .map_err(|e| io_error(&e, destination))
    })
}

/// The SHA-256 of `length` bytes of `from` at `offset`.
fn digest(
    from: &Resolved,
    offset: u64,
    length: u64,
    cancelled: &AtomicBool,
    name: &str,
) -> Result<Vec<u8>, Error> {
    let input = open(from, false, name)?;
    hash_chunks(&input, offset, length, cancelled, name, |_, _| Ok(()))
}

/// Reads `length` bytes of `input` from `offset` in chunks, hands each to
/// `each` with its offset from the start, and returns their SHA-256;
/// stops between chunks once `cancelled` is set.
fn hash_chunks(
    input: &std::fs::File,
    offset: u64,
    length: u64,
    cancelled: &AtomicBool,
    name: &str,
    mut each: impl FnMut(&[u8], u64) -> Result<(), Error>,
) -> Result<Vec<u8>, Error> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; usize::try_from(CHUNK.min(length)).unwrap_or(0)];
    let mut done = 0u64;
    while done < length {
        if cancelled.load(Ordering::Relaxed) {
            return Err(error(
                ErrorKind::Other,
                "stopped: the attempt's deadline passed",
            ));
        }
        let n = usize::try_from(CHUNK.min(length - done)).unwrap_or(buf.len());
        let chunk = &mut buf[..n];
        read_exact_at(input, chunk, offset + done, name, length)?;
        hasher.update(&*chunk);
        each(chunk, done)?;
        done += n as u64;
    }
    Ok(hasher.finalize().to_vec())
}

/// Fills `buf` from `offset`, or says the file is shorter than asked.
fn read_exact_at(
    file: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
    name: &str,
    length: u64,
) -> Result<(), Error> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            error(
                ErrorKind::ShortRead,
                format!("{name} holds fewer than the {length} bytes asked for"),
            )
        } else {
            io_error(&e, name)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_within_the_root() {
        assert_eq!(normalise("/data/./a/../b"), PathBuf::from("/data/b"));
        assert_eq!(normalise("/../../etc/passwd"), PathBuf::from("/etc/passwd"));
        assert_eq!(normalise("relative/x"), PathBuf::from("/relative/x"));
    }

    #[test]
    fn a_symlink_out_of_the_grant_is_not_followed() {
        let dir = tempfile::tempdir().expect("dir");
        let outside = tempfile::tempdir().expect("dir");
        std::fs::write(outside.path().join("secret"), b"s").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link"))
            .expect("symlink");
        let r = Resolved {
            dir: dir.path().to_path_buf(),
            relative: PathBuf::from("link"),
        };
        assert!(open(&r, false, "link").is_err());
        let up = Resolved {
            dir: dir.path().to_path_buf(),
            relative: PathBuf::from("../secret"),
        };
        assert!(open(&up, false, "../secret").is_err());
    }
}
