//! `lifehook new`: scaffolds a plugin project that builds with one command
//! and passes `lifehook check`, in Rust, Python, JavaScript, C or Zig.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::UsageError;
use crate::exit::EXIT_OK;
use crate::output::print_out;

/// Create a plugin project: source, its build, the WIT contract, a README
/// with the one build command, and an example pipeline that runs it.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  lifehook new drain --lang rust
  lifehook new wait-ready --lang python
  lifehook new notify --lang js
  lifehook new flush --lang c
  lifehook new cleanup --lang rust --kind command")]
pub struct New {
    /// The plugin's name, also the new directory's: lower-case letters,
    /// digits and `-`, starting with a letter.
    name: String,

    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: Lang,

    /// A hook component (typed invocation and failure) or a plain command
    /// (args, env, exit code; Rust, and what C and Zig always make: WASI
    /// preview-1 commands, adapted by lifehook).
    #[arg(long, value_enum, default_value = "hook")]
    kind: Kind,

    /// Where to create the project directory [default: the current one].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lang {
    Rust,
    Python,
    Js,
    /// C with wasi-libc (Debian's clang-16): a WASI preview-1 command.
    C,
    /// Zig (0.17, PyPI's `ziglang`): a WASI preview-1 command.
    Zig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Hook,
    Command,
}

/// The contract, copied into every hook project.
const WIT: &[(&str, &str)] = &[
    ("wit/hook.wit", include_str!("../../../../wit/hook.wit")),
    (
        "wit/deps/config/store.wit",
        include_str!("../../../../wit/deps/config/store.wit"),
    ),
    (
        "wit/deps/config/world.wit",
        include_str!("../../../../wit/deps/config/world.wit"),
    ),
    (
        "wit/deps/wasi-cli.wit",
        include_str!("../../../../wit/deps/wasi-cli.wit"),
    ),
    (
        "wit/deps/wasi-clocks.wit",
        include_str!("../../../../wit/deps/wasi-clocks.wit"),
    ),
    (
        "wit/deps/wasi-filesystem.wit",
        include_str!("../../../../wit/deps/wasi-filesystem.wit"),
    ),
    (
        "wit/deps/wasi-http.wit",
        include_str!("../../../../wit/deps/wasi-http.wit"),
    ),
    (
        "wit/deps/wasi-io.wit",
        include_str!("../../../../wit/deps/wasi-io.wit"),
    ),
    (
        "wit/deps/wasi-random.wit",
        include_str!("../../../../wit/deps/wasi-random.wit"),
    ),
    (
        "wit/deps/wasi-sockets.wit",
        include_str!("../../../../wit/deps/wasi-sockets.wit"),
    ),
    (
        "wit/deps/wasi-tls.wit",
        include_str!("../../../../wit/deps/wasi-tls.wit"),
    ),
];

impl New {
    pub fn execute(self) -> anyhow::Result<i32> {
        let name = &self.name;
        let valid = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(UsageError(format!(
                "invalid plugin name {name:?}: use lower-case letters, digits and `-`, starting with a letter (it names the directory, the crate or package, and the .wasm)"
            ))
            .into());
        }
        if self.kind == Kind::Command && matches!(self.lang, Lang::Python | Lang::Js) {
            return Err(UsageError(
                "--kind command is offered for Rust; Python and JavaScript plugins are hook components (--kind hook)".into(),
            )
            .into());
        }
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(name);
        if dir.exists() {
            return Err(UsageError(format!(
                "{} already exists: lifehook new never overwrites; pick another name or remove it",
                dir.display()
            ))
            .into());
        }
        let files = self.files();
        for (relative, text) in &files {
            write(&dir.join(relative), text)?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let script = dir.join("build.sh");
            if script.exists() {
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        print_out(&format!(
            "created {} ({} files)\nnext:\n  cd {}\n  {}\n  lifehook check && lifehook run\n",
            dir.display(),
            files.len(),
            dir.display(),
            self.build_command()
        ));
        Ok(EXIT_OK)
    }

    fn build_command(&self) -> &'static str {
        match self.lang {
            Lang::Rust => "cargo build --release --target wasm32-wasip2",
            Lang::Python | Lang::Js | Lang::C | Lang::Zig => "./build.sh",
        }
    }

    /// Where the build writes the component, relative to the project.
    fn wasm(&self) -> String {
        match (self.lang, self.kind) {
            (Lang::Rust, Kind::Hook) => format!(
                "target/wasm32-wasip2/release/{}.wasm",
                self.name.replace('-', "_")
            ),
            (Lang::Rust, Kind::Command) => {
                format!("target/wasm32-wasip2/release/{}.wasm", self.name)
            }
            _ => format!("{}.wasm", self.name),
        }
    }

