//! The snapshot format of save-state and restore-state.
//!
//! A snapshot is a plain tar archive (inspect it with `tar tvf`) named
//! `<name>-<unix milliseconds>.tar`. Its entries are the saved files, paths
//! relative to the saved directory, followed by a last entry,
//! [`MANIFEST_NAME`], listing every file with its size and SHA-256. A
//! snapshot is good only when the manifest is present, parses, and matches
//! every entry exactly: nothing missing, nothing extra, every digest equal.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The name of the manifest entry, always last in the archive.
pub const MANIFEST_NAME: &str = "lifehook-manifest.json";
/// The manifest format version.
pub const VERSION: u32 = 1;

/// The manifest: what a snapshot contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, [`VERSION`].
    pub version: u32,
    /// When it was taken, Unix milliseconds.
    pub created_ms: u64,
    /// The files, in archive order.
    pub files: Vec<FileEntry>,
}

/// One saved file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the saved directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// A snapshot file in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Its path.
    pub path: PathBuf,
    /// Its timestamp, from the name.
    pub created_ms: u64,
}

/// The file name of a snapshot taken at `created_ms`.
pub fn file_name(name: &str, created_ms: u64) -> String {
    format!("{name}-{created_ms:013}.tar")
}

/// The snapshots named `<name>-<ms>.tar` in `dir`, newest first.
pub fn list(dir: &Path, name: &str) -> io::Result<Vec<SnapshotFile>> {
    let prefix = format!("{name}-");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let ms = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tar"))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(created_ms) = ms {
            out.push(SnapshotFile {
                path: entry.path(),
                created_ms,
            });
        }
    }
    out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.path.cmp(&a.path)));
    Ok(out)
}

/// SHA-256 as lower-case hex.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes that precede a file's data in the archive: its tar header,
/// after a GNU long-name entry when the path needs one. The data follows,
/// then [`padding`].
pub fn entry_header(path: &Path, size: u64, mtime_s: u64) -> io::Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime_s);
    header.set_entry_type(tar::EntryType::Regular);
    let mut builder = tar::Builder::new(Vec::new());
    // An empty reader: only the header (and long-name entry) is written.
    builder.append_data(&mut header, path, io::empty())?;
    Ok(builder.get_ref().clone())
}

/// The zeros that pad `size` bytes of data to a whole 512-byte block.
pub fn padding(size: u64) -> &'static [u8] {
    static ZEROS: [u8; 512] = [0; 512];
    let rest = (size % 512) as usize;
    &ZEROS[..(512 - rest) % 512]
}

/// What ends an archive: two zero blocks.
pub const END: [u8; 1024] = [0; 1024];

