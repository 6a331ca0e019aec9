//! The sandbox of one attempt: what its store owns ([`state`]), the gates
//! every request of the plugin passes (`fs_gate` for granted directories,
//! `http_gate` for outgoing HTTP and `http_send` which sends it, the
//! sockets check in `state`, `tls_sockets` for `wasi:tls`), the limits
//! outside fuel and time ([`memory`], [`quotas`] on open handles, writes and
//! requests), the record of what was denied ([`denials`]), the bounded
//! capture of its output ([`capture`]), and the host's bulk file interface
//! ([`files`]). Nothing here decides *whether* a step runs; `step` and
//! `attempt` do.

pub(crate) mod capture;
pub(crate) mod denials;
pub(crate) mod files;
pub(crate) mod fs_gate;
pub(crate) mod http_gate;
pub(crate) mod http_send;
pub(crate) mod memory;
pub(crate) mod quotas;
pub(crate) mod state;
pub(crate) mod tls_sockets;
