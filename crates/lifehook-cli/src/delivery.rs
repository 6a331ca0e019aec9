//! At-least-once delivery: the kubelet may deliver a hook twice, and may
//! deliver it again while the first delivery still runs. A phase that
//! completes successfully leaves a done-marker in the state directory, keyed
//! by the pipeline (path and contents), the phase and the container
//! incarnation; a later delivery finds it, shows the first run's report
//! marked as a repeat, and runs nothing. A concurrent delivery waits for the
//! first one's lock, then finds its marker (or, when the first failed, runs).
//!
//! The incarnation is PID 1's start time (from `/proc/1/stat`) and the boot
//! id: a restarted container has a new PID 1, so its hooks run again even
//! when the state directory is a volume that outlived the old one.
//!
//! Where the state directory cannot be written (a read-only root file
//! system with no writable temp dir), lifehook warns once and runs without
//! markers: running twice is better than not running.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lifehook_manifest::{PhaseName, Pipeline};
use serde::{Deserialize, Serialize};

/// The environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "LIFEHOOK_STATE_DIR";

/// Where markers are kept: `[state] dir`, `$LIFEHOOK_STATE_DIR`, or, in a
/// container, a `lifehook` directory under the system temp dir. `None` on
/// a workstation with neither set: there is no container incarnation to
/// remember a delivery for, and a developer running a pipeline twice wants
/// it run twice.
pub fn state_dir(pipeline: &Pipeline) -> Option<PathBuf> {
    pipeline.state_dir.clone().or_else(default_state_dir)
}

/// The state directory of a pipeline without `[state] dir`.
pub fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os(STATE_DIR_ENV)
        .map(PathBuf::from)
        .or_else(|| in_a_container().then(|| std::env::temp_dir().join("lifehook")))
}

/// True in a Kubernetes pod (the kubelet sets `KUBERNETES_SERVICE_HOST` in
/// every container) or a docker or podman container.
pub fn in_a_container() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || Path::new("/.dockerenv").exists()
        || Path::new("/run/.containerenv").exists()
}

/// This container's incarnation: PID 1's start time and the boot id.
/// `None` when either cannot be read.
pub fn incarnation() -> Option<String> {
    let stat = fs::read_to_string("/proc/1/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 22, start time: the 20th field after the name.
    let start = after_name.split_whitespace().nth(19)?;
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(format!("{}:{start}", boot.trim()))
}

/// What a done-marker holds: the first run's report, in both forms. The
/// record of a phase's last run (`.last`, kept for `lifehook status`,
/// failed runs included) holds the same.
#[derive(Debug, Serialize, Deserialize)]
pub struct Marker {
    /// When the phase completed, in milliseconds since the Unix epoch.
    pub completed_at_ms: u64,
    /// The container incarnation it completed in.
    pub incarnation: String,
    /// The text report of that run.
    pub text: String,
    /// The JSON report of that run.
    pub report: serde_json::Value,
    /// The phase.
    #[serde(default)]
    pub phase: String,
    /// The pipeline file, as an absolute path.
    #[serde(default)]
    pub pipeline: PathBuf,
    /// Who ran it: `run`, `exec` or `serve`.
    #[serde(default)]
    pub by: String,
}

impl Marker {
    /// The report again, as a repeat: a headline saying so, then the first
    /// run's report.
    pub fn repeat_text(&self, phase: PhaseName) -> String {
        format!(
            "lifehook {phase}: ok (repeat: an earlier delivery completed this phase {} ago in this container; nothing was run, --force runs it again)\n{}",
            lifehook_units::format_duration(self.age()),
            self.text
        )
    }

    /// The JSON report again, with `"repeat": true`.
    pub fn repeat_json(&self) -> String {
        let mut report = self.report.clone();
        report["repeat"] = true.into();
        report["completed_at_ms"] = self.completed_at_ms.into();
        serde_json::to_string_pretty(&report).unwrap_or_default()
    }

    fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.completed_at_ms))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// The markers of one phase of one pipeline in this incarnation.
pub struct Delivery {
    marker: PathBuf,
    lock: PathBuf,
    last: PathBuf,
    incarnation: String,
    phase: PhaseName,
    pipeline: PathBuf,
}

/// What a delivery may do.
pub enum Claim {
    /// Run the phase; the lock is held until the guard is dropped.
    Run(Guard),
    /// An earlier delivery completed the phase.
    Repeat(Marker),
    /// Another delivery still holds the lock at the deadline.
    Busy,
}

/// The lock of a delivery that runs the phase.
pub struct Guard {
    _lock: File,
    delivery: Delivery,
}

impl Delivery {
    /// The delivery of `phase` of `pipeline` (whose file holds `contents`),
    /// or `None`, after one warning, when markers cannot be kept.
    pub fn new(pipeline: &Pipeline, contents: &[u8], phase: PhaseName) -> Option<Delivery> {
        let dir = state_dir(pipeline)?;
        let Some(incarnation) = incarnation() else {
            tracing::warn!(
                "cannot tell this container's incarnation from /proc/1/stat; running without done-markers (a repeated delivery runs again)"
            );
            return None;
        };
        if let Err(e) = fs::create_dir_all(&dir) {
            tracing::warn!(
                "state directory {} cannot be created ({e}); running without done-markers (a repeated delivery runs again); set [state] dir or ${STATE_DIR_ENV} to a writable directory",
                dir.display()
            );
            return None;
        }
        let path = std::path::absolute(&pipeline.path).unwrap_or_else(|_| pipeline.path.clone());
        let mut key = Vec::new();
        key.extend_from_slice(path.as_os_str().as_encoded_bytes());
        key.push(0);
        key.extend_from_slice(contents);
        key.push(0);
        key.extend_from_slice(incarnation.as_bytes());
        let hash = xxhash_rust::xxh3::xxh3_128(&key);
        let stem = format!("{phase}-{hash:032x}");
        Some(Delivery {
            marker: dir.join(format!("{stem}.done")),
            lock: dir.join(format!("{stem}.lock")),
            last: dir.join(format!("{stem}.last")),
            incarnation,
            phase,
            pipeline: path,
        })
    }

