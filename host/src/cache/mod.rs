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
use crate::config::DirectMode;
use crate::entry::StoredCodec;
use crate::error::Error;
use crate::key::{Key, ValueKey};
use crate::policy::{Policy, PolicyRuntime, StartAt};
use crate::settings::HostSettings;
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{Area, EntryOutcome, EntryStore, Found, IfMissing, RawEntryAs, StoreOptions};
use crate::bindings::codec_from_wit;
use crate::namespace::{AdmitWait, Namespace, Offered};
use crate::usage::Usage;
use crate::worker::Worker;
use crate::remote::Fetch;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    direct_mode: DirectMode,
    flights: Arc<crate::flight::Flights>,
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
        // Each shared tier's own, in a log of its own.
        for remote in namespace.remotes.iter().filter(|_| !namespace.read_only) {
            if let Err(e) = remote.stats().snapshot().append_to_log(namespace.store.namespace_dir(), &remote.stats_log()) {
                tracing::debug!("cannot record the statistics of shared tier {}: {e}", remote.label());
            }
        }
    }
}

mod builder;
mod counters;
mod entries;
mod sharing;

pub use sharing::{RemoteCheck, RemoteTransfer};
pub use builder::{CacheBuilder, default_directory, namespaces};

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

/// The policy's state in a namespace ([`Cache::state_usage`]): named
/// counters, timestamps and locks, which the policy writes and the host
/// bounds ([`crate::HostSettings::max_state_files`] and `max_state_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateUsage {
    /// State files.
    pub files: u64,
    /// Bytes they hold.
    pub bytes: u64,
    /// The quota's files.
    pub max_files: u64,
    /// The quota's bytes.
    pub max_bytes: u64,
}

impl StateUsage {
    /// Whether the state is over its quota (a quota lowered since it was
    /// written, or writers racing): writes that grow it are refused.
    pub fn over_quota(&self) -> bool {
        self.files > self.max_files || self.bytes > self.max_bytes
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

/// Where a value (or a loaded module) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// From the cache.
    Hit,
    /// From the shared tier (a local miss), checked and now kept locally too.
    RemoteHit,
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
    /// What computing its value took, in microseconds, as measured on the
    /// miss that stored it; 0 when unknown.
    pub cost_us: u64,
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
            cost_us: meta.cost_us,
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
        self.get_by_key(&ValueKey::of(key))
    }

    /// [`Cache::get`] for a key already derived.
    pub fn get_by_key(&self, key: &ValueKey) -> Option<Vec<u8>> {
        self.get_value(key.key())
    }

    /// The value stored under `key`, of any domain (the incremental cache's
    /// too).
    pub(crate) fn get_value(&self, key: &Key) -> Option<Vec<u8>> {
        match self.fetch(key, RawEntryAs::Value)?.0 {
            Found::Value(value) => Some(value),
            Found::RawFile(_) => unreachable!("asked for values only"),
        }
    }

    /// Looks `key` up, checking the entry whole; on a local miss, in the
    /// shared tier if there is one. With [`RawEntryAs::File`], a raw entry
    /// comes back as its open file (the artifact from offset 0), for wasmtime
    /// to map rather than copy.
    pub(crate) fn fetch(&self, key: &Key, raw: RawEntryAs) -> Option<(Found, Source)> {
        let inner = self.inner.as_ref()?;
        let namespace = &inner.namespace;
        let mut source = Source::Hit;
        let found = self.open_local(key, raw).or_else(|| {
            let found = self.fetch_remote(key, raw);
            source = Source::RemoteHit;
            found
        });
        match &found {
            Some(_) => {
                Stats::bump(&namespace.stats.hits);
                let raw = matches!(found, Some(Found::RawFile(_)));
                if !inner.worker().hit(*key, raw) {
                    Stats::bump(&namespace.stats.events_dropped);
                }
            }
            None => {
                Stats::bump(&namespace.stats.misses);
                // The caller computes the value now, then offers it: the
                // policy starts meanwhile, if it has not.
                inner.worker().start_policy(&inner.policy);
            }
        }
        found.map(|found| (found, source))
    }

