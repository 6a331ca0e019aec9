//! Host bindings generated from `wit/hook.wit`.
//!
//! The generated `wasi:config/store` bindings are unused: that interface is
//! served by `wasmtime-wasi-config`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "lifehook:hook/hook",
    exports: { default: async },
});
