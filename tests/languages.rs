//! Policies written in Python (componentize-py) and JavaScript
//! (componentize-qjs for QuickJS, ComponentizeJS for SpiderMonkey), built by
//! `guest/build-languages` into target/lang, run in the same sandbox as Rust
//! ones and decide as the default policy does.

use capcache::{Policy, Simulation, SimulationReport, Workload};
use std::path::PathBuf;
use crate::support::with_custom_section;

/// A component built by guest/build-languages; `None` (and a line saying so)
/// outside CI when it was not built: CI builds them first.
fn language_policy(test: &str, file: &str) -> Option<Policy> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let path = dir.join("lang").join(file);
    if !path.exists() {
        let why = format!("{} is not built (bash guest/build-languages)", path.display());
        crate::support::skip(test, &why, ".ci/run runs guest/build-languages first");
        return None;
    }
    Some(Policy::from_file(path).unwrap())
}

/// What a policy decided, without what it cost.
fn decisions(r: &SimulationReport) -> impl PartialEq + std::fmt::Debug {
    (
        (r.hits, r.misses, r.skipped, r.removed, r.passes, r.passes_skipped),
        (r.admitted.clone(), r.recoded.clone(), r.bytes_after_passes.clone()),
        (r.entries_at_end, r.bytes_at_end, r.temp_files_at_end, r.last_summary.clone()),
    )
}

fn simulate(policy: &Policy, settings: &[(&str, &str)]) -> SimulationReport {
    let mut sim = Simulation::new(policy, settings.iter().copied()).unwrap();
    sim.run(&Workload { operations: 20_000, ..Workload::default() });
    let report = sim.report();
    assert_eq!(report.faults, 0, "{:?}", report.fault_reasons);
    report
}

fn decides_as_the_default_policy(test: &str, file: &str) {
    let Some(policy) = language_policy(test, file) else { return };
    for settings in [
        &[][..],
        &[("raw-entries", "never"), ("files-total-size-soft-limit", "256Mi"), ("cleanup-interval", "30m")][..],
        &[("file-count-soft-limit", "100"), ("file-count-limit-percent-if-deleting", "50%"), ("raw-entries-usage-threshold", "5")][..],
    ] {
        let ours = simulate(&policy, settings);
        // The ports keep wasmtime's schedule, which the default policy keeps
        // when told to.
        let wasmtime_schedule: Vec<(&str, &str)> = settings.iter().copied().chain([("cleanup-when-over-limits", "off")]).collect();
        let default = simulate(&Policy::default(), &wasmtime_schedule);
        assert!(ours.passes > 0 && ours.removed > 0, "the workload never evicted: {ours:?}");
        assert_eq!(decisions(&ours), decisions(&default), "{file} with {settings:?} decided otherwise");
    }
    // A bad setting is refused in the host's words.
    let refused = Simulation::new(&policy, [("cleanup-interval", "soon")]).unwrap_err();
    assert!(refused.to_string().contains("expected a duration such as"), "{refused}");
    let refused = Simulation::new(&policy, [("baseline-compression-level", "21")]).unwrap_err();
    assert!(refused.to_string().contains("no greater than optimized-compression-level"), "{refused}");
    let refused = Simulation::new(&policy, [("colour", "red")]).unwrap_err();
    assert!(refused.to_string().contains("it has no such setting"), "{refused}");
}

#[test]
fn the_python_lru_policy_decides_as_the_default_policy() {
    decides_as_the_default_policy("languages::python", "python-lru.wasm");
}

#[test]
fn the_javascript_lru_policy_decides_as_the_default_policy() {
    decides_as_the_default_policy("languages::javascript", "js-lru.wasm");
}

#[test]
fn the_spidermonkey_lru_policy_decides_as_the_default_policy() {
    decides_as_the_default_policy("languages::spidermonkey_lru", "spidermonkey-lru.wasm");
}

