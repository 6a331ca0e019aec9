//! One attempt of a plugin step: a fresh store with the step's sandbox and
//! limits, one call into the plugin bounded by the attempt's deadline, and
//! [`classify`], a pure function from what the call returned to an outcome.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lifehook_manifest::{Fuel, Step, TcpGrant};
use lifehook_units::format_duration;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::lifehook::hook::types::{Failure, Invocation};
use crate::load::plugin::{Plugin, Pre};
use crate::report::Outcome;
use crate::sandbox::state::{StepRecord, StepState};

/// What one attempt came to.
#[derive(Debug, PartialEq)]
pub(crate) struct AttemptResult {
    pub(crate) outcome: Outcome,
    /// The report's message: the plugin's summary, or why it failed.
    pub(crate) message: String,
    /// Whether another attempt may pass (see `step`'s retry rules). Only
    /// failures the plugin called retryable, failing commands and timeouts
    /// are: a limit reached or a grant missing fails the same way again.
    pub(crate) retryable: bool,
    /// The plugin's "not before" for the next attempt.
    pub(crate) retry_after: Option<Duration>,
    /// Fuel burned; `None` when the count cannot be trusted (an interrupt).
    pub(crate) fuel: Option<u64>,
}

impl AttemptResult {
    fn new(outcome: Outcome, message: String, retryable: bool) -> AttemptResult {
        AttemptResult {
            outcome,
            message,
            retryable,
            retry_after: None,
            fuel: None,
        }
    }
}

/// What a call into the plugin returned, before classification: a hook's
/// `result<string, failure>`, or a command's `wasi:cli/run` result (which
/// carries no reason; its exit code comes as an `I32Exit` error instead).
pub(crate) enum Returned {
    Hook(Result<String, Failure>),
    Command(Result<(), ()>),
}

/// How the call ended.
pub(crate) enum Ended {
    /// The attempt's deadline passed while the guest was blocked in a host
    /// call (the future was dropped).
    TimedOut,
    /// The call returned, trapped or was interrupted by its epoch deadline.
    Returned(wasmtime::Result<Returned>),
}

/// What besides the call's result decides the outcome. A limit or a denial
/// usually surfaces in the guest as some other error (an allocation that
/// fails, a connection refused), so the outcome is decided from what the
/// host saw, not from what the plugin made of it.
pub(crate) struct Evidence {
    pub(crate) timeout: Duration,
    pub(crate) fuel: Fuel,
    /// The total memory asked for when it went over the limit.
    pub(crate) memory_exceeded: Option<u64>,
    pub(crate) memory_limit: u64,
    /// The first thing the step tried without a grant.
    pub(crate) denial: Option<String>,
    /// The first cap on host resources the step reached.
    pub(crate) cap: Option<String>,
    /// The plugin's last stderr line.
    pub(crate) last_stderr: Option<String>,
}

/// Runs one attempt of `step`'s plugin until it returns or `deadline`.
/// Each attempt gets a fresh store and instance: nothing a failed attempt
/// left in memory (a poisoned global, half-built state) reaches the next,
/// and instantiating from the pre-instantiated component costs
/// microseconds.
pub(crate) async fn run(
    plugin: &Plugin,
    step: &Step,
    invocation: &Invocation,
    deadline: Instant,
    record: &StepRecord,
) -> AttemptResult {
    // Names in TCP grants are resolved per attempt (a Service's address may
    // change between attempts), within the attempt's own deadline.
    let tcp = match tokio::time::timeout_at(deadline.into(), resolve_tcp(&step.grants.tcp)).await {
        Ok(addrs) => addrs,
        Err(_) => {
            return AttemptResult::new(
                Outcome::TimedOut,
                "timed out resolving the step's TCP grants".into(),
                true,
            );
        }
    };
    let state = match StepState::new(step, tcp, deadline, record) {
        Ok(state) => state,
        Err(e) => return AttemptResult::new(Outcome::Failed, format!("{e:#}"), false),
    };
    let mut store = Store::new(&plugin.engine, state);
    store.limiter(|s| &mut s.limiter);
    // Fuel is always consumed (the engine is built so, and artifacts must
    // match it); "unlimited" is the largest budget rather than none.
    let fuel = match step.limits.fuel {
        Fuel::Limited(n) => n,
        Fuel::Unlimited => u64::MAX,
    };
    if let Err(e) = store.set_fuel(fuel) {
        return AttemptResult::new(Outcome::Failed, format!("cannot set fuel: {e}"), false);
    }
    if plugin.baseline {
        // Baseline code has no epoch checks: it yields every so much fuel,
        // and the deadline below stops it at a yield.
        if let Err(e) = store.fuel_async_yield_interval(Some(crate::engine::BASELINE_YIELD_FUEL)) {
            return AttemptResult::new(
                Outcome::Failed,
                format!("cannot set fuel yields: {e}"),
                false,
            );
        }
    } else {
        // At every epoch tick: stop the guest when its deadline has passed,
        // otherwise yield so timers and concurrent steps make progress.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
    }

    let call = async {
        match &plugin.pre {
            Pre::Hook(pre) => {
                let hook = pre.instantiate_async(&mut store).await?;
                hook.call_run(&mut store, invocation)
                    .await
                    .map(Returned::Hook)
            }
            Pre::Command(pre) => {
                let command = pre.instantiate_async(&mut store).await?;
                command
                    .wasi_cli_run()
                    .call_run(&mut store)
                    .await
                    .map(Returned::Command)
            }
        }
    };
    // Two stops for one deadline: the epoch callback (or fuel yields) for
    // a guest that computes, this timeout for one blocked in a host call
    // (an HTTP request, a sleep), whose future is then dropped.
    let ended = match tokio::time::timeout_at(deadline.into(), call).await {
        Ok(returned) => Ended::Returned(returned),
        Err(_) => Ended::TimedOut,
    };
    // Fuel is exact after a normal return, a trap or out-of-fuel. After a
    // timeout it is not: an epoch interrupt (or dropping the call mid-loop)
    // leaves the store's counter behind what the loop burned, so report it
    // as unknown rather than as a wrong number.
    let interrupted = match &ended {
        Ended::TimedOut => true,
        Ended::Returned(Err(e)) => matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)),
        Ended::Returned(Ok(_)) => false,
    };
    let fuel_used = (!interrupted)
        .then(|| store.get_fuel().ok().map(|left| fuel - left))
        .flatten();
    let memory = &store.data().limiter;
    let evidence = Evidence {
        timeout: step.limits.timeout,
        fuel: step.limits.fuel,
        memory_exceeded: memory.exceeded,
        memory_limit: memory.limit(),
        denial: record.denials.first(),
        cap: record.caps.first(),
        last_stderr: record.output.last_stderr_line(),
    };
    let mut result = classify(ended, &evidence);
    result.fuel = fuel_used;
    result
}

