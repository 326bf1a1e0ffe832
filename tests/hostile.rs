//! A misbehaving policy costs a bounded delay: the host stops it, counts the
//! fault, takes its call as declined (nothing stored, no action), restarts it
//! and keeps serving. Its "no" is respected even when it is busy.


use capcache::{Cache, HostSettings, StoredCodec};
use std::time::{Duration, Instant};
use crate::support::*;

/// The deadlines of `hostile`'s cache: a fault costs at most its deadline
/// (SECURITY.md), which the tests hold each call to, within `ALLOWED`.
const ADMIT: Duration = Duration::from_millis(100);
const EVENT: Duration = Duration::from_millis(100);
const MAINTAIN: Duration = Duration::from_millis(500);

/// What a faulting call may cost, as a multiple of its deadline: the deadline
/// itself, then making the instance anew, with the machine's load in mind
/// (the deadline is wall-clock time, and tests run side by side).
const ALLOWED: u32 = 3;

/// Fails unless `elapsed` is within `ALLOWED` times `deadline`.
fn within(what: &str, elapsed: Duration, deadline: Duration) {
    assert!(elapsed < deadline * ALLOWED, "{what} took {elapsed:?}, more than {ALLOWED} x its deadline of {deadline:?}");
}

/// A generous bound on waiting for something to start, not a promise.
const START: Duration = Duration::from_secs(20);

/// A cache on the hostile policy in `mode`, with files planted outside its
/// view; `check_outside` then proves they are untouched.
fn hostile(t: &TestCache, mode: &str) -> Cache {
    if !t.dir.path().join("outside.txt").exists() {
        plant_outside(t);
    }
    t.builder()
        .policy(guest_policy("hostile"))
        .setting("mode", mode)
        .host_settings(HostSettings {
            admit_deadline: ADMIT,
            event_deadline: EVENT,
            maintain_deadline: MAINTAIN,
            policy_memory_limit: 32 << 20,
            ..HostSettings::default()
        })
        .open()
        .unwrap()
}

fn check_outside(t: &TestCache, before: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>) {
    assert_eq!(&outside_view(t), before, "the policy changed something outside its view");
}

/// The policy fails in `admit`: nothing it did not admit is stored, the fault
/// is counted, and it is made anew for the next call.
fn check_admit_fault(mode: &str) {
    let t = TestCache::new();
    plant_outside(&t);
    let before = outside_view(&t);
    let cache = hostile(&t, mode);
    for key in [b"a", b"b"] {
        let started = Instant::now();
        assert!(!cache.insert(key, b"value"));
        within("a faulting admit", started.elapsed(), ADMIT);
    }
    assert_eq!(cache.entry_info(b"a"), None, "a value the policy never admitted was stored");
    // Restarted after each fault, and faulted again.
    let stats = cache.stats();
    assert!(stats.policy_faults >= 2, "{stats:?}");
    assert_eq!((stats.inserts, stats.skipped), (0, 2), "{stats:?}");
    assert_eq!(cache.get(b"a"), None);
    cache.flush();
    assert_eq!(t.entry_count(), 0);
    check_outside(&t, &before);
}

#[test]
fn an_infinite_loop_in_admit_is_stopped_and_nothing_is_stored() {
    check_admit_fault("loop-admit");
}

#[test]
fn unbounded_allocation_in_admit_is_stopped_and_nothing_is_stored() {
    check_admit_fault("alloc-admit");
}

#[test]
fn a_policy_that_traps_on_every_call_costs_only_its_decisions() {
    check_admit_fault("trap-all");
    let t = TestCache::new();
    let cache = hostile(&t, "trap-all");
    assert!(!cache.insert(b"k", b"v"));
    assert!(cache.get(b"k").is_none());
    cache.flush();
    assert_eq!(cache.maintain(), None);
    assert!(cache.stats().policy_faults >= 2);
}

