//! Plugins from OCI registries, against a real `docker-registry`: publish
//! with `lifehook push`, pin tags with `lifehook compile` and the lock file,
//! run offline from the cache, follow a tag with `pull = "always"`, and the
//! failures (unknown tag, wrong artifact, not a component, HTTPS by default,
//! refused credentials, a stalled registry) named.

use std::time::Duration;

use crate::support::registry::Registry;
use crate::support::{Run, Sandbox, plugins};

/// `lifehook push PLUGIN REF --insecure-registry HOST`.
fn push(s: &Sandbox, registry: &Registry, plugin: &str, reference: &str) -> Run {
    s.lifehook(&[
        "push",
        plugin,
        reference,
        "--insecure-registry",
        &registry.host(),
    ])
}

/// The digest `lifehook push` printed (`oci://...:tag@sha256:...`).
fn pushed_digest(run: &Run) -> String {
    assert_eq!(run.code, 0, "push failed: {}", run.stderr);
    let line = run.stdout.trim();
    let (_, digest) = line
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("no digest in {line:?}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{line}"
    );
    digest.to_owned()
}

/// A pre-stop pipeline of one step running `plugin` (with `extra` keys).
fn pipeline(s: &Sandbox, registry: &Registry, plugin: &str, extra: &str) {
    s.write(
        "lifehook.toml",
        format!(
            "[oci]\ninsecure-registries = [\"{}\"]\n\n[[pre-stop.steps]]\nname = \"hook\"\nplugin = \"{plugin}\"\ntimeout = \"5s\"\nconfig = {{ mode = \"ok\" }}\n{extra}",
            registry.host()
        ),
    );
}

#[test]
fn a_pushed_tag_is_pinned_by_compile_and_runs_with_the_registry_gone() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let mut registry = Registry::start();
    let s = Sandbox::new();
    let tag = registry.reference("hooks/fixture:1.0");
    let digest = pushed_digest(&push(&s, &registry, plugins::FIXTURE_HOOK, &tag));
    assert_eq!(
        registry.digest_of("hooks/fixture", "1.0").as_deref(),
        Some(digest.as_str())
    );
    // The same bytes make the same artifact: pushing again changes nothing.
    let again = pushed_digest(&push(&s, &registry, plugins::FIXTURE_HOOK, &tag));
    assert_eq!(again, digest);

    pipeline(&s, &registry, &tag, "");
    // `run` never resolves a tag on its own.
    let unpinned = s.lifehook(&["check", "--cache", "cache"]);
    assert_eq!(unpinned.code, 2, "{}", unpinned.stderr);
    assert!(
        unpinned.stderr.contains("is not pinned to a digest")
            && unpinned.stderr.contains("lifehook.lock"),
        "{}",
        unpinned.stderr
    );
    let compiled = s.lifehook(&["compile", "--cache", "cache"]);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    assert!(
        compiled
            .stdout
            .contains(&format!("pulled  {tag} -> {digest}")),
        "{}",
        compiled.stdout
    );
    let lock = std::fs::read_to_string(s.path("lifehook.lock")).expect("lock file written");
    assert!(
        lock.contains(&format!("\"{tag}\" = \"{digest}\"")),
        "{lock}"
    );
    let blob = s.path(&format!("cache/oci/{}.wasm", digest.replace(':', "-")));
    assert_eq!(
        std::fs::read(&blob).expect("pulled plugin in the cache"),
        std::fs::read(plugins::FIXTURE_HOOK).expect("plugin")
    );

    // The tag moves on; the pinned digest does not, not even for a rebuild
    // (compile again), until `compile --update`.
    let moved = pushed_digest(&push(&s, &registry, plugins::FIXTURE_NOOP, &tag));
    assert_ne!(moved, digest);
    let rebuilt = s.lifehook(&["compile", "--cache", "cache"]);
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    assert!(
        rebuilt
            .stdout
            .contains(&format!("locked  {tag} -> {digest}")),
        "{}",
        rebuilt.stdout
    );
    assert_eq!(
        std::fs::read_to_string(s.path("lifehook.lock")).expect("lock"),
        lock
    );
    let other = Sandbox::new();
    std::fs::copy(s.path("lifehook.toml"), other.path("lifehook.toml")).expect("copy pipeline");
    std::fs::copy(s.path("lifehook.lock"), other.path("lifehook.lock")).expect("copy lock");
    let updated = other.lifehook(&["compile", "--cache", "cache", "--update"]);
    assert_eq!(updated.code, 0, "{}", updated.stderr);
    let new_lock = std::fs::read_to_string(other.path("lifehook.lock")).expect("lock");
    assert!(
        new_lock.contains(&moved) && !new_lock.contains(&digest),
        "{new_lock}"
    );
    other
        .run(&["--cache", "cache"])
        .assert_outcome("hook", "ok");
    assert_eq!(
        other.run(&["--cache", "cache"]).step("hook")["message"],
        "nothing done"
    );
    registry.stop();
    let run = s.run(&["--cache", "cache"]);
    let step = run.assert_outcome("hook", "ok");
    assert!(
        step["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ok phase=pre-stop")),
        "{step:#}"
    );
    assert_eq!(step["code"], "precompiled", "{step:#}");
}

