//! End-to-end tests: the real `lifehook` binary, plugins freshly built from
//! `plugins/`, and real servers (an HTTP server on loopback, redis-server,
//! etcd) and real directories.

mod support;

mod authoring;
mod broken_output;
mod bulk;
mod cache;
mod cli;
mod container;
mod crash;
mod cross;
mod delivery;
mod drain;
mod exec;
mod grants;
mod graph;
mod hardening;
mod image;
mod inject;
mod install;
mod limits;
mod manifest_errors;
mod metrics;
mod output;
mod pods;
mod policy;
mod preview1;
mod readiness;
mod registry;
mod retries;
mod sample_lock;
mod sample_notify;
mod sample_state;
mod serve;
mod status;
mod telemetry;
mod terminal;
mod tls;
