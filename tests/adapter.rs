//! The wasmtime adapter: modules and components through the cache, raw entries
//! mapped from their files, direct mode, and engine configurations kept apart.


use capcache::wasmtime::{load_component, load_module};
use std::time::Duration;
use crate::support::*;
use wasmtime::{Engine, Store};

#[test]
fn module_hit_instantiates_and_runs() {
    for raw in ["never", "always"] {
        let t = TestCache::new();
        let cache = t.builder().setting("raw-entries", raw).open().unwrap();
        let engine = Engine::default();
        let wasm = tiny_module(42);
        let first = load_module(&cache, &engine, &wasm).unwrap();
        assert_eq!(answer(&engine, &first), 42);
        // A miss's artifact is serialized and stored by the worker.
        cache.flush();
        assert_eq!((cache.stats().misses, cache.stats().inserts), (1, 1));
        let second = load_module(&cache, &engine, &wasm).unwrap();
        assert_eq!(answer(&engine, &second), 42);
        assert_eq!(cache.stats().hits, 1, "raw-entries={raw}");
        let expected = if raw == "always" { capcache::StoredCodec::Raw } else { capcache::StoredCodec::Zstd { level: 3 } };
        assert_eq!(cache.entries().unwrap()[0].codec, expected);
    }
}

#[test]
fn a_miss_is_stored_off_the_callers_path_and_closing_the_cache_waits_for_it() {
    let t = TestCache::new();
    let engine = Engine::default();
    let wasms: Vec<_> = (0..5).map(|n| tiny_module(100 + n)).collect();
    let names: Vec<_> = wasms.iter().map(|w| capcache::wasmtime::artifact_name(&engine, capcache::wasmtime::Kind::Module, w)).collect();
    {
        // The worker is kept busy (the policy spins in on-insert until its
        // deadline), so a store made on the caller's path would show at once.
        let host = capcache::HostSettings { event_deadline: Duration::from_millis(500), ..Default::default() };
        let cache = t.builder().policy(guest_policy("hostile")).setting("mode", "loop-insert").host_settings(host).open().unwrap();
        assert!(cache.insert(b"keeps the worker busy", b"v"));
        for (wasm, name) in wasms.iter().zip(&names) {
            load_module(&cache, &engine, wasm).unwrap();
            assert!(!t.entries_dir().join(name).exists(), "the miss was stored on the caller's path");
        }
        // Dropped at once: the queued stores are finished first.
    }
    for name in &names {
        assert!(t.entries_dir().join(name).exists(), "closing the cache lost a queued store");
    }
    let cache = t.open();
    for (n, wasm) in wasms.iter().enumerate() {
        assert_eq!(answer(&engine, &load_module(&cache, &engine, wasm).unwrap()), 100 + n as i32);
    }
    assert_eq!((cache.stats().hits, cache.stats().misses), (5, 0));
}

#[test]
fn with_a_full_queue_and_a_busy_policy_a_miss_is_stored_only_as_the_policy_says_and_never_waits() {
    let t = TestCache::new();
    // A policy stuck in on-insert fills a queue of one at once, and holds
    // the policy while it spins: the caller, which stores a miss itself when
    // the queue is full, finds the policy busy too.
    let deadline = Duration::from_millis(300);
    let host = capcache::HostSettings { event_queue_size: 1, event_deadline: deadline, ..Default::default() };
    let cache = t.builder().policy(guest_policy("hostile")).setting("mode", "loop-insert").host_settings(host).open().unwrap();
    let engine = Engine::default();
    let wasms: Vec<_> = (0..4).map(|n| tiny_module(200 + n)).collect();
    for (n, wasm) in wasms.iter().enumerate() {
        let started = std::time::Instant::now();
        load_module(&cache, &engine, wasm).unwrap();
        assert!(started.elapsed() < deadline, "a miss waited {:?} for a busy policy", started.elapsed());
        if n == 0 {
            // The worker takes the first insert's event and spins in it,
            // however loaded the machine: then the others come.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    cache.flush();
    let stats = cache.stats();
    // Each miss is stored as the policy said (zstd 1), or, when neither the
    // worker nor the policy could take it, counted as not stored: never
    // stored with a decision the policy did not make, never lost unseen.
    assert_eq!(stats.inserts + stats.skipped, 4, "{stats:?}");
    assert!(stats.inserts >= 1 && stats.skipped >= 1, "the queue and the policy were not both busy: {stats:?}");
    assert!(cache.entries().unwrap().iter().all(|e| e.codec == capcache::StoredCodec::Zstd { level: 1 }));
    let hits_before = cache.stats().hits;
    for wasm in &wasms {
        load_module(&cache, &engine, wasm).unwrap();
    }
    assert_eq!(cache.stats().hits - hits_before, stats.inserts);
}

#[test]
fn a_raw_entry_is_the_artifact_from_offset_zero() {
    let t = TestCache::new();
    let cache = t.builder().setting("raw-entries", "always").open().unwrap();
    let engine = Engine::default();
    let wasm = tiny_module(7);
    load_module(&cache, &engine, &wasm).unwrap();
    cache.flush();
    let name = capcache::wasmtime::artifact_name(&engine, capcache::wasmtime::Kind::Module, &wasm);
    let path = t.root().join("default/entries").join(name);
    // wasmtime itself loads the entry file as it is (the trailer after the
    // artifact is ignored by its loader).
    // SAFETY: the file is the artifact this engine's wasmtime just compiled,
    // written by this test's cache.
    let module = if under_wine() {
        // Wine cannot map a file read-only ("failed change pages to
        // PAGE_READONLY"): its bytes, read, stand for the mapping.
        unsafe { wasmtime::Module::deserialize(&engine, std::fs::read(&path).unwrap()) }.unwrap()
    } else {
        unsafe { wasmtime::Module::deserialize_file(&engine, &path) }.unwrap()
    };
    assert_eq!(answer(&engine, &module), 7);
}

#[test]
fn a_raw_entry_changed_in_place_after_its_hits_is_caught_on_the_next_hit() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let t = TestCache::new();
    let cache = t.builder().setting("raw-entries", "always").open().unwrap();
    let engine = Engine::default();
    let wasm = tiny_module(9);
    load_module(&cache, &engine, &wasm).unwrap();
    cache.flush();
    // The first hit checks the digest; the second is served on the file's
    // unchanged identity (the worker's touch of the last-use time included).
    for _ in 0..2 {
        assert_eq!(answer(&engine, &load_module(&cache, &engine, &wasm).unwrap()), 9);
        cache.flush();
    }
    let name = capcache::wasmtime::artifact_name(&engine, capcache::wasmtime::Kind::Module, &wasm);
    let path = t.root().join("default/entries").join(name);
    // One byte of the artifact changed in place, and the modification time put
    // back: only the change time tells.
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    make_writable(&path);
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(200)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(200)).unwrap();
    file.write_all(&[byte[0] ^ 0x10]).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    let module = load_module(&cache, &engine, &wasm).unwrap();
    assert_eq!(answer(&engine, &module), 9);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.corrupt, stats.misses), (2, 1, 2));
}

