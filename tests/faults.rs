//! Faults: crashes mid-write, corruption, concurrent processes, disk trouble
//! and clock trouble. The caller always gets its value; nothing corrupt is
//! ever served; nothing partial is ever visible.
//!
//! Some tests run children: this test binary again, running the ignored test
//! `faults::child_process` with a role in `CAPCACHE_TEST_CHILD`.
// What only the Unix-only tests use.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]


use capcache::{Cache, Clock, Source, ValueKey};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use crate::support::*;

const KEYS: u64 = 300;

fn key(k: u64) -> Vec<u8> {
    format!("module {k}").into_bytes()
}

/// The value for key `k`: up to 150 KB, so that writes take a while.
fn expected(k: u64) -> Vec<u8> {
    incompressible(k, 1 + (k as usize * 7919) % 150_000)
}

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Rng(u64);
impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        Rng(nanos ^ (std::process::id() as u64) << 32 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn child(role: &str, dir: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "faults::child_process", "--nocapture", "--test-threads=1"])
        .env("CAPCACHE_TEST_CHILD", role)
        .env("CAPCACHE_TEST_DIR", dir);
    command
}

/// What each child does, by role.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child_process() {
    let Ok(role) = std::env::var("CAPCACHE_TEST_CHILD") else { return };
    let dir = PathBuf::from(std::env::var("CAPCACHE_TEST_DIR").unwrap());
    match role.as_str() {
        "writer" => writer(&dir),
        "mixer" => mixer(&dir),
        "read-only" => read_only_child(&dir),
        other => panic!("unknown role {other}"),
    }
}

/// Writes and reads forever, until killed. A wrong value served is recorded
/// in a marker file, since a killed child's exit code says nothing.
fn writer(dir: &Path) {
    let cache = Cache::builder()
        .directory(dir)
        .settings([("optimized-compression-usage-counter-threshold", "2"), ("optimized-compression-level", "6")])
        .open()
        .unwrap();
    println!("\nready");
    let mut rng = Rng::seeded();
    loop {
        let k = rng.below(KEYS);
        // Half reads, half writes (replacing what is there), so that kills
        // land in writes as often as not.
        if rng.below(2) == 0 {
            cache.insert(&key(k), &expected(k));
        } else if let Some(value) = cache.get(&key(k))
            && value != expected(k) {
                std::fs::write(dir.join("MISMATCH"), format!("key {k}")).unwrap();
                std::process::abort();
            }
    }
}

