//! Cranelift's incremental compilation, backed by capcache: an implementation
//! of wasmtime's `CacheStore`. With it, recompiling a module in which one
//! function changed reuses the compiled code of every other function.
//!
//! ```no_run
//! use std::sync::Arc;
//! let cache = Arc::new(capcache::Cache::builder().open()?);
//! let mut config = wasmtime::Config::new();
//! config.enable_incremental_compilation(Arc::new(capcache::incremental::IncrementalCache::new(cache)))?;
//! let engine = wasmtime::Engine::new(&config)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::cache::Cache;
use crate::key::{Key, KeyDomain};
use std::borrow::Cow;
use std::sync::Arc;

/// A `wasmtime::CacheStore` over a [`Cache`]. Cranelift's keys are hashed
/// with a prefix of their own, so they never meet whole-module artifacts.
#[derive(Debug, Clone)]
pub struct IncrementalCache {
    cache: Arc<Cache>,
}

impl IncrementalCache {
    /// Backs Cranelift's incremental cache with `cache`.
    pub fn new(cache: Arc<Cache>) -> Self {
        IncrementalCache { cache }
    }

    fn key(key: &[u8]) -> Key {
        Key::derive(KeyDomain::Incremental, &[key])
    }
}

impl wasmtime::CacheStore for IncrementalCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        self.cache.get_by_key(&Self::key(key)).map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        self.cache.insert_by_key(&Self::key(key), &value)
    }
}