#[test]
fn pull_always_follows_the_tag_and_falls_back_to_the_pin_when_the_registry_is_down() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let mut registry = Registry::start();
    let s = Sandbox::new();
    let tag = registry.reference("hooks/moving:latest");
    pushed_digest(&push(&s, &registry, plugins::FIXTURE_HOOK, &tag));
    pipeline(&s, &registry, &tag, "pull = \"always\"\n");
    let compiled = s.lifehook(&["compile", "--cache", "cache"]);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    pushed_digest(&push(&s, &registry, plugins::FIXTURE_NOOP, &tag));

    let run = s.run(&["--cache", "cache"]);
    assert_eq!(
        run.assert_outcome("hook", "ok")["message"],
        "nothing done",
        "the new tag runs"
    );

    registry.stop();
    let run = s.run(&["--cache", "cache"]);
    let step = run.assert_outcome("hook", "ok");
    assert!(
        step["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ok phase=")),
        "the pinned digest runs: {step:#}"
    );
    assert!(
        run.stderr.contains("running the cached sha256:"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_digest_reference_is_pulled_once_and_never_pulls_when_told_not_to() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let registry = Registry::start();
    let s = Sandbox::new();
    let digest = pushed_digest(&push(
        &s,
        &registry,
        plugins::FIXTURE_HOOK,
        &registry.reference("hooks/pinned:v1"),
    ));
    let by_digest = registry.reference(&format!("hooks/pinned@{digest}"));

    // pull = "never" with an empty cache: named, nothing fetched.
    pipeline(&s, &registry, &by_digest, "pull = \"never\"\n");
    let never = s.run(&["--cache", "cache"]);
    never.assert_outcome("hook", "failed");
    let message = never.message("hook");
    assert!(
        message.contains("is not in the cache") && message.contains("pull = \"never\""),
        "{message}"
    );
    assert!(!s.path("cache/oci").exists());

    // The default (if-not-present) pulls a pinned digest on first use, with
    // no lock file needed, and checks the step's sha256 pin.
    let sha = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(plugins::FIXTURE_HOOK).expect("plugin")
        )
    );
    pipeline(&s, &registry, &by_digest, &format!("sha256 = \"{sha}\"\n"));
    let run = s.run(&["--cache", "cache"]);
    run.assert_outcome("hook", "ok");
    assert!(
        s.path(&format!("cache/oci/{}.wasm", digest.replace(':', "-")))
            .is_file()
    );

    let wrong = "0".repeat(64);
    pipeline(
        &s,
        &registry,
        &by_digest,
        &format!("sha256 = \"{wrong}\"\n"),
    );
    let refused = s.run(&["--cache", "cache"]);
    let message = refused.message("hook");
    assert!(
        message.contains(&sha) && message.contains("refusing to run other content"),
        "{message}"
    );
}

