//! Cranelift's incremental compilation, through capcache: change one function,
//! recompile, and the others come from the cache under Cranelift's own keys.


use std::sync::Arc;
use crate::support::*;

fn module(changed: i32) -> Vec<u8> {
    let mut text = String::from("(module\n");
    for f in 0..8 {
        // Bodies big enough to be worth caching, and different from each other.
        text.push_str(&format!(
            "(func (export \"f{f}\") (param i32) (result i32)
               (local i32)
               (local.set 1 (i32.mul (local.get 0) (i32.const {a})))
               (if (i32.gt_s (local.get 1) (i32.const {b}))
                 (then (local.set 1 (i32.sub (local.get 1) (i32.const {c})))))
               (i32.add (local.get 1) (i32.const {d})))\n",
            a = f + 3,
            b = f * 100,
            c = f + 1,
            d = if f == 7 { changed } else { f }
        ));
    }
    text.push(')');
    wat::parse_str(text).unwrap()
}

#[test]
fn one_changed_function_recompiles_alone() {
    let t = TestCache::new();
    let cache = Arc::new(t.open());
    let mut config = wasmtime::Config::new();
    capcache::incremental::enable(&mut config, cache.clone()).unwrap();
    let engine = wasmtime::Engine::new(&config).unwrap();

    wasmtime::Module::new(&engine, module(1)).unwrap();
    let first = cache.stats();
    assert!(first.inserts >= 8, "Cranelift stored no function: {first:?}");
    eprintln!("first: {first:?}");

    wasmtime::Module::new(&engine, module(2)).unwrap();
    let second = cache.stats();
    let hits = second.hits - first.hits;
    let misses = second.misses - first.misses;
    eprintln!("second: {hits} hits, {misses} misses");
    assert!(hits >= 7, "unchanged functions were not reused: {hits} hits");
    assert!(misses >= 1, "the changed function was not recompiled");
    assert!(misses < first.misses, "{misses} misses on the second compile, {} on the first", first.misses);

    // And the module still computes what its text says.
    let module = wasmtime::Module::new(&engine, module(2)).unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    let f7 = instance.get_typed_func::<i32, i32>(&mut store, "f7").unwrap();
    // 1 * 10 = 10, not > 700, + 2
    assert_eq!(f7.call(&mut store, 1).unwrap(), 12);
}
