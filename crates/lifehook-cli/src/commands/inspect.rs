//! `lifehook inspect`: what a plugin is, what it needs, and whether this
//! lifehook can run it, read from the component itself without compiling
//! it (so it answers in milliseconds for a 20 MB Python component too).

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use wasmparser::{Parser, Payload};

use lifehook_runtime::contract::{CONTRACT, WASI_PATCH, unsupported};

use super::{CacheArgs, UsageError};
use crate::exit::EXIT_OK;
use crate::output::print_out;

/// Show what a plugin is: hook component or command, its imports and
/// exports as WIT, the grants it could use, the contract version it targets
/// and whether this lifehook can run it, and whether a precompiled artifact
/// is in the cache.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook inspect plugins/notify_shutdown.wasm
  lifehook inspect wait_ready.wasm --json")]
pub struct Inspect {
    /// The plugin file (a .wasm component).
    plugin: PathBuf,

    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    cache: CacheArgs,
}

/// What `inspect` found.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    plugin: PathBuf,
    size: u64,
    /// `hook` or `command`.
    kind: &'static str,
    /// A WASI preview-1 command module, adapted into a command component
    /// (what is shown is the adapted component).
    adapted: bool,
    /// The `lifehook:hook` version it was built against, if it imports it.
    pub(super) contract: Option<String>,
    pub(super) imports: Vec<Import>,
    pub(super) exports: Vec<String>,
    /// The `allow` keys whose grants it could use.
    grants: Vec<&'static str>,
    /// Empty when this lifehook can run it.
    pub(super) problems: Vec<String>,
    pub(super) runnable: bool,
    /// The precompiled artifact in the cache, if any.
    artifact: Option<PathBuf>,
    /// The component's world, as WIT.
    wit: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Import {
    pub(super) name: String,
    /// The grant that opens it, when it needs one.
    grant: Option<&'static str>,
}

impl Inspect {
    pub fn execute(self) -> anyhow::Result<i32> {
        let bytes = std::fs::read(&self.plugin).map_err(|e| {
            UsageError(format!("cannot read plugin {}: {e}", self.plugin.display()))
        })?;
        let report = inspect(&self.plugin, &bytes, &self.cache)?;
        if self.json {
            print_out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
        } else {
            print_out(&text(&report));
        }
        Ok(EXIT_OK)
    }
}

/// The report, with the artifact `run` would load for it (if the cache has
/// one): what a user checking "is this precompiled?" wants to see.
fn inspect(path: &Path, bytes: &[u8], cache: &CacheArgs) -> Result<Report, UsageError> {
    let mut report = describe(path, bytes)?;
    report.artifact = cache.cache(path).artifact_of(path).ok().flatten();
    Ok(report)
}

/// What the component at `path` is, from its bytes alone: no engine, no
/// compile, so it answers in milliseconds and in the runtime-only build,
/// and a hostile file is only ever parsed, never run.
pub(super) fn describe(path: &Path, bytes: &[u8]) -> Result<Report, UsageError> {
    let shown = path.display();
    if Parser::is_core_wasm(bytes) {
        return describe_preview1(path, bytes);
    }
    if !Parser::is_component(bytes) {
        return Err(UsageError(format!(
            "{shown} is not a WebAssembly file (it does not start with `\\0asm`): point at the .wasm component your build made"
        )));
    }
    let (imports, exports) = top_level(bytes)
        .map_err(|e| UsageError(format!("{shown} is not a valid component: {e}")))?;
    // The world by its exports, as the runtime decides it (a hook's `run`
    // wins over a command's `wasi:cli/run` when a component has both).
    let kind = if exports.iter().any(|e| e == "run") {
        "hook"
    } else if exports.iter().any(|e| e.starts_with("wasi:cli/run@0.2.")) {
        "command"
    } else {
        return Err(UsageError(format!(
            "{shown} is a component for another world: it exports neither `run` (the {CONTRACT} hook world) nor `wasi:cli/run` (a command); it exports: {}",
            if exports.is_empty() {
                "nothing".to_owned()
            } else {
                exports.join(", ")
            }
        )));
    };
    // The contract version it was built against, from any lifehook:hook
    // import: every interface of one build carries the same version.
    let contract = imports
        .iter()
        .find_map(|i| i.strip_prefix("lifehook:hook/"))
        .and_then(|rest| rest.split_once('@'))
        .map(|(_, version)| format!("lifehook:hook@{version}"));
    // Judged by the runtime's own table of what the host links, so this
    // answer and `run`'s cannot disagree.
    let mut problems: Vec<String> = imports.iter().filter_map(|i| unsupported(i)).collect();
    if kind == "hook" && contract.is_none() {
        problems.push(format!(
            "it exports `run` but imports no lifehook:hook interface: build it against {CONTRACT}'s `hook` world"
        ));
    }
    let mut grants: Vec<&'static str> = imports.iter().filter_map(|i| grant_of(i)).collect();
    grants.sort_unstable();
    grants.dedup();
    let wit = wit_of(bytes);
    Ok(Report {
        plugin: path.to_path_buf(),
        size: bytes.len() as u64,
        kind,
        adapted: false,
        contract,
        runnable: problems.is_empty(),
        imports: imports
            .iter()
            .map(|name| Import {
                name: name.clone(),
                grant: grant_of(name),
            })
            .collect(),
        exports,
        grants,
        problems,
        artifact: None,
        wit,
    })
}

