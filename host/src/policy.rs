//! Running a policy component: compiled once per process, instantiated with no
//! ambient authority (its only imports are the `view` capability; any WASI
//! import its language's runtime brings is linked to a trap), under a memory
//! cap and a CPU deadline per call. A call that traps, runs out of time or
//! memory, or fails in any other way costs at most its deadline: it is logged
//! and counted, the call counts as declined (a miss is not stored, an event
//! brings no action), and the instance is dropped and made anew (and
//! configured again) on the next call.

use crate::bindings::exports::capcache::policy::policy::{Action, Admission, Candidate, MaintainReport, Setting, SettingsError};
use crate::bindings::{PolicyWorld, PolicyWorldPre};
use crate::bindings::capcache::policy::types::EntryMeta;
use crate::error::Error;
use crate::key::{Key, KeyDomain, Sha256Hasher};
use crate::store::{Area, OpenOutcome, Store as EntryStore};
use std::hash::Hash;
use crate::settings::HostSettings;
use crate::stats::Stats;
use crate::namespace::{Admit, AdmitWait, Decision};
use crate::view::{PolicyView, ViewBackend};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store};

/// The default policy's component, built from `guest/default` and shipped as
/// bytes, so that no embedder needs the wasm target (`bash guest/build`
/// rebuilds it; a test fails when it no longer matches its source).
static DEFAULT_POLICY: &[u8] = include_bytes!("../policies/default.wasm");

/// The WIT interfaces a policy may import, with the contract's version.
fn allowed_imports() -> Vec<String> {
    crate::bindings::POLICY_IMPORTS.iter().map(|name| format!("{name}@{}", crate::bindings::CONTRACT_VERSION)).collect()
}

/// The largest policy component read from a file. The largest policies
/// written in an interpreted language (a Python runtime inside) are tens of
/// megabytes; anything far beyond that is not a policy.
pub const MAX_POLICY_SIZE: u64 = 256 << 20;

/// The longest maintenance summary kept from a policy.
const MAX_SUMMARY: usize = 64 << 10;

/// How often the deadline clock ticks.
const TICK: Duration = Duration::from_millis(2);

/// What a policy component imports and exports, by WIT name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyInterface {
    /// The WIT world it matches, with the contract's version.
    pub world: String,
    /// Its imports (the view, and WASI interfaces that are granted nothing).
    pub imports: Vec<String>,
    /// Its exports.
    pub exports: Vec<String>,
}

/// A policy component, not yet running.
#[derive(Clone)]
pub struct Policy {
    name: String,
    source: Source,
    /// The BLAKE3 hash of the component, once taken: every cache a process
    /// opens with this policy looks its compiled code up by it.
    digest: Arc<OnceLock<[u8; 32]>>,
}

/// Where a policy's bytes are.
#[derive(Clone)]
enum Source {
    Bytes(Arc<[u8]>),
    /// A file of `size` bytes, hashed when the policy was made and read again
    /// only to compile it: a host that finds the policy's compiled code never
    /// holds the component (tens of megabytes for a language runtime).
    File { path: PathBuf, size: u64 },
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Policy");
        debug.field("name", &self.name);
        match &self.source {
            Source::Bytes(bytes) => debug.field("bytes", &bytes.len()),
            Source::File { path, .. } => debug.field("file", path),
        };
        debug.finish()
    }
}

impl Default for Policy {
    /// The default policy, embedded in the host: wasmtime's cache behaviour.
    fn default() -> Self {
        Policy::from_bytes("default", DEFAULT_POLICY)
    }
}

