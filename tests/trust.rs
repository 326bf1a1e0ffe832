//! A hit is the artifact of exactly these bytes, for this engine, written by
//! this user: on filesystems with whole-second timestamps, during deploys that
//! swap directories, against other users and against forged key material.
// What only the Unix-only tests use.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]


use capcache::wasmtime::{Kind, load_module, load_module_file, load_module_file_with_source};
use capcache::Source;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use crate::support::*;
use wasmtime::{Engine, Module};

fn manifests(t: &TestCache) -> usize {
    std::fs::read_dir(t.root().join("default/manifests")).map(|d| d.count()).unwrap_or(0)
}

/// A cache in direct mode: file loads trust the file's identity.
fn open_direct(t: &TestCache) -> capcache::Cache {
    t.builder().direct_mode(capcache::DirectMode::TrustFileIdentity).open().unwrap()
}

#[cfg(unix)]
fn change_time(path: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.ctime(), m.ctime_nsec())
}

#[test]
fn direct_mode_records_a_settled_file_and_never_a_recently_changed_one() {
    let t = TestCache::new();
    let cache = open_direct(&t);
    let engine = Engine::default();
    let path = t.dir.path().join("m.wasm");
    std::fs::write(&path, tiny_module(1)).unwrap();
    set_modified_ago(&path, Duration::from_secs(3600));
    // Its modification time is old, but its change time is now: not trusted.
    assert_eq!(answer(&engine, &load_module_file(&cache, &engine, &path).unwrap()), 1);
    cache.flush();
    assert_eq!(manifests(&t), 0, "a file changed just now was trusted to a manifest");

    std::thread::sleep(capcache::wasmtime::RECENT_CHANGE_WINDOW + Duration::from_millis(100));
    let (module, source) = load_module_file_with_source(&cache, &engine, &path).unwrap();
    assert_eq!((answer(&engine, &module), source), (1, Source::Hit));
    assert_eq!(manifests(&t), 1, "a settled file was not recorded");
    let (_, source) = load_module_file_with_source(&cache, &engine, &path).unwrap();
    assert_eq!(source, Source::Hit);
    // Manifests are not entries: one module, one entry, and the lookups count
    // once each.
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, cache.entries().unwrap().len()), (2, 1, 1));

    // New contents of the same size with the old modification time put back:
    // the change time differs, so the file is read and the new module loaded.
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, tiny_module(9)).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
    let (module, source) = load_module_file_with_source(&cache, &engine, &path).unwrap();
    assert_eq!((answer(&engine, &module), source), (9, Source::Miss));
}

