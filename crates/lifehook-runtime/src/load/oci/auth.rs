//! Registry credentials, first found: `LIFEHOOK_REGISTRY_USERNAME` and
//! `LIFEHOOK_REGISTRY_PASSWORD` (or `LIFEHOOK_REGISTRY_PASSWORD_FILE`, a
//! mounted Secret), then a docker-style `config.json`, else anonymous.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

/// The credentials for `registry`.
pub fn auth_for(registry: &str) -> RegistryAuth {
    if let Ok(user) = std::env::var("LIFEHOOK_REGISTRY_USERNAME") {
        let password = std::env::var("LIFEHOOK_REGISTRY_PASSWORD")
            .ok()
            // The password itself wins over its file: an explicit value in
            // the environment is the more deliberate of the two.
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
    // The files podman (REGISTRY_AUTH_FILE) and docker read, in that order,
    // so a `podman login` or `docker login` on the build machine works.
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
    // Docker writes some hosts with a scheme or a trailing slash
    // (`https://index.docker.io/v1/`): compare the bare host.
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
