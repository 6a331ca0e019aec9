//! A stand-in application for lifehook's tests, built from source (and
//! statically, for `FROM scratch` images). Everything it sees goes to an
//! event file, one `<unix ms> <event>` line each, so a test can read back
//! what happened and in which order.
//!
//! ```text
//! test-app [--events FILE] [--state FILE] [--serve ADDR] [--wait-for FILE]
//!          [--exit-on-term CODE] [--ignore-term] [--orphan] [--exit-after MS CODE]
//! ```
//! - `--events FILE`: append `start`, each signal by name, `read <text>`,
//!   `exit <code>`.
//! - `--state FILE`: overwrite FILE in place with a growing counter (12
//!   digits) every 50 ms.
//! - `--serve ADDR`: answer every HTTP request with the state file.
//! - `--wait-for FILE`: once FILE exists, record `read <its contents>`.
//! - `--exit-on-term CODE`: exit with CODE on SIGTERM or SIGINT (default 0).
//! - `--ignore-term`: record SIGTERM and SIGINT but keep running.
//! - `--orphan`: start a child that starts a grandchild (living 200 ms) and
//!   exits at once, leaving the grandchild to be reaped by whoever reaps
//!   orphans.
//! - `--exit-after MS CODE`: exit with CODE after MS milliseconds.
//!
//! `test-app --peak-rss FILE COMMAND [ARGS]...` runs COMMAND with this
//! process's stdio and directory, writes its peak RSS in KiB to FILE and
//! exits with its code. A test measuring a child's memory starts it this
//! way: a child the test process spawns itself inherits the test process's
//! own high-water mark at `exec` (Linux carries the old address space's
//! peak into `ru_maxrss`), so with other tests running it read 200 MiB for
//! a process that peaked at 22.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};

#[derive(Default)]
struct Options {
    events: Option<PathBuf>,
    state: Option<PathBuf>,
    serve: Option<String>,
    wait_for: Option<PathBuf>,
    exit_on_term: i32,
    ignore_term: bool,
    orphan: bool,
    exit_after: Option<(u64, i32)>,
    spawn_and_exit: bool,
}

fn parse() -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = std::env::args().skip(1);
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next().ok_or_else(|| format!("{flag} needs a value"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => o.events = Some(value(&mut args, &arg)?.into()),
            "--state" => o.state = Some(value(&mut args, &arg)?.into()),
            "--serve" => o.serve = Some(value(&mut args, &arg)?),
            "--wait-for" => o.wait_for = Some(value(&mut args, &arg)?.into()),
            "--exit-on-term" => {
                o.exit_on_term = value(&mut args, &arg)?
                    .parse()
                    .map_err(|e| format!("{arg}: {e}"))?;
            }
            "--ignore-term" => o.ignore_term = true,
            "--orphan" => o.orphan = true,
            "--spawn-and-exit" => o.spawn_and_exit = true,
            "--exit-after" => {
                let ms = value(&mut args, &arg)?
                    .parse()
                    .map_err(|e| format!("{arg}: {e}"))?;
                let code = value(&mut args, &arg)?
                    .parse()
                    .map_err(|e| format!("{arg}: {e}"))?;
                o.exit_after = Some((ms, code));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn record(events: Option<&Path>, event: &str) {
    let Some(path) = events else { return };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{} {event}", now_ms());
        let _ = f.sync_data();
    }
    println!("test-app: {event}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--peak-rss") {
        std::process::exit(peak_rss(&args[2..]));
    }
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("test-app: {e}");
            std::process::exit(2);
        }
    };
    let me = std::env::current_exe().unwrap_or_else(|_| "test-app".into());
    if o.spawn_and_exit {
        let _ = std::process::Command::new(&me)
            .args(["--exit-after", "200", "0"])
            .spawn();
        return;
    }
    if let Some((ms, code)) = o.exit_after {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::exit(code);
    }
    let events = o.events.clone();
    // Handlers first: a test that sees `start` may signal at once, and a
    // SIGTERM before the handlers would kill the app with the default
    // action instead of being recorded.
    let mut signals = match signal_hook::iterator::Signals::new([
        SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("test-app: cannot install signal handlers: {e}");
            std::process::exit(2);
        }
    };
    record(events.as_deref(), "start");
    if o.orphan
        && let Ok(mut child) = std::process::Command::new(&me)
            .arg("--spawn-and-exit")
            .spawn()
    {
        let _ = child.wait();
    }
    if let Some(state) = o.state.clone() {
        std::thread::spawn(move || {
            for n in 0u64.. {
                // Overwritten in place at a fixed width, never truncated: a
                // snapshot taken at any moment holds a whole counter (a
                // truncate-then-write left an empty file in one window).
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&state)
                    .and_then(|mut f| f.write_all(format!("{n:012}\n").as_bytes()));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    if let Some(addr) = o.serve.clone() {
        let state = o.state.clone();
        std::thread::spawn(move || serve(&addr, state.as_deref()));
    }
    if let Some(file) = o.wait_for.clone() {
        let events = events.clone();
        std::thread::spawn(move || {
            loop {
                if let Ok(text) = std::fs::read_to_string(&file) {
                    record(events.as_deref(), &format!("read {}", text.trim()));
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
    for signal in signals.forever() {
        let name = match signal {
            SIGTERM => "SIGTERM",
            SIGINT => "SIGINT",
            SIGQUIT => "SIGQUIT",
            SIGHUP => "SIGHUP",
            SIGUSR1 => "SIGUSR1",
            SIGUSR2 => "SIGUSR2",
            SIGWINCH => "SIGWINCH",
            _ => "signal",
        };
        record(events.as_deref(), name);
        if matches!(signal, SIGTERM | SIGINT) && !o.ignore_term {
            record(events.as_deref(), &format!("exit {}", o.exit_on_term));
            std::process::exit(o.exit_on_term);
        }
    }
}

/// `--peak-rss FILE COMMAND [ARGS]...`: the exit code to leave with.
fn peak_rss(args: &[String]) -> i32 {
    let [file, program, rest @ ..] = args else {
        eprintln!("test-app: --peak-rss needs FILE COMMAND [ARGS]...");
        return 2;
    };
    let status = match std::process::Command::new(program).args(rest).status() {
        Ok(status) => status,
        Err(e) => {
            eprintln!("test-app: cannot start {program}: {e}");
            return 2;
        }
    };
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[expect(unsafe_code, reason = "getrusage is how a child's peak RSS is read")]
    // SAFETY: getrusage writes a complete `rusage` into the pointer.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) != 0 {
            eprintln!("test-app: getrusage failed");
            return 2;
        }
        usage.assume_init()
    };
    if let Err(e) = std::fs::write(file, usage.ru_maxrss.to_string()) {
        eprintln!("test-app: cannot write {file}: {e}");
        return 2;
    }
    std::os::unix::process::ExitStatusExt::signal(&status)
        .map_or(status.code().unwrap_or(2), |s| 128 + s)
}

/// Answers every request with the state file's contents.
fn serve(addr: &str, state: Option<&Path>) {
    let Ok(listener) = std::net::TcpListener::bind(addr) else {
        eprintln!("test-app: cannot listen on {addr}");
        return;
    };
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let body = state
            .and_then(|s| std::fs::read(s).ok())
            .unwrap_or_default();
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(&body);
    }
}
