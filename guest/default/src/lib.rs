//! capcache's default policy: wasmtime's cache worker, behaviour for behaviour,
//! with its setting names and defaults, less its faults:
//!
//! - entries are stored zstd-compressed at the baseline level, and recompressed at
//!   the optimized level once they have been served often enough;
//! - at most once per cleanup interval (across processes, through a lock in the
//!   policy's state), the cache is trimmed to its soft limits: when the entry count
//!   or total size exceeds its limit, least-recently-used entries are evicted until
//!   both are under their percent-if-deleting targets; entries dated too far in the
//!   future (clock drift) are the first to go; stale temporary files are removed.
//!
//! Beyond wasmtime: hot entries are stored raw, so that hosts map them instead
//! of decompressing them (a hit then costs what loading the file costs).
//! `raw-entries` (`hot`, the default; `never`, wasmtime's behaviour; `always`)
//! and `raw-entries-usage-threshold` (hits before an entry is hot; 2) set it.
//!
//! Unlike wasmtime, the cleanup lock is released after every pass (wasmtime leaves
//! its own lock behind, so a long-running process cleans only once), usage counts
//! are kept by the host with the entry (no `.stats` file per entry to orphan), and
//! every decision reads the host's clock, never a clock of its own.

wit_bindgen::generate!({
    world: "policy-world",
    path: "../../wit",
});

use capcache::policy::types::{Codec, EntryMeta, Error, LogLevel};
use capcache::policy::view;
use exports::capcache::policy::policy::{
    Action, Admission, Candidate, Guest, InvalidSetting, MaintainReport, Setting, SettingsError,
};
use std::sync::Mutex;

include!("../../common/settings.rs");
include!("../../common/report.rs");

/// State file holding the time of the last completed cleanup (decimal ms).
const LAST_CLEANUP: &str = "last-cleanup";
/// State file that exists while a process cleans; holds its start time.
const CLEANUP_LOCK: &str = "cleanup.lock";
/// Entries requested per page when listing.
const PAGE: u32 = 1024;

/// The settings, with wasmtime's names and defaults.
#[derive(Clone, Debug)]
struct Config {
    baseline_compression_level: u8,
    optimized_compression_level: u8,
    optimized_compression_usage_counter_threshold: u64,
    cleanup_interval_ms: u64,
    optimizing_compression_task_timeout_ms: u64,
    allowed_clock_drift_for_files_from_future_ms: u64,
    file_count_soft_limit: u64,
    files_total_size_soft_limit: u64,
    file_count_limit_percent_if_deleting: u8,
    files_total_size_limit_percent_if_deleting: u8,
    raw_entries: RawEntries,
    raw_entries_usage_threshold: u64,
}

/// When to store entries uncompressed, so that hosts can map them rather than
/// decompress them (capcache's own setting; wasmtime always compresses).
#[derive(Clone, Copy, Debug, PartialEq)]
enum RawEntries {
    /// Never: wasmtime's behaviour.
    Never,
    /// Entries served `raw-entries-usage-threshold` times are stored raw.
    Hot,
    /// Every entry.
    Always,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            baseline_compression_level: 3,
            optimized_compression_level: 20,
            optimized_compression_usage_counter_threshold: 256,
            cleanup_interval_ms: 3_600_000,
            optimizing_compression_task_timeout_ms: 30 * 60_000,
            allowed_clock_drift_for_files_from_future_ms: 86_400_000,
            file_count_soft_limit: 65_536,
            files_total_size_soft_limit: 512 << 20,
            file_count_limit_percent_if_deleting: 70,
            files_total_size_limit_percent_if_deleting: 70,
            raw_entries: RawEntries::Hot,
            // Served twice after being stored: used again and again, not once
            // more by chance. Raw takes 2.1 to 3.2x the disk of zstd level 3 (the
            // three workloads' artifacts).
            raw_entries_usage_threshold: 2,
        }
    }
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn config() -> Config {
    CONFIG.lock().unwrap().clone().unwrap_or_default()
}

fn invalid(setting: &Setting, expected: &str) -> SettingsError {
    SettingsError::InvalidValue(InvalidSetting {
        key: setting.key.clone(),
        value: setting.value.clone(),
        expected: expected.to_string(),
    })
}

