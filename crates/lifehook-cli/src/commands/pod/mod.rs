//! `lifehook check --pod`: reads a Kubernetes manifest (Pod, Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, Job, CronJob; several documents per
//! file), finds the lifecycle hooks that run lifehook, and checks each
//! against the pipeline: a valid `lifehook run` invocation for the right
//! phase, an absolute pipeline path (present in its ConfigMap when the
//! manifest has it), and a pre-stop deadline that leaves the application its
//! reserve within `terminationGracePeriodSeconds`. `httpGet` hooks are
//! checked against the `lifehook serve` container of the same pod.
//!
//! The Kubernetes objects are modelled in [`k8s`], with only the fields
//! the checks read.

use std::path::Path;

use lifehook_manifest::{Diagnostic, Pipeline};

use super::UsageError;

mod checker;
mod k8s;

use checker::Checker;
use k8s::{Object, pod_spec};

/// What checking a manifest found: one line per lifehook hook that is
/// right, and the problems.
pub struct PodCheck {
    pub ok: Vec<String>,
    pub problems: Vec<Diagnostic>,
}

/// The text of the manifest at `path`; unreadable is a usage error (exit 2).
fn read_manifest(path: &Path) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read the Kubernetes manifest {}: {e}",
            path.display()
        ))
    })
}

/// A pipeline a manifest carries in a ConfigMap.
pub struct CarriedPipeline {
    /// Where it is, for messages: `ConfigMap NAME, key KEY`.
    pub origin: String,
    /// The pipeline's text.
    pub source: String,
}

/// The pipeline the manifest at `path` carries in a ConfigMap (a data key
/// ending in `.toml`): `Ok(None)` if it carries none; an error if it
/// carries several (which one is meant needs `-f`) or cannot be read.
pub fn carried_pipeline(path: &Path) -> anyhow::Result<Option<CarriedPipeline>> {
    let source = read_manifest(path)?;
    // A manifest that does not parse has no pipeline to offer; `check`
    // then reports the YAML error itself.
    let objects: Vec<Option<Object>> = serde_saphyr::from_multiple(&source).unwrap_or_default();
    let mut found: Vec<CarriedPipeline> = Vec::new();
    for object in objects.into_iter().flatten() {
        if object.kind.as_deref() != Some("ConfigMap") {
            continue;
        }
        let name = object.metadata.name.unwrap_or_else(|| "(unnamed)".into());
        for (key, text) in object.data {
            if key.ends_with(".toml") {
                found.push(CarriedPipeline {
                    origin: format!("ConfigMap {name}, key {key}"),
                    source: text,
                });
            }
        }
    }
    if found.len() > 1 {
        let all: Vec<&str> = found.iter().map(|p| p.origin.as_str()).collect();
        return Err(UsageError(format!(
            "{} carries several pipelines ({}): pass -f FILE with the one to check",
            path.display(),
            all.join("; ")
        ))
        .into());
    }
    Ok(found.pop())
}

/// Checks every lifehook hook in the manifest at `path` against `pipeline`.
pub fn check(path: &Path, pipeline: &Pipeline) -> anyhow::Result<PodCheck> {
    let source = read_manifest(path)?;
    Ok(check_text(path, &source, pipeline))
}

/// Checks every lifehook hook in the manifest `source` (read from `path`)
/// against `pipeline`.
pub fn check_text(path: &Path, source: &str, pipeline: &Pipeline) -> PodCheck {
    let mut out = PodCheck {
        ok: Vec::new(),
        problems: Vec::new(),
    };
    let objects: Vec<Option<Object>> = match serde_saphyr::from_multiple(source) {
        Ok(objects) => objects,
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let d = Diagnostic::new(
                path,
                source,
                offset(source, line, column)..offset(source, line, column) + 1,
                format!("not a valid Kubernetes manifest: {}", e.without_snippet()),
            )
            .with_help("the file must be YAML: one or more documents separated by `---`");
            out.problems.push(d);
            return out;
        }
    };
    let objects: Vec<Object> = objects.into_iter().flatten().collect();
    let checker = Checker {
        path,
        source,
        pipeline,
        config_maps: objects
            .iter()
            .filter(|o| o.kind.as_deref() == Some("ConfigMap"))
            .filter_map(|o| Some((o.metadata.name.clone()?, &o.data)))
            .collect(),
    };
    let mut hooks = 0;
    for object in &objects {
        let kind = object.kind.as_deref().unwrap_or("object");
        let Some(spec) = object.spec.as_ref().and_then(|s| pod_spec(kind, s)) else {
            continue;
        };
        let workload = format!(
            "{kind} {}",
            object.metadata.name.as_deref().unwrap_or("(unnamed)")
        );
        hooks += checker.pod(&workload, spec, &mut out);
    }
    if hooks == 0 {
        out.problems.push(
            Diagnostic::new(path, source, 0..0, "no container of this manifest runs lifehook in a lifecycle hook")
                .with_help("hooks run lifehook through `lifecycle.preStop.exec.command: [\"/lifehook\", \"run\", ...]` or an httpGet to `lifehook serve`"),
        );
    }
    out
}

/// The byte offset of a 1-based line and column (in characters).
fn offset(source: &str, line: u64, column: u64) -> usize {
    let mut at = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            return at
                + l.chars()
                    .take(column.saturating_sub(1) as usize)
                    .map(char::len_utf8)
                    .sum::<usize>();
        }
        at += l.len();
    }
    source.len()
}

#[cfg(test)]
mod tests;