/// Waits until the wall clock is early in a second, so that what follows
/// fits in the same second (on a filesystem that keeps whole seconds).
fn at_start_of_a_second() {
    loop {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        if now.subsec_millis() < 50 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

unix_only! { "loop-mounts an ext4 image with 128-byte inodes (mkfs.ext4, mount): Linux's",
#[test]
fn direct_mode_on_whole_second_timestamps_never_serves_a_rewrite_of_the_same_second() {
    if !have_root("direct_mode_on_whole_second_timestamps...", "loop-mounts an ext4 image with 128-byte inodes") {
        return;
    }
    let fs = CoarseTimestampFs::mount();
    let path = fs.path().join("app.wasm");
    let t = TestCache::new();
    let cache = open_direct(&t);
    let engine = Engine::default();
    let old = SystemTime::now() - Duration::from_secs(3600);
    let mut rewrites_in_one_second = 0;
    for version in 0..6 {
        // One version, then another of the same size, in one second, the
        // modification time put back each time: every fact a manifest records
        // is the same for both on this filesystem.
        at_start_of_a_second();
        std::fs::write(&path, tiny_module(100 + version)).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        let first = change_time(&path);
        assert_eq!(first.1, 0, "not a filesystem with whole-second timestamps");
        assert_eq!(answer(&engine, &load_module_file(&cache, &engine, &path).unwrap()), 100 + version as i32);
        std::fs::write(&path, tiny_module(200 + version)).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        if change_time(&path) == first {
            rewrites_in_one_second += 1;
        }
        assert_eq!(
            answer(&engine, &load_module_file(&cache, &engine, &path).unwrap()),
            200 + version as i32,
            "the version rewritten in the same second was served the old code"
        );
    }
    assert!(rewrites_in_one_second >= 3, "only {rewrites_in_one_second} rewrites landed in one second: the test proved little");
    assert_eq!(manifests(&t), 0);
    // Once settled past the coarse window, direct mode works there too.
    std::thread::sleep(capcache::wasmtime::RECENT_CHANGE_WINDOW_COARSE + Duration::from_millis(200));
    assert_eq!(answer(&engine, &load_module_file(&cache, &engine, &path).unwrap()), 205);
    assert_eq!(manifests(&t), 1);
}
}

#[test]
#[cfg_attr(windows, ignore = "Windows renames no directory while a file in it is open: the swapping deployer this test models cannot run there")]
fn direct_mode_during_directory_swapping_deploys_never_records_one_version_for_another() {
    // releases/a and releases/b hold two versions of app.wasm, of one size;
    // a deployer swaps which of them is `current` as fast as it can, by
    // renaming directories (the files' own times never change).
    let work = tempfile::tempdir().unwrap();
    let current = work.path().join("current");
    let other = work.path().join("other");
    let aside = work.path().join("aside");
    for (dir, version) in [(&current, 1), (&other, 2)] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("app.wasm"), tiny_module(version)).unwrap();
        std::fs::write(dir.join("version"), version.to_string()).unwrap();
    }
    std::thread::sleep(capcache::wasmtime::RECENT_CHANGE_WINDOW + Duration::from_millis(100));
    let t = TestCache::new();
    let cache = open_direct(&t);
    let engine = Engine::default();
    let app = current.join("app.wasm");
    let manifests_dir = t.root().join("default/manifests");
    let (mut rounds, mut swaps, mut loaded, mut recorded) = (0, 0u64, 0, 0);
    let started = Instant::now();
    while rounds < 300 && started.elapsed() < Duration::from_secs(60) {
        rounds += 1;
        for manifest in std::fs::read_dir(&manifests_dir).unwrap() {
            std::fs::remove_file(manifest.unwrap().path()).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let deployer = {
            let (stop, current, other, aside) = (stop.clone(), current.clone(), other.clone(), aside.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(&current, &aside).unwrap();
                    std::fs::rename(&other, &current).unwrap();
                    std::fs::rename(&aside, &other).unwrap();
                    swaps += 1;
                }
                swaps
            })
        };
        for _ in 0..20 {
            // The path may be missing for an instant between two renames.
            if let Ok(module) = load_module_file(&cache, &engine, &app) {
                assert!([1, 2].contains(&answer(&engine, &module)));
                loaded += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        swaps += deployer.join().unwrap();
        // What the deploys left recorded, before the checks below add theirs.
        recorded += std::fs::read_dir(&manifests_dir).unwrap().count();
        // Whatever was recorded while the deploys ran, each version now loads
        // as itself, through its manifest if one was recorded.
        for _ in 0..2 {
            let version: i32 = std::fs::read_to_string(current.join("version")).unwrap().parse().unwrap();
            assert_eq!(answer(&engine, &load_module_file(&cache, &engine, &app).unwrap()), version, "round {rounds}");
            std::fs::rename(&current, &aside).unwrap();
            std::fs::rename(&other, &current).unwrap();
            std::fs::rename(&aside, &other).unwrap();
        }
    }
    assert!(swaps > 1000, "the deployer swapped only {swaps} times in {rounds} rounds");
    // The race was run: loads succeeded, and manifests were recorded, while
    // the directories swapped.
    assert!(rounds >= 50, "only {rounds} rounds in the time allowed");
    assert!(loaded >= rounds * 5, "only {loaded} loads succeeded in {rounds} rounds");
    assert!(recorded > 0, "no manifest was recorded while the directories swapped: the race was never run");
    eprintln!("{rounds} rounds, {swaps} swaps, {loaded} loads, {recorded} manifests recorded, no wrong artifact");
}

unix_only! { "Unix modes: on Windows a file takes its access list from the cache root, which trust::the_cache_root_is_private_to_its_owner_on_windows checks",
#[test]
fn files_are_created_read_only_and_directories_unwritable_by_others() {
    let t = TestCache::new();
    // Every kind of file the cache writes: entries (a raw artifact, a value),
    // a direct-mode manifest, the policy's state (the cleanup's), the
    // journals, and compiled policy code.
    let cache = t.builder().setting("raw-entries", "always").direct_mode(capcache::DirectMode::TrustFileIdentity).open().unwrap();
    let engine = Engine::default();
    let module = t.dir.path().join("m.wasm");
    std::fs::write(&module, tiny_module(1)).unwrap();
    std::thread::sleep(capcache::wasmtime::RECENT_CHANGE_WINDOW_COARSE + Duration::from_millis(100));
    load_module_file(&cache, &engine, &module).unwrap();
    cache.insert(b"key", b"value");
    cache.get(b"key");
    assert!(cache.maintain().unwrap().ran);
    drop(cache);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for (path, _) in snapshot(&t.root()) {
        let mode = mode_of(&path);
        assert_eq!(mode & 0o022, 0, "{} is writable by others (mode {mode:o})", path.display());
        let area = path.parent().unwrap().file_name().unwrap().to_str().unwrap().to_string();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let expected = match (area.as_str(), name.as_str()) {
            ("default", "usage.log" | "stats.log") => 0o644,
            _ => 0o444,
        };
        assert_eq!(mode, expected, "{}", path.display());
        *seen.entry(if area == "default" { name } else { area }).or_default() += 1;
    }
    for (kind, at_least) in [("entries", 2), ("manifests", 1), ("state", 1), ("usage.log", 1), ("stats.log", 1)] {
        assert!(seen.get(kind).copied().unwrap_or(0) >= at_least, "fewer than {at_least} {kind}: {seen:?}");
    }
    // The root is private; what is below it needs no more.
    assert_eq!(mode_of(&t.root()), 0o700);
    for dir in ["default", "default/entries", "default/manifests", "default/tmp", "default/state", "policy-code"] {
        assert_eq!(mode_of(&t.root().join(dir)), 0o755, "{dir}");
    }
}
}

/// Lets others write `path`: group or world write bits on Unix (`mode`), an
/// access list granting Everyone full control on Windows.
fn let_others_write(path: &Path, #[cfg_attr(not(unix), allow(unused_variables))] mode: u32) {
    #[cfg(unix)]
    set_mode(path, mode);
    #[cfg(windows)]
    set_access_list(path, EVERYONE_MAY_WRITE);
}

#[test]
fn an_entry_that_others_can_write_is_never_served() {
    let t = TestCache::new();
    let cache = t.builder().setting("raw-entries", "always").open().unwrap();
    let engine = Engine::default();
    let wasm = tiny_module(3);
    load_module(&cache, &engine, &wasm).unwrap();
    cache.insert(b"key", b"value");
    cache.flush();
    let artifact = t.entries_dir().join(capcache::wasmtime::artifact_name(&engine, Kind::Module, &wasm));
    let value = t.entries_dir().join(capcache::ValueKey::of(b"key").name());
    // Served once, so the raw entry is known as checked in this process.
    assert_eq!(answer(&engine, &load_module(&cache, &engine, &wasm).unwrap()), 3);
    let_others_write(&artifact, 0o646);
    let_others_write(&value, 0o464);
    assert_eq!(cache.get(b"key"), None);
    assert_eq!(answer(&engine, &load_module(&cache, &engine, &wasm).unwrap()), 3);
    let stats = cache.stats();
    assert_eq!((stats.untrusted, stats.hits), (2, 1), "{stats:?}");
    assert!(!value.exists(), "the untrusted entry was kept");
    // `verify` reports one that no read has met yet, and says who may write.
    let planted = t.entries_dir().join(capcache::ValueKey::of(b"other").name());
    cache.insert(b"other", b"value");
    let_others_write(&planted, 0o666);
    let report = cache.verify(capcache::VerifyMode::Report, |_, _| {}).unwrap();
    let found = report.bad.iter().find(|(name, _)| planted.ends_with(name)).unwrap_or_else(|| panic!("{report:?}"));
    let who = if cfg!(windows) { "writable by S-1-1-0" } else { "writable by others (mode 666)" };
    assert!(found.1.contains(who), "{found:?}");
}

unix_only! { "needs Unix users: gives a file to the user nobody (chown) or runs a child as nobody",
#[test]
fn an_entry_owned_by_another_user_is_never_served() {
    if !have_root("an_entry_owned_by_another_user_is_never_served", "gives a file to another user") {
        return;
    }
    let t = TestCache::new();
    let cache = t.open();
    cache.insert(b"key", b"planted?");
    let entry = t.entries_dir().join(capcache::ValueKey::of(b"key").name());
    std::os::unix::fs::chown(&entry, Some(65534), Some(65534)).unwrap();
    // `verify` reports it, and keeps it when only asked to report.
    let report = cache.verify(capcache::VerifyMode::Report, |_, _| {}).unwrap();
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert_eq!(report.bad[0].0, entry.file_name().unwrap().to_str().unwrap());
    assert!(entry.exists());
    // A read never serves it, and removes it.
    assert_eq!(cache.get(b"key"), None);
    assert_eq!(cache.stats().untrusted, 1);
    assert!(!entry.exists());
    let report = cache.verify(capcache::VerifyMode::Report, |_, _| {}).unwrap();
    assert_eq!(report.bad.len(), 0);
}
}

unix_only! { "Unix modes; the Windows counterpart, on access lists, is in this module",
#[test]
fn a_namespace_directory_that_others_can_write_is_refused() {
    for area in ["default", "default/entries", "default/manifests", "default/tmp", "default/state"] {
        let t = TestCache::new();
        drop(t.open());
        set_mode(&t.root().join(area), 0o775);
        let err = t.builder().open().unwrap_err();
        let message = err.to_string();
        assert!(message.contains("group-writable") && message.contains(area), "{area}: {message}");
    }
}
}

unix_only! { "the umask is Unix's (and the test runs sh)",
#[test]
fn under_umask_000_the_cache_opens_its_own_new_directory_again() {
    // The umask is the process's: a child process sets it, and the CLI runs
    // there, so that the other tests of this binary keep theirs.
    let t = TestCache::new();
    let module = t.dir.path().join("m.wasm");
    std::fs::write(&module, tiny_module(4)).unwrap();
    let root = t.root().join("new/deeper");
    let script = format!(
        "umask 000 && {bin} compile --dir {root} {m} && {bin} compile --dir {root} {m}",
        bin = env!("CARGO_BIN_EXE_capcache"),
        root = root.display(),
        m = module.display()
    );
    let output = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let kinds: Vec<_> = stdout.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(kinds, ["miss", "hit"], "{stdout}");
    for (dir, mode) in [(t.root().join("new"), 0o755), (root.clone(), 0o700), (root.join("default"), 0o755)] {
        assert_eq!(mode_of(&dir), mode, "{}", dir.display());
    }
    for (path, _) in snapshot(&root) {
        assert_eq!(mode_of(&path) & 0o022, 0, "{}", path.display());
    }
}
}

/// What SHA-256 was fed for `parts`, each length-prefixed: the key material a
/// caller would pass to forge a key if key domains were not kept apart.
fn preimage(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|part| (part.len() as u64).to_le_bytes().into_iter().chain(part.iter().copied())).collect()
}

