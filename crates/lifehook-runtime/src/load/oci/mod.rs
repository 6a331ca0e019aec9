//! Talking to OCI registries with `oci-client`, in the CNCF Wasm artifact
//! layout (config `application/vnd.wasm.config.v0+json`, one
//! `application/wasm` layer; the older `application/vnd.wasm.content.layer.v1+wasm`
//! is accepted on pull). `oci-client` verifies the manifest's and every
//! blob's digest while downloading.
//!
//! Credentials, first found: `LIFEHOOK_REGISTRY_USERNAME` and
//! `LIFEHOOK_REGISTRY_PASSWORD` (or `LIFEHOOK_REGISTRY_PASSWORD_FILE`, a
//! file holding it); then the `auths` of a docker-style
//! `config.json` at `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`; else anonymous. Plain HTTP only for registries
//! listed as insecure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lifehook_manifest::OciReference;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::load::sources::{Registries, SourceError};

mod auth;
mod bounded;
mod manifest;

pub use auth::auth_for;
use bounded::Bounded;
use manifest::fetch_manifest;

/// The config media type of a Wasm artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a Wasm component.
pub const WASM_MEDIA_TYPE: &str = "application/wasm";
/// The layer media type older tools push.
const LEGACY_WASM_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// An oci-client client: HTTPS except for the registries the pipeline
/// lists as insecure, and timeouts so that a registry that accepts the
/// connection and then says nothing cannot hold a pull forever.
fn client(registries: &Registries) -> Client {
    // rustls needs a crypto provider; ring is already in the build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(registries.insecure.clone()),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(30)),
        platform_resolver: None,
        ..ClientConfig::default()
    })
}

/// The manifest's parsed reference as oci-client's, field by field: the
/// manifest already checked it against the distribution grammar (and it
/// always names its registry), so it is not printed and parsed again. Docker
/// Hub's legacy host and official-image names are normalised as oci-client's
/// own parser would.
fn reference(r: &OciReference) -> Reference {
    let registry = match r.registry.as_str() {
        "index.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    };
    let repository = if registry == "docker.io" && !r.repository.contains('/') {
        format!("library/{}", r.repository)
    } else {
        r.repository.clone()
    };
    match (&r.tag, &r.digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.clone(), digest.clone())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.clone()),
        (tag, None) => Reference::with_tag(
            registry,
            repository,
            tag.clone().unwrap_or_else(|| "latest".to_owned()),
        ),
    }
}

/// A client for `r`'s registry, signed in for `operation` with the
/// credentials [`auth_for`] finds; `fail` words a refusal. Also the bearer
/// token the sign-in got, if the registry uses them.
async fn signed_in(
    r: &OciReference,
    registries: &Registries,
    operation: RegistryOperation,
    fail: impl Fn(String) -> SourceError,
) -> Result<(Client, Reference, RegistryAuth, Option<String>), SourceError> {
    let image = reference(r);
    let auth = auth_for(&r.registry);
    let client = client(registries);
    let token = client
        .auth(&image, &auth, operation)
        .await
        .map_err(|e| fail(describe(&e, &r.registry)))?;
    Ok((client, image, auth, token))
}

/// The largest plugin a pull accepts (a Python component is ~20 MB).
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;
/// The largest manifest a pull reads, as ORAS and other clients cap it.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest config a Wasm artifact may declare. lifehook does not
/// download the config at all (nothing in it is needed to run the plugin),
/// so a registry cannot make it read one.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// A pull slower than this on average, once [`RATE_GRACE`] has passed,
/// is given up.
pub const MIN_RATE: u64 = 8 << 10;
/// How long a pull may take before [`MIN_RATE`] applies (sign-in, the
/// manifest, the start of the layer).
pub const RATE_GRACE: Duration = Duration::from_secs(10);

