//! Developer tasks, run as `cargo xtask <task>` (an alias in
//! `.cargo/config.toml`). Each installs what it needs on a fresh machine
//! that has only the Rust toolchain (and, for `test`, Debian's apt).
//!
//! - `demo`: builds lifehook and the sample plugins, starts a local HTTP
//!   receiver, and runs the example pre-stop pipeline against it: the
//!   receiver is notified, state is snapshotted, a file lock is released.
//! - `test`: installs the wasm32-wasip2 target, redis-server and etcd, then
//!   runs every test: `cargo test --workspace`, the runtime-only build's
//!   test, and the plugins' own unit tests on the host.
//! - `bench`: builds the release binary and measures it with hyperfine
//!   (see `bench.rs`).
//! - `dist`: the release binaries for x86-64 and arm64 (full and
//!   runtime-only), the lifehook images as OCI archives, and `SHA256SUMS`,
//!   in `target/dist/` (see `ship.rs`).
//! - `static`: builds the static binaries the container, image and arm64
//!   tests run, and prints the variables that pass them to those tests.

mod bench;
mod serve_bench;
mod ship;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> ExitCode {
    keep_out_of_pid_1();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("dist") => ship::dist(),
        Some("static") => ship::test_binaries().map(|built| {
            for (var, path) in built {
                println!("{var}={}", path.display());
            }
            0
        }),
        _ => {
            eprintln!(
                "usage: cargo xtask <demo | test [cargo test args] | bench [--quick] | dist | static>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// In a container, lifehook mirrors its log lines and reports to PID 1's
/// output by default. The machines this project is built and tested on
/// count as containers, and their PID 1 is the machine's: every lifehook
/// that xtask starts (the demo, the bench, the tests) runs with
/// `LIFEHOOK_LOG_FILE=none` unless told otherwise. The podman tests prove
/// the default inside containers of their own.
fn keep_out_of_pid_1() {
    if std::env::var_os("LIFEHOOK_LOG_FILE").is_none() {
        #[expect(unsafe_code, reason = "set_var before any other thread starts")]
        // SAFETY: called first thing in `main`, while this process has one
        // thread, so nothing reads the environment concurrently.
        unsafe {
            std::env::set_var("LIFEHOOK_LOG_FILE", "none");
        }
    }
}

/// The repository root (this crate is `crates/xtask`).
fn root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Runs a command in the repository root, failing on a non-zero exit.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `rustup target add` is not automatic on these machines.
fn ensure_wasm_target() -> anyhow::Result<()> {
    ensure_target(WASM_TARGET)
}

/// Installs a rustup target when it is missing.
pub(crate) fn ensure_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        eprintln!("xtask: installing the {target} target");
        run(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// Builds the sample plugins into `target/plugins` (shared with the tests'
/// build script).
fn build_plugins() -> anyhow::Result<PathBuf> {
    let target_dir = root().join("target/plugins");
    run(cargo()
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(root().join("plugins/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir))?;
    Ok(target_dir.join(WASM_TARGET).join("release"))
}

/// Builds the `lifehook` binary (dev profile, shared with the tests).
fn build_lifehook() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--package", "lifehook-cli", "--bin", "lifehook"]))?;
    Ok(root().join("target/debug/lifehook"))
}

/// A binary on PATH, or (an absolute path) a file a package installs.
fn is_installed(binary: &str) -> bool {
    if binary.starts_with('/') {
        return Path::new(binary).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
}

/// Installs Debian packages when their binaries are missing.
fn ensure_packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(binary, _)| !is_installed(binary))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_installed("apt-get") {
        bail!(
            "the tests need {} and there is no apt-get here: install them with your package manager",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root_user {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    apt(&["update", "-qq"])?;
    // With recommends: podman needs some of its own (networking, storage).
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(&missing);
    apt(&install)
}

fn test(extra: &[String]) -> anyhow::Result<u8> {
    ensure_wasm_target()?;
    ensure_packages(&[
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
        ("etcd", "etcd-server"),
        ("podman", "podman"),
        ("runc", "runc"),
        ("musl-gcc", "musl-tools"),
        ("docker-registry", "docker-registry"),
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("qemu-aarch64-static", "qemu-user-static"),
        ("prometheus", "prometheus"),
        // C plugins (WASI preview 1) built from source by the tests.
        ("clang-16", "clang-16"),
        ("wasm-ld-16", "lld-16"),
        ("/usr/lib/wasm32-wasi/libc.a", "wasi-libc"),
        (
            "/usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a",
            "libclang-rt-16-dev-wasm32",
        ),
    ])?;
    // The test suite builds the plugins itself (tests/artifacts/build.rs)
    // and starts its own servers on free loopback ports.
    // Every server is installed now: a test that finds one missing fails
    // rather than skipping (see tests/e2e/support's `require_server!`).
    run(cargo()
        .args(["test", "--workspace"])
        .args(extra)
        .env("LIFEHOOK_REQUIRE_SERVERS", "1"))?;
    let built = ship::test_binaries()?;
    // The runtime-only build, the arm64 binaries under qemu, the container
    // and image tests under podman.
    run(cargo()
        .args(["test", "--package", "lifehook-cli", "--test", "e2e"])
        .args(["--", "--ignored", "--test-threads", "2"])
        .args(["runtime_only", "cross_", "container_", "image_", "inject_"])
        .env("LIFEHOOK_REQUIRE_SERVERS", "1")
        .envs(built.iter().map(|(var, path)| (var, path))))?;
    // Plugins written in Python and JavaScript, built with componentize-py
    // (PyPI) and componentize-js (npm), pinned, installed under target/.
    let tools = install_language_tools()?;
    let python_plugin = build_python_plugin(&tools, "python-plugin", "hook", "drain")?;
    ignored_e2e_test("python_plugin", "LIFEHOOK_PYTHON_PLUGIN", &python_plugin)?;
    let readiness = build_python_plugin(&tools, "python-readiness", "hook-http", "wait_ready")?;
    let notify_js = build_js_plugin(&tools, "js-notify", "notify_js")?;
    run(cargo()
        .args(["test", "--package", "lifehook-cli", "--test", "e2e"])
        .args(["--", "--ignored", "--test-threads", "1", "languages_"])
        .env("LIFEHOOK_PYTHON_READINESS", &readiness)
        .env("LIFEHOOK_JS_NOTIFY", &notify_js)
        .env("LIFEHOOK_COMPONENTIZE_PY", &tools.componentize_py)
        .env("LIFEHOOK_COMPONENTIZE_JS", &tools.componentize_js)
        .env("LIFEHOOK_ZIG", &tools.zig))?;
    // OpenTelemetry exports, decoded by a receiver on the official
    // protobuf definitions (PyPI opentelemetry-proto, pinned, under target/).
    let otlp_python = install_otlp_receiver()?;
    ignored_e2e_test("otlp_", "LIFEHOOK_OTLP_PYTHON", &otlp_python)?;
    // The plugins' own unit tests (RESP parsing, snapshot paths, durations)
    // run on the host.
    run(cargo()
        .args(["test", "--manifest-path"])
        .arg(root().join("plugins/Cargo.toml"))
        .args(["--target", host_triple()?.as_str()])
        .args([
            "-p",
            "lifehook-snapshot",
            "-p",
            "lifehook-sdk",
            "-p",
            "release-lock",
            "-p",
            "drain-connections",
        ])
        .env("CARGO_TARGET_DIR", root().join("target/plugins-host")))?;
    Ok(0)
}

/// Runs the end-to-end tests named `name`, which are ignored by a plain
/// `cargo test` because they need `var` set to a path this command built.
fn ignored_e2e_test(name: &str, var: &str, value: &Path) -> anyhow::Result<()> {
    run(cargo()
        .args(["test", "--package", "lifehook-cli", "--test", "e2e"])
        .args(["--", "--ignored", name])
        .env("LIFEHOOK_REQUIRE_SERVERS", "1")
        .env(var, value))
}

/// componentize-py and componentize-js, pinned, installed once under
/// target/ (a second run finds them there).
struct LanguageTools {
    componentize_py: PathBuf,
    componentize_js: PathBuf,
    /// The command that runs Zig (`python -m ziglang`), as `ZIG` for the
    /// Zig scaffold's build.sh.
    zig: String,
}

const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
const ZIGLANG: &str = "ziglang==0.17.1";
const OPENTELEMETRY_PROTO: &str = "opentelemetry-proto==1.45.0";

/// A Python with `opentelemetry-proto`, for tests/otlp/receiver.py,
/// installed once under target/.
fn install_otlp_receiver() -> anyhow::Result<PathBuf> {
    let venv = root().join("target/otlp-venv");
    let python = venv.join("bin/python");
    let marker = venv.join(OPENTELEMETRY_PROTO);
    if !marker.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", OPENTELEMETRY_PROTO]))?;
        std::fs::write(&marker, "")?;
    }
    Ok(python)
}
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

fn install_language_tools() -> anyhow::Result<LanguageTools> {
    let venv = root().join("target/py-venv");
    let componentize_py = venv.join("bin/componentize-py");
    if !componentize_py.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", COMPONENTIZE_PY]))?;
    }
    let js = root().join("target/js-tools");
    let componentize_js = js.join("node_modules/.bin/componentize-js");
    if !componentize_js.is_file() {
        std::fs::create_dir_all(&js)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&js)
            .arg(COMPONENTIZE_JS))?;
    }
    let zig_venv = root().join("target/zig-venv");
    let zig_python = zig_venv.join("bin/python");
    if !zig_venv.join("bin/.ziglang-installed").is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&zig_venv))?;
        run(Command::new(zig_venv.join("bin/pip")).args(["install", "--quiet", ZIGLANG]))?;
        std::fs::write(zig_venv.join("bin/.ziglang-installed"), ZIGLANG)?;
    }
    Ok(LanguageTools {
        componentize_py,
        componentize_js,
        zig: format!("{} -m ziglang", zig_python.display()),
    })
}

/// Builds examples/`example` (app.py) against `world` into
/// target/language-plugins/`out`.wasm.
fn build_python_plugin(
    tools: &LanguageTools,
    example: &str,
    world: &str,
    out: &str,
) -> anyhow::Result<PathBuf> {
    let wasm = root().join(format!("target/language-plugins/{out}.wasm"));
    std::fs::create_dir_all(wasm.parent().context("output directory")?)?;
    run(Command::new(&tools.componentize_py)
        .args(["-d", "wit", "-w", world, "componentize", "-p"])
        .arg(format!("examples/{example}"))
        .args(["app", "-o"])
        .arg(&wasm))?;
    Ok(wasm)
}

/// Builds examples/`example`/app.js into target/language-plugins/`out`.wasm.
fn build_js_plugin(tools: &LanguageTools, example: &str, out: &str) -> anyhow::Result<PathBuf> {
    let wasm = root().join(format!("target/language-plugins/{out}.wasm"));
    std::fs::create_dir_all(wasm.parent().context("output directory")?)?;
    run(Command::new(&tools.componentize_js)
        .arg(format!("examples/{example}/app.js"))
        .args(["--wit", "wit", "-n", "hook", "-o"])
        .arg(&wasm))?;
    Ok(wasm)
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host triple")
}

/// What the demo receiver got.
type Received = Arc<Mutex<Vec<String>>>;

/// An HTTP server on a free loopback port that answers 204 to everything
/// and remembers what it was sent.
fn start_receiver() -> anyhow::Result<(String, Received)> {
    let server = tiny_http::Server::http("127.0.0.1:0")
        .map_err(|e| anyhow::anyhow!("cannot start the demo receiver: {e}"))?;
    let addr = server.server_addr().to_ip().context("receiver address")?;
    let received: Received = Arc::default();
    let log = received.clone();
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            if let Ok(mut log) = log.lock() {
                log.push(format!("{} {} {body}", request.method(), request.url()));
            }
            let _ = request.respond(tiny_http::Response::empty(204));
        }
    });
    Ok((format!("http://{addr}"), received))
}

