//! drain-connections: waits until the application's established TCP
//! connections end, but not before a minimum wait, polling
//! `/proc/net/tcp` and `/proc/net/tcp6`, which the step reads through an
//! ordinary read-only grant:
//!
//! ```toml
//! [[pre-stop.steps]]
//! name = "drain"
//! plugin = "/lifehook/plugins/drain_connections.wasm"
//! timeout = "20s"
//! allow.dirs = [{ host = "/proc/net", guest = "/proc/net" }]
//! config = { ports = [8080], min = "2s" }
//! ```
//!
//! In a pod `/proc/net` is the pod's network namespace, shared by all its
//! containers, so the same step works from a sidecar.
//!
//! Config keys:
//! - `ports`: the application's listening ports; default: every port in
//!   LISTEN state in the network namespace (found once, at the start).
//! - `min`: the least time to wait, for endpoint removal to reach every
//!   load balancer and kube-proxy (default `0s`).
//! - `poll`: how often to count (default `100ms`).
//! - `max-open`: the count that is low enough (default 0).
//! - `proc`: where the grant puts the tables (default `/proc/net`).
//!
//! Outcome: "42 -> 0 connections on :8080 in 3.2s (min 2s)". When the
//! attempt's time runs out first, a failure that is not retryable, with
//! the count still open.

mod tcp;

use std::time::{Duration, Instant};

use lifehook_sdk::{Failure, Hook, Invocation, config};

use tcp::Table;

/// Time kept at the end of the attempt to report rather than be cut.
const MARGIN: Duration = Duration::from_millis(50);

struct DrainConnections;

impl Hook for DrainConnections {
    fn run(_inv: Invocation) -> Result<String, Failure> {
        let started = Instant::now();
        let min = config::duration("min")?.unwrap_or(Duration::ZERO);
        let poll = config::duration("poll")?
            .unwrap_or(Duration::from_millis(100))
            .max(Duration::from_millis(10));
        let max_open = config::parse::<usize>("max-open")?.unwrap_or(0);
        let dir = config::get("proc").unwrap_or_else(|| "/proc/net".into());
        let table = Table::read(&dir)?;
        let ports = ports(&table)?;
        let shown = ports
            .iter()
            .map(|p| format!(":{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let first = table.established(&ports);
        let mut open = first;
        loop {
            let waited = started.elapsed();
            if waited >= min && open <= max_open {
                return Ok(format!(
                    "{first} -> {open} connections on {shown} in {} (min {})",
                    lifehook_units::format_duration(waited),
                    lifehook_units::format_duration(min)
                ));
            }
            let left = lifehook_sdk::time_left_now();
            // Sleep to the next poll, or to `min` if that comes sooner and
            // the count is already low enough.
            let until_min = min.saturating_sub(waited);
            let nap = if open <= max_open {
                until_min.min(poll)
            } else {
                poll
            };
            if left <= nap + MARGIN {
                return Err(Failure::fatal(format!(
                    "{} still open on {shown} after {} (from {first}; the step's time ran out{})",
                    connections(open),
                    lifehook_units::format_duration(waited),
                    if max_open > 0 {
                        format!("; max-open {max_open}")
                    } else {
                        String::new()
                    }
                )));
            }
            std::thread::sleep(nap);
            open = Table::read(&dir)?.established(&ports);
        }
    }
}

/// `1 connection`, `2 connections`.
fn connections(n: usize) -> String {
    if n == 1 {
        "1 connection".into()
    } else {
        format!("{n} connections")
    }
}

/// The ports to watch: `ports`, or every listening one.
fn ports(table: &Table) -> Result<Vec<u16>, Failure> {
    let given = config::list("ports");
    if given.is_empty() {
        let listening = table.listening();
        if listening.is_empty() {
            return Err(Failure::fatal(
                "no port is in LISTEN state in this network namespace, and config key `ports` is not set",
            ));
        }
        return Ok(listening);
    }
    given
        .iter()
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    Failure::fatal(format!("config key `ports`: {p:?} is not a port (1-65535)"))
                })
        })
        .collect()
}

lifehook_sdk::export!(DrainConnections);
