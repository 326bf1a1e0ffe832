//! A short-lived process pays for its hit, not for its policy: a policy that
//! started well in a cache before, with the same settings, starts off the
//! caller's path (on the worker, ahead of a miss's `admit`), and not at all
//! in a process that only hits and exits. A policy not seen before starts
//! when the cache opens, so that a bad setting is the opener's error.

use crate::support::*;
use capcache::{Cache, HostSettings, Source};
use std::time::{Duration, Instant};

/// How long the slow policy's `configure` takes.
const SLOW_START: Duration = Duration::from_millis(1000);

/// A policy that takes `SLOW_START` to start, and stores raw (`raw`) or
/// compressed.
fn slow_policy(t: &TestCache, raw: bool) -> Cache {
    // The policy's configure waits by the view's clock: the real one.
    t.builder()
        .clock(std::sync::Arc::new(capcache::SystemClock))
        .policy(guest_policy("hostile"))
        .setting("mode", "slow-configure")
        .setting("raw", if raw { "yes" } else { "no" })
        .setting("linger-ms", SLOW_START.as_millis().to_string())
        .host_settings(HostSettings { configure_deadline: SLOW_START * 3, ..HostSettings::default() })
        .open()
        .unwrap()
}

#[test]
fn a_hit_does_not_wait_for_a_policy_whose_start_is_slow() {
    let t = TestCache::new();
    let engine = wasmtime::Engine::default();
    let wasm = tiny_module(5);
    let load = |cache: &Cache| capcache::wasmtime::load_module_with_source(cache, &engine, &wasm).unwrap().1;
    // First, in this cache: the policy starts at open, its settings checked.
    let started = Instant::now();
    let cache = slow_policy(&t, true);
    // (The policy waits by the view's clock, in whole milliseconds.)
    assert!(started.elapsed() >= SLOW_START * 9 / 10, "the first open did not start the policy ({:?})", started.elapsed());
    assert_eq!(load(&cache), Source::Miss);
    drop(cache);

    // Then: open, hit and close return long before its configure would end
    // (the policy is not told of a hit on an entry it stored raw, mapped).
    let started = Instant::now();
    let cache = slow_policy(&t, true);
    assert_eq!(load(&cache), Source::Hit);
    let hit = started.elapsed();
    drop(cache);
    let all = started.elapsed();
    assert!(all < SLOW_START / 2, "open and hit {hit:?}, then close {all:?}: the process waited for the policy's start of {SLOW_START:?}");
    // The hit is recorded all the same (its event, unheard by the policy,
    // counts as dropped).
    let cache = slow_policy(&t, true);
    let name = capcache::wasmtime::artifact_name(&engine, capcache::wasmtime::Kind::Module, &wasm);
    let entry = cache.entries().unwrap().into_iter().find(|e| e.name == name).expect("the module's entry");
    assert_eq!(entry.hits, 1);

    // A miss does not wait either: the lookup starts the policy on the
    // worker while the caller computes its value, and the value offered
    // meanwhile goes to the worker, which stores what the policy admits.
    let started = Instant::now();
    assert_eq!(cache.get(b"new"), None);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!cache.insert(b"new", b"value"), "stored before the policy could admit it");
    assert!(started.elapsed() < SLOW_START / 2, "the miss waited {:?}", started.elapsed());
    cache.flush();
    assert_eq!(cache.get(b"new").as_deref(), Some(&b"value"[..]), "the worker did not store it once the policy ran");
}

#[test]
fn a_policy_or_settings_not_seen_before_are_checked_when_the_cache_opens() {
    let t = TestCache::new();
    drop(t.open());
    // The default policy started well here; with a setting it does not know,
    // it is another start, made at open, and refused there.
    let err = t.builder().setting("no-such-setting", "1").open().unwrap_err();
    assert!(err.to_string().contains("no-such-setting"), "{err}");
    // Known good: the mark is in the kept compiled policies' state.
    let marks = std::fs::read_dir(t.root().join("policy-code/state")).unwrap().count();
    assert_eq!(marks, 1, "one mark, for the default policy without settings");
}

#[test]
fn a_hit_on_an_encoded_entry_is_told_to_the_policy_even_at_exit() {
    // The policy may store it raw: that is worth its start, once.
    let t = TestCache::new();
    let cache = slow_policy(&t, false);
    assert!(cache.insert(b"k", b"value"));
    drop(cache);
    let cache = slow_policy(&t, false);
    assert_eq!(cache.get(b"k").as_deref(), Some(&b"value"[..]));
    let started = Instant::now();
    drop(cache);
    assert!(started.elapsed() >= SLOW_START / 2, "the hit on a compressed entry was not told ({:?})", started.elapsed());
}

#[test]
fn the_marks_of_good_starts_are_bounded() {
    // A host that opens its cache with ever new settings adds a mark each
    // time; the oldest are forgotten past 64.
    let t = TestCache::new();
    for n in 0..70 {
        drop(t.builder().setting("raw-entries-usage-threshold", (n + 1).to_string()).open().unwrap());
    }
    let marks = std::fs::read_dir(t.root().join("policy-code/state")).unwrap().count();
    assert_eq!(marks, 64);
}