#[test]
fn another_engine_configuration_misses() {
    let t = TestCache::new();
    let cache = t.open();
    let wasm = tiny_module(1);
    let default = Engine::default();
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    let fuel = Engine::new(&config).unwrap();
    load_module(&cache, &default, &wasm).unwrap();
    load_module(&cache, &fuel, &wasm).unwrap();
    cache.flush();
    assert_eq!((cache.stats().hits, cache.stats().misses), (0, 2));
    load_module(&cache, &fuel, &wasm).unwrap();
    assert_eq!(cache.stats().hits, 1);
    assert_ne!(capcache::wasmtime::engine_namespace(&default), capcache::wasmtime::engine_namespace(&fuel));
}

#[test]
fn component_hit_instantiates_and_runs() {
    for raw in ["never", "always"] {
        let t = TestCache::new();
        let cache = t.builder().setting("raw-entries", raw).open().unwrap();
        let engine = Engine::default();
        let wasm = wat::parse_str(
            r#"(component
                (core module $m (func (export "f") (result i32) i32.const 7))
                (core instance $i (instantiate $m))
                (func (export "f") (result s32) (canon lift (core func $i "f"))))"#,
        )
        .unwrap();
        for round in 0..2 {
            let component = load_component(&cache, &engine, &wasm).unwrap();
            let mut store = Store::new(&engine, ());
            let linker = wasmtime::component::Linker::new(&engine);
            let instance = linker.instantiate(&mut store, &component).unwrap();
            let f = instance.get_typed_func::<(), (i32,)>(&mut store, "f").unwrap();
            assert_eq!(f.call(&mut store, ()).unwrap(), (7,));
            assert_eq!(cache.stats().hits, round, "raw-entries={raw}");
            cache.flush();
        }
    }
}


/// A module that takes a while to compile: `n` functions.
fn module_of_functions(n: usize, seed: u32) -> Vec<u8> {
    let funcs: String = (0..n).map(|i| format!("(func (export \"f{i}\") (result i32) i32.const {})", i as u32 ^ seed)).collect();
    wat::parse_str(format!("(module {funcs})")).unwrap()
}

#[test]
fn a_module_is_compiled_once_per_process_by_loads_back_to_back_or_at_once() {
    use capcache::Source;
    let t = TestCache::new();
    let cache = t.open();
    let engine = Engine::default();
    // Back to back: the second load comes before the worker has stored the
    // first's artifact (its queue is held by nothing here but its own pace),
    // and takes the first's compile.
    let wasm = module_of_functions(3000, 1);
    let first = capcache::wasmtime::load_module_with_source(&cache, &engine, &wasm).unwrap();
    let second = capcache::wasmtime::load_module_with_source(&cache, &engine, &wasm).unwrap();
    assert_eq!((first.1, second.1), (Source::Miss, Source::Hit));
    cache.flush();
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.hits, stats.inserts), (1, 1, 1), "{stats:?}");

    // At once, from four threads: one compiles, three wait for it.
    let wasm = module_of_functions(3000, 2);
    let sources: Vec<Source> = std::thread::scope(|s| {
        let loads: Vec<_> = (0..4)
            .map(|_| s.spawn(|| capcache::wasmtime::load_module_with_source(&cache, &engine, &wasm).unwrap().1))
            .collect();
        loads.into_iter().map(|l| l.join().unwrap()).collect()
    });
    assert_eq!(sources.iter().filter(|s| **s == Source::Miss).count(), 1, "{sources:?}");
    cache.flush();
    assert_eq!(cache.stats().misses, 2, "{:?}", cache.stats());
    // Once stored, a load reads the entry: the process holds no artifact.
    assert_eq!(capcache::wasmtime::load_module_with_source(&cache, &engine, &wasm).unwrap().1, Source::Hit);
}