/// The outcome of an attempt, from how the call ended and what was seen
/// around it. A failure after a denied access is reported as `denied`: the
/// missing grant, not the plugin's own message, is what to fix.
pub(crate) fn classify(ended: Ended, evidence: &Evidence) -> AttemptResult {
    let with_stderr = |message: String| match &evidence.last_stderr {
        Some(line) => format!("{message}: {line}"),
        None => message,
    };
    // What the sandbox refused explains a failure better than the
    // plugin's own words: a cap reached first, then a denial.
    let denied_or = |outcome: Outcome, message: String, retryable: bool| match (
        &evidence.cap,
        &evidence.denial,
    ) {
        (Some(cap), _) => AttemptResult::new(
            Outcome::Capped,
            format!("{cap}; the plugin said: {message}"),
            false,
        ),
        (None, Some(denial)) => AttemptResult::new(
            Outcome::Denied,
            format!("{denial}; the plugin said: {message}"),
            false,
        ),
        (None, None) => AttemptResult::new(outcome, message, retryable),
    };
    // A command cannot say whether trying again helps; assume it may.
    let command_failed = |code: i32| {
        denied_or(
            Outcome::Failed,
            with_stderr(format!("exited with code {code}")),
            true,
        )
    };
    let timed_out = || {
        AttemptResult::new(
            Outcome::TimedOut,
            format!(
                "stopped after its timeout of {}",
                format_duration(evidence.timeout)
            ),
            true,
        )
    };
    // Over the memory limit first: a refused growth makes the guest trap or
    // fail in its own words, which would hide the real cause.
    if let Some(asked) = evidence.memory_exceeded {
        return AttemptResult::new(
            Outcome::OutOfMemory,
            format!(
                "memory limit of {} reached (the plugin asked for {} in all); raise `memory` if this is expected",
                mib(evidence.memory_limit),
                mib(asked)
            ),
            false,
        );
    }
    let returned = match ended {
        Ended::TimedOut => return timed_out(),
        Ended::Returned(r) => r,
    };
    let e = match returned {
        Ok(Returned::Hook(Ok(summary))) => return AttemptResult::new(Outcome::Ok, summary, false),
        Ok(Returned::Command(Ok(()))) => {
            return AttemptResult::new(Outcome::Ok, "exited with code 0".into(), false);
        }
        Ok(Returned::Hook(Err(failure))) => {
            let mut result = denied_or(Outcome::Failed, failure.message, failure.retryable);
            if result.outcome == Outcome::Failed {
                result.retry_after = failure.retry_after_ms.map(Duration::from_millis);
            }
            return result;
        }
        Ok(Returned::Command(Err(()))) => return command_failed(1),
        Err(e) => e,
    };
    // `exit(n)` from a command (or a hook that called it) arrives as an
    // error carrying the code; zero is a success like any other.
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return match exit.0 {
            0 => AttemptResult::new(Outcome::Ok, "exited with code 0".into(), false),
            code => command_failed(code),
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => AttemptResult::new(
            Outcome::OutOfFuel,
            format!(
                "fuel limit of {} exhausted; raise `fuel` if this is expected",
                evidence.fuel
            ),
            false,
        ),
        Some(Trap::Interrupt) => timed_out(),
        Some(trap) => {
            let hint = match trap {
                Trap::StackOverflow => " (unbounded recursion?)",
                Trap::MemoryOutOfBounds => {
                    " (a plugin overflowing its own stack ends like this too)"
                }
                _ => "",
            };
            denied_or(
                Outcome::Trapped,
                with_stderr(format!("{trap}{hint}")),
                false,
            )
        }
        None => denied_or(Outcome::Failed, with_stderr(format!("{e:#}")), false),
    }
}

