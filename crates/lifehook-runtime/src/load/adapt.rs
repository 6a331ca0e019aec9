//! WASI preview 1 command modules as plugins. Most toolchains (wasi-libc's
//! C and C++, Zig, Go's `GOOS=wasip1`, AssemblyScript, .NET) emit a core
//! module that imports `wasi_snapshot_preview1` and exports `_start`, not a
//! component. Such a module is wrapped into a `wasi:cli/command` component
//! with the preview-1 command adapter of this wasmtime line (the crate
//! `wasi-preview1-component-adapter-provider`, the adapter wasmtime itself
//! ships) by `wit-component`, and is from then on a command plugin like any
//! other. Its artifacts are named by the module's own hash, so a
//! precompiled or cached one is loaded without adapting again (the
//! runtime-only build, which cannot adapt, runs those).

use wasmparser::{ExternalKind, Parser, Payload};

/// The import module every preview-1 program uses.
pub const PREVIEW1: &str = "wasi_snapshot_preview1";

/// What a core module is, as far as running it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleShape {
    /// Imports only from `wasi_snapshot_preview1`, exports `_start`.
    Command,
    /// Exports `_initialize` and no `_start`: a library, not a program.
    Reactor,
    /// Exports neither `_start` nor `_initialize`.
    NoEntry,
    /// Imports from a module the adapter does not provide.
    ForeignImport {
        /// The import's module.
        module: String,
        /// The item's name.
        name: String,
    },
    /// Imports nothing from `wasi_snapshot_preview1`.
    NotWasi,
}

/// The imports and exports of a core module, read without compiling it.
pub fn shape(bytes: &[u8]) -> Result<ModuleShape, wasmparser::BinaryReaderError> {
    let (mut wasi, mut foreign) = (false, None);
    let (mut start, mut initialize) = (false, false);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    if import.module == PREVIEW1 {
                        wasi = true;
                    } else if foreign.is_none() {
                        foreign = Some((import.module.to_owned(), import.name.to_owned()));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    if export.kind == ExternalKind::Func {
                        start |= export.name == "_start";
                        initialize |= export.name == "_initialize";
                    }
                }
            }
            _ => {}
        }
    }
    // A reactor is named as one even when it uses no WASI: what to build
    // instead is the useful answer.
    Ok(match (foreign, wasi, start, initialize) {
        (Some((module, name)), ..) => ModuleShape::ForeignImport { module, name },
        (None, true, true, _) => ModuleShape::Command,
        (None, _, false, true) => ModuleShape::Reactor,
        (None, false, ..) => ModuleShape::NotWasi,
        (None, true, false, false) => ModuleShape::NoEntry,
    })
}

/// Why a core module cannot be run as a command, and what to build
/// instead; `None` for a preview-1 command.
pub fn refusal(bytes: &[u8]) -> Option<String> {
    let shape = match shape(bytes) {
        Ok(s) => s,
        Err(e) => return Some(format!("it is not a valid core module: {e}")),
    };
    match shape {
        ModuleShape::Command => None,
        ModuleShape::Reactor => Some(
            "it is a WASI preview-1 reactor (it exports `_initialize` and no `_start`), a library: lifehook runs commands; build a program with a `main` (clang: without -mexec-model=reactor; Go: without -buildmode=c-shared; Zig: build-exe, not build-lib)".into(),
        ),
        ModuleShape::NoEntry => Some(
            "it exports no `_start`: lifehook runs WASI preview-1 commands; build a program with a `main`".into(),
        ),
        ModuleShape::ForeignImport { module, name } => Some(format!(
            "it imports `{name}` from `{module}`, which the WASI preview-1 adapter does not provide (only `{PREVIEW1}` is): build it against WASI alone, or as a component for wasm32-wasip2"
        )),
        ModuleShape::NotWasi => Some(format!(
            "it imports nothing from `{PREVIEW1}`: it is not a WASI preview-1 program; build it for wasm32-wasi (wasm32-wasip1) or as a component for wasm32-wasip2"
        )),
    }
}

/// Wraps a preview-1 command module into a `wasi:cli/command` component;
/// the error says what the module is and what to build instead.
#[cfg(feature = "compiler")]
pub fn adapt_bytes(module: &[u8]) -> Result<Vec<u8>, String> {
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    };
    if let Some(why) = refusal(module) {
        return Err(why);
    }
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(module)
        .and_then(|e| {
            e.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
            )
        })
        .and_then(|mut e| e.encode())
        .map_err(|e| format!("the preview-1 adapter could not wrap it: {e:#}"))
}

/// [`adapt_bytes`] for the plugin at `path`.
#[cfg(feature = "compiler")]
pub(crate) fn adapt(path: &std::path::Path, module: &[u8]) -> Result<Vec<u8>, crate::LoadError> {
    let started = std::time::Instant::now();
    let component = adapt_bytes(module).map_err(|why| crate::LoadError::Preview1 {
        path: path.to_path_buf(),
        why,
    })?;
    tracing::debug!(
        "adapted preview-1 module {} ({} B) into a command component ({} B) in {:?}",
        path.display(),
        module.len(),
        component.len(),
        started.elapsed()
    );
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal module in the binary format: imports, exports, nothing
    /// else (enough for `shape`).
    fn module(imports: &[(&str, &str)], exports: &[&str]) -> Vec<u8> {
        let mut types = wasm_encoder::TypeSection::new();
        types.ty().function([], []);
        let mut imps = wasm_encoder::ImportSection::new();
        for (m, n) in imports {
            imps.import(m, n, wasm_encoder::EntityType::Function(0));
        }
        let mut funcs = wasm_encoder::FunctionSection::new();
        let mut exps = wasm_encoder::ExportSection::new();
        let mut code = wasm_encoder::CodeSection::new();
        for (i, e) in exports.iter().enumerate() {
            funcs.function(0);
            let index = (imports.len() + i) as u32;
            exps.export(e, wasm_encoder::ExportKind::Func, index);
            let mut f = wasm_encoder::Function::new([]);
            f.instruction(&wasm_encoder::Instruction::End);
            code.function(&f);
        }
        let mut m = wasm_encoder::Module::new();
        m.section(&types)
            .section(&imps)
            .section(&funcs)
            .section(&exps)
            .section(&code);
        m.finish()
    }

    #[test]
    fn shapes() {
        let p1 = [(PREVIEW1, "fd_write")];
        let of = |m: Vec<u8>| shape(&m).ok();
        assert_eq!(of(module(&p1, &["_start"])), Some(ModuleShape::Command));
        assert_eq!(
            of(module(&p1, &["_initialize"])),
            Some(ModuleShape::Reactor)
        );
        assert_eq!(of(module(&p1, &["main"])), Some(ModuleShape::NoEntry));
        assert_eq!(of(module(&[], &["_start"])), Some(ModuleShape::NotWasi));
        assert_eq!(
            of(module(
                &[(PREVIEW1, "fd_write"), ("env", "mystery")],
                &["_start"]
            )),
            Some(ModuleShape::ForeignImport {
                module: "env".into(),
                name: "mystery".into()
            })
        );
        assert!(refusal(&module(&p1, &["_initialize"])).is_some_and(|m| m.contains("reactor")));
        assert_eq!(refusal(&module(&p1, &["_start"])), None);
    }
}
