//! The shared tier, against real Redis servers that each test starts on
//! 127.0.0.1 (an ephemeral port, its own data directory) and stops: two hosts
//! are two cache directories; faults are a frozen, full, missing or
//! read-only server, and values damaged or planted in it.

use crate::support::misbehaving_server::{Log, MisbehavingServer, reply};
use crate::support::redis_server::RedisServer;
use crate::support::*;
use capcache::{Cache, RemoteMode, RemoteSettings, Source};
#[cfg(unix)]
use rustix::process::Signal;
use std::process::Command;
use std::time::{Duration, Instant};

/// A host: its own cache directory, the tier at `settings`.
fn host(dir: &std::path::Path, settings: RemoteSettings) -> Cache {
    Cache::builder().directory(dir).remote(settings).open().unwrap()
}

fn load(cache: &Cache, engine: &wasmtime::Engine, wasm: &[u8]) -> Source {
    capcache::wasmtime::load_module_with_source(cache, engine, wasm).unwrap().1
}

/// Host A compiles `wasm` and uploads it (the worker uploads: flushed).
fn compile_on_a(dir: &std::path::Path, settings: RemoteSettings, engine: &wasmtime::Engine, wasm: &[u8]) {
    let a = host(dir, settings);
    assert_eq!(load(&a, engine, wasm), Source::Miss);
    a.flush();
    assert_eq!(a.stats().remote_uploads, 1, "host A uploaded nothing: {:?}", a.stats());
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_host_with_an_empty_disk_loads_from_the_tier_then_maps_its_own_copy() {
    let Some(server) = RedisServer::start("remote::empty_disk", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let wasm = tiny_module(7);
    compile_on_a(&dirs.path().join("a"), RemoteSettings::new(server.url()), &engine, &wasm);
    assert_eq!(server.keys().len(), 1);

    let b = host(&dirs.path().join("b"), RemoteSettings::new(server.url()));
    assert_eq!(load(&b, &engine, &wasm), Source::RemoteHit, "host B compiled instead");
    assert_eq!(load(&b, &engine, &wasm), Source::Hit, "the second load went to the network");
    let stats = b.stats();
    assert_eq!((stats.remote_hits, stats.remote_misses, stats.misses), (1, 0, 0), "{stats:?}");
    assert!(stats.remote_bytes_in > 0);

    // And as two processes: the command line, host A then host B.
    let module = dirs.path().join("m.wat");
    std::fs::write(&module, r#"(module (func (export "f") (result i32) i32.const 9))"#).unwrap();
    let run = |dir: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_capcache"))
            .args(["compile", "--dir", &dirs.path().join(dir).display().to_string(), "--remote", &server.url()])
            .arg(&module)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run("cli-a").starts_with("miss"));
    assert!(run("cli-b").starts_with("remote"));
    assert!(run("cli-b").starts_with("hit"));
}

unix_only! { "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop",
#[test]
fn a_frozen_server_costs_one_timeout_then_is_skipped_until_its_cool_off_ends() {
    let Some(server) = RedisServer::start("remote::frozen", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let (connect, operation) = (Duration::from_millis(200), Duration::from_millis(300));
    let settings = RemoteSettings::new(server.url()).timeouts(connect, operation, Duration::from_secs(2));
    compile_on_a(&dirs.path().join("a"), settings.clone(), &engine, &tiny_module(1));

    let b = host(&dirs.path().join("b"), settings);
    server.signal(Signal::STOP);
    assert_eq!(load(&b, &engine, &tiny_module(1)), Source::Miss);
    // Without the timeout a frozen server would hold the load forever; with
    // it, the load waits at most the connect timeout and the operation
    // timeout, plus 20% (SECURITY.md).
    let (waited, bound) = (Duration::from_micros(b.stats().remote_us), connect + operation * 12 / 10);
    assert!(waited >= operation && waited <= bound, "the tier held the load {waited:?}: the bound is {operation:?} to {bound:?}");
    assert_eq!(b.stats().remote_errors, 1);
    // Within the cool-off, the tier is not asked at all (nor is the upload
    // of what B compiled meanwhile).
    assert_eq!(load(&b, &engine, &tiny_module(2)), Source::Miss);
    b.flush();
    assert_eq!(b.stats().remote_errors, 1, "a second timeout: {:?}", b.stats());
    assert!(b.stats().remote_skipped >= 2, "{:?}", b.stats());
    server.signal(Signal::CONT);
    std::thread::sleep(Duration::from_millis(2100));
    let c = host(&dirs.path().join("c"), RemoteSettings::new(server.url()));
    assert_eq!(load(&c, &engine, &tiny_module(1)), Source::RemoteHit, "the thawed server was not used");
    // B's own connection comes back after its cool-off too.
    assert_eq!(load(&b, &engine, &tiny_module(3)), Source::Miss);
    assert_eq!(b.stats().remote_misses, 1, "{:?}", b.stats());
}
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_damaged_value_is_never_served_and_is_deleted_by_a_writer() {
    let Some(server) = RedisServer::start("remote::damaged", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    compile_on_a(&dirs.path().join("a"), RemoteSettings::new(server.url()), &engine, &tiny_module(5));
    let key = server.keys().pop().unwrap();
    let mut value: Vec<u8> = server.command(&[b"GET", key.as_bytes()]);
    let middle = value.len() / 2;
    value[middle] ^= 0x40;
    server.command::<()>(&[b"SET", key.as_bytes(), &value]);

    let b = host(&dirs.path().join("b"), RemoteSettings::new(server.url()));
    assert_eq!(load(&b, &engine, &tiny_module(5)), Source::Miss, "a bit-flipped value was served");
    assert_eq!(b.stats().remote_rejected, 1);
    // Deleted, then replaced by B's own upload of what it compiled.
    b.flush();
    let replaced: Vec<u8> = server.command(&[b"GET", key.as_bytes()]);
    assert_ne!(replaced, value);
    assert_eq!(load(&host(&dirs.path().join("c"), RemoteSettings::new(server.url())), &engine, &tiny_module(5)), Source::RemoteHit);

    // Truncated, to a reader that may not delete: refused, and left there.
    server.command::<()>(&[b"SET", key.as_bytes(), &replaced[..replaced.len() - 7]]);
    let reader = host(&dirs.path().join("d"), RemoteSettings::new(server.url()).mode(RemoteMode::ReadOnly));
    assert_eq!(load(&reader, &engine, &tiny_module(5)), Source::Miss);
    assert_eq!(reader.stats().remote_rejected, 1);
    assert_eq!(server.keys(), vec![key], "a read-only host deleted a value");
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_value_planted_without_the_hmac_key_is_refused() {
    let Some(server) = RedisServer::start("remote::hmac", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let keyed = RemoteSettings::new(server.url()).hmac_key(b"0123456789abcdef-fleet-key".to_vec());
    // A writer with no key uploads a whole, valid entry: only the tag is
    // missing.
    compile_on_a(&dirs.path().join("planter"), RemoteSettings::new(server.url()), &engine, &tiny_module(11));
    let b = host(&dirs.path().join("b"), keyed.clone());
    assert_eq!(load(&b, &engine, &tiny_module(11)), Source::Miss, "an untagged value was served");
    assert_eq!(b.stats().remote_rejected, 1);
    // One with another key, likewise.
    let other = RemoteSettings::new(server.url()).hmac_key(b"another-key-of-16-bytes".to_vec());
    compile_on_a(&dirs.path().join("other"), other, &engine, &tiny_module(12));
    assert_eq!(load(&b, &engine, &tiny_module(12)), Source::Miss);
    assert_eq!(b.stats().remote_rejected, 2);
    // Holders of the key share.
    compile_on_a(&dirs.path().join("a"), keyed.clone(), &engine, &tiny_module(13));
    assert_eq!(load(&host(&dirs.path().join("c"), keyed), &engine, &tiny_module(13)), Source::RemoteHit);
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_server_too_small_for_an_artifact_refuses_the_upload_and_nothing_breaks() {
    let Some(server) = RedisServer::start("remote::full", &["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let a = host(&dirs.path().join("a"), RemoteSettings::new(server.url()));
    let big = incompressible(1, 4 << 20);
    let value = a.get_or_insert_with(b"big", || Ok::<_, std::convert::Infallible>(big.clone())).unwrap();
    assert_eq!((value.source, value.bytes == big), (Source::Miss, true));
    a.flush();
    assert_eq!((a.stats().remote_uploads, a.stats().remote_upload_failures), (0, 1), "{:?}", a.stats());
    assert_eq!(a.get(b"big"), Some(big), "the local cache lost the value");
    // A refusal is the server's answer, not a failure to reach it: no cool-off.
    a.insert(b"small", b"fits");
    a.flush();
    assert_eq!(a.stats().remote_uploads, 1, "{:?}", a.stats());
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_read_only_host_never_writes() {
    let Some(server) = RedisServer::start("remote::read_only", &[]) else { return };
    server.command::<()>(&[b"ACL", b"SETUSER", b"reader", b"on", b">reader-password", b"~*", b"+get", b"+ping", b"+exists", b"+scan"]);
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    compile_on_a(&dirs.path().join("a"), RemoteSettings::new(server.url()), &engine, &tiny_module(21));
    let url = format!("redis://reader:reader-password@127.0.0.1:{}", server.port);
    let reader = host(&dirs.path().join("b"), RemoteSettings::new(&url).mode(RemoteMode::ReadOnly));
    let checks = reader.check_remote().unwrap();
    assert!(checks.iter().any(|c| c.ok && c.finding.contains("not attempted")), "{checks:?}");
    // The probe asks for the server's eviction policy, which this user may
    // not read: from here on, nothing is refused.
    server.command::<()>(&[b"ACL", b"LOG", b"RESET"]);
    assert_eq!(load(&reader, &engine, &tiny_module(21)), Source::RemoteHit);
    assert_eq!(load(&reader, &engine, &tiny_module(22)), Source::Miss);
    reader.flush();
    drop(reader);
    // The server's own log of refused commands: a write would be there.
    let denied: Vec<redis::Value> = server.command(&[b"ACL", b"LOG"]);
    assert!(denied.is_empty(), "the read-only host attempted commands it may not run: {denied:?}");
    assert_eq!(server.keys().len(), 1);

    // The same user in read-write mode: check says what is wrong.
    let writer = host(&dirs.path().join("c"), RemoteSettings::new(&url));
    let checks = writer.check_remote().unwrap();
    assert!(checks.iter().any(|c| !c.ok && c.finding.contains("read-only")), "{checks:?}");
}

#[test]
fn a_server_that_is_down_never_stops_a_cache_from_opening() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dirs = tempfile::tempdir().unwrap();
    let cache = host(dirs.path(), RemoteSettings::new(format!("redis://127.0.0.1:{port}")));
    let engine = wasmtime::Engine::default();
    assert_eq!(load(&cache, &engine, &tiny_module(31)), Source::Miss);
    cache.flush();
    assert_eq!(load(&cache, &engine, &tiny_module(31)), Source::Hit);
    assert_eq!(cache.stats().remote_errors, 1, "{:?}", cache.stats());

    let out = Command::new(env!("CARGO_BIN_EXE_capcache"))
        .args(["remote", "check", "--dir", &dirs.path().display().to_string(), "--remote", &format!("redis://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("connection refused"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn remote_check_says_whether_values_are_tagged() {
    let Some(server) = RedisServer::start("remote::check_integrity", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let check = |key: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_capcache"));
        command.args(["remote", "check", "--dir", &dirs.path().display().to_string(), "--remote", &server.url()]);
        command.env_remove("CAPCACHE_REMOTE_HMAC_KEY");
        if let Some(key) = key {
            command.env("CAPCACHE_REMOTE_HMAC_KEY", key);
        }
        let out = command.output().unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (stdout, stderr) = check(None);
    assert!(stdout.contains("integrity: WARNING no HMAC key"), "{stdout}");
    assert!(stderr.contains("without an HMAC key"), "no warning in the log: {stderr}");
    let (stdout, stderr) = check(Some("0123456789abcdef-fleet-key"));
    assert!(stdout.contains("integrity: values are tagged"), "{stdout}");
    assert!(!stderr.contains("without an HMAC key"), "{stderr}");
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn push_and_pull_warm_a_tier_and_a_cache() {
    let Some(server) = RedisServer::start("remote::push_pull", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    // A cache filled with no tier, then pushed.
    let local = Cache::builder().directory(dirs.path().join("a")).open().unwrap();
    for i in 0..5u8 {
        local.insert(&[i], &[i; 100]);
    }
    drop(local);
    let a = host(&dirs.path().join("a"), RemoteSettings::new(server.url()));
    let pushed = a.push_to_remote().unwrap();
    assert_eq!((pushed.copied, pushed.present, pushed.failed), (5, 0, 0));
    assert_eq!(a.push_to_remote().unwrap().present, 5);
    let b = host(&dirs.path().join("b"), RemoteSettings::new(server.url()));
    let pulled = b.pull_from_remote().unwrap();
    assert_eq!((pulled.copied, pulled.failed), (5, 0));
    assert_eq!(b.get(&[3]), Some(vec![3; 100]));
    assert_eq!(b.stats().remote_hits, 5, "the pull's lookups are the only remote hits");
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn eight_processes_sharing_a_server_and_a_directory_all_get_the_right_artifact() {
    let Some(server) = RedisServer::start("remote::eight", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    // WASI commands that exit with their own number: a wrong artifact would
    // exit with another.
    for i in 1..=6 {
        let wat = format!(
            r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
               (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const {i}))))"#
        );
        std::fs::write(dirs.path().join(format!("m{i}.wat")), wat).unwrap();
    }
    let script = r#"for i in 1 2 3 4 5 6; do "$0" run --dir "$1" --remote "$2" "$3/m$i.wat"; echo "m$i=$?"; done"#;
    let children: Vec<_> = (0..8)
        .map(|p| {
            // Half share one directory; the others have their own, fed by the tier.
            let dir = if p % 2 == 0 { dirs.path().join("shared") } else { dirs.path().join(format!("own-{p}")) };
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg(env!("CARGO_BIN_EXE_capcache"))
                .arg(&dir)
                .arg(server.url())
                .arg(dirs.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        for i in 1..=6 {
            assert!(stdout.contains(&format!("m{i}={i}\n")), "a process got the wrong artifact or failed: {stdout}");
        }
    }
    for dir in ["shared", "own-1", "own-3"] {
        let cache = Cache::builder().directory(dirs.path().join(dir)).open().unwrap();
        let report = cache.verify(capcache::VerifyMode::Report, |_, _| {}).unwrap();
        assert!(report.bad.is_empty(), "{dir}: {report:?}");
    }
    assert_eq!(server.keys().len(), 6, "{:?}", server.keys());
}

unix_only! { "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop",
#[test]
fn a_server_killed_during_a_get_costs_only_a_miss() {
    let Some(server) = RedisServer::start("remote::killed", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    compile_on_a(&dirs.path().join("a"), RemoteSettings::new(server.url()), &engine, &tiny_module(41));
    // A long operation timeout: the load must end because the server died,
    // not because it waited its time out.
    let patient = RemoteSettings::new(server.url()).timeouts(Duration::from_millis(200), Duration::from_secs(30), Duration::from_secs(30));
    let b = host(&dirs.path().join("b"), patient);
    // Frozen, so that B's GET is sent and waits for its answer; then killed.
    server.signal(Signal::STOP);
    let killer = std::thread::spawn({
        let pid = server.pid();
        move || {
            std::thread::sleep(Duration::from_millis(300));
            rustix::process::kill_process(pid, Signal::KILL).unwrap();
        }
    });
    let started = Instant::now();
    assert_eq!(load(&b, &engine, &tiny_module(41)), Source::Miss);
    assert!(started.elapsed() < Duration::from_secs(15), "the load outlived its server by {:?}", started.elapsed());
    killer.join().unwrap();
    assert_eq!(b.stats().remote_errors, 1, "{:?}", b.stats());
    // The compiled module is kept locally all the same.
    b.flush();
    assert_eq!(load(&b, &engine, &tiny_module(41)), Source::Hit);
}
}

/// A server that answers GET with the start of a 1,000-byte value, then one
/// byte every 50 ms: it would take 50 s; every other command is refused.
fn dribbling(command: &str, socket: &mut std::net::TcpStream, log: &Log) -> std::io::Result<()> {
    if command != "GET" {
        return reply(socket, log, b"-ERR not here\r\n");
    }
    reply(socket, log, b"$1000\r\n")?;
    for _ in 0..1000 {
        std::thread::sleep(Duration::from_millis(50));
        reply(socket, log, b"x")?;
    }
    reply(socket, log, b"\r\n")
}

#[test]
fn a_server_that_dribbles_its_reply_costs_at_most_the_operation_timeout_and_holds_up_no_other_load() {
    let server = MisbehavingServer::start(dribbling);
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let operation = Duration::from_secs(1);
    let settings = RemoteSettings::new(server.url()).timeouts(Duration::from_millis(500), operation, Duration::from_secs(30));
    // The documented bound (SECURITY.md): the operation timeout for the
    // whole command, plus 20%; the connect timeout is not spent on loopback.
    let bound = operation * 12 / 10;

    let a = host(&dirs.path().join("a"), settings.clone());
    assert_eq!(load(&a, &engine, &tiny_module(51)), Source::Miss);
    let waited = Duration::from_micros(a.stats().remote_us);
    assert!(waited >= operation && waited <= bound, "the GET took {waited:?}: the bound is {operation:?} to {bound:?}");
    assert_eq!(a.stats().remote_errors, 1, "{:?}", a.stats());

    // Four threads miss at once on a fresh host: each waits its own
    // timeout, side by side, not one after the other (4 s) on one connection.
    let b = host(&dirs.path().join("b"), settings);
    let started = Instant::now();
    std::thread::scope(|s| {
        for n in 0..4 {
            let (b, engine) = (&b, &engine);
            s.spawn(move || assert_eq!(load(b, engine, &tiny_module(60 + n)), Source::Miss));
        }
    });
    let all = started.elapsed();
    assert!(all < bound + Duration::from_millis(500), "four loads together took {all:?}: they waited for each other");
    assert!(server.log().connections.load(std::sync::atomic::Ordering::SeqCst) >= 5, "the loads shared a connection");
}

/// A server that declares a 1.5 GB value and streams it as fast as the
/// client reads.
fn declaring_a_huge_value(command: &str, socket: &mut std::net::TcpStream, log: &Log) -> std::io::Result<()> {
    if command != "GET" {
        return reply(socket, log, b"-ERR not here\r\n");
    }
    reply(socket, log, b"$1500000000\r\n")?;
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..1500 {
        reply(socket, log, &chunk)?;
    }
    reply(socket, log, b"\r\n")
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_value_declared_larger_than_max_value_size_is_refused_before_it_is_read() {
    // Alone, so that the peak memory measured is this load's.
    if !in_a_process_of_its_own("remote::a_value_declared_larger_than_max_value_size_is_refused_before_it_is_read") {
        return;
    }
    let server = MisbehavingServer::start(declaring_a_huge_value);
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let cache = host(dirs.path(), RemoteSettings::new(server.url()));
    assert_eq!(load(&cache, &engine, &tiny_module(70)), Source::Miss);
    let stats = cache.stats();
    assert_eq!((stats.remote_rejected, stats.remote_errors), (1, 0), "{stats:?}");
    // The bound the issue set and SECURITY.md states: under 400 MB.
    let peak = peak_rss();
    assert!(peak < 400 << 20, "the process peaked at {} MiB", peak >> 20);
    // The client stopped reading at the length: what the server got out is
    // what the sockets' buffers hold, not the value.
    std::thread::sleep(Duration::from_millis(200));
    let sent = server.log().bytes_written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < 64 << 20, "the client read on: the server sent {} MiB", sent >> 20);
    eprintln!("peak RSS {} MiB, server sent {} MiB before the client hung up", peak >> 20, sent >> 20);

    // A limit is a setting: below an entry's size, nothing is fetched or
    // uploaded.
    let Some(real) = RedisServer::start("remote::max_value_size", &[]) else { return };
    compile_on_a(&dirs.path().join("a"), RemoteSettings::new(real.url()), &engine, &tiny_module(71));
    let small = RemoteSettings::new(real.url()).max_value_size(64);
    let b = host(&dirs.path().join("b"), small.clone());
    assert_eq!(load(&b, &engine, &tiny_module(71)), Source::Miss);
    b.flush();
    let stats = b.stats();
    assert_eq!((stats.remote_rejected, stats.remote_uploads, stats.remote_upload_failures), (1, 0, 1), "{stats:?}");
}

/// A server that answers GET with "absent" followed by an `+OK` nobody asked
/// for, and refuses every SET.
fn adding_bytes_after_a_reply(command: &str, socket: &mut std::net::TcpStream, log: &Log) -> std::io::Result<()> {
    match command {
        "GET" => reply(socket, log, b"$-1\r\n+OK\r\n"),
        _ => reply(socket, log, b"-ERR refused by the test\r\n"),
    }
}

#[test]
fn a_reply_followed_by_stray_bytes_drops_its_connection() {
    let server = MisbehavingServer::start(adding_bytes_after_a_reply);
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    // No cool-off, so that the upload that follows is tried.
    let settings = RemoteSettings::new(server.url()).timeouts(Duration::from_millis(500), Duration::from_secs(1), Duration::ZERO);
    let cache = host(dirs.path(), settings);
    assert_eq!(load(&cache, &engine, &tiny_module(80)), Source::Miss);
    cache.flush();
    let stats = cache.stats();
    // On the same connection, the SET would have read the GET's stray `+OK`
    // as its own answer and counted an upload the server refused.
    assert_eq!((stats.remote_errors, stats.remote_uploads, stats.remote_upload_failures), (1, 0, 1), "{stats:?}");
    assert_eq!(*server.log().commands.lock().unwrap(), ["GET", "SET"]);
    assert_eq!(server.log().connections.load(std::sync::atomic::Ordering::SeqCst), 2, "the SET went on the GET's connection");
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_user_a_password_and_a_database_in_the_url_are_used() {
    let Some(server) = RedisServer::start("remote::login", &[]) else { return };
    server.command::<()>(&[b"ACL", b"SETUSER", b"fleet", b"on", b">fleet-password", b"~*", b"+@all"]);
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let url = format!("redis://fleet:fleet-password@127.0.0.1:{}/3", server.port);
    compile_on_a(&dirs.path().join("a"), RemoteSettings::new(&url), &engine, &tiny_module(90));
    let keyspace: String = server.command(&[b"INFO", b"keyspace"]);
    assert!(keyspace.contains("db3:keys=1") && !keyspace.contains("db0:"), "{keyspace}");
    let b = host(&dirs.path().join("b"), RemoteSettings::new(&url));
    assert_eq!(load(&b, &engine, &tiny_module(90)), Source::RemoteHit);

    // A wrong password: the server's refusal is said, the password is not.
    let wrong = format!("redis://fleet:not-the-password@127.0.0.1:{}/3", server.port);
    let c = host(&dirs.path().join("c"), RemoteSettings::new(&wrong));
    let checks = c.check_remote().unwrap();
    let shown = format!("{checks:?}");
    assert!(!checks[0].ok && shown.contains("WRONGPASS") && !shown.contains("not-the-password"), "{shown}");
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn an_upload_lost_to_a_full_event_queue_is_counted_as_a_failed_upload() {
    let Some(server) = RedisServer::start("remote::lost_uploads", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    // The server holds every write for a second, so the worker's next upload
    // (the default policy shares what it stores) keeps it busy while the
    // inserts go on behind a queue of one: their events, each the upload
    // the policy would have asked for, are dropped.
    let host_settings = capcache::HostSettings { event_queue_size: 1, ..capcache::HostSettings::default() };
    let cache = Cache::builder()
        .directory(dirs.path())
        .remote(RemoteSettings::new(server.url()).timeouts(Duration::from_secs(1), Duration::from_secs(2), Duration::ZERO))
        .host_settings(host_settings)
        .open()
        .unwrap();
    // The first insert, once handled, leaves the policy started.
    cache.insert(b"key 0", b"a value");
    cache.flush();
    server.command::<()>(&[b"CLIENT", b"PAUSE", b"1000", b"WRITE"]);
    for n in 1..20 {
        cache.insert(format!("key {n}").as_bytes(), b"a value");
    }
    cache.flush();
    let stats = cache.stats();
    // The policy is free while the worker waits on the network, so every
    // insert was admitted and stored, and all but the queue's worth lost
    // their upload.
    assert_eq!(stats.inserts, 20, "{stats:?}");
    assert!(stats.events_dropped >= 17, "all but two of the 19 inserts behind the held upload lose theirs: {stats:?}");
    // Every stored entry was either uploaded or counted as lost.
    assert_eq!(stats.remote_uploads + stats.remote_upload_failures, stats.inserts, "{stats:?}");
    assert_eq!(stats.remote_upload_failures, stats.events_dropped, "{stats:?}");
    assert_eq!(server.keys().len() as u64, stats.remote_uploads);
}
