//! A chain of shared tiers (#23): local disk, then the tiers in order. A hit
//! in a slower tier is backfilled into the faster ones; what the policy
//! shares goes to every tier the host writes to, each in its own mode; a
//! tier that fails is skipped and the others still serve; `capcache stats`
//! counts each tier's own. Two real Redis servers, started by the test.
// What only the Unix-only tests use.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]

use crate::support::redis_server::RedisServer;
use crate::support::*;
use capcache::{Cache, RemoteMode, RemoteSettings, Source};
#[cfg(unix)]
use rustix::process::Signal;
use std::time::Duration;

fn load(cache: &Cache, wasm: &[u8]) -> Source {
    let engine = wasmtime::Engine::default();
    let (_, source) = capcache::wasmtime::load_module_with_source(cache, &engine, wasm).unwrap();
    cache.flush();
    source
}

unix_only! { "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop",
#[test]
fn a_hit_in_a_slower_tier_is_backfilled_into_the_faster_one_and_a_failed_tier_is_skipped() {
    let (Some(fast), Some(slow)) = (RedisServer::start("chain::fast", &[]), RedisServer::start("chain::slow", &[])) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let host = |dir: &str, tiers: Vec<RemoteSettings>| Cache::builder().directory(dirs.path().join(dir)).remotes(tiers).open().unwrap();
    let fast_tier = || RemoteSettings::new(fast.url()).timeouts(Duration::from_millis(200), Duration::from_millis(300), Duration::from_secs(30));
    let slow_tier = || RemoteSettings::new(slow.url());

    // Host A writes to the slow tier alone.
    let a = host("a", vec![slow_tier()]);
    assert_eq!(load(&a, &tiny_module(1)), Source::Miss);
    assert_eq!((fast.keys().len(), slow.keys().len()), (0, 1));

    // Host B, with an empty disk and both tiers: the slow one serves, and
    // the fast one is backfilled.
    let b = host("b", vec![fast_tier(), slow_tier()]);
    assert_eq!(load(&b, &tiny_module(1)), Source::RemoteHit);
    assert_eq!(fast.keys().len(), 1, "the faster tier was not backfilled");
    let tiers = b.tier_stats();
    assert_eq!(tiers.len(), 2);
    assert_eq!((tiers[0].1.remote_misses, tiers[0].1.remote_uploads, tiers[0].1.remote_hits), (1, 1, 0), "{tiers:?}");
    assert_eq!((tiers[1].1.remote_hits, tiers[1].1.remote_uploads), (1, 0), "{tiers:?}");

    // Host C knows the fast tier alone: it has the entry now.
    assert_eq!(load(&host("c", vec![fast_tier()]), &tiny_module(1)), Source::RemoteHit);

    // The fast tier frozen: host D still gets a module from the slow one.
    assert_eq!(load(&a, &tiny_module(2)), Source::Miss);
    fast.signal(Signal::STOP);
    let d = host("d", vec![fast_tier(), slow_tier()]);
    let source = load(&d, &tiny_module(2));
    fast.signal(Signal::CONT);
    assert_eq!(source, Source::RemoteHit, "the slow tier did not serve past the frozen one");
    let tiers = d.tier_stats();
    assert_eq!((tiers[0].1.remote_errors, tiers[1].1.remote_hits), (1, 1), "{tiers:?}");
}
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn each_tier_keeps_its_own_mode_and_stats_counts_each() {
    let (Some(writable), Some(read_only)) = (RedisServer::start("chain::rw", &[]), RedisServer::start("chain::ro", &[])) else { return };
    let dirs = tempfile::tempdir().unwrap();
    let tiers = vec![RemoteSettings::new(writable.url()), RemoteSettings::new(read_only.url()).mode(RemoteMode::ReadOnly)];
    let cache = Cache::builder().directory(dirs.path().join("e")).remotes(tiers).open().unwrap();
    assert_eq!(load(&cache, &tiny_module(3)), Source::Miss);
    assert_eq!((writable.keys().len(), read_only.keys().len()), (1, 0), "a read-only tier was written");
    drop(cache);

    // The same chain from the configuration file: [[cache.remote]] twice.
    let config = dirs.path().join("capcache.toml");
    std::fs::write(
        &config,
        format!(
            "[cache]\ndirectory = {:?}\n\n[[cache.remote]]\nurl = {:?}\n\n[[cache.remote]]\nurl = {:?}\nmode = \"read-only\"\n",
            dirs.path().join("f").display().to_string(),
            writable.url(),
            read_only.url()
        ),
    )
    .unwrap();
    let module = dirs.path().join("m.wat");
    std::fs::write(&module, r#"(module (func (export "f") (result i32) i32.const 4))"#).unwrap();
    let config_arg = config.display().to_string();
    let module_arg = module.display().to_string();
    let out = capcache(&["compile", "--config", &config_arg, &module_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((writable.keys().len(), read_only.keys().len()), (2, 0));
    let out = capcache(&["stats", "--config", &config_arg]);
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tier_line = |n: usize| stats.lines().find(|l| l.trim_start().starts_with(&format!("tier {n} "))).unwrap_or_else(|| panic!("no tier {n} line: {stats}")).to_string();
    assert!(tier_line(1).contains(&writable.url()) && tier_line(1).contains("1 uploads"), "{stats}");
    assert!(tier_line(2).contains(&read_only.url()) && tier_line(2).contains("0 uploads") && tier_line(2).contains("1 misses"), "{stats}");
}
