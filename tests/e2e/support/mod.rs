//! Shared test helpers: a sandbox directory with a pipeline, running the
//! binary, and the servers the sample plugins talk to.

#![allow(dead_code, reason = "each test module uses a different part")]

pub mod certs;
pub mod classic;
pub mod etcd;
pub mod http;
pub mod https;
pub mod podman;
pub mod redis;
pub mod registry;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use lifehook_test_artifacts as plugins;
use serde_json::Value;

/// A temporary directory holding a pipeline file and whatever it needs.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

/// The outcome of one `lifehook` process.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A path inside the sandbox.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file inside the sandbox, creating its directory.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Writes `lifehook.toml` after expanding the placeholders `@hook`,
    /// `@command`, `@other`, `@notify`, `@save`, `@restore`, `@lock`, `@drain` (plugin
    /// paths) and `@dir` (the sandbox directory).
    pub fn pipeline(&self, toml: &str) -> PathBuf {
        let text = expand(toml, self.dir.path());
        self.write("lifehook.toml", text)
    }

    /// Runs `lifehook <args>` in the sandbox with the shared precompiled
    /// cache.
    pub fn lifehook(&self, args: &[&str]) -> Run {
        self.lifehook_with(args, |_| {})
    }

    /// Like [`Sandbox::lifehook`], after letting `setup` adjust the command.
    pub fn lifehook_with(&self, args: &[&str], setup: impl FnOnce(&mut Command)) -> Run {
        let mut cmd = lifehook();
        cmd.args(args).current_dir(self.dir.path());
        setup(&mut cmd);
        run_command(cmd)
    }

    /// `lifehook run --report json` on the sandbox pipeline, plus `extra`.
    pub fn run(&self, extra: &[&str]) -> Run {
        let mut args = vec!["run", "--report", "json"];
        args.extend_from_slice(extra);
        self.lifehook(&args)
    }
}

/// Expands the placeholders of [`Sandbox::pipeline`].
pub fn expand(toml: &str, dir: &Path) -> String {
    toml.replace("@hook", plugins::FIXTURE_HOOK)
        .replace("@command", plugins::FIXTURE_COMMAND)
        .replace("@other", plugins::FIXTURE_OTHER_WORLD)
        .replace("@notify", plugins::NOTIFY_SHUTDOWN)
        .replace("@save", plugins::SAVE_STATE)
        .replace("@restore", plugins::RESTORE_STATE)
        .replace("@lock", plugins::RELEASE_LOCK)
        .replace("@drain", plugins::DRAIN_CONNECTIONS)
        .replace("@dir", &dir.to_string_lossy())
}

/// lifehook's log file variable.
pub const LOG_FILE: &str = "LIFEHOOK_LOG_FILE";

/// Keeps a lifehook command's log lines out of PID 1's output unless the
/// test chose a log file: this machine counts as a container (it has
/// `/.dockerenv`), and its PID 1 is not the tests'.
pub fn quiet(cmd: &mut Command) -> &mut Command {
    if !cmd.get_envs().any(|(k, _)| k == LOG_FILE) {
        cmd.env(LOG_FILE, "none");
    }
    cmd
}

/// The binary, with a clean lifehook environment and the shared cache.
pub fn lifehook() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifehook"));
    for (key, _) in std::env::vars() {
        if key.starts_with("LIFEHOOK_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LIFEHOOK_CACHE", shared_cache());
    cmd.env(LOG_FILE, "none");
    // Each command gets a state directory of its own, so that running a
    // pipeline twice runs it twice; the at-least-once tests share one on
    // purpose.
    cmd.env("LIFEHOOK_STATE_DIR", fresh_state_dir());
    cmd.stdin(Stdio::null());
    cmd
}

/// A state directory no other command has used.
pub fn fresh_state_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("state")
        .join(format!("{}-{n}", std::process::id()))
}

pub fn run_command(mut cmd: Command) -> Run {
    quiet(&mut cmd);
    let started = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = output_of(&mut cmd);
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// `cmd`'s output. A binary a test has just copied can be "busy" for a
/// moment: a process another test thread forked at that instant holds the
/// copy's descriptor until it calls exec. That is retried.
fn output_of(cmd: &mut Command) -> Output {
    const TEXT_FILE_BUSY: i32 = 26;
    let mut tries = 0;
    loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(TEXT_FILE_BUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result.expect("run lifehook"),
        }
    }
}

impl Run {
    /// The JSON report on stdout.
    pub fn report(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not a JSON report ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// One step of the JSON report.
    pub fn step(&self, name: &str) -> Value {
        let report = self.report();
        report["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no step {name} in {report:#}"))
    }

