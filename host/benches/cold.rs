//! Cold starts, as whole processes, side by side in one run: a process that
//! opens a cache, loads one module (a hit) and exits, against the floor, a
//! process that starts an engine and maps the same artifact with
//! `Module::deserialize_file`, nothing more. Each policy (the default; the
//! Python and SpiderMonkey ones when `guest/build-languages` built them) in
//! a library host, and in `capcache compile` when its binary is built. The
//! processes run in turn, round after round, and each row is a median with
//! its ratio to the floor's.
//!
//! ```sh
//! cargo build --release -p capcache-cli     # for the `capcache compile` rows
//! cargo bench -p capcache --bench cold [-- MODULE.wasm --runs N]
//! ```
//!
//! With no module named, it uses `../shared/workloads/sqljs-1.16.0.wasm`
//! beside the repository, else a module it generates. The library host also
//! times its first hit and a second one in the same process (the second
//! maps what the first checked), for the ratio of a process's first hit to
//! a later one.

use capcache::{Cache, Policy};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The child's role, in the environment: `floor` or `host`.
const ROLE: &str = "CAPCACHE_BENCH_COLD";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("floor") => return floor(),
        Ok("host") => return host(),
        _ => {}
    }
    let (module, runs) = parse_args();
    let scratch = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(&module).unwrap_or_else(|e| {
        // cargo runs benchmarks in host/: a relative path is from there.
        eprintln!("cannot read {} ({e}): name a module by an absolute path", module.display());
        std::process::exit(2)
    });
    let engine = wasmtime::Engine::default();
    let artifact = scratch.path().join("artifact.cwasm");
    std::fs::write(&artifact, engine.precompile_module(&wasm).unwrap()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cli = root.join("target/release/capcache");
    let mut policies = vec![("default".to_string(), "default".to_string())];
    for (name, file) in [("python", "python-lru.wasm"), ("spidermonkey", "spidermonkey-lru.wasm")] {
        let path = root.join("target/lang").join(file);
        if path.exists() {
            policies.push((name.to_string(), path.display().to_string()));
        } else {
            println!("({name} policy not built: run `bash guest/build-languages`)");
        }
    }
    if !cli.exists() {
        println!("(no {}: `cargo build --release -p capcache-cli` adds the `capcache compile` rows)", cli.display());
    }
    let me = std::env::current_exe().unwrap();
    let mut rows: Vec<(String, Command)> = Vec::new();
    let mut floor = Command::new(&me);
    floor.env(ROLE, "floor").env("CAPCACHE_BENCH_ARTIFACT", &artifact);
    rows.push(("floor: engine + deserialize_file".into(), floor));
    for (name, policy) in &policies {
        let dir = scratch.path().join(name);
        let mut host = Command::new(&me);
        host.env(ROLE, "host").env("CAPCACHE_BENCH_DIR", &dir).env("CAPCACHE_BENCH_POLICY", policy).env("CAPCACHE_BENCH_MODULE", &module);
        // Compiles the module and the policy, and keeps both: every timed
        // run is then a hit with the policy's code kept.
        run(&mut host);
        run(&mut host);
        rows.push((format!("library host, {name} policy"), host));
        if cli.exists() {
            let mut compile = Command::new(&cli);
            compile.args(["compile", "--dir"]).arg(&dir).arg(&module);
            if policy != "default" {
                compile.arg("--policy").arg(policy);
            }
            run(&mut compile);
            rows.push((format!("capcache compile, {name} policy"), compile));
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); rows.len()];
    let mut first_hits = vec![Vec::new(); policies.len()];
    let mut later_hits = vec![Vec::new(); policies.len()];
    let (mut floor_first, mut floor_later) = (Vec::new(), Vec::new());
    for round in 0..runs {
        // The order rotates round by round: no row always follows another.
        for i in 0..rows.len() {
            let i = (i + round) % rows.len();
            let started = Instant::now();
            let out = run(&mut rows[i].1);
            times[i].push(started.elapsed());
            if i == 0 {
                let (first, later) = out.split_once(' ').expect("the floor prints its two mappings");
                floor_first.push(Duration::from_micros(first.trim().parse().unwrap()));
                floor_later.push(Duration::from_micros(later.trim().parse().unwrap()));
            }
            if let Some(p) = policies.iter().position(|(name, _)| rows[i].0 == format!("library host, {name} policy")) {
                let (first, later) = out.split_once(' ').expect("the host prints its two hits");
                first_hits[p].push(Duration::from_secs_f64(first.trim().parse::<f64>().unwrap() / 1e6));
                later_hits[p].push(Duration::from_secs_f64(later.trim().parse::<f64>().unwrap() / 1e6));
            }
        }
    }
    let floor = median(&mut times[0]);
    println!("module {} ({} bytes), {runs} runs each, whole processes, medians", module.display(), wasm.len());
    let default_rows: Vec<Duration> = rows.iter().zip(times.iter_mut()).map(|(_, t)| median(t)).collect();
    for (i, (name, _)) in rows.iter().enumerate() {
        let t = default_rows[i];
        let mut line = format!("{name:<40} {:>8.2} ms  {:>5.2}x floor", ms(t), t.as_secs_f64() / floor.as_secs_f64());
        // Beside the same kind of process with the default policy.
        if !name.contains("default") && !name.starts_with("floor") {
            let kind = name.split(',').next().unwrap();
            if let Some(j) = rows.iter().position(|(n, _)| n == &format!("{kind}, default policy")) {
                line += &format!("  {:>5.2}x default", t.as_secs_f64() / default_rows[j].as_secs_f64());
            }
        }
        println!("{line}");
    }
    let (first, later) = (median(&mut floor_first), median(&mut floor_later));
    println!(
        "floor, no cache: first deserialize_file {:.2} ms, a later one {:.2} ms: {:.2}x",
        ms(first),
        ms(later),
        first.as_secs_f64() / later.as_secs_f64()
    );
    for (p, (name, _)) in policies.iter().enumerate() {
        let (first, later) = (median(&mut first_hits[p]), median(&mut later_hits[p]));
        println!(
            "library host, {name} policy: first hit {:.2} ms, a later hit {:.2} ms: {:.2}x",
            ms(first),
            ms(later),
            first.as_secs_f64() / later.as_secs_f64()
        );
    }
}

