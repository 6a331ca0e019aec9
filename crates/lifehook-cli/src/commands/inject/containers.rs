//! The containers and hooks inject adds to a pod template: the init
//! container installing lifehook, the one pulling OCI plugins, the native
//! sidecar, their locked-down security context, and the hooks themselves.

use std::collections::BTreeSet;

use lifehook_manifest::PhaseName;

use super::Mode;
use super::template::{
    BINARY, DOWNWARD, INSTALL, PIPELINE_DIR, PIPELINE_PATH, PIPELINE_VOLUME, PULL, PodEdit, SHARED,
    SIDECAR, VOLUME,
};
use super::yaml::Node;

impl PodEdit<'_> {
    pub(super) fn security_context(user: i64) -> Node {
        Node::map_of([
            ("runAsNonRoot", Node::Bool(true)),
            ("runAsUser", Node::Int(user)),
            ("allowPrivilegeEscalation", Node::Bool(false)),
            ("readOnlyRootFilesystem", Node::Bool(true)),
            (
                "capabilities",
                Node::map_of([("drop", Node::strs(&["ALL"]))]),
            ),
            (
                "seccompProfile",
                Node::map_of([("type", Node::str("RuntimeDefault"))]),
            ),
        ])
    }

    pub(super) fn mount(name: &str, path: &str, read_only: bool) -> Node {
        let mut m = Node::map_of([("name", Node::str(name)), ("mountPath", Node::str(path))]);
        if read_only {
            m.set("readOnly", Node::Bool(true));
        }
        m
    }

    /// Copies lifehook from the image into the shared volume.
    pub(super) fn install_container(&self, user: i64) -> Node {
        Node::map_of([
            ("name", Node::str(INSTALL)),
            ("image", Node::str(&self.options.image)),
            ("command", Node::strs(&[BINARY, "install", SHARED])),
            (
                "volumeMounts",
                Node::Seq(vec![Self::mount(VOLUME, SHARED, false)]),
            ),
            ("securityContext", Self::security_context(user)),
        ])
    }

    /// Pulls and precompiles the pipeline's OCI plugins into the shared
    /// volume's cache.
    pub(super) fn pull_container(&self, user: i64) -> Node {
        Node::map_of([
            ("name", Node::str(PULL)),
            ("image", Node::str(&self.options.image)),
            (
                "command",
                Node::strs(&[
                    BINARY,
                    "compile",
                    "-f",
                    PIPELINE_PATH,
                    "--cache",
                    &format!("{SHARED}/cache"),
                ]),
            ),
            (
                "volumeMounts",
                Node::Seq(vec![
                    Self::mount(VOLUME, SHARED, false),
                    Self::mount(PIPELINE_VOLUME, PIPELINE_DIR, true),
                ]),
            ),
            ("securityContext", Self::security_context(user)),
        ])
    }

    /// The native sidecar serving the phases to the `httpGet` hooks.
    pub(super) fn sidecar_container(
        &self,
        user: i64,
        downward: &BTreeSet<&'static str>,
        oci: bool,
        shared: Vec<Node>,
    ) -> Node {
        let port = self.options.port;
        let mut env = vec![
            Node::map_of([
                ("name", Node::str("LIFEHOOK_TOKEN")),
                (
                    "valueFrom",
                    Node::map_of([(
                        "secretKeyRef",
                        Node::map_of([
                            ("name", Node::str(self.secret)),
                            ("key", Node::str("token")),
                        ]),
                    )]),
                ),
            ]),
            Node::map_of([
                ("name", Node::str("LIFEHOOK_CACHE")),
                (
                    "value",
                    Node::str(if oci {
                        "/shared/cache"
                    } else {
                        "/lifehook/cache"
                    }),
                ),
            ]),
        ];
        env.extend(downward_env(downward));
        let mut mounts = vec![Self::mount(PIPELINE_VOLUME, PIPELINE_DIR, true)];
        if oci {
            mounts.push(Self::mount(VOLUME, SHARED, true));
        }
        mounts.extend(shared);
        Node::map_of([
            ("name", Node::str(SIDECAR)),
            ("image", Node::str(&self.options.image)),
            ("restartPolicy", Node::str("Always")),
            (
                "command",
                Node::strs(&[
                    BINARY,
                    "serve",
                    "--listen",
                    &format!("0.0.0.0:{port}"),
                    "--token-env",
                    "LIFEHOOK_TOKEN",
                    "-f",
                    PIPELINE_PATH,
                ]),
            ),
            ("env", Node::Seq(env)),
            (
                "readinessProbe",
                Node::map_of([(
                    "httpGet",
                    Node::map_of([
                        ("path", Node::str("/healthz")),
                        ("port", Node::Int(port.into())),
                    ]),
                )]),
            ),
            ("volumeMounts", Node::Seq(mounts)),
            ("securityContext", Self::security_context(user)),
        ])
    }

    /// The hook of one phase.
    pub(super) fn handler(&self, phase: PhaseName) -> Node {
        match self.options.mode {
            Mode::Exec => Node::map_of([(
                "exec",
                Node::map_of([(
                    "command",
                    Node::strs(&[
                        BINARY,
                        "run",
                        "--phase",
                        phase.as_str(),
                        "-f",
                        PIPELINE_PATH,
                    ]),
                )]),
            )]),
            Mode::Sidecar => Node::map_of([(
                "httpGet",
                Node::map_of([
                    ("path", Node::str(format!("/{phase}"))),
                    ("port", Node::Int(self.options.port.into())),
                    (
                        "httpHeaders",
                        Node::Seq(vec![Node::map_of([
                            ("name", Node::str("Authorization")),
                            ("value", Node::str(format!("Bearer {}", self.token))),
                        ])]),
                    ),
                ]),
            )]),
        }
    }
}

/// The downward API's variables among `names`, as `env` entries.
pub(super) fn downward_env(names: &BTreeSet<&'static str>) -> Vec<Node> {
    DOWNWARD
        .iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(name, field)| {
            Node::map_of([
                ("name", Node::str(*name)),
                (
                    "valueFrom",
                    Node::map_of([("fieldRef", Node::map_of([("fieldPath", Node::str(*field))]))]),
                ),
            ])
        })
        .collect()
}