fn parse_config(settings: &[Setting]) -> Result<Config, SettingsError> {
    let mut config = Config::default();
    const LEVEL: &str = "a zstd level from 1 to 22";
    const DURATION: &str = "a duration such as \"30s\", \"30m\", \"1h\" or \"1d\"";
    const SIZE: &str = "a size such as \"512Mi\", \"1Gi\" or a number of bytes";
    const PERCENT: &str = "a percentage from \"0%\" to \"100%\"";
    const COUNT: &str = "a whole number";
    for setting in settings {
        let value = setting.value.as_str();
        let level = || value.trim().parse::<u8>().ok().filter(|l| (1..=22).contains(l));
        match setting.key.as_str() {
            "baseline-compression-level" => {
                config.baseline_compression_level = level().ok_or_else(|| invalid(setting, LEVEL))?
            }
            "optimized-compression-level" => {
                config.optimized_compression_level = level().ok_or_else(|| invalid(setting, LEVEL))?
            }
            "optimized-compression-usage-counter-threshold" => {
                config.optimized_compression_usage_counter_threshold =
                    value.trim().parse().map_err(|_| invalid(setting, COUNT))?
            }
            "cleanup-interval" => {
                config.cleanup_interval_ms =
                    parse_duration_ms(value).ok_or_else(|| invalid(setting, DURATION))?
            }
            "optimizing-compression-task-timeout" => {
                config.optimizing_compression_task_timeout_ms =
                    parse_duration_ms(value).ok_or_else(|| invalid(setting, DURATION))?
            }
            "allowed-clock-drift-for-files-from-future" => {
                config.allowed_clock_drift_for_files_from_future_ms =
                    parse_duration_ms(value).ok_or_else(|| invalid(setting, DURATION))?
            }
            "file-count-soft-limit" => {
                config.file_count_soft_limit =
                    value.trim().parse().map_err(|_| invalid(setting, COUNT))?
            }
            "files-total-size-soft-limit" => {
                config.files_total_size_soft_limit =
                    parse_size(value).ok_or_else(|| invalid(setting, SIZE))?
            }
            "file-count-limit-percent-if-deleting" => {
                config.file_count_limit_percent_if_deleting =
                    parse_percent(value).ok_or_else(|| invalid(setting, PERCENT))?
            }
            "files-total-size-limit-percent-if-deleting" => {
                config.files_total_size_limit_percent_if_deleting =
                    parse_percent(value).ok_or_else(|| invalid(setting, PERCENT))?
            }
            "raw-entries" => {
                config.raw_entries = match value.trim() {
                    "never" => RawEntries::Never,
                    "hot" => RawEntries::Hot,
                    "always" => RawEntries::Always,
                    _ => return Err(invalid(setting, "\"never\", \"hot\" or \"always\"")),
                }
            }
            "raw-entries-usage-threshold" => {
                config.raw_entries_usage_threshold =
                    value.trim().parse().map_err(|_| invalid(setting, COUNT))?
            }
            other => return Err(SettingsError::UnknownKey(other.to_string())),
        }
    }
    if config.baseline_compression_level > config.optimized_compression_level {
        let setting = settings
            .iter()
            .rev()
            .find(|s| s.key == "baseline-compression-level")
            .or_else(|| settings.iter().rev().find(|s| s.key == "optimized-compression-level"))
            .expect("one of the levels was set");
        return Err(invalid(
            setting,
            "baseline-compression-level no greater than optimized-compression-level",
        ));
    }
    Ok(config)
}

fn log(level: LogLevel, message: &str) {
    view::log(level, message);
}

