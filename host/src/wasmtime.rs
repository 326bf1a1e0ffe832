//! What a wasmtime embedder needs from capcache: modules and components
//! loaded through the cache.
//!
//! ```no_run
//! let engine = wasmtime::Engine::default();
//! let cache = capcache::Cache::builder().open()?;
//! let module = capcache::wasmtime::load_module(&cache, &engine, &std::fs::read("app.wasm")?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Safety contract
//!
//! Loading compiled code is `unsafe` in wasmtime: the bytes are trusted to be
//! what wasmtime itself produced, and they run as machine code. These
//! functions are safe to call because capcache checks, before handing an
//! artifact to wasmtime:
//!
//! - its key: the SHA-256 of the wasm bytes' BLAKE3 hash, the artifact kind and
//!   `Engine::precompile_compatibility_hash()` (wasmtime's version and every
//!   setting that affects code), so an engine never loads another
//!   configuration's artifact (wasmtime also checks this itself);
//! - its integrity: the entry's header names that key, and the BLAKE3 hash of
//!   header and payload matches, so a truncated, bit-flipped or misplaced file
//!   is never loaded;
//! - its directory: capcache refuses a cache directory that is world-writable
//!   or owned by another user (see `SECURITY.md`).
//!
//! What it cannot protect against: someone running as the same user (or
//! root) can write an entry with a valid digest for any key, and wasmtime will
//! run it. The cache directory must be as trusted as the host's own binary.
//!
//! A raw entry is mapped by wasmtime straight from its file (no copy). Entries
//! are only ever replaced by rename, never rewritten in place, so a mapped file
//! never changes under a live module (wasmtime issue #10283 is a crash from
//! exactly that).

use crate::cache::{Cache, Fetched, Source};
use crate::key::{Key, Sha256Hasher};
use ::wasmtime::component::Component;
use ::wasmtime::{Engine, Module, Result};
use std::hash::Hash;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A namespace for artifacts of `engine`: it changes whenever wasmtime's
/// version or any setting that affects compiled code does, so incompatible
/// artifacts never share a namespace.
pub fn engine_namespace(engine: &Engine) -> String {
    format!("wasmtime-{}", &compatibility_key(engine).name()[..22])
}

fn compatibility_key(engine: &Engine) -> Key {
    let mut hasher = Sha256Hasher::default();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish_key()
}

/// The key of `kind`'s artifact of `wasm` for `engine`. The wasm bytes,
/// hashed on every lookup, are digested with BLAKE3 (6.6 GB/s here against
/// SHA-256's 1.8 GB/s with SHA-NI); the key itself is the SHA-256 of that
/// digest and the rest, named as every key is.
pub fn artifact_key(engine: &Engine, kind: Kind, wasm: &[u8]) -> Key {
    // One thread: hashing on both cores halves the hash alone, but a hit as a
    // whole got slower (0.34-0.37 ms against 0.40-0.48 for brotli-wasm: the
    // other core's threads cost the module's mapping and unmapping more).
    let wasm_digest = blake3::hash(wasm);
    Key::of_parts(&[b"capcache-artifact-v2", kind.tag(), &compatibility_key(engine).0, wasm_digest.as_bytes()])
}

/// What is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Module,
    Component,
}

impl Kind {
    fn tag(self) -> &'static [u8] {
        match self {
            Kind::Module => b"module",
            Kind::Component => b"component",
        }
    }
}

/// How each kind is compiled and loaded.
trait Artifact: Sized + Clone + Send + Sync + 'static {
    const KIND: Kind;
    fn compile(engine: &Engine, wasm: &[u8]) -> Result<Self>;
    fn serialize(&self) -> Result<Vec<u8>>;
    unsafe fn from_bytes(engine: &Engine, bytes: &[u8]) -> Result<Self>;
    unsafe fn from_file(engine: &Engine, file: std::fs::File) -> Result<Self>;
}

impl Artifact for Module {
    const KIND: Kind = Kind::Module;
    fn compile(engine: &Engine, wasm: &[u8]) -> Result<Self> {
        Module::new(engine, wasm)
    }
    fn serialize(&self) -> Result<Vec<u8>> {
        Module::serialize(self)
    }
    unsafe fn from_bytes(engine: &Engine, bytes: &[u8]) -> Result<Self> {
        unsafe { Module::deserialize(engine, bytes) }
    }
    unsafe fn from_file(engine: &Engine, file: std::fs::File) -> Result<Self> {
        unsafe { Module::deserialize_open_file(engine, file) }
    }
}

impl Artifact for Component {
    const KIND: Kind = Kind::Component;
    fn compile(engine: &Engine, wasm: &[u8]) -> Result<Self> {
        Component::new(engine, wasm)
    }
    fn serialize(&self) -> Result<Vec<u8>> {
        Component::serialize(self)
    }
    unsafe fn from_bytes(engine: &Engine, bytes: &[u8]) -> Result<Self> {
        unsafe { Component::deserialize(engine, bytes) }
    }
    unsafe fn from_file(engine: &Engine, file: std::fs::File) -> Result<Self> {
        unsafe { crate::mapped::component_from_file(engine, file) }
    }
}

