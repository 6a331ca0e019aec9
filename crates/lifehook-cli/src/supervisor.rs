//! The application under `lifehook exec`: started in a process group of its
//! own, signalled as a group, and reaped, along with every orphan that lands
//! on lifehook (as PID 1, or as a child subreaper elsewhere), so that no
//! zombie is left behind: the duties of tini and dumb-init.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use rustix::process::{Pid, Signal, WaitOptions};

/// How the application ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
}

impl Ended {
    /// The exit code a shell would report: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Killed(signal) => 128 + signal,
        }
    }

    /// How it ended, for the timeline.
    pub fn describe(self) -> String {
        match self {
            Ended::Exited(code) => format!("exited with code {code}"),
            Ended::Killed(signal) => format!("was killed by {}", signal_name(signal)),
        }
    }
}

/// The application process.
pub struct App {
    pid: Pid,
    /// The terminal the application was given, to take back when it ends.
    terminal: Option<Terminal>,
}

/// Standard input is a terminal whose foreground process group was
/// lifehook's own: interactive use (`docker run -it`, `podman run -it`).
/// The application's group is made the foreground group, so that it can
/// read the terminal (a background group that reads gets SIGTTIN and
/// stops) and so that the keys ^C, ^\ and ^Z reach it, as under a shell or
/// tini; the terminal goes back to lifehook's group when the application
/// ends.
struct Terminal {
    /// lifehook's own process group, the foreground group before.
    own_group: Pid,
}

impl Terminal {
    /// The terminal on standard input, if lifehook's group holds it.
    fn ours() -> Option<Terminal> {
        let stdin = std::io::stdin();
        if !rustix::termios::isatty(&stdin) {
            return None;
        }
        let own_group = rustix::process::getpgrp();
        let foreground = rustix::termios::tcgetpgrp(&stdin).ok()?;
        if foreground != own_group {
            return None;
        }
        // A process outside the foreground group that sets the foreground
        // group (or writes its timeline with TOSTOP set) gets SIGTTOU,
        // which would stop lifehook: it ignores both job-control signals
        // from now on. The application gets them back in `hand_over`.
        ignore_job_control_signals();
        Some(Terminal { own_group })
    }

    /// The foreground group back to lifehook's own.
    fn take_back(&self) {
        if let Err(e) = rustix::termios::tcsetpgrp(std::io::stdin(), self.own_group) {
            tracing::debug!("cannot take the terminal back: {e}");
        }
    }
}

#[expect(unsafe_code, reason = "signal() with SIG_IGN takes no pointers")]
fn ignore_job_control_signals() {
    // SAFETY: setting a disposition to SIG_IGN installs no handler.
    unsafe {
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
}

/// In the application's process, between fork and exec: take the terminal
/// for its new group and restore the job-control signals lifehook ignores
/// (ignored dispositions survive exec).
#[expect(
    unsafe_code,
    reason = "pre_exec runs between fork and exec; tcsetpgrp, getpgrp and signal are async-signal-safe"
)]
fn hand_over(command: &mut Command) {
    // SAFETY: the closure calls only async-signal-safe functions and
    // allocates nothing.
    unsafe {
        command.pre_exec(|| {
            // Failing here (another session's terminal) leaves the app in
            // the background, as it was before: not a reason not to start.
            libc::tcsetpgrp(0, libc::getpgrp());
            libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            libc::signal(libc::SIGTTIN, libc::SIG_DFL);
            Ok(())
        });
    }
}

/// Makes this process the reaper of orphans in its subtree (PID 1 is
/// already). Failure only means orphans go to PID 1 instead.
pub fn become_subreaper() {
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::debug!("cannot become a child subreaper: {e}");
    }
}

impl App {
    /// Starts `command` in a new process group, with lifehook's stdio;
    /// when standard input is lifehook's terminal, the new group gets it
    /// (see [`Terminal`]).
    pub fn start(command: &[OsString]) -> std::io::Result<App> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| std::io::Error::other("no command given"))?;
        let mut cmd = Command::new(program);
        cmd.args(args).process_group(0);
        let terminal = Terminal::ours();
        if terminal.is_some() {
            hand_over(&mut cmd);
        }
        let child = cmd.spawn().inspect_err(|_| {
            if let Some(t) = &terminal {
                t.take_back();
            }
        })?;
        let pid = Pid::from_child(&child);
        if terminal.is_some() {
            // Also from this side, as shells do: whichever of the two runs
            // first, the group holds the terminal before the app reads it.
            let _ = rustix::termios::tcsetpgrp(std::io::stdin(), pid);
        }
        Ok(App { pid, terminal })
    }

    /// Whether the application was given lifehook's terminal.
    pub fn has_terminal(&self) -> bool {
        self.terminal.is_some()
    }

    /// Gives the terminal back to lifehook's group once the application
    /// has ended (a no-op without one).
    pub fn release_terminal(&self) {
        if let Some(t) = &self.terminal {
            t.take_back();
        }
    }

    /// The application's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Sends `signal` to the application's whole process group. A group
    /// that is already gone is not an error.
    pub fn signal_group(&self, signal: i32) {
        let Some(signal) = Signal::from_named_raw(signal) else {
            return;
        };
        match rustix::process::kill_process_group(self.pid, signal) {
            Ok(()) => {}
            Err(rustix::io::Errno::SRCH) => {}
            Err(e) => tracing::warn!("cannot signal the application's process group: {e}"),
        }
    }

    /// Reaps every child that has ended; returns how the application ended
    /// if it is among them. Call on every SIGCHLD.
    pub fn reap(&self) -> Option<Ended> {
        let mut app = None;
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    if pid == self.pid {
                        app = match (status.exit_status(), status.terminating_signal()) {
                            (Some(code), _) => Some(Ended::Exited(code)),
                            (None, Some(signal)) => Some(Ended::Killed(signal)),
                            (None, None) => None,
                        };
                    } else {
                        tracing::debug!("reaped orphan {}", pid.as_raw_nonzero());
                    }
                }
                // No child has ended (Ok(None)) or there is no child at all.
                Ok(None) | Err(_) => return app,
            }
        }
    }
}

/// `SIGTERM` for 15, and so on.
pub fn signal_name(signal: i32) -> String {
    SIGNALS.iter().find(|(_, n)| *n == signal).map_or_else(
        || format!("signal {signal}"),
        |(name, _)| format!("SIG{name}"),
    )
}

/// The signal called `name` (without `SIG`, upper case).
pub fn signal_by_name(name: &str) -> Option<i32> {
    SIGNALS.iter().find(|(n, _)| *n == name).map(|&(_, s)| s)
}

/// The signals lifehook names, by the platform's numbers.
const SIGNALS: [(&str, i32); 13] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("PWR", libc::SIGPWR),
    ("PIPE", libc::SIGPIPE),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Ended::Exited(3).code(), 3);
        assert_eq!(Ended::Killed(15).code(), 143);
        assert_eq!(Ended::Killed(9).describe(), "was killed by SIGKILL");
    }

    #[test]
    fn a_group_is_started_signalled_and_reaped() {
        let app = App::start(&["sleep".into(), "30".into()]).expect("start sleep");
        assert_eq!(app.reap(), None, "still running");
        app.signal_group(15);
        let mut ended = None;
        for _ in 0..200 {
            ended = app.reap();
            if ended.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(ended, Some(Ended::Killed(15)));
    }
}