    /// The first shared tier's entry for `key`, in the chain's order,
    /// written into the local cache and opened from there (a raw one is then
    /// mapped, as any local hit); served from memory when the local cache
    /// cannot be written. The faster tiers that lacked it are backfilled by
    /// the worker, off the caller's path.
    fn fetch_remote(&self, key: &Key, raw: RawEntryAs) -> Option<Found> {
        let inner = self.inner.as_ref()?;
        let namespace = &inner.namespace;
        let (tier, entry_bytes) = namespace.remotes.iter().enumerate().find_map(|(tier, remote)| match remote.fetch(key, &namespace.stats) {
            Fetch::Entry(entry_bytes) => Some((tier, entry_bytes)),
            Fetch::Nothing => None,
        })?;
        if !namespace.read_only {
            match namespace.store.write_entry_file(key, &entry_bytes) {
                Ok(()) => {
                    namespace.reset_usage(key);
                    if tier > 0 && !inner.worker().backfill(*key, tier) {
                        Stats::bump(&namespace.stats.remote_upload_failures);
                        tracing::debug!("worker busy: {} is not backfilled into the faster tiers", key.name());
                    }
                    if let Some(found) = self.open_local(key, raw) {
                        return Some(found);
                    }
                }
                Err(e) => tracing::warn!("cannot keep a shared-tier entry in {}: {e}", namespace.store.path().display()),
            }
        }
        match crate::entry::decode(&entry_bytes, key, inner.host.max_entry_size) {
            Ok((_, value)) => Some(Found::Value(value)),
            Err(e) => {
                tracing::warn!("shared-tier entry {} does not decode ({e})", key.name());
                None
            }
        }
    }

