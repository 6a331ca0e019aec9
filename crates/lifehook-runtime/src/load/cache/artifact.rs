//! The artifact file: machine code wasmtime wrote, followed by a 56-byte
//! trailer (an xxh3-128 checksum of the code, the xxh3-128 of the plugin it
//! was compiled from, the architecture the code is for, and a magic word).
//! The trailer is checked before wasmtime sees the file, so a truncated,
//! corrupted or foreign file, one copied from another plugin, or one for
//! another architecture, is refused with a reason instead of being handed
//! to `deserialize`, which trusts what it is given.

use std::fs;
use std::path::Path;

use wasmtime::component::Component;
use xxhash_rust::xxh3::xxh3_128;

#[cfg(feature = "compiler")]
use crate::atomic::{WriteOptions, atomic_write};
use crate::engine::Host;

pub(super) const MAGIC: &[u8; 8] = b"LHCWASM2";
/// The magic word of the first format, whose trailer had no architecture.
const MAGIC_V1: &[u8; 8] = b"LHCWASM1";
/// The architecture's name (`x86_64`, `aarch64`), zero-padded.
const ARCH_FIELD: usize = 16;
pub(super) const TRAILER: usize = 16 + 16 + ARCH_FIELD + MAGIC.len();
/// The file extension of artifacts.
pub const EXTENSION: &str = "cwasm";

/// Writes an artifact of `code` whole or not at all, readable by all (an
/// image built as root is run as another user) and durable.
#[cfg(feature = "compiler")]
pub(super) fn write_artifact(
    artifact: &Path,
    code: &[u8],
    plugin_hash: u128,
    arch: &str,
) -> std::io::Result<()> {
    let options = WriteOptions {
        readable_by_all: true,
        durable: true,
        create_dir: true,
        ..WriteOptions::default()
    };
    atomic_write(
        artifact,
        &[code, &trailer(code, plugin_hash, arch)],
        options,
    )
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
    let code = verify_trailer(&data, plugin_hash, &rt.arch_name())?;
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

/// The trailer of an artifact holding `code` for `arch`, compiled from a
/// plugin whose contents hash to `plugin_hash`.
#[cfg(any(feature = "compiler", test))]
pub(super) fn trailer(code: &[u8], plugin_hash: u128, arch: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRAILER);
    t.extend_from_slice(&xxh3_128(code).to_le_bytes());
    t.extend_from_slice(&plugin_hash.to_le_bytes());
    let mut field = [0u8; ARCH_FIELD];
    let name = &arch.as_bytes()[..arch.len().min(ARCH_FIELD)];
    field[..name.len()].copy_from_slice(name);
    t.extend_from_slice(&field);
    t.extend_from_slice(MAGIC);
    t
}

/// Returns the code part of an artifact whose trailer checks out, for code
/// that is to run on `arch`.
pub(super) fn verify_trailer<'a>(
    data: &'a [u8],
    plugin_hash: u128,
    arch: &str,
) -> Result<&'a [u8], String> {
    if data.ends_with(MAGIC_V1) {
        return Err("it was written by an older lifehook; run `lifehook compile` again".into());
    }
    if data.len() < TRAILER || !data.ends_with(MAGIC) {
        return Err("it is truncated or was not written by `lifehook compile`".into());
    }
    let (code, trailer) = data.split_at(data.len() - TRAILER);
    let field = &trailer[32..32 + ARCH_FIELD];
    let made_for = String::from_utf8_lossy(field.split(|&b| b == 0).next().unwrap_or(field));
    if made_for != arch {
        return Err(format!(
            "it was compiled for {made_for} and this lifehook runs on {arch} (`lifehook compile --target {arch}` makes one for here)"
        ));
    }
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
        good.extend_from_slice(&trailer(&code, 7, "x86_64"));
        assert_eq!(verify_trailer(&good, 7, "x86_64"), Ok(&code[..]));

        let truncated = &good[..good.len() - 3];
        let refused = |data: &[u8], hash| verify_trailer(data, hash, "x86_64").unwrap_err();
        assert!(refused(truncated, 7).contains("truncated"));

        let mut corrupted = good.clone();
        corrupted[0] ^= 1;
        assert!(refused(&corrupted, 7).contains("checksum"));

        assert!(refused(&good, 8).contains("another plugin"));
        assert!(verify_trailer(b"short", 7, "x86_64").is_err());
    }

    /// An artifact says what it was compiled for: one for another
    /// architecture is refused by name before wasmtime sees it.
    #[test]
    fn trailer_names_the_architecture_it_was_made_for() {
        let code = b"machine code".to_vec();
        let mut arm = code.clone();
        arm.extend_from_slice(&trailer(&code, 7, "aarch64"));
        assert_eq!(verify_trailer(&arm, 7, "aarch64"), Ok(&code[..]));
        let why = verify_trailer(&arm, 7, "x86_64").unwrap_err();
        assert!(
            why.contains("compiled for aarch64 and this lifehook runs on x86_64")
                && why.contains("--target x86_64"),
            "{why}"
        );
    }

    /// The first format (no architecture in the trailer) is named as such.
    #[test]
    fn an_artifact_of_the_first_format_is_refused_as_older() {
        let mut old = b"machine code".to_vec();
        old.extend_from_slice(&[0u8; 32]);
        old.extend_from_slice(MAGIC_V1);
        let why = verify_trailer(&old, 7, "x86_64").unwrap_err();
        assert!(why.contains("older lifehook"), "{why}");
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
        let baseline = Host::for_precompiling(None).expect("compiler");
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
