//! `cargo xtask bench`: whole-process benchmarks of the static release
//! binary, each figure printed next to a baseline measured in the same run.
//!
//! Timings come from hyperfine (Debian's package; installed when missing),
//! peak memory from `getrusage` of each child (see [`rss`]), sizes from the
//! stripped binaries. The measures, and the targets they are held to:
//!
//! - (a) the example pre-stop pipeline of the three sample plugins,
//!   precompiled, doing real work on loopback (an HTTP receiver, a file lock,
//!   a local snapshot directory) vs `sh -c 'curl -s -X POST http://...'`,
//!   which only notifies: ratio <= 1.0; and vs a shell script doing the
//!   same three jobs (curl, tar + sha256sum + sync, test + rm): <= 1.0;
//! - (b) a one-step no-op pipeline vs `sh -c true`: ratio <= 2.0;
//! - (c) the cost of each extra no-op step, (10 steps - 1 step) / 9:
//!   <= 0.3 ms;
//! - (d) the pre-stop pipeline compiling its plugins (no cache) vs the same
//!   with the cache, and `lifehook compile` of all four sample plugins;
//! - (e) peak RSS of (a), next to the curl one-liner's: <= 20 MiB;
//! - (f) stripped sizes of the static full and runtime-only binaries:
//!   <= 25 MB and <= 10 MB;
//! - (g) save-state and restore-state of 256 MB (three 80 MB files and a
//!   thousand of 16 KiB) vs `tar` + `sha256sum` + `sync` (and `tar x` +
//!   `sha256sum -c` + `sync`): ratio <= 1.5; their peak RSS;
//! - (h) a 1 GiB snapshot saved and restored under the default limits;
//! - (i) `lifehook serve`: a trigger of a one-step no-op pre-stop over
//!   loopback (median <= 1 ms, next to `/healthz`), and 100 concurrent
//!   triggers joining one run, round after round, without the server's
//!   memory growing (<= 1 MiB);
//! - (j) each sample plugin's first run without an artifact (compiled by
//!   the baseline compiler) vs with one: <= +300 ms for the Rust samples,
//!   <= +3 s for Python and JavaScript; and their code from the baseline
//!   artifact vs the optimised one;
//! - (k) the static build vs the glibc build on the same runs (<= 1.2),
//!   and each vs `sh -c true` for one no-op step (<= 2.0).

mod measures;
mod setup;
mod table;
mod tools;

use std::path::PathBuf;
use std::process::Command;

use crate::{build_plugins, ensure_packages, ensure_wasm_target, root, start_receiver};
use table::Row;

/// What every measure needs: the binaries, the benchmark directory and the
/// run counts of this mode (`--quick` or not).
struct Bench {
    /// The benchmark directory, where every command runs.
    dir: PathBuf,
    /// The static full binary, as a command-line word.
    lifehook: String,
    full: PathBuf,
    runtime_only: PathBuf,
    glibc: PathBuf,
    /// The loopback HTTP receiver the notify steps post to.
    origin: String,
    /// A shell command that puts back the lock the pre-stop releases.
    refill_lock: String,
    quick: bool,
    /// Runs of the measures of tens of milliseconds.
    runs: &'static str,
    /// Runs of the millisecond-long measures, which need many to settle.
    many_runs: &'static str,
    /// Runs of the measures that compile or move hundreds of megabytes.
    cold_runs: &'static str,
}

impl Bench {
    /// `lifehook run --force -f PIPELINE --cache CACHE` and `extra`.
    fn run(&self, pipeline: &str, cache: &str, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("{extra} ")
        };
        format!(
            "{} run --force {extra}-f {pipeline} --cache {cache}",
            self.lifehook
        )
    }

    /// The example pre-stop of the three sample plugins, precompiled.
    fn prestop(&self) -> String {
        self.run("prestop.toml", "cache", "")
    }

    /// What people write today: a curl one-liner that only notifies.
    fn curl(&self) -> String {
        format!("sh -c 'curl -s -X POST {}/'", self.origin)
    }
}

pub fn run(args: &[String]) -> anyhow::Result<u8> {
    if args.first().map(String::as_str) == Some("rss") {
        return tools::rss(&args[1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let bench = prepare(quick)?;
    let mut rows: Vec<Row> = Vec::new();
    rows.extend(measures::prestop_vs_shell(&bench)?);
    rows.extend(measures::start_up(&bench)?);
    rows.extend(measures::compiling(&bench)?);
    rows.extend(measures::memory(&bench)?);
    let (f_rows, static_ok) = measures::sizes(&bench)?;
    rows.extend(f_rows);
    rows.extend(measures::data_heavy(&bench)?);
    rows.extend(measures::one_gib(&bench)?);
    rows.extend(measures::serve(&bench)?);
    rows.extend(measures::first_runs(&bench)?);
    rows.extend(measures::static_vs_glibc(&bench)?);

    println!("\n{}\n", tools::machine()?);
    table::print(&rows);
    println!(
        "\nstatic binaries: {} and {} ({})",
        bench.full.display(),
        bench.runtime_only.display(),
        if static_ok {
            "statically linked"
        } else {
            "NOT static"
        }
    );
    Ok(0)
}

/// Builds what the measures run (the binaries, the plugins, the Python and
/// JavaScript samples), writes the pipelines and precompiles them.
fn prepare(quick: bool) -> anyhow::Result<Bench> {
    ensure_wasm_target()?;
    setup::ensure_musl_target()?;
    ensure_packages(&[
        ("hyperfine", "hyperfine"),
        ("musl-gcc", "musl-tools"),
        ("curl", "curl"),
    ])?;
    let plugins = build_plugins()?;
    let full = setup::build_static(&root().join("target"), &[])?;
    let runtime_only = setup::build_static(
        &root().join("target/runtime-only"),
        &["--no-default-features"],
    )?;
    // The glibc build, for the static-vs-glibc rows.
    let glibc = setup::build_glibc(&root().join("target/glibc"))?;
    // The Python and JavaScript samples, for the compile and big-plugin rows.
    let tools = crate::install_language_tools()?;
    let python = crate::build_python_plugin(&tools, "python-readiness", "hook-http", "wait_ready")?;
    let javascript = crate::build_js_plugin(&tools, "js-notify", "notify_js")?;

    let dir = root().join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["app/wal", "snapshots", "locks"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(dir.join("app/orders.db"), vec![b'o'; 64 * 1024])?;
    std::fs::write(dir.join("app/wal/000001.log"), vec![b'w'; 16 * 1024])?;
    // The receiver's thread serves until the process ends.
    let (origin, _) = start_receiver()?;
    setup::write_pipelines(&dir, &plugins, &origin)?;
    setup::write_single_plugin_pipelines(&dir, &plugins, &python, &javascript, &origin)?;
    for pipeline in [
        "prestop.toml",
        "noop1.toml",
        "noop10.toml",
        "all-samples.toml",
        "one-python.toml",
        "one-javascript.toml",
    ] {
        // `run` starts commands in the repository root: absolute paths.
        crate::run(
            Command::new(&full)
                .args(["compile", "-f"])
                .arg(dir.join(pipeline))
                .arg("--cache")
                .arg(dir.join("cache")),
        )?;
    }
    let refill_lock = format!(
        "printf bench-pod > {}",
        dir.join("locks/leader.lock").display()
    );
    Ok(Bench {
        lifehook: full.display().to_string(),
        dir,
        full,
        runtime_only,
        glibc,
        origin,
        refill_lock,
        quick,
        runs: if quick { "20" } else { "100" },
        many_runs: if quick { "50" } else { "400" },
        cold_runs: if quick { "3" } else { "10" },
    })
}
