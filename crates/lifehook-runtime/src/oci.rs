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

use std::time::Duration;

use base64::Engine as _;
use lifehook_manifest::OciReference;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
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
/// credentials [`auth_for`] finds; `fail` words a refusal.
async fn signed_in(
    r: &OciReference,
    registries: &Registries,
    operation: RegistryOperation,
    fail: impl Fn(String) -> SourceError,
) -> Result<(Client, Reference, RegistryAuth), SourceError> {
    let image = reference(r)?;
    let auth = auth_for(&r.registry);
    let client = client(registries);
    client
        .auth(&image, &auth, operation)
        .await
        .map_err(|e| fail(describe(&e, &r.registry)))?;
    Ok((client, image, auth))
}

/// The largest plugin a pull accepts (a Python component is ~20 MB).
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;

/// Pulls `r`: its manifest digest and the component's bytes. The manifest is
/// checked before the layer is fetched (a Wasm artifact, one layer, no
/// larger than [`MAX_PLUGIN_BYTES`]), and the download stops at the size the
/// manifest declared.
pub async fn pull(
    r: &OciReference,
    registries: &Registries,
) -> Result<(String, Vec<u8>), SourceError> {
    let fail = |message: String| SourceError::Pull {
        reference: r.to_string(),
        message,
    };
    let (client, image, auth) = signed_in(r, registries, RegistryOperation::Pull, &fail).await?;
    let (manifest, digest, _config) = client
        .pull_manifest_and_config(&image, &auth)
        .await
        .map_err(|e| fail(describe(&e, &r.registry)))?;
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
    };
    client
        .pull_blob(&image, layer, &mut out)
        .await
        .map_err(|e| fail(describe(&e, &r.registry)))?;
    Ok((digest, out.bytes))
}

/// A buffer that refuses bytes beyond what the manifest declared.
struct Bounded {
    bytes: Vec<u8>,
    limit: u64,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() as u64 + buf.len() as u64 > self.limit {
            let limit = self.limit;
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {limit} bytes its manifest declared"
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
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
    let (client, image, auth) = signed_in(r, registries, RegistryOperation::Push, &fail).await?;
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

/// A registry error in one line, without the chain of wrappers.
fn describe(e: &oci_client::errors::OciDistributionError, registry: &str) -> String {
    use oci_client::errors::OciDistributionError as E;
    const LOGIN: &str = "set LIFEHOOK_REGISTRY_USERNAME and LIFEHOOK_REGISTRY_PASSWORD, or log in with `podman login` / `docker login`";
    match e {
        E::AuthenticationFailure(m) => format!("authentication refused ({m}): {LOGIN}"),
        E::UnauthorizedError { url } => format!("unauthorized at {url}: {LOGIN}"),
        E::ServerError {
            code: 401 | 403,
            url,
            ..
        } => {
            format!("the registry refused the credentials given (or none) at {url}: {LOGIN}")
        }
        E::RegistryError { envelope, url } => {
            use oci_client::errors::OciErrorCode as C;
            let codes: Vec<&C> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, C::ManifestUnknown | C::NameUnknown | C::NotFound))
            {
                format!(
                    "no such tag or digest in the registry ({url}): check the name, or push it with `lifehook push`"
                )
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
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text += &format!(": {s}");
                source = s.source();
            }
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
