//! The cache as a caller sees it: `get`, `insert`, `get_or_insert_with`.
//!
//! A hit reads and checks the entry on the caller's thread and queues an event
//! for the worker: it never waits on the policy. A miss asks the policy whether
//! and how to store (bounded by a deadline, and by a short wait if the worker
//! holds the policy), then writes atomically; `insert_deferred` (which the
//! wasmtime adapter uses) leaves all of that to the worker. Every cache-side
//! failure degrades to "compute" with a warning: the caller always gets its
//! value.

use crate::bindings::exports::capcache::policy::policy::Candidate;
use crate::clock::{Clock, SystemClock};
use crate::entry::StoredCodec;
use crate::error::Error;
use crate::key::Key;
use crate::policy::{Policy, PolicyRuntime};
use crate::settings::HostSettings;
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{Area, IfMissing, OpenOutcome, RawEntryAs, ReadOutcome, Store, StoreOptions};
use crate::bindings::codec_from_wit;
use crate::namespace::Namespace;
use crate::usage::Usage;
use crate::worker::Worker;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Configures and opens a [`Cache`].
#[derive(Debug, Clone)]
pub struct CacheBuilder {
    directory: Option<PathBuf>,
    namespace: String,
    policy: Policy,
    settings: Vec<(String, String)>,
    host: HostSettings,
    clock: Arc<dyn Clock>,
    enabled: bool,
    open_options: StoreOptions,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            directory: None,
            namespace: "default".into(),
            policy: Policy::default(),
            settings: Vec::new(),
            host: HostSettings::default(),
            clock: Arc::new(SystemClock),
            enabled: true,
            open_options: Default::default(),
        }
    }
}

impl CacheBuilder {
    /// A builder set up as a configuration file says (see [`crate::config`]).
    pub fn from_config(config: &crate::Config) -> Result<CacheBuilder, Error> {
        let c = &config.cache;
        let mut builder = CacheBuilder::default()
            .enabled(c.enabled)
            .read_only(c.read_only)
            .allow_insecure_directory(c.allow_insecure_directory)
            .settings(config.policy_settings());
        if let Some(dir) = &c.directory {
            builder = builder.directory(dir);
        }
        if let crate::config::PolicyChoice::File(path) = &c.policy {
            builder = builder.policy(Policy::from_file(path)?);
        }
        let h = &c.host;
        let defaults = HostSettings::default();
        let ms = |v: Option<u64>, d| v.map(std::time::Duration::from_millis).unwrap_or(d);
        builder.host = HostSettings {
            event_queue_size: h.event_queue_size.map(|n| n as usize).unwrap_or(defaults.event_queue_size),
            policy_memory_limit: h.policy_memory_limit.map(|n| n as usize).unwrap_or(defaults.policy_memory_limit),
            admit_deadline: ms(h.admit_deadline_ms, defaults.admit_deadline),
            event_deadline: ms(h.event_deadline_ms, defaults.event_deadline),
            maintain_deadline: ms(h.maintain_deadline_ms, defaults.maintain_deadline),
            max_module_size: h.max_module_size.unwrap_or(defaults.max_module_size),
            ..defaults
        };
        Ok(builder)
    }

    /// The cache's root directory; default: the platform's cache directory
    /// (e.g. `~/.cache/capcache`).
    pub fn directory(mut self, directory: impl Into<PathBuf>) -> Self {
        self.directory = Some(directory.into());
        self
    }

