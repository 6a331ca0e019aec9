//! Capability grants, parsed: which HTTP origins and TCP addresses a step may
//! reach (and with which TLS trust and client certificate), and which host
//! directories it sees.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::diagnostic::Diagnostic;
use crate::schema::Access;

/// Why a grant entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// A scheme other than http or https.
    #[error("unsupported scheme `{scheme}` in HTTP grant {text:?}: use http or https")]
    Scheme {
        /// The entry as written.
        text: String,
        /// The scheme found.
        scheme: String,
    },
    /// An HTTP grant with a path.
    #[error("HTTP grant {text:?} has a path `{path}`: grants are per origin; drop the path")]
    Path {
        /// The entry as written.
        text: String,
        /// The path found.
        path: String,
    },
    /// An HTTP grant with `user@`.
    #[error("HTTP grant {text:?} has user info: grant the origin only")]
    UserInfo {
        /// The entry as written.
        text: String,
    },
    /// A TCP grant without a port.
    #[error("TCP grant {text:?} has no port: write `host:port`, like \"redis:6379\"")]
    NoPort {
        /// The entry as written.
        text: String,
    },
    /// The host or port part is malformed.
    #[error("invalid {kind} grant {text:?}: {why}")]
    Address {
        /// `HTTP` or `TCP`.
        kind: &'static str,
        /// The entry as written.
        text: String,
        /// What is wrong with it.
        why: AddressError,
    },
}

impl GrantError {
    /// How to write the entry instead.
    pub fn help(&self) -> &'static str {
        match self {
            GrantError::NoPort { .. } => {
                "TCP grants name one address: \"redis.default.svc:6379\" or \"[::1]:6379\""
            }
            GrantError::Address { kind: "TCP", .. } => {
                "write `host:port`, like \"redis.default.svc:6379\" or \"[::1]:6379\""
            }
            _ => "write an origin like \"https://api.example.com\" or \"http://127.0.0.1:8080\"",
        }
    }
}

/// What is wrong with the host or port of a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// `[::1` without `]`.
    #[error("an IPv6 address needs its closing `]`")]
    UnclosedBracket,
    /// Text after `]` that is not `:port`.
    #[error("unexpected `{0}` after the address")]
    TrailingText(String),
    /// `::1:80`.
    #[error("write IPv6 addresses in brackets, like \"[::1]:6379\"")]
    UnbracketedIpv6,
    /// Not 1-65535.
    #[error("`{0}` is not a port number (1-65535)")]
    BadPort(String),
    /// Nothing before the port.
    #[error("the host is empty")]
    EmptyHost,
    /// Bracketed, but not an IPv6 address.
    #[error("`{0}` is not an IPv6 address")]
    BadIpv6(String),
    /// `*.` where wildcards are not allowed.
    #[error("wildcards are not allowed here")]
    WildcardNotAllowed,
    /// `*` anywhere but a leading `*.`.
    #[error("`*` is allowed only as a leading `*.`, like \"*.example.com\"")]
    BadWildcard,
    /// Characters a host name cannot have.
    #[error("`{0}` is not a host name or IP address")]
    BadHost(String),
}

/// The scheme of an HTTP grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The port used when a URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// Parses `http` or `https`, ignoring case.
    pub fn parse(text: &str) -> Option<Scheme> {
        if text.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

/// One `allow.http` entry.
///
/// Forms: `"https://api.example.com"` (that scheme, its default port),
/// `"http://10.0.0.7:8080"`, `"api.example.com"` (either scheme on its default
/// port), `"api.example.com:8443"` (either scheme, that port), and a leading
/// `*.` that matches any subdomain (`"https://*.example.com"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpGrant {
    /// Only this scheme, or either.
    pub scheme: Option<Scheme>,
    /// The host, lower-case; `*.example.com` for a subdomain wildcard. IPv6
    /// addresses are kept without brackets.
    pub host: String,
    /// Only this port; `None` means the scheme's default port.
    pub port: Option<u16>,
    /// TLS settings of an `https://` grant written as a table: its own CA
    /// bundle, a client certificate. `None`: the public web roots, no
    /// client certificate.
    pub tls: Option<GrantTls>,
}