    /// The local entry for `key`, checked whole; a corrupt or untrusted one is
    /// removed and counted.
    fn open_local(&self, key: &Key, raw: RawEntryAs) -> Option<Found> {
        let inner = self.inner.as_ref()?;
        let namespace = &inner.namespace;
        let outcome = namespace.store.open_entry(key, inner.host.max_entry_size, raw);
        match outcome {
            Ok(EntryOutcome::Found(found)) => Some(found),
            Ok(EntryOutcome::Missing) => None,
            Ok(EntryOutcome::Corrupt(e)) => {
                Stats::bump(&namespace.stats.corrupt);
                tracing::warn!("cache entry {} in {} is corrupt ({e}); removing it", key.name(), namespace.store.path().display());
                let _ = namespace.remove_entry(key);
                None
            }
            Ok(EntryOutcome::Untrusted(why)) => {
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
        }
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

    /// How file loads find their artifacts (see [`DirectMode`]).
    pub fn direct_mode(&self) -> DirectMode {
        self.inner.as_ref().map_or(DirectMode::Off, |i| i.direct_mode)
    }

    /// The largest module file the wasmtime adapter reads.
    pub fn max_module_size(&self) -> u64 {
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
    /// how it is stored. Returns whether it was stored now. If the policy is
    /// busy (the worker is running its maintenance pass), the caller does not
    /// wait: the value goes to the worker, which stores it if the policy
    /// admits it ([`Cache::flush`] waits for that). Nothing the policy did not
    /// admit is ever stored, not even when it fails. Never fails: a failure to
    /// store is logged and counted.
    ///
    /// The policy is told nothing of what the value cost to compute (its
    /// `cost-us` is 0, unknown): [`Cache::insert_with_cost`] tells it.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> bool {
        self.insert_by_key(&ValueKey::of(key), value)
    }

    /// [`Cache::insert`], telling the policy that computing `value` took
    /// `cost`, so that it can keep what is expensive to make again.
    pub fn insert_with_cost(&self, key: &[u8], value: &[u8], cost: Duration) -> bool {
        self.insert_value(ValueKey::of(key).key(), value, micros(cost))
    }

    /// [`Cache::insert`] for a key already derived.
    pub fn insert_by_key(&self, key: &ValueKey, value: &[u8]) -> bool {
        self.insert_value(key.key(), value, 0)
    }

    /// [`Cache::insert`] under a key of any domain: for the code in this
    /// crate that made the value (the adapter, the incremental cache).
    pub(crate) fn insert_value(&self, key: &Key, value: &[u8], cost_us: u64) -> bool {
        let Some(inner) = self.inner.as_ref() else { return false };
        let wait = AdmitWait::AtMost(inner.host.admit_wait);
        match inner.namespace.admit_and_write(&*inner.policy, &inner.host, key, value, cost_us, wait) {
            Offered::Stored => {
                if !inner.worker().inserted(*key) {
                    Stats::bump(&inner.namespace.stats.events_dropped);
                    // The event was also this entry's upload to the shared tier.
                    if inner.namespace.writes_a_tier() {
                        Stats::bump(&inner.namespace.stats.remote_upload_failures);
                        tracing::debug!("worker busy: entry {} is not uploaded to the shared tier", key.name());
                    }
                }
                true
            }
            Offered::NotStored => false,
            Offered::PolicyBusy => {
                let value = value.to_vec();
                if inner.worker().store_deferred(*key, Box::new(move || Some(value)), cost_us, None).is_err() {
                    // The worker is busy too: nothing is stored that the
                    // policy has not decided on.
                    Stats::bump(&inner.namespace.stats.skipped);
                    tracing::debug!("policy and worker busy; {} not stored", key.name());
                }
                false
            }
        }
    }

    /// Offers the value that `produce` makes for `key`, to be made, admitted
    /// and written on the worker, off the caller's path (a miss then costs the
    /// caller only what computing the value costs). `produce` returns `None`
    /// if there is nothing to store after all. If the worker's queue is full,
    /// it runs here instead, and the value is offered as [`Cache::insert`]
    /// offers it: stored if the policy admits it, and counted as not stored
    /// if the policy is busy too (nothing is stored that it did not admit).
    /// [`Cache::flush`] waits for it; dropping the cache does too.
    pub fn insert_deferred(&self, key: &ValueKey, produce: impl FnOnce() -> Option<Vec<u8>> + Send + 'static) {
        self.insert_value_deferred(key.key(), produce, 0, || {})
    }

    /// [`Cache::insert_deferred`] under a key of any domain.
    pub(crate) fn insert_value_deferred(
        &self,
        key: &Key,
        produce: impl FnOnce() -> Option<Vec<u8>> + Send + 'static,
        cost_us: u64,
        landed: impl FnOnce() + Send + 'static,
    ) {
        let Some(inner) = self.inner.as_ref() else { return landed() };
        if inner.namespace.read_only {
            return landed();
        }
        if let Err((produce, landed)) = inner.worker().store_deferred(*key, Box::new(produce), cost_us, Some(Box::new(landed))) {
            if let Some(value) = produce() {
                self.insert_value(key, &value, cost_us);
            }
            if let Some(landed) = landed {
                landed();
            }
        }
    }

    /// The loads of one key that share one compile in this process.
    pub(crate) fn flights(&self) -> Option<&Arc<crate::flight::Flights>> {
        self.inner.as_ref().map(|i| &i.flights)
    }

    /// Counts a load that missed on disk and was served another load's
    /// compile of the same bytes, in this process, as a hit.
    pub(crate) fn count_shared_compile(&self) {
        if let Some(inner) = &self.inner {
            inner.namespace.stats.misses.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            Stats::bump(&inner.namespace.stats.hits);
        }
    }

    /// The value for `key`: from the cache, or from `compute` (then offered to
    /// the cache, with the time `compute` took as its cost). An error of
    /// `compute` is returned as is; the cache's own failures never are.
    pub fn get_or_insert_with<E>(&self, key: &[u8], compute: impl FnOnce() -> Result<Vec<u8>, E>) -> Result<Cached, E> {
        if !self.is_enabled() {
            return Ok(Cached { bytes: compute()?, source: Source::Uncached });
        }
        let key = ValueKey::of(key);
        if let Some((Found::Value(bytes), source)) = self.fetch(key.key(), RawEntryAs::Value) {
            return Ok(Cached { bytes, source });
        }
        let started = Instant::now();
        let bytes = compute()?;
        self.insert_value(key.key(), &bytes, micros(started.elapsed()));
        Ok(Cached { bytes, source: Source::Miss })
    }

    /// Waits until the worker has handled every event queued so far.
    pub fn flush(&self) {
        if let Some(inner) = &self.inner {
            inner.worker().flush();
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

    /// Which compiler made the code the policy runs now: quick code for a
    /// large policy whose optimized code is not kept yet (see
    /// [`Policy::install`](crate::Policy::install)).
    pub fn policy_code(&self) -> Option<crate::PolicyCode> {
        self.inner.as_ref().and_then(|i| i.policy.lock().code().ok())
    }
}

/// A cost in whole microseconds, as the contract's `cost-us` counts it.
pub(crate) fn micros(cost: Duration) -> u64 {
    u64::try_from(cost.as_micros()).unwrap_or(u64::MAX)
}
