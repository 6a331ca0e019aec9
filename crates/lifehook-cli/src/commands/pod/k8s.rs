//! The few fields of Kubernetes objects that `check --pod` reads, as serde
//! types: workloads down to their pod spec, containers with their command,
//! lifecycle hooks and mounts, volumes and ConfigMaps. Everything else in a
//! manifest is ignored, so the model does not depend on one Kubernetes
//! version's schema (k8s-openapi's full types would cost far more compile
//! time for a few fields). Values that a problem may point at are
//! `Spanned`, to locate it in the YAML.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub(super) const DEFAULT_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Object {
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) metadata: Meta,
    pub(super) spec: Option<Spec>,
    #[serde(default)]
    pub(super) data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Meta {
    pub(super) name: Option<String>,
}

/// A pod spec, or a workload spec holding one in `template` or
/// `jobTemplate`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Spec {
    #[serde(default)]
    pub(super) containers: Vec<Container>,
    #[serde(default)]
    pub(super) init_containers: Vec<Container>,
    pub(super) termination_grace_period_seconds: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) volumes: Vec<Volume>,
    pub(super) template: Option<Box<Template>>,
    pub(super) job_template: Option<Box<Template>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Template {
    pub(super) spec: Option<Spec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Container {
    pub(super) name: Spanned<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) args: Option<Vec<String>>,
    pub(super) lifecycle: Option<Lifecycle>,
    pub(super) restart_policy: Option<String>,
    #[serde(default)]
    pub(super) volume_mounts: Vec<Mount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Lifecycle {
    pub(super) pre_stop: Option<Handler>,
    pub(super) post_start: Option<Handler>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Handler {
    pub(super) exec: Option<ExecAction>,
    pub(super) http_get: Option<HttpGet>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ExecAction {
    pub(super) command: Spanned<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HttpGet {
    pub(super) path: Option<Spanned<String>>,
    pub(super) port: Spanned<Port>,
    #[serde(default)]
    pub(super) http_headers: Vec<Header>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Port {
    Number(u16),
    /// A named container port: accepted as it is.
    Name(#[expect(dead_code, reason = "only told apart from a number")] String),
}

#[derive(Debug, Deserialize)]
pub(super) struct Header {
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Mount {
    pub(super) name: String,
    pub(super) mount_path: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Volume {
    pub(super) name: String,
    pub(super) config_map: Option<ConfigMapRef>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ConfigMapRef {
    pub(super) name: String,
}

/// The pod spec inside a workload of `kind`.
pub(super) fn pod_spec<'a>(kind: &str, spec: &'a Spec) -> Option<&'a Spec> {
    match kind {
        "Pod" => Some(spec),
        "CronJob" => spec
            .job_template
            .as_ref()?
            .spec
            .as_ref()?
            .template
            .as_ref()?
            .spec
            .as_ref(),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => spec.template.as_ref()?.spec.as_ref(),
        _ => None,
    }
}