/// A core module: a WASI preview-1 command is described as the command
/// component lifehook adapts it into; anything else is refused with what
/// it is and what to build instead.
fn describe_preview1(path: &Path, bytes: &[u8]) -> Result<Report, UsageError> {
    let cannot = |why: String| {
        UsageError(format!(
            "{} is a core WebAssembly module lifehook cannot run: {why}",
            path.display()
        ))
    };
    // Adapting refuses what is not a preview-1 command, with the reason.
    #[cfg(feature = "compiler")]
    {
        let component = lifehook_runtime::adapt::adapt_bytes(bytes).map_err(cannot)?;
        let mut report = describe(path, &component)?;
        report.size = bytes.len() as u64;
        report.adapted = true;
        Ok(report)
    }
    #[cfg(not(feature = "compiler"))]
    match lifehook_runtime::adapt::refusal(bytes) {
        Some(why) => Err(cannot(why)),
        None => Err(UsageError(format!(
            "{} is a WASI preview-1 command module: this runtime-only lifehook cannot adapt it to show its imports (it runs the artifact a full build's `lifehook compile` made for it); inspect it with a full build",
            path.display()
        ))),
    }
}

/// The names of the component's own imports and exports (not those of the
/// modules and components nested in it).
fn top_level(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), wasmparser::BinaryReaderError> {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    // Depth 1 is the outer component; nested modules and components have
    // imports of their own, satisfied inside, which are no concern of the
    // host's.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let name = import?.name.name;
                    // Plain names are the types a world `use`s
                    // (`invocation`, `failure`); interfaces have a package.
                    if name.contains(':') {
                        imports.push(name.to_owned());
                    }
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    exports.push(export?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

/// The grant an import needs to be of any use, if any: the import links
/// without it (every step gets the same linker), but denies everything, so
/// the report tells the author which `allow` key the step will need.
fn grant_of(import: &str) -> Option<&'static str> {
    let name = import.split('@').next().unwrap_or(import);
    if name.starts_with("wasi:http/") {
        Some("allow.http")
    } else if name.starts_with("wasi:sockets/") || name.starts_with("wasi:tls/") {
        // TLS goes over a TCP connection granted with `tls = true`.
        Some("allow.tcp")
    } else if name.starts_with("wasi:filesystem/") || name == "lifehook:hook/files" {
        Some("allow.dirs")
    } else if name == "wasi:cli/environment" {
        Some("allow.env")
    } else {
        None
    }
}

/// The component's world as WIT text, when it decodes.
#[cfg(feature = "wit-text")]
fn wit_of(bytes: &[u8]) -> Option<String> {
    let decoded = wit_component::decode(bytes).ok()?;
    let resolve = decoded.resolve();
    let package = decoded.package();
    let mut printer = wit_component::WitPrinter::default();
    printer.print(resolve, package, &[]).ok()?;
    Some(printer.output.to_string())
}

/// A build without the WIT decoder (the runtime-only binary) reports the
/// imports and exports only.
#[cfg(not(feature = "wit-text"))]
fn wit_of(_: &[u8]) -> Option<String> {
    None
}

impl Report {
    /// The world it targets: `lifehook:hook/hook@VERSION` or
    /// `wasi:cli/command@0.2.0`.
    #[cfg(feature = "oci")]
    pub(super) fn target(&self) -> String {
        match (&self.contract, self.kind) {
            (Some(contract), "hook") => contract.replacen('@', "/hook@", 1),
            _ => "wasi:cli/command@0.2.0".to_owned(),
        }
    }
}

fn text(r: &Report) -> String {
    let mut out = format!(
        "plugin:   {} ({} KiB)\n",
        r.plugin.display(),
        r.size.div_ceil(1024)
    );
    out += &format!(
        "kind:     {}\n",
        match (r.kind, r.adapted) {
            ("hook", _) => "hook component (exports `run`)",
            (_, true) =>
                "preview-1 command, adapted (a WASI preview-1 module lifehook wraps into a command: args, env, exit code)",
            _ => "command (exports `wasi:cli/run`: args, env, exit code)",
        }
    );
    out += &format!(
        "contract: {}\n",
        r.contract
            .as_deref()
            .unwrap_or("none (a command needs none)")
    );
    out += &if r.runnable {
        format!("runs:     yes, with this lifehook ({CONTRACT}, WASI 0.2.0 to 0.2.{WASI_PATCH})\n")
    } else {
        format!("runs:     NO: {}\n", r.problems.join("; "))
    };
    out += &format!(
        "grants:   {}\n",
        if r.grants.is_empty() {
            "none needed".to_owned()
        } else {
            format!("it could use {}", r.grants.join(", "))
        }
    );
    out += &match &r.artifact {
        Some(a) => format!("compiled: precompiled artifact {}\n", a.display()),
        None => "compiled: no artifact in the cache (run `lifehook compile` before shipping it)\n"
            .to_owned(),
    };
    out += "imports:\n";
    for i in &r.imports {
        match i.grant {
            Some(g) => out += &format!("  {:<44} needs {g}\n", i.name),
            None => out += &format!("  {}\n", i.name),
        }
    }
    out += &format!("exports:\n  {}\n", r.exports.join("\n  "));
    if let Some(wit) = &r.wit {
        out += "wit:\n";
        for line in wit.lines() {
            out += &format!("  {line}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_map_to_grants() {
        assert_eq!(
            grant_of("wasi:http/outgoing-handler@0.2.0"),
            Some("allow.http")
        );
        assert_eq!(grant_of("wasi:sockets/tcp@0.2.3"), Some("allow.tcp"));
        assert_eq!(grant_of("wasi:tls/types@0.2.0-draft"), Some("allow.tcp"));
        assert_eq!(grant_of("wasi:cli/environment@0.2.0"), Some("allow.env"));
        assert_eq!(grant_of("wasi:clocks/wall-clock@0.2.0"), None);
    }
}