#[test]
fn no_public_call_stores_code_that_a_module_load_serves() {
    // Module 666's compiled code, planted through every public call that
    // writes, under every key a caller can make from the victim's artifact
    // key's parts: the victim's load must still compile its own bytes.
    let t = TestCache::new();
    let cache = t.open();
    let engine = Engine::default();
    let victim = tiny_module(1);
    let planted = Module::new(&engine, tiny_module(666)).unwrap().serialize().unwrap();
    let compatibility = capcache::wasmtime::compatibility_digest(&engine);
    let digest = *blake3::hash(&victim).as_bytes();
    // The artifact key's parts as they were laid out, and as they are: with
    // and without a domain tag in front.
    let mut values = Vec::new();
    let tagged = |tag: &'static [u8]| -> Vec<&[u8]> { vec![tag, b"module", &compatibility, &digest] };
    let untagged: Vec<&[u8]> = vec![b"module", &compatibility, &digest];
    for parts in [tagged(b"capcache-artifact-v2"), tagged(b"capcache-artifact-v3"), untagged] {
        {
            let parts = &parts[..];
            let material = preimage(parts);
            // Each stored now, or by the worker if a maintenance pass holds
            // the policy: counted once flushed.
            cache.insert(&material, &planted);
            values.push(capcache::ValueKey::of(&material));
            cache.insert_by_key(&capcache::ValueKey::of_parts(parts), &planted);
            values.push(capcache::ValueKey::of_parts(parts));
            let deferred = planted.clone();
            cache.insert_deferred(&capcache::ValueKey::of_parts(&[&material, b"deferred"]), move || Some(deferred));
            let got = cache.get_or_insert_with(&preimage(&[&material, b"computed"]), || Ok::<_, ()>(planted.clone()));
            assert_eq!(got.unwrap().source, Source::Miss);
        }
    }
    cache.flush();
    let stored = values.iter().filter(|key| cache.get_by_key(key).as_deref() == Some(&planted[..])).count();
    assert_eq!(stored, 6, "the values themselves are stored, as values");
    assert_eq!(cache.stats().inserts, 12);
    let (module, source) = capcache::wasmtime::load_module_with_source(&cache, &engine, &victim).unwrap();
    assert_eq!((answer(&engine, &module), source), (1, Source::Miss));
    // And the module's own entry is the one its load stored.
    cache.flush();
    let name = capcache::wasmtime::artifact_name(&engine, Kind::Module, &victim);
    assert!(cache.entries().unwrap().iter().any(|e| e.name == name));
    let (module, source) = capcache::wasmtime::load_module_with_source(&cache, &engine, &victim).unwrap();
    assert_eq!((answer(&engine, &module), source), (1, Source::Hit));
}

