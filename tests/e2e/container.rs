//! lifehook inside a real container: the `FROM scratch` image of
//! examples/container/Containerfile, built with podman from the static
//! binaries, with the kubelet's termination sequence played against it (the
//! kubelet's own hook logic, step by step: `podman exec` for exec hooks, no
//! timeout of their own but abandoned at the end of the grace period, then
//! `podman stop -t <what is left, at least 2 s>`).
//!
//! The image is an application image with lifehook copied in from the
//! lifehook image, as users add it (`COPY --from=`), so these tests run
//! the shipped image's binary, plugins and artifacts.
//!
//! Ignored by a plain `cargo test`: they need podman and the static
//! binaries, which `cargo xtask test` installs, builds once and passes in
//! `LIFEHOOK_STATIC_BIN` and `LIFEHOOK_STATIC_APP`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::http::TestServer;
use crate::support::podman::{built_file, checked, podman, release_image};
use crate::support::redis::Redis;
use crate::support::{app_event_time, app_events, unix_ms, wait_until};

const IMAGE: &str = "localhost/lifehook-test:latest";
const PRE_STOP: &[&str] = &[
    "/lifehook/lifehook",
    "run",
    "--phase",
    "pre-stop",
    "-f",
    "/etc/lifehook/lifehook.toml",
];
const POST_START: &[&str] = &[
    "/lifehook/lifehook",
    "run",
    "--phase",
    "post-start",
    "-f",
    "/etc/lifehook/lifehook.toml",
];

/// The application image, built once per test process: first the lifehook
/// image (examples/image/Containerfile) from the x86-64 static binary,
/// tagged with the name a release publishes, then
/// examples/container/Containerfile, which copies lifehook from it as users
/// do, from a fresh context.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        release_image();
        let context = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("container-context");
        let _ = std::fs::remove_dir_all(&context);
        std::fs::create_dir_all(&context).expect("context dir");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/container");
        for file in ["Containerfile", "lifehook.toml"] {
            std::fs::copy(examples.join(file), context.join(file)).expect("example file");
        }
        std::fs::copy(built_file("LIFEHOOK_STATIC_APP"), context.join("test-app"))
            .expect("test app");
        let mut build = podman();
        build
            .args(["build", "--quiet", "-t", IMAGE, "-f"])
            .arg(context.join("Containerfile"))
            .arg(&context);
        checked(build);
    });
    IMAGE
}

/// One container, playing the part of a pod's container.
struct Pod {
    name: String,
    data: tempfile::TempDir,
}

struct Hook {
    code: Option<i32>,
    output: String,
    took: Duration,
    abandoned: bool,
}

