//! `exec --ready-listen`: `/readyz` and `/healthz` for an application
//! that lifehook runs, served like `serve`'s (the same caps; the token,
//! when one is set, on `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::server::{bearer_ok, readyz, respond, unauthorized};
use crate::readiness::Readiness;

/// The readiness probe of an application under `exec`.
pub(crate) struct Probe {
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) token: Option<Arc<[u8]>>,
}

impl super::Handler for Probe {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" if !bearer_ok(&req, self.token.as_deref()) => unauthorized(""),
            "/readyz" => readyz(&self.readiness),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: use /readyz or /healthz\n".into(),
            ),
        }
    }
}