/// Checks that a relative archive path stays inside the directory it is
/// restored into (no `..`, no absolute path, no empty path).
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Reads a whole snapshot and checks it against its manifest, calling
/// `visit(path, size, data_offset)` for each file entry (use it to stage
/// the file: copy `size` bytes from `data_offset` of the archive); it
/// returns the SHA-256 (hex) of what it copied, and an
/// [`io::ErrorKind::UnexpectedEof`] error when the archive held fewer
/// bytes. Returns the manifest when the snapshot is good, or why it is not.
pub fn read_verified(
    archive: impl Read + Seek,
    mut visit: impl FnMut(&Path, u64, u64) -> io::Result<String>,
) -> Result<Manifest, String> {
    let mut tar = tar::Archive::new(archive);
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    let entries = tar
        .entries_with_seek()
        .map_err(|e| format!("not a readable tar archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("damaged archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("bad entry name: {e}"))?
            .to_string_lossy()
            .replace('\\', "/");
        if manifest.is_some() {
            return Err(format!("entry `{path}` follows the manifest"));
        }
        if path == MANIFEST_NAME {
            let mut text = String::new();
            let mut entry = entry;
            entry
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the manifest: {e}"))?;
            manifest = Some(
                serde_json::from_str(&text)
                    .map_err(|e| format!("the manifest does not parse: {e}"))?,
            );
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(format!("entry `{path}` is not a regular file"));
        }
        let relative = safe_relative(&path)
            .ok_or_else(|| format!("entry `{path}` escapes the target directory"))?;
        let size = entry
            .header()
            .size()
            .map_err(|e| format!("entry `{path}`: {e}"))?;
        let digest = visit(&relative, size, entry.raw_file_position()).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                format!("entry `{path}` is truncated (fewer than its {size} bytes)")
            } else {
                format!("entry `{path}`: {e}")
            }
        })?;
        if seen.insert(path.clone(), (size, digest)).is_some() {
            return Err(format!("entry `{path}` appears twice"));
        }
    }
    let manifest = manifest.ok_or("the manifest is missing (an incomplete snapshot)")?;
    if manifest.version != VERSION {
        return Err(format!(
            "manifest version {} is not supported (expected {VERSION})",
            manifest.version
        ));
    }
    if manifest.files.len() != seen.len() {
        return Err(format!(
            "the manifest lists {} files but the archive holds {}",
            manifest.files.len(),
            seen.len()
        ));
    }
    for f in &manifest.files {
        match seen.get(&f.path) {
            None => {
                return Err(format!(
                    "`{}` is in the manifest but not in the archive",
                    f.path
                ));
            }
            Some((size, _)) if *size != f.size => {
                return Err(format!(
                    "`{}` is {size} bytes, the manifest says {}",
                    f.path, f.size
                ));
            }
            Some((_, digest)) if *digest != f.sha256 => {
                return Err(format!(
                    "`{}` does not match its SHA-256 in the manifest",
                    f.path
                ));
            }
            Some(_) => {}
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn paths_cannot_escape() {
        assert_eq!(safe_relative("a/b.txt"), Some(PathBuf::from("a/b.txt")));
        assert_eq!(safe_relative("./a"), Some(PathBuf::from("a")));
        assert_eq!(safe_relative("../etc/passwd"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative(""), None);
    }

    /// Writes an archive the way save-state does, with std copying the
    /// data the runner copies.
    fn archive(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut manifest = Manifest {
            version: VERSION,
            created_ms: 1_700_000_000_000,
            files: Vec::new(),
        };
        for (path, data) in files {
            out.extend(
                entry_header(Path::new(path), data.len() as u64, 1_700_000_000).expect("header"),
            );
            out.extend(data);
            out.extend(padding(data.len() as u64));
            manifest.files.push(FileEntry {
                path: (*path).to_owned(),
                size: data.len() as u64,
                sha256: hex(&Sha256::digest(data)),
            });
        }
        let json = serde_json::to_vec(&manifest).expect("json");
        out.extend(entry_header(Path::new(MANIFEST_NAME), json.len() as u64, 0).expect("header"));
        out.extend(&json);
        out.extend(padding(json.len() as u64));
        out.extend(END);
        out
    }

    fn copy_and_hash(archive: &[u8], offset: u64, size: u64) -> io::Result<String> {
        let start = offset as usize;
        let data = archive
            .get(start..start + size as usize)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        Ok(hex(&Sha256::digest(data)))
    }

    #[test]
    fn an_archive_written_in_pieces_is_a_tar_that_verifies() {
        let long = format!("{}/deep.bin", "d".repeat(120));
        let files = [
            ("a.txt", b"hello".to_vec()),
            ("empty", Vec::new()),
            ("block", vec![7u8; 512]),
            (long.as_str(), vec![1u8; 1000]),
        ];
        let bytes = archive(&files);
        // Any tar reader lists it, long name included.
        let mut listed = Vec::new();
        let mut tar = tar::Archive::new(bytes.as_slice());
        for entry in tar.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("data");
            listed.push((
                entry.path().expect("path").to_string_lossy().into_owned(),
                data.len(),
            ));
        }
        assert_eq!(listed.len(), 5);
        assert_eq!(listed[3], (long.clone(), 1000));
        let manifest = read_verified(io::Cursor::new(bytes.clone()), |_, size, offset| {
            copy_and_hash(&bytes, offset, size)
        })
        .expect("verifies");
        assert_eq!(manifest.files.len(), 4);
    }

    #[test]
    fn a_changed_or_truncated_archive_does_not_verify() {
        let bytes = archive(&[("a.txt", b"hello".to_vec())]);
        let mut changed = bytes.clone();
        let at = changed
            .windows(5)
            .position(|w| w == b"hello")
            .expect("data");
        changed[at] = b'j';
        let err = read_verified(io::Cursor::new(changed.clone()), |_, size, offset| {
            copy_and_hash(&changed, offset, size)
        })
        .unwrap_err();
        assert!(err.contains("does not match its SHA-256"), "{err}");
        let cut = &bytes[..at + 2];
        let err = read_verified(io::Cursor::new(cut.to_vec()), |_, size, offset| {
            copy_and_hash(cut, offset, size)
        })
        .unwrap_err();
        assert!(
            err.contains("truncated") || err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn names_sort_newest_first() {
        assert_eq!(file_name("state", 42), "state-0000000000042.tar");
    }
}
