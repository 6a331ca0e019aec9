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

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{build_plugins, cargo, ensure_packages, ensure_wasm_target, root, start_receiver};

const MUSL: &str = "x86_64-unknown-linux-musl";

/// One hyperfine result. Ratios use the median: on a shared virtual machine
/// a few runs of a millisecond-long process take several times longer, and
/// they would move the mean more than anything lifehook does.
struct Timing {
    median_ms: f64,
    stddev_ms: f64,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} ms ± {:.2}", self.median_ms, self.stddev_ms)
    }
}

pub fn run(args: &[String]) -> anyhow::Result<u8> {
    if args.first().map(String::as_str) == Some("rss") {
        return rss(&args[1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let runs = if quick { "20" } else { "100" };
    // The millisecond-long measures need many runs to settle.
    let many_runs = if quick { "50" } else { "400" };

    ensure_wasm_target()?;
    ensure_musl_target()?;
    ensure_packages(&[
        ("hyperfine", "hyperfine"),
        ("musl-gcc", "musl-tools"),
        ("curl", "curl"),
    ])?;
    let plugins = build_plugins()?;
    let full = build_static(&root().join("target"), &[])?;
    let runtime_only = build_static(
        &root().join("target/runtime-only"),
        &["--no-default-features"],
    )?;

    // The glibc build, for the static-vs-glibc rows.
    let glibc = build_glibc(&root().join("target/glibc"))?;
    // The Python and JavaScript samples, for the compile and big-plugin rows.
    let tools = crate::install_language_tools()?;
    let python = crate::build_python_plugin(&tools, "python-readiness", "hook-http", "wait_ready")?;
    let javascript = crate::build_js_plugin(&tools, "js-notify", "notify_js")?;

    let bench = root().join("target/bench");
    let _ = std::fs::remove_dir_all(&bench);
    for dir in ["app/wal", "snapshots", "locks"] {
        std::fs::create_dir_all(bench.join(dir))?;
    }
    std::fs::write(bench.join("app/orders.db"), vec![b'o'; 64 * 1024])?;
    std::fs::write(bench.join("app/wal/000001.log"), vec![b'w'; 16 * 1024])?;
    let (origin, _received) = start_receiver()?;
    write_pipelines(&bench, &plugins, &origin)?;
    write_single_plugin_pipelines(&bench, &plugins, &python, &javascript, &origin)?;
    let lifehook = full.display().to_string();
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
                .arg(bench.join(pipeline))
                .arg("--cache")
                .arg(bench.join("cache")),
        )?;
    }

    let refill_lock = format!(
        "printf bench-pod > {}",
        bench.join("locks/leader.lock").display()
    );
    let curl = format!("sh -c 'curl -s -X POST {origin}/'");
    // The same three jobs as a shell script: notify, snapshot with a
    // SHA-256 manifest made durable, release the lock if it is ours.
    std::fs::create_dir_all(bench.join("shell-snapshots"))?;
    let script = format!(
        "sh -c 'curl -s -X POST -d pre-stop {origin}/shutdown && tar cf shell-snapshots/state.tar -C app . && (cd app && find . -type f -print0 | xargs -0 sha256sum) > shell-snapshots/state.sum && sync && test \"$(cat locks/leader.lock)\" = bench-pod && rm locks/leader.lock'"
    );
    let prestop = format!("{lifehook} run --force -f prestop.toml --cache cache");
    let a = hyperfine(
        &bench,
        runs,
        Some(&refill_lock),
        &[&prestop, &curl, &script],
    )?;
    let noop1 = format!("{lifehook} run --force -f noop1.toml --cache cache");
    let noop10 = format!("{lifehook} run --force -f noop10.toml --cache cache");
    let b = hyperfine(&bench, many_runs, None, &[&noop1, "sh -c true"])?;
    let c = hyperfine(&bench, many_runs, None, &[&noop10, &noop1])?;
    let cold_runs = if quick { "3" } else { "10" };
    // No cache at all: the baseline artifacts a run leaves are removed
    // before the next.
    let uncached = format!("{lifehook} run --force -f prestop.toml --cache no-cache");
    let d = hyperfine(
        &bench,
        cold_runs,
        Some(&format!("rm -rf no-cache && {refill_lock}")),
        &[&uncached, &prestop],
    )?;
    let compile_all = format!("{lifehook} compile -f all-samples.toml --cache cold-cache");
    let d_compile = hyperfine(
        &bench,
        cold_runs,
        Some("rm -rf cold-cache"),
        &[&compile_all],
    )?;
    let rss_runs = if quick { 5 } else { 20 };
    let rss_prestop = peak_rss(&bench, rss_runs, &refill_lock, &prestop)?;
    let rss_curl = peak_rss(&bench, rss_runs, "true", &curl)?;
    let size_full = std::fs::metadata(&full)?.len();
    let size_runtime = std::fs::metadata(&runtime_only)?.len();
    let static_ok = is_static(&full)? && is_static(&runtime_only)?;

    // Data-heavy steps: 256 MB in three large files and a thousand small
    // ones, saved and restored, next to tar + sha256sum + sync.
    make_data(&bench.join("data256"), &[80 << 20; 3], 1000, 16 << 10)?;
    let save_native = "sh -c 'tar cf native/snap.tar -C data256 . && (cd data256 && find . -type f -print0 | xargs -0 sha256sum) > native/snap.sum && sync'";
    let save_ours = format!("{lifehook} run --force -f save256.toml --cache cache");
    let data_runs = if quick { "3" } else { "10" };
    let g_save = hyperfine(&bench, data_runs, None, &[&save_ours, save_native])?;
    let fresh = "rm -rf restored256 rnative && mkdir restored256 rnative";
    let restore_native = "sh -c 'tar xf native/snap.tar -C rnative && cd rnative && sha256sum --quiet -c ../native/snap.sum && sync'";
    let restore_ours =
        format!("{lifehook} run --force --phase post-start -f restore256.toml --cache cache");
    let g_restore = hyperfine(
        &bench,
        data_runs,
        Some(fresh),
        &[&restore_ours, restore_native],
    )?;
    let rss_save = peak_rss(&bench, 3, "true", &save_ours)?;
    let rss_restore = peak_rss(&bench, 3, fresh, &restore_ours)?;
    // A 1 GiB snapshot under the default limits (no limit set on the steps).
    make_data(&bench.join("data1g"), &[1 << 30], 0, 0)?;
    let big_save = run_once_ok(
        &bench,
        &format!("{lifehook} run --force --report json -f save1g.toml --cache cache"),
    )?;
    let restored1g = bench.join("restored1g");
    let _ = std::fs::remove_dir_all(&restored1g);
    std::fs::create_dir_all(&restored1g)?;
    let big_restore = run_once_ok(
        &bench,
        &format!(
            "{lifehook} run --force --report json --phase post-start -f restore1g.toml --cache cache"
        ),
    )?;
    for dir in ["data1g", "snap1g", "restored1g"] {
        let _ = std::fs::remove_dir_all(bench.join(dir));
    }

    // The hook server: a trigger of a one-step no-op pre-stop over loopback,
    // next to /healthz on the same connection; then 100 triggers at once,
    // round after round, joining one run each time.
    let server = crate::serve_bench::Server::start(&lifehook, &bench, "noop1.toml")?;
    let requests = if quick { 200 } else { 2000 };
    let trigger =
        crate::serve_bench::median_latency(server.addr, "POST", "/pre-stop?force=1", requests)?;
    let healthz = crate::serve_bench::median_latency(server.addr, "GET", "/healthz", requests)?;
    drop(server);
    let server = crate::serve_bench::Server::start(&lifehook, &bench, "serve-join.toml")?;
    let rounds = if quick { 5 } else { 20 };
    let (runs_per_round, rss_round1, rss_last) =
        crate::serve_bench::concurrent_triggers(&server, "/pre-stop?force=1", 100, rounds)?;
    drop(server);

    // First runs without an artifact (the baseline compiler) vs runs with
    // the optimised one: what a missing `lifehook compile` costs. Then the
    // baseline artifact a first run leaves vs the optimised one: how much
    // slower baseline code runs.
    let singles = ["notify", "save", "lock", "restore", "python", "javascript"];
    let mut first_runs = Vec::new();
    for name in singles {
        let cold = format!("{lifehook} run --force -f one-{name}.toml --cache empty-cache");
        let warm = format!("{lifehook} run --force -f one-{name}.toml --cache cache");
        let prepare = format!("rm -rf empty-cache && {refill_lock}");
        let t = hyperfine(&bench, cold_runs, Some(&prepare), &[&cold, &warm])?;
        first_runs.push((name, t));
    }
    let mut baseline_code = Vec::new();
    for name in ["python", "javascript"] {
        crate::run(
            Command::new(&full)
                .args(["run", "--force", "-f"])
                .arg(bench.join(format!("one-{name}.toml")))
                .arg("--cache")
                .arg(bench.join("baseline-cache"))
                .env("LIFEHOOK_STATE_DIR", bench.join("state")),
        )?;
        let cached = format!("{lifehook} run --force -f one-{name}.toml --cache baseline-cache");
        let optimised = format!("{lifehook} run --force -f one-{name}.toml --cache cache");
        baseline_code.push((name, hyperfine(&bench, runs, None, &[&cached, &optimised])?));
    }

    // The same measures with the static (musl) and the glibc build.
    let glibc = glibc.display().to_string();
    let mut builds = Vec::new();
    for (what, file) in [
        ("one no-op step", "noop1.toml"),
        ("example pre-stop", "prestop.toml"),
        ("Python plugin, precompiled", "one-python.toml"),
        ("JavaScript plugin, precompiled", "one-javascript.toml"),
    ] {
        let ours = format!("{lifehook} run --force -f {file} --cache cache");
        let theirs = format!("{glibc} run --force -f {file} --cache cache");
        let t = hyperfine(
            &bench,
            many_runs,
            Some(&refill_lock),
            &[&ours, &theirs, "sh -c true"],
        )?;
        builds.push((what, t));
    }

    let per_step = (c[0].median_ms - c[1].median_ms) / 9.0;
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let mut rows = Vec::new();
    let mut row =
        |name: &str, value: String, baseline: String, ratio: String, target: &str, ok: bool| {
            rows.push([
                name.to_owned(),
                value,
                baseline,
                ratio,
                target.to_owned(),
                if ok { "ok" } else { "MISSED" }.to_owned(),
            ]);
        };
    let ratio_a = a[0].median_ms / a[1].median_ms;
    row(
        "(a) example pre-stop (3 plugins) vs curl one-liner",
        a[0].to_string(),
        a[1].to_string(),
        format!("{ratio_a:.2}"),
        "<= 1.0",
        ratio_a <= 1.0,
    );
    let ratio_script = a[0].median_ms / a[2].median_ms;
    row(
        "(a) example pre-stop vs a script of the same jobs (curl, tar, sync, rm)",
        a[0].to_string(),
        a[2].to_string(),
        format!("{ratio_script:.2}"),
        "<= 1.0",
        ratio_script <= 1.0,
    );
    let ratio_b = b[0].median_ms / b[1].median_ms;
    row(
        "(b) one no-op step vs sh -c true",
        b[0].to_string(),
        b[1].to_string(),
        format!("{ratio_b:.2}"),
        "<= 2.0",
        ratio_b <= 2.0,
    );
    row(
        "(c) each extra no-op step (10 - 1) / 9",
        format!("{per_step:.3} ms"),
        format!("1 step: {}", c[1]),
        "-".into(),
        "<= 0.3 ms",
        per_step <= 0.3,
    );
    let ratio_d = d[0].median_ms / d[1].median_ms;
    row(
        "(d) pre-stop compiling its plugins vs precompiled",
        d[0].to_string(),
        d[1].to_string(),
        format!("{ratio_d:.1}"),
        "-",
        true,
    );
    row(
        "(d) lifehook compile, all 4 sample plugins",
        d_compile[0].to_string(),
        "-".into(),
        "-".into(),
        "-",
        true,
    );
    let rss_ratio = rss_prestop as f64 / rss_curl as f64;
    row(
        "(e) peak RSS of (a) vs curl one-liner",
        format!("{:.1} MiB", rss_prestop as f64 / 1024.0),
        format!("{:.1} MiB", rss_curl as f64 / 1024.0),
        format!("{rss_ratio:.2}"),
        "<= 20 MiB",
        rss_prestop <= 20 * 1024,
    );
    row(
        "(f) static binary, full (stripped)",
        format!("{:.1} MB", mb(size_full)),
        "-".into(),
        "-".into(),
        "<= 25 MB",
        size_full <= 25_000_000 && static_ok,
    );
    row(
        "(f) static binary, runtime-only (stripped)",
        format!("{:.1} MB", mb(size_runtime)),
        "-".into(),
        "-".into(),
        "<= 10 MB",
        size_runtime <= 10_000_000 && static_ok,
    );

    let ratio_save = g_save[0].median_ms / g_save[1].median_ms;
    row(
        "(g) save-state 256 MB (3 x 80 MB + 1000 x 16 KiB) vs tar + sha256sum + sync",
        g_save[0].to_string(),
        g_save[1].to_string(),
        format!("{ratio_save:.2}"),
        "<= 1.5",
        ratio_save <= 1.5,
    );
    let ratio_restore = g_restore[0].median_ms / g_restore[1].median_ms;
    row(
        "(g) restore-state 256 MB vs tar x + sha256sum -c + sync",
        g_restore[0].to_string(),
        g_restore[1].to_string(),
        format!("{ratio_restore:.2}"),
        "<= 1.5",
        ratio_restore <= 1.5,
    );
    row(
        "(g) peak RSS of save-state / restore-state 256 MB",
        format!(
            "{:.1} / {:.1} MiB",
            rss_save as f64 / 1024.0,
            rss_restore as f64 / 1024.0
        ),
        "-".into(),
        "-".into(),
        "-",
        true,
    );
    row(
        "(h) 1 GiB snapshot, default limits: save / restore",
        format!(
            "{:.2} s / {:.2} s",
            big_save.as_secs_f64(),
            big_restore.as_secs_f64()
        ),
        "-".into(),
        "-".into(),
        "both ok",
        true,
    );
    row(
        "(i) serve: trigger of a one-step no-op pre-stop (loopback, keep-alive)",
        format!("{trigger:.3} ms"),
        format!("GET /healthz {healthz:.3} ms"),
        format!("{:.2}", trigger / healthz),
        "<= 1 ms",
        trigger <= 1.0,
    );
    let growth = rss_last.saturating_sub(rss_round1);
    row(
        &format!("(i) serve: 100 concurrent triggers x {rounds} rounds"),
        format!("{runs_per_round} run(s) a round; RSS +{growth} KiB"),
        format!("RSS after round 1: {:.1} MiB", rss_round1 as f64 / 1024.0),
        "-".into(),
        "1 run; growth <= 1 MiB",
        runs_per_round == 1 && growth <= 1024,
    );

    for (name, t) in &first_runs {
        let compile_ms = t[0].median_ms - t[1].median_ms;
        let big = matches!(*name, "python" | "javascript");
        let target_ms = if big { 3000.0 } else { 300.0 };
        row(
            &format!("(j) first run of {name} without an artifact (baseline compile)"),
            t[0].to_string(),
            format!("precompiled {}", t[1]),
            format!("+{compile_ms:.0} ms"),
            if big { "<= +3 s" } else { "<= +300 ms" },
            compile_ms <= target_ms,
        );
    }
    for (name, t) in &baseline_code {
        let ratio = t[0].median_ms / t[1].median_ms;
        row(
            &format!("(j) {name} run from the baseline artifact vs the optimised one"),
            t[0].to_string(),
            t[1].to_string(),
            format!("{ratio:.2}"),
            "-",
            true,
        );
    }
    for (what, t) in &builds {
        let ratio = t[0].median_ms / t[1].median_ms;
        row(
            &format!("(k) {what}: static vs glibc build"),
            t[0].to_string(),
            t[1].to_string(),
            format!("{ratio:.2}"),
            "<= 1.2",
            ratio <= 1.2,
        );
        if *what == "one no-op step" {
            for (build, timing) in [("static", &t[0]), ("glibc", &t[1])] {
                let r = timing.median_ms / t[2].median_ms;
                row(
                    &format!("(k) one no-op step, {build} build, vs sh -c true"),
                    timing.to_string(),
                    t[2].to_string(),
                    format!("{r:.2}"),
                    "<= 2.0",
                    r <= 2.0,
                );
            }
        }
    }

    println!("\n{}\n", machine()?);
    let headers = [
        "measure (median ± sd)",
        "lifehook",
        "baseline",
        "ratio",
        "target",
        "",
    ];
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&headers.map(str::to_owned));
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
    println!(
        "\nstatic binaries: {} and {} ({})",
        full.display(),
        runtime_only.display(),
        if static_ok {
            "statically linked"
        } else {
            "NOT static"
        }
    );
    Ok(0)
}

