//! Side by side, in one run: compiling with no cache, wasmtime's own cache,
//! and capcache (compressed, raw, direct mode), against the limit
//! (`Module::deserialize_file` of a raw artifact). Prints medians and ratios
//! and writes them as JSON.
//!
//! ```sh
//! cargo bench -p capcache --features bench --bench compare [-- MODULE.wasm... --runs N --json FILE]
//! ```
//!
//! With no modules named, it uses `../shared/workloads/*.wasm` beside the
//! repository.

use capcache::Cache;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::{Config, Engine, Module};

struct Args {
    modules: Vec<PathBuf>,
    runs: usize,
    json: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args { modules: Vec::new(), runs: 21, json: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/capcache-bench.json") };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => args.runs = it.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--json" => args.json = PathBuf::from(it.next().expect("--json FILE")),
            "--bench" => {} // passed by `cargo bench`
            other => args.modules.push(PathBuf::from(other)),
        }
    }
    if args.modules.is_empty() {
        let workloads = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/workloads");
        match std::fs::read_dir(&workloads) {
            Ok(dir) => {
                let mut found: Vec<_> =
                    dir.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "wasm")).collect();
                found.sort();
                args.modules = found;
            }
            Err(e) => {
                eprintln!("no modules named, and {} is not readable ({e}): nothing to measure", workloads.display());
                std::process::exit(2);
            }
        }
    }
    args
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Runs `f` `runs` times (after one warm-up run) and returns the median.
fn measure(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    median((0..runs).map(|_| {
        let t = Instant::now();
        f();
        t.elapsed()
    }).collect())
}

/// Runs `setup` then times `f`, `runs` times; the median of `f`. What `f`
/// returns is dropped after the clock stops.
fn measure_fresh<S, R>(runs: usize, mut setup: impl FnMut() -> S, mut f: impl FnMut(S) -> R) -> Duration {
    median((0..runs).map(|_| {
        let state = setup();
        let t = Instant::now();
        let result = f(state);
        let elapsed = t.elapsed();
        drop(result);
        elapsed
    }).collect())
}

fn wasmtime_cache_engine(dir: &Path) -> Engine {
    let mut cache_config = wasmtime::CacheConfig::new();
    cache_config.with_directory(dir);
    let cache = wasmtime::Cache::new(cache_config).expect("wasmtime cache");
    let mut config = Config::new();
    config.cache(Some(cache));
    Engine::new(&config).unwrap()
}

