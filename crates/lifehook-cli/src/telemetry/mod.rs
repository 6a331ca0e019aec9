//! OpenTelemetry: each phase run's traces and metrics over OTLP/HTTP
//! (protobuf), when the `OTEL_*` variables or the pipeline's
//! `[telemetry]` table ask for it. Nothing is set up, read or sent
//! otherwise.
//!
//! Spans are built from the report once the phase has run (see `otlp`),
//! and both signals are sent at once, bounded: an export never takes
//! longer than [`BOUND`] after the report is printed nor runs past the
//! phase deadline, costs one warning when the collector refuses or does
//! not answer, and never changes the exit code.

mod config;
mod otlp;
mod send;

use std::time::{Duration, Instant, SystemTime};

use lifehook_manifest::Pipeline;
use lifehook_runtime::PhaseReport;
use lifehook_runtime::trace::TraceContext;
use prost::Message as _;

pub use config::Config;
pub use otlp::Run;

/// The longest an export may take.
pub const BOUND: Duration = Duration::from_millis(500);

/// A run's telemetry: where it goes (if anywhere) and its trace.
pub struct Telemetry {
    config: Option<Config>,
    trace: TraceContext,
}

impl Telemetry {
    /// The telemetry of a run of `pipeline`, continuing the trace of
    /// `parent` (a trigger's `traceparent`) when it is valid.
    pub fn new(pipeline: &Pipeline, parent: Option<&str>) -> Telemetry {
        let config = Config::new(&pipeline.telemetry, &|name| std::env::var(name).ok());
        let continued = parent
            .and_then(lifehook_runtime::trace::parse_traceparent)
            .is_some();
        // The steps' requests carry the trace only where it leads
        // somewhere: to spans exported, or to the caller's trace.
        let propagate = pipeline.telemetry.propagate.unwrap_or(true)
            && pipeline.telemetry.enabled != Some(false)
            && (config.as_ref().is_some_and(|c| c.traces.is_some()) || continued);
        // Ids are drawn only when something will carry them: a run that
        // exports nothing does not even read /dev/urandom.
        let trace = if config.is_some() || propagate {
            TraceContext::new(parent, propagate)
        } else {
            TraceContext {
                trace_id: [0; 16],
                span_id: [0; 8],
                parent_id: None,
                propagate: false,
            }
        };
        Telemetry { trace, config }
    }

    /// The trace context the runner puts on the steps' requests.
    pub fn trace(&self) -> Option<TraceContext> {
        (self.config.is_some() || self.trace.propagate).then_some(self.trace)
    }

    /// Whether anything is exported.
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Sends `report`'s spans and metrics, taking no longer than
    /// [`BOUND`] nor past `deadline`.
    pub async fn export(&self, report: &PhaseReport, by: &str, repeat: bool, deadline: Instant) {
        let Some(config) = &self.config else { return };
        let run = Run {
            report,
            trace: &self.trace,
            by,
            exit_code: crate::exit::exit_code(report.status),
            repeat,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(BOUND);
        if left.is_zero() {
            tracing::warn!("no time is left before the phase deadline: telemetry not exported");
            return;
        }
        let traces = config
            .traces
            .as_ref()
            .map(|url| (url, otlp::traces(&run, &config.resource).encode_to_vec()));
        let metrics = config.metrics.as_ref().map(|url| {
            let started = SystemTime::now()
                .checked_sub(
                    crate::STARTED
                        .get()
                        .map_or(Duration::ZERO, Instant::elapsed),
                )
                .unwrap_or(report.started_at);
            (
                url,
                otlp::metrics(&run, &config.resource, started).encode_to_vec(),
            )
        });
        let both = async {
            tokio::join!(
                one("traces", traces, &config.headers),
                one("metrics", metrics, &config.headers)
            )
        };
        match tokio::time::timeout(left, both).await {
            Ok((t, m)) => {
                for problem in [t, m].into_iter().flatten() {
                    tracing::warn!("telemetry not exported: {problem}");
                }
            }
            Err(_) => tracing::warn!(
                "telemetry not exported: the collector did not answer within {}",
                lifehook_units::format_duration(left)
            ),
        }
    }
}

/// Sends one signal, if it is exported; why it failed, if it did.
async fn one(
    what: &str,
    signal: Option<(&String, Vec<u8>)>,
    headers: &[(String, String)],
) -> Option<String> {
    let (url, body) = signal?;
    send::post(url, headers, body)
        .await
        .err()
        .map(|e| format!("{what} to {url}: {e}"))
}

/// A report for a delivery that ran nothing (a repeat): the phase, how
/// long this process took, no steps.
pub fn repeat_report(
    pipeline: &Pipeline,
    phase: lifehook_manifest::PhaseName,
    deadline: Duration,
) -> PhaseReport {
    let took = crate::STARTED
        .get()
        .map_or(Duration::ZERO, Instant::elapsed);
    PhaseReport {
        phase,
        pipeline: pipeline.path.clone(),
        deadline,
        duration: took,
        cleanup_reserve: Duration::ZERO,
        deadline_hit: false,
        aborted_by: None,
        status: lifehook_runtime::PhaseStatus::Ok,
        steps: Vec::new(),
        started_at: SystemTime::now()
            .checked_sub(took)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    }
}