impl HttpGrant {
    /// Parses one entry; the error says what is wrong and how to write it.
    pub fn parse(text: &str) -> Result<HttpGrant, GrantError> {
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => match Scheme::parse(scheme) {
                Some(s) => (Some(s), rest),
                None => {
                    return Err(GrantError::Scheme {
                        text: text.to_owned(),
                        scheme: scheme.to_owned(),
                    });
                }
            },
            None => (None, text),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(slash) = authority.find(['/', '?', '#']) {
            return Err(GrantError::Path {
                text: text.to_owned(),
                path: authority[slash..].to_owned(),
            });
        }
        if authority.contains('@') {
            return Err(GrantError::UserInfo {
                text: text.to_owned(),
            });
        }
        let address = |why| GrantError::Address {
            kind: "HTTP",
            text: text.to_owned(),
            why,
        };
        let (host, port) = split_host_port(authority).map_err(address)?;
        check_host(&host, true).map_err(address)?;
        Ok(HttpGrant {
            scheme,
            host,
            port,
            tls: None,
        })
    }

    /// `host` or `host:port`, IPv6 in brackets: the origin without its
    /// scheme.
    pub fn host_port(&self) -> String {
        let mut out = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if let Some(p) = self.port {
            out += &format!(":{p}");
        }
        out
    }

    /// True when a request to `scheme://host:port` is allowed by this grant.
    /// `port` is the port the request will connect to (explicit or default).
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if self.scheme.is_some_and(|s| s != scheme) {
            return false;
        }
        if port != self.port.unwrap_or(scheme.default_port()) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match self.host.strip_prefix("*.") {
            Some(domain) => host.len().checked_sub(domain.len() + 1).is_some_and(|cut| {
                host.as_bytes()[cut] == b'.' && host[cut + 1..].eq_ignore_ascii_case(domain)
            }),
            None => host.eq_ignore_ascii_case(&self.host),
        }
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.scheme {
            f.write_str(if s == Scheme::Http {
                "http://"
            } else {
                "https://"
            })?;
        }
        f.write_str(&self.host_port())
    }
}

/// One `allow.tcp` entry: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpGrant {
    /// A DNS name (resolved by the runner when the step starts) or an IP
    /// address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// `tls = true`: the plugin must speak TLS on this connection (through
    /// `wasi:tls`), verified against these settings; plain bytes are refused.
    /// `None`: plain TCP only.
    pub tls: Option<GrantTls>,
}

impl TcpGrant {
    /// Parses `host:port`; the error says how to write it.
    pub fn parse(text: &str) -> Result<TcpGrant, GrantError> {
        let address = |why| GrantError::Address {
            kind: "TCP",
            text: text.to_owned(),
            why,
        };
        let (host, port) = split_host_port(text).map_err(address)?;
        let Some(port) = port else {
            return Err(GrantError::NoPort {
                text: text.to_owned(),
            });
        };
        check_host(&host, false).map_err(address)?;
        Ok(TcpGrant {
            host,
            port,
            tls: None,
        })
    }
}

impl fmt::Display for TcpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_host(f, &self.host)?;
        write!(f, ":{}", self.port)
    }
}

/// The TLS settings of one grant. The runner reads these files when a step
/// starts (so a rotated Secret is picked up by the next run); the plugin
/// never sees them unless a directory grant also shows it their directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantTls {
    /// A PEM bundle of the CAs trusted for this grant. When set, it is the
    /// only trust: the public web roots are not trusted beside it (a grant
    /// for a private service has no use for them, and `curl --cacert`
    /// works so too). `None`: the public web roots.
    pub ca: Option<PathBuf>,
    /// The client certificate presented when the server asks for one.
    pub client: Option<ClientCert>,
    /// Where the grant is written, for problems found when its files are
    /// read (by `check`, or when a step starts).
    #[serde(skip)]
    pub written: Option<Diagnostic>,
}

