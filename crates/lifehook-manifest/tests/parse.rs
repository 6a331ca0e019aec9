//! The pipeline file as users write it: each test parses a file with
//! [`lifehook_manifest::parse`] and checks what it resolves to, or the
//! problems it is refused with (line, column, help).

use std::time::Duration;

use lifehook_manifest::pipeline::{
    DEFAULT_FUEL, DEFAULT_MAX_HTTP, DEFAULT_MAX_OPEN, DEFAULT_MAX_WRITE, DEFAULT_MEMORY,
    DEFAULT_PRE_STOP_DEADLINE, DEFAULT_TIMEOUT,
};
use lifehook_manifest::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("write plugin");
        Fixture { dir }
    }

    fn parse(&self, source: &str) -> Result<Pipeline, Diagnostics> {
        let env = |name: &str| match name {
            "POD_NAME" => Some("web-0".to_string()),
            _ => None,
        };
        parse(source, &self.dir.path().join("lifehook.toml"), &env, None)
    }

    fn error(&self, source: &str) -> String {
        self.parse(source)
            .expect_err("should be rejected")
            .to_string()
    }
}

const MINIMAL: &str = "[[pre-stop.steps]]\nname = \"a\"\nplugin = \"p.wasm\"\n";

#[test]
fn minimal_pipeline_gets_the_documented_defaults() {
    let p = Fixture::new().parse(MINIMAL).expect("valid");
    let phase = p.phase(PhaseName::PreStop).expect("pre-stop");
    assert_eq!(phase.deadline, DEFAULT_PRE_STOP_DEADLINE);
    let step = &phase.steps[0];
    assert_eq!(step.limits.timeout, DEFAULT_TIMEOUT);
    assert_eq!(step.limits.fuel, Fuel::Limited(DEFAULT_FUEL));
    assert_eq!(step.limits.memory, DEFAULT_MEMORY);
    assert_eq!(step.on_failure, OnFailure::Continue);
    assert_eq!(step.retry.attempts, 1);
    assert!(step.grants.http.is_empty() && step.grants.dirs.is_empty());
    assert!(
        step.plugin()
            .and_then(PluginRef::file)
            .is_some_and(|p| p.is_absolute())
    );
}

