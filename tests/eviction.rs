//! Cleanup to the soft limits, on schedule, for the whole life of a process;
//! and, unless told to keep wasmtime's schedule alone, as soon as what was
//! stored since the last pass may have passed a limit.


use capcache::Clock;
use std::time::Duration;
use crate::support::*;

const HOUR: Duration = Duration::from_secs(3600);

/// Inserts entries `range`, a second apart, each handled by the worker before
/// the next (so a cleanup that an insert triggers sees just what came before).
fn fill(t: &TestCache, cache: &capcache::Cache, range: std::ops::Range<u64>) {
    for i in range {
        t.clock.advance(Duration::from_secs(1));
        assert!(cache.insert(&i.to_le_bytes(), &incompressible(i, 1000)));
        cache.flush();
    }
}

#[test]
fn count_limit_is_enforced_at_every_interval_and_lru_entries_go_first() {
    let t = TestCache::new();
    // wasmtime's schedule alone: passes at the interval only.
    let cache = t.builder().settings([("file-count-soft-limit", "10"), ("cleanup-when-over-limits", "off")]).open().unwrap();
    // The first insert finds no record of a cleanup and cleans; the next
    // ones are within the interval and do not.
    fill(&t, &cache, 0..20);
    assert_eq!(t.entry_count(), 20);
    assert_eq!(cache.stats().maintain_runs, 1);

    let mut next: u64 = 20;
    // wasmtime leaves its own cleanup lock behind and cleans once per process;
    // capcache must clean at every interval.
    for round in 0..4 {
        // Use entry `next - 15`: it is old by insertion but recently used.
        let kept = next - 15;
        t.clock.advance(Duration::from_secs(1));
        assert!(cache.get(&kept.to_le_bytes()).is_some(), "round {round}");
        cache.flush();
        t.clock.advance(HOUR);
        fill(&t, &cache, next..next + 1);
        next += 1;
        // Over 10: trimmed to 70 % of the limit, least recently used first.
        assert_eq!(t.entry_count(), 7, "round {round}");
        assert!(cache.get(&kept.to_le_bytes()).is_some(), "round {round}: the recently used entry was evicted");
        assert!(cache.get(&(next - 1).to_le_bytes()).is_some(), "round {round}: the newest entry was evicted");
        assert_eq!(cache.stats().maintain_runs, round + 2);
        fill(&t, &cache, next..next + 10);
        next += 10;
    }
    // The lock is released after every pass.
    assert!(!t.root().join("default/state/cleanup.lock").exists());
}

#[test]
fn size_limit_is_enforced() {
    let t = TestCache::new();
    let cache = t
        .builder()
        .settings([
            ("files-total-size-soft-limit", "20Ki"),
            ("files-total-size-limit-percent-if-deleting", "50%"),
            ("cleanup-when-over-limits", "off"),
        ])
        .open()
        .unwrap();
    fill(&t, &cache, 0..30); // about 30 KiB
    t.clock.advance(HOUR);
    fill(&t, &cache, 30..31);
    let total: u64 = std::fs::read_dir(t.entries_dir()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(total <= 10 * 1024, "{total} bytes left, over 50 % of 20 KiB");
    assert!(total > 8 * 1024, "{total} bytes left: evicted more than needed");
}

#[test]
fn below_the_limits_nothing_is_evicted() {
    let t = TestCache::new();
    let cache = t.builder().setting("file-count-soft-limit", "10").open().unwrap();
    fill(&t, &cache, 0..10);
    t.clock.advance(HOUR);
    let report = cache.maintain().unwrap();
    assert!(report.ran);
    assert_eq!((report.entries_seen, report.evicted), (10, 0));
    assert_eq!(t.entry_count(), 10);
}

#[test]
fn entries_from_beyond_the_allowed_clock_drift_go_first() {
    let t = TestCache::new();
    let cache = t.builder().settings([("file-count-soft-limit", "10"), ("cleanup-when-over-limits", "off")]).open().unwrap();
    fill(&t, &cache, 0..11);
    let now = t.clock.now_ms();
    let set_last_used = |i: u64, ms: u64| {
        let path = cache.entry_path(&i.to_le_bytes()).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + Duration::from_millis(ms)).unwrap();
    };
    // Entry 10 (the newest) claims a use two days ahead: beyond the 1 day
    // allowed. Entry 9 claims an hour ahead: within it, so simply recent.
    set_last_used(10, now + 2 * 24 * 3600 * 1000);
    set_last_used(9, now + 3600 * 1000);
    let report = cache.maintain().unwrap();
    assert_eq!(report.removed_from_future, 1);
    assert_eq!(t.entry_count(), 7);
    assert!(cache.get(&10u64.to_le_bytes()).is_none());
    assert!(cache.get(&9u64.to_le_bytes()).is_some());
}

