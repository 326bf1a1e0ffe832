//! Entries that another process has in use. wasmtime maps raw entries, and
//! Windows refuses to remove a mapped file or to rename another over it
//! (though it lets the mapped file itself be renamed): replacing, evicting
//! and clearing must neither fail nor leak there. What cannot go at once is
//! set aside in the temporary area, never served, and removed by a later
//! maintenance pass. On Unix a name goes whatever holds the file, and the
//! same test holds trivially.

use crate::support::*;
use std::path::Path;
use std::time::Duration;

/// The whole of `path`, mapped as wasmtime maps a raw entry.
fn map(path: &Path) -> memmap2::Mmap {
    let file = std::fs::File::open(path).unwrap();
    // Safety: the test's own entry, which nothing writes in place.
    unsafe { memmap2::Mmap::map(&file) }.unwrap()
}

fn holds(mapped: &memmap2::Mmap, value: &[u8]) -> bool {
    mapped.windows(value.len()).any(|w| w == value)
}

#[test]
fn a_mapped_entry_is_replaced_and_cleared_and_its_file_removed_once_unmapped() {
    let t = TestCache::new();
    let cache = t.open();
    assert!(cache.insert(b"key", b"the first value"));
    cache.flush();
    let entry = t.entries_dir().join(capcache::ValueKey::of(b"key").name());
    let first = map(&entry);
    assert!(cache.insert(b"key", b"the second value"));
    cache.flush();
    assert_eq!(cache.get(b"key").as_deref(), Some(&b"the second value"[..]), "the mapped entry was not replaced");
    let second = map(&entry);
    assert_eq!(cache.clear().unwrap(), 1);
    assert_eq!(t.entry_count(), 0);
    assert_eq!(cache.get(b"key"), None);
    // Whoever mapped them still reads what they mapped.
    assert!(holds(&first, b"the first value") && holds(&second, b"the second value"));
    drop((first, second));
    // Once unmapped, the next pass removes what was set aside.
    t.clock.advance(Duration::from_secs(31 * 60));
    assert!(cache.maintain().unwrap().ran);
    let tmp = t.root().join("default/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left in tmp/: {left:?}");
    assert!(cache.insert(b"key", b"a third value"));
    cache.flush();
    assert_eq!(cache.get(b"key").as_deref(), Some(&b"a third value"[..]));
}