impl Pod {
    /// `podman run -d` the test app as the entrypoint, with `/data` (app
    /// state, snapshots, restored files, the app's event log) a volume.
    fn start(env: &[(&str, String)], run_flags: &[&str], command: &[&str]) -> Pod {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "lifehook-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let data = tempfile::tempdir().expect("volume");
        for dir in ["app", "snapshots", "restored"] {
            std::fs::create_dir_all(data.path().join(dir)).expect("dir");
        }
        // The container may run as another user.
        use std::os::unix::fs::PermissionsExt as _;
        for dir in [
            data.path().to_path_buf(),
            data.path().join("app"),
            data.path().join("snapshots"),
            data.path().join("restored"),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        let mut run = podman();
        run.args(["run", "-d", "--name", &name, "--network", "host"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .arg("-v")
            .arg(format!("{}:/data", data.path().display()))
            .args(["-e", &format!("POD_NAME={name}")]);
        for (k, v) in env {
            run.args(["-e", &format!("{k}={v}")]);
        }
        run.args(run_flags).arg(image()).args(command);
        checked(run);
        let pod = Pod { name, data };
        assert!(
            wait_until(Duration::from_secs(20), || app_events(&pod.events())
                .iter()
                .any(|e| e == "start")),
            "the app did not start:\n{}",
            pod.logs()
        );
        pod
    }

    /// The usual entrypoint: the test app keeping /data/app/state.txt.
    fn start_app(env: &[(&str, String)], run_flags: &[&str], app_flags: &[&str]) -> Pod {
        let mut command = vec![
            "--events",
            "/data/events.txt",
            "--state",
            "/data/app/state.txt",
        ];
        command.extend_from_slice(app_flags);
        Pod::start(env, run_flags, &command)
    }

    fn events(&self) -> PathBuf {
        self.data.path().join("events.txt")
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.data.path().join(relative)
    }

    fn exec_child(&self, flags: &[&str], command: &[&str]) -> Child {
        let mut cmd = podman();
        cmd.arg("exec").args(flags).arg(&self.name).args(command);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().expect("podman exec")
    }

    /// An exec hook the kubelet's way: no timeout of its own, but abandoned
    /// (not killed) when `limit` passes.
    fn hook(&self, flags: &[&str], command: &[&str], limit: Duration) -> Hook {
        let started = Instant::now();
        let mut child = self.exec_child(flags, command);
        while started.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().expect("hook output");
                return Hook {
                    code: out.status.code(),
                    output: format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    took: started.elapsed(),
                    abandoned: false,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Abandoned: the podman client goes; the hook inside dies with the
        // container.
        let _ = child.kill();
        let _ = child.wait();
        Hook {
            code: None,
            output: String::new(),
            took: started.elapsed(),
            abandoned: true,
        }
    }

    /// The kubelet's termination: the preStop hook within the grace period,
    /// then SIGTERM and SIGKILL after what is left of it, at least 2 s.
    fn terminate(&self, grace: Duration) -> (Hook, u128) {
        let hook = self.hook(&[], PRE_STOP, grace);
        let left = grace.saturating_sub(hook.took).max(Duration::from_secs(2));
        let stop_at = unix_ms();
        self.stop(left.as_secs_f64().ceil() as u64);
        (hook, stop_at)
    }

    fn stop(&self, seconds: u64) {
        let mut stop = podman();
        stop.args(["stop", "-t", &seconds.to_string(), &self.name]);
        checked(stop);
    }

    fn exit_code(&self) -> i32 {
        let mut inspect = podman();
        inspect.args(["inspect", "--format", "{{.State.ExitCode}}", &self.name]);
        String::from_utf8_lossy(&checked(inspect).stdout)
            .trim()
            .parse()
            .unwrap_or(-1)
    }

    /// What `podman diff` says changed in the container's root.
    fn diff(&self) -> String {
        let mut diff = podman();
        diff.args(["diff", &self.name]);
        String::from_utf8_lossy(&checked(diff).stdout).into_owned()
    }

    fn logs(&self) -> String {
        let out = podman()
            .args(["logs", &self.name])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}

fn env(server: &TestServer, redis: &Redis) -> Vec<(&'static str, String)> {
    vec![
        ("NOTIFY_ORIGIN", server.origin()),
        ("NOTIFY_URL", server.url("/shutdown")),
        ("REDIS_ADDR", redis.address()),
    ]
}

/// Scenario 1: The classic pre-stop (notify, wait, save, release the Redis lock)
/// completes before the app gets SIGTERM; the next container's post-start
/// restores that snapshot before the app reads it.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_classic_pre_stop_then_post_start_restores() {
    let (server, redis) = (TestServer::start(), Redis::start());
    let pod = Pod::start_app(&env(&server, &redis), &[], &[]);
    redis.cli(&["SET", "leader", &pod.name]);
    std::thread::sleep(Duration::from_millis(300));
    let (hook, stop_at) = pod.terminate(Duration::from_secs(10));
    assert_eq!(hook.code, Some(0), "{}", hook.output);
    assert!(
        hook.took >= Duration::from_secs(1),
        "the 1s wait step ran: {:?}",
        hook.took
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{}", hook.output);
    assert!(
        requests[0].text().contains(&pod.name),
        "{}",
        requests[0].text()
    );
    assert_eq!(
        redis.cli(&["EXISTS", "leader"]),
        "0",
        "the lock was released"
    );
    let got_term = app_event_time(&pod.events(), "SIGTERM").expect("the app got SIGTERM");
    assert!(got_term >= stop_at, "SIGTERM came before pre-stop ended");
    let snapshots: Vec<PathBuf> = std::fs::read_dir(pod.path("snapshots"))
        .expect("snapshots")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{}", hook.output);
    let saved_at = std::fs::metadata(&snapshots[0])
        .and_then(|m| m.modified())
        .expect("mtime")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis();
    assert!(
        saved_at <= got_term,
        "the snapshot was written after SIGTERM"
    );
    assert_eq!(pod.exit_code(), 0);

    // The next incarnation, on the same volume: post-start runs beside the
    // app, which waits for the restored state before reading it.
    let next = Pod::start(
        &env(&server, &redis),
        &[
            "-v",
            &format!("{}:/data/snapshots", pod.path("snapshots").display()),
        ],
        &[
            "--events",
            "/data/events.txt",
            "--wait-for",
            "/data/restored/state.txt",
        ],
    );
    let hook = next.hook(&[], POST_START, Duration::from_secs(20));
    assert_eq!(hook.code, Some(0), "{}", hook.output);
    let restored = std::fs::read_to_string(next.path("restored/state.txt")).expect("restored");
    assert!(
        wait_until(Duration::from_secs(5), || app_events(&next.events())
            .contains(&format!("read {}", restored.trim()))),
        "the app read {:?}, not the restored {restored:?}",
        app_events(&next.events())
    );
    let tar = std::fs::read(&snapshots[0]).expect("snapshot");
    assert!(
        tar.windows(restored.len())
            .any(|w| w == restored.as_bytes()),
        "restored the snapshot's state"
    );
}

/// Scenario 2: The deadline: a hook cut by its own deadline ends on time, one whose
/// deadline is longer than the grace period is abandoned when it ends; the
/// app gets its 2 s between SIGTERM and SIGKILL either way.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_deadlines_leave_the_app_its_two_seconds() {
    let (server, redis) = (TestServer::start(), Redis::start());
    let mut env = env(&server, &redis);
    env.retain(|(k, _)| *k != "NOTIFY_URL");
    env.push(("NOTIFY_URL", server.url("/hang")));
    let grace = Duration::from_secs(4);
    for (deadline, abandoned) in [("3s", false), ("8s", true)] {
        let pod = Pod::start_app(&env, &[], &["--ignore-term"]);
        let cmd = [
            "/lifehook/lifehook",
            "run",
            "-f",
            "/etc/lifehook/lifehook.toml",
            "--deadline",
            deadline,
        ];
        let hook = pod.hook(&[], &cmd, grace);
        assert_eq!(
            hook.abandoned, abandoned,
            "deadline {deadline}: {:?} {}",
            hook.took, hook.output
        );
        if !abandoned {
            assert_eq!(hook.code, Some(3), "{}", hook.output);
            // The hanging notify is cut at 3s less the 2s kept for the
            // always-step release-lock, which then runs.
            assert!(
                hook.took >= Duration::from_millis(900) && hook.took < Duration::from_millis(3900),
                "{:?}",
                hook.took
            );
            assert!(
                hook.output.contains("DEADLINE of 3s reached"),
                "{}",
                hook.output
            );
            assert!(
                hook.output.contains("kept for always-steps"),
                "{}",
                hook.output
            );
        }
        let left = grace.saturating_sub(hook.took).max(Duration::from_secs(2));
        let stopping = Instant::now();
        pod.stop(left.as_secs_f64().ceil() as u64);
        let drained = stopping.elapsed();
        assert!(
            drained >= Duration::from_secs(2),
            "deadline {deadline}: the app got only {drained:?} after SIGTERM (stop -t {}, hook {:?})",
            left.as_secs_f64().ceil(),
            hook.took
        );
        assert_eq!(
            pod.exit_code(),
            137,
            "the app ignored SIGTERM and was killed"
        );
        assert!(app_events(&pod.events()).contains(&"SIGTERM".to_string()));
    }
}

/// Scenario 3: with no flag, the hook's log lines and report go into the
/// container's log (PID 1's output, what `kubectl logs` shows), marked as
/// lifehook's; as another user PID 1's output cannot be opened, and the hook
/// still succeeds without a word about it.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_hook_logs_reach_the_container_log_and_fall_back_quietly() {
    let (server, redis) = (TestServer::start(), Redis::start());
    let pod = Pod::start_app(&env(&server, &redis), &[], &[]);
    let mut cmd: Vec<&str> = PRE_STOP.to_vec();
    cmd.extend_from_slice(&["--only", "notify-shutdown"]);
    let hook = pod.hook(&[], &cmd, Duration::from_secs(10));
    assert_eq!(hook.code, Some(0), "{}", hook.output);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let logs = pod.logs();
            let marked_info = logs.lines().any(|l| {
                l.starts_with("lifehook: ") && l.contains("INFO") && l.contains("ok: POST")
            });
            marked_info && logs.contains("lifehook: pre-stop: ok")
        }),
        "the hook's log line and verdict are not in the container log:\n{}",
        pod.logs()
    );
    let hook = pod.hook(&["--user", "65534"], &cmd, Duration::from_secs(10));
    assert_eq!(hook.code, Some(0), "{}", hook.output);
    assert!(
        hook.output.starts_with("lifehook pre-stop: ok"),
        "not quiet:\n{}",
        hook.output
    );
    assert_eq!(server.requests().len(), 2);
}