impl Policy {
    /// A policy component from a `.wasm` file (a regular file of at most
    /// [`MAX_POLICY_SIZE`] bytes). `"default"` is not a path here: use
    /// [`Policy::default`], or [`Policy::named`] for user input.
    ///
    /// The file is hashed now and read again only if the policy must be
    /// compiled; if it has changed by then, that start fails (the caller's
    /// cache degrades as for any policy that cannot start).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, Error> {
        let path = path.as_ref();
        let file_error = |source| Error::PolicyFile { path: path.to_path_buf(), source };
        let (digest, size) = crate::input::hash_regular_file(path, MAX_POLICY_SIZE).map_err(file_error)?;
        Ok(Policy {
            name: path.display().to_string(),
            source: Source::File { path: path.to_path_buf(), size },
            digest: Arc::new(OnceLock::from(digest)),
        })
    }

    /// The embedded default policy for `"default"`, else the component at
    /// that path: what a command line or configuration file names.
    pub fn named(name_or_path: impl AsRef<Path>) -> Result<Policy, Error> {
        let name_or_path = name_or_path.as_ref();
        if name_or_path == Path::new("default") { Ok(Policy::default()) } else { Policy::from_file(name_or_path) }
    }

    /// Says, before wasmtime's parser does, what a policy file that is not a
    /// component is: wasmtime's own message for a core module or a text file
    /// is a parser dump.
    fn check_is_component(&self, bytes: &[u8]) -> Result<(), Error> {
        let reason = if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
            Some("not a WebAssembly binary (no \\0asm header): a policy must be a component, built for wasm32-wasip2")
        } else if bytes[4..8] == [1, 0, 0, 0] {
            Some("a core module, not a component: a policy must be a component (build it for wasm32-wasip2)")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::PolicyComponent { policy: self.name.clone(), reason: reason.into() }),
            None => Ok(()),
        }
    }

    fn compile(&self, code: PolicyCode) -> Result<Component, Error> {
        let bytes = self.bytes()?;
        self.check_is_component(&bytes)?;
        let engine = engine(code).unwrap_or_else(|| engine(PolicyCode::Optimized).expect("the optimizing engine"));
        Component::new(engine, &bytes).map_err(|e| Error::PolicyComponent {
            policy: self.name.clone(),
            reason: format!("not a valid component: {}", crate::input::excerpt(&format!("{e:#}"))),
        })
    }

    /// A policy component from bytes; `name` appears in messages.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Policy {
        Policy { name: name.into(), source: Source::Bytes(bytes.into()), digest: Default::default() }
    }

    /// What messages call it: "default", or the path it was read from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The component's bytes; for a policy from a file, read again and
    /// checked to be the bytes it was made from.
    pub fn bytes(&self) -> Result<Arc<[u8]>, Error> {
        let path = match &self.source {
            Source::Bytes(bytes) => return Ok(bytes.clone()),
            Source::File { path, .. } => path,
        };
        let file_error = |source| Error::PolicyFile { path: path.clone(), source };
        let bytes = crate::input::read_regular_file(path, MAX_POLICY_SIZE).map_err(file_error)?;
        if Some(&digest_of(&bytes)) != self.digest.get() {
            return Err(file_error(std::io::Error::other(
                "it changed after this process first read it: start the host again to use the new policy",
            )));
        }
        Ok(bytes)
    }

    /// What the component imports and exports, by WIT name, checked against
    /// the contract as `prepare` checks it.
    pub fn describe(&self) -> Result<PolicyInterface, Error> {
        let (pre, _) = self.prepare(None)?;
        let component = pre.instance_pre().component();
        let ty = component.component_type();
        let imports = ty.imports(component.engine()).map(|(name, _)| name.to_string()).collect();
        let exports = ty.exports(component.engine()).map(|(name, _)| name.to_string()).collect();
        Ok(PolicyInterface { world: format!("{}@{}", crate::bindings::POLICY_WORLD, crate::bindings::CONTRACT_VERSION), imports, exports })
    }

    /// Compiles the policy with the optimizing compiler and keeps its code
    /// in the cache directory `directory` (created if missing), unless it is
    /// kept there already: the next host that starts this policy from that
    /// directory neither compiles it nor runs quick code. Checks that it fits
    /// the contract, as a start does.
    pub fn install(&self, directory: impl AsRef<Path>) -> Result<InstalledPolicy, Error> {
        let started = Instant::now();
        let options = crate::store::StoreOptions::default();
        let code = EntryStore::open(directory.as_ref(), POLICY_CODE_NAMESPACE, Arc::new(crate::clock::SystemClock), options)?;
        let key = self.code_key(PolicyCode::Optimized);
        let already_kept = load_compiled(&code, &key, PolicyCode::Optimized);
        let component = match already_kept.clone() {
            Some(component) => component,
            None => self.compile(PolicyCode::Optimized)?,
        };
        // This process runs it too from now on (a host that installs, then
        // opens caches).
        self.remember(component.clone(), PolicyCode::Optimized)?;
        let stored_bytes = if already_kept.is_none() { store_compiled(&code, &key, &component)? } else { 0 };
        let path = code.path().join("entries").join(key.name());
        Ok(InstalledPolicy { path, compiled_now: already_kept.is_none(), stored_bytes, elapsed: started.elapsed() })
    }

    /// Compiles the component, or loads its kept code, and checks that it
    /// fits the WIT world: once per process for the same bytes (then the best
    /// code this process has), and once per cache directory when `code` is
    /// that directory's store for compiled policies.
    ///
    /// Kept optimized code is used first. Without it, a large policy (a
    /// language runtime inside) starts on quick code, kept or compiled now,
    /// while its optimized code compiles on a thread of its own and is kept
    /// for the next start; a small one is compiled optimized at once.
    pub(crate) fn prepare(&self, code: Option<&Arc<EntryStore>>) -> Result<Prepared, Error> {
        let digest = self.digest();
        if let Some(prepared) = compiled().lock().get(&digest) {
            return Ok(prepared.clone());
        }
        let optimized = self.code_key(PolicyCode::Optimized);
        if let Some(component) = code.and_then(|code| load_compiled(code, &optimized, PolicyCode::Optimized)) {
            return self.remember(component, PolicyCode::Optimized);
        }
        let size = match &self.source {
            Source::Bytes(bytes) => bytes.len() as u64,
            Source::File { size, .. } => *size,
        };
        if size < QUICK_CODE_MIN || engine(PolicyCode::Quick).is_none() {
            let component = self.compile(PolicyCode::Optimized)?;
            let prepared = self.remember(component.clone(), PolicyCode::Optimized)?;
            if let Some(code) = code {
                let _ = store_compiled(code, &optimized, &component);
            }
            return Ok(prepared);
        }
        let quick = self.code_key(PolicyCode::Quick);
        let component = match code.and_then(|code| load_compiled(code, &quick, PolicyCode::Quick)) {
            Some(component) => component,
            None => {
                let component = self.compile(PolicyCode::Quick)?;
                if let Some(code) = code {
                    let _ = store_compiled(code, &quick, &component);
                }
                component
            }
        };
        let prepared = self.remember(component, PolicyCode::Quick)?;
        self.optimize_in_background(code.cloned());
        Ok(prepared)
    }

    /// Links `component` and keeps it as this process's code for the policy,
    /// unless better code is kept already.
    fn remember(&self, component: Component, code: PolicyCode) -> Result<Prepared, Error> {
        let pre = self.link(&component)?;
        let mut compiled = compiled().lock();
        let kept = compiled.entry(self.digest()).or_insert_with(|| (pre.clone(), code));
        if kept.1 == PolicyCode::Quick && code == PolicyCode::Optimized {
            *kept = (pre, code);
        }
        Ok(kept.clone())
    }

    /// Compiles the optimized code on a thread of its own, keeps it in `code`
    /// and makes it this process's code for the policy (for the instances
    /// started from now on). Once per policy per process.
    fn optimize_in_background(&self, code: Option<Arc<EntryStore>>) {
        static OPTIMIZING: OnceLock<Mutex<std::collections::HashSet<[u8; 32]>>> = OnceLock::new();
        if !OPTIMIZING.get_or_init(Default::default).lock().insert(self.digest()) {
            return;
        }
        let policy = self.clone();
        let spawned = std::thread::Builder::new().name("capcache-policy-optimize".into()).spawn(move || {
            let started = Instant::now();
            let compiled = policy.compile(PolicyCode::Optimized).and_then(|component| {
                policy.remember(component.clone(), PolicyCode::Optimized)?;
                Ok(component)
            });
            match compiled {
                Ok(component) => {
                    tracing::info!("policy {}: optimized code ready in {:?}", policy.name, started.elapsed());
                    if let Some(code) = &code {
                        let _ = store_compiled(code, &policy.code_key(PolicyCode::Optimized), &component);
                    }
                }
                Err(e) => tracing::warn!("policy {}: no optimized code, quick code goes on ({e})", policy.name),
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("policy {}: cannot start compiling optimized code ({e}); quick code goes on", self.name);
        }
    }

    /// Checks `component` against the contract and links it: the view, and
    /// every other import (WASI) to a trap.
    fn link(&self, component: &Component) -> Result<PolicyWorldPre<PolicyState>, Error> {
        let engine = component.engine();
        let world_error = |reason: String| Error::PolicyWorld { policy: self.name.clone(), reason };
        if let Some(version) = contract_version_of(component).filter(|v| v != crate::bindings::CONTRACT_VERSION) {
            return Err(world_error(format!(
                "it was built for {package}@{version}; this host speaks {package}@{ours}: rebuild it against \
                 the WIT of {package}@{ours} (for a Rust policy, the capcache-policy crate of that version)",
                package = crate::bindings::CONTRACT_PACKAGE,
                ours = crate::bindings::CONTRACT_VERSION,
            )));
        }
        // A policy may import the view and the runtime interfaces of its
        // language (WASI), which are granted nothing; anything else means it was
        // built against another contract.
        let ty = component.component_type();
        let allowed = allowed_imports();
        for (name, _) in ty.imports(engine) {
            if !allowed.iter().any(|a| a == name) && !name.starts_with("wasi:") {
                return Err(world_error(format!(
                    "it imports {name}, and a policy may import only {} (and WASI, which is granted nothing)",
                    allowed.join(", ")
                )));
            }
        }
        let mut linker = Linker::<PolicyState>::new(engine);
        PolicyWorld::add_to_linker::<PolicyState, HasSelf<PolicyView>>(&mut linker, |state| &mut state.view)
            .map_err(|e| world_error(format!("{e:#}")))?;
        linker.define_unknown_imports_as_traps(component).map_err(|e| world_error(format!("{e:#}")))?;
        let pre = linker.instantiate_pre(component).map_err(|e| world_error(format!("{e:#}")))?;
        PolicyWorldPre::new(pre).map_err(|e| world_error(format!("{e:#}")))
    }

    /// The BLAKE3 hash of the component.
    fn digest(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| match &self.source {
            Source::Bytes(bytes) => digest_of(bytes),
            Source::File { .. } => unreachable!("a policy from a file is hashed when it is made"),
        })
    }

    /// The key of this component's code compiled by `code`'s compiler.
    fn code_key(&self, code: PolicyCode) -> Key {
        let mut compatibility = Sha256Hasher::default();
        let engine = engine(code).or(engine(PolicyCode::Optimized)).expect("the optimizing engine");
        engine.precompile_compatibility_hash().hash(&mut compatibility);
        code.hash(&mut compatibility);
        Key::derive(KeyDomain::PolicyCode, &[&compatibility.finish_key().0, &self.digest()])
    }
}

