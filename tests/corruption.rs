//! A corrupt entry is a miss, is removed, and is counted; a leftover temporary
//! file never blocks a write.


use crate::support::*;

fn corrupt_and_check(damage: impl Fn(&mut Vec<u8>)) {
    let t = TestCache::new();
    let cache = t.open();
    let value = incompressible(7, 5000);
    cache.insert(b"k", &value);
    let path = cache.entry_path(b"k").unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    damage(&mut bytes);
    overwrite_entry(&path, &bytes);
    assert_eq!(cache.get(b"k"), None, "a damaged entry was served");
    assert!(!path.exists(), "the damaged entry was not removed");
    let stats = cache.stats();
    assert_eq!((stats.corrupt, stats.misses, stats.hits), (1, 1, 0));
    // The cache goes on: the value is stored again and served.
    let again = cache.get_or_insert_with(b"k", || Ok::<_, ()>(value.clone())).unwrap();
    assert_eq!(again.source, capcache::Source::Miss);
    // Stored now, or by the worker if a maintenance pass held the policy.
    cache.flush();
    assert_eq!(cache.get(b"k").as_deref(), Some(&value[..]));
}

#[test]
fn flipped_payload_byte() {
    corrupt_and_check(|b| {
        let i = b.len() - 100;
        b[i] ^= 0x40;
    });
}

#[test]
fn flipped_header_byte() {
    // The header sits before the 32-byte digest and 12-byte suffix at the end.
    corrupt_and_check(|b| {
        let i = b.len() - 12 - 32 - 5;
        b[i] ^= 0x01;
    });
}

#[test]
fn flipped_trailer_magic() {
    corrupt_and_check(|b| {
        let i = b.len() - 1;
        b[i] ^= 0x20;
    });
}

#[test]
fn truncated_payload() {
    corrupt_and_check(|b| b.truncate(b.len() / 2));
}

#[test]
fn truncated_to_nothing() {
    corrupt_and_check(|b| b.clear());
}

#[test]
fn another_keys_entry_under_this_name() {
    let t = TestCache::new();
    let cache = t.open();
    cache.insert(b"a", b"value of a");
    cache.insert(b"b", b"value of b");
    overwrite_entry(&cache.entry_path(b"b").unwrap(), &std::fs::read(cache.entry_path(b"a").unwrap()).unwrap());
    assert_eq!(cache.get(b"b"), None);
    assert_eq!(cache.stats().corrupt, 1);
}

#[test]
fn leftover_temp_files_never_block_a_write() {
    let t = TestCache::new();
    let cache = t.open();
    let tmp = t.root().join("default/tmp");
    // Leftovers of a crashed writer of this very process id and clock reading,
    // under every name this process's next writes could choose first.
    let now = capcache::Clock::now_ms(&*t.clock);
    for n in 0..64 {
        std::fs::write(tmp.join(format!("{}-{n}-{now}.tmp", std::process::id())), b"partial").unwrap();
    }
    let value = incompressible(3, 100);
    assert!(cache.insert(b"k", &value));
    assert_eq!(cache.get(b"k").as_deref(), Some(&value[..]));
    // A leftover is never read as an entry. (The worker's own writes pass
    // through tmp/ too: let it finish first.)
    cache.flush();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 64);
}

#[test]
fn an_unreadable_entry_is_counted_when_listing_not_dropped_unseen() {
    let t = TestCache::new();
    let cache = t.open();
    cache.insert(b"good", b"value");
    // A file under an entry's name that is no entry.
    std::fs::write(t.entries_dir().join(capcache::ValueKey::of(b"planted").name()), b"garbage").unwrap();
    let listed = cache.entries().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(cache.stats().failures, 1, "the unreadable file was dropped from the listing unseen");
}