/// The report lines of a hook's output (its headline and the indented
/// lines under it) as the container log shows them: marked as lifehook's.
fn report_lines_as_logged(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with("lifehook pre-stop:") || l.starts_with("  "))
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("lifehook: {}", l.strip_prefix("lifehook ").unwrap_or(l)))
        .collect()
}

/// Scenario 4: A failing step: the hook's exit code, and the first 1024 bytes of its
/// output say which step failed and why.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_failing_step_is_named_in_what_the_kubelet_keeps() {
    let (server, redis) = (TestServer::start(), Redis::start());
    let pod = Pod::start_app(&env(&server, &redis), &[], &[]);
    redis.cli(&["SET", "leader", "another-pod"]);
    let (hook, _) = pod.terminate(Duration::from_secs(10));
    assert_eq!(hook.code, Some(1), "{}", hook.output);
    let kept: String = hook.output.chars().take(1024).collect();
    assert!(kept.contains("release-lock"), "{kept}");
    assert!(
        kept.contains("another-pod"),
        "who holds the lock is not said:\n{kept}"
    );
    assert_eq!(
        redis.cli(&["GET", "leader"]),
        "another-pod",
        "someone else's lock is kept"
    );
    // Delivered by `podman exec` with no flag: the verdict, its cause and
    // every step line are in the container's log too.
    let logged = report_lines_as_logged(&hook.output);
    assert!(
        logged.len() >= 4 && logged.iter().any(|l| l.contains("cause:")),
        "{}",
        hook.output
    );
    let logs = pod.logs();
    for line in &logged {
        assert!(
            logs.contains(line.as_str()),
            "{line:?} is not in the container log:\n{logs}"
        );
    }
}

