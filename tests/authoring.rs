//! Writing a policy: contract 0.2's lock and namespace, the example policies
//! written with the SDK, the simulator (`capcache policy test` and its library
//! API) and `capcache policy new`.

use crate::support::*;
use capcache::{Clock, Lookup, Simulation, StoredCodec, Workload};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_policy_that_faults_while_holding_the_lock_releases_it() {
    let t = TestCache::new();
    let cache = t.builder().policy(guest_policy("hostile")).setting("mode", "lock-then-trap").open().unwrap();
    let lock = t.root().join("default/state/cleanup.lock");
    assert_eq!(cache.maintain(), None, "the pass trapped: no report");
    assert_eq!(cache.stats().policy_faults, 1);
    assert!(!lock.exists(), "the faulted instance's lock was left behind");
}

#[test]
fn a_lock_of_another_holder_is_kept_until_stale_then_broken_and_one_from_the_future_broken_at_once() {
    let t = TestCache::new();
    let cache = t.open();
    let lock = t.root().join("default/state/cleanup.lock");
    // Another process's lock, taken a minute ago, then 59 minutes ago: not
    // stale (the default policy breaks a lock older than both its cleanup
    // interval, 1 h, and its task timeout, 30 min): the pass does not run.
    for minutes in [1, 59] {
        let theirs = format!("{} 4242-0\n", t.clock.now_ms() - minutes * 60_000);
        std::fs::write(&lock, &theirs).unwrap();
        assert!(!cache.maintain().unwrap().ran, "a lock {minutes} min old was broken");
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), theirs, "someone else's lock was touched");
    }
    // Taken 61 minutes ago and never released (its holder died): stale, broken.
    std::fs::write(&lock, format!("{} 4242-0\n", t.clock.now_ms() - 61 * 60_000)).unwrap();
    assert!(cache.maintain().unwrap().ran, "a stale lock was kept");
    assert!(!lock.exists(), "the pass did not release its lock");
    // Dated two hours in the future (a clock that jumped back): broken.
    t.clock.advance(std::time::Duration::from_secs(2 * 3600));
    std::fs::write(&lock, format!("{} 4242-0\n", t.clock.now_ms() + 2 * 3_600_000)).unwrap();
    assert!(cache.maintain().unwrap().ran);
    assert!(!lock.exists(), "the pass did not release its lock");
}

#[test]
fn the_view_names_the_namespace_it_serves() {
    let t = TestCache::new();
    for namespace in ["default", "engine-1234"] {
        let cache =
            t.builder().namespace(namespace).policy(guest_policy("hostile")).setting("mode", "namespace").open().unwrap();
        assert_eq!(cache.maintain().unwrap().summary, namespace);
    }
}

#[test]
fn the_default_policy_holds_its_limit_after_every_pass_in_a_simulation() {
    let mut sim = Simulation::new(&capcache::Policy::default(), [("files-total-size-soft-limit", "256Mi")]).unwrap();
    let workload = Workload { operations: 20_000, ..Workload::default() };
    sim.run(&workload);
    let report = sim.report();
    assert_eq!(report.operations, 20_000);
    assert_eq!(report.hits + report.misses, 20_000);
    assert_eq!(report.faults, 0, "{:?}", report.fault_reasons);
    assert!(report.passes >= 5, "20,000 s of simulated time is past 5 hourly cleanups; {} passes ran", report.passes);
    assert!(report.bytes_after_passes.iter().all(|&b| b <= 256 << 20), "{:?}", report.bytes_after_passes);
    assert!(report.peak_bytes > 256 << 20, "between passes the cache grows past its soft limit, as wasmtime's does");
    assert!(report.removed > 0 && report.admitted["zstd-3"] == report.misses);
    assert!(report.temp_files_at_end < report.temp_files_left_by_crashes, "stale temporary files were never removed");
    assert_eq!(report.call_times["on-hit"].calls, report.hits);
}

