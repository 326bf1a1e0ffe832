//! Criterion micro-benchmarks of the parts a hit, a miss and maintenance are
//! made of:
//!
//! ```sh
//! cargo bench -p capcache --bench micro [-- FILTER]
//! ```
//!
//! - `key`: deriving an artifact key, per MiB of wasm (BLAKE3, then SHA-256
//!   of that digest), against plain SHA-256 of the same bytes;
//! - `policy`: one crossing into the sandboxed default policy and back
//!   (`on-hit`, `admit`), without the filesystem;
//! - `hit`: a 100-byte value, and a module whose entry is raw (mapped);
//! - `miss`: admit + encode + atomic write of a 100-byte value;
//! - `maintain`: the default policy's pass over 10,000 and 100,000 entries
//!   (below the limits: every entry listed, none removed).

use capcache::Cache;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sha2::Digest;
use std::hint::black_box;
use std::time::Duration;

fn key(c: &mut Criterion) {
    let engine = wasmtime::Engine::default();
    let mut group = c.benchmark_group("key");
    for mib in [1usize, 16] {
        let wasm: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
        group.throughput(Throughput::Bytes(wasm.len() as u64));
        group.bench_function(format!("artifact_key/{mib}MiB"), |b| {
            b.iter(|| capcache::wasmtime::artifact_name(&engine, capcache::wasmtime::Kind::Module, black_box(&wasm)))
        });
        group.bench_function(format!("sha256/{mib}MiB"), |b| b.iter(|| sha2::Sha256::digest(black_box(&wasm))));
    }
    group.finish();
}

fn policy(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder().directory(dir.path()).open().unwrap();
    cache.insert(b"entry", &[7u8; 100]);
    cache.flush();
    let mut group = c.benchmark_group("policy");
    for (name, admit) in [("on_hit", false), ("admit", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| cache.time_policy_calls(b"entry", iters as u32, admit).unwrap() * iters as u32)
        });
    }
    group.finish();
}

fn hit_and_miss(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder().directory(dir.path()).open().unwrap();
    let mut group = c.benchmark_group("hit");
    cache.insert(b"small", &[7u8; 100]);
    group.bench_function("value_100B", |b| b.iter(|| cache.get(black_box(b"small")).unwrap()));
    let engine = wasmtime::Engine::default();
    let wasm = wat::parse_str(r#"(module (func (export "answer") (result i32) i32.const 42))"#).unwrap();
    for _ in 0..3 {
        capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap();
        cache.flush();
    }
    group.bench_function("module_raw_mapped", |b| {
        b.iter(|| capcache::wasmtime::load_module(&cache, &engine, black_box(&wasm)).unwrap())
    });
    group.finish();
    let mut group = c.benchmark_group("miss");
    let mut n = 0u64;
    group.bench_function("insert_100B", |b| {
        b.iter(|| {
            n += 1;
            cache.insert(&n.to_le_bytes(), &[1u8; 100])
        })
    });
    group.finish();
}

fn maintain(c: &mut Criterion) {
    let mut group = c.benchmark_group("maintain");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    for entries in [10_000u64, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::builder()
            .directory(dir.path())
            .setting("file-count-soft-limit", (entries * 2).to_string())
            .open()
            .unwrap();
        for i in 0..entries {
            cache.insert(&i.to_le_bytes(), &[1u8; 64]);
        }
        cache.flush();
        group.bench_function(format!("{entries}_entries"), |b| {
            b.iter_batched(|| (), |()| assert!(cache.maintain().unwrap().ran), BatchSize::PerIteration)
        });
    }
    group.finish();
}

criterion_group!(benches, key, policy, hit_and_miss, maintain);
criterion_main!(benches);
