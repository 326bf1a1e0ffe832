//! A size-tiered policy: each entry is stored the way that costs least for
//! how it is used.
//!
//! - Small values (below `raw-below`, 1Mi) are stored raw at once: a host maps
//!   a raw entry instead of decompressing it, and small ones cost little disk.
//! - Larger values are stored cold, at zstd `cold-level` (19): they may never
//!   be used again, and then they take the least disk.
//! - An entry served `hot-hits` times (2) is made raw: it is used again and
//!   again, so every hit saves its decompression.
//! - The least recently used entries are evicted until the entries take at
//!   most 90% of `max-size` (1Gi) on disk: once per `cleanup-interval` (1h)
//!   across processes, and as soon as this process's own inserts since the
//!   last pass may have taken the cache past `max-size`. Temporary files older
//!   than an hour are removed too.

use capcache_policy::{
    Action, Admission, Candidate, Codec, EntryMeta, Limits, Lock, MaintainReport, Periodic, Policy, Setting, SettingsError, now,
};
use std::sync::Mutex;

const CLEANUP: Periodic = Periodic::new("last-cleanup", HOUR);
const CLEANUP_LOCK: &str = "cleanup.lock";
const HOUR: u64 = 3_600_000;

#[derive(Clone, Copy)]
struct Config {
    raw_below: u64,
    cold_level: u8,
    hot_hits: u64,
    max_size: u64,
    cleanup: Periodic,
}

const DEFAULTS: Config = Config { raw_below: 1 << 20, cold_level: 19, hot_hits: 2, max_size: 1 << 30, cleanup: CLEANUP };

static CONFIG: Mutex<Config> = Mutex::new(DEFAULTS);

/// What the entries took after the last pass, plus what this process stored
/// since: an estimate (other processes store too, and a fault resets it, which
/// only brings the next pass sooner).
static ESTIMATED_BYTES: Mutex<u64> = Mutex::new(u64::MAX);

fn config() -> Config {
    *CONFIG.lock().unwrap()
}

struct SizeTiered;

impl Policy for SizeTiered {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        capcache_policy::log_panics();
        let mut config = DEFAULTS;
        for setting in &settings {
            match setting.key.as_str() {
                "raw-below" => config.raw_below = setting.size()?,
                "cold-level" => config.cold_level = setting.zstd_level()?,
                "hot-hits" => config.hot_hits = setting.count()?,
                "max-size" => config.max_size = setting.size()?,
                "cleanup-interval" => config.cleanup = CLEANUP.every(setting.duration_ms()?),
                _ => return Err(setting.unknown()),
            }
        }
        *CONFIG.lock().unwrap() = config;
        Ok(())
    }

    fn admit(candidate: Candidate) -> Admission {
        let config = config();
        if candidate.raw_size < config.raw_below {
            Admission::Store(Codec::Raw)
        } else {
            Admission::Store(Codec::Zstd(config.cold_level))
        }
    }

    fn on_hit(entry: EntryMeta) -> Vec<Action> {
        match entry.codec {
            Codec::Zstd(_) if entry.hits >= config().hot_hits => vec![Action::Recode(Codec::Raw)],
            _ => Vec::new(),
        }
    }

    fn on_insert(entry: EntryMeta) -> Vec<Action> {
        let config = config();
        let mut estimate = ESTIMATED_BYTES.lock().unwrap();
        *estimate = estimate.saturating_add(entry.stored_size);
        // Every stored value is shared, if the host has shared tiers.
        if *estimate > config.max_size || config.cleanup.due(now()) { vec![Action::Share, Action::Maintain] } else { vec![Action::Share] }
    }

    fn maintain() -> MaintainReport {
        let config = config();
        let now = now();
        let Ok(Some(_lock)) = Lock::take(CLEANUP_LOCK, HOUR) else {
            return MaintainReport::skipped("another process holds the cleanup lock");
        };
        let mut report = MaintainReport::started();
        report.remove_temp_files_older_than(HOUR, now);
        // Over the limit, the least recently used go until the bytes fit in
        // 90% of it, so that passes are not back to back.
        let limits = Limits { entries: u64::MAX, bytes: config.max_size };
        let targets = Limits { entries: u64::MAX, bytes: config.max_size / 10 * 9 };
        if let Err(e) = capcache_policy::trim_least_recently_used(&mut report, limits, targets, None) {
            return MaintainReport::skipped(format!("cannot list entries: {e:?}"));
        }
        *ESTIMATED_BYTES.lock().unwrap() = report.bytes_after;
        let _ = config.cleanup.done(now);
        report.finish()
    }
}

capcache_policy::export_policy!(SizeTiered);