    fn files(&self) -> Vec<(String, String)> {
        let fill = |t: &str| {
            t.replace("{{name}}", &self.name)
                .replace("{{crate}}", &self.name.replace('-', "_"))
                // The contract version JavaScript imports carry, so a
                // scaffold always targets this lifehook's.
                .replace("{{contract}}", lifehook_runtime::contract::VERSION)
        };
        let mut files: Vec<(String, String)> = match (self.lang, self.kind) {
            (Lang::Rust, Kind::Hook) => vec![
                (
                    "Cargo.toml".into(),
                    fill(include_str!("../../templates/rust-hook/Cargo.toml")),
                ),
                (
                    "src/lib.rs".into(),
                    fill(include_str!("../../templates/rust-hook/src/lib.rs")),
                ),
            ],
            (Lang::Rust, Kind::Command) => vec![
                (
                    "Cargo.toml".into(),
                    fill(include_str!("../../templates/rust-command/Cargo.toml")),
                ),
                (
                    "src/main.rs".into(),
                    fill(include_str!("../../templates/rust-command/src/main.rs")),
                ),
            ],
            (Lang::Python, _) => vec![
                (
                    "app.py".into(),
                    fill(include_str!("../../templates/python/app.py")),
                ),
                (
                    "build.sh".into(),
                    fill(include_str!("../../templates/python/build.sh")),
                ),
            ],
            (Lang::Js, _) => vec![
                (
                    "app.js".into(),
                    fill(include_str!("../../templates/js/app.js")),
                ),
                (
                    "build.sh".into(),
                    fill(include_str!("../../templates/js/build.sh")),
                ),
            ],
            (Lang::C, _) => vec![
                (
                    "plugin.c".into(),
                    fill(include_str!("../../templates/c/plugin.c")),
                ),
                (
                    "build.sh".into(),
                    fill(include_str!("../../templates/c/build.sh")),
                ),
            ],
            (Lang::Zig, _) => vec![
                (
                    "plugin.zig".into(),
                    fill(include_str!("../../templates/zig/plugin.zig")),
                ),
                (
                    "build.sh".into(),
                    fill(include_str!("../../templates/zig/build.sh")),
                ),
            ],
        };
        if self.kind == Kind::Hook && !self.preview1() {
            files.extend(WIT.iter().map(|(p, t)| ((*p).to_owned(), (*t).to_owned())));
        }
        files.push(("lifehook.toml".into(), self.pipeline()));
        if self.preview1() {
            // The directory the example pipeline grants it.
            files.push(("state/.gitkeep".into(), String::new()));
        }
        files.push(("README.md".into(), self.readme()));
        files.push((".gitignore".into(), self.gitignore()));
        files
    }

    fn pipeline(&self) -> String {
        let memory = match self.lang {
            // CPython and the JavaScript engine need more room than Rust.
            Lang::Python | Lang::Js => "memory = \"256MiB\"\n",
            Lang::Rust | Lang::C | Lang::Zig => "",
        };
        let how = match self.kind {
            _ if self.preview1() => "args = [\"stopping\"]\nenv = { WHO = \"${POD_NAME:-the cluster}\", STATE_DIR = \"/state\" }\nallow.dirs = [{ host = \"state\", guest = \"/state\", access = \"read-write\" }]\n".to_owned(),
            Kind::Hook => "config = { who = \"${POD_NAME:-the cluster}\" }\n".to_owned(),
            Kind::Command => {
                "args = [\"--verbose\"]\nenv = { WHO = \"${POD_NAME:-the cluster}\" }\n".to_owned()
            }
        };
        format!(
            "# Runs the plugin as a pre-stop step: `lifehook run` (after building it).\n\n[pre-stop]\ndeadline = \"20s\"\n\n[[pre-stop.steps]]\nname = \"{}\"\nplugin = \"{}\"\ntimeout = \"10s\"\n{memory}{how}",
            self.name,
            self.wasm()
        )
    }

    fn readme(&self) -> String {
        let lang = match self.lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python (componentize-py 0.25.1)",
            Lang::Js => "JavaScript (componentize-js 0.23.0)",
            Lang::C => {
                "C (clang-16 and wasi-libc; on Debian 12: `apt-get install clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32`)"
            }
            Lang::Zig => {
                "Zig (0.17, the PyPI package `ziglang`, which the build installs into .venv)"
            }
        };
        let kind = match self.kind {
            _ if self.preview1() => {
                "a WASI preview-1 command (args, env, exit code; lifehook adapts the module into a component itself, and `lifehook compile` precompiles it); it writes into `state/`, which the example pipeline grants"
            }
            Kind::Hook => "a hook component (`wit/hook.wit`, world `hook`)",
            Kind::Command => "a plain WASI command (args, env, exit code)",
        };
        let precompile = match self.lang {
            Lang::Rust | Lang::C | Lang::Zig => "",
            Lang::Python | Lang::Js => {
                "\nComponents with an interpreter inside take seconds to compile: run\n`lifehook compile` once (when building the image) so hooks load\nmachine code instead.\n"
            }
        };
        format!(
            "# {name}\n\nA lifehook plugin in {lang}: {kind}.\n\nBuild it:\n\n```sh\n{build}\n```\n\nThat writes `{wasm}`. Then check and run the example pipeline:\n\n```sh\nlifehook check\nlifehook run\n```\n{precompile}\nSee lifehook's author's guide (docs/authoring.md in its repository) for the\ncontract, limits, grants and testing with `lifehook run --only {name}`.\n",
            name = self.name,
            build = self.build_command(),
            wasm = self.wasm(),
        )
    }

    fn gitignore(&self) -> String {
        match self.lang {
            Lang::Rust => "/target\n.lifehook-cache/\n".into(),
            Lang::Python => format!(".venv/\n{}.wasm\n.lifehook-cache/\n", self.name),
            Lang::Js => format!("node_modules/\n{}.wasm\n.lifehook-cache/\n", self.name),
            Lang::C => format!("{}.wasm\n.lifehook-cache/\n", self.name),
            Lang::Zig => format!(
                ".venv/\n.zig-cache/\n{}.wasm\n.lifehook-cache/\n",
                self.name
            ),
        }
    }

    /// C and Zig build WASI preview-1 command modules (no WIT needed).
    fn preview1(&self) -> bool {
        matches!(self.lang, Lang::C | Lang::Zig)
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