/// A policy's code, linked, and which compiler made it.
type Prepared = (PolicyWorldPre<PolicyState>, PolicyCode);

/// This process's code for each policy it started, by the policy's digest.
fn compiled() -> &'static Mutex<HashMap<[u8; 32], Prepared>> {
    static COMPILED: OnceLock<Mutex<HashMap<[u8; 32], Prepared>>> = OnceLock::new();
    COMPILED.get_or_init(Default::default)
}

/// Which compiler made the code a policy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyCode {
    /// Cranelift, optimizing: what every policy runs once its code is kept
    /// (`capcache policy install` keeps it ahead of time).
    Optimized,
    /// Winch, wasmtime's baseline compiler: compiles several times faster,
    /// runs slower. A large policy runs it until its optimized code is ready.
    Quick,
}

/// The smallest policy component that starts on quick code when no
/// optimized code is kept: a language runtime inside (a megabyte for
/// QuickJS, tens for Python) takes seconds to compile optimized, while a Rust
/// policy (a few hundred kilobytes) takes a fraction of one.
pub const QUICK_CODE_MIN: u64 = 1 << 20;

/// What [`Policy::install`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InstalledPolicy {
    /// The file that holds the compiled code.
    pub path: PathBuf,
    /// Whether it was compiled now (else it was kept already).
    pub compiled_now: bool,
    /// The bytes stored now (0 if it was kept already).
    pub stored_bytes: u64,
    /// How long installing took.
    pub elapsed: Duration,
}

