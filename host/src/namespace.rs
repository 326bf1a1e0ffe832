//! One namespace of the cache, as the cache, its worker, the policy's view and
//! the policy runtime share it: the store, the usage journal, the counters,
//! and the operations that must change several of them together (storing an
//! admitted value, removing an entry with its usage record, an entry's
//! metadata with its hits). Those modules depend on this one, not on each
//! other.

use crate::bindings::capcache::policy::types::{EntryMeta, Error as WitError};
use crate::bindings::exports::capcache::policy::policy::{Admission, Candidate};
use crate::bindings::{codec_from_wit, codec_to_wit};
use crate::key::Key;
use crate::settings::HostSettings;
use crate::stats::Stats;
use crate::store::{Area, EntryStore};
use crate::usage::{self, Usage};
use parking_lot::Mutex;
use std::io;

/// Whoever decides whether and how a value is stored: the policy runtime.
/// Nothing is stored that it did not admit: not when it fails, and not when
/// it is busy (then the decision moves to the worker, which waits for it).
pub(crate) trait Admit {
    /// The decision for `candidate`.
    fn admit(&self, candidate: &Candidate, wait: AdmitWait) -> Decision;
}

/// How long a store waits for the policy to be free to answer `admit`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AdmitWait {
    /// At most this long (a caller's thread: a miss never waits longer).
    AtMost(std::time::Duration),
    /// Until it is free (the worker, whose own calls are the ones that keep
    /// it busy; each call is bounded by its deadline).
    UntilFree,
}

/// What the policy said about a candidate, or why it said nothing.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Its answer.
    Answered(Admission),
    /// Not free within the wait.
    Busy,
    /// It faulted (counted and logged by the runtime).
    Failed,
}

/// What became of a value offered for storing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    Stored,
    /// Not stored: refused, too large, read-only, or a write failed.
    NotStored,
    /// The policy was busy: nothing was decided, nothing stored; the caller
    /// may hand the value to the worker, which waits for the decision.
    PolicyBusy,
}

/// One namespace's shared state.
#[derive(Debug)]
pub(crate) struct Namespace {
    pub(crate) store: EntryStore,
    pub(crate) usage: Mutex<Usage>,
    pub(crate) stats: Stats,
    pub(crate) read_only: bool,
    /// The shared tiers behind this namespace, fastest first: a local miss
    /// asks them in order.
    pub(crate) remotes: Vec<crate::remote::RemoteTier>,
}

impl Namespace {
    /// Asks `admit` whether and how to store `value`, whose computation took
    /// `cost_us` (0: unknown), waiting as `wait` says; then writes it
    /// atomically if it said so. Never fails: a failure to store is logged
    /// and counted.
    pub(crate) fn admit_and_write(&self, admit: &impl Admit, host: &HostSettings, key: &Key, value: &[u8], cost_us: u64, wait: AdmitWait) -> Offered {
        if self.read_only {
            return Offered::NotStored;
        }
        if value.len() as u64 > host.max_entry_size {
            Stats::bump(&self.stats.skipped);
            return Offered::NotStored;
        }
        let candidate = Candidate { name: key.name(), raw_size: value.len() as u64, cost_us };
        let codec = match admit.admit(&candidate, wait) {
            Decision::Answered(Admission::Store(codec)) => codec_from_wit(codec),
            Decision::Answered(Admission::Skip) => {
                Stats::bump(&self.stats.skipped);
                return Offered::NotStored;
            }
            Decision::Failed => {
                // What the policy did not admit is not stored: a policy that
                // says "keep nothing" and then faults still keeps nothing.
                Stats::bump(&self.stats.skipped);
                tracing::debug!("the policy failed to answer admit for {}; not stored", candidate.name);
                return Offered::NotStored;
            }
            Decision::Busy => return Offered::PolicyBusy,
        };
        match self.store.write_entry(key, value, codec, cost_us) {
            Ok(_) => {
                Stats::bump(&self.stats.inserts);
                // A new entry starts with no usage.
                self.reset_usage(key);
                Offered::Stored
            }
            Err(e) => {
                Stats::bump(&self.stats.failures);
                tracing::warn!("cannot store cache entry {} in {}: {e}", key.name(), self.store.path().display());
                Offered::NotStored
            }
        }
    }