    /// The namespace under the root. Entries of different namespaces never
    /// meet; include whatever makes compiled code incompatible (see
    /// [`crate::wasmtime::engine_namespace`]).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The policy component that decides what is kept (default: the embedded
    /// default policy, wasmtime's cache behaviour).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The policy's settings, passed to its `configure`.
    pub fn settings<K: Into<String>, V: Into<String>>(mut self, settings: impl IntoIterator<Item = (K, V)>) -> Self {
        self.settings.extend(settings.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// One setting for the policy's `configure`.
    pub fn setting(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings([(key.into(), value.into())])
    }

    /// The bounds the host puts on the cache and its policy.
    pub fn host_settings(mut self, host: HostSettings) -> Self {
        self.host = host;
        self
    }

    /// The clock the cache and its policy read; tests use a [`crate::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Serve hits only: never write, store or clean. (A directory that cannot
    /// be written is opened this way anyway, with a warning.)
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.open_options.read_only = read_only;
        self
    }

    /// Open a directory that is writable by others or owned by another user.
    /// Anyone who can write the cache can plant compiled code that the host
    /// will load: only for directories protected some other way.
    pub fn allow_insecure_directory(mut self, allow: bool) -> Self {
        self.open_options.allow_insecure = allow;
        self
    }

    /// What to do if the directory or the namespace does not exist yet:
    /// create it (the default), or fail with [`Error::NoCache`] and create
    /// nothing, for tools that only look at a cache.
    pub fn if_missing(mut self, if_missing: IfMissing) -> Self {
        self.open_options.if_missing = if_missing;
        self
    }

    /// A disabled cache computes every value and stores nothing.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Opens the directory and starts the policy. Errors name what is wrong:
    /// the directory, the policy component, or a setting.
    pub fn open(self) -> Result<Cache, Error> {
        if !self.enabled {
            return Ok(Cache::disabled());
        }
        let root = match self.directory {
            Some(dir) => dir,
            None => default_directory()?,
        };
        if self.namespace == crate::policy::POLICY_CODE_NAMESPACE {
            return Err(Error::InvalidNamespace(self.namespace));
        }
        let store = Store::open(&root, &self.namespace, self.clock.clone(), self.open_options)?;
        let read_only = store.read_only();
        let namespace = Arc::new(Namespace { store, usage: Mutex::new(Usage::default()), stats: Stats::default(), read_only });
        // Compiled policies are kept beside the namespaces, so a process
        // starts its policy without compiling it.
        let code_options = StoreOptions { if_missing: IfMissing::Create, ..self.open_options };
        let code = Store::open(&root, crate::policy::POLICY_CODE_NAMESPACE, self.clock.clone(), code_options)
            .map_err(|e| tracing::debug!("no store for compiled policies: {e}"))
            .ok();
        let runtime = PolicyRuntime::start(&self.policy, &self.settings, namespace.clone(), self.host.clone(), code.as_ref())?;
        let policy = Arc::new(Mutex::new(runtime));
        let worker = Worker::start(namespace.clone(), policy.clone(), self.host.clone());
        Ok(Cache { inner: Some(Inner { namespace, policy, worker: Some(worker), host: self.host }) })
    }
}

/// The namespaces that hold a cache under `root`, sorted (the host's own
/// store of compiled policies is not one). A missing root is
/// [`Error::NoCache`]: a mistyped directory is not an empty cache.
pub fn namespaces(root: &Path) -> Result<Vec<String>, Error> {
    let listing = match std::fs::read_dir(root) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NoCache { path: root.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::NotADirectory { path: root.to_path_buf() });
        }
        Err(source) => return Err(Error::Directory { path: root.to_path_buf(), source }),
    };
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(|source| Error::Directory { path: root.to_path_buf(), source })?;
        let Ok(name) = item.file_name().into_string() else { continue };
        let is_namespace = crate::store::valid_namespace(&name)
            && name != crate::policy::POLICY_CODE_NAMESPACE
            && item.path().join(crate::store::ENTRIES).is_dir();
        if is_namespace {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The platform's cache directory, with `capcache` under it.
pub fn default_directory() -> Result<PathBuf, Error> {
    dirs::cache_dir().map(|d| d.join("capcache")).ok_or(Error::NoDirectory)
}

/// A compiled-module cache. Cheap to share by reference across threads.
pub struct Cache {
    inner: Option<Inner>,
}

struct Inner {
    namespace: Arc<Namespace>,
    policy: Arc<Mutex<PolicyRuntime>>,
    /// Always `Some` until dropped: dropping it drains the queue.
    worker: Option<Worker>,
    host: HostSettings,
}

impl Inner {
    fn worker(&self) -> &Worker {
        self.worker.as_ref().expect("the worker lives as long as the cache")
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let the worker finish what is queued, then record this process's
        // counters for `capcache stats`.
        drop(self.worker.take());
        let namespace = &self.namespace;
        if !namespace.read_only
            && let Err(e) = namespace.stats.snapshot().append_to(namespace.store.namespace_dir()) {
                tracing::debug!("cannot record statistics in {}: {e}", namespace.store.path().display());
            }
    }
}

/// What a maintenance pass did, as the policy reported it (the host's own
/// type, so that a change to the WIT record is not a change to this API).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintainReport {
    /// Whether the pass ran; `false` when another process holds the cleanup
    /// lock or the pass was not due.
    pub ran: bool,
    /// Entries seen.
    pub entries_seen: u64,
    /// Entries evicted to bring the cache under its limits.
    pub evicted: u64,
    /// Entries removed because their times lie too far in the future.
    pub removed_from_future: u64,
    /// Stale temporary files removed.
    pub removed_temp_files: u64,
    /// Bytes freed in all.
    pub bytes_freed: u64,
    /// Entries left.
    pub entries_after: u64,
    /// Bytes the entries left take on disk.
    pub bytes_after: u64,
    /// A line for people, e.g. why the pass did not run (at most 64 KiB).
    pub summary: String,
}

