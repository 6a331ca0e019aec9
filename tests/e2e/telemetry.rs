//! OpenTelemetry over OTLP/HTTP, checked by a receiver built on the
//! official protobuf definitions (PyPI `opentelemetry-proto`, see
//! tests/otlp/receiver.py): the span tree of a run, its resource and
//! metrics; the `traceparent` a notified service gets; `serve` continuing
//! a trigger's trace; collectors that refuse or never answer, bounded.
//!
//! `cargo xtask test` installs the receiver's Python packages under
//! target/ and runs these with `LIFEHOOK_OTLP_PYTHON` set.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::http::TestServer;
use crate::support::serve::Server;
use crate::support::{Run, Sandbox, wait_until};

/// The receiver, killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(mode: &str) -> Receiver {
        let python = std::env::var_os("LIFEHOOK_OTLP_PYTHON").expect(
            "set LIFEHOOK_OTLP_PYTHON to a python with opentelemetry-proto (cargo xtask test does)",
        );
        let dir = tempfile::tempdir().expect("dir");
        let (port_file, out) = (dir.path().join("port"), dir.path().join("out.jsonl"));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/otlp/receiver.py");
        let child = Command::new(python)
            .arg(script)
            .arg(&port_file)
            .arg(&out)
            .arg(mode)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the receiver");
        assert!(
            wait_until(Duration::from_secs(20), || port_file.exists()),
            "the receiver did not start"
        );
        let port = std::fs::read_to_string(&port_file)
            .expect("port")
            .trim()
            .parse()
            .expect("a port");
        Receiver {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it received: each export as `{path, headers, body}`.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// The body of the one export to `path`, once it has arrived.
    fn one(&self, path: &str) -> Value {
        wait_until(Duration::from_secs(5), || {
            self.received().iter().any(|r| r["path"] == path)
        });
        let got: Vec<Value> = self
            .received()
            .into_iter()
            .filter(|r| r["path"] == path)
            .collect();
        assert_eq!(got.len(), 1, "{got:?}");
        got[0]["body"].clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of a run exporting to `receiver`, as in a pod.
fn exporting(cmd: &mut Command, receiver: &Receiver) {
    for var in [
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "NODE_NAME",
        "POD_UID",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team-a")
        .env("POD_NAME", "web-0")
        .env("POD_NAMESPACE", "shop")
        .env("CONTAINER_NAME", "app");
}

/// The value of attribute `key` in an OTLP attribute list, as text.
fn attr(attributes: &Value, key: &str) -> Option<String> {
    let found = attributes.as_array()?.iter().find(|a| a["key"] == key)?;
    let v = &found["value"];
    ["stringValue", "intValue", "boolValue"]
        .iter()
        .find_map(|k| v.get(*k))
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

fn spans(traces: &Value) -> Vec<Value> {
    traces["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .expect("spans")
        .clone()
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
}

const PIPELINE: &str = r#"
[[pre-stop.steps]]
name = "notify"
plugin = "@notify"
allow.http = ["@origin"]
config = { url = "@url", body = "bye" }

[[pre-stop.steps]]
name = "flaky"
plugin = "@hook"
retries = { attempts = 3, backoff = "10ms" }
config = { mode = "flaky", succeed-at = 2 }

[[pre-stop.steps]]
name = "probe"
plugin = "@hook"
config = { mode = "http", url = "http://127.0.0.1:9/x" }
"#;

fn pipeline(s: &Sandbox, backend: &TestServer) {
    s.pipeline(
        &PIPELINE
            .replace("@origin", &backend.origin())
            .replace("@url", &backend.url("/shutdown")),
    );
}

#[test]
#[ignore = "needs the OTLP receiver's Python packages: `cargo xtask test` runs it"]
fn otlp_run_exports_the_span_tree_resource_and_metrics() {
    let (s, backend, receiver) = (Sandbox::new(), TestServer::start(), Receiver::start("ok"));
    pipeline(&s, &backend);
    let run = s.lifehook_with(&["run"], |c| exporting(c, &receiver));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("telemetry"), "{}", run.stderr);

    let traces = receiver.one("/v1/traces");
    let resource = &traces["resourceSpans"][0]["resource"]["attributes"];
    assert_eq!(attr(resource, "service.name").as_deref(), Some("lifehook"));
    assert_eq!(
        attr(resource, "service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(attr(resource, "k8s.pod.name").as_deref(), Some("web-0"));
    assert_eq!(
        attr(resource, "k8s.namespace.name").as_deref(),
        Some("shop")
    );
    assert_eq!(attr(resource, "k8s.container.name").as_deref(), Some("app"));
    let spans = spans(&traces);
    let phase = named(&spans, "lifehook pre-stop");
    let trace_id = phase["traceId"].as_str().expect("trace id").to_owned();
    assert_eq!(trace_id.len(), 32);
    assert!(phase.get("parentSpanId").is_none(), "{phase}");
    assert_eq!(
        attr(&phase["attributes"], "lifehook.verdict").as_deref(),
        Some("ok")
    );
    assert_eq!(
        attr(&phase["attributes"], "lifehook.exit_code").as_deref(),
        Some("0")
    );
    assert_eq!(
        attr(&phase["attributes"], "lifehook.repeat").as_deref(),
        Some("false")
    );
    assert_eq!(
        attr(&phase["attributes"], "lifehook.deadline_ms").as_deref(),
        Some("20000")
    );
    for s in &spans {
        assert_eq!(s["traceId"], trace_id.as_str(), "one trace: {s}");
    }
    // A child per step, a child of that per attempt.
    for step in ["notify", "flaky", "probe"] {
        let span = named(&spans, step);
        assert_eq!(span["parentSpanId"], phase["spanId"], "{span}");
        assert_eq!(
            attr(&span["attributes"], "lifehook.step").as_deref(),
            Some(step)
        );
        assert!(
            attr(&span["attributes"], "lifehook.plugin.digest")
                .is_some_and(|d| d.starts_with("xxh3-128:"))
        );
        assert!(
            attr(&span["attributes"], "lifehook.plugin.code").is_some(),
            "{span}"
        );
        assert!(
            attr(&span["attributes"], "lifehook.fuel").is_some(),
            "{span}"
        );
    }
    let flaky = named(&spans, "flaky");
    assert_eq!(
        attr(&flaky["attributes"], "lifehook.attempts").as_deref(),
        Some("2")
    );
    assert_eq!(
        attr(&flaky["attributes"], "lifehook.outcome").as_deref(),
        Some("ok")
    );
    let attempts: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parentSpanId"] == flaky["spanId"])
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["name"], "attempt 1");
    assert_eq!(attempts[0]["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(attempts[1]["name"], "attempt 2");
    let events: Vec<&str> = flaky["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(events, ["retry"]);
    let probe = named(&spans, "probe");
    let denied = &probe["events"][0];
    assert_eq!(denied["name"], "denied", "{probe}");
    assert!(
        attr(&denied["attributes"], "lifehook.denial").is_some_and(|d| d.contains("127.0.0.1:9")),
        "{denied}"
    );
    // The notified service joined the trace at the step's span.
    let notify = named(&spans, "notify");
    let got = backend.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("traceparent"),
        Some(
            format!(
                "00-{trace_id}-{}-01",
                notify["spanId"].as_str().expect("id")
            )
            .as_str()
        )
    );
    // The exports carry the configured headers.
    let exports = receiver.received();
    assert!(
        exports.iter().all(|e| e["headers"]["x-tenant"] == "team-a"),
        "{exports:?}"
    );
    assert!(
        exports
            .iter()
            .all(|e| e["headers"]["content-type"] == "application/x-protobuf")
    );

    let metrics = receiver.one("/v1/metrics");
    let list = metrics["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .expect("metrics")
        .clone();
    let metric = |name: &str| {
        list.iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no metric {name} in {list:?}"))
            .clone()
    };
    let phase_duration = metric("lifehook.phase.duration");
    assert_eq!(phase_duration["unit"], "s");
    let point = &phase_duration["histogram"]["dataPoints"][0];
    assert_eq!(point["count"], "1");
    assert_eq!(
        attr(&point["attributes"], "lifehook.verdict").as_deref(),
        Some("ok")
    );
    assert_eq!(
        phase_duration["histogram"]["aggregationTemporality"],
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    );
    let outcomes = metric("lifehook.step.outcomes");
    assert_eq!(outcomes["sum"]["isMonotonic"], true);
    let points = outcomes["sum"]["dataPoints"].as_array().expect("points");
    assert_eq!(points.len(), 3, "{points:?}");
    let attempts = metric("lifehook.step.attempts");
    let flaky_attempts = attempts["sum"]["dataPoints"]
        .as_array()
        .expect("points")
        .iter()
        .find(|p| attr(&p["attributes"], "lifehook.step").as_deref() == Some("flaky"))
        .expect("flaky's attempts")
        .clone();
    assert_eq!(flaky_attempts["asInt"], "2");
    assert_eq!(
        metric("lifehook.step.duration")["histogram"]["dataPoints"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

/// A run against a collector in `mode`: its result and what it took.
fn against(mode: &str) -> (Run, Receiver) {
    let (s, backend, receiver) = (Sandbox::new(), TestServer::start(), Receiver::start(mode));
    pipeline(&s, &backend);
    let run = s.lifehook_with(&["run"], |c| exporting(c, &receiver));
    (run, receiver)
}

#[test]
#[ignore = "needs the OTLP receiver's Python packages: `cargo xtask test` runs it"]
fn otlp_refusing_and_silent_collectors_cost_one_warning_within_the_bound() {
    for mode in ["refuse", "silent"] {
        let (run, receiver) = against(mode);
        assert_eq!(
            run.code, 0,
            "{mode}: the exit code is the pipeline's\n{}",
            run.stderr
        );
        assert!(
            run.stdout.starts_with("lifehook pre-stop: ok"),
            "{}",
            run.stdout
        );
        let warnings: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.contains("telemetry not exported"))
            .collect();
        assert_eq!(
            warnings.len(),
            if mode == "refuse" { 2 } else { 1 },
            "{mode}: {}",
            run.stderr
        );
        let wanted = if mode == "refuse" {
            "503"
        } else {
            "did not answer within 500ms"
        };
        assert!(
            warnings.iter().all(|w| w.contains(wanted)),
            "{mode}: {warnings:?}"
        );
        assert!(
            !receiver.received().is_empty(),
            "{mode}: the collector was reached"
        );
        // The whole run (three steps, one retry: well under a second)
        // plus the bound; a hang would go on for ever.
        let took: Duration = run.elapsed;
        assert!(took < Duration::from_secs(4), "{mode}: took {took:?}");
    }
}

#[test]
#[ignore = "needs the OTLP receiver's Python packages: `cargo xtask test` runs it"]
fn otlp_serve_continues_the_trace_of_a_triggers_traceparent() {
    let (s, backend, receiver) = (Sandbox::new(), TestServer::start(), Receiver::start("ok"));
    pipeline(&s, &backend);
    let server = Server::start_with(&s, &[], |c| exporting(c, &receiver));
    let parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let reply = server.get(
        "/pre-stop",
        &format!("traceparent: 00-{parent_trace}-{parent_span}-01\r\n"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let traces = receiver.one("/v1/traces");
    let spans = spans(&traces);
    let phase = named(&spans, "lifehook pre-stop");
    assert_eq!(phase["traceId"], parent_trace);
    assert_eq!(phase["parentSpanId"], parent_span);
    assert_eq!(phase["kind"], "SPAN_KIND_SERVER");
    assert_eq!(
        attr(&phase["attributes"], "lifehook.by").as_deref(),
        Some("serve")
    );
    let notify = named(&spans, "notify");
    assert_eq!(
        backend.requests()[0].header("traceparent"),
        Some(
            format!(
                "00-{parent_trace}-{}-01",
                notify["spanId"].as_str().expect("id")
            )
            .as_str()
        )
    );
}

/// Without any endpoint nothing is exported and the steps' requests carry
/// no `traceparent`; `propagate = false` keeps it off them when exporting.
#[test]
fn no_endpoint_no_traceparent_and_propagate_false_keeps_it_off() {
    let (s, backend) = (Sandbox::new(), TestServer::start());
    pipeline(&s, &backend);
    let run = s.lifehook_with(&["run"], |c| {
        c.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(backend.requests()[0].header("traceparent"), None);

    let text = std::fs::read_to_string(s.path("lifehook.toml")).expect("pipeline");
    s.write(
        "lifehook.toml",
        format!("[telemetry]\nendpoint = \"http://127.0.0.1:9\"\npropagate = false\n{text}"),
    );
    let run = s.lifehook(&["run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(backend.requests()[1].header("traceparent"), None);
    // Port 9 refuses: one warning per signal, nothing else changes.
    assert!(
        run.stderr.contains("telemetry not exported"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_telemetry_settings_are_located_errors() {
    let s = Sandbox::new();
    s.write(
        "lifehook.toml",
        "[telemetry]\nendpoint = \"https://collector:4318\"\nheaders = { \"bad header\" = \"x\" }\ntraces-endpoint = \"http://c:99999/v1/traces\"\n",
    );
    let run = s.lifehook(&["check"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    for wanted in [
        "lifehook.toml:2",
        "uses https",
        "lifehook.toml:3",
        "is not a header name",
        "lifehook.toml:4",
        "has a bad port \"99999\"",
    ] {
        assert!(
            run.stderr.contains(wanted),
            "{wanted:?} is not in:\n{}",
            run.stderr
        );
    }
    s.write("lifehook.toml", "[telemetry]\nsevice-name = \"typo\"\n");
    let run = s.lifehook(&["check"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("lifehook.toml:2")
            && run.stderr.contains("did you mean `service-name`?"),
        "{}",
        run.stderr
    );
}
