//! release-lock: releases a distributed lock this pod holds, and only if it
//! still holds it: the lock's current value must equal this pod's token.
//! A lock held by another owner is left untouched and reported (a fatal
//! failure); a lock that is already gone counts as released (so a hook
//! delivered twice succeeds twice).
//!
//! Config keys, all backends:
//! - `backend`: `file` (default), `redis` or `etcd`.
//! - `token`: this pod's lock value, or `token-env`: the name of a granted
//!   environment variable holding it (like `POD_NAME`).
//!
//! `file` (a lock file on a shared volume; grant its directory read-write):
//! - `path` (required): the lock file; its first line is the owner's token.
//!
//! `redis` (compare-and-delete in one Lua script, over TCP; grant the address
//! in `allow.tcp`):
//! - `address` (required): `host:port`, written as the grant writes it.
//! - `key` (required): the lock key.
//! - `tls`: `true` to speak TLS (grant the address with `tls = true` and
//!   the CA and client certificate the server wants; the runner does the
//!   handshake, the plugin never holds the key).
//! - `username`, `password` (or `password-env`): for `AUTH` (an ACL user
//!   with `username`, the default user with the password alone);
//!   `database`: a database number to `SELECT`.
//!
//! `etcd` (the v3 JSON gateway, over HTTP; grant the origin in `allow.http`;
//! for HTTPS with client certificates, grant it as a table with `ca`,
//! `cert` and `key`):
//! - `endpoint` (required): like `http://etcd:2379` or `https://etcd:2379`.
//! - `key` (required): the lock key.
//! - `mode`: `delete` (default) deletes the key if its value is the token, in
//!   one transaction; `revoke-lease` revokes the key's lease instead (which
//!   also deletes every other key attached to it).
//! - `username`, `password` (or `password-env`): for etcd authentication.

mod etcd;
mod file;
mod redis;

use lifehook_sdk::{Failure, Hook, Invocation, config, env};

/// What releasing found.
pub enum Released {
    /// The lock was ours and is gone now.
    Released,
    /// There was no lock.
    Absent,
    /// Someone else holds it; it was left alone.
    HeldByOther(String),
}

struct ReleaseLock;

impl Hook for ReleaseLock {
    fn run(inv: Invocation) -> Result<String, Failure> {
        let token = token()?;
        let backend = config::get("backend").unwrap_or_else(|| "file".into());
        let (what, result) = match backend.as_str() {
            "file" => {
                let path = config::require("path")?;
                (
                    format!("lock file {path}"),
                    file::release(path.as_ref(), &token)?,
                )
            }
            "redis" => {
                let key = config::require("key")?;
                (
                    format!("redis lock `{key}`"),
                    redis::release(&key, &token, inv.time_left())?,
                )
            }
            "etcd" => {
                let key = config::require("key")?;
                (
                    format!("etcd lock `{key}`"),
                    etcd::release(&key, &token, inv.time_left())?,
                )
            }
            other => {
                return Err(Failure::fatal(format!(
                    "config key `backend` = {other:?}: use file, redis or etcd"
                )));
            }
        };
        match result {
            Released::Released => Ok(format!("released {what}")),
            Released::Absent => Ok(format!("{what} was not held (already released)")),
            Released::HeldByOther(owner) => Err(Failure::fatal(format!(
                "{what} is held by another owner ({}), not by this pod: left untouched",
                shorten(&owner)
            ))),
        }
    }
}

fn token() -> Result<String, Failure> {
    let token = match (config::get("token"), config::get("token-env")) {
        (Some(t), _) => t,
        (None, Some(var)) => env::var(&var)?,
        (None, None) => {
            return Err(Failure::fatal(
                "set `token` (this pod's lock value) or `token-env` (a granted variable holding it)",
            ));
        }
    };
    if token.is_empty() {
        return Err(Failure::fatal("the lock token is empty"));
    }
    Ok(token)
}

/// The password from `password` or the variable named by `password-env`.
fn password() -> Result<Option<String>, Failure> {
    match (config::get("password"), config::get("password-env")) {
        (Some(p), _) => Ok(Some(p)),
        (None, Some(var)) => env::var(&var).map(Some),
        (None, None) => Ok(None),
    }
}

fn shorten(value: &str) -> String {
    let mut s: String = value.chars().take(64).collect();
    if s.len() < value.len() {
        s.push('…');
    }
    format!("{s:?}")
}

lifehook_sdk::export!(ReleaseLock);