#[test]
fn dropping_the_last_cache_on_its_own_worker_stores_the_pending_artifact() {
    // The module docs' pattern: the engine holds the cache (Cranelift's
    // incremental cache), so a deferred store, which holds the module, holds
    // the engine and the cache. When the caller lets go first, the worker
    // drops the last handle on the cache itself.
    let t = TestCache::new();
    let wasm = tiny_module(5);
    let host = capcache::HostSettings { event_deadline: Duration::from_millis(400), ..Default::default() };
    {
        let cache = Arc::new(t.builder().policy(guest_policy("hostile")).setting("mode", "loop-insert").host_settings(host).open().unwrap());
        let mut config = wasmtime::Config::new();
        capcache::incremental::enable(&mut config, cache.clone()).unwrap();
        let engine = Engine::new(&config).unwrap();
        // The worker is busy (the policy loops in on-insert until its deadline)
        // while the miss's store is queued behind it.
        assert!(cache.insert(b"busy", b"worker"));
        load_module(&cache, &engine, &wasm).unwrap();
    }
    let mut config = wasmtime::Config::new();
    capcache::incremental::enable(&mut config, Arc::new(capcache::Cache::disabled())).unwrap();
    let same_engine = Engine::new(&config).unwrap();
    let name = capcache::wasmtime::artifact_name(&same_engine, Kind::Module, &wasm);
    let stored = t.entries_dir().join(&name);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stored.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stored.exists(), "the pending artifact was lost");
    let cache = t.open();
    let (module, source) = capcache::wasmtime::load_module_with_source(&cache, &same_engine, &wasm).unwrap();
    assert_eq!((answer(&same_engine, &module), source), (5, Source::Hit));
}