/// A cache with the default policy; `compressed` keeps every entry zstd
/// (wasmtime's behaviour) instead of storing hot ones raw.
fn capcache(dir: &Path, compressed: bool) -> Cache {
    let mut builder = Cache::builder().directory(dir);
    if compressed {
        builder = builder.setting("raw-entries", "never");
    }
    builder.open().unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args = parse_args();
    let scratch = tempfile::tempdir().unwrap();
    let engine = Engine::default();
    let mut report = Vec::new();
    let mut summary = Vec::new();
    println!("capcache benchmark: {} runs per hit case (median), wasmtime {}", args.runs, "48.0.8");
    for path in &args.modules {
        let wasm = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // Compiling is slow: fewer runs, each from scratch.
        let compile_runs = if wasm.len() > 4 << 20 { 3 } else { 7 };
        let n = std::sync::atomic::AtomicUsize::new(0);
        let fresh = |tag: &str| {
            let dir = scratch.path().join(format!("{tag}-{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };
        let mut rows: Vec<(&str, Duration)> = Vec::new();

        // The four ways to miss, interleaved round by round so that the
        // machine's drift touches each alike; each from scratch.
        let mut misses: [Vec<Duration>; 4] = Default::default();
        for _ in 0..compile_runs {
            let timed = |f: &mut dyn FnMut()| {
                let t = Instant::now();
                f();
                t.elapsed()
            };
            misses[0].push(timed(&mut || drop(Module::new(&engine, &wasm).unwrap())));
            let e = wasmtime_cache_engine(&fresh("wt"));
            misses[1].push(timed(&mut || drop(Module::new(&e, &wasm).unwrap())));
            drop(e);
            // The caller's wait: the worker serializes, compresses and writes
            // after load_module returns.
            let cache = capcache(&fresh("cc"), false);
            misses[2].push(timed(&mut || drop(capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap())));
            drop(cache);
            let cache = capcache(&fresh("cc"), false);
            misses[3].push(timed(&mut || {
                drop(capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap());
                cache.flush();
            }));
            drop(cache);
        }
        let [compile, wt_miss, cc_miss, cc_stored] = misses.map(median);
        rows.push(("compile, no cache", compile));
        rows.push(("wasmtime cache miss", wt_miss));
        let wt = wasmtime_cache_engine(&fresh("wt-hit"));
        Module::new(&wt, &wasm).unwrap();
        std::thread::sleep(Duration::from_millis(200)); // its worker writes stats
        rows.push(("wasmtime cache hit", measure(args.runs, || {
            Module::new(&wt, &wasm).unwrap();
        })));

        rows.push(("capcache miss", cc_miss));
        rows.push(("capcache miss, until stored", cc_stored));

        // Compressed: every hit reads, checks and decompresses the entry.
        let dir = fresh("cc-zstd");
        let cache = capcache(&dir, true);
        capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap();
        rows.push(("capcache hit (zstd)", measure(args.runs, || {
            capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap();
        })));
        drop(cache);

        // The default policy: hot after two hits, then stored raw and mapped.
        let dir = fresh("cc-raw");
        let cache = capcache(&dir, false);
        for _ in 0..3 {
            capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap();
            cache.flush();
        }
        assert_eq!(cache.entries().unwrap()[0].codec, capcache::StoredCodec::Raw, "the default policy made it raw");
        rows.push(("capcache hit (raw, mapped)", measure(args.runs, || {
            capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap();
        })));
        capcache::wasmtime::load_module_file(&cache, &engine, path).unwrap();
        rows.push(("capcache direct-mode hit (raw)", measure(args.runs, || {
            capcache::wasmtime::load_module_file(&cache, &engine, path).unwrap();
        })));
        drop(cache);
        // The first hit of a process checks the entry's digest whole.
        rows.push(("capcache hit (raw, first in process)", measure_fresh(args.runs.min(5), || capcache(&dir, false), |cache| {
            capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap();
            cache
        })));

        let artifact = fresh("limit").join("module.cwasm");
        std::fs::write(&artifact, engine.precompile_module(&wasm).unwrap()).unwrap();
        rows.push(("limit: deserialize_file", measure(args.runs, || {
            unsafe { Module::deserialize_file(&engine, &artifact) }.unwrap();
        })));

        let wt_hit = rows.iter().find(|r| r.0 == "wasmtime cache hit").unwrap().1;
        let compile = rows.iter().find(|r| r.0 == "compile, no cache").unwrap().1;
        let limit = rows.iter().find(|r| r.0 == "limit: deserialize_file").unwrap().1;
        println!("\n{name} ({} bytes)", wasm.len());
        println!("  {:36} {:>11} {:>13} {:>10}", "case", "median ms", "÷ wasmtime hit", "÷ limit");
        for (label, d) in &rows {
            println!(
                "  {label:36} {:>11.3} {:>13.3} {:>10.2}",
                ms(*d),
                d.as_secs_f64() / wt_hit.as_secs_f64(),
                d.as_secs_f64() / limit.as_secs_f64()
            );
            report.push(serde_json::json!({
                "module": name, "case": label, "median_ms": ms(*d),
                "ratio_to_wasmtime_hit": d.as_secs_f64() / wt_hit.as_secs_f64(),
                "ratio_to_limit": d.as_secs_f64() / limit.as_secs_f64(),
            }));
        }
        let of = |label: &str| rows.iter().find(|r| r.0 == label).unwrap().1.as_secs_f64();
        summary.push(format!(
            "{name}: hit (raw) {:.3}x wasmtime hit [target <= 0.1]; direct {:.2}x limit [<= 3]; miss {:.3}x compile [<= 1.05]",
            of("capcache hit (raw, mapped)") / wt_hit.as_secs_f64(),
            of("capcache direct-mode hit (raw)") / limit.as_secs_f64(),
            of("capcache miss") / compile.as_secs_f64(),
        ));
    }
    println!("\ntargets:");
    for line in &summary {
        println!("  {line}");
    }
    if let Some(parent) = args.json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nwritten to {}", args.json.display());
}
