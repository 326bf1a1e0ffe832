//! Running a policy component: compiled once per process, instantiated with no
//! ambient authority (its only imports are the `view` capability; any WASI
//! import its language's runtime brings is linked to a trap), under a memory
//! cap and a CPU deadline per call. A call that traps, runs out of time or
//! memory, or fails in any other way costs at most its deadline: it is logged
//! and counted, the caller gets the safe default, and the instance is dropped
//! and made anew (and configured again) on the next call.

use crate::bindings::exports::capcache::policy::policy::{Action, Admission, Candidate, MaintainReport, Setting, SettingsError};
use crate::bindings::{PolicyWorld, PolicyWorldPre};
use crate::bindings::capcache::policy::types::EntryMeta;
use crate::error::Error;
use crate::key::{Key, KeyDomain, Sha256Hasher};
use crate::store::{Area, OpenOutcome, Store as EntryStore};
use std::hash::Hash;
use crate::settings::HostSettings;
use crate::stats::Stats;
use crate::namespace::Admit;
use crate::view::{PolicyView, ViewBackend};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::Path;
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
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("name", &self.name).field("bytes", &self.bytes.len()).finish()
    }
}

impl Default for Policy {
    /// The default policy, embedded in the host: wasmtime's cache behaviour.
    fn default() -> Self {
        Policy { name: "default".into(), bytes: DEFAULT_POLICY.into() }
    }
}

