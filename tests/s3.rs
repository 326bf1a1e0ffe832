//! The S3 tier, against a real S3-compatible server (moto in server mode)
//! that each test starts on 127.0.0.1 and stops: the same checked values as
//! the Redis tier (entry checksum, HMAC tag), the same bounds (timeouts,
//! sizes), a listing page by page, and in a chain behind Redis.
// What only the Unix-only tests use.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]

use crate::support::redis_server::RedisServer;
use crate::support::s3_server::{ACCESS_KEY_ID, S3Server, SECRET_ACCESS_KEY};
use crate::support::*;
use capcache::{Cache, RemoteMode, RemoteSettings, S3Credentials, Source};
#[cfg(unix)]
use rustix::process::Signal;
use std::process::Command;
use std::time::Duration;

const BUCKET: &str = "fleet-cache";

fn tier(server: &S3Server) -> RemoteSettings {
    RemoteSettings::new(server.url(BUCKET, "wasm")).s3_credentials(S3Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY))
}

fn host(dir: &std::path::Path, settings: RemoteSettings) -> Cache {
    Cache::builder().directory(dir).remote(settings).open().unwrap()
}

fn load(cache: &Cache, wasm: &[u8]) -> Source {
    let engine = wasmtime::Engine::default();
    let source = capcache::wasmtime::load_module_with_source(cache, &engine, wasm).unwrap().1;
    cache.flush();
    source
}

/// The command line, with the tests' credentials in its environment only.
fn capcache_with_credentials(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_capcache"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .unwrap()
}

