//! The artifact file: machine code wasmtime wrote, followed by a 40-byte
//! trailer (an xxh3-128 checksum of the code, the xxh3-128 of the plugin it
//! was compiled from, and a magic word). The trailer is checked before
//! wasmtime sees the file, so a truncated, corrupted or foreign file, or
//! one copied from another plugin, is refused with a reason instead of
//! being handed to `deserialize`, which trusts what it is given.

use std::fs;
use std::path::Path;

use wasmtime::component::Component;
use xxhash_rust::xxh3::xxh3_128;

#[cfg(feature = "compiler")]
use crate::atomic::{WriteOptions, atomic_write};
use crate::engine::Host;

pub(super) const MAGIC: &[u8; 8] = b"LHCWASM1";
pub(super) const TRAILER: usize = 16 + 16 + MAGIC.len();
/// The file extension of artifacts.
pub const EXTENSION: &str = "cwasm";

/// Writes an artifact of `code` whole or not at all, readable by all (an
/// image built as root is run as another user) and durable.
#[cfg(feature = "compiler")]
pub(super) fn write_artifact(
    artifact: &Path,
    code: &[u8],
    plugin_hash: u128,
) -> std::io::Result<()> {
    let options = WriteOptions {
        readable_by_all: true,
        durable: true,
        create_dir: true,
    };
    atomic_write(artifact, &[code, &trailer(code, plugin_hash)], options)
}

/// Checks an artifact and loads it: `Ok(None)` when there is none, `Err`
/// with the reason when there is one that cannot be used.
///
/// The checks read the file through a memory map (no copy), then wasmtime
/// maps it again to run it: code pages and the plugin's initial memory
/// images come straight from the page cache, copy-on-write. That is what
/// makes a 38 MB artifact of a Python plugin load in milliseconds.
pub(super) fn load_artifact(
    rt: &Host,
    path: &Path,
    plugin_hash: u128,
) -> Result<Option<Component>, String> {
    match fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    }
    let data = map_file(path).map_err(|e| format!("cannot read it: {e}"))?;
    let code = verify_trailer(&data, plugin_hash)?;
    if wasmtime::Engine::detect_precompiled(code) != Some(wasmtime::Precompiled::Component) {
        return Err("it is not a precompiled component".into());
    }
    drop(data);
    deserialize_file(rt, path).map(Some)
}

/// A plugin file's bytes, read, not mapped: a user may rewrite a plugin in
/// place (`cp new.wasm plugin.wasm`) while `serve` or a long run is loading
/// it, and a mapped file that shrinks kills the process with SIGBUS at the
/// next touch of a page past its end. An 18 MB Python plugin reads in a few
/// milliseconds; only lifehook's own artifacts are mapped.
pub(crate) fn read_plugin(path: &Path) -> std::io::Result<Vec<u8>> {
    fs::read(path)
}

/// Maps an artifact read-only. Artifacts are lifehook's own files, replaced
/// only by rename (a new file), never rewritten in place, so a mapping never
/// changes under it. Plugins are read instead ([`read_plugin`]).
#[expect(
    unsafe_code,
    reason = "memory-mapping a file is unsafe if another process truncates it while mapped; artifacts are replaced by rename, not rewritten"
)]
pub(super) fn map_file(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = fs::File::open(path)?;
    // SAFETY: see the `reason` above.
    unsafe { memmap2::Mmap::map(&file) }
}

/// The trailer of an artifact holding `code` compiled from a plugin whose
/// contents hash to `plugin_hash`.
#[cfg(any(feature = "compiler", test))]
pub(super) fn trailer(code: &[u8], plugin_hash: u128) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRAILER);
    t.extend_from_slice(&xxh3_128(code).to_le_bytes());
    t.extend_from_slice(&plugin_hash.to_le_bytes());
    t.extend_from_slice(MAGIC);
    t
}