#[test]
fn what_a_registry_serves_is_checked_before_it_is_kept() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let registry = Registry::start();
    let s = Sandbox::new();
    let wasm_config = "application/vnd.wasm.config.v0+json";
    let core_module: &[u8] = b"\0asm\x01\0\0\0";
    let component = std::fs::read(plugins::FIXTURE_HOOK).expect("plugin");
    registry.put_artifact(
        "bad/core",
        "1",
        wasm_config,
        b"{}",
        &[("application/wasm", core_module)],
    );
    registry.put_artifact(
        "bad/image",
        "1",
        "application/vnd.oci.image.config.v1+json",
        b"{}",
        &[(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            b"not a tarball",
        )],
    );
    registry.put_artifact(
        "bad/two",
        "1",
        wasm_config,
        b"{}",
        &[
            ("application/wasm", &component),
            ("application/wasm", &component),
        ],
    );
    let cases = [
        ("bad/core:1", "is a core module lifehook cannot run"),
        (
            "bad/image:1",
            "it is not a Wasm artifact: its config is application/vnd.oci.image.config.v1+json",
        ),
        ("bad/two:1", "a Wasm artifact has one layer; this one has 2"),
        ("bad/missing:1", "no such tag or digest"),
    ];
    for (path, expected) in cases {
        let reference = registry.reference(path);
        pipeline(&s, &registry, &reference, "");
        let compiled = s.lifehook(&["compile", "--cache", "cache"]);
        assert_eq!(compiled.code, 2, "{path}: {}", compiled.stderr);
        assert!(
            compiled
                .stderr
                .contains(&format!("cannot pull {reference}"))
                && compiled.stderr.contains(expected),
            "{path}: {}",
            compiled.stderr
        );
        assert!(!s.path("lifehook.lock").exists(), "{path}: nothing pinned");
    }
    let kept: Vec<_> = std::fs::read_dir(s.path("cache/oci"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(kept.is_empty(), "nothing kept: {kept:?}");

    // A registry not listed as insecure is reached over HTTPS only.
    let reference = registry.reference("hooks/any:1");
    s.write(
        "lifehook.toml",
        format!("[[pre-stop.steps]]\nname = \"hook\"\nplugin = \"{reference}\"\n"),
    );
    let https = s.lifehook(&["compile", "--cache", "cache"]);
    assert_eq!(https.code, 2, "{}", https.stderr);
    assert!(
        https
            .stderr
            .contains(&format!("https://{}", registry.host()))
            && https
                .stderr
                .contains(&format!("--insecure-registry {}", registry.host())),
        "{}",
        https.stderr
    );
}

#[test]
fn push_refuses_what_lifehook_cannot_run() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let registry = Registry::start();
    let s = Sandbox::new();
    let core = s.write("core.wasm", b"\0asm\x01\0\0\0");
    let run = push(
        &s,
        &registry,
        &core.to_string_lossy(),
        &registry.reference("x/core:1"),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("is a core WebAssembly module"),
        "{}",
        run.stderr
    );
    let run = push(
        &s,
        &registry,
        plugins::FIXTURE_OTHER_WORLD,
        &registry.reference("x/other:1"),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("a component for another world"),
        "{}",
        run.stderr
    );
    let digest = format!("sha256:{}", "a".repeat(64));
    let run = push(
        &s,
        &registry,
        plugins::FIXTURE_HOOK,
        &registry.reference(&format!("x/hook@{digest}")),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("push to a tag"), "{}", run.stderr);
    let run = push(&s, &registry, plugins::FIXTURE_HOOK, "oci://hooks/notify");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(registry.digest_of("x/core", "1"), None);
    assert_eq!(registry.digest_of("x/other", "1"), None);
}

