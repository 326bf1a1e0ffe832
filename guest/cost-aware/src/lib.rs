//! A cost-aware policy: GreedyDual-Size-Frequency (Cherkasova, 1998), which
//! keeps what is dear to make again. Each entry is worth
//!
//! ```text
//! H = L + (hits + 1) × cost-us / stored-size
//! ```
//!
//! the time its misses would cost per byte it holds, times how often it is
//! used, plus the cache's inflation `L`: the worth of the last entry evicted
//! when the entry was last used. A pass evicts the least worth first, and
//! raises `L` to the worth of the last one it evicted, so that an entry not
//! used for many passes ages out however dear it once was. An LRU keeps an
//! esbuild artifact that took seconds to compile and a plugin that took a
//! millisecond alike; this policy keeps the esbuild artifact while it is
//! used, and a plugin only if it is used a great deal.
//!
//! - Settings: `max-size` (512Mi, the default policy's limit), the bytes the
//!   entries may take; a pass runs as soon as what every process stored
//!   since the last one may pass it, and evicts down to `target-percent`
//!   (70%) of it. Values are stored at zstd 3 and made raw once served twice,
//!   as the default policy does, so that `capcache policy test` compares the
//!   two on eviction alone.
//! - Memory: a pass holds the entries it will evict (their name and worth),
//!   never the whole cache. Evicting 30% of a million small entries holds
//!   300,000: within the 64 MiB, but a pass over more wants a larger limit.
//! - Every stored value is shared with the host's shared tiers, if any.

use capcache_policy::{
    Action, Admission, Candidate, Codec, EntryMeta, Lock, LogLevel, MaintainReport, Policy, Setting, SettingsError, log, now,
    view,
};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Mutex;

const CLEANUP_LOCK: &str = "cleanup.lock";
/// State file: "bytes" the entries took after the last pass plus what every
/// process stored since (an estimate, as the default policy's).
const ESTIMATED: &str = "estimated-bytes";
/// State file: the inflation's history, one "time L" line per pass, oldest
/// first, so that an entry's worth is reckoned from the `L` of its last use.
const INFLATION: &str = "inflation";
/// Passes whose inflation is remembered; an entry last used before the
/// oldest of them counts from `L` = 0, the least worth there is.
const INFLATION_KEPT: usize = 64;
const HOUR: u64 = 3_600_000;

#[derive(Clone, Copy)]
struct Config {
    max_size: u64,
    target_percent: u8,
}

static CONFIG: Mutex<Config> = Mutex::new(Config { max_size: 512 << 20, target_percent: 70 });

fn config() -> Config {
    *CONFIG.lock().unwrap()
}

fn read_text(name: &str) -> Option<String> {
    String::from_utf8(view::read_state(name).ok()?).ok()
}

fn write_text(name: &str, text: &str) {
    if let Err(e) = view::write_state(name, text.as_bytes()) {
        log(LogLevel::Warn, format!("cannot record {name}: {e:?}"));
    }
}

/// The inflation history: (time of a pass, `L` after it), oldest first.
fn inflation() -> Vec<(u64, f64)> {
    let text = read_text(INFLATION).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (time, value) = line.split_once(' ')?;
            Some((time.parse().ok()?, value.parse().ok()?))
        })
        .collect()
}

/// `L` as it stood at `time`: that of the last pass before it.
fn inflation_at(history: &[(u64, f64)], time: u64) -> f64 {
    let passes_before = history.partition_point(|(at, _)| *at <= time);
    if passes_before == 0 { 0.0 } else { history[passes_before - 1].1 }
}

/// An entry's worth (see the module's docs); an unknown cost counts as the
/// cheapest, one microsecond.
fn worth(entry: &EntryMeta, history: &[(u64, f64)]) -> f64 {
    let per_byte = entry.cost_us.max(1) as f64 / entry.stored_size.max(1) as f64;
    inflation_at(history, entry.last_used) + (entry.hits + 1) as f64 * per_byte
}

/// A candidate for eviction, ordered by worth: the heap's top is the one
/// most worth keeping after all.
struct Evictable {
    worth: f64,
    entry: EntryMeta,
}