fn demo() -> anyhow::Result<u8> {
    ensure_wasm_target()?;
    let plugins = build_plugins()?;
    let lifehook = build_lifehook()?;

    // The state the example pipeline works on, fresh each time.
    let work = root().join("target/demo");
    let _ = std::fs::remove_dir_all(&work);
    for dir in ["app/wal", "snapshots", "locks"] {
        std::fs::create_dir_all(work.join(dir))?;
    }
    std::fs::write(work.join("app/orders.db"), "orders: 42\n")?;
    std::fs::write(work.join("app/wal/000001.log"), "append-only log\n")?;
    std::fs::write(work.join("locks/leader.lock"), "demo-pod-0\n")?;

    let (origin, received) = start_receiver()?;
    let pipeline = root().join("examples/local/lifehook.toml");
    let lifehook_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&lifehook);
        cmd.args(args)
            .arg("-f")
            .arg(&pipeline)
            .env("LIFEHOOK_PLUGIN_DIR", &plugins)
            .env("LIFEHOOK_CACHE", work.join("cache"))
            // Done-markers in the demo's own (fresh) directory, so every
            // demo runs the phase.
            .env("LIFEHOOK_STATE_DIR", work.join("state"))
            .env("DEMO_DIR", &work)
            .env("NOTIFY_ORIGIN", &origin)
            .env("DEMO_PORT", origin.rsplit(':').next().unwrap_or("18080"))
            .env("POD_NAME", "demo-pod-0");
        cmd
    };
    // What an image build does once: compile the plugins ahead of time.
    println!("\n$ lifehook compile -f examples/local/lifehook.toml\n");
    run(&mut lifehook_cmd(&["compile"]))?;
    println!("\n$ lifehook run -f examples/local/lifehook.toml   (receiver on {origin})\n");
    let status = lifehook_cmd(&["run"])
        .status()
        .context("cannot run lifehook")?;

    // The kubelet may deliver a hook twice: the second delivery reports
    // the first and does nothing again.
    println!(
        "\n$ lifehook run -f examples/local/lifehook.toml   (the same hook, delivered again)\n"
    );
    let _ = lifehook_cmd(&["run"]).status();

    println!("\nWhat the pipeline did:");
    for line in received.lock().map(|l| l.clone()).unwrap_or_default() {
        println!("  receiver got: {line}");
    }
    for entry in std::fs::read_dir(work.join("snapshots"))?.flatten() {
        println!("  snapshot: {}", entry.path().display());
    }
    let lock = work.join("locks/leader.lock");
    println!(
        "  lock file {}: {}",
        lock.display(),
        if lock.exists() {
            "still held"
        } else {
            "released"
        }
    );
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's Layout section names every crate and every top-level
    /// module of each crate's `src/`, so a newcomer finds a room by its
    /// name there.
    #[test]
    fn the_readme_layout_names_every_crate_and_top_level_module() {
        let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
        let start = readme.find("## Layout").expect("a Layout section");
        let section = &readme[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let mut missing = Vec::new();
        let crates = std::fs::read_dir(root().join("crates")).expect("crates/");
        for krate in crates.flatten() {
            let name = krate.file_name().to_string_lossy().into_owned();
            if !section.contains(&format!("{name}/")) {
                missing.push(name.clone());
            }
            let Ok(src) = std::fs::read_dir(krate.path().join("src")) else {
                continue;
            };
            for entry in src.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let named = match file.strip_suffix(".rs") {
                    Some("lib" | "mod") => continue,
                    Some(_) => file.clone(),
                    None => format!("{file}/"),
                };
                if !section.contains(&named) {
                    missing.push(format!("{name}/src/{named}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "the README's Layout does not name {missing:?}"
        );
    }
}
