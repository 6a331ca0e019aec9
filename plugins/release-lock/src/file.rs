//! The file backend: a lock file whose first line is the owner's token.
//!
//! Crash-safe: the runner may be killed at any instant (a SIGKILL at the end
//! of a grace period), so no step may leave someone else's lock anywhere but
//! at its own path, nor a lock half-written. So someone else's lock is never
//! moved: a private second name is linked to the lock (atomic) and the token
//! read through it. Only when it is ours is the lock taken, by renaming it
//! onto the private name (atomic), checked again (another pod may have
//! replaced it in between), and removed. A kill at any point leaves the lock
//! intact, or released if it was ours, plus at most a stray private name,
//! which the next run removes.
//!
//! Two runs at once (a hook delivered twice) may remove each other's private
//! names in that clean-up: a link that vanishes before it is read is made
//! again, and a lock that vanishes after it was taken was ours (it was
//! checked just before), so it counts as released.

use std::fs;
use std::io;
use std::path::Path;

use lifehook_sdk::Failure;
use lifehook_sdk::fs::{io_failure, temp_path};

use crate::Released;

/// How often a private link removed by a concurrent run's clean-up is made
/// again before giving up.
const LINK_ATTEMPTS: usize = 5;

pub fn release(path: &Path, token: &str) -> Result<Released, Failure> {
    remove_stray_links(path);
    let private = temp_path(path);
    let mut attempt = 1;
    let content = loop {
        match fs::hard_link(path, &private) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::Absent),
            Err(e) => return Err(io_failure("link", path, &e)),
        }
        match fs::read_to_string(&private) {
            Ok(content) => break content,
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < LINK_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => {
                let _ = fs::remove_file(&private);
                return Err(io_failure("read", path, &e));
            }
        }
    };
    let outcome = check_and_remove(path, &private, &content, token);
    let _ = fs::remove_file(&private);
    outcome
}

fn check_and_remove(
    path: &Path,
    private: &Path,
    content: &str,
    token: &str,
) -> Result<Released, Failure> {
    let owner = content.lines().next().unwrap_or("").trim();
    if owner != token {
        return Ok(Released::HeldByOther(owner.to_owned()));
    }
    // Ours: take it, atomically, and look again at what was taken (another
    // pod may have replaced a lock it thought free since the read). Not
    // onto the link itself: renaming a file onto another name of the same
    // file does nothing.
    let _ = fs::remove_file(private);
    match fs::rename(path, private) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::Absent),
        Err(e) => return Err(io_failure("take", path, &e)),
    }
    let taken = match fs::read_to_string(private) {
        Ok(taken) => taken,
        // A concurrent run's clean-up removed what was taken: it was ours.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::Released),
        Err(_) => String::new(),
    };
    let owner = taken.lines().next().unwrap_or("").trim();
    if owner == token {
        return Ok(Released::Released);
    }
    let owner = owner.to_owned();
    put_back(private, path);
    Ok(Released::HeldByOther(owner))
}

/// Puts another owner's lock back without overwriting a newer lock.
fn put_back(private: &Path, path: &Path) {
    if fs::hard_link(private, path).is_err()
        && (path.exists() || fs::rename(private, path).is_err())
    {
        lifehook_sdk::warn!(
            "another lock appeared at {} while checking it; the one taken is kept at {}",
            path.display(),
            private.display()
        );
        // Keep it: the caller removes `private` otherwise.
        let kept = private.with_extension("kept");
        let _ = fs::rename(private, kept);
    }
}

/// Removes private links left by a run that was killed: `.<name>.tmp-*`
/// beside the lock.
fn remove_stray_links(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}
