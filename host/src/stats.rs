//! Counters of what the cache did, for people and for tests.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, shared by the cache and its worker.
        #[derive(Debug, Default)]
        pub(crate) struct Stats { $(pub(crate) $name: AtomicU64,)* }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct StatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Stats {
            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Lookups served from the cache.
    hits,
    /// Lookups that found nothing usable.
    misses,
    /// Values stored.
    inserts,
    /// Values the policy chose not to store.
    skipped,
    /// Entries found corrupt (bad header or checksum), removed and counted as misses.
    corrupt,
    /// Cache-side failures (I/O) that degraded to computing.
    failures,
    /// Policy calls that trapped, ran out of time or memory, or returned
    /// garbage; each fell back to the safe default.
    policy_faults,
    /// Events dropped because the worker's queue was full.
    events_dropped,
    /// Entries re-encoded at the policy's request.
    recoded,
    /// Entries removed by the policy (eviction and explicit removal).
    removed,
    /// Maintenance passes that ran.
    maintain_runs,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}
