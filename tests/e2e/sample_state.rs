//! save-state and restore-state on real directories: round trips, atomic
//! snapshots that survive failed saves, and corrupt snapshots that are
//! skipped, never half-restored.

use std::path::{Path, PathBuf};

use crate::support::http::TestServer;
use crate::support::{Run, Sandbox};

const PIPELINE: &str = r#"
[pre-stop]
deadline = "15s"

[[pre-stop.steps]]
name = "save"
plugin = "@save"
allow.dirs = [
  { host = "app", guest = "/app" },
  { host = "snapshots", guest = "/snapshots", access = "SNAPSHOT_ACCESS" },
]
config = { source = "/app", destination = "/snapshots", include = ["*.db", "wal/**/*"], exclude = ["*.tmp.db"], keep = 2 }

[post-start]
deadline = "15s"

[[post-start.steps]]
name = "restore"
plugin = "@restore"
allow.dirs = [
  { host = "snapshots", guest = "/snapshots" },
  { host = "restored", guest = "/restored", access = "read-write" },
]
config = { source = "/snapshots", destination = "/restored" }
"#;

fn sandbox(snapshot_access: &str) -> Sandbox {
    let s = Sandbox::new();
    s.write("app/main.db", "main database v1");
    s.write("app/scratch.tmp.db", "temporary");
    s.write("app/notes.txt", "not included");
    s.write("app/wal/2026/0001.log", vec![7u8; 100_000]);
    std::fs::create_dir_all(s.path("snapshots")).expect("dir");
    std::fs::create_dir_all(s.path("restored")).expect("dir");
    s.pipeline(&PIPELINE.replace("SNAPSHOT_ACCESS", snapshot_access));
    s
}

fn save(s: &Sandbox) -> Run {
    s.run(&["--phase", "pre-stop"])
}

fn restore(s: &Sandbox) -> Run {
    s.run(&["--phase", "post-start"])
}

