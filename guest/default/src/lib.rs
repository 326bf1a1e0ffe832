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
//! Beyond wasmtime: a cache does not grow past its limits between cleanups. A
//! pass also runs as soon as what was stored since the last one (by every
//! process, summed in the policy's state) may have taken the cache past its
//! size or count limit; it evicts down to the percent-if-deleting targets, so
//! such passes stay rare. wasmtime cleans only once per interval, and a busy
//! cache grows without bound in between; `cleanup-when-over-limits` = `off`
//! gives wasmtime's behaviour back.
//!
//! Hot entries are stored raw, so that hosts map them instead
//! of decompressing them (a hit then costs what loading the file costs).
//! `raw-entries` (`hot`, the default; `never`, wasmtime's behaviour; `always`)
//! and `raw-entries-usage-threshold` (hits before an entry is hot; 2) set it.
//!
//! A pass holds one page of entries in memory, whatever their number
//! (wasmtime, and this policy before contract 0.3, sorted them all).
//! Every value stored is shared with the host's shared tiers, if it has any.
//!
//! Unlike wasmtime, the cleanup lock is released after every pass (wasmtime leaves
//! its own lock behind, so a long-running process cleans only once), usage counts
//! are kept by the host with the entry (no `.stats` file per entry to orphan), and
//! every decision reads the host's clock, never a clock of its own.

use capcache_policy::{
    Action, Admission, Candidate, Codec, EntryMeta, Limits, LogLevel, Lock, MaintainReport, Policy, Setting, SettingsError, log,
    view,
};
use std::sync::Mutex;

/// State file holding the time of the last completed cleanup (decimal ms).
const LAST_CLEANUP: &str = "last-cleanup";
/// The lock held while a process cleans (a state file).
const CLEANUP_LOCK: &str = "cleanup.lock";
/// State file: what the entries took after the last cleanup ("bytes count").
const AFTER_CLEANUP: &str = "after-cleanup";
/// State file: what was stored since the last cleanup, and what recoding to
/// raw added ("bytes count"), summed by every process. An estimate: two
/// processes that add at the same moment may lose one's share, which delays
/// the pass by that much.
const STORED_SINCE: &str = "stored-since-cleanup";

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
    /// Whether a pass also runs when what was stored since the last one may
    /// pass a limit (capcache's; wasmtime waits for the interval).
    cleanup_when_over_limits: bool,
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
            // more by chance. Raw takes two to three times the disk of zstd
            // level 3, so only what is used again is worth it.
            raw_entries_usage_threshold: 2,
            cleanup_when_over_limits: true,
        }
    }
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn config() -> Config {
    CONFIG.lock().unwrap().clone().unwrap_or_default()
}

fn parse_config(settings: &[Setting]) -> Result<Config, SettingsError> {
    let mut config = Config::default();
    for setting in settings {
        match setting.key.as_str() {
            "baseline-compression-level" => config.baseline_compression_level = setting.zstd_level()?,
            "optimized-compression-level" => config.optimized_compression_level = setting.zstd_level()?,
            "optimized-compression-usage-counter-threshold" => {
                config.optimized_compression_usage_counter_threshold = setting.count()?
            }
            "cleanup-interval" => config.cleanup_interval_ms = setting.duration_ms()?,
            "optimizing-compression-task-timeout" => config.optimizing_compression_task_timeout_ms = setting.duration_ms()?,
            "allowed-clock-drift-for-files-from-future" => {
                config.allowed_clock_drift_for_files_from_future_ms = setting.duration_ms()?
            }
            "file-count-soft-limit" => config.file_count_soft_limit = setting.count()?,
            "files-total-size-soft-limit" => config.files_total_size_soft_limit = setting.size()?,
            "file-count-limit-percent-if-deleting" => config.file_count_limit_percent_if_deleting = setting.percent()?,
            "files-total-size-limit-percent-if-deleting" => {
                config.files_total_size_limit_percent_if_deleting = setting.percent()?
            }
            "raw-entries" => {
                config.raw_entries =
                    setting.one_of(&[("never", RawEntries::Never), ("hot", RawEntries::Hot), ("always", RawEntries::Always)])?
            }
            "raw-entries-usage-threshold" => config.raw_entries_usage_threshold = setting.count()?,
            "cleanup-when-over-limits" => config.cleanup_when_over_limits = setting.one_of(&[("on", true), ("off", false)])?,
            _ => return Err(setting.unknown()),
        }
    }
    if config.baseline_compression_level > config.optimized_compression_level {
        let setting = settings
            .iter()
            .rev()
            .find(|s| s.key == "baseline-compression-level")
            .or_else(|| settings.iter().rev().find(|s| s.key == "optimized-compression-level"))
            .expect("one of the levels was set");
        return Err(setting.invalid("baseline-compression-level no greater than optimized-compression-level"));
    }
    Ok(config)
}

/// Reads a state file holding a decimal timestamp.
fn read_timestamp(name: &str) -> Option<u64> {
    let bytes = view::read_state(name).ok()?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

/// A state file holding two decimal numbers.
fn read_pair(name: &str) -> Option<(u64, u64)> {
    let bytes = view::read_state(name).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>());
    match (numbers.next(), numbers.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Some((a, b)),
        _ => None,
    }
}

fn write_pair(name: &str, (a, b): (u64, u64)) {
    if let Err(e) = view::write_state(name, format!("{a} {b}").as_bytes()) {
        log(LogLevel::Warn, format!("cannot record {name}: {e:?}"));
    }
}

/// Counts `bytes` and `entries` more stored since the last cleanup.
fn add_stored(bytes: u64, entries: u64) {
    let (b, e) = read_pair(STORED_SINCE).unwrap_or((0, 0));
    write_pair(STORED_SINCE, (b.saturating_add(bytes), e.saturating_add(entries)));
}