/// Reads a state file holding a decimal timestamp.
fn read_timestamp(name: &str) -> Option<u64> {
    let bytes = view::read_state(name).ok()?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

/// Whether a cleanup is due: none recorded, the last one older than the interval,
/// or one recorded too far in the future (a clock that jumped back).
fn cleanup_due(config: &Config, now: u64) -> bool {
    match read_timestamp(LAST_CLEANUP) {
        None => true,
        Some(last) => {
            now.saturating_sub(last) >= config.cleanup_interval_ms
                || last > now.saturating_add(config.allowed_clock_drift_for_files_from_future_ms)
        }
    }
}

/// Takes the cleanup lock. A lock older than both the cleanup interval and the
/// task timeout, or dated beyond the allowed clock drift, belongs to a process
/// that died: it is broken. (wasmtime judges by the interval alone, so with a
/// short interval a slow pass has its lock broken under it and two processes
/// clean at once.)
fn acquire_cleanup_lock(config: &Config, now: u64) -> Result<(), String> {
    let expiry = config.cleanup_interval_ms.max(config.optimizing_compression_task_timeout_ms);
    for _ in 0..3 {
        match view::create_state(CLEANUP_LOCK, now.to_string().as_bytes()) {
            Ok(()) => return Ok(()),
            Err(Error::AlreadyExists) => {
                let expired = match view::read_state(CLEANUP_LOCK) {
                    // Released meanwhile: try again. (Treating a vanished lock
                    // as expired would remove the next holder's lock.)
                    Err(Error::NotFound) => continue,
                    Err(e) => return Err(format!("cannot read the cleanup lock: {e:?}")),
                    Ok(bytes) => match std::str::from_utf8(&bytes).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                        Some(t) => {
                            now.saturating_sub(t) >= expiry
                                || t > now.saturating_add(config.allowed_clock_drift_for_files_from_future_ms)
                        }
                        // Unreadable: judge by the file's age.
                        None => match view::stat_state(CLEANUP_LOCK) {
                            Ok(meta) => now.saturating_sub(meta.modified) >= expiry,
                            Err(Error::NotFound) => continue,
                            Err(e) => return Err(format!("cannot stat the cleanup lock: {e:?}")),
                        },
                    },
                };
                if !expired {
                    return Err("another process holds the cleanup lock".into());
                }
                log(LogLevel::Info, "breaking an expired cleanup lock");
                let _ = view::remove_state(CLEANUP_LOCK);
            }
            Err(e) => return Err(format!("cannot create the cleanup lock: {e:?}")),
        }
    }
    Err("the cleanup lock changed hands while being taken".into())
}

fn list_all_entries() -> Result<Vec<EntryMeta>, Error> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = view::list_entries(cursor.as_deref(), PAGE)?;
        all.extend(page.entries);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