    /// Removes the entry for `key` and its usage record, which goes with it.
    pub(crate) fn remove_entry(&self, key: &Key) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::ReadOnlyFilesystem, "the cache is read-only"));
        }
        self.store.remove(Area::Entries, &key.name())?;
        self.reset_usage(key);
        Ok(())
    }

    /// Uploads `key`'s local entry to every shared tier this host writes to
    /// (the policy's `share`); returns whether any stored it. Runs on the
    /// worker.
    pub(crate) fn upload(&self, key: &Key) -> bool {
        self.upload_to(key, self.remotes.len())
    }

    /// Uploads `key`'s local entry to the first `tiers` tiers this host
    /// writes to: a backfill of the tiers faster than the one that had it.
    pub(crate) fn upload_to(&self, key: &Key, tiers: usize) -> bool {
        let writable: Vec<_> =
            self.remotes.iter().take(tiers).filter(|r| r.settings().mode == crate::remote::RemoteMode::ReadWrite).collect();
        if writable.is_empty() {
            return false;
        }
        match self.store.dir(Area::Entries).read(key.name()) {
            Ok(entry_bytes) => {
                // Every tier gets it, whatever the others answered.
                let mut stored = false;
                for remote in writable {
                    stored |= remote.upload(key, &entry_bytes, &self.stats);
                }
                stored
            }
            Err(e) => {
                tracing::debug!("entry {} gone before its upload: {e}", key.name());
                false
            }
        }
    }

    /// Whether a shared tier takes this host's uploads.
    pub(crate) fn writes_a_tier(&self) -> bool {
        self.remotes.iter().any(|r| r.settings().mode == crate::remote::RemoteMode::ReadWrite)
    }

    /// Records that `key`'s entry starts over with no usage.
    pub(crate) fn reset_usage(&self, key: &Key) {
        if let Err(e) = Usage::append(self.store.namespace_dir(), &[(usage::id_of(key), None)]) {
            tracing::warn!("cannot reset the usage of {} in the usage journal: {e}", key.name());
        }
    }

    /// Metadata of entry `name`, with its hits as the journal (read up to now)
    /// counts them.
    pub(crate) fn entry_meta(&self, name: &str) -> Result<EntryMeta, WitError> {
        let mut usage = self.usage.lock();
        if let Err(e) = usage.refresh(self.store.namespace_dir()) {
            tracing::debug!("cannot read the usage journal: {e}");
        }
        self.entry_meta_with(&usage, name)
    }

    /// [`Namespace::entry_meta`], with the journal already locked and read.
    pub(crate) fn entry_meta_with(&self, usage: &Usage, name: &str) -> Result<EntryMeta, WitError> {
        let key = Key::from_name(name).ok_or_else(|| invalid_entry_name(name))?;
        let facts = self.store.entry_header(name).map_err(io_error)?;
        Ok(EntryMeta {
            name: name.to_string(),
            stored_size: facts.stored_size,
            raw_size: facts.header.raw_size,
            codec: codec_to_wit(facts.header.codec),
            created: facts.header.created_ms,
            last_used: facts.last_used_ms,
            hits: usage.hits(&usage::id_of(&key)),
            cost_us: facts.header.cost_us,
        })
    }
}

/// The WIT error for a name that is not an entry's.
pub(crate) fn invalid_entry_name(name: &str) -> WitError {
    let shown: String = name.chars().take(64).collect();
    WitError::InvalidName(format!("{shown:?} is not an entry name (43 base64url characters of a SHA-256)"))
}

/// Maps a filesystem error to the WIT error classes. cap-std reports a path
/// that leads outside its directory as PermissionDenied: `denied`.
pub(crate) fn io_error(e: io::Error) -> WitError {
    match e.kind() {
        io::ErrorKind::NotFound => WitError::NotFound,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => WitError::Denied,
        io::ErrorKind::AlreadyExists => WitError::AlreadyExists,
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => WitError::Io(format!("not a valid entry: {e}")),
        _ => WitError::Io(e.to_string()),
    }
}
