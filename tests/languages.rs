//! Policies written in Python (componentize-py) and JavaScript
//! (componentize-qjs), built by `guest/build-languages` into target/lang,
//! run in the same sandbox as Rust ones and decide as the default policy does.

use capcache::{Policy, Simulation, SimulationReport, Workload};
use std::path::PathBuf;

/// A component built by guest/build-languages; `None` (and a line saying so)
/// outside CI when it was not built: CI builds them first.
fn language_policy(test: &str, file: &str) -> Option<Policy> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let path = dir.join("lang").join(file);
    if !path.exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{test} needs {} (bash guest/build-languages, which .ci/run runs first)", path.display());
        }
        eprintln!("SKIPPED {test}: {} not built (bash guest/build-languages)", path.display());
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
        let default = simulate(&Policy::default(), settings);
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
    let host = capcache::HostSettings { event_deadline: std::time::Duration::from_millis(100), ..Default::default() };
    for (mode, expected) in [("loop", "past its deadline"), ("alloc", "policy-memory-limit")] {
        let mut sim = Simulation::with_host_settings(&policy, [("mode", mode)], host.clone()).unwrap();
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
