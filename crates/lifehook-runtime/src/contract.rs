//! What this host offers a plugin: the `lifehook:hook` contract version and
//! every import it links. The host wiring, `lifehook inspect` and the load
//! errors all read it from here, so a new interface or version is added in
//! one place (and a test keeps [`VERSION`] equal to `wit/hook.wit`'s).

/// `lifehook:hook`'s version, as a literal for `concat!`.
macro_rules! version {
    () => {
        "0.1.3"
    };
}
pub(crate) use version;

/// The `lifehook:hook` release this host implements.
pub const VERSION: &str = version!();
/// The package and version, as a component names it: `lifehook:hook@0.1.3`.
pub const CONTRACT: &str = concat!("lifehook:hook@", version!());
/// The `lifehook:hook` releases a plugin may be built against: 0.x patch
/// releases only add, so every earlier 0.1 release still links.
pub const COMPATIBLE: &[&str] = &["0.1.0", "0.1.1", "0.1.2", version!()];
/// The newest WASI 0.2 patch release this host's wasmtime provides.
pub const WASI_PATCH: u64 = 12;
/// That release as a version, the one wasmtime-wasi registers its
/// interfaces under (what the host's shadowing wrappers name).
pub(crate) const WASI_VERSION: &str = "0.2.12";
/// The `wasi:config` release `wasmtime-wasi-config` provides.
pub const CONFIG_VERSION: &str = "0.2.0-rc.1";
/// The `wasi:tls` draft `wasmtime-wasi-tls` provides (from contract 0.1.3;
/// a draft's version must match exactly).
pub const TLS_VERSION: &str = "0.2.0-draft";

/// Each package the host links, with the interfaces of it it provides.
/// `inspect` judges a component's imports against this before it is ever
/// run, so the list must be what the linker really has: a test checks the
/// `lifehook:hook` part against the WIT file, the WASI part follows
/// wasmtime-wasi's `add_to_linker` (an interface missing here would only
/// make `inspect` too strict, never let a plugin through that cannot link).
pub const PROVIDED: &[(&str, &[&str])] = &[
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
    ),
    ("wasi:clocks", &["monotonic-clock", "wall-clock"]),
    ("wasi:random", &["random", "insecure", "insecure-seed"]),
    ("wasi:io", &["error", "poll", "streams"]),
    ("wasi:filesystem", &["types", "preopens"]),
    (
        "wasi:sockets",
        &[
            "network",
            "instance-network",
            "tcp",
            "tcp-create-socket",
            "udp",
            "udp-create-socket",
            "ip-name-lookup",
        ],
    ),
    ("wasi:http", &["types", "outgoing-handler"]),
    ("wasi:config", &["store"]),
    ("wasi:tls", &["types"]),
    ("lifehook:hook", &["types", "log", "deadline", "files"]),
];

/// Why this host cannot provide `import` (`package/interface@version`), if
/// it cannot.
pub fn unsupported(import: &str) -> Option<String> {
    let (name, version) = import.split_once('@').unwrap_or((import, ""));
    let (package, interface) = name.split_once('/').unwrap_or((name, ""));
    // A package or interface the host lacks is the clearer message; the
    // version is only worth naming for something the host does have.
    let provided = PROVIDED
        .iter()
        .find(|(p, _)| *p == package)
        .map_or(&[][..], |(_, interfaces)| interfaces);
    if !provided.contains(&interface) {
        return Some(format!(
            "it imports {import}, which lifehook does not provide"
        ));
    }
    let wanted = match package {
        "wasi:config" => version == CONFIG_VERSION,
        "wasi:tls" => version == TLS_VERSION,
        "lifehook:hook" => COMPATIBLE.contains(&version),
        _ => version
            .strip_prefix("0.2.")
            .and_then(|patch| patch.parse::<u64>().ok())
            .is_some_and(|patch| patch <= WASI_PATCH),
    };
    (!wanted).then(|| {
        let have = versions(package);
        format!("it imports {import}, but this lifehook provides {package} {have}")
    })
}