#[test]
fn a_policy_that_refuses_everything_stores_nothing_while_busy_in_maintain() {
    // The policy admits nothing, and lingers in `maintain`: misses meanwhile
    // find it busy. The caller does not wait for it, and nothing is stored
    // with a default decision: the worker asks the policy once it is free.
    let t = TestCache::new();
    let linger = Duration::from_millis(1500);
    let host = HostSettings { maintain_deadline: Duration::from_secs(10), ..HostSettings::default() };
    let cache = std::sync::Arc::new(
        Cache::builder()
            .directory(t.root())
            .policy(guest_policy("hostile"))
            .setting("mode", "refuse-and-linger")
            .setting("linger-ms", linger.as_millis().to_string())
            .host_settings(host.clone())
            .open()
            .unwrap(),
    );
    let pass = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.maintain())
    };
    let lingering = t.root().join("default/state/lingering");
    let started = Instant::now();
    while !lingering.exists() {
        assert!(started.elapsed() < START, "the pass never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let engine = wasmtime::Engine::default();
    let mut offered = 0;
    let busy_since = Instant::now();
    // Values and compiled modules, while the pass still has most of its time to run.
    while busy_since.elapsed() < linger / 2 {
        let n = offered as u32;
        let at = Instant::now();
        assert!(!cache.insert(format!("k{n}").as_bytes(), b"value"), "stored while the policy could not say no");
        // The caller waits at most the admit wait, not the pass.
        assert!(at.elapsed() < host.admit_wait * 3 + Duration::from_millis(50), "a miss waited {:?}", at.elapsed());
        capcache::wasmtime::load_module(&cache, &engine, &tiny_module(n)).unwrap();
        offered += 2;
    }
    assert!(pass.join().unwrap().is_some(), "the pass did not finish");
    cache.flush();
    let stats = cache.stats();
    assert!(offered >= 4, "only {offered} values offered during the pass");
    assert_eq!(stats.inserts, 0, "{stats:?}");
    assert_eq!(stats.skipped, offered, "every value went to the policy, which said no: {stats:?}");
    assert_eq!(t.entry_count(), 0, "the policy admitted nothing, yet entries were stored");
}

/// The policy fails on the worker: hits are served all the same.
fn check_hit_fault(mode: &str) {
    let t = TestCache::new();
    plant_outside(&t);
    let before = outside_view(&t);
    let cache = hostile(&t, mode);
    assert!(cache.insert(b"k", b"value"));
    assert_eq!(cache.entry_info(b"k").unwrap().codec, StoredCodec::Zstd { level: 1 });
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"value"[..]));
        assert!(started.elapsed() < EVENT, "a hit waited {:?} for the policy", started.elapsed());
    }
    // At most six faulting events (the insert and five hits), each bounded.
    let started = Instant::now();
    cache.flush();
    within("six faulting events", started.elapsed(), EVENT * 6);
    let stats = cache.stats();
    assert!(stats.policy_faults >= 1, "{stats:?}");
    assert_eq!(stats.hits, 5);
    // Still usable for misses too.
    assert!(cache.insert(b"k2", b"value 2"));
    cache.flush();
    check_outside(&t, &before);
}

#[test]
fn an_infinite_loop_in_on_insert_is_stopped_and_hits_are_served() {
    check_hit_fault("loop-insert");
}

#[test]
fn an_infinite_loop_in_on_hit_is_stopped_and_hits_are_served() {
    check_hit_fault("loop-hit");
}

#[test]
fn unbounded_allocation_in_on_hit_is_stopped_and_hits_are_served() {
    check_hit_fault("alloc-hit");
}

#[test]
fn unbounded_allocation_in_on_insert_is_stopped_and_hits_are_served() {
    check_hit_fault("alloc-insert");
}

#[test]
fn unbounded_allocation_in_maintain_is_stopped_at_the_memory_limit() {
    // A deadline far longer than filling the cap takes: only the cap can
    // stop the pass this soon.
    let deadline = Duration::from_secs(15);
    let host = HostSettings { maintain_deadline: deadline, policy_memory_limit: 32 << 20, ..HostSettings::default() };
    let t = TestCache::new();
    let cache = t.builder().policy(guest_policy("hostile")).setting("mode", "alloc-maintain").host_settings(host.clone()).open().unwrap();
    cache.insert(b"k", b"v");
    let started = Instant::now();
    assert_eq!(cache.maintain(), None);
    assert!(started.elapsed() < deadline / 5, "the pass ran {:?}: not stopped by the memory cap", started.elapsed());
    assert!(cache.stats().policy_faults >= 1);
    assert_eq!(cache.get(b"k").as_deref(), Some(&b"v"[..]));
    // And the reason the host gives is the cap.
    let mut sim = capcache::Simulation::with_host_settings(&guest_policy("hostile"), [("mode", "alloc-maintain")], host).unwrap();
    assert_eq!(sim.maintain(), None);
    let report = sim.report();
    let (call, reason) = &report.fault_reasons[0];
    assert!(call == "maintain" && reason.contains("policy-memory-limit"), "{call}: {reason}");
    assert_eq!(report.deadline_hits, 0);
}

