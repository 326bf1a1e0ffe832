//! The shared tier on a Redis Cluster (`redis-cluster://`), against three
//! real nodes the test starts and joins (`redis-server --cluster-enabled
//! yes`, `redis-cli --cluster create`): keys spread over the nodes by slot,
//! a host that names one seed reaches them all (MOVED), a slot being
//! migrated is followed (ASK), and a node killed mid-run costs misses, never
//! wrong code and never a hang.

use crate::support::redis_server::RedisServer;
use crate::support::*;
use capcache::{Cache, RemoteSettings, Source};
use std::process::Command;
use std::time::{Duration, Instant};

const MODULES: u32 = 12;

/// Three masters serving every slot, or `None` (said) without the tools.
fn cluster(test: &str) -> Option<Vec<RedisServer>> {
    let args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"];
    let nodes: Vec<RedisServer> = (0..3).map(|n| RedisServer::start(&format!("{test}{n}"), &args)).collect::<Option<_>>()?;
    let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let created = Command::new("redis-cli").arg("--cluster").arg("create").args(&addresses).args(["--cluster-replicas", "0", "--cluster-yes"]).output();
    let created = match created {
        Ok(out) => out,
        Err(e) => {
            skip(test, &format!("redis-cli cannot run ({e}): apt-get install redis-tools"), ".ci/run installs it with redis-server");
            return None;
        }
    };
    assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
    let started = Instant::now();
    while !nodes.iter().all(|n| n.command::<String>(&[b"CLUSTER", b"INFO"]).contains("cluster_state:ok")) {
        assert!(started.elapsed() < Duration::from_secs(20), "the cluster did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(nodes)
}

fn load(cache: &Cache, engine: &wasmtime::Engine, n: u32) -> (Source, i32) {
    let (module, source) = capcache::wasmtime::load_module_with_source(cache, engine, &tiny_module(n)).unwrap();
    (source, answer(engine, &module))
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn keys_spread_over_the_nodes_and_a_host_naming_one_seed_reaches_them_all_even_mid_migration() {
    let Some(nodes) = cluster("cluster::spread") else { return };
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    // Each host names a different node alone: the rest it learns.
    let host = |dir: &str, seed: usize| {
        let url = format!("redis-cluster://127.0.0.1:{}", nodes[seed].port);
        Cache::builder().directory(dirs.path().join(dir)).remote(RemoteSettings::new(url)).open().unwrap()
    };
    let a = host("a", 0);
    for n in 0..MODULES {
        assert_eq!(load(&a, &engine, n), (Source::Miss, n as i32));
    }
    a.flush();
    let per_node: Vec<usize> = nodes.iter().map(|n| n.keys().len()).collect();
    assert_eq!(per_node.iter().sum::<usize>(), MODULES as usize, "{per_node:?}");
    assert!(per_node.iter().filter(|&&k| k > 0).count() >= 2, "the keys did not spread over the nodes: {per_node:?}");

    let b = host("b", 1);
    for n in 0..MODULES {
        assert_eq!(load(&b, &engine, n), (Source::RemoteHit, n as i32), "module {n}");
    }

    // A slot half moved: its key is on the importing node, and the node that
    // still owns the slot answers ASK.
    let (owner, key) = nodes.iter().enumerate().find_map(|(i, node)| node.keys().into_iter().next().map(|k| (i, k))).unwrap();
    let importer = (owner + 1) % nodes.len();
    let slot: i64 = nodes[owner].command(&[b"CLUSTER", b"KEYSLOT", key.as_bytes()]);
    let slot = slot.to_string();
    let id = |i: usize| nodes[i].command::<String>(&[b"CLUSTER", b"MYID"]);
    let _: String = nodes[importer].command(&[b"CLUSTER", b"SETSLOT", slot.as_bytes(), b"IMPORTING", id(owner).as_bytes()]);
    let _: String = nodes[owner].command(&[b"CLUSTER", b"SETSLOT", slot.as_bytes(), b"MIGRATING", id(importer).as_bytes()]);
    let port = nodes[importer].port.to_string();
    let _: String = nodes[owner].command(&[b"MIGRATE", b"127.0.0.1", port.as_bytes(), b"", b"0", b"5000", b"KEYS", key.as_bytes()]);
    assert!(nodes[owner].keys().is_empty() || !nodes[owner].keys().contains(&key), "the key did not move");
    let c = host("c", owner);
    let moved = (0..MODULES).filter(|&n| load(&c, &engine, n) == (Source::RemoteHit, n as i32)).count();
    assert_eq!(moved, MODULES as usize, "a key mid-migration was not followed");
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_node_killed_mid_run_costs_misses_never_wrong_code_nor_a_hang() {
    let Some(mut nodes) = cluster("cluster::killed") else { return };
    let dirs = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let (connect, operation) = (Duration::from_millis(200), Duration::from_millis(300));
    let settings = || RemoteSettings::new(format!("redis-cluster://127.0.0.1:{}", nodes[0].port)).timeouts(connect, operation, Duration::from_secs(30));
    let a = Cache::builder().directory(dirs.path().join("a")).remote(settings()).open().unwrap();
    for n in 0..MODULES {
        load(&a, &engine, n);
    }
    a.flush();
    let on_victim = nodes[2].keys().len();
    assert!(on_victim > 0, "no key on the node to be killed: nothing is tested");
    let b = Cache::builder().directory(dirs.path().join("b")).remote(settings()).open().unwrap();
    // Half the run with the cluster whole, then a node dies.
    let mut sources = Vec::new();
    for n in 0..MODULES {
        if n == MODULES / 2 {
            drop(nodes.remove(2));
        }
        let (source, answered) = load(&b, &engine, n);
        assert_eq!(answered, n as i32, "module {n} ran another module's code");
        sources.push(source);
    }
    assert!(sources.contains(&Source::Miss), "no load missed after a node died: {sources:?}");
    // A dead node refuses at once, or its command times out once: then the
    // tier cools off and the loads go on without it.
    let waited = Duration::from_micros(b.stats().remote_us);
    assert!(waited <= (connect + operation) * 6 / 5, "the loads waited {waited:?} on the tier");
}
