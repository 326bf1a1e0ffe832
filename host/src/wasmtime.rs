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
//! - its integrity: the entry's header names that key, and the checksum of
//!   header and payload matches, so a truncated, bit-flipped or misplaced file
//!   is never loaded;
//! - who wrote it: the entry file is owned by this user (or root) and
//!   writable by no one else, and every directory of the cache is owned by
//!   this user (or root) and writable by no one else (see `SECURITY.md`);
//! - that no caller put it there: artifact keys are the crate's own, and
//!   only the code here that compiled the bytes stores under them (a value a
//!   caller stores is in another key domain);
//! - for a file load, that the artifact is of the bytes the file holds now
//!   (they are hashed on every load), unless the cache was built with
//!   [`DirectMode::TrustFileIdentity`](crate::DirectMode::TrustFileIdentity),
//!   which trusts the file's identity instead (see its documentation).
//!
//! What it cannot protect against: someone running as the same user (or
//! root) can write an entry with a valid digest for any key, and wasmtime will
//! run it. The cache directory must be as trusted as the host's own binary.
//!
//! A raw entry is mapped by wasmtime straight from its file (no copy). Entries
//! are only ever replaced by rename, never rewritten in place, so a mapped file
//! never changes under a live module (wasmtime issue #10283 is a crash from
//! exactly that).

use crate::cache::{Cache, Source};
use crate::config::DirectMode;
use crate::flight::Joined;
use crate::key::{Key, KeyDomain, Sha256Hasher};
use crate::store::{FileIdentity, Found};
use ::wasmtime::component::Component;
use ::wasmtime::error::Context;
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

/// The key of `engine`'s compatibility hash (wasmtime's version and every
/// setting that affects compiled code): a part of every artifact and manifest
/// key, so that an engine never loads another configuration's code.
pub(crate) fn compatibility_key(engine: &Engine) -> Key {
    let mut hasher = Sha256Hasher::default();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish_key()
}

/// The SHA-256 digest of `engine`'s compatibility hash, one of the parts of
/// its artifacts' keys.
pub fn compatibility_digest(engine: &Engine) -> [u8; 32] {
    compatibility_key(engine).0
}

/// The key of `kind`'s artifact of `wasm` for `engine`. The wasm bytes,
/// hashed on every lookup, are digested with BLAKE3 (on all cores when they
/// are large); the key itself is the SHA-256 of that digest and the rest, in
/// the artifact domain. Crate-private: only the adapter that compiles the
/// bytes may store under it.
pub(crate) fn artifact_key(engine: &Engine, kind: Kind, wasm: &[u8]) -> Key {
    let mut hasher = blake3::Hasher::new();
    // As a file load hashes the same bytes: on all cores from the same size.
    if wasm.len() as u64 >= crate::input::PARALLEL_FILE_HASH_MIN && crate::input::all_cores() {
        hasher.update_rayon(wasm);
    } else {
        hasher.update(wasm);
    }
    key_of_digest(engine, kind, hasher.finalize().as_bytes())
}

/// The artifact key of wasm bytes whose BLAKE3 digest is `wasm_digest`.
fn key_of_digest(engine: &Engine, kind: Kind, wasm_digest: &[u8; 32]) -> Key {
    Key::derive(KeyDomain::Artifact, &[kind.tag(), &compatibility_key(engine).0, wasm_digest])
}

/// The name of the entry that holds `kind`'s artifact of `wasm` for `engine`
/// (as `capcache ls` shows it): to find, pin or inspect one module's entry.
pub fn artifact_name(engine: &Engine, kind: Kind, wasm: &[u8]) -> String {
    artifact_key(engine, kind, wasm).name()
}

/// [`artifact_name`] of the file at `path`, read as a file load reads it (a
/// `.wat` file's binary; regular files of at most `max_size` bytes only).
pub fn artifact_name_of_file(engine: &Engine, kind: Kind, path: impl AsRef<Path>, max_size: u64) -> Result<String> {
    let path = path.as_ref();
    let (file, metadata) = crate::input::open_regular_file(path, max_size).with_context(|| format!("{}", path.display()))?;
    let wasm = OpenedFile { path, file, metadata, max_size }.into_binary()?;
    Ok(artifact_name(engine, kind, &wasm))
}