#[test]
fn unbounded_allocation_in_configure_is_a_clear_error_naming_the_limit() {
    let t = TestCache::new();
    let err = t
        .builder()
        .policy(guest_policy("hostile"))
        .setting("mode", "alloc-configure")
        .host_settings(HostSettings { policy_memory_limit: 32 << 20, ..HostSettings::default() })
        .open()
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, capcache::Error::PolicyFault { .. }), "{message}");
    assert!(message.contains("policy-memory-limit"), "{message}");
}

#[test]
fn an_infinite_loop_in_maintain_is_stopped_and_hits_are_served() {
    let t = TestCache::new();
    plant_outside(&t);
    let before = outside_view(&t);
    let cache = hostile(&t, "loop-maintain");
    cache.insert(b"k", b"v");
    let started = Instant::now();
    assert_eq!(cache.maintain(), None);
    within("a spinning maintain", started.elapsed(), MAINTAIN);
    assert!(cache.stats().policy_faults >= 1);
    assert!(cache.get(b"k").is_some());
    check_outside(&t, &before);
}

#[test]
fn garbage_answers_are_bounded_and_clamped() {
    let t = TestCache::new();
    let cache = hostile(&t, "garbage");
    // Level 255 is clamped to zstd's highest, 22.
    assert!(cache.insert(b"k", b"value"));
    assert_eq!(cache.entry_info(b"k").unwrap().codec, StoredCodec::Zstd { level: 22 });
    cache.flush();
    // 100,000 `maintain` actions for one insert: one pass.
    assert_eq!(cache.stats().maintain_runs, 1);
    // A million recode actions (to raw) for one hit: one recode.
    assert!(cache.get(b"k").is_some());
    cache.flush();
    assert_eq!(cache.stats().recoded, 1, "{:?}", cache.stats());
    assert_eq!(cache.entry_info(b"k").unwrap().codec, StoredCodec::Raw);
    assert_eq!(cache.get(b"k").as_deref(), Some(&b"value"[..]));
}

#[test]
fn infinite_loop_in_configure_is_a_clear_error() {
    let t = TestCache::new();
    let started = Instant::now();
    let err = t
        .builder()
        .policy(guest_policy("hostile"))
        .setting("mode", "loop-configure")
        .open()
        .unwrap_err();
    within("a spinning configure", started.elapsed(), HostSettings::default().configure_deadline);
    assert!(matches!(err, capcache::Error::PolicyFault { .. }), "{err}");
}

#[test]
fn hits_never_wait_for_a_stuck_policy_events_are_dropped_and_counted() {
    let t = TestCache::new();
    let cache = t
        .builder()
        .policy(guest_policy("hostile"))
        .setting("mode", "loop-hit")
        .host_settings(HostSettings {
            event_queue_size: 2,
            event_deadline: Duration::from_secs(2),
            ..HostSettings::default()
        })
        .open()
        .unwrap();
    cache.insert(b"k", b"value");
    cache.flush();
    // The worker is stuck for 2 s in the first on-hit; the queue holds 2 more
    // events; every other hit's event is dropped rather than waited for.
    for _ in 0..50 {
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"value"[..]));
    }
    let stats = cache.stats();
    assert_eq!(stats.hits, 50);
    assert!(stats.events_dropped >= 40, "{stats:?}");
}

#[test]
fn a_huge_report_is_cut_to_64_kib() {
    let t = TestCache::new();
    let cache = hostile(&t, "huge-summary");
    let report = cache.maintain().expect("a 20 MiB report fits the policy's memory");
    assert!(report.summary.len() <= 65 * 1024, "{} bytes kept", report.summary.len());
    assert!(report.summary.ends_with("[truncated]"));
}

#[test]
fn wasi_calls_trap_and_touch_nothing() {
    let t = TestCache::new();
    plant_outside(&t);
    let before = outside_view(&t);
    let cache = hostile(&t, "wasi");
    cache.insert(b"k", b"v");
    // Every WASI call traps: the pass fails and is counted, nothing is written.
    assert_eq!(cache.maintain(), None);
    assert!(cache.stats().policy_faults >= 1);
    assert!(!std::path::Path::new("/tmp/capcache-wasi-escape").exists());
    assert!(cache.get(b"k").is_some());
    check_outside(&t, &before);
}