#[test]
fn a_registry_with_auth_refuses_strangers_and_takes_logins_from_env_or_config() {
    crate::support::require_server!("docker-registry", "docker-registry");
    let registry = Registry::start_with_auth("deployer", "s3cret-pass");
    let s = Sandbox::new();
    let tag = registry.reference("hooks/private:1");

    let anonymous = push(&s, &registry, plugins::FIXTURE_HOOK, &tag);
    assert_ne!(anonymous.code, 0);
    assert!(
        anonymous.stderr.contains("LIFEHOOK_REGISTRY_USERNAME"),
        "{}",
        anonymous.stderr
    );
    let wrong = s.lifehook_with(
        &[
            "push",
            plugins::FIXTURE_HOOK,
            &tag,
            "--insecure-registry",
            &registry.host(),
        ],
        |c| {
            c.env("LIFEHOOK_REGISTRY_USERNAME", "deployer")
                .env("LIFEHOOK_REGISTRY_PASSWORD", "guess");
        },
    );
    assert_ne!(wrong.code, 0);
    assert!(wrong.stderr.contains("cannot push"), "{}", wrong.stderr);
    assert_eq!(registry.digest_of("hooks/private", "1"), None);

    let pushed = s.lifehook_with(
        &[
            "push",
            plugins::FIXTURE_HOOK,
            &tag,
            "--insecure-registry",
            &registry.host(),
        ],
        |c| {
            c.env("LIFEHOOK_REGISTRY_USERNAME", "deployer")
                .env("LIFEHOOK_REGISTRY_PASSWORD", "s3cret-pass");
        },
    );
    let digest = pushed_digest(&pushed);

    // A pull with a docker-style auth file, as `podman login` writes it.
    pipeline(&s, &registry, &tag, "");
    let denied = s.lifehook(&["compile", "--cache", "cache"]);
    assert_eq!(denied.code, 2, "{}", denied.stderr);
    assert!(denied.stderr.contains("cannot pull"), "{}", denied.stderr);
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("deployer:s3cret-pass");
    let file = s.write(
        "auth.json",
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            registry.host()
        ),
    );
    let compiled = s.lifehook_with(&["compile", "--cache", "cache"], |c| {
        c.env("REGISTRY_AUTH_FILE", &file);
    });
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    assert!(compiled.stdout.contains(&digest), "{}", compiled.stdout);
    s.run(&["--cache", "cache"]).assert_outcome("hook", "ok");

    // The password from a file, as a mounted Secret holds it.
    let secret = s.write("registry-password", "s3cret-pass\n");
    let updated = s.lifehook_with(&["compile", "--cache", "fresh", "--update"], |c| {
        c.env("LIFEHOOK_REGISTRY_USERNAME", "deployer")
            .env("LIFEHOOK_REGISTRY_PASSWORD_FILE", &secret);
    });
    assert_eq!(updated.code, 0, "{}", updated.stderr);
    assert!(
        updated
            .stdout
            .contains(&format!("pulled  {tag} -> {digest}")),
        "{}",
        updated.stdout
    );
}

#[test]
fn a_stalled_registry_costs_the_step_its_timeout_and_nothing_more() {
    // A registry that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = listener.local_addr().expect("address").to_string();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(8) {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    drop(held);
    let s = Sandbox::new();
    let digest = format!("sha256:{}", "b".repeat(64));
    s.write(
        "lifehook.toml",
        format!(
            "[oci]\ninsecure-registries = [\"{host}\"]\n\n[pre-stop]\ndeadline = \"20s\"\n\n[[pre-stop.steps]]\nname = \"stalled\"\nplugin = \"oci://{host}/hooks/slow@{digest}\"\ntimeout = \"1s\"\n\n[[pre-stop.steps]]\nname = \"after\"\nplugin = \"{}\"\nconfig = {{ mode = \"ok\" }}\n",
            plugins::FIXTURE_HOOK
        ),
    );
    let run = s.run(&["--cache", "cache"]);
    let stalled = run.step("stalled");
    assert_eq!(stalled["outcome"], "timed-out", "{stalled:#}");
    let message = stalled["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("was still being pulled or compiled after 1"),
        "{message}"
    );
    run.assert_outcome("after", "ok");
    assert!(
        run.elapsed < Duration::from_secs(8),
        "took {:?}",
        run.elapsed
    );
}

/// A registry that lies, which a real one cannot be made to do: answers
/// from a table of path -> (content type, body).
fn lying_registry(routes: Vec<(String, &'static str, Vec<u8>)>) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let host = server.server_addr().to_ip().expect("ip").to_string();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let url = request.url().to_owned();
            let found = routes.iter().find(|(path, _, _)| *path == url);
            let response = match (url.as_str(), found) {
                ("/v2/", _) => tiny_http::Response::from_data(b"{}".to_vec()),
                (_, Some((_, content_type, body))) => tiny_http::Response::from_data(body.clone())
                    .with_header(
                        tiny_http::Header::from_bytes("Content-Type", *content_type)
                            .expect("header"),
                    ),
                _ => tiny_http::Response::from_data(
                    b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"unknown\"}]}"
                        .to_vec(),
                )
                .with_status_code(404),
            };
            let _ = request.respond(response);
        }
    });
    host
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(bytes))
}