/// The BLAKE3 hash of a policy component.
fn digest_of(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    crate::entry::hash_into(&mut hasher, bytes);
    hasher.finalize().into()
}

/// The version of the contract a component was built for, read from the
/// names of the contract's interfaces it imports or exports.
fn contract_version_of(component: &Component) -> Option<String> {
    let ty = component.component_type();
    let engine = component.engine();
    let prefix = format!("{}/", crate::bindings::CONTRACT_PACKAGE);
    let names: Vec<String> =
        ty.imports(engine).map(|(n, _)| n.to_string()).chain(ty.exports(engine).map(|(n, _)| n.to_string())).collect();
    names.iter().filter(|n| n.starts_with(&prefix)).find_map(|n| n.split_once('@').map(|(_, v)| v.to_string()))
}

/// The namespace, beside the caches' own, that holds compiled policies.
pub(crate) const POLICY_CODE_NAMESPACE: &str = "policy-code";

/// At most this many compiled policies are kept (optimized and quick code
/// of each policy and engine version in use); the least recently stored go
/// first.
const POLICY_CODE_KEPT: usize = 8;

/// At most this many bytes of compiled policies are kept, counted as
/// [`POLICY_CODE_KEPT`] is. A policy with a Python runtime inside compiles to
/// tens of megabytes; the code just stored is kept whatever its size.
pub const POLICY_CODE_KEPT_BYTES: u64 = 256 << 20;

