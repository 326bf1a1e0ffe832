//! Figures for the policy's costs, through the public API: the policy's
//! start in a fresh process (compiled, and loaded from the compiled-policy
//! store), a miss's admit + store of a small value, a hit's event through the
//! worker, and `maintain` over many entries (wall time and the peak RSS of
//! the passes alone), with hit latency during a pass beside the events it
//! dropped.
//!
//! ```sh
//! cargo bench -p capcache --bench policy [-- --entries 10000,100000 --policy default --policy P.wasm ...]
//! ```
//!
//! Each `--policy` (default: the embedded default policy) is measured in turn,
//! in the same run; a policy other than the default must take the default
//! policy's `file-count-soft-limit` setting (the LRU policies in
//! `guest/python` and `guest/js` do).

use capcache::{Cache, Policy};
use std::time::{Duration, Instant};

/// A field of /proc/self/status, in KiB; `None` where it cannot be read.
fn status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
}

/// A memory figure for people: MiB, or why there is none.
fn mib(kib: Option<u64>) -> String {
    kib.map_or("(unknown: /proc/self/status unreadable)".into(), |k| format!("{} MiB", k / 1024))
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so that the next
/// reading is the peak of what runs in between.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("cannot reset the peak RSS (/proc/self/clear_refs)");
}

/// In a child process: the time to read the policy from its file and open a
/// cache (which starts the policy), the first open of the process, in
/// microseconds: what a host pays at its start.
fn child_open(dir: &str) {
    let t = Instant::now();
    let policy = Policy::named(std::env::var("CAPCACHE_BENCH_POLICY").unwrap_or("default".into())).unwrap();
    let cache = Cache::builder().directory(dir).policy(policy).open().unwrap();
    let elapsed = t.elapsed();
    drop(cache);
    println!("{}", elapsed.as_micros());
}

/// Median over `runs` fresh processes of the first open; `cold` removes the
/// stored compiled policy before each.
fn policy_start(name: &str, dir: &std::path::Path, runs: usize, cold: bool) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            if cold {
                let _ = std::fs::remove_dir_all(dir.join("policy-code"));
            }
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .env("CAPCACHE_BENCH_CHILD_OPEN", dir)
                .env("CAPCACHE_BENCH_POLICY", name)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Duration::from_micros(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    // Warnings (a policy's fault and why) on stderr.
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    if let Ok(dir) = std::env::var("CAPCACHE_BENCH_CHILD_OPEN") {
        return child_open(&dir);
    }
    let mut sizes = vec![10_000usize, 100_000];
    let mut policies = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--entries" {
            sizes = args.next().expect("--entries N,M").split(',').map(|n| n.parse().unwrap()).collect();
        }
        if arg == "--policy" {
            policies.push(args.next().expect("--policy PATH (or default)"));
        }
    }
    if policies.is_empty() {
        policies.push("default".into());
    }
    for name in policies {
        let policy = Policy::named(&name).unwrap();
        println!("== policy {name} ({} bytes)", policy.bytes().unwrap().len());
        bench(&name, &policy, &sizes);
    }
}

