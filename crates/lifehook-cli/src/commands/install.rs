//! `lifehook install DIR`: copies the installation this binary runs from
//! (the binary, the plugins beside it, its cache of precompiled plugins) into
//! DIR, in the lifehook image's layout. It is what an init container of that
//! image runs to put lifehook into a volume an application container shares:
//! the image has no shell and no `cp`.
//!
//! Every file is written whole or not at all (a temporary file renamed over
//! the old one), so a reader never sees half a binary; the binary goes last,
//! so a new binary is never there without its plugins and artifacts. A file
//! already there with the same bytes is left alone, so installing twice
//! writes nothing the second time.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use lifehook_runtime::{WriteOptions, atomic_write};
use lifehook_units::format_size;

use crate::output::print_out;

/// Copy this lifehook (binary, plugins, precompiled cache) into DIR, as laid
/// out in the lifehook image: DIR/lifehook, DIR/plugins/, DIR/cache/.
#[derive(Debug, Args)]
#[command(after_help = "\
The binary is the one running (/proc/self/exe); the plugins are the
plugins/ directory beside it; the cache is $LIFEHOOK_CACHE, else cache/
beside the binary. Files are replaced whole (never half-written), the
binary last; a file with the same bytes is left alone. Artifacts in
DIR/cache that the new cache does not hold (an older install's) are
removed; other files in DIR are not touched.

Examples:
  lifehook install /shared          # in an init container of the lifehook image
  lifehook install --binary-only /usr/local/bin/lifehook-dir")]
pub struct Install {
    /// The directory to install into (created when missing).
    dir: PathBuf,

    /// Copy only the binary.
    #[arg(long, conflicts_with = "plugins_only")]
    binary_only: bool,

    /// Copy only the plugins and the cache.
    #[arg(long)]
    plugins_only: bool,

    /// The cache of precompiled plugins to copy [default: cache/ beside the
    /// binary].
    #[arg(long = "cache", env = "LIFEHOOK_CACHE", value_name = "DIR")]
    cache: Option<PathBuf>,
}

/// One file to put in place.
struct Copy {
    from: PathBuf,
    /// Relative to the install directory.
    to: PathBuf,
    executable: bool,
}

impl Install {
    pub fn execute(self) -> anyhow::Result<i32> {
        let exe = std::env::current_exe().context("cannot find the running binary")?;
        let home = exe
            .parent()
            .context("the running binary has no directory")?
            .to_path_buf();
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        if same_dir(&self.dir, &home) {
            return Err(super::UsageError(format!(
                "{} is where this lifehook runs from; install into another directory",
                self.dir.display()
            ))
            .into());
        }
        let mut notes = Vec::new();
        let mut copies = Vec::new();
        let mut artifacts = None;
        if !self.binary_only {
            let plugins = home.join("plugins");
            match files_under(&plugins)? {
                Some(files) => copies.extend(files.into_iter().map(|(from, rel)| Copy {
                    from,
                    to: Path::new("plugins").join(rel),
                    executable: false,
                })),
                None => notes.push(format!("  no plugins in {}\n", plugins.display())),
            }
            let cache = self.cache.clone().unwrap_or_else(|| home.join("cache"));
            match files_under(&cache)? {
                Some(files) => {
                    artifacts = Some(files.iter().map(|(_, rel)| rel.clone()).collect::<Vec<_>>());
                    copies.extend(files.into_iter().map(|(from, rel)| Copy {
                        from,
                        to: Path::new("cache").join(rel),
                        executable: false,
                    }));
                }
                None => notes.push(format!("  no cache in {}\n", cache.display())),
            }
            if self.plugins_only && copies.is_empty() {
                bail!(
                    "nothing to install: no plugins/ or cache/ beside {} (and no --cache)",
                    exe.display()
                );
            }
        }
        if !self.plugins_only {
            copies.push(Copy {
                from: exe.clone(),
                to: PathBuf::from("lifehook"),
                executable: true,
            });
        }
        let mut out = format!(
            "installing lifehook {} into {}\n",
            super::VERSION,
            self.dir.display()
        );
        out.extend(notes);
        for copy in &copies {
            let (verb, size) = put(&copy.from, &self.dir.join(&copy.to), copy.executable)?;
            out += &format!("  {verb:<9} {}  {}\n", copy.to.display(), format_size(size));
        }
        if let Some(kept) = artifacts {
            for stale in stale_artifacts(&self.dir.join("cache"), &kept)? {
                out += &format!(
                    "  removed   cache/{} (not in this install)\n",
                    stale.display()
                );
            }
        }
        print_out(&out);
        Ok(crate::exit::EXIT_OK)
    }
}

/// Whether `a` and `b` are one directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The regular files under `dir`, each with its path relative to `dir`,
/// sorted; `None` when `dir` does not exist. Temporary files of writes that
/// never finished (`.tmp*`) are left out.
fn files_under(dir: &Path) -> anyhow::Result<Option<Vec<(PathBuf, PathBuf)>>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = dir.join(&rel);
        let entries =
            fs::read_dir(&here).with_context(|| format!("cannot list {}", here.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", here.display()))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(".tmp") {
                continue;
            }
            let path = entry.path();
            // Followed: a plugin may be a link into a store.
            let meta =
                fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
            if meta.is_dir() {
                pending.push(rel.join(&name));
            } else if meta.is_file() {
                found.push((path, rel.join(&name)));
            }
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(Some(found))
}

/// Puts `from`'s bytes at `to`, whole or not at all; says whether it
/// `wrote` the file or left it `unchanged` (the same bytes were there).
fn put(from: &Path, to: &Path, executable: bool) -> anyhow::Result<(&'static str, u64)> {
    let bytes = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    let size = bytes.len() as u64;
    let same = fs::metadata(to).is_ok_and(|m| m.len() == size)
        && fs::read(to).is_ok_and(|there| there == bytes)
        && (!executable || is_executable(to));
    if same {
        return Ok(("unchanged", size));
    }
    let options = WriteOptions {
        readable_by_all: true,
        executable,
        durable: true,
        create_dir: true,
    };
    atomic_write(to, &[&bytes], options).with_context(|| {
        format!(
            "cannot write {} (nothing of it was left half-written)",
            to.display()
        )
    })?;
    Ok(("wrote", size))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 == 0o111)
}

/// Removes the artifacts (`*.cwasm`) in `cache` that are not in `kept`: an
/// older install's, which the new binary cannot load. Returns what it removed.
fn stale_artifacts(cache: &Path, kept: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let Some(there) = files_under(cache)? else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for (path, rel) in there {
        let is_artifact = rel.extension().is_some_and(|e| e == "cwasm");
        if is_artifact && !kept.contains(&rel) {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            removed.push(rel);
        }
    }
    Ok(removed)
}
