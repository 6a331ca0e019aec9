//! The measures, one function each, in the order of the module's list: each
//! runs what it measures and returns its rows.

use std::process::Command;

use super::Bench;
use super::setup::{is_static, make_data};
use super::table::Row;
use super::tools::{hyperfine, peak_rss, run_once_ok};

/// (a) The example pre-stop against the curl one-liner people write today,
/// and against a shell script doing the same three jobs.
pub(super) fn prestop_vs_shell(b: &Bench) -> anyhow::Result<Vec<Row>> {
    // The same three jobs as a shell script: notify, snapshot with a
    // SHA-256 manifest made durable, release the lock if it is ours.
    std::fs::create_dir_all(b.dir.join("shell-snapshots"))?;
    let script = format!(
        "sh -c 'curl -s -X POST -d pre-stop {}/shutdown && tar cf shell-snapshots/state.tar -C app . && (cd app && find . -type f -print0 | xargs -0 sha256sum) > shell-snapshots/state.sum && sync && test \"$(cat locks/leader.lock)\" = bench-pod && rm locks/leader.lock'",
        b.origin
    );
    let t = hyperfine(
        &b.dir,
        b.runs,
        Some(&b.refill_lock),
        &[&b.prestop(), &b.curl(), &script],
    )?;
    Ok(vec![
        Row::ratio(
            "(a) example pre-stop (3 plugins) vs curl one-liner",
            &t[0],
            &t[1],
            "<= 1.0",
            Some(1.0),
        ),
        Row::ratio(
            "(a) example pre-stop vs a script of the same jobs (curl, tar, sync, rm)",
            &t[0],
            &t[2],
            "<= 1.0",
            Some(1.0),
        ),
    ])
}

/// (b) A one-step no-op against `sh -c true`; (c) what each extra step
/// costs.
pub(super) fn start_up(b: &Bench) -> anyhow::Result<Vec<Row>> {
    let noop1 = b.run("noop1.toml", "cache", "");
    let noop10 = b.run("noop10.toml", "cache", "");
    let one = hyperfine(&b.dir, b.many_runs, None, &[&noop1, "sh -c true"])?;
    let ten = hyperfine(&b.dir, b.many_runs, None, &[&noop10, &noop1])?;
    let per_step = (ten[0].median_ms - ten[1].median_ms) / 9.0;
    Ok(vec![
        Row::ratio(
            "(b) one no-op step vs sh -c true",
            &one[0],
            &one[1],
            "<= 2.0",
            Some(2.0),
        ),
        Row::info(
            "(c) each extra no-op step (10 - 1) / 9",
            format!("{per_step:.3} ms"),
            format!("1 step: {}", ten[1]),
        )
        .held_to("<= 0.3 ms", per_step <= 0.3),
    ])
}

/// (d) The pre-stop compiling its plugins against the precompiled one, and
/// `lifehook compile` of the four samples.
pub(super) fn compiling(b: &Bench) -> anyhow::Result<Vec<Row>> {
    // No cache at all: the baseline artifacts a run leaves are removed
    // before the next.
    let uncached = b.run("prestop.toml", "no-cache", "");
    let d = hyperfine(
        &b.dir,
        b.cold_runs,
        Some(&format!("rm -rf no-cache && {}", b.refill_lock)),
        &[&uncached, &b.prestop()],
    )?;
    let compile_all = format!(
        "{} compile -f all-samples.toml --cache cold-cache",
        b.lifehook
    );
    let compile = hyperfine(
        &b.dir,
        b.cold_runs,
        Some("rm -rf cold-cache"),
        &[&compile_all],
    )?;
    let ratio = d[0].median_ms / d[1].median_ms;
    Ok(vec![
        Row::ratio(
            "(d) pre-stop compiling its plugins vs precompiled",
            &d[0],
            &d[1],
            "-",
            None,
        )
        .with_ratio(format!("{ratio:.1}")),
        Row::info(
            "(d) lifehook compile, all 4 sample plugins",
            compile[0].to_string(),
            "-".into(),
        ),
    ])
}

/// (e) Peak RSS of the example pre-stop against the curl one-liner's.
pub(super) fn memory(b: &Bench) -> anyhow::Result<Vec<Row>> {
    let runs = if b.quick { 5 } else { 20 };
    let ours = peak_rss(&b.dir, runs, &b.refill_lock, &b.prestop())?;
    let curl = peak_rss(&b.dir, runs, "true", &b.curl())?;
    Ok(vec![
        Row::info(
            "(e) peak RSS of (a) vs curl one-liner",
            mib(ours),
            mib(curl),
        )
        .with_ratio(format!("{:.2}", ours as f64 / curl as f64))
        .held_to("<= 20 MiB", ours <= 20 * 1024),
    ])
}

