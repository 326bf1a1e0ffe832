//! The policy is a file: swapping it changes the cache's behaviour with the
//! same host, not rebuilt.



/// The default policy ships as bytes (`host/policies/default.wasm`) so that no
/// embedder builds wasm; they must be what `guest/default` builds to.
#[test]
fn the_shipped_default_policy_is_what_its_source_builds_to() {
    let shipped = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../host/policies/default.wasm")).unwrap();
    let built = std::fs::read(guest_path("default")).unwrap();
    assert!(
        shipped == built,
        "host/policies/default.wasm is not what guest/default builds to: run `bash guest/build` and commit it"
    );
    assert_eq!(&capcache::Policy::default().bytes().unwrap()[..], &shipped[..]);
}
use crate::support::*;

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