fn remove_stale_temp_files(config: &Config, now: u64) -> (u64, u64) {
    let (mut removed, mut bytes) = (0, 0);
    let mut cursor = None;
    loop {
        let page = match view::list_temp_files(cursor.as_deref(), PAGE) {
            Ok(page) => page,
            Err(e) => {
                log(LogLevel::Warn, &format!("cannot list temporary files: {e:?}"));
                break;
            }
        };
        for file in page.files {
            let age = now.saturating_sub(file.modified);
            let from_future =
                file.modified > now.saturating_add(config.allowed_clock_drift_for_files_from_future_ms);
            if (age >= config.optimizing_compression_task_timeout_ms || from_future)
                && view::remove_temp_file(&file.name).is_ok()
            {
                removed += 1;
                bytes += file.size;
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    (removed, bytes)
}

/// The cleanup pass proper, run under the lock.
fn clean(config: &Config, now: u64) -> MaintainReport {
    let mut report = empty_report(true, String::new());
    let (temp_removed, temp_bytes) = remove_stale_temp_files(config, now);
    report.removed_temp_files = temp_removed;
    report.bytes_freed += temp_bytes;

    let mut entries = match list_all_entries() {
        Ok(entries) => entries,
        Err(e) => {
            report.summary = format!("cannot list entries: {e:?}");
            return report;
        }
    };
    report.entries_seen = entries.len() as u64;
    let future_tolerance = now.saturating_add(config.allowed_clock_drift_for_files_from_future_ms);
    // Youngest first; entries from beyond the allowed drift count as the oldest,
    // so they go first when something must go (as in wasmtime).
    entries.sort_unstable_by(|a, b| {
        let (fa, fb) = (a.last_used > future_tolerance, b.last_used > future_tolerance);
        fa.cmp(&fb).then(b.last_used.cmp(&a.last_used)).then(a.name.cmp(&b.name))
    });

    let count_limit = config.file_count_soft_limit;
    let size_limit = config.files_total_size_soft_limit;
    let count_target = count_limit * config.file_count_limit_percent_if_deleting as u64 / 100;
    let size_target = size_limit as u128 * config.files_total_size_limit_percent_if_deleting as u128 / 100;
    let mut total: u128 = 0;
    let mut cut_if_deleting = None;
    let mut cut = None;
    for (index, entry) in entries.iter().enumerate() {
        total += entry.stored_size as u128;
        let count = index as u64 + 1;
        if cut_if_deleting.is_none() && (total > size_target || count > count_target) {
            cut_if_deleting = Some(index);
        }
        if total > size_limit as u128 || count > count_limit {
            cut = cut_if_deleting;
            break;
        }
    }
    let keep = cut.unwrap_or(entries.len());
    for entry in &entries[..keep] {
        report.entries_after += 1;
        report.bytes_after += entry.stored_size;
    }
    for entry in &entries[keep..] {
        match view::remove_entry(&entry.name) {
            Ok(()) | Err(Error::NotFound) => {
                if entry.last_used > future_tolerance {
                    report.removed_from_future += 1;
                } else {
                    report.evicted += 1;
                }
                report.bytes_freed += entry.stored_size;
            }
            Err(e) => {
                log(LogLevel::Warn, &format!("cannot evict {}: {e:?}", entry.name));
                report.entries_after += 1;
                report.bytes_after += entry.stored_size;
            }
        }
    }
    report.summary = format!(
        "cleaned: {} entries seen, {} evicted, {} from the future, {} stale temporary files; {} entries ({} bytes) left",
        report.entries_seen,
        report.evicted,
        report.removed_from_future,
        report.removed_temp_files,
        report.entries_after,
        report.bytes_after
    );
    report
}

struct DefaultPolicy;

impl Guest for DefaultPolicy {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        let config = parse_config(&settings)?;
        *CONFIG.lock().unwrap() = Some(config);
        Ok(())
    }

    fn admit(_candidate: Candidate) -> Admission {
        let config = config();
        if config.raw_entries == RawEntries::Always {
            return Admission::Store(Codec::Raw);
        }
        Admission::Store(Codec::Zstd(config.baseline_compression_level))
    }

    fn on_hit(entry: EntryMeta) -> Vec<Action> {
        let config = config();
        if config.raw_entries == RawEntries::Hot {
            return match entry.codec {
                Codec::Zstd(_) if entry.hits >= config.raw_entries_usage_threshold => vec![Action::Recode(Codec::Raw)],
                _ => Vec::new(),
            };
        }
        let hot = entry.hits >= config.optimized_compression_usage_counter_threshold;
        match entry.codec {
            Codec::Zstd(level) if hot && level < config.optimized_compression_level => {
                vec![Action::Recode(Codec::Zstd(config.optimized_compression_level))]
            }
            _ => Vec::new(),
        }
    }

    fn on_insert(_entry: EntryMeta) -> Vec<Action> {
        let config = config();
        if cleanup_due(&config, view::now()) {
            vec![Action::Maintain]
        } else {
            Vec::new()
        }
    }

    fn maintain(now: u64) -> MaintainReport {
        let config = config();
        if let Err(reason) = acquire_cleanup_lock(&config, now) {
            return empty_report(false, reason);
        }
        // These two lines bracket the time the lock is held; the concurrency
        // test reads them to prove two processes never clean at once.
        log(LogLevel::Debug, "cleanup started");
        let report = clean(&config, now);
        if let Err(e) = view::write_atomic(LAST_CLEANUP, now.to_string().as_bytes()) {
            log(LogLevel::Warn, &format!("cannot record the cleanup time: {e:?}"));
        }
        log(LogLevel::Debug, "cleanup finished");
        // Released after every pass: wasmtime never removes its own lock, so a
        // long-running process of wasmtime cleans only once.
        if let Err(e) = view::remove_state(CLEANUP_LOCK) {
            log(LogLevel::Warn, &format!("cannot release the cleanup lock: {e:?}"));
        }
        report
    }
}

export!(DefaultPolicy);