/// Pulls `r`: its manifest digest and the component's bytes. The manifest is
/// checked before the layer is fetched (a Wasm artifact, one layer, no
/// larger than [`MAX_PLUGIN_BYTES`]), and the download stops at the size the
/// manifest declared. The whole pull ends within `registries.pull_timeout`,
/// and earlier when the registry sends less than [`MIN_RATE`].
pub async fn pull(
    r: &OciReference,
    registries: &Registries,
) -> Result<(String, Vec<u8>), SourceError> {
    let fail = pull_failure(r);
    let received = AtomicU64::new(0);
    let started = Instant::now();
    let timeout = registries.pull_timeout;
    tokio::select! {
        pulled = pull_bounded(r, registries, &received) => pulled,
        why = watch_rate(&received, started, timeout) => Err(fail(why)),
    }
}

/// Words a pull's failure of `r`.
fn pull_failure(r: &OciReference) -> impl Fn(String) -> SourceError + '_ {
    |message| SourceError::Pull {
        reference: r.to_string(),
        message,
    }
}

/// Ends when the pull of which `received` counts the bytes is too slow:
/// why.
async fn watch_rate(received: &AtomicU64, started: Instant, timeout: Duration) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        let bytes = received.load(Ordering::Relaxed);
        if elapsed >= timeout {
            return format!(
                "the pull did not end within its timeout of {} ({bytes} bytes received; raise --pull-timeout, or check the registry and the network)",
                lifehook_units::format_duration(timeout)
            );
        }
        if elapsed >= RATE_GRACE && bytes < MIN_RATE * elapsed.as_secs() {
            return format!(
                "the registry is too slow: {bytes} bytes in {}, below the minimum rate of {} KiB/s",
                lifehook_units::format_duration(elapsed),
                MIN_RATE >> 10
            );
        }
    }
}

