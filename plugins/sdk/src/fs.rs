//! Files written so that a reader never sees half of one: write a temporary
//! file next to the target, flush it to disk, then rename it over the
//! target (a rename within a directory is atomic).

use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::Failure;

/// Writes `path` atomically with what `fill` writes. On any error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    write_atomic_via(path, |file, _| fill(file))
}

/// Like [`write_atomic`], and `fill` also gets the temporary file's path
/// (to copy into it with [`crate::files::copy`]).
pub fn write_atomic_via(
    path: &Path,
    fill: impl FnOnce(&mut File, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create_new(&tmp)?;
        fill(&mut file, &tmp)?;
        file.flush()?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A fresh hidden name beside `path`: `.<name>.tmp-<random>`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or("file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{:016x}", random_u64()))
}

/// 64 random bits from the host's secure random source (through the seed
/// std's hash maps draw from `wasi:random`).
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

/// Flushes the directory entry of `path` (best effort: not every file
/// system supports syncing a directory).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Turns an I/O error on `path` into a failure that says what to grant when
/// the sandbox is the likely cause.
pub fn io_failure(action: &str, path: &Path, e: &io::Error) -> Failure {
    failure(
        format!("cannot {action} {}: {e}{}", path.display(), hint(e)),
        e,
    )
}

/// What to check for an I/O error, when the sandbox or the disk is the
/// likely cause.
fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            " (grant the directory with access = \"read-write\" in allow.dirs, and check its owner)"
        }
        io::ErrorKind::NotFound => " (is the directory granted in allow.dirs, and does it exist?)",
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => " (the disk is full)",
        _ if e.raw_os_error() == Some(76) => {
            " (this path is outside every directory the step is granted: add it to allow.dirs)"
        }
        _ => "",
    }
}

/// `message` as a failure that is retryable when `e` may pass (a full disk
/// that a clean-up frees, an interruption, a timeout).
fn failure(message: String, e: &io::Error) -> Failure {
    let retryable = matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::Interrupted | io::ErrorKind::TimedOut
    );
    if retryable {
        Failure::retryable(message)
    } else {
        Failure::fatal(message)
    }
}

/// An I/O error with no path to name (prefer [`IoResultExt::or_fail`],
/// whose message says what was done to which file).
impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        failure(format!("I/O error: {e}{}", hint(&e)), &e)
    }
}

/// `?` on file operations: the I/O error as a [`Failure`] that names the
/// action and the file, like [`io_failure`].
pub trait IoResultExt<T> {
    /// `Err(e)` as `cannot ACTION PATH: e (hint)`.
    fn or_fail(self, action: &str, path: &Path) -> Result<T, Failure>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn or_fail(self, action: &str, path: &Path) -> Result<T, Failure> {
        self.map_err(|e| io_failure(action, path, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_fail_names_the_action_the_file_and_the_grant_to_check() {
        let missing = Path::new("/state/missing.txt");
        let failure = fs::read(missing)
            .or_fail("read", missing)
            .expect_err("missing");
        assert!(
            failure
                .message
                .starts_with("cannot read /state/missing.txt: ")
                && failure
                    .message
                    .contains("is the directory granted in allow.dirs"),
            "{}",
            failure.message
        );
        assert!(!failure.retryable);
    }

    #[test]
    fn a_full_disk_is_retryable_and_a_denial_is_not() {
        let full: Failure = io::Error::from(io::ErrorKind::StorageFull).into();
        assert!(
            full.retryable && full.message.contains("the disk is full"),
            "{}",
            full.message
        );
        let denied: Failure = io::Error::from(io::ErrorKind::PermissionDenied).into();
        assert!(!denied.retryable);
        assert!(denied.message.contains("read-write"), "{}", denied.message);
    }
}