#[test]
fn a_simulation_replays_the_same_seed_the_same_way() {
    let run = |seed| {
        let mut sim = Simulation::new(&capcache::Policy::default(), [("raw-entries", "never")]).unwrap();
        sim.run(&Workload { operations: 3_000, seed, ..Workload::default() });
        let r = sim.report();
        (r.hits, r.misses, r.removed, r.bytes_at_end)
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn the_size_tiered_policy_stores_small_values_raw_large_ones_cold_and_hot_ones_raw() {
    let policy = guest_policy("size-tiered");
    let mut sim = Simulation::new(&policy, [("raw-below", "1Mi"), ("cold-level", "19")]).unwrap();
    assert_eq!(sim.load(b"small", 100 << 10), Lookup::Miss { stored: true });
    assert_eq!(sim.load(b"large", 30 << 20), Lookup::Miss { stored: true });
    let codec_of = |sim: &Simulation, size: u64| sim.entries().into_iter().find(|e| e.raw_size == size).unwrap().codec;
    assert_eq!(codec_of(&sim, 100 << 10), StoredCodec::Raw);
    assert_eq!(codec_of(&sim, 30 << 20), StoredCodec::Zstd { level: 19 });
    assert_eq!(sim.load(b"large", 30 << 20), Lookup::Hit);
    assert_eq!(codec_of(&sim, 30 << 20), StoredCodec::Zstd { level: 19 }, "one hit is not hot");
    sim.load(b"large", 30 << 20);
    assert_eq!(codec_of(&sim, 30 << 20), StoredCodec::Raw, "two hits are hot");
}

#[test]
fn the_size_tiered_policy_evicts_as_soon_as_its_own_inserts_pass_the_limit() {
    let policy = guest_policy("size-tiered");
    let mut sim = Simulation::new(&policy, [("max-size", "100Mi"), ("raw-below", "0")]).unwrap();
    for module in 0..200u32 {
        sim.load(&module.to_le_bytes(), 10 << 20);
        sim.advance(Duration::from_secs(1));
    }
    let report = sim.report();
    assert!(report.passes > 1, "only the first insert's pass ran: {report:?}");
    assert!(report.bytes_at_end <= 100 << 20, "{} bytes at the end", report.bytes_at_end);
}

#[test]
fn the_ttl_policy_removes_what_was_not_used_within_its_ttl() {
    let policy = guest_policy("ttl");
    let mut sim = Simulation::new(&policy, [("ttl", "1d")]).unwrap();
    sim.load(b"old", 1 << 20);
    sim.advance(HOUR * 12);
    sim.load(b"recent", 1 << 20);
    sim.advance(HOUR * 13);
    let report = sim.maintain().unwrap();
    assert!(report.ran, "{}", report.summary);
    assert_eq!((report.evicted, report.entries_after), (1, 1), "{}", report.summary);
    assert_eq!(sim.load(b"recent", 1 << 20), Lookup::Hit);
    assert_eq!(sim.load(b"old", 1 << 20), Lookup::Miss { stored: true });

    let refused = Simulation::new(&policy, [("ttl", "0s")]).unwrap_err();
    assert!(refused.to_string().contains("longer than 0"), "{refused}");
}

#[test]
fn policy_test_passes_a_sound_policy_and_fails_a_broken_one_or_an_unmet_expectation() {
    let ok = capcache(&["policy", "test", "default", "--workload", "ops=5000", "--expect", "max-bytes=512Mi"]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("5000 loads") && out.contains("max-bytes=512.0 MiB") && out.contains(": ok"), "{out}");
    assert!(out.contains("on-hit") && out.contains("p99"), "no per-export timings: {out}");

    let unmet = capcache(&["policy", "test", "default", "--workload", "ops=5000", "--expect", "max-entries=1"]);
    assert_eq!(unmet.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unmet.stderr);
    assert!(stderr.contains("expectation not met: max-entries=1"), "{stderr}");

    let hostile = guest_path("hostile").display().to_string();
    let faulty = capcache(&["policy", "test", &hostile, "--set", "mode=trap-all", "--workload", "ops=200"]);
    assert_eq!(faulty.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&faulty.stderr);
    assert!(stderr.contains("policy faults"), "{stderr}");
    // The panic's message reaches the log (the SDK's log_panics), and the
    // fault is reported in a line, not as a backtrace.
    assert!(stderr.contains("the policy panicked") && stderr.contains("trap-all: admit"), "{stderr}");
    assert!(!String::from_utf8_lossy(&faulty.stdout).contains("wasm backtrace"), "the report shows backtraces");

    let looping = capcache(&["policy", "test", &hostile, "--set", "mode=loop-hit", "--workload", "ops=3,modules=1"]);
    assert_eq!(looping.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&looping.stderr).contains("(2 at a deadline)"), "{}", String::from_utf8_lossy(&looping.stderr));

    let bad = capcache(&["policy", "test", "default", "--workload", "ops=many"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--workload: ops=\"many\": expected a whole number"));
}

#[test]
fn policy_new_writes_a_complete_crate_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let where_ = dir.path().display().to_string();
    let out = capcache(&["policy", "new", "my-policy", "--dir", &where_]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = dir.path().join("my-policy");
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(cargo.contains("name = \"my-policy\"") && cargo.contains("crate-type = [\"cdylib\"]"), "{cargo}");
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/sdk").canonicalize().unwrap();
    assert!(cargo.contains(&format!("capcache-policy = {{ path = {:?} }}", sdk.display().to_string())), "{cargo}");
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    for export in ["fn configure", "fn admit", "fn on_hit", "fn on_insert", "fn maintain", "export_policy!"] {
        assert!(lib.contains(export), "src/lib.rs lacks {export}");
    }
    let wit = std::fs::read_to_string(root.join("wit/policy.wit")).unwrap();
    assert_eq!(wit, std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/policy.wit")).unwrap());
    assert!(std::fs::read_to_string(root.join("README.md")).unwrap().contains("release/my_policy.wasm"));

    let again = capcache(&["policy", "new", "my-policy", "--dir", &where_]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let bad = capcache(&["policy", "new", "My Policy", "--dir", &where_]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a usable crate name"));
    let no_sdk = capcache(&["policy", "new", "other", "--dir", &where_, "--sdk", &where_]);
    assert!(String::from_utf8_lossy(&no_sdk.stderr).contains("cannot find the capcache-policy SDK"));
    assert!(!dir.path().join("other").exists(), "a crate was written without an SDK");
}

#[test]
fn a_policy_that_calls_wasi_is_told_which_import_and_what_to_do_instead() {
    let mut sim = Simulation::new(&guest_policy("hostile"), [("mode", "wasi")]).unwrap();
    assert!(sim.maintain().is_none(), "a WASI call ran");
    let report = sim.report();
    let (export, reason) = &report.fault_reasons[0];
    assert_eq!(export, "maintain");
    assert!(reason.starts_with("it called wasi:"), "{reason}");
    assert!(reason.contains("a policy is granted no WASI") && reason.contains("--stub-wasi"), "{reason}");
    assert!(!reason.contains("backtrace"), "{reason}");
}

#[test]
fn the_guides_worked_example_is_the_fewest_hits_policy_verbatim() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let guide = std::fs::read_to_string(format!("{root}/docs/writing-a-policy.md")).unwrap();
    let source = std::fs::read_to_string(format!("{root}/guest/fewest-hits/src/lib.rs")).unwrap();
    let code: String = source.lines().skip_while(|l| l.starts_with("//!") || l.is_empty()).map(|l| format!("{l}\n")).collect();
    assert!(guide.contains(&format!("```rust\n{code}```")), "docs/writing-a-policy.md no longer shows guest/fewest-hits/src/lib.rs");
}

#[test]
fn the_fewest_hits_policy_keeps_the_most_served_entries() {
    let mut sim = Simulation::new(&guest_policy("fewest-hits"), [("max-entries", "2"), ("hot-hits", "3")]).unwrap();
    for (module, extra_hits) in [(b"a", 3), (b"b", 0), (b"c", 1)] {
        sim.load(module, 1 << 20);
        for _ in 0..extra_hits {
            sim.load(module, 1 << 20);
        }
    }
    let report = sim.maintain().unwrap();
    assert_eq!((report.evicted, report.entries_after), (1, 2), "{}", report.summary);
    assert_eq!(sim.load(b"b", 1 << 20), Lookup::Miss { stored: true }, "the least served entry was kept");
    let hot = sim.entries().into_iter().find(|e| e.hits == 3).unwrap();
    assert_eq!(hot.codec, StoredCodec::Raw, "an entry served 3 times is not raw");
}