impl From<crate::bindings::exports::capcache::policy::policy::MaintainReport> for MaintainReport {
    fn from(r: crate::bindings::exports::capcache::policy::policy::MaintainReport) -> Self {
        MaintainReport {
            ran: r.ran,
            entries_seen: r.entries_seen,
            evicted: r.evicted,
            removed_from_future: r.removed_from_future,
            removed_temp_files: r.removed_temp_files,
            bytes_freed: r.bytes_freed,
            entries_after: r.entries_after,
            bytes_after: r.bytes_after,
            summary: r.summary,
        }
    }
}

/// What [`Cache::verify`] does with a bad entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyMode {
    /// Report it only.
    Report,
    /// Report it and remove it (and a direct-mode manifest left without its
    /// artifact).
    RemoveBad,
}

/// What [`Cache::verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Entries checked.
    pub checked: u64,
    /// Entries that failed, with why.
    pub bad: Vec<(String, String)>,
    /// Bad entries removed (with `fix`).
    pub removed: u64,
}

/// An entry as [`Cache::fetch`] found it.
pub(crate) enum Fetched {
    RawFile(std::fs::File),
    Value(Vec<u8>),
}

/// Where a value (or a loaded module) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// From the cache.
    Hit,
    /// Computed (compiled), then offered to the cache.
    Miss,
    /// Computed with the cache disabled: nothing was looked up or stored.
    Uncached,
}

/// A value from [`Cache::get_or_insert_with`].
#[derive(Debug, Clone)]
pub struct Cached {
    /// The value.
    pub bytes: Vec<u8>,
    /// Where it came from.
    pub source: Source,
}

/// What is stored for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The entry's file name: its key in base64url.
    pub name: String,
    /// How its value is stored.
    pub codec: StoredCodec,
    /// Bytes on disk.
    pub stored_size: u64,
    /// Bytes of the value, decoded.
    pub raw_size: u64,
    /// When it was first stored, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it was last used, likewise.
    pub last_used_ms: u64,
    /// Hits recorded for it, over every process.
    pub hits: u64,
}

impl From<crate::bindings::capcache::policy::types::EntryMeta> for EntryInfo {
    fn from(meta: crate::bindings::capcache::policy::types::EntryMeta) -> Self {
        EntryInfo {
            name: meta.name,
            codec: codec_from_wit(meta.codec),
            stored_size: meta.stored_size,
            raw_size: meta.raw_size,
            created_ms: meta.created,
            last_used_ms: meta.last_used,
            hits: meta.hits,
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(inner) => f.debug_struct("Cache").field("path", &inner.namespace.store.path()).finish(),
            None => f.write_str("Cache(disabled)"),
        }
    }
}

impl Cache {
    /// A builder with the defaults: the platform's cache directory, the
    /// namespace `default`, the default policy.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// A cache that stores nothing: every lookup misses.
    pub fn disabled() -> Cache {
        Cache { inner: None }
    }

    /// Whether the cache looks anything up (see [`Cache::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The namespace's directory, if enabled.
    pub fn path(&self) -> Option<&Path> {
        self.inner.as_ref().map(|i| i.namespace.store.path())
    }

