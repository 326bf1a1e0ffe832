//! The policy is a file: swapping it changes the cache's behaviour with the
//! same host, not rebuilt.

mod support;
use support::*;

#[test]
fn keep_nothing_policy_stores_nothing_and_clears_what_was_there() {
    let t = TestCache::new();
    let default = t.open();
    default.insert(b"kept by default", b"value");
    drop(default);

    let keep_nothing = t.builder().policy(guest_policy("keep-nothing")).open().unwrap();
    assert!(!keep_nothing.insert(b"k", b"value"), "keep-nothing stored a value");
    assert_eq!(keep_nothing.get(b"k"), None);
    assert_eq!(keep_nothing.stats().skipped, 1);
    // What the default policy stored is still served (and, on the hit, removed
    // by keep-nothing's on-hit action).
    assert!(keep_nothing.get(b"kept by default").is_some());
    keep_nothing.flush();
    assert_eq!(t.entry_count(), 0);

    // Back to the default: the same host stores again.
    let default = t.open();
    assert!(default.insert(b"k", b"value"));
    assert_eq!(t.entry_count(), 1);
    // And keep-nothing's maintain clears it.
    let keep_nothing = t.builder().policy(guest_policy("keep-nothing")).open().unwrap();
    let report = keep_nothing.maintain().unwrap();
    assert_eq!(report.evicted, 1);
    assert_eq!(t.entry_count(), 0);
}
