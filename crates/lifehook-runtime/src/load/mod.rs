//! Getting a plugin ready to run: where its bytes come from ([`sources`]: a
//! file, or an OCI registry through [`oci`], pinned by the lock file), the
//! checks and pre-instantiation of the component ([`plugin`]), a WASI
//! preview-1 command module adapted into one ([`adapt`]), its machine
//! code from a precompiled artifact or a compile ([`cache`]), and the
//! per-runner slots that load each plugin once in the background
//! ([`loader`]).

pub mod adapt;
pub(crate) mod cache;
pub(crate) mod loader;
#[cfg(feature = "oci")]
pub mod oci;
pub(crate) mod plugin;
pub mod sources;