fn ensure_musl_target() -> anyhow::Result<()> {
    crate::ensure_target(MUSL)
}

/// Builds the static release binary into `target_dir` (the runtime-only
/// build gets its own, or it would overwrite the full one).
fn build_static(target_dir: &Path, extra: &[&str]) -> anyhow::Result<PathBuf> {
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
fn build_glibc(target_dir: &Path) -> anyhow::Result<PathBuf> {
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

fn is_static(binary: &Path) -> anyhow::Result<bool> {
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

fn write_pipelines(bench: &Path, plugins: &Path, origin: &str) -> anyhow::Result<()> {
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
fn write_single_plugin_pipelines(
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

/// Runs hyperfine on `commands` and returns their timings in order.
///
/// Half the runs are measured in the given order and half in the reverse
/// one, and each command's timing is taken over both halves: on a shared
/// virtual machine, whichever command hyperfine measures first is often
/// faster or slower for reasons of the machine, not of the command.
fn hyperfine(
    dir: &Path,
    runs: &str,
    prepare: Option<&str>,
    commands: &[&str],
) -> anyhow::Result<Vec<Timing>> {
    let total: usize = runs.parse().context("hyperfine runs")?;
    let passes: &[bool] = if commands.len() > 1 && total >= 4 {
        &[false, true]
    } else {
        &[false]
    };
    let per_pass = (total / passes.len()).to_string();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); commands.len()];
    for &reversed in passes {
        let mut order: Vec<usize> = (0..commands.len()).collect();
        if reversed {
            order.reverse();
        }
        let ordered: Vec<&str> = order.iter().map(|&i| commands[i]).collect();
        let measured = hyperfine_pass(dir, &per_pass, prepare, &ordered)?;
        for (&i, t) in order.iter().zip(measured) {
            times[i].extend(t);
        }
    }
    Ok(times.into_iter().map(|t| timing(&t)).collect())
}

/// The median and standard deviation of `times` (seconds), in ms.
fn timing(times: &[f64]) -> Timing {
    let mut sorted: Vec<f64> = times.iter().map(|t| t * 1e3).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len().max(1) as f64;
    let median = match sorted.len() {
        0 => 0.0,
        l if l % 2 == 1 => sorted[l / 2],
        l => (sorted[l / 2 - 1] + sorted[l / 2]) / 2.0,
    };
    let mean = sorted.iter().sum::<f64>() / n;
    let variance = sorted.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / n;
    Timing {
        median_ms: median,
        stddev_ms: variance.sqrt(),
    }
}

/// One hyperfine invocation: each command's run times (seconds), in order.
fn hyperfine_pass(
    dir: &Path,
    runs: &str,
    prepare: Option<&str>,
    commands: &[&str],
) -> anyhow::Result<Vec<Vec<f64>>> {
    let json = dir.join("hyperfine.json");
    // Warm-up runs fill the page cache; the few slow measures need one.
    let warmup = if runs.parse::<u32>().unwrap_or(0) >= 25 {
        "10"
    } else {
        "1"
    };
    let mut cmd = Command::new("hyperfine");
    cmd.args([
        "--warmup",
        warmup,
        "--runs",
        runs,
        // No intermediate shell: hyperfine's correction for one is noisier
        // than a millisecond-long command. Each command line is what a
        // Kubernetes exec hook would run, `sh -c '...'` included.
        "--shell=none",
        "--style",
        "basic",
        "--export-json",
    ])
    .arg(&json)
    .current_dir(dir)
    // Done-markers of the benchmark's own, removed before every run.
    .env("LIFEHOOK_STATE_DIR", dir.join("state"));
    // Every measured run is a first delivery: no done-marker from the run
    // before (replacing one is a file-system operation a real first
    // delivery does not do).
    let prepare = match prepare {
        Some(p) => format!("rm -rf state && {p}"),
        None => "rm -rf state".to_owned(),
    };
    cmd.arg("--prepare").arg(format!("sh -c '{prepare}'"));
    cmd.args(commands);
    let status = cmd.status().context("cannot run hyperfine")?;
    if !status.success() {
        bail!("hyperfine failed on {commands:?}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let results = report["results"]
        .as_array()
        .context("hyperfine JSON has no results")?;
    results
        .iter()
        .map(|r| {
            r["times"]
                .as_array()
                .context("hyperfine JSON has no times")?
                .iter()
                .map(|t| t.as_f64().context("a time"))
                .collect()
        })
        .collect()
}

/// The largest peak RSS (KiB) over `runs` runs of `command` (through `sh`).
fn peak_rss(dir: &Path, runs: usize, prepare: &str, command: &str) -> anyhow::Result<u64> {
    let xtask = std::env::current_exe()?;
    let mut peak = 0;
    for _ in 0..runs {
        // In `dir` (`crate::run` would run it in the repository root).
        let prepared = Command::new("sh")
            .args(["-c", prepare])
            .current_dir(dir)
            .status()?;
        if !prepared.success() {
            bail!("{prepare} failed with {prepared}");
        }
        let out = Command::new(&xtask)
            .args(["bench", "rss", "sh", "-c", &format!("exec {command}")])
            .current_dir(dir)
            .output()?;
        let kib: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| {
                format!(
                    "rss helper printed {:?}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })?;
        peak = peak.max(kib);
    }
    Ok(peak)
}

/// `cargo xtask bench rss CMD...`: runs CMD, prints its peak RSS in KiB. A
/// process of its own, so no other child's peak is mixed in.
fn rss(command: &[String]) -> anyhow::Result<u8> {
    let (program, args) = command.split_first().context("rss needs a command")?;
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete `rusage` into the pointer.
    #[expect(
        unsafe_code,
        reason = "getrusage is the way to read a child's peak RSS"
    )]
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) != 0 {
            bail!("getrusage failed");
        }
        usage.assume_init()
    };
    println!("{}", usage.ru_maxrss);
    Ok(0)
}

/// What the figures were measured on.
fn machine() -> anyhow::Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let hyperfine = Command::new("hyperfine").arg("--version").output()?;
    Ok(format!(
        "measured on: {model}, {cores} cores; {}",
        String::from_utf8_lossy(&hyperfine.stdout).trim()
    ))
}

/// Fills `dir` with one file per entry of `large` (of that size) and
/// `small` files of `small_size`, from a fast generator (not zeros: a file
/// system could store those sparsely).
fn make_data(dir: &Path, large: &[usize], small: usize, small_size: usize) -> anyhow::Result<()> {
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

/// Runs `command` (a `run --report json`) once; fails unless every step
/// ended ok. Returns how long it took.
fn run_once_ok(dir: &Path, command: &str) -> anyhow::Result<std::time::Duration> {
    let started = std::time::Instant::now();
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env("LIFEHOOK_STATE_DIR", dir.join("state"))
        .output()?;
    let took = started.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{command}: no JSON report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let steps = report["steps"]
        .as_array()
        .context("no steps in the report")?;
    if !out.status.success() || steps.iter().any(|s| s["outcome"] != "ok") {
        bail!("{command} did not succeed under the default limits: {report:#}");
    }
    Ok(took)
}