/// The artifact stored under `key`, if there is one wasmtime accepts; a hit
/// it refuses is counted as a miss.
fn load_cached<T: Artifact>(cache: &Cache, engine: &Engine, key: &Key) -> Option<T> {
    let found = cache.fetch(key, true)?;
    // SAFETY: see the module's safety contract: the key covers the engine's
    // compatibility hash and the entry was checked whole.
    let loaded = match found {
        Fetched::RawFile(file) => unsafe { T::from_file(engine, file) },
        Fetched::Value(bytes) => unsafe { T::from_bytes(engine, &bytes) },
    };
    match loaded {
        Ok(artifact) => Some(artifact),
        Err(e) => {
            cache.unhit();
            tracing::warn!("cached artifact {} does not load ({e:#})", key.name());
            None
        }
    }
}

/// Loads `T` for `wasm` through the cache under `key`; on a miss compiles it,
/// and has the worker serialize, compress and store it, so a miss costs the
/// caller what compiling costs.
fn load<T: Artifact>(cache: &Cache, engine: &Engine, key: &Key, wasm: &[u8]) -> Result<(T, Source)> {
    if let Some(artifact) = load_cached(cache, engine, key) {
        return Ok((artifact, Source::Hit));
    }
    let artifact = T::compile(engine, wasm)?;
    let compiled = artifact.clone();
    let name = key.name();
    cache.insert_deferred(key, move || match compiled.serialize() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!("cannot serialize artifact {name} ({e:#}); not stored");
            None
        }
    });
    Ok((artifact, Source::Computed))
}

/// A module for `wasm`: from the cache, or compiled and stored.
pub fn load_module(cache: &Cache, engine: &Engine, wasm: &[u8]) -> Result<Module> {
    Ok(load(cache, engine, &artifact_key(engine, Kind::Module, wasm), wasm)?.0)
}

/// A component for `wasm`: from the cache, or compiled and stored.
pub fn load_component(cache: &Cache, engine: &Engine, wasm: &[u8]) -> Result<Component> {
    Ok(load(cache, engine, &artifact_key(engine, Kind::Component, wasm), wasm)?.0)
}

/// A module for the file at `path`, in "direct mode" (as ccache has): a small
/// manifest entry maps the file's path, size, modification and change times,
/// device and inode to
/// its content key, so a hit does not read or hash the file. Any change to the
/// file changes the manifest key, and the lookup falls back to hashing. A file
/// modified in the last few seconds is not put in a manifest (its time may not
/// yet tell two versions apart).
pub fn load_module_file(cache: &Cache, engine: &Engine, path: &Path) -> Result<Module> {
    Ok(load_file(cache, engine, path)?.0)
}

/// [`load_module_file`], also saying whether the module came from the cache.
pub fn load_module_file_with_source(cache: &Cache, engine: &Engine, path: &Path) -> Result<(Module, Source)> {
    load_file(cache, engine, path)
}

/// [`load_module_file`] for components.
pub fn load_component_file(cache: &Cache, engine: &Engine, path: &Path) -> Result<Component> {
    Ok(load_file(cache, engine, path)?.0)
}

/// Files modified more recently than this are not trusted to a manifest.
const TOO_NEW: Duration = Duration::from_secs(2);

fn load_file<T: Artifact>(cache: &Cache, engine: &Engine, path: &Path) -> Result<(T, Source)> {
    let kind = T::KIND;
    let manifest_key = manifest_key(engine, kind, path);
    if let Some(manifest_key) = &manifest_key {
        if let Some(content_key) = cache.get_by_key(manifest_key).and_then(|v| <[u8; 32]>::try_from(v).ok()) {
            // The artifact's own lookup still checks it whole; its wasm is
            // needed only if it is gone, and then it is read.
            if let Some(artifact) = load_cached(cache, engine, &Key(content_key)) {
                return Ok((artifact, Source::Hit));
            }
        }
    }
    let wasm = std::fs::read(path)?;
    // Text format too, for people.
    let wasm = wat::parse_bytes(&wasm)?;
    let content_key = artifact_key(engine, kind, &wasm);
    let artifact = load::<T>(cache, engine, &content_key, &wasm)?;
    if let Some(manifest_key) = &manifest_key {
        cache.insert_by_key(manifest_key, &content_key.0);
    }
    Ok(artifact)
}

/// The manifest key of the file at `path` as it is now; `None` if it cannot
/// be trusted to one (unreadable metadata, or modified just now).
fn manifest_key(engine: &Engine, kind: Kind, path: &Path) -> Option<Key> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(path).ok()?;
    let metadata = std::fs::metadata(&path).ok()?;
    let modified = metadata.modified().ok()?;
    if SystemTime::now().duration_since(modified).map_or(true, |age| age < TOO_NEW) {
        return None;
    }
    // ctime too: no one can set it, so restoring an old mtime after a change
    // does not fool the manifest.
    let facts = [
        metadata.len(),
        metadata.mtime() as u64,
        metadata.mtime_nsec() as u64,
        metadata.ctime() as u64,
        metadata.ctime_nsec() as u64,
        metadata.ino(),
        metadata.dev(),
    ];
    let facts: Vec<u8> = facts.iter().flat_map(|n| n.to_le_bytes()).collect();
    Some(Key::of_parts(&[
        b"capcache-direct-v1",
        kind.tag(),
        &compatibility_key(engine).0,
        path.as_os_str().as_encoded_bytes(),
        &facts,
    ]))
}