/// Kills a child that a failing test leaves behind.
struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn crash_mid_write_leaves_only_whole_entries() {
    let kills = env_count("CAPCACHE_CRASH_KILLS", 200);
    let started = std::time::Instant::now();
    let t = TestCache::new();
    let mut rng = Rng::seeded();
    for _ in 0..kills {
        let mut process = KillOnDrop(child("writer", &t.root()).stdout(Stdio::piped()).spawn().unwrap());
        // The test harness prints its own lines first.
        let mut lines = BufReader::new(process.0.stdout.take().unwrap()).lines();
        assert!(lines.any(|l| l.unwrap().contains("ready")), "the writer did not start");
        std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        process.0.kill().unwrap(); // SIGKILL
        process.0.wait().unwrap();
    }
    assert!(!t.root().join("MISMATCH").exists(), "a writer was served a wrong value");

    // Every file in entries/ is a whole entry of a known key; none is a
    // temporary file. (An hour on from the last kill, on the writers' clock:
    // past the temporary files' timeout, and past the expiry of a cleanup
    // lock that a writer killed while cleaning left.)
    t.clock.advance(started.elapsed() + Duration::from_secs(61 * 60));
    let cache = t.open();
    let names: Vec<String> = std::fs::read_dir(t.entries_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut intact = 0;
    for k in 0..KEYS {
        let name = ValueKey::of(&key(k)).name();
        if names.contains(&name) {
            assert_eq!(cache.get(&key(k)), Some(expected(k)), "entry of key {k} is not intact");
            intact += 1;
        }
    }
    assert_eq!(intact, names.len(), "entries/ holds files that are no key's entry: {names:?}");
    assert_eq!(cache.stats().corrupt, 0);
    assert!(intact > 0, "no writer ever stored anything");

    // The next maintenance pass removes what the killed writers left. (The
    // hits above may have the worker re-encoding: let it finish first.)
    cache.flush();
    let tmp = t.root().join("default/tmp");
    let leftovers = std::fs::read_dir(&tmp).unwrap().count() as u64;
    assert!(leftovers > 0, "no kill landed mid-write in {kills} kills: the test proved nothing about partial writes");
    let report = cache.maintain().unwrap();
    assert_eq!(report.removed_temp_files, leftovers, "{}", report.summary);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    eprintln!("crash: {kills} kills survived; {intact} entries intact, 0 corrupt; {leftovers} leftover temporary files removed");
}

#[test]
fn random_corruption_is_always_detected() {
    let injected = env_count("CAPCACHE_CORRUPTIONS", 1000);
    let t = TestCache::new();
    let cache = t.open();
    let mut rng = Rng::seeded();
    let keys = 50;
    for i in 0..injected {
        let k = rng.below(keys);
        let value = incompressible(k, 1 + (k as usize * 331) % 5000);
        if cache.get(&key(k)).is_none() {
            cache.insert(&key(k), &value);
            // Stored now, or by the worker if a maintenance pass held the
            // policy.
            cache.flush();
        }
        let path = cache.entry_path(&key(k)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        match i % 4 {
            // One bit anywhere.
            0 => {
                let bit = rng.below(bytes.len() as u64 * 8) as usize;
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            // One bit in the header, which sits in the trailer:
            // payload | header | digest (32) | header length (u32) | magic (8).
            1 => {
                let len = bytes.len();
                let header_len = u32::from_le_bytes(bytes[len - 12..len - 8].try_into().unwrap()) as usize;
                let header_start = len - 12 - 32 - header_len;
                let bit = rng.below(header_len as u64 * 8) as usize;
                bytes[header_start + bit / 8] ^= 1 << (bit % 8);
            }
            // Several random bytes.
            2 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] = bytes[at].wrapping_add(1 + rng.below(255) as u8);
                }
            }
            // Truncation anywhere, header included.
            _ => bytes.truncate(rng.below(bytes.len() as u64) as usize),
        }
        overwrite_entry(&path, &bytes);
        assert_eq!(cache.get(&key(k)), None, "corruption {i} (kind {}) was served", i % 4);
        assert!(!path.exists(), "corrupt entry {i} was not removed");
    }
    assert_eq!(cache.stats().corrupt, injected);
    eprintln!("corruption: {injected} injected, {} detected", cache.stats().corrupt);
}

