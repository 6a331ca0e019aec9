//! release-lock against a real lock file, a real redis-server and a real
//! etcd: our lock is released, someone else's is left alone, an absent lock
//! counts as released.

use crate::support::etcd::Etcd;
use crate::support::redis::Redis;
use crate::support::{Run, Sandbox};

fn lock_pipeline(config: &str, allow: &str) -> Sandbox {
    let s = Sandbox::new();
    s.pipeline(&format!(
        r#"
[pre-stop]
deadline = "10s"

[[pre-stop.steps]]
name = "unlock"
plugin = "@lock"
allow.env = ["POD_NAME"]
{allow}
config = {{ token-env = "POD_NAME", {config} }}
"#
    ));
    s
}

fn run_as(s: &Sandbox, pod: &str) -> Run {
    s.lifehook_with(&["run", "--report", "json"], |c| {
        c.env("POD_NAME", pod);
    })
}

mod file {
    use super::*;

    fn sandbox() -> Sandbox {
        let s = lock_pipeline(
            r#"backend = "file", path = "/locks/leader.lock""#,
            r#"allow.dirs = [{ host = "locks", guest = "/locks", access = "read-write" }]"#,
        );
        std::fs::create_dir_all(s.path("locks")).expect("dir");
        s
    }

    #[test]
    fn releases_our_lock_and_then_finds_it_absent() {
        let s = sandbox();
        s.write("locks/leader.lock", "web-0\n");
        let run = run_as(&s, "web-0");
        run.assert_outcome("unlock", "ok");
        assert_eq!(
            run.message("unlock"),
            "released lock file /locks/leader.lock"
        );
        assert!(!s.path("locks/leader.lock").exists());
        let again = run_as(&s, "web-0");
        again.assert_outcome("unlock", "ok");
        assert!(
            again.message("unlock").contains("was not held"),
            "{}",
            again.message("unlock")
        );
    }