    /// Asserts the step's outcome, showing the whole run when it differs.
    pub fn assert_outcome(&self, name: &str, outcome: &str) -> Value {
        let step = self.step(name);
        assert_eq!(
            step["outcome"], outcome,
            "step {name}: {step:#}\nstderr:\n{}",
            self.stderr
        );
        step
    }

    pub fn message(&self, name: &str) -> String {
        self.step(name)["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A cache precompiled once per test process for every plugin, so tests
/// don't each spend a second compiling (tests of compiling itself pass
/// their own `--cache`).
pub fn shared_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-cache");
        let sandbox = Sandbox::new();
        let mut toml = String::from("[pre-stop]\n");
        for (i, plugin) in [
            plugins::FIXTURE_HOOK,
            plugins::FIXTURE_COMMAND,
            plugins::NOTIFY_SHUTDOWN,
            plugins::SAVE_STATE,
            plugins::RESTORE_STATE,
            plugins::RELEASE_LOCK,
        ]
        .iter()
        .enumerate()
        {
            toml += &format!("[[pre-stop.steps]]\nname = \"s{i}\"\nplugin = \"{plugin}\"\n");
        }
        let file = sandbox.write("all.toml", toml);
        let out = quiet(&mut Command::new(env!("CARGO_BIN_EXE_lifehook")))
            .args(["compile", "-f"])
            .arg(&file)
            .arg("--cache")
            .arg(&dir)
            .output()
            .expect("run lifehook compile");
        assert!(
            out.status.success(),
            "precompiling the test plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// The HTTP client of the tests' own requests to the servers they start:
/// every status is an answer (not an error), no redirect is followed, and
/// no request waits longer than 10 s.
pub fn http_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A TCP port free right now on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The path of `name`, or an install hint when it is missing.
fn find_binary(name: &str, package: &str) -> Result<PathBuf, String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.ok_or_else(|| {
        format!("`{name}` is not installed: run `cargo xtask test` (which installs it) or `apt-get install -y {package}`")
    })
}

/// Panics with an install hint when a server binary is missing.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    find_binary(name, package).unwrap_or_else(|why| panic!("{why}"))
}

/// Why a test that needs the server `name` cannot run here, if it cannot.
/// Under `cargo xtask test` (which installs every server and sets
/// `LIFEHOOK_REQUIRE_SERVERS`) a missing server is a failure instead, so
/// nothing is skipped there.
pub fn missing_server(name: &str, package: &str) -> Option<String> {
    let why = find_binary(name, package).err()?;
    assert!(
        std::env::var_os("LIFEHOOK_REQUIRE_SERVERS").is_none(),
        "{why}"
    );
    Some(why)
}

/// Whether this process may mount a tmpfs in a mount namespace of its own
/// (root, or a user namespace allowing it): the tests of full and read-only
/// directories need one. Under `cargo xtask test` it must.
pub fn can_mount_in_a_namespace() -> bool {
    let can = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs \"$d\"")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        assert!(
            std::env::var_os("LIFEHOOK_REQUIRE_SERVERS").is_none(),
            "cannot mount a tmpfs in a mount namespace (unshare --mount)"
        );
        eprintln!("skipped: cannot mount a tmpfs in a mount namespace");
    }
    can
}

/// Returns from the calling test, printing one line that says why, when a
/// server it needs is not installed (see [`missing_server`]).
macro_rules! require_server {
    ($($name:literal, $package:literal);+ $(;)?) => {
        $(
            if let Some(why) = $crate::support::missing_server($name, $package) {
                eprintln!("skipped: {why}");
                return;
            }
        )+
    };
}
pub(crate) use require_server;

/// Waits until `ready` returns true, up to `limit`.
/// Waits at most `within` for `child` to exit; its status, or `None` (then
/// it is killed and reaped).
pub fn wait_for_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(within, || {
        status = child.try_wait().expect("wait for a child");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The test application (tests/app), built once per test process.
pub fn test_app() -> &'static Path {
    static APP: OnceLock<PathBuf> = OnceLock::new();
    APP.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--package",
                "lifehook-test-app",
                "--bin",
                "test-app",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo to build the test app");
        assert!(status.success(), "building tests/app failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
            PathBuf::from,
        );
        target.join("debug/test-app")
    })
}

/// The events a test app recorded, without their times.
pub fn app_events(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, e)| e.to_owned()))
        .collect()
}

/// When the test app recorded `event` first, in Unix milliseconds.
pub fn app_event_time(file: &Path, event: &str) -> Option<u128> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, e)| *e == event)
        .and_then(|(t, _)| t.parse().ok())
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    #[expect(unsafe_code, reason = "kill(2) with plain integers")]
    // SAFETY: kill takes a pid and a signal number and touches no memory.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}
