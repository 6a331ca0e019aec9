//! Measures `lifehook serve` from the outside, as the kubelet reaches it:
//! HTTP/1.1 over loopback, with a client small enough not to be the thing
//! measured (a connection per request, as the server closes after one;
//! requests written whole, responses read by `Content-Length`).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running `lifehook serve`, stopped when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `lifehook serve` on a free loopback port in `dir`.
    pub fn start(lifehook: &str, dir: &std::path::Path, pipeline: &str) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(lifehook)
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "-f",
                pipeline,
                "--cache",
                "cache",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start lifehook serve")?;
        let server = Server { child, addr };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(mut c) = Connection::open(addr)
                && c.request("GET", "/healthz").is_ok()
            {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("lifehook serve did not answer on {addr}")
    }

    /// The server's resident memory now, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 connection (the server answers one request on it).
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request; returns the status and the `lifehook-run` header.
    pub fn request(&mut self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n");
        self.reader.get_mut().write_all(head.as_bytes())?;
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut run) = (0usize, String::new());
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse()?,
                    "lifehook-run" => run = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, run))
    }
}

/// The median time (ms) of `n` requests to `path`, one after another, each
/// on a connection of its own (the server closes a connection after its
/// one request, and the kubelet opens one per hook), connecting included;
/// after `n / 10` unmeasured ones.
pub fn median_latency(addr: SocketAddr, method: &str, path: &str, n: usize) -> anyhow::Result<f64> {
    for _ in 0..n / 10 {
        Connection::open(addr)?.request(method, path)?;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, run) = Connection::open(addr)?.request(method, path)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        if status != 200 {
            bail!("{path} answered {status}");
        }
        // A trigger must have run the phase, not returned an earlier report.
        if path.starts_with("/pre-stop") && run != "new" {
            bail!("{path} did not start a run (lifehook-run: {run:?})");
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// `rounds` rounds of `clients` concurrent forced triggers of `path`: the
/// largest number of runs any round started (1 when every trigger joined
/// the first), and the server's RSS after the first and the last round.
pub fn concurrent_triggers(
    server: &Server,
    path: &str,
    clients: usize,
    rounds: usize,
) -> anyhow::Result<(usize, u64, u64)> {
    let mut most_runs = 0;
    let mut rss_first = 0;
    for round in 0..rounds {
        // Connect everyone first, then fire together.
        let mut connections: Vec<Connection> = (0..clients)
            .map(|_| Connection::open(server.addr))
            .collect::<anyhow::Result<_>>()?;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
        let runs: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = connections
                .iter_mut()
                .map(|c| {
                    let barrier = barrier.clone();
                    scope.spawn(move || {
                        barrier.wait();
                        c.request("POST", path).map(|(_, run)| run)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
                })
                .collect::<anyhow::Result<Vec<String>>>()
        })?;
        let new = runs.iter().filter(|r| *r == "new").count();
        most_runs = most_runs.max(new);
        if round == 0 {
            rss_first = server.rss_kib()?;
        }
    }
    Ok((most_runs, rss_first, server.rss_kib()?))
}
