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
}

/// Makes this process the reaper of orphans in its subtree (PID 1 is
/// already). Failure only means orphans go to PID 1 instead.
pub fn become_subreaper() {
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::debug!("cannot become a child subreaper: {e}");
    }
}

impl App {
    /// Starts `command` in a new process group, with lifehook's stdio.
    pub fn start(command: &[OsString]) -> std::io::Result<App> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| std::io::Error::other("no command given"))?;
        let child = Command::new(program).args(args).process_group(0).spawn()?;
        Ok(App {
            pid: Pid::from_child(&child),
        })
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
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        12 => "SIGUSR2",
        15 => "SIGTERM",
        28 => "SIGWINCH",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

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