/// (f) The stripped sizes of the static binaries; also whether both are
/// static, for the closing line.
pub(super) fn sizes(b: &Bench) -> anyhow::Result<(Vec<Row>, bool)> {
    let full = std::fs::metadata(&b.full)?.len();
    let runtime = std::fs::metadata(&b.runtime_only)?.len();
    let static_ok = is_static(&b.full)? && is_static(&b.runtime_only)?;
    let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1e6);
    let rows = vec![
        Row::info("(f) static binary, full (stripped)", mb(full), "-".into())
            .held_to("<= 25 MB", full <= 25_000_000 && static_ok),
        Row::info(
            "(f) static binary, runtime-only (stripped)",
            mb(runtime),
            "-".into(),
        )
        .held_to("<= 10 MB", runtime <= 10_000_000 && static_ok),
    ];
    Ok((rows, static_ok))
}

/// (g) Saving and restoring 256 MB against tar + sha256sum + sync, and
/// their peak RSS.
pub(super) fn data_heavy(b: &Bench) -> anyhow::Result<Vec<Row>> {
    // Three large files and a thousand small ones.
    make_data(&b.dir.join("data256"), &[80 << 20; 3], 1000, 16 << 10)?;
    let save_native = "sh -c 'tar cf native/snap.tar -C data256 . && (cd data256 && find . -type f -print0 | xargs -0 sha256sum) > native/snap.sum && sync'";
    let save_ours = b.run("save256.toml", "cache", "");
    let save = hyperfine(&b.dir, b.cold_runs, None, &[&save_ours, save_native])?;
    let fresh = "rm -rf restored256 rnative && mkdir restored256 rnative";
    let restore_native = "sh -c 'tar xf native/snap.tar -C rnative && cd rnative && sha256sum --quiet -c ../native/snap.sum && sync'";
    let restore_ours = b.run("restore256.toml", "cache", "--phase post-start");
    let restore = hyperfine(
        &b.dir,
        b.cold_runs,
        Some(fresh),
        &[&restore_ours, restore_native],
    )?;
    let rss_save = peak_rss(&b.dir, 3, "true", &save_ours)?;
    let rss_restore = peak_rss(&b.dir, 3, fresh, &restore_ours)?;
    Ok(vec![
        Row::ratio(
            "(g) save-state 256 MB (3 x 80 MB + 1000 x 16 KiB) vs tar + sha256sum + sync",
            &save[0],
            &save[1],
            "<= 1.5",
            Some(1.5),
        ),
        Row::ratio(
            "(g) restore-state 256 MB vs tar x + sha256sum -c + sync",
            &restore[0],
            &restore[1],
            "<= 1.5",
            Some(1.5),
        ),
        Row::info(
            "(g) peak RSS of save-state / restore-state 256 MB",
            format!("{} / {}", mib(rss_save), mib(rss_restore)),
            "-".into(),
        ),
    ])
}

/// (h) A 1 GiB snapshot saved and restored under the default limits (no
/// limit set on the steps); fails unless both succeed.
pub(super) fn one_gib(b: &Bench) -> anyhow::Result<Vec<Row>> {
    make_data(&b.dir.join("data1g"), &[1 << 30], 0, 0)?;
    let save = run_once_ok(&b.dir, &b.run("save1g.toml", "cache", "--report json"))?;
    let restored = b.dir.join("restored1g");
    let _ = std::fs::remove_dir_all(&restored);
    std::fs::create_dir_all(&restored)?;
    let restore = run_once_ok(
        &b.dir,
        &b.run(
            "restore1g.toml",
            "cache",
            "--report json --phase post-start",
        ),
    )?;
    for dir in ["data1g", "snap1g", "restored1g"] {
        let _ = std::fs::remove_dir_all(b.dir.join(dir));
    }
    Ok(vec![
        Row::info(
            "(h) 1 GiB snapshot, default limits: save / restore",
            format!(
                "{:.2} s / {:.2} s",
                save.as_secs_f64(),
                restore.as_secs_f64()
            ),
            "-".into(),
        )
        .held_to("both ok", true),
    ])
}