/// Returns the code part of an artifact whose trailer checks out.
pub(super) fn verify_trailer(data: &[u8], plugin_hash: u128) -> Result<&[u8], String> {
    if data.len() < TRAILER || !data.ends_with(MAGIC) {
        return Err("it is truncated or was not written by `lifehook compile`".into());
    }
    let (code, trailer) = data.split_at(data.len() - TRAILER);
    let word = |at: usize| {
        let mut w = [0u8; 16];
        w.copy_from_slice(&trailer[at..at + 16]);
        u128::from_le_bytes(w)
    };
    if word(0) != xxh3_128(code) {
        return Err("its checksum does not match (a partial or corrupted write)".into());
    }
    if word(16) != plugin_hash {
        return Err("it was compiled from another plugin".into());
    }
    Ok(code)
}

#[expect(
    unsafe_code,
    reason = "deserializing machine code is unsafe in wasmtime; the file passed here carries the checksum `lifehook compile` wrote, and wasmtime checks its version and the engine configuration"
)]
fn deserialize_file(rt: &Host, path: &Path) -> Result<Component, String> {
    // SAFETY: see the `reason` above. wasmtime ignores the trailer after
    // its ELF image.
    unsafe { Component::deserialize_file(&rt.engine, path) }.map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_rejects_truncation_corruption_and_other_plugins() {
        let code = b"machine code".to_vec();
        let mut good = code.clone();
        good.extend_from_slice(&trailer(&code, 7));
        assert_eq!(verify_trailer(&good, 7), Ok(&code[..]));

        let truncated = &good[..good.len() - 3];
        assert!(
            verify_trailer(truncated, 7)
                .unwrap_err()
                .contains("truncated")
        );

        let mut corrupted = good.clone();
        corrupted[0] ^= 1;
        assert!(
            verify_trailer(&corrupted, 7)
                .unwrap_err()
                .contains("checksum")
        );

        assert!(
            verify_trailer(&good, 8)
                .unwrap_err()
                .contains("another plugin")
        );
        assert!(verify_trailer(b"short", 7).is_err());
    }

    /// An image is built on one machine and run on nodes with other CPUs:
    /// what `lifehook compile` makes must load on the oldest x86-64.
    #[test]
    #[expect(
        unsafe_code,
        reason = "deserializing artifacts this test just compiled"
    )]
    fn baseline_artifacts_load_on_a_cpu_without_optional_features() {
        let bytes = fs::read(lifehook_test_artifacts::FIXTURE_HOOK).expect("fixture plugin");
        let baseline = Host::for_precompiling().expect("compiler");
        let portable = baseline
            .engine
            .precompile_component(&bytes)
            .expect("precompile");

        // An engine that believes the CPU has no optional feature at all (its
        // own compiler told not to use any either, or it would fail its own
        // check).
        let mut config = crate::engine::engine_config();
        config
            .target(&target_lexicon::Triple::host().to_string())
            .expect("target");
        // SAFETY: the detector only ever answers "absent".
        unsafe {
            config.detect_host_feature(|_| Some(false));
        }
        let oldest_cpu = wasmtime::Engine::new(&config).expect("engine");
        // SAFETY: bytes produced by `precompile_component` just above.
        let loaded = unsafe { Component::deserialize(&oldest_cpu, &portable) };
        assert!(loaded.is_ok(), "{:?}", loaded.err());

        // Code compiled for this machine's own CPU is refused there, which is
        // what makes `run` fall back to compiling instead of crashing.
        let native = wasmtime::Engine::new(&crate::engine::engine_config())
            .expect("engine")
            .precompile_component(&bytes)
            .expect("precompile");
        // SAFETY: as above.
        let refused = unsafe { Component::deserialize(&oldest_cpu, &native) };
        let message = format!(
            "{:#}",
            refused.expect_err("native code must not load on the oldest CPU")
        );
        assert!(
            message.contains("incompatible with native host"),
            "{message}"
        );
    }
}