#[test]
#[cfg_attr(windows, ignore = "starts moto, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_host_with_an_empty_disk_loads_from_the_bucket_then_maps_its_own_copy() {
    let Some(server) = S3Server::start("s3::empty_disk", BUCKET) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let a = host(&dirs.path().join("a"), tier(&server));
    assert_eq!(load(&a, &tiny_module(1)), Source::Miss);
    assert_eq!(a.stats().remote_uploads, 1, "{:?}", a.stats());
    // Under the URL's key prefix, then the tier's prefix and the namespace.
    let keys = server.keys(BUCKET);
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with("wasm/capcache/"), "{keys:?}");

    let b = host(&dirs.path().join("b"), tier(&server));
    assert_eq!(load(&b, &tiny_module(1)), Source::RemoteHit, "host B compiled instead");
    assert_eq!(load(&b, &tiny_module(1)), Source::Hit, "the second load went to the network");
    let stats = b.stats();
    assert_eq!((stats.remote_hits, stats.remote_misses, stats.misses), (1, 0, 0), "{stats:?}");
    assert_eq!(stats.remote_bytes_in, a.stats().remote_bytes_out);

    // And as two processes, credentials from the environment.
    let module = dirs.path().join("m.wat");
    std::fs::write(&module, r#"(module (func (export "f") (result i32) i32.const 9))"#).unwrap();
    let url = server.url(BUCKET, "cli");
    let run = |dir: &str| {
        let dir = dirs.path().join(dir).display().to_string();
        let out = capcache_with_credentials(&["compile", "--dir", &dir, "--remote", &url, &module.display().to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run("cli-a").starts_with("miss"));
    assert!(run("cli-b").starts_with("remote"));
    assert!(run("cli-b").starts_with("hit"));
}

#[test]
#[cfg_attr(windows, ignore = "starts moto, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_damaged_or_untagged_object_is_never_served_and_a_writer_replaces_it() {
    let Some(server) = S3Server::start("s3::damaged", BUCKET) else { return };
    let dirs = tempfile::tempdir().unwrap();
    assert_eq!(load(&host(&dirs.path().join("a"), tier(&server)), &tiny_module(5)), Source::Miss);
    let key = server.keys(BUCKET).pop().unwrap();
    let mut value = server.get(BUCKET, &key);
    let middle = value.len() / 2;
    value[middle] ^= 0x40;
    server.put(BUCKET, &key, &value);

    let b = host(&dirs.path().join("b"), tier(&server));
    assert_eq!(load(&b, &tiny_module(5)), Source::Miss, "a bit-flipped object was served");
    assert_eq!(b.stats().remote_rejected, 1);
    // Deleted, then replaced by B's own upload of what it compiled.
    let replaced = server.get(BUCKET, &key);
    assert_ne!(replaced, value);
    assert_eq!(load(&host(&dirs.path().join("c"), tier(&server)), &tiny_module(5)), Source::RemoteHit);

    // With an HMAC key, the whole, valid but untagged object is refused;
    // holders of the key share.
    let keyed = || tier(&server).hmac_key(b"0123456789abcdef-fleet-key".to_vec());
    let d = host(&dirs.path().join("d"), keyed());
    assert_eq!(load(&d, &tiny_module(5)), Source::Miss, "an untagged object was served");
    assert_eq!(d.stats().remote_rejected, 1);
    assert_eq!(load(&host(&dirs.path().join("e"), keyed()), &tiny_module(5)), Source::RemoteHit);
}

#[test]
#[cfg_attr(windows, ignore = "starts moto, a Linux program that Wine starts without a handle to wait on or stop")]
fn an_object_larger_than_max_value_size_is_refused_and_a_larger_value_is_never_uploaded() {
    let Some(server) = S3Server::start("s3::too_large", BUCKET) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let a = host(&dirs.path().join("a"), tier(&server));
    a.insert(b"big", &incompressible(1, 64 << 10));
    a.flush();
    assert_eq!(a.stats().remote_uploads, 1);

    let limit = 16 << 10;
    let b = host(&dirs.path().join("b"), tier(&server).max_value_size(limit));
    assert_eq!(b.get(b"big"), None);
    let stats = b.stats();
    assert_eq!((stats.remote_rejected, stats.remote_errors), (1, 0), "{stats:?}");
    assert_eq!(stats.remote_bytes_in, 0, "{stats:?}");
    // Nor does such a host upload what it may not fetch.
    b.insert(b"also big", &incompressible(2, 64 << 10));
    b.flush();
    assert_eq!((b.stats().remote_uploads, b.stats().remote_upload_failures), (0, 1), "{:?}", b.stats());
    assert_eq!(server.keys(BUCKET).len(), 1);
}

unix_only! { "starts moto, a Linux program that Wine starts without a handle to wait on or stop",
#[test]
fn a_frozen_server_costs_one_timeout_then_is_skipped_until_its_cool_off_ends() {
    let Some(server) = S3Server::start("s3::frozen", BUCKET) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let (connect, operation) = (Duration::from_millis(200), Duration::from_millis(300));
    let settings = tier(&server).timeouts(connect, operation, Duration::from_secs(30));
    assert_eq!(load(&host(&dirs.path().join("a"), settings.clone()), &tiny_module(1)), Source::Miss);

    let b = host(&dirs.path().join("b"), settings);
    server.signal(Signal::STOP);
    let source = load(&b, &tiny_module(1));
    let stats = b.stats();
    server.signal(Signal::CONT);
    assert_eq!(source, Source::Miss);
    // The kernel accepts the connection for the frozen server, so the whole
    // request waits out its bound: the connect timeout and the operation
    // timeout together, plus 20%.
    let (waited, bound) = (Duration::from_micros(stats.remote_us), (connect + operation) * 12 / 10);
    assert!(waited >= operation && waited <= bound, "the tier held the load {waited:?}: the bound is {operation:?} to {bound:?}");
    assert_eq!(stats.remote_errors, 1, "{stats:?}");
    // Within the cool-off, neither the next fetch nor the upload asks it.
    assert_eq!(load(&b, &tiny_module(2)), Source::Miss);
    assert_eq!(b.stats().remote_errors, 1, "{:?}", b.stats());
    assert!(b.stats().remote_skipped >= 2, "{:?}", b.stats());
}
}

#[test]
#[cfg_attr(windows, ignore = "starts moto, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_missing_bucket_or_a_server_that_is_down_costs_a_miss_and_remote_check_says_which() {
    let Some(server) = S3Server::start("s3::missing", BUCKET) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let no_bucket = RemoteSettings::new(server.url("no-such-bucket", "")).s3_credentials(S3Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
    let cache = host(&dirs.path().join("a"), no_bucket);
    assert_eq!(load(&cache, &tiny_module(3)), Source::Miss);
    assert_eq!(load(&cache, &tiny_module(3)), Source::Hit);
    let checks = cache.check_remote().unwrap();
    assert!(!checks[0].ok && checks[0].finding.contains("NoSuchBucket"), "{checks:?}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("s3://{BUCKET}?endpoint=http://127.0.0.1:{port}");
    let down = host(&dirs.path().join("b"), RemoteSettings::new(&url).s3_credentials(S3Credentials::new("k", "s")));
    assert_eq!(load(&down, &tiny_module(4)), Source::Miss);
    assert_eq!(down.stats().remote_errors, 1, "{:?}", down.stats());

    // The command line: each part of the bucket said, the secret never.
    let dir = dirs.path().join("c").display().to_string();
    let out = capcache_with_credentials(&["remote", "check", "--dir", &dir, "--remote", &server.url(BUCKET, "wasm")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for part in ["reach: bucket fleet-cache", "read: GET allowed", "write: PUT and DELETE allowed", "lifecycle rule", "integrity: WARNING"] {
        assert!(stdout.contains(part), "no `{part}` in: {stdout}");
    }
    assert!(!stdout.contains(SECRET_ACCESS_KEY) && !String::from_utf8_lossy(&out.stderr).contains(SECRET_ACCESS_KEY));
    assert!(server.keys(BUCKET).is_empty(), "the probe left its object");
    let out = capcache_with_credentials(&["remote", "check", "--dir", &dir, "--remote", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("connection refused"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
#[cfg_attr(windows, ignore = "starts moto, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_read_only_host_never_writes_to_the_bucket() {
    let Some(server) = S3Server::start("s3::read_only", BUCKET) else { return };
    let dirs = tempfile::tempdir().unwrap();
    assert_eq!(load(&host(&dirs.path().join("a"), tier(&server)), &tiny_module(21)), Source::Miss);
    let key = server.keys(BUCKET).pop().unwrap();
    let reader = host(&dirs.path().join("b"), tier(&server).mode(RemoteMode::ReadOnly));
    assert_eq!(load(&reader, &tiny_module(21)), Source::RemoteHit);
    assert_eq!(load(&reader, &tiny_module(22)), Source::Miss);
    // A damaged object is refused and left there.
    let value = server.get(BUCKET, &key);
    server.put(BUCKET, &key, &value[..value.len() - 7]);
    let other = host(&dirs.path().join("c"), tier(&server).mode(RemoteMode::ReadOnly));
    assert_eq!(load(&other, &tiny_module(21)), Source::Miss);
    assert_eq!(other.stats().remote_rejected, 1);
    assert_eq!(server.keys(BUCKET), vec![key], "a read-only host wrote or deleted");
}

#[test]
#[cfg_attr(windows, ignore = "starts moto, a Linux program that Wine starts without a handle to wait on or stop")]
fn push_and_pull_list_the_bucket_page_by_page() {
    let Some(server) = S3Server::start("s3::push_pull", BUCKET) else { return };
    let dirs = tempfile::tempdir().unwrap();
    // More entries than one page of a listing holds (1,000).
    let local = Cache::builder().directory(dirs.path().join("a")).open().unwrap();
    for i in 0..1003u32 {
        local.insert(&i.to_le_bytes(), &i.to_le_bytes());
    }
    drop(local);
    let a = host(&dirs.path().join("a"), tier(&server));
    let pushed = a.push_to_remote().unwrap();
    assert_eq!((pushed.copied, pushed.present, pushed.failed), (1003, 0, 0));
    let b = host(&dirs.path().join("b"), tier(&server));
    let pulled = b.pull_from_remote().unwrap();
    assert_eq!((pulled.copied, pulled.failed), (1003, 0));
    assert_eq!(b.get(&1002u32.to_le_bytes()), Some(1002u32.to_le_bytes().to_vec()));
}

#[test]
#[cfg_attr(windows, ignore = "starts moto, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_hit_in_the_bucket_is_backfilled_into_the_redis_tier_before_it() {
    let Some(server) = S3Server::start("s3::chain", BUCKET) else { return };
    let Some(redis) = RedisServer::start("s3::chain", &[]) else { return };
    let dirs = tempfile::tempdir().unwrap();
    assert_eq!(load(&host(&dirs.path().join("a"), tier(&server)), &tiny_module(8)), Source::Miss);
    let chain = || Cache::builder().directory(dirs.path().join("b")).remotes(vec![RemoteSettings::new(redis.url()), tier(&server)]).open().unwrap();
    let b = chain();
    assert_eq!(load(&b, &tiny_module(8)), Source::RemoteHit);
    assert_eq!(redis.keys().len(), 1, "the Redis tier was not backfilled");
    let tiers = b.tier_stats();
    assert_eq!((tiers[0].1.remote_misses, tiers[0].1.remote_uploads, tiers[1].1.remote_hits), (1, 1, 1), "{tiers:?}");
    // What B compiles itself goes to both.
    assert_eq!(load(&b, &tiny_module(9)), Source::Miss);
    assert_eq!((redis.keys().len(), server.keys(BUCKET).len()), (2, 2));
}

unix_only! { "starts moto, a Linux program that Wine starts without a handle to wait on or stop",
#[test]
fn settings_an_s3_tier_cannot_honour_are_refused_at_open_by_name() {
    let Some(server) = S3Server::start("s3::settings", BUCKET) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let refused = |settings: RemoteSettings| Cache::builder().directory(dirs.path()).remote(settings).open().unwrap_err().to_string();
    let message = refused(tier(&server).ttl(Some(Duration::from_secs(60))));
    assert!(message.contains("lifecycle rule"), "{message}");
    let message = refused(RemoteSettings::new(format!("{}&colour=blue", server.url(BUCKET, ""))));
    assert!(message.contains("unknown setting `colour`"), "{message}");
    let message = refused(RemoteSettings::new("s3://"));
    assert!(message.contains("names no bucket"), "{message}");
    let message = refused(RemoteSettings::new("redis://127.0.0.1:1").s3_credentials(S3Credentials::new("k", "s")));
    assert!(message.contains("not s3://"), "{message}");

    // From the configuration file: half the credentials; the secret in a
    // file others can read; none anywhere.
    let config = dirs.path().join("capcache.toml");
    let secret = dirs.path().join("s3.secret");
    std::fs::write(&secret, SECRET_ACCESS_KEY).unwrap();
    let check = |section: &str| {
        let text = format!("[cache]\ndirectory = {:?}\n\n[cache.remote]\nurl = {:?}\n{section}", dirs.path().join("c").display().to_string(), server.url(BUCKET, ""));
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_capcache"))
            .args(["remote", "check", "--config", &config.display().to_string()])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, said) = check("access-key-id = \"k\"\n");
    assert!(code != Some(0) && said.contains("go together"), "{said}");
    let (code, said) = check("");
    assert!(code != Some(0) && said.contains("no credentials: set AWS_ACCESS_KEY_ID"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with_file = format!("access-key-id = {ACCESS_KEY_ID:?}\nsecret-access-key-file = {:?}\n", secret.display().to_string());
    let (code, said) = check(&with_file);
    assert!(code != Some(0) && said.contains("chmod 600"), "{said}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, said) = check(&with_file);
    assert!(code == Some(0) && said.contains("write: PUT and DELETE allowed"), "{said}");
    assert!(!said.contains(SECRET_ACCESS_KEY), "the secret was printed: {said}");
}
}
