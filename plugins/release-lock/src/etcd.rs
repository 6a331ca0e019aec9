//! The etcd backend: the v3 JSON gateway over `wasi:http`. The release is
//! one transaction: compare the key's value with the token, delete it on a
//! match, read it otherwise (to tell "absent" from "someone else's").

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lifehook_sdk::http::{self, Method};
use lifehook_sdk::{Failure, config};
use serde_json::{Value, json};

use crate::Released;

pub fn release(key: &str, token: &str, time_left: Duration) -> Result<Released, Failure> {
    let endpoint = config::require("endpoint")?;
    let endpoint = endpoint.trim_end_matches('/');
    let mode = config::get("mode").unwrap_or_else(|| "delete".into());
    if mode != "delete" && mode != "revoke-lease" {
        return Err(Failure::fatal(format!(
            "config key `mode` = {mode:?}: use delete or revoke-lease"
        )));
    }
    let client = Client {
        endpoint: endpoint.to_owned(),
        auth: None,
        time_left,
    };
    let client = client.authenticate()?;
    let key64 = B64.encode(key);
    let on_match = if mode == "delete" {
        json!({ "request_delete_range": { "key": key64 } })
    } else {
        json!({ "request_range": { "key": key64 } })
    };
    let reply = client.post(
        "/v3/kv/txn",
        json!({
            "compare": [{ "key": key64, "target": "VALUE", "result": "EQUAL", "value": B64.encode(token) }],
            "success": [on_match],
            "failure": [{ "request_range": { "key": key64 } }],
        }),
    )?;
    let succeeded = reply["succeeded"].as_bool().unwrap_or(false);
    let first = &reply["responses"][0];
    if !succeeded {
        let kvs = first["response_range"]["kvs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        return Ok(match kvs.first() {
            None => Released::Absent,
            Some(kv) => Released::HeldByOther(decode(&kv["value"])),
        });
    }
    if mode == "delete" {
        return Ok(Released::Released);
    }
    let lease = first["response_range"]["kvs"][0]["lease"]
        .as_str()
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(0);
    if lease == 0 {
        return Err(Failure::fatal(format!(
            "etcd key `{key}` has no lease to revoke: use mode = \"delete\""
        )));
    }
    client.post("/v3/lease/revoke", json!({ "ID": lease.to_string() }))?;
    Ok(Released::Released)
}

fn decode(value: &Value) -> String {
    value
        .as_str()
        .and_then(|v| B64.decode(v).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

struct Client {
    endpoint: String,
    auth: Option<String>,
    time_left: Duration,
}

impl Client {
    /// Logs in when a username is configured.
    fn authenticate(mut self) -> Result<Client, Failure> {
        if let Some(name) = config::get("username") {
            let password = crate::password()?.unwrap_or_default();
            let reply = self.post(
                "/v3/auth/authenticate",
                json!({ "name": name, "password": password }),
            )?;
            let token = reply["token"]
                .as_str()
                .ok_or_else(|| Failure::fatal("etcd authentication returned no token"))?;
            self.auth = Some(token.to_owned());
        }
        Ok(self)
    }

    fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.endpoint);
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(token) = &self.auth {
            headers.push(("authorization".to_owned(), token.clone()));
        }
        let response = http::send(
            Method::POST,
            &url,
            &headers,
            body.to_string().into_bytes(),
            self.time_left,
        )?;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        if !response.status.is_success() {
            let message = format!(
                "etcd {path} -> {}: {}",
                response.status.as_u16(),
                text.trim()
            );
            return Err(response.failure(message));
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::fatal(format!("etcd {path} returned invalid JSON: {e}")))
    }
}
