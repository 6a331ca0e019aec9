//! TLS on grants, against real servers with certificates made by the test:
//! notify-shutdown over HTTPS with a private CA, release-lock on etcd with
//! client certificates (mTLS) and on Redis over TLS with an ACL user, and
//! every refusal (wrong CA, expired, wrong name, no client certificate,
//! TLS where the grant has none and plain bytes where it requires TLS, bad
//! key files), each with its message.

use crate::support::certs::Certs;
use crate::support::https::Https;
use crate::support::{Run, Sandbox};

/// A sandbox with certificates in `tls/`.
fn sandbox() -> (Sandbox, Certs) {
    let s = Sandbox::new();
    let certs = Certs::make(&s.path("tls"));
    (s, certs)
}

/// One notify-shutdown step posting to `origin`, granted by `grant`.
fn notify(s: &Sandbox, origin: &str, grant: &str) {
    s.pipeline(&format!(
        r#"
[pre-stop]
deadline = "10s"

[[pre-stop.steps]]
name = "notify"
plugin = "@notify"
allow.http = [{grant}]
allow.env = ["POD_NAME", "POD_NAMESPACE"]
config = {{ url = "{origin}/drain" }}
"#
    ));
}

fn run(s: &Sandbox) -> Run {
    s.lifehook_with(&["run", "--report", "json"], |c| {
        c.env("POD_NAME", "web-0").env("POD_NAMESPACE", "shop");
    })
}

/// The step's denials, one string.
fn denials(run: &Run, step: &str) -> String {
    run.step(step)["denials"].to_string()
}

mod https {
    use super::*;

