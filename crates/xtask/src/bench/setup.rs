//! What the benchmarks run on: the release binaries (static full and
//! runtime-only, glibc) and the pipelines and data they run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cargo;

const MUSL: &str = "x86_64-unknown-linux-musl";

pub(super) fn ensure_musl_target() -> anyhow::Result<()> {
    crate::ensure_target(MUSL)
}

/// Builds the static release binary into `target_dir` (the runtime-only
/// build gets its own, or it would overwrite the full one).
pub(super) fn build_static(target_dir: &Path, extra: &[&str]) -> anyhow::Result<PathBuf> {
    crate::run(
        cargo()
            .args([
                "build",
                "--release",
                "--target",
                MUSL,
                "--package",
                "lifehook-cli",
                "--bin",
                "lifehook",
            ])
            .args(extra)
            .env("CARGO_TARGET_DIR", target_dir)
            // ring and zstd-free wasmtime still build a little C.
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc"),
    )?;
    Ok(target_dir.join(MUSL).join("release/lifehook"))
}

/// Builds the glibc release binary into `target_dir`, as the README says
/// to (see there for its flags).
pub(super) fn build_glibc(target_dir: &Path) -> anyhow::Result<PathBuf> {
    let triple = "x86_64-unknown-linux-gnu";
    crate::run(
        cargo()
            .args(["build", "--release", "--target", triple])
            .args(["--package", "lifehook-cli", "--bin", "lifehook"])
            .env("CARGO_TARGET_DIR", target_dir)
            .env("RUSTFLAGS", GLIBC_RUSTFLAGS),
    )?;
    Ok(target_dir.join(triple).join("release/lifehook"))
}

/// What the glibc release build is built with (the README's instructions):
/// a plain executable rather than PIE, as the static build, which spares
/// the dynamic loader ~60,000 relocations at every start (4.0 -> 3.0 ms
/// for a one-step run here). With `--target`, build scripts and proc
/// macros stay position-independent.
const GLIBC_RUSTFLAGS: &str = "-C relocation-model=static";

pub(super) fn is_static(binary: &Path) -> anyhow::Result<bool> {
    let out = Command::new("file").arg(binary).output();
    Ok(match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            text.contains("static") && !text.contains("dynamically linked")
        }
        // No `file` here: musl binaries built this way are static-pie.
        Err(_) => true,
    })
}

/// The pipelines of the measures that run the sample plugins together.
pub(super) fn write_pipelines(bench: &Path, plugins: &Path, origin: &str) -> anyhow::Result<()> {
    let plugin = |name: &str| plugins.join(format!("{name}.wasm")).display().to_string();
    let notify = format!(
        "[[pre-stop.steps]]\nname = \"notify-shutdown\"\nplugin = \"{}\"\nallow.http = [\"{origin}\"]\nconfig = {{ url = \"{origin}/shutdown\", body = '{{\"pod\":\"bench\",\"phase\":\"{{{{phase}}}}\"}}' }}\n\n",
        plugin("notify_shutdown")
    );
    let save = format!(
        "[[pre-stop.steps]]\nname = \"save-state\"\nplugin = \"{}\"\nallow.dirs = [{{ host = \"app\", guest = \"/app\" }}, {{ host = \"snapshots\", guest = \"/snapshots\", access = \"read-write\" }}]\nconfig = {{ source = \"/app\", destination = \"/snapshots\", keep = 2 }}\n\n",
        plugin("save_state")
    );
    let lock = format!(
        "[[pre-stop.steps]]\nname = \"release-lock\"\nplugin = \"{}\"\nallow.dirs = [{{ host = \"locks\", guest = \"/locks\", access = \"read-write\" }}]\nconfig = {{ backend = \"file\", path = \"/locks/leader.lock\", token = \"bench-pod\" }}\n\n",
        plugin("release_lock")
    );
    std::fs::write(bench.join("prestop.toml"), format!("{notify}{save}{lock}"))?;
    let restore = format!(
        "[[pre-stop.steps]]\nname = \"restore-state\"\nplugin = \"{}\"\n\n",
        plugin("restore_state")
    );
    std::fs::write(
        bench.join("all-samples.toml"),
        format!("{notify}{save}{lock}{restore}"),
    )?;
    let noop = |n: usize| {
        (0..n)
            .map(|i| {
                format!(
                    "[[pre-stop.steps]]\nname = \"noop-{i}\"\nplugin = \"{}\"\n\n",
                    plugin("fixture_noop")
                )
            })
            .collect::<String>()
    };
    std::fs::write(bench.join("noop1.toml"), noop(1))?;
    std::fs::write(bench.join("noop10.toml"), noop(10))?;
    // All 100 triggers of a round arrive while this runs, and join it.
    std::fs::write(
        bench.join("serve-join.toml"),
        format!(
            "{}[[pre-stop.steps]]\nname = \"hold\"\nsleep = \"300ms\"\n",
            noop(1)
        ),
    )?;
    let save = |data: &str, snap: &str| {
        format!(
            "[[pre-stop.steps]]\nname = \"save-state\"\nplugin = \"{}\"\nallow.dirs = [{{ host = \"{data}\", guest = \"/data\" }}, {{ host = \"{snap}\", guest = \"/snapshots\", access = \"read-write\" }}]\nconfig = {{ source = \"/data\", destination = \"/snapshots\", keep = 1 }}\n",
            plugin("save_state")
        )
    };
    let restore = |snap: &str, into: &str| {
        format!(
            "[[post-start.steps]]\nname = \"restore-state\"\nplugin = \"{}\"\nallow.dirs = [{{ host = \"{snap}\", guest = \"/snapshots\" }}, {{ host = \"{into}\", guest = \"/restored\", access = \"read-write\" }}]\nconfig = {{ source = \"/snapshots\", destination = \"/restored\", required = true }}\n",
            plugin("restore_state")
        )
    };
    for dir in ["snap256", "snap1g", "native"] {
        std::fs::create_dir_all(bench.join(dir))?;
    }
    std::fs::write(bench.join("save256.toml"), save("data256", "snap256"))?;
    std::fs::write(
        bench.join("restore256.toml"),
        restore("snap256", "restored256"),
    )?;
    std::fs::write(bench.join("save1g.toml"), save("data1g", "snap1g"))?;
    std::fs::write(
        bench.join("restore1g.toml"),
        restore("snap1g", "restored1g"),
    )?;
    Ok(())
}