#[test]
fn stale_temp_files_are_removed_and_fresh_ones_kept() {
    let t = TestCache::new();
    let cache = t.open();
    let tmp = t.root().join("default/tmp");
    let now = std::time::SystemTime::now();
    for (name, age) in [("stale.tmp", 31 * 60), ("fresh.tmp", 60)] {
        let path = tmp.join(name);
        std::fs::write(&path, b"partial").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(now - Duration::from_secs(age)).unwrap();
    }
    let report = cache.maintain().unwrap();
    assert_eq!(report.removed_temp_files, 1);
    assert!(!tmp.join("stale.tmp").exists());
    assert!(tmp.join("fresh.tmp").exists());
}

#[test]
fn a_held_lock_stops_a_second_cleaner_and_an_expired_one_is_broken() {
    let t = TestCache::new();
    let cache = t.open();
    let lock = t.root().join("default/state/cleanup.lock");
    let now = t.clock.now_ms();
    std::fs::write(&lock, (now - 60_000).to_string()).unwrap();
    let report = cache.maintain().unwrap();
    assert!(!report.ran, "cleaned while another process held the lock");
    assert!(lock.exists());
    // The holder died more than an interval ago.
    std::fs::write(&lock, (now - 2 * 3600 * 1000).to_string()).unwrap();
    let report = cache.maintain().unwrap();
    assert!(report.ran, "{}", report.summary);
    assert!(!lock.exists());
}

#[test]
fn usage_of_evicted_entries_is_dropped_with_them() {
    let t = TestCache::new();
    let cache = t.builder().setting("file-count-soft-limit", "1").open().unwrap();
    cache.insert(b"a", b"1");
    for _ in 0..5 {
        cache.get(b"a");
    }
    cache.flush();
    assert_eq!(cache.entry_info(b"a").unwrap().hits, 5);
    // Limit 1, target 0: both went, and their usage with them. An insert
    // resets usage by itself, so the entry comes back the way a restore from a
    // backup would, as a file: it must not inherit the evicted entry's hits.
    let entry = t.entries_dir().join(capcache::ValueKey::of(b"a").name());
    let saved = std::fs::read(&entry).unwrap();
    t.clock.advance(HOUR);
    cache.insert(b"b", b"2");
    cache.flush();
    assert_eq!(t.entry_count(), 0);
    std::fs::write(&entry, &saved).unwrap();
    assert_eq!(cache.entry_info(b"a").unwrap().hits, 0, "the evicted entry's usage leaked into its successor");
}

#[test]
fn between_intervals_the_cache_stays_within_its_limits() {
    // By count: a pass as soon as the entries may pass 10, down to 7.
    let t = TestCache::new();
    let cache = t.builder().setting("file-count-soft-limit", "10").open().unwrap();
    for i in 0..40 {
        fill(&t, &cache, i..i + 1);
        assert!(t.entry_count() <= 10, "{} entries after insert {i}, within the hour", t.entry_count());
    }
    // The first insert's pass, then one every 4 inserts (7 kept, 4 more pass 10).
    let runs = cache.stats().maintain_runs;
    assert!((9..=11).contains(&runs), "{runs} passes for 40 inserts");

    // By size: never more than 20 KiB and one entry.
    let t = TestCache::new();
    let cache = t.builder().setting("files-total-size-soft-limit", "20Ki").open().unwrap();
    for i in 0..60 {
        fill(&t, &cache, i..i + 1);
        let total: u64 = std::fs::read_dir(t.entries_dir()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 20 * 1024, "{total} bytes after insert {i}, over the 20 KiB limit");
    }
}
