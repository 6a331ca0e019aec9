//! The Redis backend: one `EVAL` of a compare-and-delete script, spoken in
//! RESP over `wasi:sockets` TCP, or over TLS (`tls = true`, through
//! `wasi:tls`: the runner does the handshake with the grant's CA and client
//! certificate). The script runs atomically on the server, so no other
//! client can take the lock between the compare and the delete.

use std::time::Duration;

use lifehook_sdk::tls::TlsStream;
use lifehook_sdk::{Failure, config};
use wstd::future::FutureExt as _;
use wstd::io::{AsyncRead, AsyncWrite};
use wstd::net::TcpStream;

use crate::Released;

/// Returns 1 after deleting our lock, 0 when there is none, or the current
/// owner's value when it is someone else's.
const SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
if not v then return 0 end \
if v == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end \
return v";

/// A RESP reply.
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

pub fn release(key: &str, token: &str, time_left: Duration) -> Result<Released, Failure> {
    let address = config::require("address")?;
    let username = config::get("username");
    let password = crate::password()?;
    let database = config::parse::<u32>("database")?;
    let tls = config::flag("tls", false)?;
    wstd::runtime::block_on(async {
        let talk = async {
            let mut conn = Connection::connect(&address, tls).await?;
            if let Some(password) = &password {
                let mut auth = vec!["AUTH"];
                if let Some(user) = &username {
                    auth.push(user);
                }
                auth.push(password);
                expect_ok(conn.command(&auth).await?, "AUTH")?;
            }
            if let Some(db) = database {
                expect_ok(conn.command(&["SELECT", &db.to_string()]).await?, "SELECT")?;
            }
            let reply = conn.command(&["EVAL", SCRIPT, "1", key, token]).await?;
            match reply {
                Reply::Integer(1) => Ok(Released::Released),
                Reply::Integer(0) => Ok(Released::Absent),
                Reply::Bulk(Some(owner)) => Ok(Released::HeldByOther(
                    String::from_utf8_lossy(&owner).into_owned(),
                )),
                Reply::Error(e) => Err(Failure::fatal(format!(
                    "redis refused the release script: {e}"
                ))),
                other => Err(Failure::fatal(format!(
                    "unexpected reply from redis: {other:?}"
                ))),
            }
        };
        match talk.timeout(wstd::time::Duration::from(time_left)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::retryable(format!(
                "redis at {address} did not answer within {}ms",
                time_left.as_millis()
            ))),
        }
    })
}

fn expect_ok(reply: Reply, what: &str) -> Result<(), Failure> {
    match reply {
        Reply::Simple(s) if s == "OK" => Ok(()),
        Reply::Error(e) => Err(Failure::fatal(format!("redis {what} failed: {e}"))),
        other => Err(Failure::fatal(format!(
            "unexpected reply to {what}: {other:?}"
        ))),
    }
}

/// Plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => s.write_all(bytes).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush().await,
            Stream::Tls(s) => s.flush().await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }
}

struct Connection {
    stream: Stream,
    address: String,
    buf: Vec<u8>,
}

impl Connection {
    async fn connect(address: &str, tls: bool) -> Result<Connection, Failure> {
        let stream = if tls {
            TlsStream::connect(address).await.map(Stream::Tls)
        } else {
            TcpStream::connect(address).await.map(Stream::Plain)
        };
        let stream = stream.map_err(|e| {
            let over = if tls { " over TLS" } else { "" };
            let message = format!("cannot connect to redis at {address}{over}: {e}");
            match e.kind() {
                std::io::ErrorKind::PermissionDenied if tls => Failure::fatal(format!(
                    "{message} (grant it with allow.tcp = [{{ address = \"{address}\", tls = true }}])"
                )),
                std::io::ErrorKind::PermissionDenied => Failure::fatal(format!(
                    "{message} (grant it with allow.tcp = [\"{address}\"])"
                )),
                // A refused handshake (wrong CA, no client certificate)
                // will not pass on another attempt.
                std::io::ErrorKind::ConnectionRefused if tls => Failure::fatal(message),
                _ => Failure::retryable(message),
            }
        })?;
        Ok(Connection {
            stream,
            address: address.to_owned(),
            buf: Vec::new(),
        })
    }

    async fn command(&mut self, args: &[&str]) -> Result<Reply, Failure> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| self.lost(e))?;
        self.stream.flush().await.map_err(|e| self.lost(e))?;
        loop {
            if let Some((reply, used)) = parse(&self.buf).map_err(Failure::fatal)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| self.lost(e))?;
            if n == 0 {
                return Err(Failure::retryable(format!(
                    "redis at {} closed the connection",
                    self.address
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn lost(&self, e: std::io::Error) -> Failure {
        Failure::retryable(format!(
            "connection to redis at {} failed: {e}",
            self.address
        ))
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are
/// needed, otherwise the reply and how many bytes it took.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if buf.is_empty() {
        return Ok(None);
    }
    let line =
        std::str::from_utf8(&buf[1..line_end]).map_err(|_| "redis sent a non-UTF-8 header")?;
    let after = line_end + 2;
    let number = || {
        line.parse::<i64>()
            .map_err(|_| format!("bad number {line:?} from redis"))
    };
    match buf[0] {
        b'+' => Ok(Some((Reply::Simple(line.to_owned()), after))),
        b'-' => Ok(Some((Reply::Error(line.to_owned()), after))),
        b':' => Ok(Some((Reply::Integer(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let end = after + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(Some(buf[after..end].to_vec())), end + 2)))
        }
        b'*' => {
            let count = number()?;
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..count.max(0) {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        other => Err(format!(
            "unexpected byte {other:#04x} from redis: is {line:?} a redis server?"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_and_waits_for_more() {
        assert_eq!(parse(b":1\r\n"), Ok(Some((Reply::Integer(1), 4))));
        assert_eq!(
            parse(b"$3\r\nabc\r\n"),
            Ok(Some((Reply::Bulk(Some(b"abc".to_vec())), 9)))
        );
        assert_eq!(parse(b"$3\r\nab"), Ok(None));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Bulk(None), 5))));
        assert_eq!(
            parse(b"-ERR x\r\n"),
            Ok(Some((Reply::Error("ERR x".into()), 8)))
        );
        assert_eq!(
            parse(b"*2\r\n:1\r\n+OK\r\n"),
            Ok(Some((
                Reply::Array(vec![Reply::Integer(1), Reply::Simple("OK".into())]),
                13
            )))
        );
        assert!(parse(b"HTTP/1.1 400\r\n").is_err());
    }
}
