//! `lifehook install DIR`: the installation it runs from (binary, plugins
//! beside it, precompiled cache) copied into DIR, whole files only, the exec
//! bit kept, a second time writing nothing, an older install's artifacts
//! replaced, and clear errors for a directory it cannot write.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::http::TestServer;
use crate::support::{Run, Sandbox, classic, plugins, run_command};

/// An installation laid out as in the lifehook image: `home/lifehook` (a
/// copy of the binary under test), `home/plugins/` (the sample plugins) and
/// `home/cache/` (their artifacts, compiled by that copy).
fn installation() -> (tempfile::TempDir, PathBuf) {
    let home = tempfile::tempdir().expect("home");
    let binary = home.path().join("lifehook");
    std::fs::copy(env!("CARGO_BIN_EXE_lifehook"), &binary).expect("copy the binary");
    std::fs::create_dir_all(home.path().join("plugins")).expect("plugins dir");
    let mut compile = Command::new(&binary);
    compile
        .args(["compile", "--cache"])
        .arg(home.path().join("cache"));
    for plugin in [
        plugins::NOTIFY_SHUTDOWN,
        plugins::SAVE_STATE,
        plugins::RELEASE_LOCK,
    ] {
        let to = home
            .path()
            .join("plugins")
            .join(Path::new(plugin).file_name().expect("name"));
        std::fs::copy(plugin, &to).expect("copy a plugin");
        compile.arg(to);
    }
    let compiled = run_command(compile);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    (home, binary)
}

fn install(binary: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(binary);
    cmd.arg("install").args(args).env_remove("LIFEHOOK_CACHE");
    run_command(cmd)
}