/// Whether what the last cleanup left, plus what was stored since, may pass
/// a limit. Unknown before the first cleanup (which the interval brings at
/// once).
fn limits_may_be_passed(config: &Config) -> bool {
    let Some((bytes_after, entries_after)) = read_pair(AFTER_CLEANUP) else { return false };
    let (bytes, entries) = read_pair(STORED_SINCE).unwrap_or((0, 0));
    bytes_after.saturating_add(bytes) > config.files_total_size_soft_limit
        || entries_after.saturating_add(entries) > config.file_count_soft_limit
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

/// How long a cleanup lock is honoured: a lock older than both the cleanup
/// interval and the task timeout belongs to a process that died. (wasmtime
/// judges by the interval alone, so with a short interval a slow pass has its
/// lock broken under it and two processes clean at once.)
fn lock_stale_after(config: &Config) -> u64 {
    config.cleanup_interval_ms.max(config.optimizing_compression_task_timeout_ms)
}

fn remove_stale_temp_files(config: &Config, now: u64, report: &mut MaintainReport) {
    for file in capcache_policy::temp_files() {
        let file = match file {
            Ok(file) => file,
            Err(e) => {
                log(LogLevel::Warn, format!("cannot list temporary files: {e:?}"));
                break;
            }
        };
        let age = now.saturating_sub(file.modified);
        let from_future = file.modified > now.saturating_add(config.allowed_clock_drift_for_files_from_future_ms);
        if age >= config.optimizing_compression_task_timeout_ms || from_future {
            report.remove_temp_file(&file);
        }
    }
}

/// The cleanup pass proper, run under the lock; an `Err` with the report if
/// the entries could not be listed (what they take is then unknown). It
/// holds one page of entries at a time, however many there are: when the
/// entries pass a limit, the least recently used are evicted until both
/// count and size are within their percent-if-deleting targets, entries from
/// beyond the allowed drift first (as in wasmtime, they count as the oldest).
fn clean(config: &Config, now: u64) -> Result<MaintainReport, MaintainReport> {
    let mut report = MaintainReport::started();
    remove_stale_temp_files(config, now, &mut report);
    let limits = Limits { entries: config.file_count_soft_limit, bytes: config.files_total_size_soft_limit };
    let targets = Limits {
        entries: percent_of(config.file_count_soft_limit, config.file_count_limit_percent_if_deleting),
        bytes: percent_of(config.files_total_size_soft_limit, config.files_total_size_limit_percent_if_deleting),
    };
    let future_after = now.saturating_add(config.allowed_clock_drift_for_files_from_future_ms);
    if let Err(e) = capcache_policy::trim_least_recently_used(&mut report, limits, targets, Some(future_after)) {
        report.summary = format!("cannot list entries: {e:?}");
        return Err(report);
    }
    // The trim's own note (a pass cut short), after the counts.
    let note = std::mem::take(&mut report.summary);
    let counts = report.clone().finish().summary;
    report.summary = if note.is_empty() { format!("cleaned: {counts}") } else { format!("cleaned: {counts}; {note}") };
    Ok(report)
}

/// `percent` of `limit`, rounded down, without overflow.
fn percent_of(limit: u64, percent: u8) -> u64 {
    (limit as u128 * percent as u128 / 100) as u64
}

struct DefaultPolicy;

impl Policy for DefaultPolicy {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        capcache_policy::log_panics();
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
                Codec::Zstd(_) if entry.hits >= config.raw_entries_usage_threshold => {
                    // Raw takes more disk: it counts as stored.
                    if config.cleanup_when_over_limits {
                        add_stored(entry.raw_size.saturating_sub(entry.stored_size), 0);
                    }
                    vec![Action::Recode(Codec::Raw)]
                }
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

    fn on_insert(entry: EntryMeta) -> Vec<Action> {
        let config = config();
        if config.cleanup_when_over_limits {
            add_stored(entry.stored_size, 1);
        }
        // Every stored value goes to the shared tiers, if the host has any.
        let mut actions = vec![Action::Share];
        if cleanup_due(&config, view::now()) || config.cleanup_when_over_limits && limits_may_be_passed(&config) {
            actions.push(Action::Maintain);
        }
        actions
    }

    fn maintain() -> MaintainReport {
        let config = config();
        let now = view::now();
        let lock = match Lock::take(CLEANUP_LOCK, lock_stale_after(&config)) {
            Ok(Some(lock)) => lock,
            Ok(None) => return MaintainReport::skipped("another process holds the cleanup lock"),
            Err(e) => return MaintainReport::skipped(format!("cannot take the cleanup lock: {e:?}")),
        };
        // These two lines bracket the time the lock is held; the concurrency
        // test reads them to prove two processes never clean at once.
        log(LogLevel::Debug, "cleanup started");
        let cleaned = clean(&config, now);
        if let Err(e) = view::write_state(LAST_CLEANUP, now.to_string().as_bytes()) {
            log(LogLevel::Warn, format!("cannot record the cleanup time: {e:?}"));
        }
        if let Ok(report) = &cleaned {
            write_pair(AFTER_CLEANUP, (report.bytes_after, report.entries_after));
            write_pair(STORED_SINCE, (0, 0));
        }
        let report = cleaned.unwrap_or_else(|report| report);
        log(LogLevel::Debug, "cleanup finished");
        // Released after every pass: wasmtime never removes its own lock, so a
        // long-running process of wasmtime cleans only once.
        drop(lock);
        report
    }
}

capcache_policy::export_policy!(DefaultPolicy);
