//! Hot entries are recompressed at the optimized level once their usage
//! counter reaches the threshold (wasmtime's behaviour, `raw-entries = never`),
//! or stored raw (the default).


use capcache::StoredCodec;
use crate::support::*;

#[test]
fn recompressed_after_the_usage_threshold() {
    let t = TestCache::new();
    let cache = t
        .builder()
        .settings([
            ("raw-entries", "never"),
            ("optimized-compression-usage-counter-threshold", "3"),
            ("optimized-compression-level", "19"),
        ])
        .open()
        .unwrap();
    // Compressible, so the two levels differ in size.
    let value: Vec<u8> = (0..200_000u32).flat_map(|i| (i / 7 % 1000).to_le_bytes()).collect();
    cache.insert(b"hot", &value);
    cache.insert(b"cold", &value);
    let created = cache.entry_info(b"hot").unwrap().created_ms;
    for _ in 0..2 {
        assert!(cache.get(b"hot").is_some());
    }
    cache.flush();
    assert_eq!(cache.entry_info(b"hot").unwrap().codec, StoredCodec::Zstd { level: 3 });
    let before = cache.entry_info(b"hot").unwrap().stored_size;
    assert!(cache.get(b"hot").is_some());
    cache.flush();
    let info = cache.entry_info(b"hot").unwrap();
    assert_eq!(info.codec, StoredCodec::Zstd { level: 19 });
    assert!(info.stored_size < before, "{} !< {before}", info.stored_size);
    assert_eq!(info.created_ms, created, "recompression keeps the creation time");
    assert_eq!(info.hits, 3);
    assert_eq!(cache.get(b"hot").as_deref(), Some(&value[..]));
    assert_eq!(cache.entry_info(b"cold").unwrap().codec, StoredCodec::Zstd { level: 3 });
    assert_eq!(cache.stats().recoded, 1);
}

#[test]
fn stored_raw_once_hot_by_default() {
    let t = TestCache::new();
    let cache = t.open();
    let value: Vec<u8> = (0..100_000u32).flat_map(|i| (i / 5 % 300).to_le_bytes()).collect();
    cache.insert(b"hot", &value);
    cache.insert(b"cold", &value);
    assert!(cache.get(b"hot").is_some());
    cache.flush();
    assert_eq!(cache.entry_info(b"hot").unwrap().codec, StoredCodec::Zstd { level: 3 });
    assert!(cache.get(b"hot").is_some());
    cache.flush();
    let info = cache.entry_info(b"hot").unwrap();
    assert_eq!(info.codec, StoredCodec::Raw, "the second hit makes it hot");
    assert!(info.stored_size > value.len() as u64, "a raw file holds the value whole, plus its trailer");
    assert_eq!(cache.get(b"hot").as_deref(), Some(&value[..]));
    assert_eq!(cache.entry_info(b"cold").unwrap().codec, StoredCodec::Zstd { level: 3 });
}
