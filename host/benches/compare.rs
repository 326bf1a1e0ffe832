//! Side by side, in one run: compiling with no cache, wasmtime's own cache,
//! and capcache (compressed, raw, direct mode), against the limit
//! (`Module::deserialize_file` of a raw artifact). Prints medians and ratios
//! and writes them as JSON.
//!
//! ```sh
//! cargo bench -p capcache --features bench --bench compare [-- MODULE.wasm... --runs N --compile-runs N --json FILE]
//! ```
//!
//! With no modules named, it uses `../shared/workloads/*.wasm` beside the
//! repository. Every module gets the same number of runs; the four ways to
//! miss are interleaved, their order rotated round by round; each row shows
//! its median and its spread (fastest and slowest run). "First in process"
//! runs in fresh processes, one hit each, with the policy's start (its
//! compiled code kept) reported apart. With `redis-server` installed, it
//! starts its own server on 127.0.0.1 and adds the shared tier: a host with
//! an empty disk loading what another host uploaded, over plain TCP and over
//! TLS; with the tests' S3 server installed (`tests/support/s3-server/install`),
//! the same from a bucket.

use capcache::Cache;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::{Config, Engine, Module};

struct Args {
    modules: Vec<PathBuf>,
    runs: usize,
    compile_runs: usize,
    json: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        modules: Vec::new(),
        runs: 21,
        compile_runs: 5,
        json: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/capcache-bench.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => args.runs = it.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--compile-runs" => args.compile_runs = it.next().and_then(|n| n.parse().ok()).expect("--compile-runs N"),
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

/// A case's runs: median, fastest, slowest.
#[derive(Clone, Copy)]
struct Spread {
    median: Duration,
    min: Duration,
    max: Duration,
}

fn spread(mut samples: Vec<Duration>) -> Spread {
    samples.sort();
    Spread { median: samples[samples.len() / 2], min: samples[0], max: samples[samples.len() - 1] }
}

/// Runs `f` `runs` times (after one warm-up run).
fn measure(runs: usize, mut f: impl FnMut()) -> Spread {
    f();
    spread((0..runs).map(|_| {
        let t = Instant::now();
        f();
        t.elapsed()
    }).collect())
}

/// In a child process (`CAPCACHE_BENCH_FIRST_HIT=<cache dir>` and the
/// module's path as the argument): the cache's opening (the policy's start)
/// and the first hit, in microseconds.
fn child_first_hit(dir: &str) {
    let path = std::env::args().nth(1).expect("the module's path");
    let wasm = std::fs::read(&path).unwrap();
    let engine = Engine::default();
    let t = Instant::now();
    let cache = Cache::builder().directory(dir).open().unwrap();
    let open = t.elapsed();
    let t = Instant::now();
    let (module, source) = capcache::wasmtime::load_module_with_source(&cache, &engine, &wasm).unwrap();
    let hit = t.elapsed();
    assert_eq!(source, capcache::Source::Hit);
    drop(module);
    println!("{} {}", open.as_micros(), hit.as_micros());
}

/// The first hit of fresh processes on the cache in `dir`, and their
/// policy starts, `runs` times each.
fn first_hits(dir: &Path, module: &Path, runs: usize) -> (Spread, Spread) {
    let (mut opens, mut hits) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .arg(module)
            .env("CAPCACHE_BENCH_FIRST_HIT", dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut numbers = text.split_whitespace().map(|n| Duration::from_micros(n.parse().unwrap()));
        opens.push(numbers.next().unwrap());
        hits.push(numbers.next().unwrap());
    }
    (spread(opens), spread(hits))
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

/// A Redis server of the benchmark's own (127.0.0.1, a port the kernel chose,
/// its own directory), killed when dropped; `None` without `redis-server`.
/// It speaks plain TCP on one port and TLS on another (a certificate for
/// `localhost` from a CA the benchmark makes), so that the two are compared
/// on the same server and values.
struct Redis {
    child: std::process::Child,
    url: String,
    tls_url: String,
    ca_file: PathBuf,
    _data: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        let dir = tempfile::tempdir().unwrap();
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (port, tls_port) = (free_port(), free_port());
        let (ca_file, cert_file, key_file) = make_certificates(dir.path());
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--tls-port", &tls_port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert_file)
            .arg("--tls-key-file")
            .arg(&key_file)
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let url = format!("redis://127.0.0.1:{port}");
        let tls_url = format!("rediss://localhost:{tls_port}");
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Redis { child, url, tls_url, ca_file, _data: dir });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// A CA and a certificate it signed for `localhost`, as PEM files in `dir`:
/// (CA, certificate, key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The tests' S3-compatible server (moto), on 127.0.0.1, with one bucket;
/// `None` when it is not installed.
struct S3 {
    child: std::process::Child,
    url: String,
}

const S3_KEY: (&str, &str) = ("bench", "bench-secret");

impl S3 {
    fn start() -> Option<S3> {
        use rusty_s3::S3Action;
        use std::io::BufRead;
        let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/s3-server/bin/moto_server");
        let mut child = std::process::Command::new(program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sender = Some(sender);
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(port) = line.split("http://127.0.0.1:").nth(1).and_then(|p| p.trim().parse::<u16>().ok())
                    && let Some(sender) = sender.take()
                {
                    let _ = sender.send(port);
                }
            }
        });
        let port = receiver.recv_timeout(Duration::from_secs(30)).ok()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let bucket = rusty_s3::Bucket::new(endpoint.parse().unwrap(), rusty_s3::UrlStyle::Path, "bench", "us-east-1").unwrap();
        let url = bucket.create_bucket(&rusty_s3::Credentials::new(S3_KEY.0, S3_KEY.1)).sign(Duration::from_secs(60));
        ureq::put(url.as_str()).send_empty().ok()?;
        Some(S3 { child, url: format!("s3://bench?endpoint={endpoint}") })
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The wasmtime this benchmark was built with, as the workspace's Cargo.lock
/// resolved it (the crate exports no version of its own).
fn wasmtime_version() -> String {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let lock = std::fs::read_to_string(lock).unwrap_or_default();
    lock.split("[[package]]")
        .find(|p| p.contains("name = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map_or("(version unknown: no Cargo.lock beside the crate)".into(), |v| v.trim_end_matches('"').to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if let Ok(dir) = std::env::var("CAPCACHE_BENCH_FIRST_HIT") {
        return child_first_hit(&dir);
    }
    let args = parse_args();
    let scratch = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    if redis.is_none() {
        println!("redis-server not found: no shared-tier case");
    }
    let s3 = redis.as_ref().and_then(|_| S3::start());
    if redis.is_some() && s3.is_none() {
        println!("the S3 server is not installed (bash tests/support/s3-server/install): no S3 case");
    }
    let engine = Engine::default();
    let mut report = Vec::new();
    let mut summary = Vec::new();
    println!(
        "capcache benchmark: {} runs per hit case, {} per miss case, wasmtime {}",
        args.runs, args.compile_runs, wasmtime_version()
    );
    for path in &args.modules {
        let wasm = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let compile_runs = args.compile_runs;
        let n = std::sync::atomic::AtomicUsize::new(0);
        let fresh = |tag: &str| {
            let dir = scratch.path().join(format!("{tag}-{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };
        let mut rows: Vec<(&str, Spread)> = Vec::new();

        // The four ways to miss, interleaved round by round so that the
        // machine's drift touches each alike, and in an order rotated each
        // round so that none always runs first (or right after another's
        // writes); each from scratch.
        let mut misses: [Vec<Duration>; 4] = Default::default();
        for round in 0..compile_runs {
            for case in (0..4).map(|i| (i + round) % 4) {
                let timed = |f: &mut dyn FnMut()| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                };
                let elapsed = match case {
                    0 => timed(&mut || drop(Module::new(&engine, &wasm).unwrap())),
                    1 => {
                        let e = wasmtime_cache_engine(&fresh("wt"));
                        timed(&mut || drop(Module::new(&e, &wasm).unwrap()))
                    }
                    // The caller's wait: the worker serializes, compresses
                    // and writes after load_module returns.
                    2 => {
                        let cache = capcache(&fresh("cc"), false);
                        timed(&mut || drop(capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap()))
                    }
                    _ => {
                        let cache = capcache(&fresh("cc"), false);
                        timed(&mut || {
                            drop(capcache::wasmtime::load_module(&cache, &engine, &wasm).unwrap());
                            cache.flush();
                        })
                    }
                };
                misses[case].push(elapsed);
            }
        }
        let [compile, wt_miss, cc_miss, cc_stored] = misses.map(spread);
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
        // Stored before the hits are timed: until then, loads of these bytes
        // share the miss's compile in memory (flight.rs), which is no hit.
        cache.flush();
        rows.push(("capcache hit (zstd; raw-entries = never)", measure(args.runs, || {
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
        // File loads: by content (the default: the file is read and hashed
        // every time), and in direct mode (its identity trusted instead).
        capcache::wasmtime::load_module_file(&cache, &engine, path).unwrap();
        rows.push(("capcache file-load hit (raw; by content)", measure(args.runs, || {
            capcache::wasmtime::load_module_file(&cache, &engine, path).unwrap();
        })));
        drop(cache);
        let cache = Cache::builder().directory(&dir).direct_mode(capcache::DirectMode::TrustFileIdentity).open().unwrap();
        capcache::wasmtime::load_module_file(&cache, &engine, path).unwrap();
        rows.push(("capcache direct-mode hit (raw)", measure(args.runs, || {
            capcache::wasmtime::load_module_file(&cache, &engine, path).unwrap();
        })));
        drop(cache);
        // The first hit of a process checks the entry's digest whole.
        let (policy_start, first_hit) = first_hits(&dir, path, args.runs);
        rows.push(("capcache hit (raw, first in a new process)", first_hit));
        rows.push(("policy start in a new process (code kept)", policy_start));

        // The shared tier: host A compiled and uploaded (zstd, as the
        // default policy first stores it); each run is a host with an empty
        // disk: GET, check, local write, load.
        if let Some(redis) = &redis {
            let remote = || capcache::RemoteSettings::new(&redis.url).prefix(format!("bench-{name}"));
            let a = Cache::builder().directory(fresh("remote-a")).remote(remote()).open().unwrap();
            capcache::wasmtime::load_module(&a, &engine, &wasm).unwrap();
            a.flush();
            assert_eq!(a.stats().remote_uploads, 1, "the artifact was not uploaded: {:?}", a.stats());
            let tls = || capcache::RemoteSettings::new(&redis.tls_url).prefix(format!("bench-{name}")).tls_ca_file(&redis.ca_file);
            let bucket = || {
                let url = &s3.as_ref().unwrap().url;
                capcache::RemoteSettings::new(url).prefix(format!("bench-{name}")).s3_credentials(capcache::S3Credentials::new(S3_KEY.0, S3_KEY.1))
            };
            if s3.is_some() {
                let a = Cache::builder().directory(fresh("remote-a-s3")).remote(bucket()).open().unwrap();
                capcache::wasmtime::load_module(&a, &engine, &wasm).unwrap();
                a.flush();
                assert_eq!(a.stats().remote_uploads, 1, "the artifact was not uploaded to S3: {:?}", a.stats());
            }
            // Plain, TLS and S3 in turn, run by run: a drift of the
            // machine's speed falls on all.
            let (mut times, mut tls_times, mut s3_times, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), (0, 0));
            for _ in 0..args.runs {
                let mut tiers = vec![(remote(), &mut times, false), (tls(), &mut tls_times, false)];
                if s3.is_some() {
                    tiers.push((bucket(), &mut s3_times, true));
                }
                for (settings, times, from_s3) in tiers {
                    let dir = fresh("remote-b");
                    let b = Cache::builder().directory(&dir).remote(settings).open().unwrap();
                    let t = Instant::now();
                    let (module, source) = capcache::wasmtime::load_module_with_source(&b, &engine, &wasm).unwrap();
                    times.push(t.elapsed());
                    assert_eq!(source, capcache::Source::RemoteHit);
                    if from_s3 {
                        bytes.1 = b.stats().remote_bytes_in;
                    } else {
                        bytes.0 = b.stats().remote_bytes_in;
                    }
                    drop((module, b));
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
            println!("  ({name}: a remote hit moves {} bytes from Redis, {} from S3)", bytes.0, bytes.1);
            rows.push(("capcache remote hit over TLS (empty disk)", spread(tls_times)));
            rows.push(("capcache remote hit (empty disk)", spread(times)));
            if s3.is_some() {
                rows.push(("capcache remote hit from S3 (empty disk)", spread(s3_times)));
            }
        }

        let artifact = fresh("limit").join("module.cwasm");
        std::fs::write(&artifact, engine.precompile_module(&wasm).unwrap()).unwrap();
        rows.push(("limit: deserialize_file", measure(args.runs, || {
            unsafe { Module::deserialize_file(&engine, &artifact) }.unwrap();
        })));
        // What a content-keyed hit cannot avoid: hashing the wasm (on all
        // cores from 4 MiB, as capcache does: below that one core is faster)
        // and mapping the artifact.
        rows.push(("floor: BLAKE3 of the wasm + deserialize_file", measure(args.runs, || {
            let mut hasher = blake3::Hasher::new();
            if wasm.len() >= 4 << 20 {
                hasher.update_rayon(&wasm);
            } else {
                hasher.update(&wasm);
            }
            std::hint::black_box(hasher.finalize());
            unsafe { Module::deserialize_file(&engine, &artifact) }.unwrap();
        })));

        let wt_hit = rows.iter().find(|r| r.0 == "wasmtime cache hit").unwrap().1.median;
        let compile = rows.iter().find(|r| r.0 == "compile, no cache").unwrap().1.median;
        let limit = rows.iter().find(|r| r.0 == "limit: deserialize_file").unwrap().1.median;
        println!("\n{name} ({} bytes)", wasm.len());
        println!("  {:42} {:>11} {:>21} {:>13} {:>8}", "case", "median ms", "spread ms", "÷ wasmtime hit", "÷ limit");
        for (label, s) in &rows {
            let d = s.median;
            println!(
                "  {label:42} {:>11.3} {:>21} {:>13.3} {:>8.2}",
                ms(d),
                format!("{:.3}-{:.3}", ms(s.min), ms(s.max)),
                d.as_secs_f64() / wt_hit.as_secs_f64(),
                d.as_secs_f64() / limit.as_secs_f64()
            );
            report.push(serde_json::json!({
                "module": name, "case": label, "median_ms": ms(d), "min_ms": ms(s.min), "max_ms": ms(s.max),
                "ratio_to_wasmtime_hit": d.as_secs_f64() / wt_hit.as_secs_f64(),
                "ratio_to_limit": d.as_secs_f64() / limit.as_secs_f64(),
            }));
        }
        let of = |label: &str| rows.iter().find(|r| r.0 == label).unwrap().1.median.as_secs_f64();
        summary.push(format!(
            "{name}: hit (raw) {:.3}x wasmtime hit [target <= 0.1]; hit {:.2}x floor, file-load hit {:.2}x floor [<= 1.2]; \
             direct {:.2}x limit [<= 3]; miss {:.3}x compile [<= 1.05]",
            of("capcache hit (raw, mapped)") / wt_hit.as_secs_f64(),
            of("capcache hit (raw, mapped)") / of("floor: BLAKE3 of the wasm + deserialize_file"),
            of("capcache file-load hit (raw; by content)") / of("floor: BLAKE3 of the wasm + deserialize_file"),
            of("capcache direct-mode hit (raw)") / limit.as_secs_f64(),
            of("capcache miss") / compile.as_secs_f64(),
        ));
        if rows.iter().any(|r| r.0 == "capcache remote hit (empty disk)") {
            summary.push(format!(
                "{name}: remote hit {:.2}x local zstd hit [target <= 2]; {:.3}x compile [< 0.05]; over TLS {:.2}x without [<= 1.2]",
                of("capcache remote hit (empty disk)") / of("capcache hit (zstd; raw-entries = never)"),
                of("capcache remote hit (empty disk)") / compile.as_secs_f64(),
                of("capcache remote hit over TLS (empty disk)") / of("capcache remote hit (empty disk)"),
            ));
        }
        if rows.iter().any(|r| r.0 == "capcache remote hit from S3 (empty disk)") {
            summary.push(format!(
                "{name}: S3 remote hit {:.2}x local zstd hit [target <= 3]; {:.2}x a Redis remote hit",
                of("capcache remote hit from S3 (empty disk)") / of("capcache hit (zstd; raw-entries = never)"),
                of("capcache remote hit from S3 (empty disk)") / of("capcache remote hit (empty disk)"),
            ));
        }
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