#[test]
fn a_lying_registry_is_caught_and_nothing_it_sent_is_kept() {
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let component = std::fs::read(plugins::FIXTURE_HOOK).expect("plugin");
    let config = b"{}".to_vec();
    let manifest = |layer_digest: &str, size: u64| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": sha(&config), "size": config.len()},
            "layers": [{"mediaType": "application/wasm", "digest": layer_digest, "size": size}],
        }))
        .expect("json")
    };
    let honest = manifest(&sha(&component), component.len() as u64);
    let wrong_layer = manifest(&sha(b"other bytes"), component.len() as u64);
    let huge = manifest(&sha(&component), 300 << 20);
    let short = manifest(&sha(&component), 100);
    let asked = format!("sha256:{}", "c".repeat(64));
    let routes = vec![
        // Asked for one digest, serves another manifest.
        (
            format!("/v2/lie/manifest/manifests/{asked}"),
            MANIFEST,
            honest.clone(),
        ),
        // A manifest whose layer digest the bytes do not have.
        ("/v2/lie/layer/manifests/1".into(), MANIFEST, wrong_layer),
        (
            format!("/v2/lie/layer/blobs/{}", sha(b"other bytes")),
            "application/octet-stream",
            component.clone(),
        ),
        // A layer declared too large to take.
        ("/v2/lie/huge/manifests/1".into(), MANIFEST, huge),
        // More bytes than declared.
        ("/v2/lie/short/manifests/1".into(), MANIFEST, short),
    ];
    let mut routes: Vec<(String, &'static str, Vec<u8>)> = routes;
    for repo in ["manifest", "layer", "huge", "short"] {
        routes.push((
            format!("/v2/lie/{repo}/blobs/{}", sha(&config)),
            "application/octet-stream",
            config.clone(),
        ));
    }
    routes.push((
        format!("/v2/lie/short/blobs/{}", sha(&component)),
        "application/octet-stream",
        component.clone(),
    ));
    let host = lying_registry(routes);
    let s = Sandbox::new();
    let cases = [
        (
            format!("lie/manifest@{asked}"),
            "does not match its digest, refused",
        ),
        (
            "lie/layer:1".to_owned(),
            "does not match its digest, refused",
        ),
        (
            "lie/huge:1".to_owned(),
            "lifehook takes plugins up to 268435456 bytes",
        ),
        (
            "lie/short:1".to_owned(),
            "more than the 100 bytes its manifest declared",
        ),
    ];
    for (path, expected) in cases {
        let reference = format!("oci://{host}/{path}");
        s.write(
            "lifehook.toml",
            format!("[oci]\ninsecure-registries = [\"{host}\"]\n[[pre-stop.steps]]\nname = \"hook\"\nplugin = \"{reference}\"\n"),
        );
        let compiled = s.lifehook(&["compile", "--cache", "cache"]);
        assert_eq!(compiled.code, 2, "{path}: {}", compiled.stderr);
        assert!(
            compiled
                .stderr
                .contains(&format!("cannot pull {reference}"))
                && compiled.stderr.contains(expected),
            "{path}: {}",
            compiled.stderr
        );
    }
    let kept: Vec<_> = std::fs::read_dir(s.path("cache/oci"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(kept.is_empty(), "nothing kept: {kept:?}");
    assert!(!s.path("lifehook.lock").exists());
}

/// A registry that answers every path but `/v2/` with what `respond` makes
/// of it (404 for `None`), each answer on a thread of its own; its
/// `host:port`.
fn scripted_registry(
    respond: impl Fn(&str) -> Option<tiny_http::ResponseBox> + Send + 'static,
) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let host = server.server_addr().to_ip().expect("ip").to_string();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let url = request.url().to_owned();
            let response = if url == "/v2/" {
                Some(tiny_http::Response::from_data(b"{}".to_vec()).boxed())
            } else {
                respond(&url)
            };
            let response = response.unwrap_or_else(|| {
                tiny_http::Response::from_data(b"{}".to_vec())
                    .with_status_code(404)
                    .boxed()
            });
            std::thread::spawn(move || {
                let _ = request.respond(response);
            });
        }
    });
    host
}

