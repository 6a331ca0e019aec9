//! The file backend: a lock file whose first line is the owner's token.
//!
//! The file is first renamed to a private name (atomic), so what is read is
//! exactly what is then deleted; if it turns out to be someone else's, it is
//! linked back under the lock name (which fails rather than overwrite a lock
//! another pod took in between).

use std::fs;
use std::io;
use std::path::Path;

use lifehook_sdk::Failure;
use lifehook_sdk::fs::{io_failure, temp_path};

use crate::Released;

pub fn release(path: &Path, token: &str) -> Result<Released, Failure> {
    let private = temp_path(path);
    match fs::rename(path, &private) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::Absent),
        Err(e) => return Err(io_failure("take", path, &e)),
    }
    let content = match fs::read_to_string(&private) {
        Ok(c) => c,
        Err(e) => {
            restore(&private, path);
            return Err(io_failure("read", path, &e));
        }
    };
    let owner = content.lines().next().unwrap_or("").trim();
    if owner == token {
        fs::remove_file(&private).map_err(|e| io_failure("remove", &private, &e))?;
        Ok(Released::Released)
    } else {
        restore(&private, path);
        Ok(Released::HeldByOther(owner.to_owned()))
    }
}

/// Puts another owner's lock back without overwriting a newer lock.
fn restore(private: &Path, path: &Path) {
    if fs::hard_link(private, path).is_ok() || !path.exists() && fs::rename(private, path).is_ok() {
        let _ = fs::remove_file(private);
    } else {
        lifehook_sdk::log::warn(&format!(
            "another lock appeared at {} while checking it; the previous one is kept at {}",
            path.display(),
            private.display()
        ));
    }
}
