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

use base64::Engine as _;
use lifehook_manifest::OciReference;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::sources::{Registries, SourceError};

/// The config media type of a Wasm artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a Wasm component.
pub const WASM_MEDIA_TYPE: &str = "application/wasm";
/// The layer media type older tools push.
const LEGACY_WASM_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

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

fn reference(r: &OciReference) -> Result<Reference, SourceError> {
    r.without_scheme().parse().map_err(|e| SourceError::Pull {
        reference: r.to_string(),
        message: format!("{e}"),
    })
}

/// The credentials for `registry`.
pub fn auth_for(registry: &str) -> RegistryAuth {
    if let Ok(user) = std::env::var("LIFEHOOK_REGISTRY_USERNAME") {
        let password = std::env::var("LIFEHOOK_REGISTRY_PASSWORD")
            .ok()
            .or_else(|| {
                // A mounted Secret: the file's content, without a final newline.
                let file = std::env::var_os("LIFEHOOK_REGISTRY_PASSWORD_FILE")?;
                let text = std::fs::read_to_string(&file).ok()?;
                Some(text.trim_end_matches(['\n', '\r']).to_owned())
            });
        if let Some(password) = password {
            return RegistryAuth::Basic(user, password);
        }
    }
    let candidates = [
        std::env::var_os("REGISTRY_AUTH_FILE").map(std::path::PathBuf::from),
        std::env::var_os("DOCKER_CONFIG").map(|d| std::path::PathBuf::from(d).join("config.json")),
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker/config.json")),
    ];
    for file in candidates.into_iter().flatten() {
        if let Some(auth) = docker_config_auth(&file, registry) {
            return auth;
        }
    }
    RegistryAuth::Anonymous
}

/// `auths.<registry>.auth` (base64 of `user:password`) of a docker config.
fn docker_config_auth(file: &std::path::Path, registry: &str) -> Option<RegistryAuth> {
    let text = std::fs::read_to_string(file).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(host, v)| {
        let host = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        (host == registry).then_some(v)
    })?;
    let encoded = entry.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some(RegistryAuth::Basic(user.to_owned(), password.to_owned()))
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
    let image = reference(r)?;
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
    let fail = |message: String| SourceError::Pull {
        reference: r.to_string(),
        message,
    };
    let received = AtomicU64::new(0);
    let started = Instant::now();
    let timeout = registries.pull_timeout;
    tokio::select! {
        pulled = pull_bounded(r, registries, &received) => pulled,
        why = watch_rate(&received, started, timeout) => Err(fail(why)),
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
    let fail = |message: String| SourceError::Pull {
        reference: r.to_string(),
        message,
    };
    let (client, image, auth, token) =
        signed_in(r, registries, RegistryOperation::Pull, &fail).await?;
    let (manifest, digest) = fetch_manifest(&image, registries, &auth, token.as_deref(), received)
        .await
        .map_err(fail)?;
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

/// The media types a manifest is asked for in.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Fetches the manifest of `image`, reading at most
/// [`MAX_MANIFEST_BYTES`] (`oci-client` reads a manifest whole, however
/// large): the manifest and its digest, verified against the digest the
/// reference pins or, for a tag, the one the registry names.
async fn fetch_manifest(
    image: &Reference,
    registries: &Registries,
    auth: &RegistryAuth,
    token: Option<&str>,
    received: &AtomicU64,
) -> Result<(OciImageManifest, String), String> {
    let registry = image.resolve_registry();
    let scheme = if registries.insecure.iter().any(|i| i == registry) {
        "http"
    } else {
        "https"
    };
    let url = format!(
        "{scheme}://{registry}/v2/{}/manifests/{}",
        image.repository(),
        image.digest().or(image.tag()).unwrap_or("latest")
    );
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
    let mut request = http
        .get(&url)
        .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
    request = match (token, auth) {
        (Some(token), _) => request.bearer_auth(token),
        (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
        (None, _) => request,
    };
    let mut response = request
        .send()
        .await
        .map_err(|e| format!("cannot fetch the manifest at {url}: {}", chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(match status.as_u16() {
            401 | 403 => refused_credentials(&url),
            404 => unknown_reference(&url),
            code => format!("the registry answered {code} for the manifest at {url}"),
        });
    }
    let named_digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(length) = response.content_length()
        && length > MAX_MANIFEST_BYTES
    {
        return Err(format!(
            "its manifest is {length} bytes; lifehook reads manifests up to {MAX_MANIFEST_BYTES} bytes (4 MiB), as other OCI clients do"
        ));
    }
    let mut body = Bounded {
        bytes: Vec::new(),
        limit: MAX_MANIFEST_BYTES,
        what: "lifehook reads for a manifest (4 MiB, as other OCI clients)",
        received,
    };
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read the manifest at {url}: {}", chain(&e)))?
    {
        body.push(&chunk).map_err(|e| e.to_string())?;
    }
    let digest = format!("sha256:{}", crate::sources::sha256_hex(&body.bytes));
    let expected = image.digest().map(str::to_owned).or(named_digest);
    if let Some(expected) = expected
        && expected != digest
    {
        return Err(format!(
            "what the registry sent does not match its digest, refused: the manifest is {digest}, the registry named {expected}"
        ));
    }
    parse_manifest(&body.bytes).map(|m| (m, digest))
}

/// A manifest's bytes as an image manifest, or why they are not one.
fn parse_manifest(bytes: &[u8]) -> Result<OciImageManifest, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let head: Head = serde_json::from_slice(bytes)
        .map_err(|e| format!("its manifest is not valid JSON: {e}"))?;
    let index_type = head.media_type.as_deref().filter(|t| {
        *t == oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE
            || *t == oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE
    });
    if index_type.is_some() || head.manifests.is_some() {
        return Err(format!(
            "this reference is an image index (a multi-platform container image), not a Wasm plugin artifact (media type {}); push the plugin with `lifehook push`",
            index_type.unwrap_or(oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE)
        ));
    }
    if head.schema_version != Some(2) {
        return Err(format!(
            "its manifest has schemaVersion {}, not 2",
            head.schema_version
                .map_or_else(|| "(none)".to_owned(), |v| v.to_string())
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| format!("its manifest is not an OCI image manifest: {e}"))
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

/// A buffer that refuses bytes beyond `limit`, and counts what arrives.
struct Bounded<'a> {
    bytes: Vec<u8>,
    limit: u64,
    /// What the limit is, for the error.
    what: &'static str,
    received: &'a AtomicU64,
}

impl Bounded<'_> {
    fn push(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.received.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if self.bytes.len() as u64 + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes {}; stopped reading",
                self.limit, self.what
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(())
    }
}

impl tokio::io::AsyncWrite for Bounded<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.push(buf).map(|()| buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
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

/// A registry error in one line, without the chain of wrappers.
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