impl Policy {
    /// A policy component from a `.wasm` file (a regular file of at most
    /// [`MAX_POLICY_SIZE`] bytes). `"default"` is not a path here: use
    /// [`Policy::default`], or [`Policy::named`] for user input.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, Error> {
        let path = path.as_ref();
        let file_error = |source| Error::PolicyFile { path: path.to_path_buf(), source };
        let bytes = crate::input::read_regular_file(path, MAX_POLICY_SIZE).map_err(file_error)?;
        Ok(Policy { name: path.display().to_string(), bytes: bytes.into() })
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
    fn check_is_component(&self) -> Result<(), Error> {
        let reason = if !self.bytes.starts_with(b"\0asm") || self.bytes.len() < 8 {
            Some("not a WebAssembly binary (no \\0asm header): a policy must be a component, built for wasm32-wasip2")
        } else if self.bytes[4..8] == [1, 0, 0, 0] {
            Some("a core module, not a component: a policy must be a component (build it for wasm32-wasip2)")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::PolicyComponent { policy: self.name.clone(), reason: reason.into() }),
            None => Ok(()),
        }
    }

    fn compile(&self) -> Result<Component, Error> {
        self.check_is_component()?;
        Component::new(engine(), &self.bytes).map_err(|e| Error::PolicyComponent {
            policy: self.name.clone(),
            reason: format!("not a valid component: {}", crate::input::excerpt(&format!("{e:#}"))),
        })
    }

    /// A policy component from bytes; `name` appears in messages.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Policy {
        Policy { name: name.into(), bytes: bytes.into() }
    }

    /// What messages call it: "default", or the path it was read from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The component's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// What the component imports and exports, by WIT name, checked against
    /// the contract as `prepare` checks it.
    pub fn describe(&self) -> Result<PolicyInterface, Error> {
        self.prepare(None)?;
        let component = self.compile()?;
        let ty = component.component_type();
        let imports = ty.imports(engine()).map(|(name, _)| name.to_string()).collect();
        let exports = ty.exports(engine()).map(|(name, _)| name.to_string()).collect();
        Ok(PolicyInterface { world: format!("{}@{}", crate::bindings::POLICY_WORLD, crate::bindings::CONTRACT_VERSION), imports, exports })
    }

    /// Compiles the component (once per process for the same bytes, and once
    /// per cache directory when `code` is that directory's store for compiled
    /// policies) and checks that it fits the WIT world.
    pub(crate) fn prepare(&self, code: Option<&EntryStore>) -> Result<PolicyWorldPre<PolicyState>, Error> {
        static COMPILED: OnceLock<Mutex<HashMap<Key, PolicyWorldPre<PolicyState>>>> = OnceLock::new();
        let key = self.code_key();
        let compiled = COMPILED.get_or_init(Default::default);
        if let Some(pre) = compiled.lock().get(&key) {
            return Ok(pre.clone());
        }
        let engine = engine();
        let component = match code.and_then(|code| load_compiled(code, &key)) {
            Some(component) => component,
            None => {
                let component = self.compile()?;
                if let Some(code) = code.filter(|code| !code.read_only()) {
                    store_compiled(code, &key, &component);
                }
                component
            }
        };
        let world_error = |reason: String| Error::PolicyWorld { policy: self.name.clone(), reason };
        if let Some(version) = contract_version_of(&component).filter(|v| v != crate::bindings::CONTRACT_VERSION) {
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
        linker.define_unknown_imports_as_traps(&component).map_err(|e| world_error(format!("{e:#}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| world_error(format!("{e:#}")))?;
        let pre = PolicyWorldPre::new(pre).map_err(|e| world_error(format!("{e:#}")))?;
        compiled.lock().insert(key, pre.clone());
        Ok(pre)
    }

    /// The key of this component's compiled code for the policy engine.
    fn code_key(&self) -> Key {
        let mut compatibility = Sha256Hasher::default();
        engine().precompile_compatibility_hash().hash(&mut compatibility);
        Key::derive(KeyDomain::PolicyCode, &[&compatibility.finish_key().0, blake3::hash(&self.bytes).as_bytes()])
    }
}

/// The version of the contract a component was built for, read from the
/// names of the contract's interfaces it imports or exports.
fn contract_version_of(component: &Component) -> Option<String> {
    let ty = component.component_type();
    let engine = engine();
    let prefix = format!("{}/", crate::bindings::CONTRACT_PACKAGE);
    let names: Vec<String> =
        ty.imports(engine).map(|(n, _)| n.to_string()).chain(ty.exports(engine).map(|(n, _)| n.to_string())).collect();
    names.iter().filter(|n| n.starts_with(&prefix)).find_map(|n| n.split_once('@').map(|(_, v)| v.to_string()))
}

/// The namespace, beside the caches' own, that holds compiled policies.
pub(crate) const POLICY_CODE_NAMESPACE: &str = "policy-code";

/// At most this many compiled policies are kept (one per policy and engine
/// version in use); the least recently stored go first.
const POLICY_CODE_KEPT: usize = 8;

/// The compiled policy under `key`, if stored and whole (checked as every
/// entry is; it is raw, so it is mapped rather than read).
fn load_compiled(code: &EntryStore, key: &Key) -> Option<Component> {
    let loaded = match code.open_entry(key, u64::MAX, crate::store::RawEntryAs::File) {
        // SAFETY: the key covers the policy engine's compatibility hash, and
        // the entry was checked whole and is its owner's, as for every
        // artifact capcache loads.
        Ok(OpenOutcome::RawFile(file)) => unsafe { crate::mapped::component_from_file(engine(), file) },
        // SAFETY: as above, for a decoded copy.
        Ok(OpenOutcome::Value(bytes)) => unsafe { Component::deserialize(engine(), &bytes) },
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

/// Stores a freshly compiled policy, raw, and keeps the store small.
fn store_compiled(code: &EntryStore, key: &Key, component: &Component) {
    let stored = component.serialize().map_err(std::io::Error::other).and_then(|bytes| {
        code.write_entry(key, &bytes, crate::entry::StoredCodec::Raw, None)
    });
    if let Err(e) = stored {
        tracing::debug!("cannot store the compiled policy {}: {e}", key.name());
        return;
    }
    let mut kept: Vec<_> = code
        .list_names(Area::Entries)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| code.file_info(Area::Entries, &name).ok())
        .collect();
    if kept.len() > POLICY_CODE_KEPT {
        kept.sort_by_key(|info| std::cmp::Reverse(info.modified_ms));
        for old in &kept[POLICY_CODE_KEPT..] {
            let _ = code.remove(Area::Entries, &old.name);
        }
    }
}

/// The engine all policies run on: its own, apart from whatever engine the
/// host compiles user modules with, with epoch interruption for deadlines.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).expect("the policy engine's configuration is valid");
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
        engine
    })
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
        code: Option<&EntryStore>,
    ) -> Result<PolicyRuntime, Error> {
        let mut runtime = PolicyRuntime {
            name: policy.name.clone(),
            pre: policy.prepare(code)?,
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

    fn instantiate(&self) -> Result<Live, StartError> {
        let limits = InstanceLimits::new(self.host.policy_memory_limit);
        let view = PolicyView::new(self.backend.clone(), self.name.clone());
        let mut store = Store::new(engine(), PolicyState { view, limits });
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
            "policy failed, using the safe default and restarting it: {reason}"
        );
    }

    /// On a miss: store or not, and how. Safe default: store, as the default
    /// policy would.
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
    fn admit(&self, candidate: &Candidate, wait: Duration) -> Option<Admission> {
        match self.try_lock_for(wait) {
            Some(mut policy) => policy.admit(candidate),
            None => {
                tracing::debug!("policy busy; storing {} with the default decision", candidate.name);
                None
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