/// Scenario 5: The preStop hook delivered twice, during and after the first: its
/// side effects happen once.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_duplicate_delivery_does_the_work_once() {
    let (server, redis) = (TestServer::start(), Redis::start());
    let pod = Pod::start_app(&env(&server, &redis), &[], &[]);
    redis.cli(&["SET", "leader", &pod.name]);
    let first = pod.exec_child(&[], PRE_STOP);
    std::thread::sleep(Duration::from_millis(300));
    let during = pod.hook(&[], PRE_STOP, Duration::from_secs(10));
    let first = first.wait_with_output().expect("first delivery");
    let after = pod.hook(&[], PRE_STOP, Duration::from_secs(10));
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert_eq!(during.code, Some(0), "{}", during.output);
    assert_eq!(after.code, Some(0), "{}", after.output);
    assert!(during.output.contains("(repeat:"), "{}", during.output);
    assert!(after.output.contains("(repeat:"), "{}", after.output);
    assert_eq!(server.requests().len(), 1, "notified once");
    let snapshots = std::fs::read_dir(pod.path("snapshots"))
        .expect("dir")
        .flatten()
        .count();
    assert_eq!(snapshots, 1, "saved once");
}

/// Scenario 6: The entrypoint mode: `lifehook exec -- app` as the container's
/// command; `podman stop -t 10` runs pre-stop before the app sees SIGTERM,
/// and the container exits with the app's code.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_entrypoint_mode_runs_pre_stop_first() {
    let (server, redis) = (TestServer::start(), Redis::start());
    let pod = Pod::start(
        &env(&server, &redis),
        &["--entrypoint", "/lifehook/lifehook"],
        &[
            "exec",
            "-f",
            "/etc/lifehook/lifehook.toml",
            "--grace-period",
            "10s",
            "--",
            "/app/test-app",
            "--events",
            "/data/events.txt",
            "--state",
            "/data/app/state.txt",
            "--exit-on-term",
            "7",
        ],
    );
    redis.cli(&["SET", "leader", &pod.name]);
    std::thread::sleep(Duration::from_millis(500));
    let stop_at = unix_ms();
    pod.stop(10);
    assert_eq!(pod.exit_code(), 7, "{}", pod.logs());
    let got_term = app_event_time(&pod.events(), "SIGTERM").expect("SIGTERM reached the app");
    assert!(
        got_term >= stop_at + 1000,
        "SIGTERM reached the app before pre-stop's 1s wait ended"
    );
    assert_eq!(server.requests().len(), 1);
    assert_eq!(redis.cli(&["EXISTS", "leader"]), "0");
    let logs = pod.logs();
    assert!(logs.contains("lifehook exec timeline:"), "{logs}");
    assert!(logs.contains("pre-stop done: ok"), "{logs}");
    assert!(logs.contains("app exited with code 7"), "{logs}");
    // lifehook is PID 1: its info lines go to its own stdout, marked.
    assert!(
        logs.lines()
            .any(|l| l.starts_with("lifehook: ") && l.contains("INFO")),
        "{logs}"
    );
}

