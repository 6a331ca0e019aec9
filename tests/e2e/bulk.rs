//! `lifehook:hook/files`: bulk copies and digests done by the runner, under
//! the same rules as the plugin's own file access (grants, read-only
//! grants, no `..` or symbolic link out of a grant) and the step's limits
//! (fuel per byte, `max-write`, the deadline).

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::support::Sandbox;

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A step running the fixture's `copy` or `sha256` mode with `config`.
fn step(name: &str, mode: &str, config: &str, extra: &str) -> String {
    format!(
        "[[pre-stop.steps]]\nname = \"{name}\"\nplugin = \"@hook\"\nallow.dirs = [{{ host = \"in\", guest = \"/in\" }}, {{ host = \"out\", guest = \"/out\", access = \"read-write\" }}]\n{extra}\nconfig = {{ mode = \"{mode}\", {config} }}\n\n"
    )
}

#[test]
fn a_copy_lands_in_place_with_its_digest_for_one_fuel_a_byte() {
    let s = Sandbox::new();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    s.write("in/data.bin", &data);
    s.write("out/archive", b"HEADER--");
    s.pipeline(&format!(
        "{}{}",
        step(
            "copy",
            "copy",
            "source = \"/in/data.bin\", offset = 1000, length = 2000000, destination = \"/out/archive\", at = 8",
            ""
        ),
        step("hash", "sha256", "source = \"/in/data.bin\", length = 3000000", "")
    ));
    let run = s.run(&[]);
    let copy = run.assert_outcome("copy", "ok");
    assert_eq!(
        copy["message"],
        hex_sha256(&data[1000..2_001_000]),
        "{copy:#}"
    );
    let archive = std::fs::read(s.path("out/archive")).expect("archive");
    assert_eq!(&archive[..8], b"HEADER--");
    assert_eq!(&archive[8..], &data[1000..2_001_000]);
    // One unit of fuel per byte read, plus the plugin's own few thousand.
    let fuel = copy["fuel_consumed"].as_u64().expect("fuel");
    assert!((2_000_000..2_200_000).contains(&fuel), "fuel {fuel}");
    assert_eq!(run.message("hash"), hex_sha256(&data));
}

#[test]
fn bulk_work_stays_inside_the_grants() {
    let s = Sandbox::new();
    s.write("in/data.bin", b"0123456789");
    s.write("out/archive", b"");
    let secret = s.write("secret/token", "s3cret");
    std::os::unix::fs::symlink(&secret, s.path("in/link")).expect("symlink");
    let outside = secret.display().to_string();
    s.pipeline(&format!(
        "{}{}{}{}{}",
        step(
            "outside",
            "sha256",
            &format!("source = \"{outside}\", length = 6"),
            ""
        ),
        step(
            "dotdot",
            "sha256",
            "source = \"/in/../secret/token\", length = 6",
            ""
        ),
        step("symlink", "sha256", "source = \"/in/link\", length = 6", ""),
        step(
            "read-only",
            "copy",
            "source = \"/in/data.bin\", length = 10, destination = \"/in/data.bin\", at = 10",
            ""
        ),
        step(
            "short",
            "copy",
            "source = \"/in/data.bin\", length = 11, destination = \"/out/archive\"",
            ""
        ),
    ));
    let run = s.run(&[]);
    for name in ["outside", "dotdot"] {
        run.assert_outcome(name, "denied");
        let message = run.message(name);
        assert!(
            message.contains("outside every granted directory") && message.contains("allow.dirs"),
            "{name}: {message}"
        );
    }
    let symlink = run.message("symlink");
    assert!(!symlink.contains(&hex_sha256(b"s3cret")), "{symlink}");
    assert!(
        run.step("symlink")["outcome"] != "ok",
        "a symlink led out of the grant"
    );
    run.assert_outcome("read-only", "denied");
    assert!(
        run.message("read-only").contains("access = \"read-write\""),
        "{}",
        run.message("read-only")
    );
    assert_eq!(
        std::fs::read(s.path("in/data.bin")).expect("data"),
        b"0123456789"
    );
    let short = run.message("short");
    assert!(
        short.starts_with("UnexpectedEof") && short.contains("fewer than the 11 bytes"),
        "{short}"
    );
}

#[test]
fn bulk_work_is_bounded_by_fuel_max_write_and_the_deadline() {
    let s = Sandbox::new();
    s.write("in/data.bin", vec![7u8; 1 << 20]);
    s.write("out/archive", b"");
    // A sparse file far larger than the step could hash in its timeout.
    let huge = std::fs::File::create(s.path("in/huge")).expect("create");
    huge.set_len(64 << 30).expect("sparse file");
    s.pipeline(&format!(
        "{}{}{}",
        step(
            "fuel",
            "copy",
            "source = \"/in/data.bin\", length = 1048576, destination = \"/out/archive\"",
            "fuel = 500_000"
        ),
        step(
            "max-write",
            "copy",
            "source = \"/in/data.bin\", length = 1048576, destination = \"/out/archive\"",
            "max-write = \"64KiB\""
        ),
        step(
            "deadline",
            "sha256",
            "source = \"/in/huge\", length = 68719476736",
            "timeout = \"300ms\"\nfuel = \"unlimited\""
        ),
    ));
    let run = s.run(&[]);
    run.assert_outcome("fuel", "out-of-fuel");
    let capped = run.assert_outcome("max-write", "capped");
    assert!(
        capped["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the max-write cap of 64.0 KiB was reached")),
        "{capped:#}"
    );
    assert_eq!(
        std::fs::metadata(s.path("out/archive"))
            .expect("archive")
            .len(),
        0,
        "nothing written past the caps"
    );
    let deadline = run.assert_outcome("deadline", "timed-out");
    let took = deadline["duration_ms"].as_u64().expect("duration");
    assert!(
        took < 1500,
        "the copy ran on for {took} ms after its timeout"
    );
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
}
