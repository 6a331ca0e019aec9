//! save-state: snapshots files under a granted source directory into a tar
//! archive in a granted destination directory, atomically: the archive is
//! written under a temporary name, flushed to disk and only then renamed, so
//! a failed or interrupted save never replaces or damages an earlier
//! snapshot. The archive ends with a manifest (paths, sizes, SHA-256) that
//! restore-state verifies.
//!
//! Config keys:
//! - `source` (required): the directory to save (grant it read-only).
//! - `destination` (required): where snapshots go (grant it read-write).
//! - `include`: globs relative to `source` (default: every file, `**/*`);
//!   `*` stays within one directory, `**` crosses them.
//! - `exclude`: globs of files to leave out.
//! - `name`: snapshot file prefix (default `state`).
//! - `keep`: how many snapshots to keep (default 3); older ones are removed
//!   after a successful save.
//! - `upload-url`: also `PUT` the archive there (grant its origin in
//!   `allow.http`); `upload-headers.<name>` adds headers.

use std::fs;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use glob::{MatchOptions, Pattern};
use lifehook_sdk::fs::{IoResultExt as _, write_atomic_via};
use lifehook_sdk::http::{self, Method};
use lifehook_sdk::{Failure, Hook, Invocation, config, files};
use lifehook_snapshot::{
    END, FileEntry, MANIFEST_NAME, Manifest, VERSION, entry_header, file_name, hex, list, padding,
};

struct SaveState;

const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Hook for SaveState {
    fn run(inv: Invocation) -> Result<String, Failure> {
        let source = PathBuf::from(config::require("source")?);
        let destination = PathBuf::from(config::require("destination")?);
        let name = snapshot_name()?;
        let include = patterns("include", &["**/*"])?;
        let exclude = patterns("exclude", &[])?;
        let keep = config::parse::<usize>("keep")?.unwrap_or(3).max(1);

        let started = std::time::SystemTime::now();
        let mut files = Vec::new();
        collect(&source, &source, &include, &exclude, &mut files)?;
        files.sort();

        let mut created_ms = now_ms();
        let mut target = destination.join(file_name(&name, created_ms));
        while target.exists() {
            created_ms += 1;
            target = destination.join(file_name(&name, created_ms));
        }
        let mut manifest = Manifest {
            version: VERSION,
            created_ms,
            files: Vec::with_capacity(files.len()),
        };
        let mut total = 0u64;
        let mtime = created_ms / 1000;
        write_atomic_via(&target, |out, tmp| {
            // Headers are written here; each file's data is copied and
            // hashed by the runner (`files::copy`) straight into place.
            let mut at = 0u64;
            for relative in &files {
                let path = source.join(relative);
                let size = fs::metadata(&path)?.len();
                let header = entry_header(relative, size, mtime)?;
                out.write_all(&header)?;
                at += header.len() as u64;
                let sha256 = files::copy(&path, 0, size, tmp, at).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        io::Error::other(format!(
                            "{} shrank below {size} bytes while being saved",
                            path.display()
                        ))
                    } else {
                        e
                    }
                })?;
                at += size;
                out.seek(SeekFrom::Start(at))?;
                out.write_all(padding(size))?;
                at += padding(size).len() as u64;
                total += size;
                manifest.files.push(FileEntry {
                    path: relative.to_string_lossy().replace('\\', "/"),
                    size,
                    sha256: hex(&sha256),
                });
            }
            let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
            out.write_all(&entry_header(
                Path::new(MANIFEST_NAME),
                json.len() as u64,
                mtime,
            )?)?;
            out.write_all(&json)?;
            out.write_all(padding(json.len() as u64))?;
            out.write_all(&END)?;
            Ok(())
        })
        .or_fail("write snapshot", &target)?;

        remove_leftovers(&destination, &name, started);
        let removed = prune(&destination, &name, keep);
        let mut summary = format!(
            "saved {} files ({} bytes) to {}",
            manifest.files.len(),
            total,
            target.display()
        );
        if removed > 0 {
            summary += &format!(", removed {removed} older");
        }
        if let Some(url) = config::get("upload-url") {
            let body = fs::read(&target).or_fail("read back", &target)?;
            let headers = config::table("upload-headers");
            let response = http::send(Method::PUT, &url, &headers, body, inv.time_left())?;
            let status = response.status.as_u16();
            if !response.status.is_success() {
                let message = format!("{summary}, but uploading it to {url} failed with {status}");
                return Err(if response.status.is_server_error() || status == 429 {
                    Failure::retryable(message)
                } else {
                    Failure::fatal(message)
                });
            }
            summary += &format!(", uploaded to {url} ({status})");
        }
        Ok(summary)
    }
}

fn snapshot_name() -> Result<String, Failure> {
    let name = config::get("name").unwrap_or_else(|| "state".into());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(Failure::fatal(format!(
            "config key `name` = {name:?} must be letters, digits, `.`, `_` or `-`"
        )));
    }
    Ok(name)
}

fn patterns(key: &str, default: &[&str]) -> Result<Vec<Pattern>, Failure> {
    let mut texts = config::list(key);
    if texts.is_empty() {
        texts = default.iter().map(|s| s.to_string()).collect();
    }
    texts
        .iter()
        .map(|t| {
            Pattern::new(t)
                .map_err(|e| Failure::fatal(format!("config key `{key}`: bad glob {t:?}: {e}")))
        })
        .collect()
}

/// Walks `dir`, collecting regular files (relative to `root`) that match.
fn collect(
    root: &Path,
    dir: &Path,
    include: &[Pattern],
    exclude: &[Pattern],
    out: &mut Vec<PathBuf>,
) -> Result<(), Failure> {
    let entries = fs::read_dir(dir).or_fail("list", dir)?;
    for entry in entries {
        let entry = entry.or_fail("list", dir)?;
        let path = entry.path();
        let kind = entry.file_type().or_fail("inspect", &path)?;
        if kind.is_dir() {
            collect(root, &path, include, exclude, out)?;
        } else if kind.is_file() {
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let text = relative.to_string_lossy();
            if include.iter().any(|p| p.matches_with(&text, MATCH))
                && !exclude.iter().any(|p| p.matches_with(&text, MATCH))
            {
                out.push(relative);
            }
        } else {
            lifehook_sdk::debug!("skipping {} (not a regular file)", path.display());
        }
    }
    Ok(())
}

/// Removes temporary files of saves that were interrupted (the runner
/// stopped them at a deadline, or the process was killed): those not written
/// to since this save `started`. A save running at the same time (a hook
/// delivered twice) keeps writing its own, so it is left alone.
fn remove_leftovers(dir: &Path, name: &str, started: std::time::SystemTime) {
    let prefix = format!(".{name}-");
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified < started);
            if file.starts_with(&prefix) && file.contains(".tar.tmp-") && stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Keeps the newest `keep` snapshots; returns how many were removed.
fn prune(dir: &Path, name: &str, keep: usize) -> usize {
    let Ok(snapshots) = list(dir, name) else {
        return 0;
    };
    snapshots
        .iter()
        .skip(keep)
        .filter(|s| fs::remove_file(&s.path).is_ok())
        .count()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

lifehook_sdk::export!(SaveState);