fn parse_args() -> (PathBuf, usize) {
    let (mut module, mut runs) = (None, 21);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--bench" => {}
            other => module = Some(PathBuf::from(other)),
        }
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/workloads/sqljs-1.16.0.wasm");
    let module = module.or_else(|| shared.exists().then_some(shared)).unwrap_or_else(|| {
        // 2,000 functions: an artifact of a few hundred kilobytes.
        let funcs: String = (0..2000).map(|i| format!("(func (export \"f{i}\") (result i32) i32.const {i})")).collect();
        let path = std::env::temp_dir().join(format!("capcache-cold-{}.wasm", std::process::id()));
        std::fs::write(&path, wat::parse_str(format!("(module {funcs})")).unwrap()).unwrap();
        path
    });
    (module, runs)
}

/// Runs a child to its end and returns what it printed; fails loudly.
fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The floor: an engine, the artifact mapped, nothing more. Prints the
/// time of that mapping and of a second one in the same process, in
/// microseconds: what a process's first use of wasmtime costs beside a later
/// one, with no cache at all.
fn floor() {
    let engine = wasmtime::Engine::default();
    let artifact = std::env::var_os("CAPCACHE_BENCH_ARTIFACT").unwrap();
    let mut times = [Duration::ZERO; 2];
    for time in &mut times {
        let started = Instant::now();
        // Safety: the artifact was written by this benchmark's parent, with
        // an engine of the same configuration, and nothing changes it
        // meanwhile.
        let module = unsafe { wasmtime::Module::deserialize_file(&engine, &artifact) };
        std::hint::black_box(module.unwrap());
        *time = started.elapsed();
    }
    print!("{} {}", times[0].as_micros(), times[1].as_micros());
}

/// A library host: opens the cache, loads the module, exits; prints its first
/// load's time and a second load's, in microseconds.
fn host() {
    let var = |name| std::env::var(name).unwrap();
    let engine = wasmtime::Engine::default();
    let policy = Policy::named(var("CAPCACHE_BENCH_POLICY")).unwrap();
    let cache = Cache::builder().directory(var("CAPCACHE_BENCH_DIR")).policy(policy).open().unwrap();
    let module = var("CAPCACHE_BENCH_MODULE");
    let started = Instant::now();
    std::hint::black_box(capcache::wasmtime::load_module_file(&cache, &engine, &module).unwrap());
    let first = started.elapsed();
    let started = Instant::now();
    std::hint::black_box(capcache::wasmtime::load_module_file(&cache, &engine, &module).unwrap());
    let later = started.elapsed();
    print!("{} {}", first.as_micros(), later.as_micros());
}
