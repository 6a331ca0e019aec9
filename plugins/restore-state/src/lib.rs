//! restore-state: the postStart twin of save-state. Finds the newest
//! snapshot whose every file matches its manifest and restores it; a corrupt
//! snapshot is reported and skipped, never half-restored.
//!
//! Restoring stages every file of the snapshot in a hidden directory inside
//! the destination while verifying it; only when the whole snapshot checks
//! out are the staged files renamed into place (renames within one file
//! system are atomic). Files in the destination that the snapshot does not
//! contain are left alone.
//!
//! Config keys:
//! - `source` (required): where save-state put its snapshots (grant it
//!   read-only).
//! - `destination` (required): the directory to restore into (grant it
//!   read-write).
//! - `name`: snapshot file prefix (default `state`).
//! - `required`: when `true`, having no snapshot at all is a failure
//!   (default `false`: a first start has nothing to restore).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use lifehook_sdk::fs::{IoResultExt as _, io_failure, random_u64};
use lifehook_sdk::{Failure, Hook, Invocation, config, files};
use lifehook_snapshot::{Manifest, SnapshotFile, hex, list, read_verified, safe_relative};

struct RestoreState;

impl Hook for RestoreState {
    fn run(_inv: Invocation) -> Result<String, Failure> {
        let source = PathBuf::from(config::require("source")?);
        let destination = PathBuf::from(config::require("destination")?);
        let name = config::get("name").unwrap_or_else(|| "state".into());
        let required = config::flag("required", false)?;

        let snapshots = match list(&source, &name) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => {
                return Ok(format!(
                    "nothing to restore: {} does not exist",
                    source.display()
                ));
            }
            Err(e) => return Err(io_failure("list snapshots in", &source, &e)),
        };
        let mut corrupt = Vec::new();
        for snapshot in &snapshots {
            match restore(snapshot, &destination) {
                Ok(manifest) => {
                    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
                    let mut summary = format!(
                        "restored {} files ({bytes} bytes) from {}",
                        manifest.files.len(),
                        snapshot.path.display()
                    );
                    if !corrupt.is_empty() {
                        summary += &format!(
                            "; skipped {} corrupt newer snapshot(s): {}",
                            corrupt.len(),
                            corrupt.join("; ")
                        );
                    }
                    return Ok(summary);
                }
                Err(Problem::Corrupt(why)) => {
                    lifehook_sdk::warn!(
                        "snapshot {} is corrupt, skipping it: {why}",
                        snapshot.path.display()
                    );
                    corrupt.push(format!("{}: {why}", file_label(&snapshot.path)));
                }
                Err(Problem::Io(failure)) => return Err(failure),
            }
        }
        if snapshots.is_empty() {
            let message = format!("no snapshot named {name}-*.tar in {}", source.display());
            return if required {
                Err(Failure::fatal(message))
            } else {
                Ok(format!("nothing to restore: {message}"))
            };
        }
        Err(Failure::fatal(format!(
            "every snapshot is corrupt, nothing was restored: {}",
            corrupt.join("; ")
        )))
    }
}

enum Problem {
    /// The snapshot is bad; try an older one.
    Corrupt(String),
    /// The destination cannot be written; stop.
    Io(Failure),
}

impl From<Failure> for Problem {
    fn from(failure: Failure) -> Problem {
        Problem::Io(failure)
    }
}

/// Verifies `snapshot` while staging its files, then moves them into place.
fn restore(snapshot: &SnapshotFile, destination: &Path) -> Result<Manifest, Problem> {
    let staging = destination.join(format!(".lifehook-restore-{:016x}", random_u64()));
    fs::create_dir(&staging).or_fail("create staging directory", &staging)?;
    let result = stage_and_move(snapshot, destination, &staging);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn stage_and_move(
    snapshot: &SnapshotFile,
    destination: &Path,
    staging: &Path,
) -> Result<Manifest, Problem> {
    let archive =
        File::open(&snapshot.path).map_err(|e| Problem::Corrupt(format!("cannot open: {e}")))?;
    let mut write_error: Option<Failure> = None;
    let verified = read_verified(archive, |relative, size, offset| {
        // The runner copies and hashes the entry's bytes straight from the
        // archive into the staged file (`files::copy`).
        let target = staging.join(relative);
        let staged = (|| -> io::Result<String> {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            File::create(&target)?;
            let sha256 = files::copy(&snapshot.path, offset, size, &target, 0)?;
            Ok(hex(&sha256))
        })();
        if let Err(e) = &staged
            && e.kind() != io::ErrorKind::UnexpectedEof
        {
            write_error.get_or_insert_with(|| io_failure("stage", &target, e));
        }
        staged
    });
    if let Some(failure) = write_error {
        return Err(Problem::Io(failure));
    }
    let manifest = verified.map_err(Problem::Corrupt)?;
    // Every staged file durable in one flush, before any is moved into place.
    files::sync(staging).or_fail("flush", staging)?;
    for f in &manifest.files {
        let Some(relative) = safe_relative(&f.path) else {
            return Err(Problem::Corrupt(format!(
                "`{}` escapes the target directory",
                f.path
            )));
        };
        let target = destination.join(&relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).or_fail("create", parent)?;
        }
        fs::rename(staging.join(&relative), &target).or_fail("move into place", &target)?;
    }
    Ok(manifest)
}

fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

lifehook_sdk::export!(RestoreState);
