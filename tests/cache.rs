//! Insert, hit and miss through the real host and the default policy.


use capcache::{Cache, Source, StoredCodec};
use crate::support::*;

#[test]
fn a_cache_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cache>();
    let t = TestCache::new();
    let cache = t.open();
    std::thread::scope(|scope| {
        for n in 0..4u8 {
            let cache = &cache;
            scope.spawn(move || {
                for i in 0..50u8 {
                    let got = cache.get_or_insert_with(&[n, i], || Ok::<_, ()>(vec![n; i as usize])).unwrap();
                    assert_eq!(got.bytes, vec![n; i as usize]);
                }
            });
        }
    });
    // Each stored now, or by the worker if a maintenance pass held the
    // policy, or, with the worker's queue full too, skipped and counted.
    cache.flush();
    let stats = cache.stats();
    assert_eq!(stats.inserts + stats.skipped, 200, "{stats:?}");
    assert!(stats.inserts > 0, "{stats:?}");
}

#[test]
fn miss_then_insert_then_hit() {
    let t = TestCache::new();
    let cache = t.open();
    assert_eq!(cache.get(b"key"), None);
    let value = incompressible(1, 10_000);
    assert!(cache.insert(b"key", &value));
    assert_eq!(cache.get(b"key").as_deref(), Some(&value[..]));
    assert_eq!(cache.get(b"other key"), None);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.inserts), (1, 2, 1));
    // The default policy stores at wasmtime's baseline level.
    let info = cache.entry_info(b"key").unwrap();
    assert_eq!(info.codec, StoredCodec::Zstd { level: 3 });
    assert_eq!(info.raw_size, 10_000);
    // The file is named by the base64url SHA-256 of the key.
    assert_eq!(info.name, capcache::ValueKey::of(b"key").name());
    assert!(t.entries_dir().join(&info.name).is_file());
}

#[test]
fn get_or_insert_with_computes_once_and_keeps_errors_of_compute() {
    let t = TestCache::new();
    let cache = t.open();
    let mut calls = 0;
    let mut compute = || {
        calls += 1;
        Ok::<_, String>(b"compiled".to_vec())
    };
    let first = cache.get_or_insert_with(b"k", &mut compute).unwrap();
    let second = cache.get_or_insert_with(b"k", &mut compute).unwrap();
    assert_eq!((first.source, second.source), (Source::Miss, Source::Hit));
    assert_eq!(second.bytes, b"compiled");
    assert_eq!(calls, 1);
    let failed = cache.get_or_insert_with(b"broken", || Err::<Vec<u8>, _>("compile error".to_string()));
    assert_eq!(failed.unwrap_err(), "compile error");
    assert_eq!(cache.get(b"broken"), None);
}

#[test]
fn entries_persist_across_opens() {
    let t = TestCache::new();
    t.open().insert(b"k", b"value");
    assert_eq!(t.open().get(b"k").as_deref(), Some(&b"value"[..]));
}

#[test]
fn hits_are_counted_across_processes_worth_of_opens() {
    let t = TestCache::new();
    let first = t.open();
    first.insert(b"k", b"value");
    let second = t.open();
    for _ in 0..3 {
        first.get(b"k").unwrap();
        second.get(b"k").unwrap();
    }
    first.flush();
    second.flush();
    assert_eq!(first.entry_info(b"k").unwrap().hits, 6);
}

#[test]
fn namespaces_are_apart() {
    let t = TestCache::new();
    let a = t.builder().namespace("engine-a").open().unwrap();
    let b = t.builder().namespace("engine-b").open().unwrap();
    a.insert(b"k", b"from a");
    assert_eq!(b.get(b"k"), None);
    assert!(matches!(
        t.builder().namespace("../escape").open(),
        Err(capcache::Error::InvalidNamespace(_))
    ));
}

#[test]
fn disabled_cache_computes_every_time() {
    let cache = Cache::builder().enabled(false).open().unwrap();
    assert!(!cache.is_enabled());
    assert!(!cache.insert(b"k", b"v"));
    let mut calls = 0;
    for _ in 0..2 {
        let got = cache.get_or_insert_with(b"k", || {
            calls += 1;
            Ok::<_, ()>(b"v".to_vec())
        });
        assert_eq!(got.unwrap().source, Source::Uncached);
    }
    assert_eq!(calls, 2);
}

#[test]
fn a_file_where_the_directory_goes_is_a_clear_error() {
    let t = TestCache::new();
    // A file where the cache root should be: no process, root or not, can make
    // a directory there.
    std::fs::write(t.root(), b"not a directory").unwrap();
    let err = t.builder().open().unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&t.root().display().to_string()), "{message}");
}

unix_only! { "Unix modes (chmod 777); the Windows counterpart is trust::a_directory_whose_access_list_lets_everyone_write_is_refused_on_windows",
#[test]
fn a_directory_others_can_write_is_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestCache::new();
    std::fs::create_dir_all(t.root()).unwrap();
    std::fs::set_permissions(t.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = t.builder().open().unwrap_err();
    assert!(matches!(err, capcache::Error::InsecureDirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("world-writable"), "{err}");
    let cache = t.builder().allow_insecure_directory(true).open().unwrap();
    assert!(cache.insert(b"k", b"v"));
}
}

unix_only! { "needs Unix users: gives a file to the user nobody (chown) or runs a child as nobody",
#[test]
fn a_directory_of_another_user_is_refused() {
    let t = TestCache::new();
    std::fs::create_dir_all(t.root()).unwrap();
    if !have_root("a_directory_of_another_user_is_refused", "gives a directory to another user") {
        return;
    }
    std::os::unix::fs::chown(t.root(), Some(65534), None).unwrap();
    let err = t.builder().open().unwrap_err();
    assert!(err.to_string().contains("owned by user 65534"), "{err}");
}
}
