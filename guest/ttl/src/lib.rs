//! A time-to-live policy, for caches that must not grow without bound and
//! have no use for a size limit, such as a CI runner's:
//!
//! - every value is stored at zstd `level` (3);
//! - an entry not served for `ttl` (7d) is removed, and so is one stored more
//!   than `max-age` ago (off by default: `0`), however hot, so that a cache
//!   never serves an artifact older than the operator wants;
//! - the check runs once per `cleanup-interval` (1h), across processes, and
//!   removes temporary files older than an hour too.

use capcache_policy::{
    Action, Admission, Candidate, Codec, EntryMeta, Lock, MaintainReport, Periodic, Policy, Setting, SettingsError, now,
};
use std::sync::Mutex;

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;
const CLEANUP: Periodic = Periodic::new("last-cleanup", HOUR);
const CLEANUP_LOCK: &str = "cleanup.lock";

#[derive(Clone, Copy)]
struct Config {
    level: u8,
    ttl: u64,
    /// 0: no limit.
    max_age: u64,
    cleanup: Periodic,
}

const DEFAULTS: Config = Config { level: 3, ttl: 7 * DAY, max_age: 0, cleanup: CLEANUP };

static CONFIG: Mutex<Config> = Mutex::new(DEFAULTS);

fn config() -> Config {
    *CONFIG.lock().unwrap()
}

/// Whether `entry` has outlived the settings at `now`.
fn expired(config: &Config, entry: &EntryMeta, now: u64) -> bool {
    now.saturating_sub(entry.last_used) >= config.ttl
        || (config.max_age > 0 && now.saturating_sub(entry.created) >= config.max_age)
}

struct Ttl;

impl Policy for Ttl {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        capcache_policy::log_panics();
        let mut config = DEFAULTS;
        for setting in &settings {
            match setting.key.as_str() {
                "level" => config.level = setting.zstd_level()?,
                "ttl" => config.ttl = setting.duration_ms()?,
                "max-age" if setting.value.trim() == "0" => config.max_age = 0,
                "max-age" => config.max_age = setting.duration_ms()?,
                "cleanup-interval" => config.cleanup = CLEANUP.every(setting.duration_ms()?),
                _ => return Err(setting.unknown()),
            }
        }
        if config.ttl == 0 {
            let setting = settings.iter().rev().find(|s| s.key == "ttl").expect("ttl was set to 0");
            return Err(setting.invalid("a duration longer than 0, such as \"1d\""));
        }
        *CONFIG.lock().unwrap() = config;
        Ok(())
    }

    fn admit(_candidate: Candidate) -> Admission {
        Admission::Store(Codec::Zstd(config().level))
    }

    fn on_hit(entry: EntryMeta) -> Vec<Action> {
        // Past its maximum age, an entry goes even while it is used.
        if expired(&config(), &entry, now()) { vec![Action::Remove] } else { Vec::new() }
    }

    fn on_insert(_entry: EntryMeta) -> Vec<Action> {
        // Every stored value is shared, if the host has shared tiers.
        if config().cleanup.due(now()) { vec![Action::Share, Action::Maintain] } else { vec![Action::Share] }
    }

    fn maintain() -> MaintainReport {
        let config = config();
        let now = now();
        let Ok(Some(_lock)) = Lock::take(CLEANUP_LOCK, HOUR) else {
            return MaintainReport::skipped("another process holds the cleanup lock");
        };
        let mut report = MaintainReport::started();
        report.remove_temp_files_older_than(HOUR, now);
        for entry in capcache_policy::entries() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return MaintainReport::skipped(format!("cannot list entries: {e:?}")),
            };
            report.saw(&entry);
            if expired(&config, &entry, now) {
                report.evict(&entry);
            } else {
                report.kept(&entry);
            }
        }
        let _ = config.cleanup.done(now);
        report.finish()
    }
}

capcache_policy::export_policy!(Ttl);