/// The compiled policy under `key`, if stored and whole (checked as every
/// entry is; it is raw, so it is mapped rather than read).
fn load_compiled(code: &EntryStore, key: &Key, compiler: PolicyCode) -> Option<Component> {
    let engine = engine(compiler)?;
    let loaded = match code.open_entry(key, u64::MAX, crate::store::RawEntryAs::File) {
        // SAFETY: the key covers the policy engine's compatibility hash, and
        // the entry was checked whole and is its owner's, as for every
        // artifact capcache loads.
        Ok(OpenOutcome::RawFile(file)) => unsafe { crate::mapped::component_from_file(engine, file) },
        // SAFETY: as above, for a decoded copy.
        Ok(OpenOutcome::Value(bytes)) => unsafe { Component::deserialize(engine, &bytes) },
        Ok(OpenOutcome::Missing) => return None,
        Ok(OpenOutcome::Corrupt(e)) => {
            tracing::warn!("compiled policy {} is corrupt ({e}); compiling again", key.name());
            let _ = code.remove(Area::Entries, &key.name());
            return None;
        }
        Ok(OpenOutcome::Untrusted(why)) => {
            tracing::warn!("compiled policy {} is not trusted ({why}); compiling again", key.name());
            let _ = code.remove(Area::Entries, &key.name());
            return None;
        }
        Err(e) => {
            tracing::debug!("cannot read compiled policy {}: {e}", key.name());
            return None;
        }
    };
    loaded.map_err(|e| tracing::warn!("compiled policy {} does not load ({e:#}); compiling again", key.name())).ok()
}

/// Stores a freshly compiled policy, raw, and keeps the store within
/// [`POLICY_CODE_KEPT`] files and [`POLICY_CODE_KEPT_BYTES`] bytes. Returns
/// the bytes stored. A failure is logged; the caller goes on without.
fn store_compiled(code: &EntryStore, key: &Key, component: &Component) -> Result<u64, Error> {
    let directory_error = |source| Error::Directory { path: code.path().to_path_buf(), source };
    if code.read_only() {
        return Err(directory_error(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "it is read-only here: install from a user that can write it",
        )));
    }
    let stored = component.serialize().map_err(std::io::Error::other).and_then(|bytes| {
        code.write_entry(key, &bytes, crate::entry::StoredCodec::Raw, None)
    });
    let stored = match stored {
        Ok(stored) => stored,
        Err(e) => {
            tracing::debug!("cannot store the compiled policy {}: {e}", key.name());
            return Err(directory_error(e));
        }
    };
    let mut kept: Vec<_> = code
        .list_names(Area::Entries)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| code.file_info(Area::Entries, &name).ok())
        .collect();
    kept.sort_by_key(|info| (info.name != key.name(), std::cmp::Reverse(info.modified_ms)));
    let mut bytes = 0u64;
    for (n, info) in kept.iter().enumerate() {
        bytes = bytes.saturating_add(info.size);
        if n > 0 && (n >= POLICY_CODE_KEPT || bytes > POLICY_CODE_KEPT_BYTES) {
            let _ = code.remove(Area::Entries, &info.name);
        }
    }
    Ok(stored)
}

/// The engine policies compiled by `compiler` run on: their own, apart from
/// whatever engine the host compiles user modules with, with epoch
/// interruption for deadlines. `None` for quick code where wasmtime has no
/// baseline compiler for this machine.
fn engine(compiler: PolicyCode) -> Option<&'static Engine> {
    static OPTIMIZED: OnceLock<Option<Engine>> = OnceLock::new();
    static QUICK: OnceLock<Option<Engine>> = OnceLock::new();
    let (cell, strategy) = match compiler {
        PolicyCode::Optimized => (&OPTIMIZED, wasmtime::Strategy::Cranelift),
        PolicyCode::Quick => (&QUICK, wasmtime::Strategy::Winch),
    };
    cell.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(1 << 20);
        config.strategy(strategy);
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) if compiler == PolicyCode::Quick => {
                tracing::debug!("no quick compiler for policies here ({e:#}): the optimizing one compiles them all");
                return None;
            }
            Err(e) => panic!("the policy engine's configuration is invalid: {e:#}"),
        };
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("capcache-policy-clock".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .expect("cannot start the policy deadline thread");
        Some(engine)
    })
    .as_ref()
}

