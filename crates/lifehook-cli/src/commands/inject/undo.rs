//! The record inject leaves in a pod template's annotation, and
//! `--remove`: taking out exactly what the record says was added, and
//! putting back what was replaced.

use serde::{Deserialize, Serialize};

use super::template::{HASH, INSTALL, PIPELINE_VOLUME, PULL, RECORD, SIDECAR, VOLUME};
use super::yaml::Node;
use crate::commands::UsageError;

/// What inject changed in one pod template, kept in its [`RECORD`]
/// annotation as JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) mode: String,
    /// Keys of the template that inject created (`metadata`,
    /// `annotations`, `initContainers`, `volumes`), taken out again when
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) created: Vec<String>,
    #[serde(default)]
    pub(super) containers: Vec<ContainerRecord>,
    /// Whether inject set the pod's terminationGracePeriodSeconds, and
    /// its value before (`None`: it had none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) grace_set: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) grace_before: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct ContainerRecord {
    pub(super) name: String,
    /// The environment variables added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) env: Vec<String>,
    /// Keys created (`env`, `volumeMounts`, `lifecycle`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) created: Vec<String>,
    /// The hooks set (`preStop`, `postStart`), each with the hook it
    /// replaced (`null`: none).
    #[serde(default)]
    pub(super) hooks: Vec<(String, Option<serde_json::Value>)>,
}

/// Takes out of `template` what inject added, from its record; returns the
/// sidecar token its hooks sent, if any (kept, so injecting again does not
/// change it). A template without a record is left as it is.
pub fn remove(place: &str, template: &mut Node) -> Result<Option<String>, UsageError> {
    let Some(text) = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get_str(RECORD))
    else {
        return Ok(None);
    };
    let record: Record = serde_json::from_str(text).map_err(|e| {
        UsageError(format!(
            "{place}: the annotation {RECORD} is not inject's record ({e}); take it out by hand"
        ))
    })?;
    let mut token = None;
    if let Some(spec) = template.get_mut("spec") {
        retain(spec, "initContainers", |c| {
            !matches!(c.get_str("name"), Some(INSTALL | PULL | SIDECAR))
        });
        retain(spec, "volumes", |v| {
            !matches!(v.get_str("name"), Some(VOLUME | PIPELINE_VOLUME))
        });
        if record.grace_set {
            match record.grace_before {
                Some(g) => spec.set("terminationGracePeriodSeconds", Node::Int(g)),
                None => {
                    spec.remove("terminationGracePeriodSeconds");
                }
            }
        }
        if let Some(Node::Seq(containers)) = spec.get_mut("containers") {
            for r in &record.containers {
                let Some(c) = containers
                    .iter_mut()
                    .find(|c| c.get_str("name") == Some(r.name.as_str()))
                else {
                    continue;
                };
                retain(c, "env", |e| {
                    !e.get_str("name")
                        .is_some_and(|n| r.env.iter().any(|a| a == n))
                });
                retain(c, "volumeMounts", |m| {
                    !matches!(m.get_str("name"), Some(VOLUME | PIPELINE_VOLUME))
                });
                if let Some(lifecycle) = c.get_mut("lifecycle") {
                    for (hook, original) in &r.hooks {
                        let ours = lifecycle.remove(hook);
                        token = token.or_else(|| ours.as_ref().and_then(bearer));
                        if let Some(original) = original
                            && let Ok(node) = Node::deserialize(original)
                        {
                            lifecycle.set(hook, node);
                        }
                    }
                }
                prune(c, &r.created);
            }
        }
        prune(spec, &record.created);
    }
    if let Some(meta) = template.get_mut("metadata") {
        if let Some(annotations) = meta.get_mut("annotations") {
            annotations.remove(RECORD);
            annotations.remove(HASH);
        }
        prune(meta, &record.created);
    }
    prune(template, &record.created);
    Ok(token)
}

/// The token of an `httpGet` hook's `Authorization: Bearer` header.
fn bearer(handler: &Node) -> Option<String> {
    handler
        .get("httpGet")?
        .items_of("httpHeaders")
        .iter()
        .find(|h| h.get_str("name") == Some("Authorization"))?
        .get_str("value")?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

/// Keeps the items of the list under `key` that `keep` says.
fn retain(node: &mut Node, key: &str, keep: impl Fn(&Node) -> bool) {
    if let Some(Node::Seq(items)) = node.get_mut(key) {
        items.retain(|i| keep(i));
    }
}

/// Takes out the keys of `node` in `created` that are now empty.
fn prune(node: &mut Node, created: &[String]) {
    for key in created {
        if node.get(key).is_some_and(Node::is_empty) {
            node.remove(key);
        }
    }
}