    #[test]
    fn leaves_another_owners_lock_untouched() {
        let s = sandbox();
        s.write("locks/leader.lock", "web-1\n");
        let run = run_as(&s, "web-0");
        run.assert_outcome("unlock", "failed");
        assert!(
            run.message("unlock")
                .contains("held by another owner (\"web-1\")"),
            "{}",
            run.message("unlock")
        );
        assert_eq!(
            std::fs::read_to_string(s.path("locks/leader.lock")).expect("lock"),
            "web-1\n"
        );
        let names: Vec<_> = std::fs::read_dir(s.path("locks"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary files left behind: {names:?}");
    }
}

mod redis {
    use super::*;

    fn sandbox(redis: &Redis, extra: &str) -> Sandbox {
        lock_pipeline(
            &format!(
                r#"backend = "redis", address = "{}", key = "locks:leader"{extra}"#,
                redis.address()
            ),
            &format!(r#"allow.tcp = ["{}"]"#, redis.address()),
        )
    }

    #[test]
    fn releases_our_lock_idempotently_and_leaves_others_alone() {
        crate::support::require_server!("redis-server", "redis-server"; "redis-cli", "redis-tools");
        let redis = Redis::start();
        let s = sandbox(&redis, "");
        redis.cli(&["SET", "locks:leader", "web-0"]);
        let run = run_as(&s, "web-0");
        run.assert_outcome("unlock", "ok");
        assert_eq!(run.message("unlock"), "released redis lock `locks:leader`");
        assert_eq!(redis.cli(&["EXISTS", "locks:leader"]), "0");

        let again = run_as(&s, "web-0");
        again.assert_outcome("unlock", "ok");
        assert!(again.message("unlock").contains("was not held"));

        redis.cli(&["SET", "locks:leader", "web-1"]);
        let theirs = run_as(&s, "web-0");
        theirs.assert_outcome("unlock", "failed");
        assert!(
            theirs
                .message("unlock")
                .contains("held by another owner (\"web-1\")"),
            "{}",
            theirs.message("unlock")
        );
        assert_eq!(redis.cli(&["GET", "locks:leader"]), "web-1");
    }

    #[test]
    fn authenticates_when_a_password_is_set() {
        crate::support::require_server!("redis-server", "redis-server"; "redis-cli", "redis-tools");
        let redis = Redis::start_with_password(Some("hunter2"));
        redis.cli(&["SET", "locks:leader", "web-0"]);
        let good = sandbox(&redis, r#", password = "hunter2""#);
        run_as(&good, "web-0").assert_outcome("unlock", "ok");
        assert_eq!(redis.cli(&["EXISTS", "locks:leader"]), "0");

        redis.cli(&["SET", "locks:leader", "web-0"]);
        let bad = sandbox(&redis, r#", password = "wrong""#);
        let run = run_as(&bad, "web-0");
        run.assert_outcome("unlock", "failed");
        assert!(
            run.message("unlock").contains("AUTH failed"),
            "{}",
            run.message("unlock")
        );
        assert_eq!(redis.cli(&["GET", "locks:leader"]), "web-0");
    }

    #[test]
    fn server_down_is_a_retryable_failure() {
        let port = crate::support::free_port();
        let s = lock_pipeline(
            &format!(r#"backend = "redis", address = "127.0.0.1:{port}", key = "k""#),
            &format!(
                "allow.tcp = [\"127.0.0.1:{port}\"]\nretries = {{ attempts = 2, backoff = \"10ms\" }}"
            ),
        );
        let run = run_as(&s, "web-0");
        let step = run.assert_outcome("unlock", "failed");
        assert_eq!(step["attempts"], 2);
        assert!(
            run.message("unlock").contains("cannot connect to redis"),
            "{}",
            run.message("unlock")
        );
    }
}

mod etcd {
    use super::*;

    fn sandbox(etcd: &Etcd, mode: &str) -> Sandbox {
        lock_pipeline(
            &format!(
                r#"backend = "etcd", endpoint = "{}", key = "/locks/leader", mode = "{mode}""#,
                etcd.endpoint()
            ),
            &format!(r#"allow.http = ["{}"]"#, etcd.endpoint()),
        )
    }

    #[test]
    fn deletes_our_key_idempotently_and_leaves_others_alone() {
        crate::support::require_server!("etcd", "etcd-server");
        let etcd = Etcd::start();
        let s = sandbox(&etcd, "delete");
        etcd.put("/locks/leader", "web-0");
        let run = run_as(&s, "web-0");
        run.assert_outcome("unlock", "ok");
        assert_eq!(run.message("unlock"), "released etcd lock `/locks/leader`");
        assert_eq!(etcd.get("/locks/leader"), None);

        run_as(&s, "web-0").assert_outcome("unlock", "ok");

        etcd.put("/locks/leader", "web-1");
        let theirs = run_as(&s, "web-0");
        theirs.assert_outcome("unlock", "failed");
        assert!(
            theirs
                .message("unlock")
                .contains("held by another owner (\"web-1\")"),
            "{}",
            theirs.message("unlock")
        );
        assert_eq!(etcd.get("/locks/leader").as_deref(), Some("web-1"));
    }

    #[test]
    fn revokes_the_lease_of_our_key() {
        crate::support::require_server!("etcd", "etcd-server");
        let etcd = Etcd::start();
        let s = sandbox(&etcd, "revoke-lease");
        etcd.put_with_lease("/locks/leader", "web-0");
        etcd.put_with_lease("/locks/other", "web-1");
        let run = run_as(&s, "web-0");
        run.assert_outcome("unlock", "ok");
        assert_eq!(
            etcd.get("/locks/leader"),
            None,
            "the lease's key is still there"
        );
        assert_eq!(
            etcd.get("/locks/other").as_deref(),
            Some("web-1"),
            "another lease was revoked"
        );
    }
}