fn ticks(deadline: Duration) -> u64 {
    (deadline.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1
}

/// What a policy's store holds.
pub struct PolicyState {
    view: PolicyView,
    limits: InstanceLimits,
}

/// The most core instances one policy may create. A component built by a
/// language toolchain brings one instance per WASI interface it stubs out
/// (componentize-py's `--stub-wasi` makes 38): the cap counts instances, not
/// authority, which the imports and the memory cap bound.
pub const MAX_POLICY_INSTANCES: usize = 64;
/// The most tables and linear memories one policy may create.
pub const MAX_POLICY_TABLES: usize = 16;
/// See [`MAX_POLICY_TABLES`].
pub const MAX_POLICY_MEMORIES: usize = 4;
/// What one table element is counted as against the memory limit: a
/// function reference's size.
const TABLE_ELEMENT_BYTES: usize = 8;

/// Bounds one policy instance as a whole: its linear memories and tables
/// together may hold at most `budget` bytes (`HostSettings::policy_memory_limit`),
/// however many memories it has. Growth past it traps, with a message that
/// names the setting.
pub(crate) struct InstanceLimits {
    budget: usize,
    used: usize,
}

impl InstanceLimits {
    pub(crate) fn new(budget: usize) -> InstanceLimits {
        InstanceLimits { budget, used: 0 }
    }

    fn grow(&mut self, current: usize, desired: usize, what: &str) -> wasmtime::Result<bool> {
        let after = (self.used - current.min(self.used)).saturating_add(desired);
        if after > self.budget {
            wasmtime::bail!(
                "the policy's {what} would bring it to {after} bytes, over its memory limit of {} bytes \
                 (HostSettings::policy_memory_limit; [cache.host] policy-memory-limit)",
                self.budget
            );
        }
        self.used = after;
        Ok(true)
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current, desired, "memories")
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES), "tables")
    }

    fn instances(&self) -> usize {
        MAX_POLICY_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_POLICY_TABLES
    }

    fn memories(&self) -> usize {
        MAX_POLICY_MEMORIES
    }
}

struct Live {
    store: Store<PolicyState>,
    bindings: PolicyWorld,
}

/// A running policy, re-made after any fault.
pub(crate) struct PolicyRuntime {
    name: String,
    pre: PolicyWorldPre<PolicyState>,
    /// Which compiler made `pre`'s code.
    code: PolicyCode,
    /// The policy's digest, under which this process keeps its best code.
    digest: [u8; 32],
    settings: Vec<Setting>,
    backend: Arc<dyn ViewBackend>,
    host: HostSettings,
    live: Option<Live>,
    /// What each call cost, when someone asked (the policy simulator).
    record: Option<CallRecord>,
}

