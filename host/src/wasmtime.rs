//! What a wasmtime embedder needs from capcache.

use crate::key::Sha256Hasher;

/// A namespace for artifacts of `engine`: it changes whenever wasmtime's
/// version or any setting that affects compiled code does, so incompatible
/// artifacts never share a namespace.
pub fn engine_namespace(engine: &::wasmtime::Engine) -> String {
    use std::hash::Hash;
    let mut hasher = Sha256Hasher::default();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("wasmtime-{}", &hasher.finish_key().name()[..22])
}
