//! `/readyz`: 200 while the application should get traffic, 503 before
//! (post-start still running, as Kubernetes keeps a container unready
//! until its postStart hook ends) and from the moment it is stopping (a
//! pre-stop trigger reaching `serve`, the stop signal reaching `exec`), so
//! that a `readinessProbe` or a load balancer's health check pointed at it
//! takes the pod out of rotation before the drain starts. A 503's body
//! says what the stop has got to.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use lifehook_units::format_duration;

/// Whether the application is ready, and since when it is not.
pub struct Readiness {
    state: Mutex<State>,
}

enum State {
    /// Not ready yet: what it waits for.
    Starting(String),
    Ready,
    /// Not ready any more: since when, and what the stop is doing.
    Stopping(Instant, String),
}

impl Readiness {
    /// Ready from the start.
    pub fn ready() -> Readiness {
        Readiness {
            state: Mutex::new(State::Ready),
        }
    }

    /// Not ready until [`Readiness::started`]: waiting for `what`.
    pub fn starting(what: impl Into<String>) -> Readiness {
        Readiness {
            state: Mutex::new(State::Starting(what.into())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ready, unless it is stopping already.
    pub fn started(&self) {
        let mut state = self.lock();
        if matches!(*state, State::Starting(_)) {
            *state = State::Ready;
        }
    }

    /// From now on (or still) not ready, with `what` the stop is doing.
    pub fn stopping(&self, what: impl Into<String>) {
        let mut state = self.lock();
        let since = match &*state {
            State::Stopping(since, _) => *since,
            _ => Instant::now(),
        };
        *state = State::Stopping(since, what.into());
    }

    /// The answer to `GET /readyz`: ready, or why not.
    pub fn answer(&self) -> Result<&'static str, String> {
        match &*self.lock() {
            State::Ready => Ok("ready\n"),
            State::Starting(what) => Err(format!("not ready yet: {what}\n")),
            State::Stopping(since, what) => Err(format!(
                "not ready: stopping for {}: {what}\n",
                format_duration(since.elapsed())
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_stopping_then_what_the_stop_got_to() {
        let r = Readiness::starting("post-start running");
        assert_eq!(
            r.answer(),
            Err("not ready yet: post-start running\n".into())
        );
        r.started();
        assert_eq!(r.answer(), Ok("ready\n"));
        r.stopping("pre-stop running");
        let first = r.answer().expect_err("not ready");
        assert!(first.starts_with("not ready: stopping for "), "{first}");
        assert!(first.ends_with(": pre-stop running\n"), "{first}");
        r.stopping("pre-stop ok");
        r.started();
        assert!(
            r.answer()
                .expect_err("still not ready")
                .ends_with(": pre-stop ok\n")
        );
    }
}