/// Bytes as MiB with one decimal, as the memory messages say them.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Resolves TCP grants to the addresses a plugin may connect to, each
/// beside its grant. A name that does not resolve is logged and grants
/// nothing.
async fn resolve_tcp(grants: &[TcpGrant]) -> Vec<(&TcpGrant, Vec<SocketAddr>)> {
    let mut out = Vec::new();
    for g in grants {
        match tokio::net::lookup_host((g.host.as_str(), g.port)).await {
            Ok(addrs) => out.push((g, addrs.collect())),
            Err(e) => {
                tracing::warn!("TCP grant {g} does not resolve: {e}");
                out.push((g, Vec::new()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence() -> Evidence {
        Evidence {
            timeout: Duration::from_secs(2),
            fuel: Fuel::Limited(1000),
            memory_exceeded: None,
            memory_limit: 1 << 20,
            denial: None,
            cap: None,
            last_stderr: None,
        }
    }

    fn trap(t: Trap) -> Ended {
        Ended::Returned(Err(wasmtime::Error::new(t)))
    }

    fn failure(message: &str, retryable: bool, retry_after_ms: Option<u64>) -> Ended {
        Ended::Returned(Ok(Returned::Hook(Err(Failure {
            message: message.into(),
            retryable,
            retry_after_ms,
        }))))
    }

    #[test]
    fn success_and_plugin_failures_keep_the_plugin_words() {
        let ok = classify(
            Ended::Returned(Ok(Returned::Hook(Ok("done".into())))),
            &evidence(),
        );
        assert_eq!((ok.outcome, ok.message.as_str()), (Outcome::Ok, "done"));
        let f = classify(failure("503", true, Some(1500)), &evidence());
        assert_eq!(f.outcome, Outcome::Failed);
        assert!(f.retryable);
        assert_eq!(f.retry_after, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn limits_are_named_with_what_to_raise() {
        let fuel = classify(trap(Trap::OutOfFuel), &evidence());
        assert_eq!(fuel.outcome, Outcome::OutOfFuel);
        assert!(
            fuel.message.contains("fuel limit of 1000 exhausted"),
            "{}",
            fuel.message
        );
        let time = classify(trap(Trap::Interrupt), &evidence());
        assert_eq!((time.outcome, time.retryable), (Outcome::TimedOut, true));
        assert_eq!(time.message, "stopped after its timeout of 2s");
        assert_eq!(classify(Ended::TimedOut, &evidence()), time);
        let mut e = evidence();
        e.memory_exceeded = Some(3 << 20);
        let memory = classify(trap(Trap::MemoryOutOfBounds), &e);
        assert_eq!(memory.outcome, Outcome::OutOfMemory);
        assert!(
            memory.message.contains("asked for 3.0 MiB"),
            "{}",
            memory.message
        );
        let stack = classify(trap(Trap::StackOverflow), &evidence());
        assert_eq!(stack.outcome, Outcome::Trapped);
        assert!(
            stack.message.contains("unbounded recursion"),
            "{}",
            stack.message
        );
    }

    #[test]
    fn a_denial_turns_a_failure_into_denied() {
        let mut e = evidence();
        e.denial = Some("denied HTTP GET http://x/".into());
        let d = classify(failure("request failed", true, Some(10)), &e);
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(!d.retryable);
        assert_eq!(d.retry_after, None);
        assert_eq!(
            d.message,
            "denied HTTP GET http://x/; the plugin said: request failed"
        );
    }

    #[test]
    fn a_cap_reached_explains_the_failure_before_a_denial() {
        let mut e = evidence();
        e.denial = Some("denied HTTP GET http://x/".into());
        e.cap = Some("the max-open cap of 256 was reached opening /data/f".into());
        let c = classify(failure("cannot open", true, None), &e);
        assert_eq!((c.outcome, c.retryable), (Outcome::Capped, false));
        assert!(
            c.message.starts_with("the max-open cap of 256"),
            "{}",
            c.message
        );
    }

    #[test]
    fn commands_end_by_exit_code_and_may_be_retried() {
        let ok = classify(
            Ended::Returned(Err(wasmtime::Error::new(wasmtime_wasi::I32Exit(0)))),
            &evidence(),
        );
        assert_eq!(ok.outcome, Outcome::Ok);
        let mut e = evidence();
        e.last_stderr = Some("no such file".into());
        let three = classify(
            Ended::Returned(Err(wasmtime::Error::new(wasmtime_wasi::I32Exit(3)))),
            &e,
        );
        assert_eq!((three.outcome, three.retryable), (Outcome::Failed, true));
        assert_eq!(three.message, "exited with code 3: no such file");
    }
}