/// What is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A core module (`wasmtime::Module`).
    Module,
    /// A component (`wasmtime::component::Component`).
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
    /// Loads compiled code from bytes.
    ///
    /// # Safety
    /// As wasmtime's `deserialize`: `bytes` must be what this engine's
    /// wasmtime serialized (it runs as machine code). Callers get them from a
    /// checked entry under a key that covers the engine's compatibility hash.
    unsafe fn from_bytes(engine: &Engine, bytes: &[u8]) -> Result<Self>;
    /// Loads compiled code from an open file, mapped rather than read.
    ///
    /// # Safety
    /// As [`Artifact::from_bytes`], for the file's contents; and the file must
    /// not change while the artifact lives (entries are replaced by rename,
    /// never written in place, and only their owner could write one).
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
        // SAFETY: the caller upholds `from_bytes`'s contract, which is
        // `Module::deserialize`'s.
        unsafe { Module::deserialize(engine, bytes) }
    }
    unsafe fn from_file(engine: &Engine, file: std::fs::File) -> Result<Self> {
        // SAFETY: the caller upholds `from_file`'s contract, which is
        // `Module::deserialize_open_file`'s, which is `module_from_file`'s.
        unsafe { crate::mapped::module_from_file(engine, file) }
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
        // SAFETY: the caller upholds `from_bytes`'s contract, which is
        // `Component::deserialize`'s.
        unsafe { Component::deserialize(engine, bytes) }
    }
    unsafe fn from_file(engine: &Engine, file: std::fs::File) -> Result<Self> {
        // SAFETY: the caller upholds `from_file`'s contract, which is
        // `component_from_file`'s.
        unsafe { crate::mapped::component_from_file(engine, file) }
    }
}

/// The artifact stored under `key`, if there is one wasmtime accepts; a hit
/// it refuses is counted as a miss.
fn load_cached<T: Artifact>(cache: &Cache, engine: &Engine, key: &Key) -> Option<(T, Source)> {
    let (found, source) = cache.fetch(key, crate::store::RawEntryAs::File)?;
    let loaded = match found {
        // SAFETY: see the module's safety contract: the key covers the
        // engine's compatibility hash, the entry was checked whole and is its
        // owner's, and entries are replaced only by rename.
        Found::RawFile(file) => unsafe { T::from_file(engine, file) },
        // SAFETY: as above, for a decoded copy.
        Found::Value(bytes) => unsafe { T::from_bytes(engine, &bytes) },
    };
    match loaded {
        Ok(artifact) => Some((artifact, source)),
        Err(e) => {
            cache.count_unusable_hit();
            tracing::warn!("cached artifact {} does not load ({e:#})", key.name());
            None
        }
    }
}

/// Loads `T` for `wasm` through the cache under `key`; on a miss compiles it,
/// and has the worker serialize, compress and store it, so a miss costs the
/// caller what compiling costs.
fn load<T: Artifact>(cache: &Cache, engine: &Engine, key: &Key, wasm: &[u8]) -> Result<(T, Source)> {
    if !cache.is_enabled() {
        return Ok((T::compile(engine, wasm)?, Source::Uncached));
    }
    if let Some(found) = load_cached(cache, engine, key) {
        return Ok(found);
    }
    compile_and_store(cache, engine, key, wasm)
}

/// Compiles `wasm` (whose key is `key`, already looked up and missed), and
/// has the worker serialize, compress and store it. Loads of the same key in
/// this process meanwhile, concurrent or back to back until the store is
/// done, share this compile (see [`crate::flight`]), and count as hits.
fn compile_and_store<T: Artifact>(cache: &Cache, engine: &Engine, key: &Key, wasm: &[u8]) -> Result<(T, Source)> {
    let Some(flights) = cache.flights() else { return Ok((T::compile(engine, wasm)?, Source::Uncached)) };
    let leader = match flights.join(key) {
        Joined::Leader(leader) => leader,
        Joined::Follower(flight) => match flight.wait::<T>() {
            Some(artifact) => {
                cache.count_shared_compile();
                return Ok((artifact, Source::Hit));
            }
            // The leader failed: the same bytes fail the same way, and say
            // why here too.
            None => return Ok((T::compile(engine, wasm)?, Source::Miss)),
        },
    };
    let started = std::time::Instant::now();
    let artifact = T::compile(engine, wasm)?;
    // What a miss of these bytes costs: the policy may keep what is dear.
    let cost_us = crate::cache::micros(started.elapsed());
    let landed = leader.share(artifact.clone());
    let compiled = artifact.clone();
    let name = key.name();
    let serialize = move || match compiled.serialize() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!("cannot serialize artifact {name} ({e:#}); not stored");
            None
        }
    };
    cache.insert_value_deferred(key, serialize, cost_us, landed);
    Ok((artifact, Source::Miss))
}

/// A module for `wasm`: from the cache, or compiled and stored.
pub fn load_module(cache: &Cache, engine: &Engine, wasm: &[u8]) -> Result<Module> {
    Ok(load_module_with_source(cache, engine, wasm)?.0)
}

/// [`load_module`], also saying where the module came from.
pub fn load_module_with_source(cache: &Cache, engine: &Engine, wasm: &[u8]) -> Result<(Module, Source)> {
    load(cache, engine, &artifact_key(engine, Kind::Module, wasm), wasm)
}

