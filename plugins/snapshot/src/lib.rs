//! The snapshot format of save-state and restore-state.
//!
//! A snapshot is a plain tar archive (inspect it with `tar tvf`) named
//! `<name>-<unix milliseconds>.tar`. Its entries are the saved files, paths
//! relative to the saved directory, followed by a last entry,
//! [`MANIFEST_NAME`], listing every file with its size and SHA-256. A
//! snapshot is good only when the manifest is present, parses, and matches
//! every entry exactly: nothing missing, nothing extra, every digest equal.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read and their SHA-256 (hex).
    pub fn finish(self) -> (u64, String) {
        (self.count, hex(&self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

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
/// `visit(path, size, reader)` for each file entry as it streams by (use it
/// to stage the file; it must read the reader to the end). Returns the
/// manifest when the snapshot is good, or why it is not.
pub fn read_verified(
    archive: impl Read,
    mut visit: impl FnMut(&Path, u64, &mut dyn Read) -> io::Result<()>,
) -> Result<Manifest, String> {
    let mut tar = tar::Archive::new(archive);
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    let entries = tar
        .entries()
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
        let mut reader = HashingReader::new(entry);
        visit(&relative, size, &mut reader).map_err(|e| format!("entry `{path}`: {e}"))?;
        // Drain whatever `visit` left, so the digest covers the whole entry.
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| format!("damaged entry `{path}`: {e}"))?;
        let (count, digest) = reader.finish();
        if count != size {
            return Err(format!(
                "entry `{path}` is truncated ({count} of {size} bytes)"
            ));
        }
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

    #[test]
    fn paths_cannot_escape() {
        assert_eq!(safe_relative("a/b.txt"), Some(PathBuf::from("a/b.txt")));
        assert_eq!(safe_relative("./a"), Some(PathBuf::from("a")));
        assert_eq!(safe_relative("../etc/passwd"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative(""), None);
    }

    #[test]
    fn names_sort_newest_first() {
        assert_eq!(file_name("state", 42), "state-0000000000042.tar");
    }
}
