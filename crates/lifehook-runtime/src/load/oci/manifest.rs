//! The manifest fetch, by hand rather than through `oci-client` (which
//! reads a manifest whole, however large): bounded, digest-checked, and
//! refused unless it is an image manifest.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use oci_client::Reference;
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;

use super::bounded::Bounded;
use super::{MAX_MANIFEST_BYTES, chain, refused_credentials, unknown_reference};
use crate::load::sources::Registries;

/// The media types a manifest is asked for in.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Fetches the manifest of `image`, reading at most
/// [`MAX_MANIFEST_BYTES`] (`oci-client` reads a manifest whole, however
/// large): the manifest and its digest, verified against the digest the
/// reference pins or, for a tag, the one the registry names.
pub(super) async fn fetch_manifest(
    image: &Reference,
    registries: &Registries,
    auth: &RegistryAuth,
    token: Option<&str>,
    received: &AtomicU64,
) -> Result<(OciImageManifest, String), String> {
    // Plain HTTP only for a registry the pipeline lists as insecure: a
    // manifest fetched in the clear could be swapped for another plugin's.
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
    // A client of its own, with the same connect and read timeouts as
    // oci-client's (the pull's overall timeout and rate watch come on top).
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
    let mut request = http
        .get(&url)
        .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
    // The bearer token oci-client's sign-in got, else basic credentials
    // (a registry that uses no tokens), else anonymous.
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
    // The digest the registry says the manifest has: for a tag, what the
    // bytes must hash to (nothing else pins them).
    let named_digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A declared length over the cap is refused before reading; an
    // undeclared one is cut off by `Bounded` at the cap.
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
    // The digest of what arrived, checked against the pin (a digest
    // reference) or the registry's own claim: a registry or proxy that
    // alters a manifest is caught here, before any layer is fetched.
    let digest = format!("sha256:{}", crate::load::sources::sha256_hex(&body.bytes));
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
    // The head first, to name what the reference is when it is not a Wasm
    // artifact (an index from `docker push` is the usual mistake) rather
    // than fail with a serde error about a missing field.
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