/// What `dir` holds, relative paths with their bytes.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(here) = pending.pop() {
        for entry in std::fs::read_dir(&here).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("inside").to_path_buf();
                found.push((rel, std::fs::read(&path).expect("read")));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn installs_binary_plugins_and_cache_that_then_run_precompiled() {
    let (home, binary) = installation();
    let target = tempfile::tempdir().expect("target");
    let dest = target.path().join("shared/lifehook");
    let first = install(&binary, &[dest.to_str().expect("utf-8")]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    for line in [
        "wrote     lifehook",
        "wrote     plugins/notify_shutdown.wasm",
        "wrote     cache/notify_shutdown-",
    ] {
        assert!(first.stdout.contains(line), "{line}:\n{}", first.stdout);
    }
    // The same files, byte for byte, the binary still runnable by all.
    let mut expected = contents(home.path());
    expected.retain(|(rel, _)| rel != Path::new("lifehook"));
    let mut copied = contents(&dest);
    copied.retain(|(rel, _)| rel != Path::new("lifehook"));
    assert_eq!(
        copied.iter().map(|(r, _)| r).collect::<Vec<_>>(),
        expected.iter().map(|(r, _)| r).collect::<Vec<_>>()
    );
    assert!(copied == expected, "the copies differ from the originals");
    assert_eq!(
        std::fs::read(dest.join("lifehook")).expect("binary"),
        std::fs::read(&binary).expect("original")
    );
    let mode = std::fs::metadata(dest.join("lifehook"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "{mode:o}");

    // The installed copy runs the classic pre-stop from what it was given.
    let server = TestServer::start();
    let s = Sandbox::new();
    classic::write(&s, &dest.join("plugins"), &server);
    let mut run = Command::new(dest.join("lifehook"));
    run.args(["run", "--report", "json", "--cache"])
        .arg(dest.join("cache"))
        .current_dir(s.dir.path())
        .env("LIFEHOOK_STATE_DIR", crate::support::fresh_state_dir());
    classic::assert_done(&run_command(run), &s, &server, "precompiled");

    // A second install writes nothing.
    let before = contents(&dest);
    let second = install(&binary, &[dest.to_str().expect("utf-8")]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(!second.stdout.contains("wrote"), "{}", second.stdout);
    assert!(
        second.stdout.contains("unchanged lifehook"),
        "{}",
        second.stdout
    );
    assert!(
        contents(&dest) == before,
        "the second install changed files"
    );
}

#[test]
fn installing_over_an_older_install_replaces_it_and_keeps_other_files() {
    let (_home, binary) = installation();
    let dest = tempfile::tempdir().expect("dest");
    let old_artifact = "notify_shutdown-00000000000000000000000000000000.cwasm";
    let write = |rel: &str, bytes: &[u8]| {
        let path = dest.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        std::fs::write(&path, bytes).expect("write");
    };
    write("lifehook", b"an older lifehook");
    write("plugins/notify_shutdown.wasm", b"an older plugin");
    write("plugins/mine.wasm", b"the user's own plugin");
    write(&format!("cache/{old_artifact}"), b"an older artifact");
    let run = install(&binary, &[dest.path().to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read(dest.path().join("lifehook")).expect("binary"),
        std::fs::read(&binary).expect("original")
    );
    assert_eq!(
        std::fs::read(dest.path().join("plugins/notify_shutdown.wasm")).expect("plugin"),
        std::fs::read(plugins::NOTIFY_SHUTDOWN).expect("original")
    );
    assert_eq!(
        std::fs::read(dest.path().join("plugins/mine.wasm")).expect("kept"),
        b"the user's own plugin"
    );
    assert!(!dest.path().join("cache").join(old_artifact).exists());
    assert!(
        run.stdout
            .contains(&format!("removed   cache/{old_artifact}")),
        "{}",
        run.stdout
    );
    assert!(
        !contents(dest.path())
            .iter()
            .any(|(rel, _)| rel.to_string_lossy().contains(".tmp")),
        "a temporary file was left"
    );
}

#[test]
fn binary_only_and_plugins_only_copy_their_part() {
    let (_home, binary) = installation();
    let only_binary = tempfile::tempdir().expect("dest");
    let run = install(
        &binary,
        &["--binary-only", only_binary.path().to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let names: Vec<_> = contents(only_binary.path())
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(names, [PathBuf::from("lifehook")]);

    let only_plugins = tempfile::tempdir().expect("dest");
    let run = install(
        &binary,
        &[
            "--plugins-only",
            only_plugins.path().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let names = contents(only_plugins.path());
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|(r, _)| r.starts_with("plugins") || r.starts_with("cache")),
        "{:?}",
        names.iter().map(|(r, _)| r).collect::<Vec<_>>()
    );
}

#[test]
fn installing_into_its_own_directory_is_refused() {
    let (home, binary) = installation();
    let run = install(&binary, &[home.path().to_str().expect("utf-8")]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("where this lifehook runs from"),
        "{}",
        run.stderr
    );
}

/// `lifehook install` into a tmpfs mounted in a mount namespace of its own
/// (so nothing is left mounted): `options` are the tmpfs's.
fn install_into_tmpfs(
    binary: &Path,
    size_kib: u64,
    options: &str,
    prepare: &str,
) -> (Run, tempfile::TempDir) {
    let mount = tempfile::tempdir().expect("mount point");
    let script = format!(
        "mount -t tmpfs -o size={size_kib}k tmpfs \"$1\" && {prepare} mount -o remount,{options} \"$1\" && \"$2\" install \"$1/lifehook\"; code=$?; ls -A \"$1/lifehook\" 2>&1; exit $code"
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(mount.path())
    .arg(binary);
    (run_command(cmd), mount)
}

#[test]
fn a_read_only_or_full_directory_is_a_clear_error_and_nothing_is_half_written() {
    if !crate::support::can_mount_in_a_namespace() {
        return;
    }
    let (home, binary) = installation();
    // Room for the plugins and the cache, not for the binary.
    let data: u64 = contents(home.path())
        .iter()
        .filter(|(rel, _)| rel != Path::new("lifehook"))
        .map(|(_, bytes)| bytes.len() as u64)
        .sum();
    let binary_size = std::fs::metadata(&binary).expect("binary").len();
    let size_kib = data / 1024 + 512;
    assert!(size_kib * 1024 < binary_size, "{data} {binary_size}");
    // Read-only: the directory cannot even be made.
    let (ro, _m) = install_into_tmpfs(&binary, size_kib, "ro", "");
    assert_ne!(ro.code, 0, "{}", ro.stdout);
    assert!(
        ro.stderr.contains("cannot create") && ro.stderr.contains("Read-only file system"),
        "{}",
        ro.stderr
    );
    // Read-only, the directory there from an earlier install: nothing
    // replaced, nothing left behind.
    let (ro, _m) = install_into_tmpfs(
        &binary,
        size_kib,
        "ro",
        "mkdir \"$1/lifehook\" && echo old > \"$1/lifehook/lifehook\" &&",
    );
    assert_ne!(ro.code, 0, "{}", ro.stdout);
    assert!(
        ro.stderr.contains("cannot write") && ro.stderr.contains("Read-only file system"),
        "{}",
        ro.stderr
    );
    // Full: the plugins and the cache fit, the binary does not.
    let (full, _m) = install_into_tmpfs(&binary, size_kib, "rw", "");
    assert_ne!(full.code, 0, "{}", full.stdout);
    assert!(
        full.stderr
            .contains("/lifehook/lifehook (nothing of it was left half-written)")
            && full.stderr.contains("No space left on device"),
        "{}",
        full.stderr
    );
    // `ls` of the install directory afterwards: the plugins and cache, no
    // binary, no temporary file.
    assert!(full.stdout.contains("plugins"), "{}", full.stdout);
    assert!(
        !full.stdout.contains(".tmp") && !full.stdout.lines().any(|l| l == "lifehook"),
        "{}",
        full.stdout
    );
}