/// Endless or slow bodies: `size` bytes, `pause` before each chunk of
/// `chunk` bytes.
struct Trickle {
    left: u64,
    chunk: usize,
    pause: Duration,
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        std::thread::sleep(self.pause);
        let n = buf.len().min(self.chunk).min(self.left as usize);
        buf[..n].fill(b' ');
        self.left -= n as u64;
        Ok(n)
    }
}

fn trickle(
    size: u64,
    chunk: usize,
    pause: Duration,
    declared: Option<usize>,
) -> tiny_http::ResponseBox {
    tiny_http::Response::new(
        tiny_http::StatusCode(200),
        vec![
            tiny_http::Header::from_bytes(
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json",
            )
            .expect("header"),
        ],
        Trickle {
            left: size,
            chunk,
            pause,
        },
        declared,
        None,
    )
    .boxed()
}

/// `lifehook compile` of a pipeline with the one plugin `reference`, plus
/// `extra`: the run, and the process's peak resident memory in KiB.
fn compile_measured(s: &Sandbox, host: &str, reference: &str, extra: &[&str]) -> (Run, u64) {
    s.write(
        "lifehook.toml",
        format!("[oci]\ninsecure-registries = [\"{host}\"]\n[[pre-stop.steps]]\nname = \"hook\"\nplugin = \"{reference}\"\n"),
    );
    let started = std::time::Instant::now();
    let stderr = s.path("compile.stderr");
    let peak = s.path("compile.peak");
    // Through the test app, so the figure is lifehook's own peak and not
    // this test process's (see tests/app's `--peak-rss`).
    let lifehook = crate::support::lifehook();
    let mut cmd = std::process::Command::new(crate::support::test_app());
    cmd.arg("--peak-rss")
        .arg(&peak)
        .arg(lifehook.get_program())
        .args(["compile", "--cache", "cache"])
        .args(extra)
        .current_dir(s.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"));
    for (key, value) in lifehook.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let status = cmd.status().expect("start compile");
    let peak_kib = std::fs::read_to_string(&peak)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(|| panic!("the test app wrote no peak RSS: {status}"));
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: std::fs::read_to_string(&stderr).unwrap_or_default(),
        elapsed: started.elapsed(),
    };
    (run, peak_kib)
}

