//! A phase run as OTLP messages (the official protobuf definitions, from
//! `opentelemetry-proto`): a span per phase run, a child per step that
//! ran, a child per attempt, with events for denials, caps, retries and
//! skipped steps; and the run's metrics. Built from the report after the
//! run, with the span ids the runner derived from the same trace context
//! (see `lifehook_runtime::trace`), so the `traceparent` a step's HTTP
//! requests carried names the step's span here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifehook_runtime::trace::TraceContext;
use lifehook_runtime::{CodeSource, Outcome, PhaseReport, PhaseStatus, StepReport};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

/// Duration buckets, in seconds (as `serve`'s Prometheus histogram).
const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// What a phase run is, beyond its report.
pub struct Run<'a> {
    pub report: &'a PhaseReport,
    pub trace: &'a TraceContext,
    /// `run`, `exec` or `serve`.
    pub by: &'a str,
    /// The exit code the report maps to.
    pub exit_code: i32,
    /// A repeated delivery: nothing ran, the earlier report stood.
    pub repeat: bool,
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: impl TryInto<i64>) -> KeyValue {
    kv(
        key,
        any_value::Value::IntValue(value.try_into().unwrap_or(i64::MAX)),
    )
}

fn flag(key: &str, value: bool) -> KeyValue {
    kv(key, any_value::Value::BoolValue(value))
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().try_into().unwrap_or(u64::MAX))
}

fn resource(attributes: &[(String, String)]) -> Resource {
    Resource {
        attributes: attributes
            .iter()
            .map(|(k, v)| text(k, v.as_str()))
            .collect(),
        ..Resource::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "lifehook".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

fn status(ok: bool, message: &str) -> Option<Status> {
    Some(if ok {
        Status::default()
    } else {
        Status {
            message: message.to_owned(),
            code: StatusCode::Error as i32,
        }
    })
}

fn code_source(source: CodeSource) -> &'static str {
    match source {
        CodeSource::Compiled => "compiled",
        CodeSource::Precompiled => "precompiled",
        CodeSource::Cached => "cached",
    }
}

/// The run's spans.
pub fn traces(run: &Run, resource_attributes: &[(String, String)]) -> ExportTraceServiceRequest {
    let (report, trace) = (run.report, run.trace);
    let start = report.started_at;
    let end = start + report.duration;
    let mut phase_events = Vec::new();
    let mut spans = Vec::new();
    for step in &report.steps {
        match step.started {
            Some(offset) => spans.extend(step_spans(trace, step, start + offset)),
            None => phase_events.push(Event {
                time_unix_nano: nanos(end),
                name: "skipped".into(),
                attributes: vec![
                    text("lifehook.step", step.name.as_str()),
                    text("lifehook.reason", step.message.as_str()),
                ],
                ..Event::default()
            }),
        }
    }
    let ok = report.status == PhaseStatus::Ok;
    let why = match (&report.aborted_by, report.status) {
        (Some(step), _) => format!("aborted by step `{step}`"),
        (None, PhaseStatus::DeadlineReached) => "the phase deadline was reached".into(),
        _ => String::new(),
    };
    let mut attributes = vec![
        text("lifehook.phase", report.phase.as_str()),
        text("lifehook.verdict", report.status.as_str()),
        int("lifehook.deadline_ms", report.deadline.as_millis()),
        flag("lifehook.repeat", run.repeat),
        int("lifehook.exit_code", run.exit_code),
        text("lifehook.by", run.by),
        text("lifehook.pipeline", report.pipeline.display().to_string()),
    ];
    if let Some(step) = &report.aborted_by {
        attributes.push(text("lifehook.aborted_by", step.as_str()));
    }
    spans.insert(
        0,
        Span {
            trace_id: trace.trace_id.to_vec(),
            span_id: trace.span_id.to_vec(),
            parent_span_id: trace.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: format!("lifehook {}", report.phase),
            kind: if trace.parent_id.is_some() {
                SpanKind::Server
            } else {
                SpanKind::Internal
            } as i32,
            start_time_unix_nano: nanos(start),
            end_time_unix_nano: nanos(end),
            attributes,
            events: phase_events,
            status: status(ok, &why),
            ..Span::default()
        },
    );
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(resource_attributes)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// A step's span and its attempts' spans.
fn step_spans(trace: &TraceContext, step: &StepReport, start: SystemTime) -> Vec<Span> {
    let step_id = trace.step_span(&step.name);
    let end = start + step.duration;
    let ok = matches!(step.outcome, Outcome::Ok);
    let mut attributes = vec![
        text("lifehook.step", step.name.as_str()),
        text("lifehook.outcome", step.outcome.as_str()),
        int("lifehook.attempts", step.attempts),
        text("lifehook.message", step.message.as_str()),
    ];
    if let Some(plugin) = &step.plugin {
        attributes.push(text("lifehook.plugin", plugin.as_str()));
    }
    if let Some(hash) = &step.plugin_hash {
        attributes.push(text("lifehook.plugin.digest", format!("xxh3-128:{hash}")));
    }
    if let Some(code) = step.code {
        attributes.push(text("lifehook.plugin.code", code_source(code)));
    }
    if let Some(fuel) = step.fuel_consumed {
        attributes.push(int("lifehook.fuel", fuel));
    }
    let mut events: Vec<Event> = Vec::new();
    let event = |name: &str, at: SystemTime, attrs: Vec<KeyValue>| Event {
        time_unix_nano: nanos(at),
        name: name.to_owned(),
        attributes: attrs,
        ..Event::default()
    };
    for denial in &step.denials {
        events.push(event(
            "denied",
            end,
            vec![text("lifehook.denial", denial.as_str())],
        ));
    }
    for cap in &step.caps_reached {
        events.push(event(
            "cap reached",
            end,
            vec![text("lifehook.cap", cap.as_str())],
        ));
    }
    let mut spans = Vec::new();
    for (i, attempt) in step.attempt_log.iter().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if n > 1 {
            events.push(event(
                "retry",
                attempt.started,
                vec![int("lifehook.attempt", n)],
            ));
        }
        let mut attrs = vec![
            int("lifehook.attempt", n),
            text("lifehook.outcome", attempt.outcome.as_str()),
            text("lifehook.message", attempt.message.as_str()),
        ];
        if let Some(fuel) = attempt.fuel {
            attrs.push(int("lifehook.fuel", fuel));
        }
        spans.push(Span {
            trace_id: trace.trace_id.to_vec(),
            span_id: trace.attempt_span(&step.name, n).to_vec(),
            parent_span_id: step_id.to_vec(),
            name: format!("attempt {n}"),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: nanos(attempt.started),
            end_time_unix_nano: nanos(attempt.started + attempt.duration),
            attributes: attrs,
            status: status(attempt.outcome == Outcome::Ok, &attempt.message),
            ..Span::default()
        });
    }
    spans.insert(
        0,
        Span {
            trace_id: trace.trace_id.to_vec(),
            span_id: step_id.to_vec(),
            parent_span_id: trace.span_id.to_vec(),
            name: step.name.clone(),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: nanos(start),
            end_time_unix_nano: nanos(end),
            attributes,
            events,
            status: status(ok, &step.message),
            ..Span::default()
        },
    );
    spans
}

/// One observation as a cumulative histogram point.
fn histogram_point(
    attributes: Vec<KeyValue>,
    seconds: f64,
    since: u64,
    now: u64,
) -> HistogramDataPoint {
    let mut buckets = vec![0u64; BUCKETS.len() + 1];
    let i = BUCKETS
        .iter()
        .position(|&b| seconds <= b)
        .unwrap_or(BUCKETS.len());
    buckets[i] = 1;
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: since,
        time_unix_nano: now,
        count: 1,
        sum: Some(seconds),
        bucket_counts: buckets,
        explicit_bounds: BUCKETS.to_vec(),
        min: Some(seconds),
        max: Some(seconds),
        ..HistogramDataPoint::default()
    }
}