/// Scenario 7: A read-only root file system with the cache in the image: the hook
/// runs, writing nowhere but its granted volume.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_read_only_root_writes_only_its_volume() {
    let (server, redis) = (TestServer::start(), Redis::start());
    let pod = Pod::start_app(
        &env(&server, &redis),
        &["--read-only", "--read-only-tmpfs=false"],
        &[],
    );
    // podman's own changes (mount points for /data, /etc/hosts...).
    let before = pod.diff();
    redis.cli(&["SET", "leader", &pod.name]);
    let (hook, _) = pod.terminate(Duration::from_secs(10));
    assert_eq!(hook.code, Some(0), "{}", hook.output);
    assert!(hook.output.contains("4 ok"), "{}", hook.output);
    // Precompiled in the image: nothing was compiled here.
    assert!(!hook.output.contains("compil"), "{}", hook.output);
    let snapshots = std::fs::read_dir(pod.path("snapshots"))
        .expect("dir")
        .flatten()
        .count();
    assert_eq!(snapshots, 1);
    assert_eq!(
        pod.diff(),
        before,
        "the hook changed the root file system (beyond podman's own mount points)"
    );
}

/// The image's size, and the time of one preStop inside the container with
/// and without the precompiled artifacts (figures for the README); every
/// plugin step loads the lifehook image's artifacts when they are there.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_figures() {
    let (server, redis) = (TestServer::start(), Redis::start());
    let env = env(&server, &redis);
    let mut size = podman();
    size.args(["image", "inspect", "--format", "{{.Size}}", image()]);
    let bytes: u64 = String::from_utf8_lossy(&checked(size).stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(bytes > 0 && bytes < 60_000_000, "image size {bytes}");
    let pod = Pod::start_app(&env, &[], &[]);
    let mut times = Vec::new();
    // The image's own artifacts (copied from the lifehook image), then none.
    for (cache, code) in [
        ("/lifehook/cache", "precompiled"),
        ("/nonexistent", "compiled"),
    ] {
        redis.cli(&["SET", "leader", &pod.name]);
        let hook = pod.hook(
            &["-e", &format!("LIFEHOOK_CACHE={cache}")],
            &[
                "/lifehook/lifehook",
                "run",
                "--force",
                "--report",
                "json",
                "--skip",
                "drain",
                "-f",
                "/etc/lifehook/lifehook.toml",
            ],
            Duration::from_secs(20),
        );
        assert_eq!(hook.code, Some(0), "{}", hook.output);
        times.push(hook.took);
        let report: serde_json::Value = serde_json::Deserializer::from_str(&hook.output)
            .into_iter()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no JSON report:\n{}", hook.output));
        let steps = report["steps"].as_array().expect("steps");
        let plugin_steps: Vec<_> = steps.iter().filter(|s| s["name"] != "drain").collect();
        assert_eq!(plugin_steps.len(), 3, "{report:#}");
        for step in plugin_steps {
            assert_eq!(step["outcome"], "ok", "{step:#}");
            assert_eq!(step["code"], code, "{step:#}");
        }
    }
    println!(
        "container figures: image {:.1} MB; one pre-stop through podman exec: {:?} precompiled, {:?} compiling",
        bytes as f64 / 1e6,
        times[0],
        times[1]
    );
    assert!(
        times[0] < times[1],
        "precompiled {:?} vs compiling {:?}",
        times[0],
        times[1]
    );
}

