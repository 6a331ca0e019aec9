//! A real HTTP server on loopback with scripted behaviours, recording every
//! request it gets.
//!
//! Paths: `/ok` answers 204; `/status/<code>` answers that code;
//! `/flaky/<n>` answers 503 to its first n requests, then 200;
//! `/busy/<secs>` answers 429 with `Retry-After: <secs>` once, then 200;
//! `/slow/<ms>` answers 204 after that many milliseconds;
//! `/hang` never answers; anything else answers 200.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind test server"));
        let addr = server.server_addr().to_ip().expect("ip address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
        let (srv, reqs) = (server.clone(), requests.clone());
        std::thread::spawn(move || {
            for mut request in srv.incoming_requests() {
                let mut body = Vec::new();
                let _ = request.as_reader().read_to_end(&mut body);
                let path = request.url().to_owned();
                reqs.lock().expect("lock").push(Recorded {
                    method: request.method().to_string(),
                    path: path.clone(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                    body,
                });
                let seen = {
                    let mut c = counts.lock().expect("lock");
                    let n = c.entry(path.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                std::thread::spawn(move || respond(request, &path, seen));
            }
        });
        TestServer {
            addr,
            server,
            requests,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn respond(request: tiny_http::Request, path: &str, seen: u32) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = |code: u16| {
        tiny_http::Response::from_string(format!("status {code}")).with_status_code(code)
    };
    let result = match parts.as_slice() {
        ["ok"] => request.respond(tiny_http::Response::empty(204)),
        ["status", code] => request.respond(response(code.parse().unwrap_or(500))),
        ["flaky", n] if seen <= n.parse().unwrap_or(0) => request.respond(response(503)),
        ["busy", secs] if seen == 1 => {
            let header =
                tiny_http::Header::from_bytes("Retry-After", secs.as_bytes()).expect("header");
            request.respond(response(429).with_header(header))
        }
        ["slow", ms] => {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            request.respond(tiny_http::Response::empty(204))
        }
        ["hang"] => {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(())
        }
        _ => request.respond(response(200)),
    };
    let _ = result;
}