/// A client certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientCert {
    /// The certificate, optionally followed by its intermediates.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One `allow.dirs` entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirGrant {
    /// The host directory, absolute.
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Read-only or read-write.
    pub access: Access,
}

fn write_host(f: &mut fmt::Formatter<'_>, host: &str) -> fmt::Result {
    if host.contains(':') {
        write!(f, "[{host}]")
    } else {
        f.write_str(host)
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Result<(String, Option<u16>), AddressError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(AddressError::UnclosedBracket)?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(AddressError::TrailingText(after.to_owned())),
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return Err(AddressError::UnbracketedIpv6),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err(AddressError::BadPort(p.to_owned())),
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

fn check_host(host: &str, allow_wildcard: bool) -> Result<(), AddressError> {
    if host.is_empty() {
        return Err(AddressError::EmptyHost);
    }
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .map(drop)
            .map_err(|_| AddressError::BadIpv6(host.to_owned()));
    }
    let name = match host.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        Some(_) => return Err(AddressError::WildcardNotAllowed),
        None => host,
    };
    if name.contains('*') {
        return Err(AddressError::BadWildcard);
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if ok {
        Ok(())
    } else {
        Err(AddressError::BadHost(host.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_grant_forms() {
        let g = HttpGrant::parse("https://API.example.com").expect("valid");
        assert!(g.allows(Scheme::Https, "api.example.com", 443));
        assert!(!g.allows(Scheme::Http, "api.example.com", 80));
        assert!(!g.allows(Scheme::Https, "api.example.com", 8443));

        let g = HttpGrant::parse("127.0.0.1:8080").expect("valid");
        assert!(g.allows(Scheme::Http, "127.0.0.1", 8080));
        assert!(g.allows(Scheme::Https, "127.0.0.1", 8080));
        assert!(!g.allows(Scheme::Http, "127.0.0.1", 80));

        let g = HttpGrant::parse("example.com").expect("valid");
        assert!(g.allows(Scheme::Http, "example.com", 80));
        assert!(g.allows(Scheme::Https, "EXAMPLE.com", 443));
        assert!(!g.allows(Scheme::Http, "example.com", 443));

        let g = HttpGrant::parse("http://[::1]:9000/").expect("valid");
        assert!(g.allows(Scheme::Http, "[::1]", 9000));
        assert_eq!(g.to_string(), "http://[::1]:9000");
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let g = HttpGrant::parse("*.example.com").expect("valid");
        assert!(g.allows(Scheme::Https, "a.example.com", 443));
        assert!(g.allows(Scheme::Https, "a.b.example.com", 443));
        assert!(!g.allows(Scheme::Https, "example.com", 443));
        assert!(!g.allows(Scheme::Https, "badexample.com", 443));
        assert!(!g.allows(Scheme::Https, "com", 443));
    }

    #[test]
    fn bad_http_grants_say_why() {
        let err = |t| HttpGrant::parse(t).unwrap_err().to_string();
        assert!(err("https://x.com/path").contains("drop the path"));
        assert!(err("ftp://x.com").contains("use http or https"));
        assert!(err("x.com:99999").contains("not a port"));
        assert!(err("*").contains("is allowed only as a leading"));
        assert!(err("a.*.com").contains("is allowed only as a leading"));
        assert!(err("user@x.com").contains("user info"));
    }

    #[test]
    fn tcp_grants() {
        assert_eq!(
            TcpGrant::parse("Redis:6379"),
            Ok(TcpGrant {
                host: "redis".into(),
                port: 6379,
                tls: None,
            })
        );
        assert_eq!(
            TcpGrant::parse("[::1]:1").map(|g| g.to_string()),
            Ok("[::1]:1".into())
        );
        let err = |t| TcpGrant::parse(t).unwrap_err().to_string();
        assert!(err("redis").contains("has no port"));
        assert!(err("::1:80").contains("brackets"));
        assert!(err("*.x:1").contains("wildcards"));
    }
}
