//! The classic pre-stop (notify a receiver, snapshot the app's state,
//! release a lock) with its plugins in a directory of the test's choosing,
//! for binaries other than the one `cargo test` built: an installed copy,
//! the arm64 build under qemu, the runtime-only build.

use std::path::Path;

use super::Sandbox;
use super::http::TestServer;

/// Writes the classic pre-stop into `s` (plugins from `plugins`, the
/// receiver `server`), the app's state and the lock it holds.
pub fn write(s: &Sandbox, plugins: &Path, server: &TestServer) {
    let plugins = plugins.display();
    s.write(
        "lifehook.toml",
        format!(
            r#"
[defaults]
# Generous: the arm64 binary runs under emulation here.
timeout = "60s"

[pre-stop]
deadline = "120s"

[[pre-stop.steps]]
name = "notify"
plugin = "{plugins}/notify_shutdown.wasm"
allow.http = ["{origin}"]
config = {{ url = "{url}", body = '{{"phase":"{{{{phase}}}}"}}' }}

[[pre-stop.steps]]
name = "save"
plugin = "{plugins}/save_state.wasm"
allow.dirs = [
  {{ host = "app", guest = "/app" }},
  {{ host = "snapshots", guest = "/snapshots", access = "read-write" }},
]
config = {{ source = "/app", destination = "/snapshots", keep = 3 }}

[[pre-stop.steps]]
name = "unlock"
plugin = "{plugins}/release_lock.wasm"
allow.dirs = [{{ host = "locks", guest = "/locks", access = "read-write" }}]
config = {{ backend = "file", path = "/locks/leader.lock", token = "pod-0" }}
"#,
            origin = server.origin(),
            url = server.url("/shutdown"),
        ),
    );
    s.write("app/state.txt", "counter = 41\n");
    s.write("locks/leader.lock", "pod-0\n");
    std::fs::create_dir_all(s.path("snapshots")).expect("snapshots dir");
}

/// Asserts that `report` (the JSON report of a run of [`write`]'s pipeline)
/// ran every step to `ok` from code loaded as `code`, and that each did
/// its work: the receiver was told, a snapshot written, the lock gone.
pub fn assert_done(run: &super::Run, s: &Sandbox, server: &TestServer, code: &str) {
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for step in ["notify", "save", "unlock"] {
        let report = run.assert_outcome(step, "ok");
        assert_eq!(report["code"], code, "step {step}: {report:#}");
    }
    let told = server.requests();
    assert!(
        told.iter()
            .any(|r| r.method == "POST" && r.path == "/shutdown" && r.text().contains("pre-stop")),
        "{told:?}"
    );
    let snapshots: Vec<_> = std::fs::read_dir(s.path("snapshots"))
        .expect("snapshots")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .collect();
    assert_eq!(snapshots.len(), 1, "one snapshot");
    assert!(
        !s.path("locks/leader.lock").exists(),
        "the lock is released"
    );
}
