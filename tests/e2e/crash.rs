//! Crash safety, proven by killing: `lifehook run` is SIGKILLed at random
//! moments while save-state writes a large snapshot, or while release-lock
//! releases a lock file, and what is left is checked each time. Also two
//! runs at once on the same pipeline (a duplicate delivery without shared
//! done-markers). The random moments come from a fixed seed, so a failure
//! can be replayed.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::support::{Run, Sandbox, lifehook, run_command, send_signal};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

const FILES: usize = 10;
const BIG: usize = 2 << 20;

/// File `i` of version `v` of the application's state: the first is 2 MiB.
fn content(v: u32, i: usize) -> Vec<u8> {
    let pattern = format!("version {v} file {i};");
    let size = if i == 0 { BIG } else { 1000 + i };
    pattern.bytes().cycle().take(size).collect()
}

fn write_version(s: &Sandbox, v: u32) {
    for i in 0..FILES {
        s.write(&format!("app/f{i}.bin"), content(v, i));
    }
}

const PIPELINE: &str = r#"
[pre-stop]
deadline = "60s"
[[pre-stop.steps]]
name = "save"
plugin = "@save"
timeout = "60s"
allow.dirs = [{ host = "app", guest = "/app" }, { host = "snapshots", guest = "/snapshots", access = "read-write" }]
config = { source = "/app", destination = "/snapshots", keep = 3 }

[post-start]
[[post-start.steps]]
name = "restore"
plugin = "@restore"
timeout = "60s"
allow.dirs = [{ host = "snapshots", guest = "/snapshots" }, { host = "restored", guest = "/restored", access = "read-write" }]
config = { source = "/snapshots", destination = "/restored" }
"#;

fn spawn_run(s: &Sandbox, args: &[&str]) -> Child {
    let mut cmd = lifehook();
    cmd.args(args)
        .current_dir(s.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn().expect("spawn lifehook")
}

/// Which version every restored file is, if they are all one version.
fn restored_version(s: &Sandbox, newest: u32) -> Option<u32> {
    let first = std::fs::read(s.path("restored/f1.bin")).ok()?;
    let v = (0..=newest).find(|v| first == content(*v, 1))?;
    for i in 0..FILES {
        let bytes = std::fs::read(s.path(&format!("restored/f{i}.bin")))
            .unwrap_or_else(|e| panic!("restored file f{i} missing beside f1: {e}"));
        assert!(
            bytes == content(v, i),
            "restored f{i} is not version {v} like f1: a mix of versions"
        );
    }
    Some(v)
}

#[test]
fn killed_saves_never_leave_a_mixed_or_partial_snapshot() {
    let s = Sandbox::new();
    std::fs::create_dir_all(s.path("snapshots")).expect("dir");
    s.pipeline(PIPELINE);
    // How long a whole save takes here, to kill within it.
    write_version(&s, 0);
    let mut times: Vec<u64> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let full = run_command({
                let mut c = lifehook();
                c.args(["run"]).current_dir(s.dir.path());
                c
            });
            assert_eq!(full.code, 0, "{}", full.stderr);
            started.elapsed().as_millis() as u64
        })
        .collect();
    times.sort_unstable();
    let save_time = times[1];

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut rounds, mut killed, mut older) = (0, 0, 0);
    for v in 1..=30u32 {
        write_version(&s, v);
        let mut child = spawn_run(&s, &["run"]);
        std::thread::sleep(Duration::from_millis(rng.below(save_time + save_time / 4)));
        send_signal(child.id(), libc::SIGKILL);
        let status = child.wait().expect("wait");
        killed += usize::from(status.code().is_none());
        rounds += 1;
        let _ = std::fs::remove_dir_all(s.path("restored"));
        std::fs::create_dir_all(s.path("restored")).expect("dir");
        let restore = s.run(&["--phase", "post-start"]);
        restore.assert_outcome("restore", "ok");
        let got = restored_version(&s, v)
            .unwrap_or_else(|| panic!("round {v}: restored nothing whole: {}", restore.stdout));
        assert!(
            got <= v,
            "round {v}: restored version {got} from the future"
        );
        older += usize::from(got < v);
    }
    println!(
        "crash rounds: {rounds}, save {save_time} ms; {killed} killed before the end, {older} left the previous version as the newest whole one"
    );
    // Both sides of the race happened: kills before a save completed, and
    // saves that completed.
    assert!(
        older >= 3 && older < rounds,
        "{older} of {rounds} rounds restored an older version"
    );

    // The next successful save removes what killed saves left behind.
    write_version(&s, 99);
    let last = s.run(&[]);
    last.assert_outcome("save", "ok");
    let names: Vec<String> = std::fs::read_dir(s.path("snapshots"))
        .expect("snapshots")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".tar") && !n.contains(".tmp")),
        "{names:?}"
    );
    assert!(names.len() <= 3, "keep = 3: {names:?}");
}