#[test]
fn every_load_says_whether_it_hit() {
    let t = TestCache::new();
    let engine = Engine::default();
    let module_path: PathBuf = t.dir.path().join("m.wat");
    std::fs::write(&module_path, r#"(module (func (export "answer") (result i32) i32.const 8))"#).unwrap();
    let component = wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 7))
            (core instance $i (instantiate $m))
            (func (export "f") (result s32) (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let component_path = t.dir.path().join("c.wasm");
    std::fs::write(&component_path, &component).unwrap();
    let disabled = capcache::Cache::disabled();
    let cache = t.open();
    use capcache::wasmtime::{load_component_file_with_source, load_component_with_source};
    for (cache, expected) in [(&disabled, [Source::Uncached; 2]), (&cache, [Source::Miss, Source::Hit])] {
        for want in expected {
            assert_eq!(capcache::wasmtime::load_module_with_source(cache, &engine, &tiny_module(2)).unwrap().1, want);
            assert_eq!(load_module_file_with_source(cache, &engine, &module_path).unwrap().1, want);
            assert_eq!(load_component_with_source(cache, &engine, &component).unwrap().1, want);
            cache.flush();
        }
    }
    // The component file's artifact is the component's: already stored.
    assert_eq!(load_component_file_with_source(&cache, &engine, &component_path).unwrap().1, Source::Hit);
    cache.flush();
    assert_eq!(cache.entries().unwrap().len(), 3, "two modules and a component");
}

#[test]
fn an_os_error_is_said_once() {
    let err = capcache::Cache::builder().directory("/proc/capcache-cannot-be-here/x").open().unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(chain.matches("os error").count(), 1, "{chain}");
}

/// Runs `command` with `args` as the user `nobody`; whether it succeeded.
fn as_nobody(command: &str, args: &[&str]) -> bool {
    std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", command])
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

unix_only! { "needs Unix users: reads the cache as the user nobody (setpriv)",
#[test]
fn compiled_code_is_not_readable_by_other_users() {
    if !have_root("compiled_code_is_not_readable_by_other_users", "reads the cache as the user nobody") {
        return;
    }
    // A module its owner keeps private (0600), with a secret in its data, in
    // a directory others may traverse: compiled, its code must stay private.
    let t = TestCache::new();
    set_mode(t.dir.path(), 0o755);
    let secret = "capcache-secret-4c1d";
    let module = t.dir.path().join("app.wasm");
    let wasm = wat::parse_str(format!(r#"(module (memory 1) (data (i32.const 0) "{secret}"))"#)).unwrap();
    std::fs::write(&module, &wasm).unwrap();
    set_mode(&module, 0o600);
    let cache = t.builder().setting("raw-entries", "always").open().unwrap();
    load_module_file(&cache, &Engine::default(), &module).unwrap();
    cache.flush();
    let entry = t.entries_dir().join(capcache::wasmtime::artifact_name(&Engine::default(), Kind::Module, &wasm));
    assert!(std::fs::read(&entry).unwrap().windows(secret.len()).any(|w| w == secret.as_bytes()), "the test's premise");
    assert!(!as_nobody("cat", &[&module.display().to_string()]), "the module itself was readable: the test proves nothing");
    assert!(!as_nobody("cat", &[&entry.display().to_string()]), "another user read the compiled code");
    assert!(!as_nobody("ls", &[&t.root().display().to_string()]), "another user listed the cache");
}
}

unix_only! { "needs Unix users: gives a file to the user nobody (chown) or runs a child as nobody",
#[test]
fn a_cache_path_planted_as_another_users_symlink_is_not_followed() {
    if !have_root("a_cache_path_planted_as_another_users_symlink...", "gives a symbolic link to the user nobody") {
        return;
    }
    // /tmp-like: sticky and world-writable. Another user plants the path the
    // cache will be opened at, as a link to a directory of their choosing.
    let t = TestCache::new();
    let public = t.dir.path().join("tmp");
    std::fs::create_dir(&public).unwrap();
    set_mode(&public, 0o1777);
    let chosen = t.dir.path().join("chosen-by-them");
    std::fs::create_dir(&chosen).unwrap();
    let planted = public.join("capcache-demo");
    std::os::unix::fs::symlink(&chosen, &planted).unwrap();
    std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();
    let err = capcache::Cache::builder().directory(&planted).open().unwrap_err();
    assert!(matches!(err, capcache::Error::UntrustedSymlink { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link owned by user 65534, not by this process's user 0"), "{err}");
    assert_eq!(std::fs::read_dir(&chosen).unwrap().count(), 0, "something was created through the link");
    // The command line says why, and creates nothing either.
    let output = capcache(&["compile", "--dir", &planted.display().to_string(), "/nonexistent.wasm"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("symbolic link owned by user 65534"), "{output:?}");
    assert_eq!(std::fs::read_dir(&chosen).unwrap().count(), 0);
    // A link of one's own is followed.
    let mine = public.join("mine");
    std::os::unix::fs::symlink(&chosen, &mine).unwrap();
    drop(capcache::Cache::builder().directory(&mine).open().unwrap());
    assert!(chosen.join("default").is_dir());
}
}

// Windows: who may write is the access list's to say, and the same checks
// hold on it (see SECURITY.md, "Windows"; an entry is
// an_entry_that_others_can_write_is_never_served, above, on both).

/// Full control for Everyone (`WD`), nothing inherited: what a careless
/// `icacls /grant Everyone:F` leaves.
#[cfg(windows)]
const EVERYONE_MAY_WRITE: &str = "D:P(A;OICI;FA;;;WD)";

#[cfg(windows)]
#[test]
fn a_directory_whose_access_list_lets_everyone_write_is_refused_on_windows() {
    for area in ["", "default", "default/entries", "default/tmp"] {
        let t = TestCache::new();
        drop(t.open());
        set_access_list(&t.root().join(area), EVERYONE_MAY_WRITE);
        let err = t.builder().open().unwrap_err();
        assert!(matches!(err, capcache::Error::InsecureDirectory { .. }), "{area}: {err:?}");
        assert!(err.to_string().contains("writable by S-1-1-0") && err.to_string().contains("icacls"), "{area}: {err}");
        // Allowed on purpose, it opens.
        let cache = t.builder().allow_insecure_directory(true).open().unwrap();
        assert!(cache.insert(b"k", b"v"), "{area}");
    }
}

#[cfg(windows)]
#[test]
fn the_cache_root_is_private_to_its_owner_on_windows() {
    // Its parent lets everyone write, and what is made inside inherits that
    // unless the root stops it: the root's own access list must.
    let t = TestCache::new();
    let parent = t.dir.path().join("public");
    std::fs::create_dir(&parent).unwrap();
    set_access_list(&parent, EVERYONE_MAY_WRITE);
    let root = parent.join("cache");
    let cache = capcache::Cache::builder().directory(&root).open().unwrap();
    cache.insert(b"key", b"value");
    drop(cache);
    // No one else may read it (compiled code carries its module's data), let
    // alone write it: not Everyone, not Users, not Authenticated Users.
    let sddl = access_list_of(&root);
    for others in [";;;WD)", ";;;BU)", ";;;AU)"] {
        assert!(!sddl.contains(others), "the root lets others in: {sddl}");
    }
    // Opened again, every directory and entry passes the check (a file or
    // directory inheriting Everyone's write would be refused or not served).
    let cache = capcache::Cache::builder().directory(&root).open().unwrap();
    assert_eq!(cache.get(b"key").as_deref(), Some(&b"value"[..]));
    assert_eq!(cache.stats().untrusted, 0);
}

#[cfg(windows)]
#[test]
fn an_hmac_key_file_others_can_read_is_refused_on_windows() {
    let t = TestCache::new();
    let key_file = t.dir.path().join("hmac.key");
    std::fs::write(&key_file, "0123456789abcdef0123").unwrap();
    let text = format!("[cache.remote]\nurl = \"redis://127.0.0.1:1\"\nhmac-key-file = {:?}\n", key_file.display().to_string());
    let open = || capcache::CacheBuilder::from_config(&capcache::Config::parse(&text, "test").unwrap()).map(drop);
    set_access_list(&key_file, "D:P(A;;FA;;;OW)(A;;FA;;;SY)(A;;FR;;;WD)");
    let err = open().unwrap_err().to_string();
    assert!(err.contains("can be read or written by S-1-1-0") && err.contains("icacls"), "{err}");
    make_private(&key_file);
    open().unwrap();
}