/// A component for `wasm`: from the cache, or compiled and stored.
pub fn load_component(cache: &Cache, engine: &Engine, wasm: &[u8]) -> Result<Component> {
    Ok(load_component_with_source(cache, engine, wasm)?.0)
}

/// [`load_component`], also saying where the component came from.
pub fn load_component_with_source(cache: &Cache, engine: &Engine, wasm: &[u8]) -> Result<(Component, Source)> {
    load(cache, engine, &artifact_key(engine, Kind::Component, wasm), wasm)
}

/// A module for the file at `path` (a `.wasm` binary, or the text format in a
/// `.wat` file).
///
/// By default the file's bytes are read and hashed on every load (large files
/// on all cores), so a hit is the artifact of exactly the bytes the file holds
/// now, whatever its identity says. A cache built with
/// [`DirectMode::TrustFileIdentity`](crate::DirectMode::TrustFileIdentity)
/// skips that for files whose identity it has seen: see [`DirectMode`](crate::DirectMode)
/// for what that trusts, and when it is wrong.
///
/// The file is opened once and read from that descriptor, never by its path
/// again, so a file or directory swapped meanwhile (a deploy that flips
/// `current -> releases/v2`) cannot mix one file's key with another's bytes:
/// a miss compiles the very bytes it hashed. Only regular files of at most
/// [`crate::HostSettings::max_module_size`] bytes are read.
pub fn load_module_file(cache: &Cache, engine: &Engine, path: impl AsRef<Path>) -> Result<Module> {
    Ok(load_file(cache, engine, path.as_ref())?.0)
}

/// [`load_module_file`], also saying where the module came from.
pub fn load_module_file_with_source(cache: &Cache, engine: &Engine, path: impl AsRef<Path>) -> Result<(Module, Source)> {
    load_file(cache, engine, path.as_ref())
}

/// [`load_module_file`] for components.
pub fn load_component_file(cache: &Cache, engine: &Engine, path: impl AsRef<Path>) -> Result<Component> {
    Ok(load_file(cache, engine, path.as_ref())?.0)
}

/// [`load_component_file`], also saying where the component came from.
pub fn load_component_file_with_source(cache: &Cache, engine: &Engine, path: impl AsRef<Path>) -> Result<(Component, Source)> {
    load_file(cache, engine, path.as_ref())
}

/// A file changed less than this long ago (by either of its times) is not
/// trusted to a manifest, on filesystems with sub-second timestamps. The
/// kernel stamps changes from a clock that ticks every few milliseconds, so
/// two writes in one tick share their times; a rewrite that lands after the
/// manifest was recorded must show a later change time, which holds when the
/// window is longer than a tick.
pub const RECENT_CHANGE_WINDOW: Duration = Duration::from_secs(2);

/// The window on filesystems whose timestamps have whole seconds only (ext4
/// with 128-byte inodes, FAT's two-second modification times, many network
/// filesystems): longer than their coarsest granularity, with a margin.
pub const RECENT_CHANGE_WINDOW_COARSE: Duration = Duration::from_secs(5);

/// Whether this version of a file is old enough to be trusted to a manifest
/// at `now`: both of its times at least the window in the past. A change time
/// with no fraction of a second is taken as the sign of a filesystem with
/// whole-second timestamps (no one can set a change time; on a fine-grained
/// filesystem a zero fraction is a one-in-a-billion chance, and then the file
/// waits a few seconds longer).
fn settled_at(file: &FileIdentity, now: SystemTime) -> bool {
    let window = if file.ctime.1 == 0 { RECENT_CHANGE_WINDOW_COARSE } else { RECENT_CHANGE_WINDOW };
    let at = |(secs, nanos): (i64, i64)| {
        let since_epoch = Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
        SystemTime::UNIX_EPOCH + since_epoch
    };
    let latest = at(file.mtime).max(at(file.ctime));
    now.duration_since(latest).is_ok_and(|age| age >= window)
}

/// The manifest key of this version of a file of `kind` for `engine`: its
/// identity, and what more the kernel says of it (see
/// [`crate::input::more_identity`]).
fn manifest_key(file: &FileIdentity, more: &[u8], engine: &Engine, kind: Kind) -> Key {
    let facts = [file.dev, file.ino, file.size, file.mtime.0 as u64, file.mtime.1 as u64, file.ctime.0 as u64, file.ctime.1 as u64];
    let facts: Vec<u8> = facts.iter().flat_map(|n| n.to_le_bytes()).collect();
    Key::derive(KeyDomain::Manifest, &[kind.tag(), &compatibility_key(engine).0, &facts, more])
}

/// A module file the user named, opened once: everything a load reads of it
/// comes through this descriptor.
struct OpenedFile<'a> {
    path: &'a Path,
    file: std::fs::File,
    metadata: std::fs::Metadata,
    max_size: u64,
}