/// Snapshot files, newest first.
fn snapshots(s: &Sandbox) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(s.path("snapshots"))
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    found.sort();
    found.reverse();
    found
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn save_then_restore_round_trips_the_selected_files() {
    let s = sandbox("read-write");
    let saved = save(&s);
    saved.assert_outcome("save", "ok");
    assert!(
        saved
            .message("save")
            .starts_with("saved 2 files (100016 bytes) to /snapshots/state-"),
        "{}",
        saved.message("save")
    );
    let files = snapshots(&s);
    assert_eq!(files.len(), 1);

    // A plain tar that ends with the manifest.
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&files[0])
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert_eq!(
        listing,
        "main.db\nwal/2026/0001.log\nlifehook-manifest.json\n"
    );

    let restored = restore(&s);
    restored.assert_outcome("restore", "ok");
    assert!(
        restored
            .message("restore")
            .starts_with("restored 2 files (100016 bytes)"),
        "{}",
        restored.message("restore")
    );
    assert_eq!(read(&s.path("restored/main.db")), b"main database v1");
    assert_eq!(
        read(&s.path("restored/wal/2026/0001.log")),
        vec![7u8; 100_000]
    );
    assert!(!s.path("restored/notes.txt").exists());
    assert!(!s.path("restored/scratch.tmp.db").exists());
    // The staging directory is gone.
    let leftovers: Vec<_> = std::fs::read_dir(s.path("restored"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[test]
fn keeps_only_the_newest_snapshots() {
    let s = sandbox("read-write");
    for _ in 0..4 {
        save(&s).assert_outcome("save", "ok");
    }
    assert_eq!(snapshots(&s).len(), 2, "keep = 2");
}

#[test]
fn unwritable_destination_leaves_the_previous_snapshot_intact() {
    let s = sandbox("read-write");
    save(&s).assert_outcome("save", "ok");
    let before = snapshots(&s);
    let good = read(&before[0]);
    s.write("app/main.db", "main database v2");
    s.pipeline(&PIPELINE.replace("SNAPSHOT_ACCESS", "read"));
    let run = save(&s);
    run.assert_outcome("save", "denied");
    assert!(
        run.message("save").contains("access = \"read-write\""),
        "{}",
        run.message("save")
    );
    assert_eq!(
        snapshots(&s),
        before,
        "the failed save changed the snapshot directory"
    );
    assert_eq!(read(&before[0]), good);
}

#[test]
fn full_disk_leaves_the_previous_snapshot_intact_and_no_temporary_file() {
    let s = sandbox("read-write");
    save(&s).assert_outcome("save", "ok");
    let before = snapshots(&s);
    let good = read(&before[0]);
    s.write("app/main.db", vec![1u8; 300_000]);
    // A file-size limit of 64 KiB makes the plugin's writes fail the way a
    // full disk does (EFBIG), without needing a real tiny file system.
    let run = s.lifehook_with(&[], |c| {
        let program = c.get_program().to_owned();
        *c = {
            let mut sh = std::process::Command::new("bash");
            sh.arg("-c")
                .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" run --report json --phase pre-stop")
                .arg(program)
                .current_dir(s.dir.path())
                .env("LIFEHOOK_CACHE", crate::support::shared_cache());
            sh
        };
    });
    run.assert_outcome("save", "failed");
    assert!(
        run.message("save").contains("cannot write snapshot"),
        "{}",
        run.message("save")
    );
    assert_eq!(
        snapshots(&s),
        before,
        "a partial snapshot was left behind or replaced the good one"
    );
    assert_eq!(read(&before[0]), good);
}

#[test]
fn corrupt_newest_snapshot_is_skipped_for_the_previous_good_one() {
    let s = sandbox("read-write");
    save(&s).assert_outcome("save", "ok");
    s.write("app/main.db", "main database v2");
    save(&s).assert_outcome("save", "ok");
    let newest = snapshots(&s).remove(0);
    // Flip one byte of main.db's content inside the newest archive.
    let mut data = read(&newest);
    let at = data
        .windows(11)
        .position(|w| w == b"database v2")
        .expect("content");
    data[at] = b'X';
    std::fs::write(&newest, data).expect("corrupt");

    let run = restore(&s);
    run.assert_outcome("restore", "ok");
    let message = run.message("restore");
    assert!(
        message.contains("skipped 1 corrupt newer snapshot"),
        "{message}"
    );
    assert!(message.contains("does not match its SHA-256"), "{message}");
    assert_eq!(read(&s.path("restored/main.db")), b"main database v1");
}

#[test]
fn when_every_snapshot_is_corrupt_nothing_is_restored() {
    let s = sandbox("read-write");
    save(&s).assert_outcome("save", "ok");
    let only = snapshots(&s).remove(0);
    let data = read(&only);
    // Cut it short: the manifest at the end is lost.
    std::fs::write(&only, &data[..data.len() / 2]).expect("truncate");
    s.write("restored/main.db", "current");
    let run = restore(&s);
    run.assert_outcome("restore", "failed");
    assert!(
        run.message("restore").contains("every snapshot is corrupt"),
        "{}",
        run.message("restore")
    );
    assert_eq!(
        read(&s.path("restored/main.db")),
        b"current",
        "a corrupt snapshot was half-restored"
    );
    assert!(s.path("restored/wal").read_dir().is_err());
}

#[test]
fn nothing_to_restore_is_fine_unless_required() {
    let s = sandbox("read-write");
    let run = restore(&s);
    run.assert_outcome("restore", "ok");
    assert!(
        run.message("restore").starts_with("nothing to restore"),
        "{}",
        run.message("restore")
    );

    let toml = std::fs::read_to_string(s.path("lifehook.toml")).expect("pipeline");
    s.write(
        "lifehook.toml",
        toml.replace(
            "destination = \"/restored\" }",
            "destination = \"/restored\", required = true }",
        ),
    );
    restore(&s).assert_outcome("restore", "failed");
}

#[test]
fn snapshot_is_uploaded_with_put() {
    let server = TestServer::start();
    let s = sandbox("read-write");
    let toml = std::fs::read_to_string(s.path("lifehook.toml")).expect("pipeline");
    let toml = toml.replacen(
        "keep = 2 }",
        &format!(
            "keep = 2, upload-url = \"{}\" }}\nallow.http = [\"{}\"]",
            server.url("/bucket/state.tar"),
            server.origin()
        ),
        1,
    );
    s.write("lifehook.toml", toml);
    let run = save(&s);
    run.assert_outcome("save", "ok");
    assert!(
        run.message("save").contains("uploaded to"),
        "{}",
        run.message("save")
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].path, "/bucket/state.tar");
    let archive = read(&snapshots(&s)[0]);
    assert_eq!(requests[0].body, archive, "the upload is not the snapshot");
    // Object stores refuse chunked uploads: the length must be sent.
    assert_eq!(
        requests[0].header("content-length"),
        Some(archive.len().to_string().as_str())
    );
}