impl PartialEq for Evictable {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Evictable {}
impl PartialOrd for Evictable {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Evictable {
    fn cmp(&self, other: &Self) -> Ordering {
        self.worth.total_cmp(&other.worth).then_with(|| self.entry.name.cmp(&other.entry.name))
    }
}

/// The pass proper: evicts the least worth until the entries take at most
/// the target; returns the worth of the last evicted, the new `L`.
fn clean(config: Config, history: &[(u64, f64)], report: &mut MaintainReport) -> Result<Option<f64>, String> {
    let mut listing = capcache_policy::entries();
    let totals = listing.totals().map_err(|e| format!("cannot list entries: {e:?}"))?;
    report.entries_seen = totals.entries;
    let target = (config.max_size as u128 * config.target_percent as u128 / 100) as u64;
    let mut left = totals;
    if totals.bytes > config.max_size {
        // The least worth whose bytes make up the excess, in one pass over
        // the listing: a max-heap whose top leaves once the rest suffice.
        let excess = totals.bytes - target;
        let mut chosen: BinaryHeap<Evictable> = BinaryHeap::new();
        let mut chosen_bytes = 0u64;
        for entry in listing {
            let entry = entry.map_err(|e| format!("cannot list entries: {e:?}"))?;
            chosen_bytes += entry.stored_size;
            chosen.push(Evictable { worth: worth(&entry, history), entry });
            while chosen.peek().is_some_and(|top| chosen_bytes - top.entry.stored_size >= excess) {
                let top = chosen.pop().expect("peeked");
                chosen_bytes -= top.entry.stored_size;
            }
        }
        let mut last = None;
        for candidate in chosen.into_sorted_vec() {
            if report.evict(&candidate.entry) {
                left.entries -= 1;
                left.bytes -= candidate.entry.stored_size;
            }
            last = Some(candidate.worth);
        }
        report.entries_after = left.entries;
        report.bytes_after = left.bytes;
        return Ok(last);
    }
    report.entries_after = left.entries;
    report.bytes_after = left.bytes;
    Ok(None)
}

struct CostAware;

impl Policy for CostAware {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        capcache_policy::log_panics();
        let mut config = Config { max_size: 512 << 20, target_percent: 70 };
        for setting in &settings {
            match setting.key.as_str() {
                "max-size" => config.max_size = setting.size()?,
                "target-percent" => config.target_percent = setting.percent()?,
                _ => return Err(setting.unknown()),
            }
        }
        *CONFIG.lock().unwrap() = config;
        Ok(())
    }

    fn admit(_: Candidate) -> Admission {
        Admission::Store(Codec::Zstd(3))
    }

    fn on_hit(entry: EntryMeta) -> Vec<Action> {
        match entry.codec {
            Codec::Zstd(_) if entry.hits >= 2 => {
                // Raw takes more disk: it counts as stored.
                add_estimated(entry.raw_size.saturating_sub(entry.stored_size));
                vec![Action::Recode(Codec::Raw)]
            }
            _ => Vec::new(),
        }
    }

    fn on_insert(entry: EntryMeta) -> Vec<Action> {
        let estimated = add_estimated(entry.stored_size);
        if estimated > config().max_size { vec![Action::Share, Action::Maintain] } else { vec![Action::Share] }
    }

    fn maintain() -> MaintainReport {
        let config = config();
        let Ok(Some(_lock)) = Lock::take(CLEANUP_LOCK, HOUR) else {
            return MaintainReport::skipped("another process holds the cleanup lock");
        };
        let now = now();
        let mut report = MaintainReport::started();
        report.remove_temp_files_older_than(HOUR, now);
        let mut history = inflation();
        match clean(config, &history, &mut report) {
            Ok(evicted_worth) => {
                write_text(ESTIMATED, &report.bytes_after.to_string());
                if let Some(worth) = evicted_worth {
                    history.push((now, worth));
                    let from = history.len().saturating_sub(INFLATION_KEPT);
                    let lines: Vec<String> = history[from..].iter().map(|(at, l)| format!("{at} {l}")).collect();
                    write_text(INFLATION, &lines.join("\n"));
                }
                report.finish()
            }
            Err(why) => MaintainReport::skipped(why),
        }
    }
}

/// Adds `bytes` to the shared estimate; returns the new estimate.
fn add_estimated(bytes: u64) -> u64 {
    let now = read_text(ESTIMATED).and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0).saturating_add(bytes);
    write_text(ESTIMATED, &now.to_string());
    now
}

capcache_policy::export_policy!(CostAware);
