//! Counters of what the cache did, for people and for tests. Each process
//! keeps its own in memory and, when its cache closes, appends them as one
//! fixed-size record to the namespace's `stats.log` (O_APPEND: no lost
//! updates between processes); `capcache stats` adds the records up.

use cap_std::fs::{Dir, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const STATS_LOG: &str = "stats.log";
const RECORD_MAGIC: &[u8; 8] = b"CCSTATS3";

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, shared by the cache and its worker.
        #[derive(Debug, Default)]
        pub(crate) struct Stats { $(pub(crate) $name: AtomicU64,)* }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
        pub struct StatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Stats {
            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
            pub(crate) fn all(&self) -> Vec<&AtomicU64> {
                vec![$(&self.$name,)*]
            }
        }

        impl StatsSnapshot {
            fn to_array(&self) -> Vec<u64> {
                vec![$(self.$name,)*]
            }
            fn add_array(&mut self, values: &[u64]) {
                let mut values = values.iter();
                $(self.$name += values.next().copied().unwrap_or(0);)*
            }
            const COUNTERS: usize = [$(stringify!($name),)*].len();
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
    /// Entry files not trusted: owned by another user, or writable by others.
    /// Never served; removed where possible, and counted as misses.
    untrusted,
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
    /// Local misses served by the shared tier.
    remote_hits,
    /// Local misses the shared tier did not have either.
    remote_misses,
    /// Failures to talk to the shared tier (each a miss, then a cool-off).
    remote_errors,
    /// Shared-tier values refused: not a whole entry of their key, or a bad
    /// HMAC tag.
    remote_rejected,
    /// Lookups and uploads skipped while the tier cooled off after a failure.
    remote_skipped,
    /// Entries uploaded to the shared tier.
    remote_uploads,
    /// Uploads the server refused or that failed.
    remote_upload_failures,
    /// Bytes fetched from the shared tier.
    remote_bytes_in,
    /// Bytes uploaded to it.
    remote_bytes_out,
    /// Microseconds spent waiting on the shared tier.
    remote_us,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

impl StatsSnapshot {
    /// hits / (hits + misses), or 0 with no lookups.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 { 0.0 } else { self.hits as f64 / lookups as f64 }
    }

    fn record_len() -> usize {
        RECORD_MAGIC.len() + 8 * Self::COUNTERS
    }

    /// Appends these counters to the namespace's log, in one write.
    pub(crate) fn append_to(&self, dir: &Dir) -> io::Result<()> {
        self.append_to_log(dir, STATS_LOG)
    }

    /// Appends these counters to the log `name` in `dir` (a shared tier's).
    pub(crate) fn append_to_log(&self, dir: &Dir, name: &str) -> io::Result<()> {
        if *self == StatsSnapshot::default() {
            return Ok(());
        }
        let mut record = Vec::with_capacity(Self::record_len());
        record.extend_from_slice(RECORD_MAGIC);
        for value in self.to_array() {
            record.extend_from_slice(&value.to_le_bytes());
        }
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        crate::platform::create_with_mode(&mut options, crate::store::JOURNAL_MODE);
        dir.open_with(name, &options)?.write_all(&record)
    }

    /// The sum of every record in the namespace's log. Records of another
    /// layout (or torn by a crash) are skipped.
    pub(crate) fn load(dir: &Dir) -> io::Result<StatsSnapshot> {
        Self::load_from(dir, STATS_LOG)
    }

    /// The sum of every record in the log `name` in `dir`.
    pub(crate) fn load_from(dir: &Dir, name: &str) -> io::Result<StatsSnapshot> {
        let bytes = match dir.read(name) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut total = StatsSnapshot::default();
        for record in bytes.chunks_exact(Self::record_len()).filter(|r| r.starts_with(RECORD_MAGIC)) {
            let values: Vec<u64> = record[RECORD_MAGIC.len()..]
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            total.add_array(&values);
        }
        Ok(total)
    }

    /// Adds another snapshot's counters to these.
    pub fn add(&mut self, other: &StatsSnapshot) {
        self.add_array(&other.to_array());
    }
}