    #[test]
    fn a_private_ca_on_the_grant_is_trusted() {
        let (s, certs) = sandbox();
        let server = Https::start(&certs.path("server.crt"), &certs.path("server.key"), None);
        let origin = server.origin("localhost");
        notify(
            &s,
            &origin,
            &format!(r#"{{ origin = "{origin}", ca = "tls/ca.crt" }}"#),
        );
        let run = run(&s);
        run.assert_outcome("notify", "ok");
        let received = server.received();
        assert_eq!(received.len(), 1, "{received:?}");
        assert!(
            received[0].starts_with("POST /drain HTTP/1.1"),
            "{received:?}"
        );
    }

    #[test]
    fn without_the_ca_the_public_roots_refuse_a_private_certificate() {
        let (s, certs) = sandbox();
        let server = Https::start(&certs.path("server.crt"), &certs.path("server.key"), None);
        let origin = server.origin("localhost");
        notify(&s, &origin, &format!(r#""{origin}""#));
        let run = run(&s);
        run.assert_outcome("notify", "denied");
        let denied = denials(&run, "notify");
        assert!(
            denied.contains(&format!("denied TLS to {origin}"))
                && denied.contains("not issued by a CA in the public web roots")
                && denied.contains("set the grant's `ca`"),
            "{denied}"
        );
        assert!(server.received().is_empty());
    }

    /// The denials of notify-shutdown posting to a receiver serving
    /// `file`.crt, granted with the test CA.
    fn refused_by_a_receiver_serving(file: &str) -> (String, Certs) {
        let (s, certs) = sandbox();
        let server = Https::start(
            &certs.path(&format!("{file}.crt")),
            &certs.path(&format!("{file}.key")),
            None,
        );
        let origin = server.origin("localhost");
        notify(
            &s,
            &origin,
            &format!(r#"{{ origin = "{origin}", ca = "tls/ca.crt" }}"#),
        );
        let run = run(&s);
        run.assert_outcome("notify", "denied");
        assert!(server.received().is_empty());
        (denials(&run, "notify"), certs)
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let (denied, certs) = refused_by_a_receiver_serving("other");
        let wanted = format!(
            "not issued by a CA in the CA bundle {}",
            certs.file("ca.crt")
        );
        assert!(denied.contains(&wanted), "{denied}");
    }

    #[test]
    fn an_expired_server_certificate_is_refused() {
        let (denied, _) = refused_by_a_receiver_serving("expired");
        assert!(
            denied.contains("the server's certificate has expired"),
            "{denied}"
        );
    }

    #[test]
    fn a_certificate_for_another_name_is_refused() {
        let (denied, _) = refused_by_a_receiver_serving("wrong-name");
        assert!(
            denied.contains("is not valid for") && denied.contains("other.example"),
            "{denied}"
        );
    }

    #[test]
    fn a_server_asking_for_a_client_certificate_gets_the_granted_one() {
        let (s, certs) = sandbox();
        let server = Https::start(
            &certs.path("server.crt"),
            &certs.path("server.key"),
            Some(&certs.path("ca.crt")),
        );
        let origin = server.origin("127.0.0.1");
        // Without a client certificate: refused, and said so.
        notify(
            &s,
            &origin,
            &format!(r#"{{ origin = "{origin}", ca = "tls/ca.crt" }}"#),
        );
        let refused = run(&s);
        refused.assert_outcome("notify", "denied");
        let denied = denials(&refused, "notify");
        assert!(
            denied.contains("the server asks for a client certificate and the grant presents none")
                && denied.contains("add `cert` and `key` to the grant"),
            "{denied}"
        );
        // With it: through.
        notify(
            &s,
            &origin,
            &format!(
                r#"{{ origin = "{origin}", ca = "tls/ca.crt", cert = "tls/client.crt", key = "tls/client.key" }}"#
            ),
        );
        run(&s).assert_outcome("notify", "ok");
        assert_eq!(server.received().len(), 1);
    }

    #[test]
    fn unusable_key_files_fail_the_step_and_check_names_the_grant() {
        let (s, certs) = sandbox();
        let server = Https::start(&certs.path("server.crt"), &certs.path("server.key"), None);
        let origin = server.origin("localhost");
        // A key that is not the certificate's.
        notify(
            &s,
            &origin,
            &format!(
                r#"{{ origin = "{origin}", ca = "tls/ca.crt", cert = "tls/client.crt", key = "tls/server.key" }}"#
            ),
        );
        let run = run(&s);
        run.assert_outcome("notify", "failed");
        assert!(
            run.message("notify")
                .contains("the key does not belong to the certificate"),
            "{}",
            run.message("notify")
        );
        let check = s.lifehook(&["check"]);
        assert_eq!(check.code, 2, "{}", check.stderr);
        assert!(
            check
                .stderr
                .contains("the key does not belong to the certificate")
                && check.stderr.contains("lifehook.toml:8:"),
            "{}",
            check.stderr
        );
        // A missing CA file and an expired client certificate.
        notify(
            &s,
            &origin,
            &format!(r#"{{ origin = "{origin}", ca = "tls/missing.crt" }}"#),
        );
        let check = s.lifehook(&["check"]);
        assert!(
            check.stderr.contains(&format!(
                "cannot read the CA bundle {}",
                certs.file("missing.crt")
            )),
            "{}",
            check.stderr
        );
        notify(
            &s,
            &origin,
            &format!(
                r#"{{ origin = "{origin}", ca = "tls/ca.crt", cert = "tls/expired.crt", key = "tls/expired.key" }}"#
            ),
        );
        let check = s.lifehook(&["check"]);
        assert!(
            check.stderr.contains("expired on 2021-01-01T00:00:00Z"),
            "{}",
            check.stderr
        );
        // A device that never ends is not read.
        notify(
            &s,
            &origin,
            &format!(r#"{{ origin = "{origin}", ca = "/dev/zero" }}"#),
        );
        let check = s.lifehook(&["check"]);
        assert!(
            check
                .stderr
                .contains("cannot read the CA bundle /dev/zero: not a regular file"),
            "{}",
            check.stderr
        );
        // Not PEM at all.
        s.write("tls/garbage.crt", "not a certificate");
        notify(
            &s,
            &origin,
            &format!(r#"{{ origin = "{origin}", ca = "tls/garbage.crt" }}"#),
        );
        let check = s.lifehook(&["check"]);
        assert!(
            check.stderr.contains("holds no PEM CERTIFICATE"),
            "{}",
            check.stderr
        );
    }

    #[test]
    fn grant_tables_are_checked_where_they_are_written() {
        let s = Sandbox::new();
        let cases = [
            (
                r#"{ origin = "http://a:80", ca = "ca.crt" }"#,
                "has TLS settings but is not an https:// origin",
            ),
            (
                r#"{ origin = "https://a", cert = "c.crt" }"#,
                "a client certificate needs both `cert` and `key`",
            ),
            (
                r#"{ origin = "https://a", cafile = "x" }"#,
                "unknown key `cafile`",
            ),
        ];
        for (grant, wanted) in cases {
            notify(&s, "https://a", grant);
            let check = s.lifehook(&["check"]);
            assert_eq!(check.code, 2, "{grant}: {}", check.stderr);
            assert!(
                check.stderr.contains(wanted) && check.stderr.contains("lifehook.toml:8:"),
                "{grant}: {}",
                check.stderr
            );
        }
    }

    #[test]
    fn a_key_inside_a_granted_directory_is_warned_about() {
        let (s, _certs) = sandbox();
        s.pipeline(
            r#"
[pre-stop]
deadline = "10s"

[[pre-stop.steps]]
name = "notify"
plugin = "@notify"
allow.http = [{ origin = "https://a", ca = "tls/ca.crt", cert = "tls/client.crt", key = "tls/client.key" }]
allow.dirs = ["tls"]
config = { url = "https://a/drain" }
"#,
        );
        let check = s.lifehook(&["check"]);
        assert!(
            check
                .stderr
                .contains("is readable by the plugin through the read-only directory grant"),
            "{}",
            check.stderr
        );
    }

    #[test]
    fn serve_reads_a_rotated_ca_at_the_next_trigger() {
        let (s, certs) = sandbox();
        let server = Https::start(&certs.path("other.crt"), &certs.path("other.key"), None);
        std::fs::copy(certs.path("ca.crt"), certs.path("mounted.crt")).expect("copy");
        let origin = server.origin("localhost");
        notify(
            &s,
            &origin,
            &format!(r#"{{ origin = "{origin}", ca = "tls/mounted.crt" }}"#),
        );
        // A failed run is not remembered, so the next trigger runs again.
        let toml = std::fs::read_to_string(s.path("lifehook.toml")).expect("pipeline");
        s.write(
            "lifehook.toml",
            toml.replace(
                "name = \"notify\"",
                "name = \"notify\"\non-failure = \"abort\"",
            ),
        );
        let serve = crate::support::serve::Server::start_with(&s, &[], |c| {
            c.env("POD_NAME", "web-0").env("POD_NAMESPACE", "shop");
        });
        let first = serve.get("/pre-stop", "");
        assert_eq!(first.status, 500, "{}", first.body);
        assert!(first.body.contains("not issued by a CA"), "{}", first.body);
        // The Secret is updated in place; serve keeps running.
        std::fs::copy(certs.path("other-ca.crt"), certs.path("mounted.crt")).expect("rotate");
        let second = serve.get("/pre-stop", "");
        assert_eq!(second.status, 200, "{}", second.body);
        assert_eq!(server.received().len(), 1);
    }

    #[test]
    fn a_rotated_ca_is_read_at_the_next_run() {
        let (s, certs) = sandbox();
        // The server moves to a certificate from another CA, and the
        // mounted CA file is replaced: the next run trusts the new one.
        let first = Https::start(&certs.path("server.crt"), &certs.path("server.key"), None);
        let second = Https::start(&certs.path("other.crt"), &certs.path("other.key"), None);
        std::fs::copy(certs.path("ca.crt"), certs.path("mounted.crt")).expect("copy");
        let grant = |o: &str| format!(r#"{{ origin = "{o}", ca = "tls/mounted.crt" }}"#);
        let (one, two) = (first.origin("localhost"), second.origin("localhost"));
        notify(&s, &two, &grant(&two));
        run(&s).assert_outcome("notify", "denied");
        std::fs::copy(certs.path("other-ca.crt"), certs.path("mounted.crt")).expect("rotate");
        run(&s).assert_outcome("notify", "ok");
        notify(&s, &one, &grant(&one));
        run(&s).assert_outcome("notify", "denied");
        assert_eq!(second.received().len(), 1);
    }
}

/// One release-lock step, as the pod `web-0`.
fn lock(s: &Sandbox, config: &str, allow: &str) {
    s.pipeline(&format!(
        r#"
[pre-stop]
deadline = "10s"

[[pre-stop.steps]]
name = "unlock"
plugin = "@lock"
{allow}
config = {{ token = "web-0", key = "locks:leader", {config} }}
"#
    ));
}

mod etcd {
    use super::*;
    use crate::support::etcd::Etcd;

    fn grant(origin: &str, client: bool) -> String {
        let cert = if client {
            r#", cert = "tls/client.crt", key = "tls/client.key""#
        } else {
            ""
        };
        format!(r#"allow.http = [{{ origin = "{origin}", ca = "tls/ca.crt"{cert} }}]"#)
    }

    /// An etcd requiring client certificates, and a release-lock step
    /// granted its HTTPS origin with the test CA (and the client
    /// certificate when `client`); its origin.
    fn etcd_lock(client: bool) -> (Sandbox, Etcd, String) {
        let (s, certs) = sandbox();
        let etcd = Etcd::start_tls(&certs);
        let origin = format!("https://127.0.0.1:{}", etcd.tls_port.expect("tls port"));
        let config = format!(r#"backend = "etcd", endpoint = "{origin}""#);
        lock(&s, &config, &grant(&origin, client));
        (s, etcd, origin)
    }

    #[test]
    fn releases_its_own_lock_over_mtls_and_leaves_another_owners() {
        crate::support::require_server!("etcd", "etcd-server");
        let (s, etcd, _) = etcd_lock(true);
        etcd.put("locks:leader", "web-0");
        let ours = run(&s);
        ours.assert_outcome("unlock", "ok");
        assert_eq!(ours.message("unlock"), "released etcd lock `locks:leader`");
        assert_eq!(etcd.get("locks:leader"), None);

        etcd.put("locks:leader", "web-1");
        let theirs = run(&s);
        theirs.assert_outcome("unlock", "failed");
        assert!(
            theirs.message("unlock").contains("held by another owner"),
            "{}",
            theirs.message("unlock")
        );
        assert_eq!(etcd.get("locks:leader").as_deref(), Some("web-1"));
    }

    #[test]
    fn without_a_client_certificate_etcd_refuses_and_the_report_says_why() {
        crate::support::require_server!("etcd", "etcd-server");
        let (s, etcd, origin) = etcd_lock(false);
        etcd.put("locks:leader", "web-0");
        let run = run(&s);
        run.assert_outcome("unlock", "denied");
        let denied = denials(&run, "unlock");
        assert!(
            denied.contains(&format!("denied TLS to {origin}"))
                && denied.contains(
                    "the server asks for a client certificate and the grant presents none"
                ),
            "{denied}"
        );
        assert_eq!(etcd.get("locks:leader").as_deref(), Some("web-0"));
    }
}

mod redis {
    use super::*;
    use crate::support::redis::Redis;

    fn address(redis: &Redis, host: &str) -> String {
        format!("{host}:{}", redis.tls_port.expect("tls port"))
    }

    /// A TCP grant with TLS and the client certificate.
    fn tls_grant(address: &str) -> String {
        format!(
            r#"allow.tcp = [{{ address = "{address}", tls = true, ca = "tls/ca.crt", cert = "tls/client.crt", key = "tls/client.key" }}]"#
        )
    }

    fn acl(address: &str, tls: bool) -> String {
        format!(
            r#"backend = "redis", address = "{address}", tls = {tls}, username = "lifehook", password = "s3cret""#
        )
    }

    #[test]
    fn releases_its_own_lock_over_tls_as_an_acl_user_and_leaves_another_owners() {
        crate::support::require_server!("redis-server", "redis-server"; "redis-cli", "redis-tools");
        let (s, certs) = sandbox();
        let redis = Redis::start_tls(&certs);
        let address = address(&redis, "localhost");
        lock(&s, &acl(&address, true), &tls_grant(&address));
        redis.cli(&["SET", "locks:leader", "web-0"]);
        let ours = run(&s);
        ours.assert_outcome("unlock", "ok");
        assert_eq!(ours.message("unlock"), "released redis lock `locks:leader`");
        assert_eq!(redis.cli(&["EXISTS", "locks:leader"]), "0");

        redis.cli(&["SET", "locks:leader", "web-1"]);
        let theirs = run(&s);
        theirs.assert_outcome("unlock", "failed");
        assert!(
            theirs
                .message("unlock")
                .contains("held by another owner (\"web-1\")"),
            "{}",
            theirs.message("unlock")
        );
        assert_eq!(redis.cli(&["GET", "locks:leader"]), "web-1");

        // A wrong ACL password is redis's refusal, said as it said it.
        lock(
            &s,
            &acl(&address, true).replace("s3cret", "wrong"),
            &tls_grant(&address),
        );
        let refused = run(&s);
        refused.assert_outcome("unlock", "failed");
        assert!(
            refused.message("unlock").contains("redis AUTH failed"),
            "{}",
            refused.message("unlock")
        );
    }

    #[test]
    fn plain_bytes_to_a_tls_grant_are_refused() {
        crate::support::require_server!("redis-server", "redis-server"; "redis-cli", "redis-tools");
        let (s, certs) = sandbox();
        let redis = Redis::start_tls(&certs);
        let address = address(&redis, "127.0.0.1");
        lock(&s, &acl(&address, false), &tls_grant(&address));
        redis.cli(&["SET", "locks:leader", "web-0"]);
        let run = run(&s);
        run.assert_outcome("unlock", "denied");
        let denied = denials(&run, "unlock");
        assert!(
            denied.contains(&format!(
                "denied plain TCP to {address}, which is granted with tls = true"
            )),
            "{denied}"
        );
        assert_eq!(redis.cli(&["GET", "locks:leader"]), "web-0");
    }

    #[test]
    fn tls_to_an_address_granted_without_it_is_refused() {
        crate::support::require_server!("redis-server", "redis-server"; "redis-cli", "redis-tools");
        let (s, certs) = sandbox();
        let redis = Redis::start_tls(&certs);
        let address = address(&redis, "127.0.0.1");
        lock(
            &s,
            &acl(&address, true),
            &format!(r#"allow.tcp = ["{address}"]"#),
        );
        let run = run(&s);
        run.assert_outcome("unlock", "denied");
        let denied = denials(&run, "unlock");
        assert!(
            denied.contains(&format!(
                "denied TLS to {address}: the address is granted without TLS"
            )) && denied.contains(&format!(
                r#"allow.tcp = [{{ address = \"{address}\", tls = true }}]"#
            )),
            "{denied}"
        );
    }

    #[test]
    fn the_server_is_verified_against_the_granted_name() {
        crate::support::require_server!("redis-server", "redis-server"; "redis-cli", "redis-tools");
        let (s, certs) = sandbox();
        let redis = Redis::start_tls(&certs);
        // Granted as localhost; the plugin asks for 127.0.0.1.
        let granted = address(&redis, "localhost");
        let asked = address(&redis, "127.0.0.1");
        lock(&s, &acl(&asked, true), &tls_grant(&granted));
        let run = run(&s);
        run.assert_outcome("unlock", "denied");
        let denied = denials(&run, "unlock");
        assert!(
            denied.contains("as \\\"127.0.0.1\\\": the grant names localhost"),
            "{denied}"
        );
    }

    #[test]
    fn without_a_client_certificate_redis_refuses_and_the_report_says_why() {
        crate::support::require_server!("redis-server", "redis-server"; "redis-cli", "redis-tools");
        let (s, certs) = sandbox();
        let redis = Redis::start_tls(&certs);
        let address = address(&redis, "localhost");
        lock(
            &s,
            &acl(&address, true),
            &format!(r#"allow.tcp = [{{ address = "{address}", tls = true, ca = "tls/ca.crt" }}]"#),
        );
        let run = run(&s);
        run.assert_outcome("unlock", "denied");
        let denied = denials(&run, "unlock");
        assert!(
            denied.contains(&format!("denied TLS to {address}"))
                && denied.contains(
                    "the server asks for a client certificate and the grant presents none"
                ),
            "{denied}"
        );
    }
}
