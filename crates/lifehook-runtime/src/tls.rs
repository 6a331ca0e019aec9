//! TLS as a grant configures it: the trust (a grant's own CA bundle, or the
//! public web roots) and the client certificate the runner presents for the
//! plugin. The runner reads the files, builds one rustls configuration per
//! grant when a step starts, and explains a failed handshake in terms of the
//! grant (wrong CA, expired, wrong name, no client certificate) rather than
//! as an I/O error. The plugin never holds the key.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use lifehook_manifest::GrantTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

/// A grant's TLS client, ready to connect.
pub(crate) struct TlsClient {
    pub(crate) config: Arc<ClientConfig>,
    /// What is trusted, as messages say it.
    trusted: String,
    /// The client certificate presented, when there is one.
    client_cert: Option<String>,
}

/// Why a grant's TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// `CA bundle`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not PEM, or PEM with nothing of the kind in it.
    #[error("the {what} {path} holds no PEM {kind}")]
    NoPem {
        /// `CA bundle`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: String,
        /// `CERTIFICATE` or `PRIVATE KEY`.
        kind: &'static str,
    },
    /// A certificate that is not valid now.
    #[error("the {what} {path} {when}")]
    Validity {
        /// `CA bundle` or `client certificate`.
        what: &'static str,
        /// The file.
        path: String,
        /// `expired on ...` or `is not valid before ...`.
        when: String,
    },
    /// rustls refused the certificate, the key or the pair.
    #[error("the client certificate {cert} and key {key} cannot be used: {why}")]
    Client {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// Why, in words.
        why: String,
    },
    /// A certificate in the CA bundle rustls could not use as a root.
    #[error("the CA bundle {path} holds a certificate that cannot be a trust root: {why}")]
    BadRoot {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

impl TlsFileError {
    /// How to fix it.
    pub fn help(&self) -> &'static str {
        match self {
            TlsFileError::Read { .. } => {
                "check the path and that the Secret is mounted where the grant says"
            }
            TlsFileError::NoPem { .. } | TlsFileError::BadRoot { .. } => {
                "give a PEM file (-----BEGIN CERTIFICATE----- / -----BEGIN PRIVATE KEY-----)"
            }
            TlsFileError::Validity { .. } => "renew the certificate (or fix the clock)",
            TlsFileError::Client { .. } => {
                "the key must be the private key of the certificate's first entry"
            }
        }
    }
}

/// The public web roots with no client certificate: what an `https://`
/// grant written as a plain string trusts. Built once per process, and only
/// when a step sends over TLS.
static PUBLIC: LazyLock<Arc<TlsClient>> = LazyLock::new(|| {
    Arc::new(TlsClient {
        config: Arc::new(
            builder()
                .with_root_certificates(public_root_store())
                .with_no_client_auth(),
        ),
        trusted: PUBLIC_ROOTS.into(),
        client_cert: None,
    })
});

/// What a grant without `ca` trusts, as messages name it.
const PUBLIC_ROOTS: &str = "the public web roots";

/// The public web roots (Mozilla's, built in).
fn public_root_store() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The client of a grant without TLS settings of its own.
pub(crate) fn public_roots() -> Arc<TlsClient> {
    PUBLIC.clone()
}

/// The client for a grant's settings: read from its files now.
pub(crate) fn client(tls: &GrantTls) -> Result<Arc<TlsClient>, TlsFileError> {
    if tls.ca.is_none() && tls.client.is_none() {
        return Ok(public_roots());
    }
    load(tls, SystemTime::now()).map(Arc::new)
}

/// The wasi-http error code a plugin gets for a failed TLS connection.
pub(crate) fn wasi_http_error(e: &rustls::Error) -> wasmtime_wasi_http::Error {
    match e {
        rustls::Error::InvalidCertificate(_) => wasmtime_wasi_http::Error::TlsCertificateError,
        rustls::Error::AlertReceived(alert) => wasmtime_wasi_http::Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        _ => wasmtime_wasi_http::Error::TlsProtocolError,
    }
}

/// Reads and checks `tls`'s files as `check` does: readable, PEM, the key
/// the certificate's, every certificate valid now.
pub fn check_files(tls: &GrantTls) -> Result<(), TlsFileError> {
    load(tls, SystemTime::now()).map(drop)
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    // The ring provider given here, not installed process-wide: nothing
    // else in the process depends on which one rustls would pick.
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls's default protocol versions")
}

fn load(tls: &GrantTls, now: SystemTime) -> Result<TlsClient, TlsFileError> {
    let (roots, trusted) = match &tls.ca {
        Some(path) => {
            let certs = certificates(path, "CA bundle", now)?;
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c).map_err(|e| TlsFileError::BadRoot {
                    path: path.display().to_string(),
                    why: e.to_string(),
                })?;
            }
            (roots, format!("the CA bundle {}", path.display()))
        }
        None => (public_root_store(), PUBLIC_ROOTS.to_owned()),
    };
    let with_roots = builder().with_root_certificates(roots);
    let (config, client_cert) = match &tls.client {
        None => (with_roots.with_no_client_auth(), None),
        Some(client) => {
            let chain = certificates(&client.cert, "client certificate", now)?;
            let key = private_key(&client.key)?;
            let config =
                with_roots
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsFileError::Client {
                        cert: client.cert.display().to_string(),
                        key: client.key.display().to_string(),
                        why: match e {
                            rustls::Error::InconsistentKeys(_) => {
                                "the key does not belong to the certificate".to_owned()
                            }
                            other => other.to_string(),
                        },
                    })?;
            (config, Some(client.cert.display().to_string()))
        }
    };
    Ok(TlsClient {
        config: Arc::new(config),
        trusted,
        client_cert,
    })
}

