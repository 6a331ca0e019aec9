//! Makes file denials visible. WASI confines a plugin to its preopened
//! directories, but a path outside all of them fails inside the guest's libc
//! without the host ever hearing of it. So every step also gets an empty,
//! already-deleted directory preopened as `/` (unless a grant is mounted
//! there): any path outside the grants then resolves against it, reaches the
//! host as an `open-at`, fails (there is nothing in it, and nothing can be
//! created in it), and is logged here with the grant that would allow it.
//! Writes under a read-only grant are logged the same way.
//!
//! Only `open-at` is watched (it is how files are read, written and
//! created); other calls (`stat`, `rename`, `unlink`) are denied just the
//! same but not logged.
//!
//! The empty directory is made once per process, opened, and deleted at
//! once; each attempt preopens it again through `/proc/self/fd/N`. So a run
//! leaves nothing behind, even when killed, and costs one `open` per
//! attempt. Where no directory can be created at all (a read-only root file
//! system with no writable `/tmp` or `/dev/shm`), steps run without it: file
//! access outside the grants is still denied, just not logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lifehook_manifest::Access;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p2::DynOutputStream;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorFlags, ErrorCode, HostDescriptor as _, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};

use crate::sandbox::denials::Denials;
use crate::sandbox::quotas::{CappedOutput, QuotaView, open_handles};

/// A store's data that holds an [`FsGate`] beside its WASI context and
/// its caps.
pub(crate) trait FsGateView: QuotaView {
    /// The gate of this attempt.
    fn fs_gate(&mut self) -> &mut FsGate;
}

/// The empty, deleted directory preopened as `/`, as a path that reopens it
/// (`None` when none could be made).
pub(crate) fn empty_dir() -> Option<&'static Path> {
    static EMPTY: OnceLock<Option<(std::fs::File, PathBuf)>> = OnceLock::new();
    EMPTY
        .get_or_init(|| {
            use std::os::fd::AsRawFd as _;
            // tmpfs first: a directory made and removed there touches no
            // journal.
            let bases = [PathBuf::from("/dev/shm"), std::env::temp_dir(), PathBuf::from("/tmp")];
            for base in bases {
                let Ok(dir) = tempfile::Builder::new().prefix("lifehook-empty-").tempdir_in(&base)
                else {
                    continue;
                };
                let dir = dir.keep();
                let handle = std::fs::File::open(&dir);
                // Deleted at once (empty, so a plain rmdir); `handle` keeps
                // it, empty, for good.
                let _ = std::fs::remove_dir(&dir);
                let Ok(handle) = handle else {
                    continue;
                };
                let path = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
                if path.is_dir() {
                    return Some((handle, path));
                }
            }
            tracing::debug!("no writable temporary directory: file access outside the grants will be denied without being logged");
            None
        })
        .as_ref()
        .map(|(_, path)| path.as_path())
}

/// The WASI filesystem version wasmtime-wasi 48 registers; guests importing
/// any other 0.2.x resolve to it.
const FS_VERSION: &str = "0.2.12";

/// What the gate knows about the preopened directories of one attempt.
#[derive(Default)]
pub(crate) struct FsGate {
    /// Grants by guest path: access and host path.
    grants: HashMap<String, (Access, String)>,
    /// Preopened descriptors handed to the guest, by resource rep.
    preopens: HashMap<u32, Preopen>,
    denials: Denials,
}

#[derive(Clone)]
struct Preopen {
    guest: String,
    /// `None` for the empty `/` that catches paths outside every grant.
    access: Option<Access>,
    host: String,
}

impl FsGate {
    pub(crate) fn new(
        grants: impl Iterator<Item = (String, (Access, String))>,
        denials: Denials,
    ) -> FsGate {
        FsGate {
            grants: grants.collect(),
            preopens: HashMap::new(),
            denials,
        }
    }

    /// Remembers which preopen the descriptor `rep` is, as the guest got
    /// it from `get-directories`: later `open-at` calls name their base by
    /// rep only.
    fn register(&mut self, rep: u32, guest: &str) {
        let grant = self.grants.get(guest);
        self.preopens.insert(
            rep,
            Preopen {
                guest: guest.to_owned(),
                access: grant.map(|g| g.0),
                host: grant.map(|g| g.1.clone()).unwrap_or_default(),
            },
        );
    }

