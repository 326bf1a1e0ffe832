//! The worked example of docs/writing-a-policy.md (a test checks that the
//! guide shows this file's code): keep at most `max-entries`, evict those
//! served least often first, and store entries raw once served `hot-hits`
//! times.

use capcache_policy::{
    Action, Admission, Candidate, Codec, EntryMeta, Lock, MaintainReport, Periodic, Policy, Setting, SettingsError, now,
};
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
            Codec::Zstd(_) if entry.hits >= HOT_HITS.load(Relaxed) => vec![Action::Recode(Codec::Raw)],
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
        let mut entries = match capcache_policy::all_entries() {
            Ok(entries) => entries,
            Err(e) => return MaintainReport::skipped(format!("cannot list entries: {e:?}")),
        };
        // Most served first, then most recently used.
        entries.sort_by(|a, b| b.hits.cmp(&a.hits).then(b.last_used.cmp(&a.last_used)));
        let keep = MAX_ENTRIES.load(Relaxed) as usize;
        let mut report = MaintainReport::started();
        for (index, entry) in entries.iter().enumerate() {
            report.saw(entry);
            if index < keep { report.kept(entry) } else { report.evict(entry); }
        }
        report.remove_temp_files_older_than(60 * 60_000, now());
        let _ = CLEANUP.done(now());
        report.finish()
    }
}

capcache_policy::export_policy!(FewestHitsFirst);
