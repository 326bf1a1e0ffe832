//! A policy's code: compiled by the right compiler (quick code first for a
//! large policy, optimized code in the background), linked against the
//! contract, kept in `policy-code/` for the next start, and this process's
//! own once made.

use super::*;

/// The WIT interfaces a policy may import, with the contract's version.
fn allowed_imports() -> Vec<String> {
    crate::bindings::POLICY_IMPORTS.iter().map(|name| format!("{name}@{}", crate::bindings::CONTRACT_VERSION)).collect()
}

impl Policy {
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
        let digest = self.digest()?;
        if let Some(prepared) = compiled().lock().get(&digest) {
            return Ok(prepared.clone());
        }
        let optimized = self.code_key(PolicyCode::Optimized)?;
        if let Some(component) = code.and_then(|code| load_compiled(code, &optimized, PolicyCode::Optimized)) {
            return self.remember(component, PolicyCode::Optimized);
        }
        let size = match &self.source {
            PolicySource::Bytes(bytes) => bytes.len() as u64,
            PolicySource::File { size, .. } => *size,
        };
        if size < QUICK_CODE_MIN || engine(PolicyCode::Quick).is_none() {
            let component = self.compile(PolicyCode::Optimized)?;
            let prepared = self.remember(component.clone(), PolicyCode::Optimized)?;
            if let Some(code) = code {
                let _ = store_compiled(code, &optimized, &component);
            }
            return Ok(prepared);
        }
        let quick = self.code_key(PolicyCode::Quick)?;
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
    pub(super) fn remember(&self, component: Component, code: PolicyCode) -> Result<Prepared, Error> {
        let pre = self.link(&component)?;
        let mut compiled = compiled().lock();
        let kept = compiled.entry(self.digest()?).or_insert_with(|| (pre.clone(), code));
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
        // Taken by the start that calls this.
        let Ok(digest) = self.digest() else { return };
        if !OPTIMIZING.get_or_init(Default::default).lock().insert(digest) {
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
                    if let Some(code) = &code
                        && let Ok(key) = policy.code_key(PolicyCode::Optimized)
                    {
                        let _ = store_compiled(code, &key, &component);
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

}

/// A policy's code, linked, and which compiler made it.
pub(super) type Prepared = (PolicyWorldPre<PolicyState>, PolicyCode);

/// This process's code for each policy it started, by the policy's digest.
pub(super) fn compiled() -> &'static Mutex<HashMap<[u8; 32], Prepared>> {
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
pub(super) fn load_compiled(code: &EntryStore, key: &Key, compiler: PolicyCode) -> Option<Component> {
    let engine = engine(compiler)?;
    let loaded = match code.open_entry(key, u64::MAX, crate::store::RawEntryAs::File) {
        // SAFETY: the key covers the policy engine's compatibility hash, and
        // the entry was checked whole and is its owner's, as for every
        // artifact capcache loads.
        Ok(EntryOutcome::Found(Found::RawFile(file))) => unsafe { crate::mapped::component_from_file(engine, file) },
        // SAFETY: as above, for a decoded copy.
        Ok(EntryOutcome::Found(Found::Value(bytes))) => unsafe { Component::deserialize(engine, &bytes) },
        Ok(EntryOutcome::Missing) => return None,
        Ok(EntryOutcome::Corrupt(e)) => {
            tracing::warn!("compiled policy {} is corrupt ({e}); compiling again", key.name());
            let _ = code.remove(Area::Entries, &key.name());
            return None;
        }
        Ok(EntryOutcome::Untrusted(why)) => {
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
pub(super) fn store_compiled(code: &EntryStore, key: &Key, component: &Component) -> Result<u64, Error> {
    let directory_error = |source| Error::Directory { path: code.path().to_path_buf(), source };
    if code.read_only() {
        return Err(directory_error(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "it is read-only here: install from a user that can write it",
        )));
    }
    let stored = component.serialize().map_err(std::io::Error::other).and_then(|bytes| {
        code.write_entry(key, &bytes, crate::entry::StoredCodec::Raw, 0)
    });
    let stored = match stored {
        Ok(stored) => stored,
        Err(e) => {
            // Once a process: every start compiles the policy again until it
            // is fixed (seconds for a policy in Python), which must not go
            // unsaid.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "cannot keep the compiled policy in {} ({e}): every start compiles it again; make the directory writable",
                    code.path().display()
                )
            });
            return Err(directory_error(e));
        }
    };
    let names = code.list_names(Area::Entries).unwrap_or_else(|e| {
        tracing::warn!("cannot list {} to keep it within its bounds ({e}); it may grow past them", code.path().display());
        Vec::new()
    });
    let mut kept: Vec<_> = names
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