/// A manifest or config of any size used to be read whole (a 50 MB
/// manifest: peak RSS 115-162 MiB); a config blob that streams 300 MB after
/// declaring 64 bytes, to the end (328 MiB).
#[test]
fn oversized_manifests_and_configs_are_refused_without_being_read() {
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let component = std::fs::read(plugins::FIXTURE_HOOK).expect("plugin");
    let small_config = b"{}".to_vec();
    let manifest = |config_digest: &str, config_size: u64| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/wasm", "digest": sha(&component), "size": component.len()}],
        }))
        .expect("json")
    };
    let lying_config = manifest(&sha(&small_config), 64);
    let big_config = manifest(&sha(&small_config), 2 << 20);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MANIFEST, "digest": sha(b"x"), "size": 1,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .expect("json");
    let (component_route, config_route) = (sha(&component), sha(&small_config));
    let host = scripted_registry(move |url| {
        let data = |bytes: &[u8], kind: &str| {
            Some(
                tiny_http::Response::from_data(bytes.to_vec())
                    .with_header(
                        tiny_http::Header::from_bytes("Content-Type", kind).expect("header"),
                    )
                    .boxed(),
            )
        };
        match url {
            // 50 MB of manifest, declared.
            "/v2/big/manifest/manifests/1" => {
                Some(trickle(50 << 20, 1 << 20, Duration::ZERO, Some(50 << 20)))
            }
            // 50 MB of manifest, chunked (no length to refuse up front).
            "/v2/big/chunked/manifests/1" => Some(trickle(50 << 20, 1 << 20, Duration::ZERO, None)),
            "/v2/big/config/manifests/1" => data(&big_config, MANIFEST),
            "/v2/lying/config/manifests/1" => data(&lying_config, MANIFEST),
            "/v2/multi/arch/manifests/1" => data(&index, "application/vnd.oci.image.index.v1+json"),
            u if u.ends_with(&format!("/blobs/{config_route}")) => {
                // Declared 64 bytes; streams 300 MB if anyone reads it.
                Some(trickle(300 << 20, 1 << 20, Duration::ZERO, None))
            }
            u if u.ends_with(&format!("/blobs/{component_route}")) => {
                data(&component, "application/octet-stream")
            }
            _ => None,
        }
    });
    let s = Sandbox::new();
    let cases = [
        // Refused on its declared length, or at the cap while reading
        // (the test server may send either form).
        ("big/manifest:1", "4194304 bytes"),
        (
            "big/chunked:1",
            "more than the 4194304 bytes lifehook reads for a manifest",
        ),
        (
            "big/config:1",
            "a Wasm artifact's config is at most 1048576 bytes",
        ),
        (
            "multi/arch:1",
            "this reference is an image index (a multi-platform container image), not a Wasm plugin artifact (media type application/vnd.oci.image.index.v1+json)",
        ),
    ];
    for (path, expected) in cases {
        let reference = format!("oci://{host}/{path}");
        let (run, peak_kib) = compile_measured(&s, &host, &reference, &[]);
        eprintln!("{path}: exit {}, peak RSS {} MiB", run.code, peak_kib >> 10);
        assert_eq!(run.code, 2, "{path}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("cannot pull {reference}"))
                && run.stderr.contains(expected),
            "{path}: {}",
            run.stderr
        );
        assert!(peak_kib < 100 << 10, "{path}: peak RSS {peak_kib} KiB");
        assert!(!run.stderr.contains("platform_resolver"), "{}", run.stderr);
    }
    // The config is never downloaded: the lying one costs nothing, and
    // the plugin is pulled.
    let reference = format!("oci://{host}/lying/config:1");
    let (run, peak_kib) = compile_measured(&s, &host, &reference, &[]);
    eprintln!(
        "lying config: exit {}, peak RSS {} MiB, {:?}",
        run.code,
        peak_kib >> 10,
        run.elapsed
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(peak_kib < 100 << 10, "peak RSS {peak_kib} KiB");
}

/// A registry sending one byte a second used to keep `compile` pulling a
/// 400-byte manifest for over 70 s: the read timeout restarted with every
/// byte. Now the pull has a deadline and a minimum rate.
#[test]
fn a_trickling_registry_is_given_up_with_the_reason() {
    let host = scripted_registry(|url| match url {
        "/v2/slow/manifest/manifests/1" => Some(trickle(400, 1, Duration::from_secs(1), Some(400))),
        _ => None,
    });
    let s = Sandbox::new();
    let reference = format!("oci://{host}/slow/manifest:1");
    let (run, _) = compile_measured(&s, &host, &reference, &["--pull-timeout", "3s"]);
    eprintln!(
        "slow registry, --pull-timeout 3s: failed after {:?}",
        run.elapsed
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the pull did not end within its timeout of 3s"),
        "{}",
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(8), "{:?}", run.elapsed);
    let (run, _) = compile_measured(&s, &host, &reference, &[]);
    eprintln!("slow registry, defaults: failed after {:?}", run.elapsed);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("the registry is too slow")
            && run.stderr.contains("below the minimum rate of 8 KiB/s"),
        "{}",
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);
}

#[test]
fn repository_names_outside_the_distribution_grammar_are_located_errors() {
    let s = Sandbox::new();
    s.write(
        "lifehook.toml",
        "[[pre-stop.steps]]\nname = \"hook\"\nplugin = \"oci://registry.example.com/../../etc:1\"\n",
    );
    let check = s.lifehook(&["check"]);
    assert_eq!(check.code, 2, "{}", check.stderr);
    assert!(
        check
            .stderr
            .contains("outside the OCI distribution grammar")
            && check.stderr.contains("lifehook.toml:3:"),
        "{}",
        check.stderr
    );
}
