//! Certificates made fresh for a TLS test: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, a client certificate, an expired server
//! certificate, one for another name, and a server certificate from another
//! CA, all PEM files in one directory.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// The PEM files of one test, in `dir`.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Makes every certificate in `dir` (created if needed).
    pub fn make(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).expect("certs dir");
        let write =
            |name: &str, text: String| std::fs::write(dir.join(name), text).expect("write pem");
        let ca = authority("lifehook test CA");
        write("ca.crt", ca.pem());
        let other_ca = authority("another CA");
        write("other-ca.crt", other_ca.pem());
        let leaf = |names: &[&str],
                    usage: Vec<ExtendedKeyUsagePurpose>,
                    issuer: &CertifiedIssuer<'_, KeyPair>,
                    file: &str,
                    expired: bool| {
            let mut params =
                CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                    .expect("params");
            params.distinguished_name = name(names.first().copied().unwrap_or("client"));
            params.extended_key_usages = usage;
            if expired {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, issuer).expect("sign");
            write(&format!("{file}.crt"), cert.pem());
            write(&format!("{file}.key"), key.serialize_pem());
        };
        // Server certificates may also act as clients: etcd's gateway dials
        // its own gRPC port with the server certificate.
        let server = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf(
            &["localhost", "127.0.0.1"],
            server.clone(),
            &ca,
            "server",
            false,
        );
        leaf(
            &["lifehook-client"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            &ca,
            "client",
            false,
        );
        leaf(
            &["localhost", "127.0.0.1"],
            server.clone(),
            &ca,
            "expired",
            true,
        );
        leaf(&["other.example"], server.clone(), &ca, "wrong-name", false);
        leaf(
            &["localhost", "127.0.0.1"],
            server,
            &other_ca,
            "other",
            false,
        );
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    /// One of the files: `ca.crt`, `server.key` ...
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The same as a string, for a pipeline file.
    pub fn file(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

fn authority(common: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = name(common);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}