#[test]
fn a_policy_built_with_wasi_is_refused_naming_the_import_and_the_flag() {
    let Some(policy) = language_policy("languages::with_wasi", "python-lru-with-wasi.wasm") else { return };
    let err = Simulation::new(&policy, Vec::<(String, String)>::new()).unwrap_err().to_string();
    assert!(err.contains("it called wasi:") && err.contains("--stub-wasi"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
}

/// A policy in `file` that spins, then one that hoards memory, in `on-hit`:
/// each call stops at its deadline or the memory cap, costs a fault, and the
/// policy is made anew for the next call.
fn misbehaviour_is_stopped(test: &str, file: &str) {
    let Some(policy) = language_policy(test, file) else { return };
    // The spin meets a short deadline. The allocation bomb gets a long one,
    // so that the memory cap stops it whatever the machine's load: filling
    // 64 MiB on quick code, with both cores busy, can take longer than 100 ms.
    let ms = std::time::Duration::from_millis;
    for (mode, expected, deadline) in [("loop", "past its deadline", ms(100)), ("alloc", "policy-memory-limit", ms(10_000))] {
        let host = capcache::HostSettings { event_deadline: deadline, ..Default::default() };
        let mut sim = Simulation::with_host_settings(&policy, [("mode", mode)], host).unwrap();
        for _ in 0..3 {
            sim.load(b"module", 1 << 20);
        }
        let report = sim.report();
        assert_eq!((report.hits, report.faults), (2, 2), "{file} {mode}: {report:?}");
        if mode == "loop" {
            assert_eq!(report.deadline_hits, 2);
        }
        let (export, reason) = &report.fault_reasons[0];
        assert!(export == "on-hit" && reason.contains(expected), "{file} {mode}: {reason}");
        // Made anew: the next miss is admitted by the policy, not the default.
        sim.load(b"another", 1 << 20);
        assert_eq!(sim.report().admitted.get("zstd-1"), Some(&2), "{file} {mode}: {:?}", sim.report().admitted);
    }
}

#[test]
fn a_python_policy_that_spins_or_hoards_is_stopped() {
    misbehaviour_is_stopped("languages::python_hostile", "python-hostile.wasm");
}

#[test]
fn a_javascript_policy_that_spins_or_hoards_is_stopped() {
    misbehaviour_is_stopped("languages::js_hostile", "js-hostile.wasm");
}

#[test]
fn a_spidermonkey_policy_that_spins_or_hoards_is_stopped() {
    misbehaviour_is_stopped("languages::spidermonkey_hostile", "spidermonkey-hostile.wasm");
}

/// `policy` with a custom section naming `test` appended: the same policy
/// under another digest, so that no other test's compiled code serves it.
fn variant(policy: &Policy, test: &str) -> Policy {
    Policy::from_bytes(test, with_custom_section(&policy.bytes().unwrap(), test.as_bytes()))
}

#[test]
fn a_large_policy_starts_on_quick_code_and_its_optimized_code_is_kept_for_the_next_start() {
    let test = "languages::quick_then_optimized";
    let Some(policy) = language_policy(test, "js-lru.wasm") else { return };
    let policy = variant(&policy, test);
    assert!(policy.bytes().unwrap().len() as u64 >= capcache::QUICK_CODE_MIN);
    let dir = tempfile::tempdir().unwrap();
    let cache = capcache::Cache::builder().directory(dir.path()).policy(policy.clone()).open().unwrap();
    assert_eq!(cache.policy_code(), Some(capcache::PolicyCode::Quick));
    // It decides on quick code.
    cache.insert(b"k", b"v");
    assert_eq!(cache.get(b"k").as_deref(), Some(&b"v"[..]));
    // The optimized code compiles in the background and is kept beside the
    // quick code (polled: how long it takes is the benchmark's business).
    let code = dir.path().join("policy-code/entries");
    let kept = || std::fs::read_dir(&code).unwrap().count();
    let waited = std::time::Instant::now();
    while kept() < 2 {
        assert!(waited.elapsed() < std::time::Duration::from_secs(300), "no optimized code was kept");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A cache opened from now on runs the optimized code.
    let again = capcache::Cache::builder().directory(dir.path()).policy(policy).open().unwrap();
    assert_eq!(again.policy_code(), Some(capcache::PolicyCode::Optimized));
    again.insert(b"k2", b"v2");
    assert_eq!(again.get(b"k2").as_deref(), Some(&b"v2"[..]));
}

#[test]
fn an_installed_policy_starts_on_optimized_code_and_is_installed_once() {
    let test = "languages::installed";
    let Some(policy) = language_policy(test, "js-lru.wasm") else { return };
    let policy = variant(&policy, test);
    let dir = tempfile::tempdir().unwrap();
    let installed = policy.install(dir.path()).unwrap();
    assert!(installed.compiled_now && installed.stored_bytes > 0, "{installed:?}");
    assert!(installed.path.starts_with(dir.path().join("policy-code")), "{installed:?}");
    let cache = capcache::Cache::builder().directory(dir.path()).policy(policy.clone()).open().unwrap();
    assert_eq!(cache.policy_code(), Some(capcache::PolicyCode::Optimized));
    let again = policy.install(dir.path()).unwrap();
    assert!(!again.compiled_now && again.path == installed.path, "{again:?}");
    assert_eq!(std::fs::read_dir(dir.path().join("policy-code/entries")).unwrap().count(), 1);
}

#[test]
fn damaged_kept_code_of_a_large_policy_is_found_and_compiled_again() {
    let test = "languages::damaged_large_code";
    let Some(policy) = language_policy(test, "js-lru.wasm") else { return };
    let policy = variant(&policy, test);
    let dir = tempfile::tempdir().unwrap();
    let installed = policy.install(dir.path()).unwrap();
    let mut bytes = std::fs::read(&installed.path).unwrap();
    assert!(bytes.len() >= 4 << 20, "large enough to be checked mapped: {}", bytes.len());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    crate::support::make_writable(&installed.path);
    std::fs::write(&installed.path, &bytes).unwrap();
    let again = policy.install(dir.path()).unwrap();
    assert!(again.compiled_now, "the damaged code was taken as kept");
    assert_ne!(std::fs::read(&again.path).unwrap(), bytes);
}

/// The cleanup lock, through each language's helper: another holder's fresh
/// lock stops the pass and is left as it was; a lock dated beyond the
/// allowed drift is broken; the pass releases its own lock.
fn the_cleanup_lock_is_shared_with_other_processes(test: &str, file: &str) {
    let Some(policy) = language_policy(test, file) else { return };
    let t = crate::support::TestCache::new();
    let cache = t.builder().policy(policy).open().unwrap();
    use capcache::Clock;
    let lock = t.root().join("default/state/cleanup.lock");
    let theirs = format!("{} 4242-0\n", t.clock.now_ms() - 60_000);
    std::fs::write(&lock, &theirs).unwrap();
    let report = cache.maintain().unwrap();
    assert!(!report.ran, "{file} cleaned while another process held the lock: {report:?}");
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), theirs, "{file} touched someone else's lock");
    std::fs::write(&lock, format!("{} 4242-0\n", t.clock.now_ms() + 2 * 86_400_000)).unwrap();
    let report = cache.maintain().unwrap();
    assert!(report.ran, "{file} did not break a lock from the future: {report:?}");
    assert!(!lock.exists(), "{file} did not release its lock");
    // And again, now that no one holds it.
    assert!(cache.maintain().unwrap().ran);
    assert!(!lock.exists());
}

#[test]
fn python_javascript_and_spidermonkey_policies_share_the_cleanup_lock() {
    for file in ["python-lru.wasm", "js-lru.wasm", "spidermonkey-lru.wasm"] {
        the_cleanup_lock_is_shared_with_other_processes("languages::cleanup_lock", file);
    }
}