/// One pipeline per sample plugin (`one-<name>.toml`), for the
/// first-compile and static-vs-glibc rows.
pub(super) fn write_single_plugin_pipelines(
    bench: &Path,
    plugins: &Path,
    python: &Path,
    javascript: &Path,
    origin: &str,
) -> anyhow::Result<()> {
    let plugin = |name: &str| plugins.join(format!("{name}.wasm")).display().to_string();
    let pipelines = [
        (
            "notify",
            format!(
                "[[pre-stop.steps]]\nname = \"notify-shutdown\"\nplugin = \"{}\"\nallow.http = [\"{origin}\"]\nconfig = {{ url = \"{origin}/shutdown\" }}\n",
                plugin("notify_shutdown")
            ),
        ),
        (
            "save",
            format!(
                "[[pre-stop.steps]]\nname = \"save-state\"\nplugin = \"{}\"\nallow.dirs = [{{ host = \"app\", guest = \"/app\" }}, {{ host = \"snapshots\", guest = \"/snapshots\", access = \"read-write\" }}]\nconfig = {{ source = \"/app\", destination = \"/snapshots\", keep = 2 }}\n",
                plugin("save_state")
            ),
        ),
        (
            "lock",
            format!(
                "[[pre-stop.steps]]\nname = \"release-lock\"\nplugin = \"{}\"\nallow.dirs = [{{ host = \"locks\", guest = \"/locks\", access = \"read-write\" }}]\nconfig = {{ backend = \"file\", path = \"/locks/leader.lock\", token = \"bench-pod\" }}\n",
                plugin("release_lock")
            ),
        ),
        (
            "restore",
            format!(
                "[[pre-stop.steps]]\nname = \"restore-state\"\nplugin = \"{}\"\nallow.dirs = [{{ host = \"snapshots\", guest = \"/snapshots\" }}, {{ host = \"restored\", guest = \"/restored\", access = \"read-write\" }}]\nconfig = {{ source = \"/snapshots\", destination = \"/restored\" }}\n",
                plugin("restore_state")
            ),
        ),
        (
            "python",
            format!(
                "[[pre-stop.steps]]\nname = \"wait-ready\"\nplugin = \"{}\"\nmemory = \"256MiB\"\nallow.http = [\"{origin}\"]\nconfig = {{ url = \"{origin}/ready\", interval = 100 }}\n",
                python.display()
            ),
        ),
        (
            "javascript",
            format!(
                "[[pre-stop.steps]]\nname = \"notify-js\"\nplugin = \"{}\"\nmemory = \"256MiB\"\nallow.http = [\"{origin}\"]\nconfig = {{ url = \"{origin}/shutdown\" }}\n",
                javascript.display()
            ),
        ),
    ];
    std::fs::create_dir_all(bench.join("restored"))?;
    for (name, text) in pipelines {
        std::fs::write(bench.join(format!("one-{name}.toml")), text)?;
    }
    Ok(())
}

/// Fills `dir` with one file per entry of `large` (of that size) and
/// `small` files of `small_size`, from a fast generator (not zeros: a file
/// system could store those sparsely).
pub(super) fn make_data(
    dir: &Path,
    large: &[usize],
    small: usize,
    small_size: usize,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("small"))?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut fill = |len: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.truncate(len);
        out
    };
    for (i, size) in large.iter().enumerate() {
        std::fs::write(dir.join(format!("large-{i}.bin")), fill(*size))?;
    }
    for i in 0..small {
        std::fs::write(
            dir.join("small").join(format!("{i:04}.dat")),
            fill(small_size),
        )?;
    }
    Ok(())
}