    /// Records a run of the phase as its last (`by` is the subcommand that
    /// ran it), for `lifehook status`.
    pub fn record(&self, by: &str, text: String, report: serde_json::Value) {
        let record = self.marker_of(by, text, report);
        if let Err(e) = write_atomically(&self.last, &record) {
            tracing::warn!("cannot record the run in {}: {e}", self.last.display());
        }
    }

    fn marker_of(&self, by: &str, text: String, report: serde_json::Value) -> Marker {
        Marker {
            completed_at_ms: now_ms(),
            incarnation: self.incarnation.clone(),
            text,
            report,
            phase: self.phase.to_string(),
            pipeline: self.pipeline.clone(),
            by: by.to_owned(),
        }
    }

    /// Takes this delivery's turn: waits (until `deadline`) for any other
    /// delivery of the same phase to finish, then finds its marker (unless
    /// `force`) or gets to run.
    pub fn claim(self, deadline: Instant, force: bool) -> std::io::Result<Claim> {
        // A lock file made by another user (root at image build time, say)
        // is still lockable read-only.
        let lock = match File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
        {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(&self.lock)?,
            other => other?,
        };
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => return Ok(Claim::Busy),
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        if !force && let Some(marker) = self.read() {
            return Ok(Claim::Repeat(marker));
        }
        Ok(Claim::Run(Guard {
            _lock: lock,
            delivery: self,
        }))
    }

    fn read(&self) -> Option<Marker> {
        let text = fs::read(&self.marker).ok()?;
        let marker: Marker = serde_json::from_slice(&text).ok()?;
        (marker.incarnation == self.incarnation).then_some(marker)
    }
}

impl Guard {
    /// Records the run as the phase's last and, when it succeeded
    /// (`completed`), that the phase completed. Written to a temporary
    /// file and renamed, so a marker is whole or absent.
    pub fn finish(self, completed: bool, text: String, report: serde_json::Value) {
        let d = &self.delivery;
        if completed {
            let marker = d.marker_of("run", text.clone(), report.clone());
            if let Err(e) = write_atomically(&d.marker, &marker) {
                tracing::warn!(
                    "cannot record the done-marker {}: {e}; a repeated delivery will run the phase again",
                    d.marker.display()
                );
            }
        }
        d.record("run", text, report);
    }
}

/// Where `exec` and `serve`, which run phases without done-markers, record
/// each phase's last run for `lifehook status`.
pub struct Ledger(Vec<Delivery>);

impl Ledger {
    /// The ledger of `pipeline`'s phases (empty where runs cannot be
    /// recorded, after the warning [`Delivery::new`] gives).
    pub fn new(pipeline: &Pipeline) -> Ledger {
        let contents = fs::read(&pipeline.path).unwrap_or_default();
        Ledger(
            [PhaseName::PostStart, PhaseName::PreStop]
                .into_iter()
                .filter(|&name| pipeline.phase(name).is_some())
                .filter_map(|name| Delivery::new(pipeline, &contents, name))
                .collect(),
        )
    }

    /// Records a run of `phase` by `by`.
    pub fn record(&self, phase: PhaseName, by: &str, text: &str, report: serde_json::Value) {
        if let Some(d) = self.0.iter().find(|d| d.phase == phase) {
            d.record(by, text.to_owned(), report);
        }
    }
}

/// The last runs recorded in `dir` in this incarnation, newest first,
/// each with whether its phase completed (its done-marker exists: both are
/// named by the same key, which includes the incarnation). Files that are
/// not records are passed over.
pub fn last_runs(dir: &Path) -> std::io::Result<Vec<(Marker, bool)>> {
    let incarnation = incarnation();
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".last") else {
            continue;
        };
        let Ok(bytes) = fs::read(entry.path()) else {
            continue;
        };
        let Ok(marker) = serde_json::from_slice::<Marker>(&bytes) else {
            continue;
        };
        if incarnation.as_deref() == Some(marker.incarnation.as_str()) {
            let completed = dir.join(format!("{stem}.done")).exists();
            found.push((marker, completed));
        }
    }
    found.sort_by_key(|(m, _)| std::cmp::Reverse(m.completed_at_ms));
    Ok(found)
}

fn write_atomically(path: &Path, marker: &Marker) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(marker).map_err(std::io::Error::other)?;
    // Not durable: a marker only has to outlive the container incarnation,
    // and a node that crashes comes back with a new boot id, so a marker
    // lost with it is never missed. The rename still makes it whole or
    // absent.
    lifehook_runtime::atomic_write(path, &[&bytes], lifehook_runtime::WriteOptions::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incarnation_is_read_from_proc() {
        let i = incarnation().expect("readable on Linux");
        let (boot, start) = i.split_once(':').expect("boot:start");
        assert_eq!(boot.len(), 36, "{boot}");
        assert!(start.parse::<u64>().is_ok(), "{start}");
        assert_eq!(incarnation(), Some(i), "stable within one incarnation");
    }
}
