//! Caps on what one step holds outside its memory (`max-open`,
//! `max-write`, `max-http`), and the WASI error codes a refused plugin sees.
//! Hostile plugins run beside well-behaved ones, which must not notice.

use std::net::TcpListener;

use crate::support::Sandbox;
use crate::support::http::TestServer;

#[test]
fn a_descriptor_bomb_is_capped_and_its_neighbour_still_opens_files() {
    let s = Sandbox::new();
    s.write("data/f.txt", "hello");
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "bomb"
plugin = "@hook"
needs = []
allow.dirs = [{ host = "data", guest = "/data" }]
config = { mode = "open-many", path = "/data/f.txt" }

[[pre-stop.steps]]
name = "neighbour"
plugin = "@hook"
needs = []
allow.dirs = [{ host = "data", guest = "/data" }]
config = { mode = "read-file", path = "/data/f.txt", delay = "300ms" }
"#,
    );
    let run = s.run(&[]);
    let bomb = run.assert_outcome("bomb", "capped");
    let message = bomb["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the max-open cap of 256 was reached"),
        "{message}"
    );
    assert!(message.contains("raise `max-open`"), "{message}");
    // The plugin saw a WASI error it can act on, not a bare I/O error.
    assert!(message.contains("the plugin said: opened 25"), "{message}");
    assert!(message.contains("Quota exceeded"), "{message}");
    assert_eq!(bomb["caps_reached"].as_array().map(Vec::len), Some(1));
    let neighbour = run.assert_outcome("neighbour", "ok");
    assert_eq!(neighbour["message"], "read 5 bytes from /data/f.txt");
}

#[test]
fn max_open_is_set_per_step() {
    let s = Sandbox::new();
    s.write("data/f.txt", "hello");
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "bomb"
plugin = "@hook"
max-open = 16
allow.dirs = [{ host = "data", guest = "/data" }]
config = { mode = "open-many", path = "/data/f.txt" }
"#,
    );
    let run = s.run(&[]);
    let message = run.message("bomb");
    assert!(
        message.starts_with("the max-open cap of 16 was reached"),
        "{message}"
    );
}

#[test]
fn a_write_bomb_stops_at_its_cap_and_earlier_files_stay_intact() {
    let s = Sandbox::new();
    s.write("out/keep.txt", "written before");
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "bomb"
plugin = "@hook"
max-write = "1MiB"
allow.dirs = [{ host = "out", guest = "/out", access = "read-write" }]
config = { mode = "write-many", path = "/out/big.bin" }
"#,
    );
    let run = s.run(&[]);
    let bomb = run.assert_outcome("bomb", "capped");
    let message = bomb["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the max-write cap of 1.0 MiB was reached"),
        "{message}"
    );
    // Through a stream, WASI can only say `insufficient-space`; the guest's
    // libc reduces stream errors to EIO. The report names the real reason.
    assert!(message.contains("the plugin said: wrote "), "{message}");
    let big = std::fs::metadata(s.path("out/big.bin"))
        .expect("the file it wrote")
        .len();
    assert!(big <= 1 << 20, "{big} bytes got through");
    assert_eq!(
        std::fs::read_to_string(s.path("out/keep.txt")).expect("earlier file"),
        "written before"
    );
}

#[test]
fn sockets_count_against_max_open() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Accept and hold every connection, so the plugin's stay open.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let s = Sandbox::new();
    s.pipeline(&format!(
        r#"
[[pre-stop.steps]]
name = "bomb"
plugin = "@hook"
max-open = 8
allow.tcp = ["{addr}"]
config = {{ mode = "connect-many", addr = "{addr}" }}
"#
    ));
    let run = s.run(&[]);
    let bomb = run.assert_outcome("bomb", "capped");
    let message = bomb["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the max-open cap of 8 was reached creating a socket"),
        "{message}"
    );
}

#[test]
fn http_requests_in_flight_are_capped() {
    let server = TestServer::start();
    let s = Sandbox::new();
    s.pipeline(&format!(
        r#"
[[pre-stop.steps]]
name = "fan-out"
plugin = "@hook"
max-http = 2
allow.http = ["{}"]
config = {{ mode = "http-parallel", url = "{}", count = 4 }}
"#,
        server.origin(),
        server.url("/slow/400")
    ));
    let run = s.run(&[]);
    let step = run.assert_outcome("fan-out", "capped");
    let message = step["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the max-http cap of 2 was reached"),
        "{message}"
    );
    assert!(message.contains("2 of 4 requests failed"), "{message}");
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn refused_files_get_the_closest_wasi_error() {
    let s = Sandbox::new();
    s.write("ro/f.txt", "x");
    s.pipeline(
        r#"
[[pre-stop.steps]]
name = "outside"
plugin = "@hook"
config = { mode = "read-file", path = "/etc/hostname" }

[[pre-stop.steps]]
name = "read-only"
plugin = "@hook"
allow.dirs = [{ host = "ro", guest = "/ro" }]
config = { mode = "write-file", path = "/ro/f.txt" }
"#,
    );
    let run = s.run(&[]);
    let outside = run.message("outside");
    assert!(outside.contains("Permission denied"), "{outside}");
    let read_only = run.message("read-only");
    assert!(read_only.contains("Read-only file system"), "{read_only}");
    assert_eq!(
        std::fs::read_to_string(s.path("ro/f.txt")).expect("file"),
        "x"
    );
}
