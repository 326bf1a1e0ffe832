//! Cranelift's incremental compilation, backed by capcache: an implementation
//! of wasmtime's `CacheStore`. With it, recompiling a module in which one
//! function changed reuses the compiled code of every other function.
//!
//! ```no_run
//! use std::sync::Arc;
//! let cache = Arc::new(capcache::Cache::builder().open()?);
//! let mut config = wasmtime::Config::new();
//! capcache::incremental::enable(&mut config, cache)?;
//! let engine = wasmtime::Engine::new(&config)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What Cranelift stores here is native code it will use as is, so the store
//! itself is not public: only Cranelift, through the engine's configuration,
//! can write to it. A `CacheStore` handed to the caller would let safe code
//! store any bytes as any function's code.

use crate::cache::Cache;
use crate::key::{Key, KeyDomain};
use std::borrow::Cow;
use std::sync::Arc;

/// Backs Cranelift's incremental compilation in `config` with `cache`:
/// recompiling a module in which one function changed reuses the compiled
/// code of every other function. Fails as
/// `Config::enable_incremental_compilation` does (a configuration without
/// Cranelift).
pub fn enable(config: &mut wasmtime::Config, cache: Arc<Cache>) -> wasmtime::Result<()> {
    config.enable_incremental_compilation(Arc::new(IncrementalCache { cache }))?;
    Ok(())
}

/// A `wasmtime::CacheStore` over a [`Cache`]. Cranelift's keys are hashed
/// in a domain of their own, so they never meet whole-module artifacts.
#[derive(Debug, Clone)]
struct IncrementalCache {
    cache: Arc<Cache>,
}

impl IncrementalCache {

    fn key(key: &[u8]) -> Key {
        Key::derive(KeyDomain::Incremental, &[key])
    }
}

impl wasmtime::CacheStore for IncrementalCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        self.cache.get_value(&Self::key(key)).map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        // Cranelift hands over a function's result, not what it cost.
        self.cache.insert_value(&Self::key(key), &value, 0)
    }
}
