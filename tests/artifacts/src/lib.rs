//! Paths of the plugins built from `plugins/` for wasm32-wasip2 by this
//! crate's build script. Tests use these, never checked-in `.wasm` files.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