#[test]
fn text_from_a_policy_reaches_the_terminal_and_the_log_escaped() {
    // A summary and a log line full of escape sequences (a new window title,
    // a colour) and line breaks that would forge a log line of the host's.
    let t = TestCache::new();
    drop(t.open());
    let hostile = guest_path("hostile").display().to_string();
    let root = t.root().display().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_capcache"))
        .args(["gc", "--dir", &root, "--policy", &hostile, "--set", "mode=terminal"])
        .env("CAPCACHE_LOG", "info")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(!bytes.iter().any(|&b| b == 0x1b || b == 0x07 || b == b'\r'), "{stream} carries control bytes: {text:?}");
        assert!(!text.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")), "{stream} has a forged line: {text}");
        assert!(text.contains(r"forged line\u{1b}]0;pwned\u{7}"), "{stream} lost the policy's text: {text}");
    }
    // The summary is one line of the report, and the log line one line of the log.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().filter(|l| l.contains("forged")).count(), 1, "{stdout}");
    assert!(stdout.contains(r"pass done\r\n2026"), "{stdout}");
}

/// A cache on `hoard-state` with this state quota.
fn hoarding(t: &TestCache, state_bytes: u64, files: u64, bytes: u64) -> Cache {
    t.builder()
        .policy(guest_policy("hostile"))
        .setting("mode", "hoard-state")
        .setting("state-bytes", state_bytes.to_string())
        .host_settings(HostSettings { max_state_files: files, max_state_bytes: bytes, ..HostSettings::default() })
        .open()
        .unwrap()
}

#[test]
fn a_policy_that_writes_state_until_refused_stops_at_its_quota() {
    // By bytes: 1 MiB files against 5 MiB.
    let t = TestCache::new();
    let cache = hoarding(&t, 1 << 20, 256, 5 << 20);
    let report = cache.maintain().unwrap();
    // Full, an existing file may still be rewritten at its size; a lock, a
    // new state file, is refused like any other.
    let expected = format!("files=5 bytes={} refused=Error::TooLarge rewrite=Ok(()) lock=Err(\"Error::TooLarge\")", 5u64 << 20);
    assert_eq!(report.summary, expected);
    let state = cache.state_usage().unwrap();
    assert_eq!((state.files, state.bytes, state.over_quota()), (5, 5 << 20, false), "{state:?}");

    // By files: 100-byte files against 20 files.
    let t = TestCache::new();
    let cache = hoarding(&t, 100, 20, 16 << 20);
    assert_eq!(cache.maintain().unwrap().summary, "files=20 bytes=2000 refused=Error::TooLarge rewrite=Ok(()) lock=Err(\"Error::TooLarge\")");

    // The defaults: 16 MiB, 16 files of the largest size.
    let t = TestCache::new();
    let defaults = HostSettings::default();
    assert_eq!((defaults.max_state_files, defaults.max_state_bytes), (256, 16 << 20));
    let cache = t.builder().policy(guest_policy("hostile")).setting("mode", "hoard-state").open().unwrap();
    assert!(cache.maintain().unwrap().summary.starts_with("files=16 bytes=16777216 refused=Error::TooLarge"));
    // A second process adds nothing (it rewrites the same 16 names, then is
    // refused the 17th): the quota is the namespace's, not a call's or a
    // process's.
    drop(cache);
    let again = t.builder().policy(guest_policy("hostile")).setting("mode", "hoard-state").open().unwrap();
    assert!(again.maintain().unwrap().summary.starts_with("files=16 bytes=16777216 refused=Error::TooLarge"));
    assert_eq!(again.state_usage().unwrap().files, 16);
    drop(again);

    // Counted by `stats`, removed by `clear`.
    let root = t.root().display().to_string();
    let stats = capcache(&["stats", "--dir", &root]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("policy state    16 files, 16777216 bytes (quota 256 files, 16777216 bytes)"), "{text}");
    assert!(capcache(&["clear", "--dir", &root]).status.success());
    assert_eq!(t.open().state_usage().unwrap().files, 0);
}

#[test]
fn state_over_a_lowered_quota_is_said_by_stats_verify_and_gc() {
    let t = TestCache::new();
    let cache = hoarding(&t, 1 << 20, 256, 16 << 20);
    cache.maintain().unwrap();
    drop(cache);
    let config = t.dir.path().join("capcache.toml");
    std::fs::write(&config, format!("[cache]\ndirectory = {:?}\n\n[cache.host]\nmax-state-bytes = 4194304\n", t.root())).unwrap();
    for command in ["stats", "verify", "gc"] {
        let out = capcache(&[command, "--config", &config.display().to_string()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("16 files, 16777216 bytes (quota 256 files, 4194304 bytes): OVER QUOTA"), "{command}: {text}");
    }
}
