//! `GET /metrics`: what `serve` has run, in the OpenMetrics text format
//! Prometheus scrapes. Phase runs by phase and outcome, phase durations,
//! step outcomes by step, triggers by how they were served, build info.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use lifehook_manifest::PhaseName;
use lifehook_runtime::PhaseReport;

/// The media type of the text `encode` makes.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Phase durations' buckets, in seconds: hooks take from milliseconds to
/// the grace period (30 s by default, sometimes minutes).
const PHASE_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseOutcome {
    phase: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepOutcome {
    phase: String,
    step: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerResult {
    phase: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
    target: String,
    build: String,
}

/// How a trigger was served, as counted.
#[derive(Clone, Copy)]
pub(super) enum TriggerKind {
    /// It started a new run.
    Ran,
    /// It joined a run in progress.
    Joined,
    /// The phase had completed: the earlier report.
    Repeat,
    /// The server was stopping.
    Refused,
    /// Missing or wrong token.
    Unauthorized,
}

impl TriggerKind {
    fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Ran => "ran",
            TriggerKind::Joined => "joined",
            TriggerKind::Repeat => "repeat",
            TriggerKind::Refused => "refused",
            TriggerKind::Unauthorized => "unauthorized",
        }
    }
}

type HistogramFamily = Family<PhaseLabels, Histogram, fn() -> Histogram>;

/// The series `serve` keeps.
pub(super) struct Metrics {
    registry: Registry,
    phase_runs: Family<PhaseOutcome, Counter>,
    phase_seconds: HistogramFamily,
    steps: Family<StepOutcome, Counter>,
    triggers: Family<TriggerResult, Counter>,
}

fn phase_histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lifehook");
        let phase_runs = Family::<PhaseOutcome, Counter>::default();
        registry.register(
            "phase_runs",
            "Phase runs by phase and outcome (ok, aborted, deadline-reached)",
            phase_runs.clone(),
        );
        let phase_seconds: HistogramFamily = Family::new_with_constructor(phase_histogram);
        registry.register_with_unit(
            "phase_duration",
            "Wall time of a phase run",
            Unit::Seconds,
            phase_seconds.clone(),
        );
        let steps = Family::<StepOutcome, Counter>::default();
        registry.register(
            "step_outcomes",
            "Step runs by phase, step and outcome",
            steps.clone(),
        );
        let triggers = Family::<TriggerResult, Counter>::default();
        registry.register(
            "triggers",
            "Triggers by phase and how they were served (ran, joined, repeat, refused, unauthorized)",
            triggers.clone(),
        );
        registry.register(
            "build",
            "The lifehook binary",
            Info::new(Build {
                version: env!("CARGO_PKG_VERSION").into(),
                target: env!("LIFEHOOK_TARGET").into(),
                build: if cfg!(feature = "compiler") {
                    "full".into()
                } else {
                    "runtime-only".into()
                },
            }),
        );
        Metrics {
            registry,
            phase_runs,
            phase_seconds,
            steps,
            triggers,
        }
    }

    /// Counts a finished run of a phase.
    pub(super) fn phase_ran(&self, report: &PhaseReport) {
        let phase = report.phase.to_string();
        self.phase_runs
            .get_or_create(&PhaseOutcome {
                phase: phase.clone(),
                outcome: report.status.as_str().into(),
            })
            .inc();
        self.phase_seconds
            .get_or_create(&PhaseLabels {
                phase: phase.clone(),
            })
            .observe(report.duration.as_secs_f64());
        for step in &report.steps {
            self.steps
                .get_or_create(&StepOutcome {
                    phase: phase.clone(),
                    step: step.name.clone(),
                    outcome: step.outcome.as_str().into(),
                })
                .inc();
        }
    }

    /// Counts a trigger of `phase`.
    pub(super) fn trigger(&self, phase: PhaseName, kind: TriggerKind) {
        self.triggers
            .get_or_create(&TriggerResult {
                phase: phase.to_string(),
                result: kind.as_str().into(),
            })
            .inc();
    }

    /// Every series, as the scrape's body.
    pub(super) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
