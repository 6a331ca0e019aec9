//! How the benchmarks measure: hyperfine for times, `getrusage` of a child
//! for peak memory, a single timed run for the long ones.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// One hyperfine result. Ratios use the median: on a shared virtual machine
/// a few runs of a millisecond-long process take several times longer, and
/// they would move the mean more than anything lifehook does.
pub(super) struct Timing {
    pub(super) median_ms: f64,
    pub(super) stddev_ms: f64,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} ms ± {:.2}", self.median_ms, self.stddev_ms)
    }
}

/// Runs hyperfine on `commands` and returns their timings in order.
///
/// Half the runs are measured in the given order and half in the reverse
/// one, and each command's timing is taken over both halves: on a shared
/// virtual machine, whichever command hyperfine measures first is often
/// faster or slower for reasons of the machine, not of the command.
pub(super) fn hyperfine(
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
pub(super) fn peak_rss(
    dir: &Path,
    runs: usize,
    prepare: &str,
    command: &str,
) -> anyhow::Result<u64> {
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
pub(super) fn rss(command: &[String]) -> anyhow::Result<u8> {
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
pub(super) fn machine() -> anyhow::Result<String> {
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

/// Runs `command` (a `run --report json`) once; fails unless every step
/// ended ok. Returns how long it took.
pub(super) fn run_once_ok(dir: &Path, command: &str) -> anyhow::Result<std::time::Duration> {
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