/// The final stage of a Containerfile: its COPY destinations, ENV and RUN
/// lines, in order, leaving out lines marked `test-only`.
fn final_stage(text: &str) -> Vec<String> {
    let stage = text.rsplit_once("\nFROM ").map_or(text, |(_, s)| s);
    let mut out = Vec::new();
    let mut test_only = false;
    for line in stage.lines().skip(1) {
        let line = line.trim();
        if line.starts_with('#') {
            test_only |= line.contains("test-only");
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if std::mem::take(&mut test_only) {
            continue;
        }
        match line.split_whitespace().next() {
            Some("COPY") => out.push(format!("COPY -> {}", line.rsplit(' ').next().unwrap_or(""))),
            Some("ENV" | "RUN") => out.push(line.to_owned()),
            _ => {}
        }
    }
    out
}

/// The image users build (examples/kubernetes/Dockerfile) ends with the
/// same files at the same paths as the one the tests run.
#[test]
fn the_user_dockerfile_matches_the_tested_image() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let read = |p: &str| std::fs::read_to_string(examples.join(p)).expect("file");
    let tested = final_stage(&read("container/Containerfile"));
    let shipped = final_stage(&read("kubernetes/Dockerfile"));
    assert!(tested.len() >= 3, "{tested:#?}");
    assert_eq!(tested, shipped);
}

/// Scenario 8: drain-connections in a container, reading its network
/// namespace's TCP tables through a `/proc/net` grant, while a client holds
/// connections to the application's server: the step ends once they close.
#[test]
#[ignore = "needs podman and the static binaries: `cargo xtask test` runs it"]
fn container_drain_waits_for_the_apps_connections() {
    let port = crate::support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let pod = Pod::start_app(&[], &[], &["--serve", &listen]);
    std::fs::write(
        pod.path("drain.toml"),
        format!(
            "[[pre-stop.steps]]\nname = \"drain\"\nplugin = \"/lifehook/plugins/drain_connections.wasm\"\ntimeout = \"20s\"\nallow.dirs = [{{ host = \"/proc/net\", guest = \"/proc/net\" }}]\nconfig = {{ ports = [{port}], min = \"200ms\", poll = \"50ms\" }}\n"
        ),
    )
    .expect("pipeline");
    let connect = || {
        let mut tries = 0;
        loop {
            match std::net::TcpStream::connect(&listen) {
                Ok(c) => return c,
                Err(_) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to the app: {e}"),
            }
        }
    };
    let clients = vec![connect(), connect()];
    let hook = pod.exec_child(
        &[],
        &[
            "/lifehook/lifehook",
            "run",
            "-f",
            "/data/drain.toml",
            "--report",
            "json",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    drop(clients);
    let out = hook.wait_with_output().expect("hook output");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let step = &report["steps"][0];
    assert_eq!(step["outcome"], "ok", "{step:#}");
    assert!(
        step["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("2 -> 0 connections on :{port}"))),
        "{step:#}"
    );
    assert!(
        step["duration_ms"].as_u64().expect("duration") >= 500,
        "{step:#}"
    );
}