/// (i) `lifehook serve`: a trigger of a one-step no-op pre-stop over
/// loopback, next to `/healthz` (each on a connection of its own, as the
/// server closes after one request); then 100 triggers
/// at once, round after round, joining one run each time.
pub(super) fn serve(b: &Bench) -> anyhow::Result<Vec<Row>> {
    use crate::serve_bench::{Server, concurrent_triggers, median_latency};
    let server = Server::start(&b.lifehook, &b.dir, "noop1.toml")?;
    let requests = if b.quick { 200 } else { 2000 };
    let trigger = median_latency(server.addr, "POST", "/pre-stop?force=1", requests)?;
    let healthz = median_latency(server.addr, "GET", "/healthz", requests)?;
    drop(server);
    let server = Server::start(&b.lifehook, &b.dir, "serve-join.toml")?;
    let rounds = if b.quick { 5 } else { 20 };
    let (runs_per_round, rss_round1, rss_last) =
        concurrent_triggers(&server, "/pre-stop?force=1", 100, rounds)?;
    drop(server);
    let growth = rss_last.saturating_sub(rss_round1);
    Ok(vec![
        Row::info(
            "(i) serve: trigger of a one-step no-op pre-stop (loopback, a connection each)",
            format!("{trigger:.3} ms"),
            format!("GET /healthz {healthz:.3} ms"),
        )
        .with_ratio(format!("{:.2}", trigger / healthz))
        .held_to("<= 1 ms", trigger <= 1.0),
        Row::info(
            format!("(i) serve: 100 concurrent triggers x {rounds} rounds"),
            format!("{runs_per_round} run(s) a round; RSS +{growth} KiB"),
            format!("RSS after round 1: {}", mib(rss_round1)),
        )
        .held_to(
            "1 run; growth <= 1 MiB",
            runs_per_round == 1 && growth <= 1024,
        ),
    ])
}

/// (j) First runs without an artifact (the baseline compiler) against runs
/// with the optimised one: what a missing `lifehook compile` costs. Then
/// the baseline artifact a first run leaves against the optimised one: how
/// much slower baseline code runs.
pub(super) fn first_runs(b: &Bench) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for name in ["notify", "save", "lock", "restore", "python", "javascript"] {
        let pipeline = format!("one-{name}.toml");
        let cold = b.run(&pipeline, "empty-cache", "");
        let warm = b.run(&pipeline, "cache", "");
        let prepare = format!("rm -rf empty-cache && {}", b.refill_lock);
        let t = hyperfine(&b.dir, b.cold_runs, Some(&prepare), &[&cold, &warm])?;
        let compile_ms = t[0].median_ms - t[1].median_ms;
        let big = matches!(name, "python" | "javascript");
        let (target, limit_ms) = if big {
            ("<= +3 s", 3000.0)
        } else {
            ("<= +300 ms", 300.0)
        };
        rows.push(
            Row::info(
                format!("(j) first run of {name} without an artifact (baseline compile)"),
                t[0].to_string(),
                format!("precompiled {}", t[1]),
            )
            .with_ratio(format!("+{compile_ms:.0} ms"))
            .held_to(target, compile_ms <= limit_ms),
        );
    }
    for name in ["python", "javascript"] {
        let pipeline = format!("one-{name}.toml");
        crate::run(
            Command::new(&b.full)
                .args(["run", "--force", "-f"])
                .arg(b.dir.join(&pipeline))
                .arg("--cache")
                .arg(b.dir.join("baseline-cache"))
                .env("LIFEHOOK_STATE_DIR", b.dir.join("state")),
        )?;
        let cached = b.run(&pipeline, "baseline-cache", "");
        let optimised = b.run(&pipeline, "cache", "");
        let t = hyperfine(&b.dir, b.runs, None, &[&cached, &optimised])?;
        rows.push(Row::ratio(
            format!("(j) {name} run from the baseline artifact vs the optimised one"),
            &t[0],
            &t[1],
            "-",
            None,
        ));
    }
    Ok(rows)
}

/// (k) The static (musl) build against the glibc build on the same runs,
/// and each against `sh -c true` for one no-op step.
pub(super) fn static_vs_glibc(b: &Bench) -> anyhow::Result<Vec<Row>> {
    let glibc = b.glibc.display().to_string();
    let mut rows = Vec::new();
    for (what, file) in [
        ("one no-op step", "noop1.toml"),
        ("example pre-stop", "prestop.toml"),
        ("Python plugin, precompiled", "one-python.toml"),
        ("JavaScript plugin, precompiled", "one-javascript.toml"),
    ] {
        let ours = b.run(file, "cache", "");
        let theirs = format!("{glibc} run --force -f {file} --cache cache");
        let t = hyperfine(
            &b.dir,
            b.many_runs,
            Some(&b.refill_lock),
            &[&ours, &theirs, "sh -c true"],
        )?;
        rows.push(Row::ratio(
            format!("(k) {what}: static vs glibc build"),
            &t[0],
            &t[1],
            "<= 1.2",
            Some(1.2),
        ));
        if what == "one no-op step" {
            for (build, timing) in [("static", &t[0]), ("glibc", &t[1])] {
                rows.push(Row::ratio(
                    format!("(k) one no-op step, {build} build, vs sh -c true"),
                    timing,
                    &t[2],
                    "<= 2.0",
                    Some(2.0),
                ));
            }
        }
    }
    Ok(rows)
}

/// KiB as MiB, for the table.
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
