//! The worked example of docs/writing-a-policy.md (a test checks that the
//! guide shows this file's code): keep at most `max-entries`, evict those
//! served least often first, and store entries raw once served `hot-hits`
//! times.

use capcache_policy::{
    Action, Admission, Candidate, Codec, EntryMeta, Lock, MaintainReport, Periodic, Policy, Setting, SettingsError, now,
};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static MAX_ENTRIES: AtomicU64 = AtomicU64::new(10_000);
static HOT_HITS: AtomicU64 = AtomicU64::new(3);
const CLEANUP: Periodic = Periodic::new("last-cleanup", 15 * 60_000);

struct FewestHitsFirst;

impl Policy for FewestHitsFirst {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        capcache_policy::log_panics();
        for setting in &settings {
            match setting.key.as_str() {
                "max-entries" => MAX_ENTRIES.store(setting.count()?, Relaxed),
                "hot-hits" => HOT_HITS.store(setting.count()?, Relaxed),
                _ => return Err(setting.unknown()),
            }
        }
        Ok(())
    }

    fn admit(_: Candidate) -> Admission {
        Admission::Store(Codec::Zstd(3))
    }

    fn on_hit(entry: EntryMeta) -> Vec<Action> {
        match entry.codec {
            // Hot: stored raw, then shared (the shared tiers get only what is
            // used again, in the form that loads fastest).
            Codec::Zstd(_) if entry.hits >= HOT_HITS.load(Relaxed) => vec![Action::Recode(Codec::Raw), Action::Share],
            _ => vec![],
        }
    }

    fn on_insert(_: EntryMeta) -> Vec<Action> {
        if CLEANUP.due(now()) { vec![Action::Maintain] } else { vec![] }
    }

    fn maintain() -> MaintainReport {
        let Ok(Some(_lock)) = Lock::take("cleanup.lock", 60 * 60_000) else {
            return MaintainReport::skipped("another process is cleaning");
        };
        let keep = MAX_ENTRIES.load(Relaxed) as usize;
        let mut report = MaintainReport::started();
        // The `keep` most served (then most recently used, then first by
        // name), found in one listing holding only them: memory grows with
        // max-entries, not with the cache.
        let mut best = BinaryHeap::with_capacity(keep + 1);
        for entry in capcache_policy::entries() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return MaintainReport::skipped(format!("cannot list entries: {e:?}")),
            };
            best.push(Reverse((entry.hits, entry.last_used, Reverse(entry.name))));
            if best.len() > keep {
                best.pop();
            }
        }
        // (A BTreeSet: a HashSet's random seed asks WASI, which traps.)
        let kept: BTreeSet<String> = best.into_iter().map(|Reverse((_, _, Reverse(name)))| name).collect();
        // Then the rest go.
        for entry in capcache_policy::entries() {
            let Ok(entry) = entry else { break };
            report.saw(&entry);
            if kept.contains(&entry.name) { report.kept(&entry) } else { report.evict(&entry); }
        }
        report.remove_temp_files_older_than(60 * 60_000, now());
        let _ = CLEANUP.done(now());
        report.finish()
    }
}

capcache_policy::export_policy!(FewestHitsFirst);