/// The versions of `package` this host provides, for messages.
fn versions(package: &str) -> String {
    match package {
        "wasi:config" => CONFIG_VERSION.to_owned(),
        "wasi:tls" => TLS_VERSION.to_owned(),
        "lifehook:hook" => format!("{} to {VERSION}", COMPATIBLE[0]),
        _ => format!("0.2.0 to 0.2.{WASI_PATCH}"),
    }
}

/// Everything the host links, in one line for an error message (the load
/// error of a component whose imports do not link, where wasmtime's own
/// message names only the first missing item).
pub fn offered() -> String {
    let wasi: Vec<&str> = PROVIDED
        .iter()
        .filter_map(|(p, _)| p.strip_prefix("wasi:"))
        .filter(|p| *p != "config" && *p != "tls")
        .collect();
    let hook = PROVIDED
        .iter()
        .find(|(p, _)| *p == "lifehook:hook")
        .map_or(&[][..], |(_, interfaces)| interfaces);
    format!(
        "WASI 0.2.0 to 0.2.{WASI_PATCH} {}, wasi:config/store@{CONFIG_VERSION}, wasi:tls/types@{TLS_VERSION} and lifehook:hook/{{{}}}@{}",
        wasi.join(", "),
        hook.join(", "),
        versions("lifehook:hook"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract file the bindings are generated from.
    fn wit() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit/hook.wit");
        std::fs::read_to_string(path).expect("wit/hook.wit")
    }

    #[test]
    fn the_wasi_version_is_the_patch_release() {
        assert_eq!(WASI_VERSION, format!("0.2.{WASI_PATCH}"));
    }

    #[test]
    fn the_version_is_the_one_in_wit_hook_wit() {
        let wit = wit();
        let package = wit
            .lines()
            .find_map(|l| l.trim().strip_prefix("package lifehook:hook@"))
            .and_then(|v| v.strip_suffix(';'))
            .expect("a package line");
        assert_eq!(package, VERSION);
        assert_eq!(COMPATIBLE.last(), Some(&VERSION));
    }

    #[test]
    fn every_interface_of_wit_hook_wit_is_provided() {
        let wit = wit();
        let declared: Vec<&str> = wit
            .lines()
            .filter_map(|l| l.trim().strip_prefix("interface "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let provided = PROVIDED
            .iter()
            .find(|(p, _)| *p == "lifehook:hook")
            .map(|(_, i)| i.to_vec())
            .expect("lifehook:hook provided");
        assert_eq!(declared, provided);
    }

    #[test]
    fn imports_are_judged_by_package_interface_and_version() {
        assert_eq!(unsupported("wasi:http/types@0.2.12"), None);
        assert_eq!(unsupported("lifehook:hook/log@0.1.0"), None);
        assert_eq!(
            unsupported(&format!("wasi:config/store@{CONFIG_VERSION}")),
            None
        );
        assert!(
            unsupported("wasi:http/types@0.3.0").is_some_and(|m| m.contains("0.2.0 to 0.2.12"))
        );
        assert!(
            unsupported("wasi:keyvalue/store@0.2.0-draft")
                .is_some_and(|m| m.contains("does not provide"))
        );
        assert!(unsupported("wasi:config/store@0.2.0-draft").is_some());
        assert_eq!(unsupported("wasi:tls/types@0.2.0-draft"), None);
        assert!(
            unsupported("wasi:tls/types@0.3.0-draft").is_some_and(|m| m.contains("0.2.0-draft"))
        );
        assert!(unsupported("lifehook:hook/log@0.2.0").is_some());
        let newer = unsupported("lifehook:hook/files@0.2.0").expect("refused");
        assert!(newer.contains("0.1.0 to 0.1.3"), "{newer}");
        assert!(unsupported("wasi:cli/nonsense@0.2.0").is_some());
    }

    #[test]
    fn the_offer_names_every_package() {
        let offer = offered();
        for needle in [
            "cli",
            "sockets",
            "http",
            "wasi:config/store@0.2.0-rc.1",
            "deadline, files",
        ] {
            assert!(offer.contains(needle), "{needle} missing from {offer}");
        }
    }
}