/// The most a TLS file may hold: every public root CA in one PEM bundle is
/// about 220 KB.
const MAX_TLS_FILE: u64 = 4 << 20;

/// A TLS file's bytes: a regular file (not a FIFO or a device that would
/// block or never end) of at most [`MAX_TLS_FILE`].
fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsFileError> {
    use std::io::Read as _;
    let failed = |source| TlsFileError::Read {
        what,
        path: path.display().to_string(),
        source,
    };
    // Looked at before opening: opening a FIFO blocks until a writer
    // comes.
    if !std::fs::metadata(path).map_err(failed)?.is_file() {
        return Err(failed(std::io::Error::other("not a regular file")));
    }
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(MAX_TLS_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_TLS_FILE {
        return Err(failed(std::io::Error::other(format!(
            "larger than {} MiB: not a certificate or key file",
            MAX_TLS_FILE >> 20
        ))));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, each valid at `now`.
fn certificates(
    path: &Path,
    what: &'static str,
    now: SystemTime,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(path, what)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsFileError::NoPem {
            what,
            path: path.display().to_string(),
            kind: "CERTIFICATE",
        });
    }
    for cert in &certs {
        if let Some(when) = invalid_at(cert, now) {
            return Err(TlsFileError::Validity {
                what,
                path: path.display().to_string(),
                when,
            });
        }
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read(path, "client key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsFileError::NoPem {
        what: "client key",
        path: path.display().to_string(),
        kind: "PRIVATE KEY",
    })
}

/// Why `cert` is not valid at `now` (`expired on ...`), if it is not. A
/// certificate that does not parse is left for rustls to refuse, with its
/// own words.
fn invalid_at(cert: &CertificateDer<'_>, now: SystemTime) -> Option<String> {
    use x509_cert::der::Decode as _;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let validity = &parsed.tbs_certificate.validity;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let subject = parsed.tbs_certificate.subject.to_string();
    let not_after = validity.not_after.to_unix_duration();
    let not_before = validity.not_before.to_unix_duration();
    if now > not_after {
        Some(format!("({subject}) expired on {}", utc(not_after)))
    } else if now < not_before {
        Some(format!(
            "({subject}) is not valid before {}",
            utc(not_before)
        ))
    } else {
        None
    }
}

/// A time as `2026-12-04T18:32:42Z`.
fn utc(since_epoch: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + since_epoch).to_string()
}

/// A failed handshake (or a connection the server ended with an alert right
/// after it), in the grant's terms: what went wrong and what to change.
pub(crate) struct Refusal {
    pub(crate) cause: String,
    pub(crate) fix: String,
}

impl TlsClient {
    /// Explains `e`, a TLS error on a connection to `peer` made with this
    /// client.
    pub(crate) fn explain(&self, e: &rustls::Error, peer: &str) -> Refusal {
        let trusted = &self.trusted;
        let (cause, fix) = match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => (
                    format!("the server's certificate is not issued by a CA in {trusted}"),
                    "set the grant's `ca` to the bundle of the CA that issued the server's certificate".to_owned(),
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                    "the server's certificate has expired".to_owned(),
                    "renew the server's certificate".to_owned(),
                ),
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                    "the server's certificate is not valid yet".to_owned(),
                    "check the server's certificate dates and the clocks".to_owned(),
                ),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => (
                    match c {
                        CertificateError::NotValidForNameContext { presented, .. } => format!(
                            "the server's certificate is not valid for {peer} (it names {})",
                            presented
                                .iter()
                                .map(|n| bare_name(n))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        _ => format!("the server's certificate is not valid for {peer}"),
                    },
                    "grant the name the certificate is issued for, or reissue it with this name"
                        .to_owned(),
                ),
                other => (
                    format!("the server's certificate was refused: {other:?}"),
                    "check the server's certificate".to_owned(),
                ),
            },
            rustls::Error::AlertReceived(alert) => self.alert(*alert),
            rustls::Error::NoCertificatesPresented => (
                "the server presented no certificate".to_owned(),
                "check that the address is a TLS server".to_owned(),
            ),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
                "the server does not speak TLS here".to_owned(),
                "check the port, or grant it without TLS".to_owned(),
            ),
            other => (
                format!("the TLS handshake failed: {other}"),
                "check the server's TLS settings".to_owned(),
            ),
        };
        Refusal { cause, fix }
    }

    fn alert(&self, alert: AlertDescription) -> (String, String) {
        let asked = matches!(
            alert,
            AlertDescription::CertificateRequired
                | AlertDescription::HandshakeFailure
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::AccessDenied
        );
        match (&self.client_cert, asked) {
            (None, true) => (
                format!(
                    "the server asks for a client certificate and the grant presents none (alert {alert:?})"
                ),
                "add `cert` and `key` to the grant".to_owned(),
            ),
            (Some(cert), true) => (
                format!("the server refused the client certificate {cert} (alert {alert:?})"),
                "present a certificate issued by a CA the server trusts".to_owned(),
            ),
            (_, false) => (
                format!("the server ended the handshake (alert {alert:?})"),
                "check the server's TLS settings".to_owned(),
            ),
        }
    }
}

/// `other.example` from rustls's `DnsName("other.example")`.
fn bare_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .unwrap_or(presented)
}

/// The rustls error somewhere in `e`'s chain of causes: a handshake error
/// reaches us wrapped in `io::Error`, and inside hyper's errors.
pub(crate) fn rustls_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(
            utc(Duration::from_secs(1_796_409_162)),
            "2026-12-04T18:32:42Z"
        );
    }
}
