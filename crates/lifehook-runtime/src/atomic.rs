//! Whole-or-absent file writes, the one way lifehook replaces a file it
//! owns (artifacts, pulled plugins, the lock file, done-markers): the bytes
//! go to a temporary file in the same directory, which is renamed over the
//! target. A process killed half-way leaves the old file (or none) and a
//! `.tmp*` file, never a truncated target, and a reader that has the old
//! file open or mapped keeps its old contents.

use std::fs;
use std::io::Write as _;
use std::path::Path;

/// How [`atomic_write`] writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Mode 0644 whatever the umask: files an image builds as root are read
    /// by the container's own user.
    pub readable_by_all: bool,
    /// Mode 0755 whatever the umask (a binary); takes precedence over
    /// `readable_by_all`.
    pub executable: bool,
    /// `fsync` before the rename, so the file survives a crash of the node.
    /// Needed for what outlives the container (artifacts, pulled plugins);
    /// not for what only has to outlive a process.
    pub durable: bool,
    /// Create the parent directory first when it is missing.
    pub create_dir: bool,
}

/// Replaces `path` with `parts`, concatenated, as [`WriteOptions`] say.
pub fn atomic_write(path: &Path, parts: &[&[u8]], options: WriteOptions) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if options.create_dir {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    for part in parts {
        tmp.write_all(part)?;
    }
    let mode = match (options.executable, options.readable_by_all) {
        (true, _) => Some(0o755),
        (false, true) => Some(0o644),
        (false, false) => None,
    };
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
    }
    if options.durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/file");
        let options = WriteOptions {
            readable_by_all: true,
            durable: true,
            create_dir: true,
            ..WriteOptions::default()
        };
        atomic_write(&path, &[b"old"], options).expect("first write");
        // A reader holding the old file keeps the old contents.
        let held = fs::File::open(&path).expect("open");
        atomic_write(&path, &[b"new ", b"parts"], options).expect("second write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "new parts");
        let mut old = String::new();
        std::io::Read::read_to_string(&mut &held, &mut old).expect("read held");
        assert_eq!(old, "old");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["file"]);
    }

    #[test]
    fn an_executable_is_written_runnable_by_all_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bin");
        let options = WriteOptions {
            executable: true,
            ..WriteOptions::default()
        };
        atomic_write(&path, &[b"#!"], options).expect("write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn a_missing_directory_is_an_error_unless_asked_to_create_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing/file");
        assert!(atomic_write(&path, &[b"x"], WriteOptions::default()).is_err());
        assert!(!path.exists());
    }
}