/// Records, from the default policy's log, when this process held the
/// cleanup lock (wall-clock nanoseconds, comparable across processes).
mod cleanup_log {
    use std::sync::Mutex;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer};

    pub static INTERVALS: Mutex<Vec<(u128, u128)>> = Mutex::new(Vec::new());
    static STARTED: Mutex<Option<u128>> = Mutex::new(None);

    pub struct Recorder;
    struct Message(String);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    impl<S: tracing::Subscriber> Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let mut message = Message(String::new());
            event.record(&mut message);
            match message.0.as_str() {
                "cleanup started" => *STARTED.lock().unwrap() = Some(now),
                "cleanup finished" => {
                    if let Some(start) = STARTED.lock().unwrap().take() {
                        INTERVALS.lock().unwrap().push((start, now));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Mixed gets, inserts and maintenance on a shared directory; prints what it
/// saw for the parent to add up.
fn mixer(dir: &Path) {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(cleanup_log::Recorder.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG))
        .init();
    let ops = env_count("CAPCACHE_MIXER_OPS", 4000);
    let cache = Cache::builder()
        .directory(dir)
        .settings([("file-count-soft-limit", "60"), ("cleanup-interval", "20ms")])
        .open()
        .unwrap();
    let mut rng = Rng::seeded();
    let (mut gets, mut mismatches, mut maintains) = (0u64, 0u64, 0u64);
    for _ in 0..ops {
        let k = rng.below(KEYS / 3);
        match rng.below(100) {
            0..=69 => {
                gets += 1;
                if let Some(value) = cache.get(&key(k))
                    && value != expected(k) {
                        mismatches += 1;
                    }
            }
            70..=97 => {
                cache.insert(&key(k), &expected(k));
            }
            _ => {
                maintains += 1;
                cache.maintain();
            }
        }
    }
    cache.flush();
    let s = cache.stats();
    println!(
        "RESULT {gets} {} {} {} {mismatches} {} {} {maintains}",
        s.hits, s.misses, s.inserts, s.corrupt, s.policy_faults
    );
    for (start, end) in cleanup_log::INTERVALS.lock().unwrap().iter() {
        println!("CLEANUP {start} {end}");
    }
}

#[test]
fn concurrent_processes_never_corrupt_and_never_clean_at_once() {
    let processes = env_count("CAPCACHE_PROCESSES", 8);
    let t = TestCache::new();
    drop(t.open()); // lay out the directory once
    let children: Vec<_> = (0..processes)
        .map(|_| child("mixer", &t.root()).stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    let mut intervals: Vec<(u128, u128, usize)> = Vec::new();
    let (mut total_ops, mut total_hits) = (0, 0);
    for (index, process) in children.into_iter().enumerate() {
        let output = process.wait_with_output().unwrap();
        assert!(output.status.success(), "child {index} failed");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let result: Vec<u64> = stdout
            .lines()
            // The harness's "test child_process ... " may precede it on the line.
            .find_map(|l| l.split_once("RESULT ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("child {index} printed no result:\n{stdout}"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        let [gets, hits, misses, inserts, mismatches, corrupt, faults, maintains] = result[..] else { panic!() };
        assert_eq!(hits + misses, gets, "child {index}: hits and misses do not add up");
        assert_eq!(mismatches, 0, "child {index} was served a wrong value");
        assert_eq!(corrupt, 0, "child {index} found a corrupt entry");
        assert_eq!(faults, 0, "child {index}: the policy faulted");
        total_ops += gets + inserts + maintains;
        total_hits += hits;
        for line in stdout.lines().filter_map(|l| l.split_once("CLEANUP ").map(|(_, rest)| rest)) {
            let (start, end) = line.split_once(' ').unwrap();
            intervals.push((start.parse().unwrap(), end.parse().unwrap(), index));
        }
    }
    intervals.sort();
    for pair in intervals.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        assert!(end <= start || a == b, "processes {a} and {b} cleaned at once");
    }
    assert!(intervals.len() as u64 >= processes, "too few cleanups ({}) to judge", intervals.len());
    assert!(total_hits > 0);
    eprintln!(
        "concurrency: {processes} processes, {total_ops} operations, {total_hits} hits, 0 corrupt, {} cleanups, none at once",
        intervals.len()
    );
}

/// A cache directory this process cannot write: hits are served, misses are
/// computed and not stored, nothing changes on disk.
fn read_only_child(dir: &Path) {
    let cache = Cache::builder().directory(dir).open().expect("a read-only directory opens read-only");
    assert!(cache.is_read_only());
    assert_eq!(cache.get(&key(1)), Some(expected(1)));
    let got = cache.get_or_insert_with(&key(2), || Ok::<_, ()>(expected(2))).unwrap();
    assert_eq!((got.source, got.bytes == expected(2)), (Source::Miss, true));
    assert!(!cache.insert(&key(3), &expected(3)));
    cache.get(&key(1)).unwrap();
    cache.flush();
    assert_eq!(cache.maintain(), None);
    println!("read-only child ok");
}

unix_only! { "needs Unix users: gives a file to the user nobody (chown) or runs a child as nobody",
#[test]
fn read_only_directory_serves_hits_and_computes_misses() {
    let t = TestCache::new();
    let cache = t.open();
    cache.insert(&key(1), &expected(1));
    drop(cache);
    let before = snapshot(t.dir.path());
    if rustix::process::geteuid().is_root() {
        // Root ignores permission bits: the child runs as nobody.
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A cache root is private when made: its owner shares it on purpose.
        std::fs::set_permissions(t.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let output = child("read-only", &t.root()).uid(65534).gid(65534).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && stdout.contains("read-only child ok"), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    } else {
        let status = Command::new("chmod").args(["-R", "a-w"]).arg(t.root()).status().unwrap();
        assert!(status.success());
        read_only_child(&t.root());
        Command::new("chmod").args(["-R", "u+w"]).arg(t.root()).status().unwrap();
    }
    assert_eq!(snapshot(t.dir.path()), before, "a read-only cache changed its directory");
}
}

/// Unmounts on drop.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `size` (e.g. `600k`) mounted at `root` for the mount's life;
/// `None`, and the test says why, where it cannot be mounted (not root).
#[cfg(unix)]
fn small_disk(test: &str, root: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(root).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
        .arg(root)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(!have_root(test, "mounts a tmpfs"), "root, yet the tmpfs did not mount");
        return None;
    }
    Some(Mount(root.to_path_buf()))
}

unix_only! { "mounts a tmpfs: Linux's",
#[test]
fn full_disk_costs_only_the_cache() {
    let t = TestCache::new();
    let root = t.root();
    let Some(_mount) = small_disk("full_disk_costs_only_the_cache", &root, "600k") else { return };
    let cache = t.open();
    let mut stored = Vec::new();
    let mut refused = 0;
    for k in 0..40 {
        let value = incompressible(k, 50_000);
        let got = cache.get_or_insert_with(&key(k), || Ok::<_, ()>(value.clone())).unwrap();
        assert_eq!(got.bytes, value, "the caller did not get its value");
        if cache.entry_path(&key(k)).unwrap().exists() {
            stored.push(k);
        } else {
            refused += 1;
        }
    }
    assert!(refused > 0, "the disk never filled");
    assert!(cache.stats().failures > 0);
    // What was stored is whole and served; no temporary file is left behind.
    for k in &stored {
        assert_eq!(cache.get(&key(*k)), Some(incompressible(*k, 50_000)));
    }
    assert_eq!(std::fs::read_dir(root.join("default/tmp")).unwrap().count(), 0);
    assert_eq!(cache.stats().corrupt, 0);
}
}

#[test]
#[cfg_attr(windows, ignore = "Windows removes no directory that a process holds open, and an open cache holds its directories (cap-std)")]
fn directory_deleted_underneath() {
    let t = TestCache::new();
    let cache = t.open();
    cache.insert(&key(1), &expected(1));
    std::fs::remove_dir_all(t.root()).unwrap();
    assert_eq!(cache.get(&key(1)), None);
    let got = cache.get_or_insert_with(&key(2), || Ok::<_, ()>(expected(2))).unwrap();
    assert_eq!((got.source, got.bytes == expected(2)), (Source::Miss, true));
    assert!(!cache.insert(&key(3), &expected(3)));
    assert!(cache.stats().failures >= 2, "{:?}", cache.stats());
    cache.flush();
    // A new cache on the same path starts afresh.
    let cache = t.open();
    assert!(cache.insert(&key(1), &expected(1)));
    assert_eq!(cache.get(&key(1)), Some(expected(1)));
}

#[test]
fn clock_going_backwards() {
    let t = TestCache::new();
    let cache = t.builder().setting("file-count-soft-limit", "5").open().unwrap();
    for k in 0..5 {
        cache.insert(&key(k), &expected(k));
        cache.flush();
    }
    let runs = cache.stats().maintain_runs;
    // Two days back: the last cleanup now lies beyond the allowed drift, so a
    // cleanup is due at once rather than in two days.
    t.clock.set(t.clock.now_ms() - 2 * 86_400_000);
    cache.insert(&key(5), &expected(5));
    cache.flush();
    assert_eq!(cache.stats().maintain_runs, runs + 1);
    // Every older entry now looks as if from the future: they go first, and
    // the entry stored at the new time stays.
    assert!(cache.get(&key(5)).is_some());
    assert!(t.entry_count() <= 3);
    for k in 0..6 {
        if let Some(value) = cache.get(&key(k)) {
            assert_eq!(value, expected(k));
        }
    }
}

unix_only! { "mounts a tmpfs: Linux's",
#[test]
fn compiled_policy_code_that_cannot_be_kept_is_said_not_hidden() {
    // A disk too small for the default policy's compiled code (about 290 KB):
    // every start compiles it again, and the user is told so.
    let t = TestCache::new();
    let root = t.root();
    let Some(_mount) = small_disk("compiled_policy_code_that_cannot_be_kept...", &root, "200k") else { return };
    let module = t.dir.path().join("m.wasm");
    std::fs::write(&module, tiny_module(1)).unwrap();
    let (root_arg, module_arg) = (root.display().to_string(), module.display().to_string());
    let output = capcache(&["compile", "--dir", &root_arg, &module_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("cannot keep the compiled policy").count(), 1, "{stderr}");
    assert!(stderr.contains("every start compiles it again"), "{stderr}");
    // A policy-code store that cannot be opened at all is said too.
    let other = t.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("policy-code"), b"not a directory").unwrap();
    let output = capcache(&["compile", "--dir", &other.display().to_string(), &module_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("compiled policies are not kept"), "{stderr}");
}
}

/// A cgroup that lets at most `max` tasks run in it (the pids controller,
/// cgroup v1 or v2), removed when dropped; `None` where there is none.
struct PidsLimit(PathBuf);

impl PidsLimit {
    fn new(test: &str, max: u32) -> Option<PidsLimit> {
        let base = [Path::new("/sys/fs/cgroup/pids"), Path::new("/sys/fs/cgroup")]
            .into_iter()
            .find(|base| base.join("cgroup.procs").exists() && (base.ends_with("pids") || read_controllers(base).contains("pids")))?;
        let dir = base.join(format!("capcache-{test}-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        std::fs::write(dir.join("pids.max"), max.to_string()).ok()?;
        Some(PidsLimit(dir))
    }

    /// `program args`, started as the only task of the group: a shell joins
    /// it, then becomes the program.
    fn run(&self, program: &Path, args: &[&str]) -> std::process::Output {
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", self.0.display());
        Command::new("sh").arg("-c").arg(script).arg(program).args(args).output().unwrap()
    }
}

fn read_controllers(base: &Path) -> String {
    std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default()
}

impl Drop for PidsLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

unix_only! { "makes a cgroup: Linux's",
#[test]
fn a_thread_that_cannot_start_is_an_error_that_says_so_not_a_panic() {
    if !have_root("faults::a_thread_that_cannot_start", "makes a cgroup") {
        return;
    }
    let t = TestCache::new();
    drop(t.open());
    let root = t.root().display().to_string();
    let capcache = Path::new(env!("CARGO_BIN_EXE_capcache"));
    // Without the mark of a policy that started well here, the policy starts
    // when the cache opens, on the policy engine and its deadline thread;
    // without its kept code, it is compiled, which wants the thread pool.
    for area in ["state", "entries"] {
        for file in std::fs::read_dir(t.root().join("policy-code").join(area)).unwrap() {
            std::fs::remove_file(file.unwrap().path()).unwrap();
        }
    }
    // One task: the policy engine's deadline thread cannot start. Two: the
    // hashing pool's threads, the deadline thread or the worker's, whichever
    // comes to the limit first; each is said, and none is a panic.
    for (max, says) in [(1, "cannot start the policy deadline thread"), (2, "cannot start")] {
        let Some(limit) = PidsLimit::new("thread", max) else {
            skip("faults::a_thread_that_cannot_start", "no cgroup pids controller here", "CI's machine has one");
            return;
        };
        let out = limit.run(capcache, &["stats", "--dir", &root]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "with {max} tasks: {stderr}");
        assert!(stderr.contains(says) && stderr.contains("Resource temporarily unavailable"), "with {max} tasks: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
}