fn counter_point(attributes: Vec<KeyValue>, value: u64, since: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: since,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsInt(
            value.try_into().unwrap_or(i64::MAX),
        )),
        ..NumberDataPoint::default()
    }
}

fn metric(name: &str, description: &str, unit: &str, data: metric::Data) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(data),
        ..Metric::default()
    }
}

/// The run's metrics: cumulative since `process_start` (each hook is a
/// process of its own, so each export starts its series afresh).
pub fn metrics(
    run: &Run,
    resource_attributes: &[(String, String)],
    process_start: SystemTime,
) -> ExportMetricsServiceRequest {
    let report = run.report;
    let (since, now) = (nanos(process_start), nanos(SystemTime::now()));
    let phase = report.phase.as_str();
    let cumulative = AggregationTemporality::Cumulative as i32;
    let ran: Vec<&StepReport> = report
        .steps
        .iter()
        .filter(|s| s.started.is_some())
        .collect();
    let step_attrs = |s: &StepReport| {
        vec![
            text("lifehook.phase", phase),
            text("lifehook.step", s.name.as_str()),
            text("lifehook.outcome", s.outcome.as_str()),
        ]
    };
    let seconds = |d: Duration| d.as_secs_f64();
    let metrics = vec![
        metric(
            "lifehook.phase.duration",
            "Wall time of a phase run",
            "s",
            metric::Data::Histogram(Histogram {
                data_points: vec![histogram_point(
                    vec![
                        text("lifehook.phase", phase),
                        text("lifehook.verdict", report.status.as_str()),
                    ],
                    seconds(report.duration),
                    since,
                    now,
                )],
                aggregation_temporality: cumulative,
            }),
        ),
        metric(
            "lifehook.step.duration",
            "Wall time of a step, retries included",
            "s",
            metric::Data::Histogram(Histogram {
                data_points: ran
                    .iter()
                    .map(|s| histogram_point(step_attrs(s), seconds(s.duration), since, now))
                    .collect(),
                aggregation_temporality: cumulative,
            }),
        ),
        metric(
            "lifehook.step.outcomes",
            "Steps by outcome, skipped ones included",
            "{step}",
            metric::Data::Sum(Sum {
                data_points: report
                    .steps
                    .iter()
                    .map(|s| counter_point(step_attrs(s), 1, since, now))
                    .collect(),
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
        ),
        metric(
            "lifehook.step.attempts",
            "Attempts made by a step",
            "{attempt}",
            metric::Data::Sum(Sum {
                data_points: ran
                    .iter()
                    .map(|s| {
                        counter_point(
                            vec![
                                text("lifehook.phase", phase),
                                text("lifehook.step", s.name.as_str()),
                            ],
                            u64::from(s.attempts),
                            since,
                            now,
                        )
                    })
                    .collect(),
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(resource_attributes)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}