impl OpenedFile<'_> {
    /// What went wrong with this file, naming it.
    fn context(&self) -> String {
        self.path.display().to_string()
    }

    /// The rest of the file (all of it, unless something read it already),
    /// as a binary.
    fn into_binary(self) -> Result<Vec<u8>> {
        let context = self.context();
        let bytes = crate::input::read_at_most(self.file, self.metadata.len(), self.max_size).context(context)?;
        binary_of(self.path, bytes)
    }
}

fn load_file<T: Artifact>(cache: &Cache, engine: &Engine, path: &Path) -> Result<(T, Source)> {
    let max_size = cache.max_module_size();
    let (file, metadata) = crate::input::open_regular_file(path, max_size).with_context(|| format!("{}", path.display()))?;
    let opened = OpenedFile { path, file, metadata, max_size };
    if !cache.is_enabled() {
        let wasm = opened.into_binary()?;
        return load::<T>(cache, engine, &artifact_key(engine, T::KIND, &wasm), &wasm);
    }
    match cache.direct_mode() {
        DirectMode::Off => load_file_by_content(cache, engine, opened),
        DirectMode::TrustFileIdentity => load_file_by_identity(cache, engine, opened),
    }
}

/// The default: the key of the bytes the file holds now. A binary is hashed
/// through a buffer, so a hit never holds the file; on a miss it is read from
/// the start of the same descriptor and hashed again, and the bytes compiled
/// are the bytes of the key they are stored under.
fn load_file_by_content<T: Artifact>(cache: &Cache, engine: &Engine, mut opened: OpenedFile) -> Result<(T, Source)> {
    let hashed = crate::input::hash_open_file(&opened.file, opened.max_size).with_context(|| opened.context())?;
    let looked_up = hashed.starts_with(b"\0asm");
    if looked_up && let Some(found) = load_cached(cache, engine, &key_of_digest(engine, T::KIND, &hashed.digest)) {
        return Ok(found);
    }
    std::io::Seek::rewind(&mut opened.file).with_context(|| opened.context())?;
    let wasm = opened.into_binary()?;
    let key = artifact_key(engine, T::KIND, &wasm);
    if looked_up && key == key_of_digest(engine, T::KIND, &hashed.digest) {
        // Looked up and missed a moment ago: not asked (or counted) twice.
        return compile_and_store(cache, engine, &key, &wasm);
    }
    // The text format's binary, or bytes that changed since they were hashed.
    load::<T>(cache, engine, &key, &wasm)
}

/// Direct mode: a manifest maps the file's identity to its artifact's key.
fn load_file_by_identity<T: Artifact>(cache: &Cache, engine: &Engine, opened: OpenedFile) -> Result<(T, Source)> {
    let kind = T::KIND;
    let before = FileIdentity::of(&opened.file, &opened.metadata)?;
    let more = crate::input::more_identity(&opened.file);
    let manifest_key = settled_at(&before, SystemTime::now()).then(|| manifest_key(&before, &more, engine, kind));
    if let Some(artifact) = manifest_key.and_then(|manifest| cache.read_manifest(&manifest)) {
        // The artifact's own lookup still checks it whole; its wasm is needed
        // only if it is gone, and then it is read.
        if let Some(found) = load_cached(cache, engine, &artifact) {
            return Ok(found);
        }
    }
    let OpenedFile { path, mut file, max_size, .. } = opened;
    let bytes = crate::input::read_at_most(&mut file, before.size, max_size).with_context(|| format!("{}", path.display()))?;
    let after = FileIdentity::of(&file, &file.metadata()?)?;
    drop(file);
    let wasm = binary_of(path, bytes)?;
    let content_key = artifact_key(engine, kind, &wasm);
    let loaded = load::<T>(cache, engine, &content_key, &wasm)?;
    match manifest_key {
        Some(manifest) if after == before => cache.write_manifest(&manifest, &content_key),
        Some(_) => tracing::debug!("{} changed while it was read; no manifest recorded", path.display()),
        None => {}
    }
    Ok(loaded)
}

/// The WebAssembly binary in `bytes`, read from `path`: as it is, or parsed
/// from the text format if the file is a `.wat` file. Anything else is
/// refused with a short message, never a parser's quote of the whole file.
fn binary_of(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    let is_text = path.extension().is_some_and(|e| e == "wat" || e == "wast");
    if !is_text {
        ::wasmtime::bail!(
            "{}: not a WebAssembly binary (it does not start with \\0asm); the text format is read from .wat files only",
            path.display()
        );
    }
    wat::parse_bytes(&bytes)
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| ::wasmtime::format_err!("{}: not valid WebAssembly text: {}", path.display(), crate::input::excerpt(&e.to_string())))
}