fn tars(s: &Sandbox) -> Vec<String> {
    std::fs::read_dir(s.path("snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tar"))
                .collect()
        })
        .unwrap_or_default()
}

const LOCK: &str = r#"
[[pre-stop.steps]]
name = "release"
plugin = "@lock"
allow.dirs = [{ host = "locks", guest = "/locks", access = "read-write" }]
config = { backend = "file", path = "/locks/leader.lock", token = "pod-0" }
"#;

#[test]
fn killed_lock_releases_never_touch_another_owners_lock_nor_leave_half_a_file() {
    let s = Sandbox::new();
    s.pipeline(LOCK);
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let (ours, theirs) = ("pod-0\nsince 12:00\n", "pod-7\nsince 12:01\n");
    let mut released_when_killed = 0;
    for round in 0..40 {
        let held = if round % 2 == 0 { ours } else { theirs };
        s.write("locks/leader.lock", held);
        let mut child = spawn_run(&s, &["run"]);
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        let _ = send_signal_if_alive(&mut child);
        let _ = child.wait();
        match std::fs::read_to_string(s.path("locks/leader.lock")) {
            Ok(left) => assert_eq!(left, held, "round {round}: the lock file changed"),
            Err(_) => {
                assert_eq!(
                    held, ours,
                    "round {round}: another owner's lock was released"
                );
                released_when_killed += 1;
            }
        }
    }
    println!(
        "lock rounds: 40 killed, {released_when_killed} of our 20 locks released before the kill"
    );
    // A normal run removes what killed runs left.
    s.write("locks/leader.lock", ours);
    let run: Run = s.run(&[]);
    run.assert_outcome("release", "ok");
    let left: Vec<String> = std::fs::read_dir(s.path("locks"))
        .expect("locks")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn send_signal_if_alive(child: &mut Child) -> bool {
    match child.try_wait() {
        Ok(Some(_)) => false,
        _ => {
            send_signal(child.id(), libc::SIGKILL);
            true
        }
    }
}

/// Two deliveries at once that do not share done-markers (each its own
/// state directory): every snapshot is whole, the lock is released once.
#[test]
fn two_runs_at_once_corrupt_nothing_and_release_once() {
    let s = Sandbox::new();
    std::fs::create_dir_all(s.path("snapshots")).expect("dir");
    std::fs::create_dir_all(s.path("restored")).expect("dir");
    write_version(&s, 5);
    s.write("locks/leader.lock", "pod-0\n");
    s.pipeline(&format!(
        "{PIPELINE}\n{}",
        LOCK.replace("[[pre-stop.steps]]", "[[pre-stop.steps]]\nalways = true")
    ));
    let runs: Vec<Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut c = lifehook();
                    c.args(["run", "--report", "json"])
                        .current_dir(s.dir.path());
                    run_command(c)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("run"))
            .collect()
    });
    for run in &runs {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        run.assert_outcome("save", "ok");
    }
    let released: Vec<String> = runs.iter().map(|r| r.message("release")).collect();
    assert_eq!(
        released
            .iter()
            .filter(|m| m.starts_with("released lock file"))
            .count(),
        1,
        "{released:?}"
    );
    assert!(!s.path("locks/leader.lock").exists());
    // Every snapshot left restores whole.
    let restore = s.run(&["--phase", "post-start"]);
    restore.assert_outcome("restore", "ok");
    assert_eq!(restored_version(&s, 5), Some(5));
    assert!(!tars(&s).is_empty());
}