    /// Logs a failed `open-at` when the sandbox is why it failed, and
    /// returns the error the guest gets: the closest code to "not granted"
    /// (`access` outside every grant, `read-only` for a write under a
    /// read-only grant) rather than what the sandbox's mechanics produced.
    fn check(&self, base: Option<Preopen>, path: &str, write: bool, code: ErrorCode) -> ErrorCode {
        let refused = matches!(
            code,
            ErrorCode::NoEntry | ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly
        );
        if !refused {
            return code;
        }
        match base {
            // The empty `/`: whatever the path, it is outside every grant.
            Some(Preopen { access: None, .. }) => {
                let full = format!("/{}", path.trim_start_matches('/'));
                let dir = match full.rsplit_once('/') {
                    Some(("", _)) | None => full.clone(),
                    Some((parent, _)) => parent.to_owned(),
                };
                self.denials.record(
                    format!("file access to {full} (outside every granted directory)"),
                    format!("allow.dirs = [\"{dir}\"]"),
                );
                ErrorCode::Access
            }
            Some(Preopen {
                guest,
                access: Some(Access::Read),
                host,
            }) if write && code != ErrorCode::NoEntry => {
                self.denials.record(
                    format!(
                        "writing {}/{path} (its directory is granted read-only)",
                        guest.trim_end_matches('/')
                    ),
                    format!(
                        "allow.dirs = [{{ host = \"{host}\", guest = \"{guest}\", access = \"read-write\" }}]"
                    ),
                );
                ErrorCode::ReadOnly
            }
            // A descriptor opened from a preopen (a subdirectory): its grant
            // is not known here, but a refused write below a grant is only
            // ever a read-only grant.
            None if write && matches!(code, ErrorCode::NotPermitted | ErrorCode::ReadOnly) => {
                self.denials.record(
                    format!("writing `{path}` (its directory is granted read-only)"),
                    "access = \"read-write\" on that allow.dirs entry".to_owned(),
                );
                ErrorCode::ReadOnly
            }
            _ => code,
        }
    }
}