async fn pull_bounded(
    r: &OciReference,
    registries: &Registries,
    received: &AtomicU64,
) -> Result<(String, Vec<u8>), SourceError> {
    let fail = pull_failure(r);
    let (client, image, auth, token) =
        signed_in(r, registries, RegistryOperation::Pull, &fail).await?;
    let (manifest, digest) = fetch_manifest(&image, registries, &auth, token.as_deref(), received)
        .await
        .map_err(&fail)?;
    if let Some(pinned) = &r.digest
        && pinned != &digest
    {
        return Err(fail(format!(
            "the registry's manifest is {digest}, not the pinned {pinned}"
        )));
    }
    let config_type = &manifest.config.media_type;
    if config_type != CONFIG_MEDIA_TYPE {
        return Err(fail(format!(
            "it is not a Wasm artifact: its config is {config_type}, not {CONFIG_MEDIA_TYPE} (push it with `lifehook push`)"
        )));
    }
    if u64::try_from(manifest.config.size).unwrap_or(u64::MAX) > MAX_CONFIG_BYTES {
        return Err(fail(format!(
            "its config declares {} bytes; a Wasm artifact's config is at most {MAX_CONFIG_BYTES} bytes",
            manifest.config.size
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(fail(format!(
            "a Wasm artifact has one layer; this one has {}",
            manifest.layers.len()
        )));
    };
    if layer.media_type != WASM_MEDIA_TYPE && layer.media_type != LEGACY_WASM_MEDIA_TYPE {
        return Err(fail(format!(
            "it is not a Wasm artifact: its layer is {}, not {WASM_MEDIA_TYPE}",
            layer.media_type
        )));
    }
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > MAX_PLUGIN_BYTES {
        return Err(fail(format!(
            "its layer declares {size} bytes; lifehook takes plugins up to {MAX_PLUGIN_BYTES} bytes"
        )));
    }
    let mut out = Bounded {
        bytes: Vec::with_capacity(usize::try_from(size).unwrap_or(0)),
        limit: size,
        what: "its manifest declared for the layer",
        received,
    };
    client
        .pull_blob(&image, layer, &mut out)
        .await
        .map_err(|e| fail(describe(&e, &r.registry)))?;
    Ok((digest, out.bytes))
}

/// An error and its sources in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// Pushes a component to `r` with `config` (JSON) as the artifact's
/// config; returns the manifest digest.
pub async fn push(
    r: &OciReference,
    registries: &Registries,
    component: Vec<u8>,
    config: Vec<u8>,
) -> Result<String, SourceError> {
    let fail = |message: String| SourceError::Push {
        reference: r.to_string(),
        message,
    };
    let (client, image, auth, _) = signed_in(r, registries, RegistryOperation::Push, &fail).await?;
    let layer = ImageLayer::new(component, WASM_MEDIA_TYPE.to_owned(), None);
    let config = Config::new(config, CONFIG_MEDIA_TYPE.to_owned(), None);
    client
        .push(&image, &[layer], config, &auth, None)
        .await
        .map_err(|e| fail(describe(&e, &r.registry)))?;
    client
        .fetch_manifest_digest(&image, &auth)
        .await
        .map_err(|e| fail(describe(&e, &r.registry)))
}

/// How to give credentials, for a refusal.
const LOGIN: &str = "set LIFEHOOK_REGISTRY_USERNAME and LIFEHOOK_REGISTRY_PASSWORD, or log in with `podman login` / `docker login`";

/// A registry's refusal of the credentials given (or of none) at `url`.
fn refused_credentials(url: &str) -> String {
    format!("the registry refused the credentials given (or none) at {url}: {LOGIN}")
}

/// A registry's "no such tag or digest" for `url`.
fn unknown_reference(url: &str) -> String {
    format!(
        "no such tag or digest in the registry ({url}): check the name, or push it with `lifehook push`"
    )
}

/// A registry error in one line, without the chain of wrappers. The
/// registry's error codes are mapped to the two answers a user can act on
/// (log in; check the name), whichever status code carried them, since
/// registries disagree on 401, 403 and 404 for a private repository.
fn describe(e: &oci_client::errors::OciDistributionError, registry: &str) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::AuthenticationFailure(m) => format!("authentication refused ({m}): {LOGIN}"),
        E::UnauthorizedError { url } => format!("unauthorized at {url}: {LOGIN}"),
        E::ServerError {
            code: 401 | 403,
            url,
            ..
        } => refused_credentials(url),
        E::RegistryError { envelope, url } => {
            use oci_client::errors::OciErrorCode as C;
            let codes: Vec<&C> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, C::ManifestUnknown | C::NameUnknown | C::NotFound))
            {
                unknown_reference(url)
            } else if codes
                .iter()
                .any(|c| matches!(c, C::Unauthorized | C::Denied))
            {
                format!("the registry refused access at {url}: {LOGIN}")
            } else {
                format!("the registry answered {envelope} ({url})")
            }
        }
        E::ImageManifestNotFoundError(m) => format!("no such tag or digest ({m})"),
        E::IncompatibleLayerMediaTypeError(m) => {
            format!("it is not a Wasm artifact: its layer is {m}")
        }
        E::DigestError(d) => {
            format!("what the registry sent does not match its digest, refused: {d}")
        }
        other => {
            let mut text = chain(other);
            if text.contains("https://")
                && (text.contains("InvalidContentType") || text.contains("corrupt message"))
            {
                text += &format!(
                    " (the registry answered HTTPS with plain HTTP: if {registry} is a plain-HTTP registry you trust, pass --insecure-registry {registry} or list it under [oci] insecure-registries)"
                );
            }
            text
        }
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    #[test]
    fn the_manifest_reference_converts_as_oci_client_would_parse_it() {
        for text in [
            "oci://registry.example.com:5000/hooks/notify:1.0",
            "oci://localhost:5000/a/b/c@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "oci://ghcr.io/org/x:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "oci://docker.io/notify:2",
            "oci://index.docker.io/org/notify:2",
        ] {
            let ours = OciReference::parse(text).expect("valid");
            let parsed: Reference = ours.without_scheme().parse().expect("oci-client parses it");
            let converted = reference(&ours);
            assert_eq!(converted.whole(), parsed.whole(), "{text}");
            assert_eq!(converted.registry(), parsed.registry(), "{text}");
            assert_eq!(converted.repository(), parsed.repository(), "{text}");
            assert_eq!(converted.tag(), parsed.tag(), "{text}");
            assert_eq!(converted.digest(), parsed.digest(), "{text}");
        }
    }
}