fn bench(name: &str, policy: &Policy, sizes: &[usize]) {
    let scratch = tempfile::tempdir().unwrap();

    // Each start in a fresh process that exits at once: a large policy's
    // optimized code, compiled in the background, is never ready by then, so
    // what is kept is its quick code until `install`.
    let start_dir = scratch.path().join("start");
    let cold = policy_start(name, &start_dir, 5, true);
    let cached = policy_start(name, &start_dir, 11, false);
    let code = if policy.bytes().unwrap().len() as u64 >= capcache::QUICK_CODE_MIN { "quick" } else { "optimized" };
    println!("policy start, compiled:          {:>9.2} ms ({code} code; policy file read + first open in a fresh process, median of 5)", cold.as_secs_f64() * 1e3);
    println!("policy start, {code} code kept:{:>9.2} ms (median of 11; ratio {:.3})", cached.as_secs_f64() * 1e3, cached.as_secs_f64() / cold.as_secs_f64());
    let installed = policy.install(&start_dir).unwrap();
    let how = if installed.compiled_now { "compiled now" } else { "kept already" };
    let code_bytes = std::fs::metadata(&installed.path).unwrap().len();
    println!("policy install (optimized):      {:>9.2} ms ({how}; {code_bytes} bytes of code)", installed.elapsed.as_secs_f64() * 1e3);
    let optimized = policy_start(name, &start_dir, 11, false);
    println!("policy start, optimized code kept:{:>8.2} ms (median of 11; ratio to the first {:.3})", optimized.as_secs_f64() * 1e3, optimized.as_secs_f64() / cold.as_secs_f64());
    // What follows runs the optimized code (install made it this process's).

    // A miss of a 100-byte value: admit (a policy call) + encode + atomic write.
    let cache = Cache::builder().directory(scratch.path().join("small")).policy(policy.clone()).open().unwrap();
    let n = 2000u32;
    let mut inserts: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            cache.insert(&i.to_le_bytes(), &[7u8; 100]);
            t.elapsed()
        })
        .collect();
    let per_insert = inserts.iter().sum::<Duration>() / n;
    inserts.sort();
    let insert_median = inserts[inserts.len() / 2];
    cache.flush();
    // Hits: the caller's part (read + check), then the worker's (journal, touch, on-hit).
    let t = Instant::now();
    for i in 0..n {
        cache.get(&i.to_le_bytes()).unwrap();
    }
    let per_hit = t.elapsed() / n;
    cache.flush();
    // A second pass makes every entry hot, so the default policy stores it
    // raw; the rounds below then see the steady state, not re-encodings.
    for i in 0..n {
        cache.get(&i.to_le_bytes()).unwrap();
        cache.flush();
    }
    // One hit at a time, each waited for: the caller's part plus the
    // worker's (usage journal, touch, on-hit call into the policy).
    let rounds = 500u32;
    let t = Instant::now();
    for i in 0..rounds {
        cache.get(&i.to_le_bytes()).unwrap();
        cache.flush();
    }
    let per_round = t.elapsed() / rounds;
    // The same, sixteen hits (the queue's size) at a time: the worker takes
    // each burst as one batch (one journal append for all of it).
    let dropped_before_bursts = cache.stats().events_dropped;
    let t = Instant::now();
    for burst in 0..rounds / 16 {
        for i in 0..16 {
            cache.get(&(burst * 16 + i).to_le_bytes()).unwrap();
        }
        cache.flush();
    }
    let per_batched = t.elapsed() / (rounds / 16 * 16);
    let dropped_in_bursts = cache.stats().events_dropped - dropped_before_bursts;
    println!(
        "insert (admit + store, 100 B):   {:>9.1} µs mean, {:.1} µs median",
        per_insert.as_secs_f64() * 1e6,
        insert_median.as_secs_f64() * 1e6
    );
    println!("hit, caller's side (100 B):      {:>9.1} µs", per_hit.as_secs_f64() * 1e6);
    println!("hit + its event handled:         {:>9.1} µs", per_round.as_secs_f64() * 1e6);
    println!("the same, in batches of 16:      {:>9.1} µs per hit", per_batched.as_secs_f64() * 1e6);
    println!("events dropped in the bursts:    {:>9} of {}", dropped_in_bursts, rounds / 16 * 16);
    let on_hit = cache.time_policy_calls(&0u32.to_le_bytes(), 20_000, false).unwrap();
    let admit = cache.time_policy_calls(&0u32.to_le_bytes(), 20_000, true).unwrap();
    println!("policy crossing, on-hit:         {:>9.2} µs (one call into the sandbox and back)", on_hit.as_secs_f64() * 1e6);
    println!("policy crossing, admit:          {:>9.2} µs", admit.as_secs_f64() * 1e6);
    drop(cache);

    for &entries in sizes {
        let dir = scratch.path().join(format!("n{entries}"));
        let open = || {
            Cache::builder()
                .directory(&dir)
                .policy(policy.clone())
                .settings([("file-count-soft-limit", (entries * 2).to_string())])
                .open()
                .unwrap()
        };
        let cache = open();
        for i in 0..entries as u64 {
            cache.insert(&i.to_le_bytes(), &[1u8; 64]);
        }
        drop(cache);
        // What was stored: an insert the policy could not answer in time
        // (the worker busy) is skipped, not stored.
        let stored = std::fs::read_dir(dir.join("default/entries")).map(|d| d.count()).unwrap_or(entries);
        // The first pass of a process reads every entry's header from disk;
        // later ones take unchanged files' headers from memory.
        let cache = open();
        reset_peak_rss();
        let rss_before = status_kib("VmRSS:");
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let report = cache.maintain().expect("maintain ran");
            times.push(t.elapsed());
            assert_eq!(report.entries_seen, stored as u64, "{}", report.summary);
        }
        let first = times[0];
        times.sort();
        let median: Duration = times[1];
        println!(
            "maintain over {entries:>7} entries:  {:>9.1} ms first of the process, {:>9.1} ms median of 3; peak RSS during the passes {} (resident before them: {})",
            first.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            mib(status_kib("VmHWM:")),
            mib(rss_before)
        );

        // Hit latency, idle and while a maintenance pass runs on the worker.
        let hit = |i: u64| {
            let t = Instant::now();
            cache.get(&(i * 7919 % entries as u64).to_le_bytes()).unwrap();
            t.elapsed()
        };
        let dropped_before = cache.stats().events_dropped;
        let idle: Vec<Duration> = (0..5000).map(hit).collect();
        cache.flush();
        let dropped_idle = cache.stats().events_dropped - dropped_before;
        let done = std::sync::atomic::AtomicBool::new(false);
        let during = std::thread::scope(|scope| {
            let pass = scope.spawn(|| {
                cache.maintain().expect("maintain ran");
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let mut samples = Vec::new();
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push(hit(i));
                i += 1;
            }
            pass.join().unwrap();
            samples
        });
        let p = |mut v: Vec<Duration>, q: f64| {
            v.sort();
            v[((v.len() - 1) as f64 * q) as usize]
        };
        cache.flush();
        let dropped_during = cache.stats().events_dropped - dropped_before - dropped_idle;
        let (idle_p99, during_p99) = (p(idle.clone(), 0.99), p(during.clone(), 0.99));
        // Hits whose events were dropped (the worker was busy with the pass)
        // skip the worker's part: the two sides are comparable only beside
        // these counts.
        println!(
            "hit latency over {entries:>7} entries: p50 {:.1} µs idle, {:.1} µs during maintain; p99 {:.1} µs idle, {:.1} µs during (ratio {:.2}); events dropped: {dropped_idle} of {} idle, {dropped_during} of {} during",
            p(idle.clone(), 0.5).as_secs_f64() * 1e6,
            p(during.clone(), 0.5).as_secs_f64() * 1e6,
            idle_p99.as_secs_f64() * 1e6,
            during_p99.as_secs_f64() * 1e6,
            during_p99.as_secs_f64() / idle_p99.as_secs_f64(),
            idle.len(),
            during.len(),
        );
        drop(cache);

        // A pass that must evict: the count limit lowered to 90% of the
        // entries, so that the least recently used go down to 70% of it.
        let limit = entries * 9 / 10;
        let cache = Cache::builder()
            .directory(&dir)
            .policy(policy.clone())
            .settings([("file-count-soft-limit", limit.to_string())])
            .open()
            .unwrap();
        reset_peak_rss();
        let rss_before = status_kib("VmRSS:");
        let t = Instant::now();
        let report = cache.maintain().expect("maintain ran");
        let took = t.elapsed();
        println!(
            "maintain evicting over {entries:>7} entries: {:>9.1} ms, {} evicted, {} left; peak RSS during the pass {} (resident before it: {})",
            took.as_secs_f64() * 1e3,
            report.evicted,
            report.entries_after,
            mib(status_kib("VmHWM:")),
            mib(rss_before)
        );
    }
}