    /// The value stored for `key`, if a valid entry exists. A corrupt entry is
    /// removed, counted, and reported as a miss.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_by_key(&Key::of(key))
    }

    /// [`Cache::get`] for a key already derived.
    pub fn get_by_key(&self, key: &Key) -> Option<Vec<u8>> {
        match self.fetch(key, RawEntryAs::Value)? {
            Fetched::Value(value) => Some(value),
            Fetched::RawFile(_) => unreachable!("asked for values only"),
        }
    }

    /// Looks `key` up, checking the entry whole. With [`RawEntryAs::File`], a raw
    /// entry comes back as its open file (the artifact from offset 0), for
    /// wasmtime to map rather than copy.
    pub(crate) fn fetch(&self, key: &Key, raw: RawEntryAs) -> Option<Fetched> {
        let inner = self.inner.as_ref()?;
        let namespace = &inner.namespace;
        let outcome = namespace.store.open_entry(key, inner.host.max_entry_size, raw);
        let found = match outcome {
            Ok(OpenOutcome::RawFile(file)) => Some(Fetched::RawFile(file)),
            Ok(OpenOutcome::Value(value)) => Some(Fetched::Value(value)),
            Ok(OpenOutcome::Missing) => None,
            Ok(OpenOutcome::Corrupt(e)) => {
                Stats::bump(&namespace.stats.corrupt);
                tracing::warn!("cache entry {} in {} is corrupt ({e}); removing it", key.name(), namespace.store.path().display());
                let _ = namespace.remove_entry(key);
                None
            }
            Ok(OpenOutcome::Untrusted(why)) => {
                Stats::bump(&namespace.stats.untrusted);
                tracing::warn!(
                    "cache entry {} in {} is not trusted ({why}); not loading it, removing it",
                    key.name(),
                    namespace.store.path().display()
                );
                let _ = namespace.remove_entry(key);
                None
            }
            Err(e) => {
                Stats::bump(&namespace.stats.failures);
                tracing::warn!("cannot read cache entry {} in {}: {e}", key.name(), namespace.store.path().display());
                None
            }
        };
        match &found {
            Some(_) => {
                Stats::bump(&namespace.stats.hits);
                if !inner.worker().hit(*key) {
                    Stats::bump(&namespace.stats.events_dropped);
                }
            }
            None => Stats::bump(&namespace.stats.misses),
        }
        found
    }

    /// The artifact key a direct-mode manifest records, if any.
    pub(crate) fn read_manifest(&self, manifest: &Key) -> Option<Key> {
        self.inner.as_ref()?.namespace.store.read_manifest(manifest)
    }

    /// Records a direct-mode manifest (the host's own: no policy is asked,
    /// and it is not an entry).
    pub(crate) fn write_manifest(&self, manifest: &Key, artifact: &Key) {
        let Some(inner) = self.inner.as_ref() else { return };
        if inner.namespace.read_only {
            return;
        }
        if let Err(e) = inner.namespace.store.write_manifest(manifest, artifact) {
            Stats::bump(&inner.namespace.stats.failures);
            tracing::warn!("cannot record a direct-mode manifest in {}: {e}", inner.namespace.store.path().display());
        }
    }

    /// The largest module file the wasmtime adapter reads.
    pub(crate) fn max_module_size(&self) -> u64 {
        self.inner.as_ref().map_or(HostSettings::default().max_module_size, |i| i.host.max_module_size)
    }

    /// Counts a hit that turned out unusable (e.g. an artifact wasmtime
    /// refused) as a miss instead.
    pub(crate) fn count_unusable_hit(&self) {
        if let Some(inner) = &self.inner {
            inner.namespace.stats.hits.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            Stats::bump(&inner.namespace.stats.misses);
        }
    }

    /// Offers `value` for `key` to the cache; the policy decides whether and
    /// how it is stored. Returns whether it was stored. Never fails: a failure
    /// to store is logged and counted.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> bool {
        self.insert_by_key(&Key::of(key), value)
    }

    /// [`Cache::insert`] for a key already derived.
    pub fn insert_by_key(&self, key: &Key, value: &[u8]) -> bool {
        let Some(inner) = self.inner.as_ref() else { return false };
        let stored = inner.namespace.admit_and_write(&*inner.policy, &inner.host, key, value);
        if stored && !inner.worker().inserted(*key) {
            Stats::bump(&inner.namespace.stats.events_dropped);
        }
        stored
    }

    /// Offers the value that `produce` makes for `key`, to be made, admitted
    /// and written on the worker, off the caller's path (a miss then costs the
    /// caller only what computing the value costs). `produce` returns `None`
    /// if there is nothing to store after all. If the worker's queue is full,
    /// it runs here instead: the value is never lost to a busy worker.
    /// [`Cache::flush`] waits for it; dropping the cache does too.
    pub fn insert_deferred(&self, key: &Key, produce: impl FnOnce() -> Option<Vec<u8>> + Send + 'static) {
        let Some(inner) = self.inner.as_ref() else { return };
        if inner.namespace.read_only {
            return;
        }
        if let Err(produce) = inner.worker().store_deferred(*key, Box::new(produce))
            && let Some(value) = produce()
        {
            self.insert_by_key(key, &value);
        }
    }

    /// The value for `key`: from the cache, or from `compute` (then offered to
    /// the cache). An error of `compute` is returned as is; the cache's own
    /// failures never are.
    pub fn get_or_insert_with<E>(&self, key: &[u8], compute: impl FnOnce() -> Result<Vec<u8>, E>) -> Result<Cached, E> {
        if !self.is_enabled() {
            return Ok(Cached { bytes: compute()?, source: Source::Uncached });
        }
        let key = Key::of(key);
        if let Some(bytes) = self.get_by_key(&key) {
            return Ok(Cached { bytes, source: Source::Hit });
        }
        let bytes = compute()?;
        self.insert_by_key(&key, &bytes);
        Ok(Cached { bytes, source: Source::Miss })
    }

    /// What is stored for `key`, without counting a use.
    pub fn entry_info(&self, key: &[u8]) -> Option<EntryInfo> {
        let inner = self.inner.as_ref()?;
        inner.namespace.entry_meta(&Key::of(key).name()).ok().map(EntryInfo::from)
    }

    /// The file that holds (or would hold) the entry for `key`.
    pub fn entry_path(&self, key: &[u8]) -> Option<PathBuf> {
        self.path().map(|p| p.join(crate::store::ENTRIES).join(Key::of(key).name()))
    }

    /// Waits until the worker has handled every event queued so far.
    pub fn flush(&self) {
        if let Some(inner) = &self.inner {
            inner.worker().flush();
        }
    }

    /// For benchmarks: calls the policy's `on-hit` for the stored entry
    /// `key` (or `admit` for a candidate of that name) `n` times, directly,
    /// as the worker does, and returns the time per call: the cost of one
    /// crossing into the sandbox and back, without the filesystem.
    #[doc(hidden)]
    pub fn time_policy_calls(&self, key: &[u8], n: u32, admit: bool) -> Option<std::time::Duration> {
        let inner = self.inner.as_ref()?;
        let key = Key::of(key);
        let meta = {
            inner.namespace.entry_meta(&key.name()).ok()?
        };
        let candidate = Candidate { name: key.name(), raw_size: meta.raw_size };
        let mut policy = inner.policy.lock();
        let started = std::time::Instant::now();
        for _ in 0..n {
            if admit {
                std::hint::black_box(policy.admit(&candidate));
            } else {
                std::hint::black_box(policy.on_hit(&meta));
            }
        }
        Some(started.elapsed() / n.max(1))
    }

    /// Runs the policy's maintenance pass now (after queued events) and
    /// returns its report; `None` if disabled or the policy failed.
    pub fn maintain(&self) -> Option<MaintainReport> {
        self.inner.as_ref()?.worker().maintain().map(MaintainReport::from)
    }

    /// This process's counters since the cache was opened.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.as_ref().map(|i| i.namespace.stats.snapshot()).unwrap_or_default()
    }

    /// The counters of every process that used this namespace (as recorded
    /// when each closed its cache), plus this one's so far.
    pub fn lifetime_stats(&self) -> StatsSnapshot {
        let Some(inner) = &self.inner else { return StatsSnapshot::default() };
        let mut total = StatsSnapshot::load(inner.namespace.store.namespace_dir()).unwrap_or_else(|e| {
            tracing::warn!("cannot read statistics: {e}");
            StatsSnapshot::default()
        });
        total.add(&inner.namespace.stats.snapshot());
        total
    }

    /// Forgets the recorded counters (this process's too).
    pub fn zero_stats(&self) -> std::io::Result<()> {
        let Some(inner) = &self.inner else { return Ok(()) };
        for counter in inner.namespace.stats.all() {
            counter.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        match inner.namespace.store.namespace_dir().remove_file(crate::stats::STATS_LOG) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every entry, as the policy would see it (unordered). A listing that
    /// fails is an error, never an empty cache.
    pub fn entries(&self) -> std::io::Result<Vec<EntryInfo>> {
        let Some(inner) = &self.inner else { return Ok(Vec::new()) };
        let namespace = &inner.namespace;
        let mut usage = namespace.usage.lock();
        usage.refresh(namespace.store.namespace_dir())?;
        let names = namespace.store.list_names(Area::Entries)?;
        Ok(names
            .iter()
            .filter_map(|name| namespace.entry_meta_with(&usage, name).ok())
            .map(EntryInfo::from)
            .collect())
    }

    /// Reads and checks every file in the entries area; with
    /// [`VerifyMode::RemoveBad`], removes the bad ones. `progress(done, total)`
    /// is called after each.
    pub fn verify(&self, mode: VerifyMode, mut progress: impl FnMut(u64, u64)) -> std::io::Result<VerifyReport> {
        let fix = mode == VerifyMode::RemoveBad;
        let mut report = VerifyReport::default();
        let Some(inner) = &self.inner else { return Ok(report) };
        let store = &inner.namespace.store;
        let names = store.list_names(Area::Entries)?;
        let total = names.len() as u64;
        for name in names {
            let problem = match Key::from_name(&name) {
                None => Some("not an entry name".to_string()),
                Some(key) => match store.read_entry(&key, inner.host.max_entry_size) {
                    Ok(ReadOutcome::Found(..)) | Ok(ReadOutcome::Missing) => None,
                    Ok(ReadOutcome::Corrupt(e)) => Some(e.to_string()),
                    Ok(ReadOutcome::Untrusted(why)) => Some(format!("not trusted: {why}")),
                    Err(e) => Some(e.to_string()),
                },
            };
            report.checked += 1;
            if let Some(problem) = problem {
                if fix && store.remove(Area::Entries, &name).is_ok() {
                    report.removed += 1;
                }
                report.bad.push((name, problem));
            }
            progress(report.checked, total);
        }
        // A manifest whose artifact is gone (removed just now, or before) is
        // dead: it goes with it.
        if fix {
            store.prune_manifests()?;
        }
        Ok(report)
    }

    /// Removes every entry, manifest, temporary file and usage record of the
    /// namespace (the policy's state stays). Returns how many entries went;
    /// fails if the cache is read-only or an entry could not be removed (the
    /// error says how many were).
    pub fn clear(&self) -> std::io::Result<u64> {
        let Some(inner) = &self.inner else { return Ok(0) };
        let store = &inner.namespace.store;
        if inner.namespace.read_only {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                format!("{} cannot be written (read-only): nothing removed", store.path().display()),
            ));
        }
        self.flush();
        let mut removed = 0;
        let mut first_error = None;
        for name in store.list_names(Area::Entries)? {
            match store.remove(Area::Entries, &name) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for area in [Area::Manifests, Area::Tmp] {
            for name in store.list_names(area)? {
                let _ = store.remove(area, &name);
            }
        }
        let _ = store.namespace_dir().remove_file(crate::usage::JOURNAL);
        match first_error {
            Some(e) => Err(std::io::Error::new(e.kind(), format!("{removed} entries removed, then: {e}"))),
            None => Ok(removed),
        }
    }

    /// Whether the cache serves hits only (asked for, or found unwritable).
    pub fn is_read_only(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.namespace.read_only)
    }

    /// The policy's name (the embedded default, or the path it was loaded from).
    pub fn policy_name(&self) -> Option<String> {
        self.inner.as_ref().map(|i| i.policy.lock().name().to_string())
    }
}