/// What calls into a policy cost and how they failed, per export.
#[derive(Debug, Default, Clone)]
pub(crate) struct CallRecord {
    /// Wall time of each call, by export.
    pub(crate) times: std::collections::BTreeMap<&'static str, Vec<Duration>>,
    /// Calls stopped at their deadline.
    pub(crate) deadline_hits: u64,
    /// The first faults' reasons (at most [`CallRecord::KEPT_FAULTS`]), with the export.
    pub(crate) faults: Vec<(&'static str, String)>,
    /// Every fault, of any kind.
    pub(crate) fault_count: u64,
}

impl CallRecord {
    const KEPT_FAULTS: usize = 16;
}

impl PolicyRuntime {
    /// Instantiates and configures the policy; a refusal of the settings or a
    /// fault is an error for the user.
    pub(crate) fn start(
        policy: &Policy,
        settings: &[(String, String)],
        backend: Arc<dyn ViewBackend>,
        host: HostSettings,
        code: Option<&Arc<EntryStore>>,
    ) -> Result<PolicyRuntime, Error> {
        let (pre, code) = policy.prepare(code)?;
        let mut runtime = PolicyRuntime {
            name: policy.name.clone(),
            pre,
            code,
            digest: policy.digest(),
            settings: settings.iter().map(|(key, value)| Setting { key: key.clone(), value: value.clone() }).collect(),
            backend,
            host,
            live: None,
            record: None,
        };
        match runtime.instantiate() {
            Ok(live) => runtime.live = Some(live),
            Err(StartError::Settings(SettingsError::UnknownKey(key))) => {
                return Err(Error::UnknownSetting { policy: runtime.name, key });
            }
            Err(StartError::Settings(SettingsError::InvalidValue(s))) => {
                return Err(Error::InvalidSetting { policy: runtime.name, key: s.key, value: s.value, expected: s.expected });
            }
            Err(StartError::Fault(e)) => {
                let reason = describe_fault(&e, runtime.host.configure_deadline);
                return Err(Error::PolicyFault { policy: runtime.name, reason });
            }
        }
        Ok(runtime)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Which compiler made the code the policy runs now.
    pub(crate) fn code(&self) -> PolicyCode {
        self.code
    }

    fn instantiate(&mut self) -> Result<Live, StartError> {
        // An instance made anew runs the best code this process has: the
        // optimized code, once its compilation in the background is done.
        if self.code == PolicyCode::Quick
            && let Some((pre, PolicyCode::Optimized)) = compiled().lock().get(&self.digest).cloned()
        {
            self.pre = pre;
            self.code = PolicyCode::Optimized;
        }
        let limits = InstanceLimits::new(self.host.policy_memory_limit);
        let view = PolicyView::new(self.backend.clone(), self.name.clone());
        let mut store = Store::new(self.pre.engine(), PolicyState { view, limits });
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(ticks(self.host.configure_deadline));
        let bindings = self.pre.instantiate(&mut store).map_err(StartError::Fault)?;
        bindings
            .capcache_policy_policy()
            .call_configure(&mut store, &self.settings)
            .map_err(StartError::Fault)?
            .map_err(StartError::Settings)?;
        Ok(Live { store, bindings })
    }

    /// Calls into the policy with a deadline; `None` if it failed in any way.
    fn call<R>(
        &mut self,
        what: &'static str,
        deadline: Duration,
        f: impl FnOnce(&mut Store<PolicyState>, &PolicyWorld) -> wasmtime::Result<R>,
    ) -> Option<R> {
        let started = Instant::now();
        if self.live.is_none() {
            match self.instantiate() {
                Ok(live) => self.live = Some(live),
                Err(e) => {
                    let reason = match e {
                        StartError::Fault(e) => describe_fault(&e, self.host.configure_deadline),
                        StartError::Settings(e) => format!("settings refused on restart: {e:?}"),
                    };
                    self.fault(what, started, &reason);
                    return None;
                }
            }
        }
        let live = self.live.as_mut().unwrap();
        live.store.data_mut().view.begin_call();
        live.store.set_epoch_deadline(ticks(deadline));
        let result = f(&mut live.store, &live.bindings);
        if let Some(record) = &mut self.record {
            record.times.entry(what).or_default().push(started.elapsed());
            if let Err(e) = &result
                && e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt)
            {
                record.deadline_hits += 1;
            }
        }
        match result {
            Ok(result) => Some(result),
            Err(e) => {
                self.live = None;
                tracing::debug!(policy = %self.name, call = what, "the policy's fault in full: {e:?}");
                self.fault(what, started, &describe_fault(&e, deadline));
                None
            }
        }
    }

    /// Starts keeping a [`CallRecord`] of every call from now on.
    pub(crate) fn record_calls(&mut self) {
        self.record = Some(CallRecord::default());
    }

    /// The calls recorded since [`PolicyRuntime::record_calls`].
    pub(crate) fn call_record(&self) -> Option<&CallRecord> {
        self.record.as_ref()
    }

    fn fault(&mut self, what: &'static str, started: Instant, reason: &str) {
        if let Some(record) = &mut self.record {
            record.fault_count += 1;
            if record.faults.len() < CallRecord::KEPT_FAULTS {
                record.faults.push((what, reason.to_string()));
            }
        }
        Stats::bump(&self.backend.stats().policy_faults);
        tracing::warn!(
            policy = %self.name,
            call = what,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "policy failed; its call counts as declined (nothing stored, no action taken) and it is made anew: {reason}"
        );
    }

    /// On a miss: store or not, and how; `None` if the policy failed (and
    /// then nothing is stored).
    pub(crate) fn admit(&mut self, candidate: &Candidate) -> Option<Admission> {
        let deadline = self.host.admit_deadline;
        self.call("admit", deadline, |store, b| b.capcache_policy_policy().call_admit(store, candidate))
    }

