//! lifehook's own output: the report on stdout, the timeline, problems and
//! log lines on stderr. None of it may stop lifehook: a hook's caller that
//! hangs up (`| head`, a closed pipe, a collector gone away) or a descriptor
//! that was never open must not cost the application its stop signal, so
//! every write here ignores EPIPE, EIO and EBADF alike, and the exit code
//! stays the pipeline's (or the application's).

use std::io::Write as _;

/// Writes `text` to stdout and flushes it; errors are dropped (see above).
pub fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes `text` to stderr; errors are dropped (see above).
pub fn print_err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Prints problems to stderr the one way lifehook lists problems.
pub fn print_problems(problems: &[String]) {
    if !problems.is_empty() {
        print_err(&format!(
            "{}\n",
            lifehook_manifest::render_problems(problems)
        ));
    }
}

/// Points standard input, output and error at `/dev/null` where they are
/// closed, before anything else opens a file. A closed descriptor 1 would
/// otherwise be handed to the next file lifehook opens (a log file, a
/// plugin, a lock), and the report would be written into it; and the
/// application under `exec` inherits the same three descriptors.
pub fn reopen_closed_stdio() {
    for fd in 0..=2 {
        if !is_open(fd) {
            // The lowest free descriptor is `fd`, as the ones below it are
            // open by now.
            open_dev_null(fd);
        }
    }
}

#[expect(unsafe_code, reason = "fcntl(F_GETFD) on a raw descriptor number")]
fn is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is a
    // valid argument (a closed one fails with EBADF).
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

#[expect(unsafe_code, reason = "open and dup2 with a constant path")]
fn open_dev_null(fd: i32) {
    // SAFETY: the path is a NUL-terminated constant; the new descriptor is
    // moved onto `fd` (already there when it was the lowest free one) and
    // otherwise closed, so nothing is leaked or closed twice.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 && null != fd {
            libc::dup2(null, fd);
            libc::close(null);
        }
    }
}