#[test]
fn defaults_apply_and_steps_override_them() {
    let p = Fixture::new()
        .parse(
            r#"
[defaults]
timeout = "3s"
memory = "16MiB"
on-failure = "abort"
retries = { attempts = 4, backoff = "10ms" }

[pre-stop]
deadline = "9s"

[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"

[[pre-stop.steps]]
name = "b"
plugin = "./p.wasm"
timeout = "1s"
fuel = "unlimited"
on-failure = "continue"
concurrent = true
"#,
        )
        .expect("valid");
    let phase = &p.phases[0];
    assert_eq!(phase.deadline, Duration::from_secs(9));
    let (a, b) = (&phase.steps[0], &phase.steps[1]);
    assert_eq!(a.limits.timeout, Duration::from_secs(3));
    assert_eq!(a.limits.memory, 16 << 20);
    assert_eq!(a.on_failure, OnFailure::Abort);
    assert_eq!(a.retry.attempts, 4);
    assert_eq!(a.retry.backoff, Duration::from_millis(10));
    assert_eq!(b.limits.timeout, Duration::from_secs(1));
    assert_eq!(b.limits.fuel, Fuel::Unlimited);
    assert_eq!(b.on_failure, OnFailure::Continue);
    assert!(b.concurrent && !a.concurrent);
    assert_eq!(
        phase.names(&phase.edges[1].after).collect::<Vec<_>>(),
        ["a"]
    );
}

#[test]
fn config_is_flattened_and_interpolated() {
    let p = Fixture::new()
        .parse(
            r#"
[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"
[pre-stop.steps.config]
url = "http://x/${POD_NAME}"
port = 8080
ratio = 0.5
on = true
include = ["*.db", "wal/${POD_NAME}"]
headers = { authorization = "Bearer t", x-pod = "${POD_NAME}" }
"#,
        )
        .expect("valid");
    let config: std::collections::BTreeMap<_, _> =
        p.phases[0].steps[0].config.iter().cloned().collect();
    assert_eq!(config["url"], "http://x/web-0");
    assert_eq!(config["port"], "8080");
    assert_eq!(config["ratio"], "0.5");
    assert_eq!(config["on"], "true");
    assert_eq!(config["include"], "*.db\nwal/web-0");
    assert_eq!(config["headers.authorization"], "Bearer t");
    assert_eq!(config["headers.x-pod"], "web-0");
}

#[test]
fn grants_are_parsed_and_dirs_resolved() {
    let f = Fixture::new();
    let p = f
        .parse(
            r#"
[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"
allow.http = ["http://127.0.0.1:8080"]
allow.tcp = ["localhost:6379"]
allow.env = ["POD_NAME"]
allow.dirs = ["data", { host = "./state/../snap", guest = "/snap", access = "read-write" }]
"#,
        )
        .expect("valid");
    let g = &p.phases[0].steps[0].grants;
    assert_eq!(g.http[0].port, Some(8080));
    assert_eq!(g.tcp[0].port, 6379);
    assert_eq!(g.env, ["POD_NAME"]);
    assert_eq!(g.dirs[0].host, f.dir.path().join("data"));
    assert_eq!(g.dirs[0].access, Access::Read);
    assert_eq!(g.dirs[0].guest, f.dir.path().join("data").to_string_lossy());
    assert_eq!(g.dirs[1].host, f.dir.path().join("snap"));
    assert_eq!(g.dirs[1].guest, "/snap");
    assert_eq!(g.dirs[1].access, Access::ReadWrite);
}

#[test]
fn tls_settings_of_grants_resolve_next_to_the_pipeline() {
    let f = Fixture::new();
    let p = f
        .parse(
            r#"
[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"
allow.http = ["https://public.example", { origin = "https://etcd.db:2379", ca = "tls/ca.crt", cert = "/etc/tls/${POD_NAME}.crt", key = "tls/../tls/client.key" }]
allow.tcp = ["plain:6379", { address = "redis.db:6380", tls = true }]
"#,
        )
        .expect("valid");
    let g = &p.phases[0].steps[0].grants;
    assert_eq!(g.http[0].tls, None);
    let tls = g.http[1].tls.as_ref().expect("tls settings");
    assert_eq!(
        tls.ca.as_deref(),
        Some(f.dir.path().join("tls/ca.crt").as_path())
    );
    let client = tls.client.as_ref().expect("client certificate");
    assert_eq!(client.cert, std::path::Path::new("/etc/tls/web-0.crt"));
    assert_eq!(client.key, f.dir.path().join("tls/client.key"));
    assert_eq!(tls.written.as_ref().map(|d| d.line), Some(5));
    assert_eq!(g.tcp[0].tls, None);
    let redis = g.tcp[1].tls.as_ref().expect("tls = true");
    assert_eq!((redis.ca.as_ref(), redis.client.as_ref()), (None, None));
}

#[test]
fn tls_settings_that_cannot_work_are_refused() {
    let f = Fixture::new();
    let step =
        |allow: &str| format!("[[pre-stop.steps]]\nname = \"a\"\nplugin = \"p.wasm\"\n{allow}\n");
    let cases = [
        (
            r#"allow.tcp = [{ address = "r:6380", ca = "ca.crt" }]"#,
            "names TLS files but not `tls = true`",
        ),
        (
            r#"allow.http = [{ origin = "a.example", ca = "ca.crt" }]"#,
            "write origin = \"https://a.example\"",
        ),
        (
            r#"allow.tcp = [{ address = "r:6380", tls = true, key = "k.pem" }]"#,
            "needs both `cert` and `key`",
        ),
        (
            r#"allow.tcp = [{ address = "r:6380", tls = true, ca = "" }]"#,
            "a TLS file path is empty",
        ),
        (
            r#"allow.tcp = [{ adress = "r:6380" }]"#,
            "did you mean `address`?",
        ),
    ];
    for (allow, wanted) in cases {
        let error = f.error(&step(allow));
        assert!(error.contains(wanted), "{allow}: {error}");
        assert!(error.contains("--> "), "{allow}: {error}");
    }
}

#[test]
fn only_resolves_the_chosen_phase() {
    let f = Fixture::new();
    let source =
        format!("{MINIMAL}\n[[post-start.steps]]\nname = \"b\"\nplugin = \"missing.wasm\"\n");
    assert!(f.parse(&source).is_err());
    let p = parse(
        &source,
        &f.dir.path().join("x.toml"),
        &|_| None,
        Some(PhaseName::PreStop),
    )
    .expect("pre-stop alone is valid");
    assert_eq!(p.phases.len(), 1);
}

#[test]
fn unknown_key_names_line_and_column() {
    let e = Fixture::new()
        .error("[[pre-stop.steps]]\nname = \"a\"\nplugin = \"p.wasm\"\ntimout = \"5s\"\n");
    assert!(
        e.contains("unknown key `timout` in a step of [pre-stop]"),
        "{e}"
    );
    assert!(e.contains("did you mean `timeout`?"), "{e}");
    assert!(e.contains("lifehook.toml:4:1"), "{e}");
}

#[test]
fn defaults_problems_are_reported_once() {
    let e = Fixture::new().error(&format!(
        "[defaults]\nmemory = \"1KiB\"\nretries = {{ attempts = 0 }}\n{MINIMAL}{}",
        MINIMAL.replace("\"a\"", "\"b\"")
    ));
    assert_eq!(e.matches("below the 64KiB minimum").count(), 1, "{e}");
    assert_eq!(e.matches("retries.attempts is 0").count(), 1, "{e}");
}

#[test]
fn host_resource_caps_have_defaults_and_bounds() {
    let f = Fixture::new();
    let p = f.parse(MINIMAL).expect("valid");
    let limits = p.phases[0].steps[0].limits;
    assert_eq!(
        (limits.max_open, limits.max_write, limits.max_http),
        (DEFAULT_MAX_OPEN, DEFAULT_MAX_WRITE, DEFAULT_MAX_HTTP)
    );
    let p = f
        .parse(&format!(
            "[defaults]\nmax-open = 32\nmax-write = \"10MiB\"\n{MINIMAL}max-http = 2\n"
        ))
        .expect("valid");
    let limits = p.phases[0].steps[0].limits;
    assert_eq!(
        (limits.max_open, limits.max_write, limits.max_http),
        (32, 10 << 20, 2)
    );
    let e = f.error(&format!("{MINIMAL}max-open = 1\n"));
    assert!(e.contains("max-open is 1, expected 4 to 65536"), "{e}");
}

#[test]
fn datetimes_in_config_pass_as_written() {
    let p = Fixture::new()
        .parse(&format!(
            "{MINIMAL}config = {{ since = 1979-05-27T07:32:00Z }}\n"
        ))
        .expect("valid");
    assert_eq!(
        p.phases[0].steps[0].config,
        [("since".to_string(), "1979-05-27T07:32:00Z".to_string())]
    );
}

#[test]
fn a_step_without_name_or_work_is_explained() {
    let e = Fixture::new()
        .error("[[pre-stop.steps]]\nplugin = \"p.wasm\"\n\n[[pre-stop.steps]]\nname = \"b\"\n");
    assert!(e.contains("a step of [pre-stop] has no `name`"), "{e}");
    assert!(
        e.contains("step `b` has neither `plugin` nor `sleep`"),
        "{e}"
    );
}

#[test]
fn sleep_steps_wait_and_refuse_plugin_keys() {
    let f = Fixture::new();
    let p = f
        .parse("[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"5s\"\n")
        .expect("valid");
    let step = &p.phases[0].steps[0];
    assert_eq!(
        step.action,
        Action::Sleep(SleepAction {
            duration: Duration::from_secs(5)
        })
    );
    assert_eq!(step.limits.timeout, Duration::from_secs(5));
    let e = f.error("[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"5s\"\ntimeout = \"1s\"\nconfig = { a = 1 }\n");
    assert!(
        e.contains("`timeout` has no effect on a `sleep` step"),
        "{e}"
    );
    assert!(
        e.contains("`config` has no effect on a `sleep` step"),
        "{e}"
    );
}

const GRAPH: &str = r#"
[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"

[[pre-stop.steps]]
name = "b"
plugin = "p.wasm"
concurrent = true

[[pre-stop.steps]]
name = "c"
plugin = "p.wasm"
concurrent = true

[[pre-stop.steps]]
name = "d"
plugin = "p.wasm"

[[pre-stop.steps]]
name = "e"
plugin = "p.wasm"
needs = ["a"]
always = true
tags = ["cleanup"]
"#;

#[test]
fn concurrent_is_sugar_for_the_graph_it_describes() {
    let p = Fixture::new().parse(GRAPH).expect("valid");
    let phase = &p.phases[0];
    let deps: Vec<(&str, Vec<String>, Vec<String>)> = phase
        .steps
        .iter()
        .zip(&phase.edges)
        .map(|(s, e)| {
            let names = |list: &[usize]| phase.names(list).map(str::to_owned).collect();
            (s.name.as_str(), names(&e.needs), names(&e.after))
        })
        .collect();
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        deps,
        [
            ("a", v(&[]), v(&[])),
            ("b", v(&[]), v(&["a"])),
            ("c", v(&[]), v(&["a"])),
            ("d", v(&[]), v(&["b", "c"])),
            ("e", v(&["a"]), v(&[])),
        ]
    );
    let e = &p.phases[0].steps[4];
    assert!(e.always);
    assert_eq!(e.tags, ["cleanup"]);
}

#[test]
fn graph_mistakes_are_located() {
    let f = Fixture::new();
    let unknown = f.error(&GRAPH.replace("needs = [\"a\"]", "needs = [\"zz\"]"));
    assert!(
        unknown.contains("step `e` needs `zz`, which is not a step of [pre-stop]"),
        "{unknown}"
    );
    assert!(unknown.contains("lifehook.toml:23:10"), "{unknown}");
    let itself = f.error(&GRAPH.replace("needs = [\"a\"]", "needs = [\"e\"]"));
    assert!(itself.contains("step `e` needs itself"), "{itself}");
    // `a` needs `e`; `e` needs `d`, which runs after `b` and `c`, which run after `a`.
    let cycle = f.error(
        &GRAPH
            .replace("needs = [\"a\"]", "needs = [\"d\"]")
            .replacen(
                "plugin = \"p.wasm\"\n",
                "plugin = \"p.wasm\"\nneeds = [\"e\"]\n",
                1,
            ),
    );
    assert!(cycle.contains("wait for each other"), "{cycle}");
    assert!(cycle.contains("runs after"), "{cycle}");
    assert!(cycle.contains("lifehook.toml:5:10"), "{cycle}");
    let both = f.error(&GRAPH.replace("always = true", "concurrent = true"));
    assert!(
        both.contains("step `e` has both `needs` and `concurrent`"),
        "{both}"
    );
}

#[test]
fn budget_findings_name_what_does_not_fit() {
    let f = Fixture::new();
    let p = f
        .parse("[pre-stop]\ndeadline = \"5s\"\ngrace-period = \"6s\"\nreserve = \"3s\"\n[[pre-stop.steps]]\nname = \"a\"\nplugin = \"p.wasm\"\ntimeout = \"4s\"\nretries = { attempts = 2 }\n[[pre-stop.steps]]\nname = \"z\"\nplugin = \"p.wasm\"\ntimeout = \"5s\"\nalways = true\n")
        .expect("valid");
    let text: Vec<String> = p.findings.iter().map(|d| d.to_string()).collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(text[0].contains("need 5s in reserve"), "{}", text[0]);
    assert!(
        text[1].contains("do not fit in the grace period of 6s"),
        "{}",
        text[1]
    );
    assert!(text[1].contains("at most 3s"), "{}", text[1]);
    assert!(
        text[2].starts_with("warning: the worst case of [pre-stop] is 13.20s"),
        "{}",
        text[2]
    );
    assert!(
        text.iter().all(|t| t.contains("lifehook.toml:2:12")),
        "{text:#?}"
    );
}

#[test]
fn the_grace_period_sets_the_default_deadline() {
    let p = Fixture::new()
        .parse(&format!(
            "[pre-stop]\ngrace-period = \"60s\"\nreserve = \"15s\"\n{MINIMAL}"
        ))
        .expect("valid");
    assert_eq!(p.phases[0].deadline, Duration::from_secs(45));
    assert!(p.findings.is_empty(), "{:?}", p.findings);
}

#[test]
fn every_resolution_problem_is_listed() {
    let e = Fixture::new().error(
        r#"
[[pre-stop.steps]]
name = "a"
plugin = "missing.wasm"

[[pre-stop.steps]]
name = "a"
plugin = "p.wasm"
config = { url = "${NOT_SET}" }
"#,
    );
    assert!(e.contains("missing.wasm cannot be read"), "{e}");
    assert!(e.contains("lifehook.toml:4:10"), "{e}");
    assert!(e.contains("duplicate step name `a`"), "{e}");
    assert!(e.contains("first step with this name is on line 3"), "{e}");
    assert!(e.contains("`NOT_SET` is not set"), "{e}");
    assert!(e.contains("lifehook.toml:9:18"), "{e}");
    assert!(e.contains("3 problems found"), "{e}");
}