    pub(crate) fn on_hit(&mut self, entry: &EntryMeta) -> Vec<Action> {
        let deadline = self.host.event_deadline;
        let actions = self.call("on-hit", deadline, |store, b| b.capcache_policy_policy().call_on_hit(store, entry));
        sanitize_actions(actions.unwrap_or_default())
    }

    pub(crate) fn on_insert(&mut self, entry: &EntryMeta) -> Vec<Action> {
        let deadline = self.host.event_deadline;
        let actions = self.call("on-insert", deadline, |store, b| b.capcache_policy_policy().call_on_insert(store, entry));
        sanitize_actions(actions.unwrap_or_default())
    }

    pub(crate) fn maintain(&mut self) -> Option<MaintainReport> {
        let deadline = self.host.maintain_deadline;
        let mut report = self.call("maintain", deadline, |store, b| b.capcache_policy_policy().call_maintain(store))?;
        // A policy's words are shown to people: keep them short.
        if report.summary.len() > MAX_SUMMARY {
            let mut end = MAX_SUMMARY;
            while !report.summary.is_char_boundary(end) {
                end -= 1;
            }
            report.summary.truncate(end);
            report.summary.push_str(" [truncated]");
        }
        Some(report)
    }
}

impl Admit for Mutex<PolicyRuntime> {
    fn admit(&self, candidate: &Candidate, wait: AdmitWait) -> Decision {
        let policy = match wait {
            AdmitWait::AtMost(wait) => self.try_lock_for(wait),
            AdmitWait::UntilFree => Some(self.lock()),
        };
        match policy {
            Some(mut policy) => match policy.admit(candidate) {
                Some(admission) => Decision::Answered(admission),
                None => Decision::Failed,
            },
            None => {
                tracing::debug!("policy busy; the decision on {} goes to the worker", candidate.name);
                Decision::Busy
            }
        }
    }
}

/// Why a call into a policy failed, in a line for people: the root cause,
/// without wasmtime's backtrace of the policy's anonymous functions, and what
/// to do about the causes a policy author can fix.
fn describe_fault(e: &wasmtime::Error, deadline: Duration) -> String {
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return format!("it ran past its deadline of {} ms", deadline.as_millis());
    }
    let root = e.root_cause().to_string();
    if let Some(import) = root.strip_prefix("unknown import: `").and_then(|rest| rest.split('`').next()) {
        return format!(
            "it called {import}, and a policy is granted no WASI: use the view's `now` and `log` instead, and build \
             without WASI where the toolchain can (componentize-py --stub-wasi, componentize-js -d ...). A Rust panic \
             calls it too, to read RUST_BACKTRACE, before printing its message: call capcache_policy::log_panics() \
             in `configure` to have panics logged"
        );
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("{trap}: {root}"),
        None => root,
    }
}

enum StartError {
    Settings(SettingsError),
    Fault(wasmtime::Error),
}

/// A policy may answer an event with any list; the host acts on at most one
/// action of each kind, the first, and ignores the rest.
fn sanitize_actions(actions: Vec<Action>) -> Vec<Action> {
    let mut kept: Vec<Action> = Vec::new();
    for action in actions {
        let kind = std::mem::discriminant(&action);
        if !kept.iter().any(|a| std::mem::discriminant(a) == kind) {
            kept.push(action);
        }
        if kept.len() == 3 {
            break;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_holds_for_all_memories_and_tables_together() {
        let mib = 1 << 20;
        let mut limits = InstanceLimits::new(64 * mib);
        // Four memories of 16 MiB each fill the budget...
        for _ in 0..4 {
            assert!(limits.memory_growing(0, 16 * mib, None).unwrap());
        }
        // ...so no memory may grow further, nor any table be made.
        assert!(limits.memory_growing(16 * mib, 16 * mib + 65536, None).is_err());
        let e = limits.table_growing(0, 1, None).unwrap_err();
        assert!(e.to_string().contains("policy-memory-limit"), "{e}");
        // Growth in place counts only what is added.
        let mut limits = InstanceLimits::new(64 * mib);
        assert!(limits.memory_growing(0, 32 * mib, None).unwrap());
        assert!(limits.memory_growing(32 * mib, 48 * mib, None).unwrap());
        assert!(limits.table_growing(0, (16 * mib) / TABLE_ELEMENT_BYTES, None).unwrap());
        assert!(limits.memory_growing(48 * mib, 48 * mib + 1, None).is_err());
    }
}