/// Replaces `get-directories` and the descriptor methods that open files
/// or write them in `linker` (already holding wasmtime-wasi's versions) with
/// wrappers: denials are logged with the grant that would allow them,
/// `max-open` bounds what is held open, and `max-write` what is written.
pub(crate) fn add_to_linker<T: FsGateView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    linker
        .instance(&format!("wasi:filesystem/preopens@{FS_VERSION}"))?
        .func_wrap("get-directories", |mut store, (): ()| {
            let state = store.data_mut();
            let dirs = preopens::Host::get_directories(&mut state.filesystem())?;
            for (dir, guest) in &dirs {
                state.fs_gate().register(dir.rep(), guest);
            }
            Ok((dirs,))
        })?;
    let mut types = linker.instance(&format!("wasi:filesystem/types@{FS_VERSION}"))?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if at_open_cap(state, &path) {
                    return Ok((Err(ErrorCode::Quota),));
                }
                let base = state.fs_gate().preopens.get(&fd.rep()).cloned();
                let write = flags.contains(DescriptorFlags::WRITE)
                    || oflags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
                let mut view = state.filesystem();
                let result = match view
                    .open_at(fd, path_flags, path.clone(), oflags, flags)
                    .await
                {
                    Ok(opened) => Ok(opened),
                    Err(e) => Err(types::Host::convert_error_code(&mut view, e)?),
                };
                let result = result.map_err(|code| state.fs_gate().check(base, &path, write, code));
                Ok((result,))
            })
        },
    )?;
    types.func_wrap(
        "[method]descriptor.read-via-stream",
        |mut store, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            if at_open_cap(state, "a read stream") {
                return Ok((Err(ErrorCode::Quota),));
            }
            let mut view = state.filesystem();
            let result = match view.read_via_stream(fd, offset) {
                Ok(stream) => Ok(stream),
                Err(e) => Err(types::Host::convert_error_code(&mut view, e)?),
            };
            if let Ok(stream) = &result {
                state.file_streams().add(stream.rep());
            }
            Ok((result,))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            let opened = {
                let mut view = state.filesystem();
                view.write_via_stream(fd, offset)
            };
            output_stream(state, opened)
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            let state = store.data_mut();
            let opened = {
                let mut view = state.filesystem();
                view.append_via_stream(fd)
            };
            output_stream(state, opened)
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store, (fd, buffer, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if !state.caps().take_write(buffer.len() as u64) {
                    return Ok((Err(ErrorCode::Quota),));
                }
                let mut view = state.filesystem();
                let result = match view.write(fd, buffer, offset).await {
                    Ok(n) => Ok(n),
                    Err(e) => Err(types::Host::convert_error_code(&mut view, e)?),
                };
                Ok((result,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// True, after recording it, when the attempt already holds `max-open`
/// files, directories, streams and sockets.
fn at_open_cap<T: FsGateView>(state: &mut T, what: &str) -> bool {
    let max = state.caps().max_open;
    let mut streams = std::mem::take(state.file_streams());
    let open = open_handles(state.ctx().table, &mut streams);
    *state.file_streams() = streams;
    if open < max {
        return false;
    }
    state
        .caps()
        .reached("max-open", max.to_string(), &format!("opening {what}"));
    true
}

/// A new file output stream, wrapped so that it draws on `max-write` and
/// counted as open.
fn output_stream<T: FsGateView>(
    state: &mut T,
    opened: wasmtime_wasi::p2::FsResult<Resource<DynOutputStream>>,
) -> wasmtime::Result<(Result<Resource<DynOutputStream>, ErrorCode>,)> {
    let stream = match opened {
        Ok(stream) => stream,
        Err(e) => {
            let mut view = state.filesystem();
            return Ok((Err(types::Host::convert_error_code(&mut view, e)?),));
        }
    };
    let caps = state.caps().clone();
    let capped = CappedOutput::wrap(state.ctx().table, stream, caps)?;
    state.file_streams().add(capped.rep());
    Ok((Ok(capped),))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate with `/data` granted read-only and `/out` read-write, its
    /// preopens registered as the guest would see them (rep 1 is the empty
    /// `/`).
    fn gate() -> (FsGate, Denials) {
        let denials = Denials::default();
        let grants = [
            ("/data".to_owned(), (Access::Read, "app/data".to_owned())),
            ("/out".to_owned(), (Access::ReadWrite, "app/out".to_owned())),
        ];
        let mut gate = FsGate::new(grants.into_iter(), denials.clone());
        gate.register(1, "/");
        gate.register(2, "/data");
        gate.register(3, "/out");
        (gate, denials)
    }

    fn preopen(gate: &FsGate, rep: u32) -> Option<Preopen> {
        gate.preopens.get(&rep).cloned()
    }

    #[test]
    fn a_path_outside_every_grant_is_denied_with_the_grant_to_add() {
        let (gate, denials) = gate();
        let code = gate.check(preopen(&gate, 1), "etc/passwd", false, ErrorCode::NoEntry);
        assert!(matches!(code, ErrorCode::Access));
        let logged = denials.snapshot();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(
            logged[0].contains("/etc/passwd (outside every granted directory)")
                && logged[0].contains("allow.dirs = [\"/etc\"]"),
            "{logged:?}"
        );
    }

    #[test]
    fn a_write_under_a_read_only_grant_names_the_read_write_grant() {
        let (gate, denials) = gate();
        let code = gate.check(preopen(&gate, 2), "new.txt", true, ErrorCode::NotPermitted);
        assert!(matches!(code, ErrorCode::ReadOnly));
        let logged = denials.snapshot();
        assert!(
            logged[0].contains("writing /data/new.txt")
                && logged[0].contains(
                    "{ host = \"app/data\", guest = \"/data\", access = \"read-write\" }"
                ),
            "{logged:?}"
        );
    }

    #[test]
    fn what_the_sandbox_did_not_cause_passes_through_unlogged() {
        let (gate, denials) = gate();
        // A missing file in a granted directory is the plugin's business.
        let missing = gate.check(preopen(&gate, 2), "gone.txt", false, ErrorCode::NoEntry);
        assert!(matches!(missing, ErrorCode::NoEntry));
        // So is any error a read-write grant gives.
        let denied = gate.check(preopen(&gate, 3), "x", true, ErrorCode::Access);
        assert!(matches!(denied, ErrorCode::Access));
        // And errors that are not refusals, anywhere.
        let busy = gate.check(preopen(&gate, 1), "x", true, ErrorCode::Busy);
        assert!(matches!(busy, ErrorCode::Busy));
        assert!(denials.snapshot().is_empty(), "{:?}", denials.snapshot());
    }

    #[test]
    fn the_empty_root_is_an_empty_directory_nothing_can_be_made_in() {
        let Some(dir) = empty_dir() else {
            // No writable temporary directory on this machine: the gate
            // then runs without it, which the module documents.
            return;
        };
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(dir).expect("list").count(), 0);
        assert!(std::fs::write(dir.join("x"), b"x").is_err());
        // The same directory every time: it is made once per process.
        assert_eq!(empty_dir(), Some(dir));
    }
}
