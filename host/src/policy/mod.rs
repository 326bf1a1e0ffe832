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
use crate::store::{Area, EntryOutcome, EntryStore, Found};
use std::hash::Hash;
use crate::settings::HostSettings;
use crate::stats::Stats;
use crate::namespace::{Admit, AdmitWait, Decision};
use crate::view::{PolicyView, StateQuota, ViewBackend};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store};

mod code;
mod engine;
mod runtime;

pub use code::{POLICY_CODE_KEPT_BYTES, PolicyCode, QUICK_CODE_MIN};
pub(crate) use code::POLICY_CODE_NAMESPACE;
pub use runtime::{MAX_POLICY_INSTANCES, MAX_POLICY_MEMORIES, MAX_POLICY_TABLES, PolicyState};
pub(crate) use runtime::{PolicyRuntime, StartAt, known_good, mark_known_good};
use code::{compiled, load_compiled, store_compiled};
use engine::{engine, engine_for};

/// The default policy's component, built from `guest/default` and shipped as
/// bytes, so that no embedder needs the wasm target (`bash guest/build`
/// rebuilds it; a test fails when it no longer matches its source).
static DEFAULT_POLICY: &[u8] = include_bytes!("../../policies/default.wasm");

/// The largest policy component read from a file. The largest policies
/// written in an interpreted language (a Python runtime inside) are tens of
/// megabytes; anything far beyond that is not a policy.
pub const MAX_POLICY_SIZE: u64 = 256 << 20;

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
    source: PolicySource,
    /// The BLAKE3 hash of the component, once taken: every cache a process
    /// opens with this policy looks its compiled code up by it.
    digest: Arc<OnceLock<[u8; 32]>>,
}

/// Where a policy's bytes are.
#[derive(Clone)]
enum PolicySource {
    Bytes(Arc<[u8]>),
    /// A file of `size` bytes, as `identity` described it when the policy
    /// was made; hashed at the first start that needs its contents (to find
    /// its compiled code), and read again only to compile it: a host that
    /// finds the policy's compiled code never holds the component (tens of
    /// megabytes for a language runtime), and a host whose policy starts at
    /// its first call hashes nothing until then.
    File { path: PathBuf, size: u64, identity: crate::store::FileIdentity },
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Policy");
        debug.field("name", &self.name);
        match &self.source {
            PolicySource::Bytes(bytes) => debug.field("bytes", &bytes.len()),
            PolicySource::File { path, .. } => debug.field("file", path),
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
    /// The file is opened and checked now, hashed when the policy first
    /// starts, and read again only if the policy must be compiled; if it has
    /// changed between, that start fails (the caller's cache degrades as for
    /// any policy that cannot start).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, Error> {
        let path = path.as_ref();
        let file_error = |source| Error::PolicyFile { path: path.to_path_buf(), source };
        let (file, metadata) = crate::input::open_regular_file(path, MAX_POLICY_SIZE).map_err(file_error)?;
        let identity = crate::store::FileIdentity::of(&file, &metadata).map_err(file_error)?;
        Ok(Policy {
            name: path.display().to_string(),
            source: PolicySource::File { path: path.to_path_buf(), size: metadata.len(), identity },
            digest: Default::default(),
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
        let engine = engine_for(code, &self.name)?;
        Component::new(engine, &bytes).map_err(|e| Error::PolicyComponent {
            policy: self.name.clone(),
            reason: format!("not a valid component: {}", crate::input::excerpt(&format!("{e:#}"))),
        })
    }

    /// A policy component from bytes; `name` appears in messages.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Policy {
        Policy { name: name.into(), source: PolicySource::Bytes(bytes.into()), digest: Default::default() }
    }

    /// What messages call it: "default", or the path it was read from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The component's bytes; for a policy from a file, read again and
    /// checked to be the bytes it was made from.
    pub fn bytes(&self) -> Result<Arc<[u8]>, Error> {
        let path = match &self.source {
            PolicySource::Bytes(bytes) => return Ok(bytes.clone()),
            PolicySource::File { path, .. } => path,
        };
        let file_error = |source| Error::PolicyFile { path: path.clone(), source };
        let expected = self.digest()?;
        let bytes = crate::input::read_regular_file(path, MAX_POLICY_SIZE).map_err(file_error)?;
        if digest_of(&bytes) != expected {
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
        let key = self.code_key(PolicyCode::Optimized)?;
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

    /// The BLAKE3 hash of the component.
    fn digest(&self) -> Result<[u8; 32], Error> {
        if let Some(digest) = self.digest.get() {
            return Ok(*digest);
        }
        let digest = match &self.source {
            PolicySource::Bytes(bytes) => digest_of(bytes),
            PolicySource::File { path, size, identity } => {
                let file_error = |source| Error::PolicyFile { path: path.clone(), source };
                let (file, metadata) = crate::input::open_regular_file(path, MAX_POLICY_SIZE).map_err(file_error)?;
                if metadata.len() != *size || crate::store::FileIdentity::of(&file, &metadata).ok() != Some(*identity) {
                    return Err(file_error(std::io::Error::other(
                        "it changed after this process first opened it: start the host again to use the new policy",
                    )));
                }
                crate::input::hash_open_file(&file, MAX_POLICY_SIZE).map_err(file_error)?.digest
            }
        };
        Ok(*self.digest.get_or_init(|| digest))
    }

    /// What identifies this policy for the mark that it started well (see
    /// `runtime::known_good`): its digest, or for a file, its path and
    /// identity, so that checking the mark hashes nothing. A file changed in
    /// a way its identity does not show costs a start at the first call
    /// instead of at open, nothing more: what runs is what its digest, taken
    /// then, finds.
    pub(crate) fn start_identity(&self) -> Result<Vec<u8>, Error> {
        Ok(match &self.source {
            PolicySource::Bytes(_) => self.digest()?.to_vec(),
            PolicySource::File { path, identity, .. } => {
                let mut id = path.as_os_str().as_encoded_bytes().to_vec();
                for n in [identity.dev, identity.ino, identity.size] {
                    id.extend(n.to_le_bytes());
                }
                for (s, ns) in [identity.mtime, identity.ctime] {
                    id.extend(s.to_le_bytes());
                    id.extend(ns.to_le_bytes());
                }
                id
            }
        })
    }

    /// The key of this component's code compiled by `code`'s compiler.
    fn code_key(&self, code: PolicyCode) -> Result<Key, Error> {
        let mut compatibility = Sha256Hasher::default();
        let engine = engine_for(code, &self.name)?;
        engine.precompile_compatibility_hash().hash(&mut compatibility);
        code.hash(&mut compatibility);
        Ok(Key::derive(KeyDomain::PolicyCode, &[&compatibility.finish_key().0, &self.digest()?]))
    }
}

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
