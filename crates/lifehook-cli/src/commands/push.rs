//! `lifehook push`: publishes a plugin to an OCI registry as a Wasm
//! artifact, after checking that lifehook can run it.

use std::path::PathBuf;

use clap::Args;

use super::RegistryArgs;

/// Publish a plugin to an OCI registry (CNCF Wasm artifact layout: config
/// `application/vnd.wasm.config.v0+json`, one `application/wasm` layer) and
/// print its manifest digest, to pin in a pipeline as
/// `plugin = "oci://REGISTRY/REPO@sha256:..."`.
///
/// Only a component this lifehook can run is pushed. The same bytes always
/// make the same digest (the config records no time), so pushing again
/// changes nothing.
///
/// Credentials: LIFEHOOK_REGISTRY_USERNAME and LIFEHOOK_REGISTRY_PASSWORD
/// (or LIFEHOOK_REGISTRY_PASSWORD_FILE), else the `auths` of REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json or
/// ~/.docker/config.json (what `podman login` / `docker login` write).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook push target/wasm32-wasip2/release/notify_shutdown.wasm oci://ghcr.io/acme/hooks/notify:1.2.0
  lifehook push hook.wasm oci://localhost:5000/hooks/hook:dev --insecure-registry localhost:5000")]
pub struct Push {
    /// The plugin file (a .wasm component).
    plugin: PathBuf,

    /// Where to push it: oci://REGISTRY/REPOSITORY:TAG.
    reference: String,

    #[command(flatten)]
    registries: RegistryArgs,
}

impl Push {
    #[cfg(feature = "oci")]
    pub fn execute(self) -> anyhow::Result<i32> {
        use super::UsageError;
        use lifehook_manifest::OciReference;

        let reference = OciReference::parse(&self.reference).map_err(UsageError)?;
        if reference.digest.is_some() {
            return Err(UsageError(format!(
                "{reference}: push to a tag (oci://REGISTRY/REPOSITORY:TAG); the registry gives the digest"
            ))
            .into());
        }
        let bytes = std::fs::read(&self.plugin).map_err(|e| {
            UsageError(format!("cannot read plugin {}: {e}", self.plugin.display()))
        })?;
        let report = super::inspect::describe(&self.plugin, &bytes)?;
        if !report.runnable {
            return Err(UsageError(format!(
                "refusing to push {}: lifehook cannot run it: {}",
                self.plugin.display(),
                report.problems.join("; ")
            ))
            .into());
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [format!("sha256:{}", lifehook_runtime::sources::sha256_hex(&bytes))],
            "component": {
                "target": report.target(),
                "contract": report.contract,
                "imports": report.imports.iter().map(|i| &i.name).collect::<Vec<_>>(),
                "exports": &report.exports,
            },
        }))?;
        let registries = self.registries.registries(None);
        let io = super::tokio_runtime()?;
        let digest = io.block_on(lifehook_runtime::oci::push(
            &reference,
            &registries,
            bytes,
            config,
        ))?;
        crate::output::print_out(&format!("{}\n", reference.pinned(&digest)));
        Ok(crate::exit::EXIT_OK)
    }

    #[cfg(not(feature = "oci"))]
    pub fn execute(self) -> anyhow::Result<i32> {
        let _ = (&self.plugin, &self.reference, &self.registries);
        anyhow::bail!("this lifehook was built without registry support; push with a full build")
    }
}
