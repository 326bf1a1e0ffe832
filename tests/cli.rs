//! The `capcache` binary: run twice, the second run is all hits; the policy
//! is swapped by a path.
// What only the Unix-only tests use.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]


use std::path::Path;
use std::process::{Command, Output};
use crate::support::*;

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn kinds(out: &str) -> Vec<&str> {
    out.lines().map(|l| l.split_whitespace().next().unwrap()).collect()
}

fn modules(dir: &Path) -> Vec<String> {
    (0..3)
        .map(|n| {
            let path = dir.join(format!("m{n}.wasm"));
            std::fs::write(&path, tiny_module(n)).unwrap();
            path.display().to_string()
        })
        .collect()
}

#[test]
fn compile_twice_second_run_all_hits() {
    let t = TestCache::new();
    let modules = modules(t.dir.path());
    let root = t.root().display().to_string();
    let mut args = vec!["compile", "--dir", root.as_str()];
    args.extend(modules.iter().map(String::as_str));
    assert_eq!(kinds(&stdout(&capcache(&args))), ["miss"; 3]);
    assert_eq!(kinds(&stdout(&capcache(&args))), ["hit"; 3]);
}

#[test]
fn compile_with_another_policy_from_a_path() {
    let t = TestCache::new();
    let modules = modules(t.dir.path());
    let root = t.root().display().to_string();
    let policy = guest_path("keep-nothing").display().to_string();
    let mut args = vec!["compile", "--dir", root.as_str(), "--policy", policy.as_str()];
    args.extend(modules.iter().map(String::as_str));
    assert_eq!(kinds(&stdout(&capcache(&args))), ["miss"; 3]);
    assert_eq!(kinds(&stdout(&capcache(&args))), ["miss"; 3]);
}

#[test]
fn bad_setting_fails_with_its_name() {
    let t = TestCache::new();
    let modules = modules(t.dir.path());
    let root = t.root().display().to_string();
    let output = capcache(&["compile", "--dir", root.as_str(), "--set", "cleanup-interval=soon", modules[0].as_str()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cleanup-interval") && stderr.contains("soon"), "{stderr}");
}

#[test]
fn an_unusable_directory_only_costs_the_cache() {
    let t = TestCache::new();
    let modules = modules(t.dir.path());
    std::fs::write(t.root(), b"a file, not a directory").unwrap();
    let root = t.root().display().to_string();
    let output = capcache(&["compile", "--dir", root.as_str(), modules[0].as_str()]);
    assert_eq!(kinds(&stdout(&output)), ["uncached"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cache unavailable") && stderr.contains("is not a directory"), "{stderr}");
}

#[test]
fn config_file_is_read_and_its_errors_name_the_key() {
    let t = TestCache::new();
    let modules = modules(t.dir.path());
    let config = t.dir.path().join("config.toml");
    std::fs::write(&config, format!("[cache]\ndirectory = {:?}\n[cache.policy-settings]\ncleanup-interval = \"30m\"\n", t.root())).unwrap();
    let config_arg = config.display().to_string();
    let args = ["compile", "--config", config_arg.as_str(), modules[0].as_str()];
    assert_eq!(kinds(&stdout(&capcache(&args))), ["miss"]);
    assert_eq!(kinds(&stdout(&capcache(&args))), ["hit"]);
    assert!(t.root().is_dir(), "the configured directory was not used");

    std::fs::write(&config, "[cache]\nfile-count-soft-limit = 5\n").unwrap();
    let output = capcache(&args);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("file-count-soft-limit") && stderr.contains("policy-settings"), "{stderr}");
}

/// Compiles the three modules into a cache under `t`, twice; returns the
/// `--dir` argument.
fn populated(t: &TestCache) -> String {
    let modules = modules(t.dir.path());
    let root = t.root().display().to_string();
    let mut args = vec!["compile", "--dir", root.as_str()];
    args.extend(modules.iter().map(String::as_str));
    stdout(&capcache(&args));
    stdout(&capcache(&args));
    root
}

#[test]
fn stats_add_up_over_processes_and_zero() {
    let t = TestCache::new();
    let root = populated(&t);
    let out = stdout(&capcache(&["stats", "--dir", &root]));
    assert!(out.contains("hits            3"), "{out}");
    assert!(out.contains("misses          3"), "{out}");
    assert!(out.contains("hit rate        50.0 %"), "{out}");
    assert!(out.contains("entries         3"), "{out}");
    let json = stdout(&capcache(&["stats", "--dir", &root, "--json"]));
    assert!(json.contains("\"hits\": 3") && json.contains("\"entries\": 3"), "{json}");
    stdout(&capcache(&["stats", "--dir", &root, "--zero"]));
    let out = stdout(&capcache(&["stats", "--dir", &root]));
    assert!(out.contains("hits            0") && out.contains("entries         3"), "{out}");
}

#[test]
fn ls_lists_each_entry() {
    let t = TestCache::new();
    let root = populated(&t);
    let out = stdout(&capcache(&["ls", "--dir", &root, "--sort", "hits"]));
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{out}");
    for row in rows {
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[0].len(), 43, "{row}");
        assert_eq!(columns[3], "zstd:3", "{row}");
        assert_eq!(columns[5], "1", "{row}");
        // What the miss's compile took, as measured: some time, under a minute.
        let compile_ms: f64 = columns[6].strip_suffix("ms").and_then(|ms| ms.parse().ok()).unwrap_or_else(|| panic!("{row}"));
        assert!(compile_ms > 0.0 && compile_ms < 60_000.0, "{row}");
    }
}

#[test]
fn verify_finds_bad_entries_and_fix_removes_them() {
    let t = TestCache::new();
    let root = populated(&t);
    assert!(stdout(&capcache(&["verify", "--dir", &root])).contains("3 entries checked, 0 bad"));
    let entries = Path::new(&root).join("default/entries");
    let victim = std::fs::read_dir(&entries).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    make_writable(&victim);
    std::fs::write(&victim, bytes).unwrap();
    let output = capcache(&["verify", "--dir", &root]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 bad, 0 removed"));
    assert!(stdout(&capcache(&["verify", "--dir", &root, "--fix"])).contains("1 bad, 1 removed"));
    assert!(!victim.exists());
    assert!(stdout(&capcache(&["verify", "--dir", &root])).contains("2 entries checked, 0 bad"));
}

#[test]
fn gc_and_clear() {
    let t = TestCache::new();
    let root = populated(&t);
    assert!(stdout(&capcache(&["gc", "--dir", &root])).contains("3 entries seen"));
    assert!(stdout(&capcache(&["clear", "--dir", &root])).contains("3 entries removed"));
    assert!(stdout(&capcache(&["ls", "--dir", &root])).lines().count() == 1);
}

#[test]
fn policy_check() {
    let hostile = guest_path("hostile").display().to_string();
    let out = stdout(&capcache(&["policy", "check", &hostile, "--set", "mode=garbage"]));
    assert!(out.contains("matches") && out.contains("import   capcache:policy/view@0.3.0"), "{out}");
    assert!(out.contains("export   capcache:policy/policy@0.3.0") && out.contains("configure: ok"), "{out}");

    let output = capcache(&["policy", "check", "default", "--set", "cleanup-interval=never"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cleanup-interval"));

    let t = TestCache::new();
    let core = t.dir.path().join("core.wasm");
    std::fs::write(&core, tiny_module(1)).unwrap();
    let output = capcache(&["policy", "check", &core.display().to_string()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a core module, not a component: a policy must be a component"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn run_a_wasi_command_twice_second_start_is_a_hit() {
    let t = TestCache::new();
    let program = t.dir.path().join("hello.wat");
    std::fs::write(
        &program,
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "hello from wasi\n")
            (func (export "_start")
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 16))
              (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
              (call $proc_exit (i32.const 3))))"#,
    )
    .unwrap();
    let root = t.root().display().to_string();
    let program = program.display().to_string();
    for _ in 0..2 {
        let output = capcache(&["run", "--dir", &root, &program, "--", "an", "argument"]);
        assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "hello from wasi\n");
    }
    let stats = stdout(&capcache(&["stats", "--dir", &root]));
    assert!(stats.contains("hits            1") && stats.contains("misses          1"), "{stats}");
}

#[test]
fn exit_codes_tell_the_commands_own_code_from_capcaches() {
    let t = TestCache::new();
    let root = t.root().display().to_string();
    // A command's own 1 and 2 are its own.
    for code in [1, 2, 100] {
        let program = t.dir.path().join(format!("exit{code}.wat"));
        std::fs::write(
            &program,
            format!(
                r#"(module
                    (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
                    (memory (export "memory") 1)
                    (func (export "_start") (call $proc_exit (i32.const {code}))))"#
            ),
        )
        .unwrap();
        let output = capcache(&["run", "--dir", &root, &program.display().to_string()]);
        assert_eq!(output.status.code(), Some(code), "{}", String::from_utf8_lossy(&output.stderr));
    }
    // capcache could not run it: 125, and says why.
    let output = capcache(&["run", "--dir", &root, "/nonexistent/app.wasm"]);
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/app.wasm"));
    // A wrong command line: 64, not 2 (which `verify` uses).
    let output = capcache(&["verify", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(64));
    assert_eq!(capcache(&["--help"]).status.code(), Some(0));
}

unix_only! { "needs Unix users: gives a file to the user nobody (chown) or runs a child as nobody",
#[test]
fn read_only_cache_directory_from_the_cli() {
    // A pre-populated cache, then served from a directory this user cannot
    // write: as `nobody` when root (root ignores permission bits).
    let t = TestCache::new();
    let modules = modules(t.dir.path());
    let root = t.root().display().to_string();
    let mut args = vec!["compile", "--dir", root.as_str()];
    args.extend(modules.iter().map(String::as_str));
    stdout(&capcache(&args));
    let before = snapshot(t.dir.path());
    let output = if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A cache root is private when made: its owner shares it on purpose.
        std::fs::set_permissions(t.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_capcache")).args(&args).uid(65534).gid(65534).output().unwrap()
    } else {
        Command::new("chmod").args(["-R", "a-w"]).arg(t.root()).status().unwrap();
        let output = capcache(&args);
        Command::new("chmod").args(["-R", "u+w"]).arg(t.root()).status().unwrap();
        output
    };
    assert_eq!(kinds(&stdout(&output)), ["hit"; 3]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot be written"));
    assert_eq!(snapshot(t.dir.path()), before, "the read-only run changed the cache");

    // A copy of the cache, as baked into an image, serves hits from its new
    // place, read-only on request.
    let copy = t.dir.path().join("baked");
    assert!(Command::new("cp").arg("-r").arg(t.root()).arg(&copy).status().unwrap().success());
    let copy_arg = copy.display().to_string();
    let mut args = vec!["compile", "--read-only", "--dir", copy_arg.as_str()];
    args.extend(modules.iter().map(String::as_str));
    let before = snapshot(&copy);
    assert_eq!(kinds(&stdout(&capcache(&args))), ["hit"; 3]);
    assert_eq!(snapshot(&copy), before);
}
}

#[test]
fn the_compiled_policy_is_kept_and_a_damaged_one_compiled_again() {
    let t = TestCache::new();
    let root = t.root().display().to_string();
    let code = t.root().join("policy-code/entries");
    let only_file = || {
        let files: Vec<_> = std::fs::read_dir(&code).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    };
    let modules = modules(t.dir.path());
    stdout(&capcache(&["compile", "--dir", &root, &modules[0]]));
    let stored = only_file();
    let inode = file_id(&stored);
    // The next process that starts the policy (gc does) loads it: it is
    // neither rewritten nor joined by another.
    stdout(&capcache(&["gc", "--dir", &root]));
    assert_eq!(file_id(&only_file()), inode);
    // Damaged in place: the next process notices, compiles and stores it anew.
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    make_writable(&stored);
    std::fs::write(&stored, &bytes).unwrap();
    stdout(&capcache(&["gc", "--dir", &root]));
    let again = std::fs::read(only_file()).unwrap();
    assert_ne!(again, bytes, "the damaged code was kept");
    assert_eq!(again.len(), bytes.len());
}

#[test]
fn policy_install_keeps_the_optimized_code_once_and_the_next_process_loads_it() {
    let t = TestCache::new();
    let root = t.root().display().to_string();
    let first = stdout(&capcache(&["policy", "install", "default", "--dir", &root]));
    assert!(first.contains("installed default: optimized code") && first.contains("policy-code"), "{first}");
    let code = t.root().join("policy-code/entries");
    let files: Vec<_> = std::fs::read_dir(&code).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let second = stdout(&capcache(&["policy", "install", "default", "--dir", &root]));
    assert!(second.contains("kept already"), "{second}");
    // A host process starting the policy there loads that code: nothing is
    // compiled or stored beside it.
    let modules = modules(t.dir.path());
    stdout(&capcache(&["compile", "--dir", &root, &modules[0]]));
    let after: Vec<_> = std::fs::read_dir(&code).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(after, files);
}

/// Starts capcache with its output piped to this test.
fn spawn_capcache(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_capcache"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs capcache, killing it if it has not finished within `limit`.
fn capcache_within(args: &[&str], limit: std::time::Duration) -> Output {
    let mut child = spawn_capcache(args);
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("capcache {args:?} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

unix_only! { "makes a FIFO and reads /dev/zero: Windows' file systems have neither",
#[test]
fn special_files_are_refused_at_once_with_what_they_are() {
    let t = TestCache::new();
    let root = t.root().display().to_string();
    let fifo = t.dir.path().join("x.wasm");
    // mkfifo(1): rustix has no mkfifoat on macOS.
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.display().to_string();
    for (path, what) in [("/dev/zero", "a character device, not a regular file"), (fifo.as_str(), "a FIFO, not a regular file")] {
        let output = capcache_within(&["compile", "--dir", &root, path], std::time::Duration::from_secs(30));
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(path) && stderr.contains(what), "{stderr}");
    }
    // Larger than the configured limit.
    let big = t.dir.path().join("big.wasm");
    std::fs::write(&big, vec![0; 4096]).unwrap();
    let config = t.dir.path().join("config.toml");
    std::fs::write(&config, "[cache.host]\nmax-module-size = 1000\n").unwrap();
    let output = capcache(&["compile", "--config", &config.display().to_string(), "--dir", &root, &big.display().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("4096 bytes, more than the limit of 1000"), "{stderr}");
}
}

#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let t = TestCache::new();
    // Enough entries that `ls` writes more than a pipe holds.
    let cache = t.open();
    for n in 0..3000u32 {
        cache.insert(&n.to_le_bytes(), b"v");
    }
    drop(cache);
    let root = t.root().display().to_string();
    {
        let args = ["ls", "--dir", &root];
        let whole = stdout(&capcache(&args));
        assert!(whole.len() > 256 << 10, "{} bytes: too few to fill the pipe", whole.len());
        let mut child = spawn_capcache(&args);
        // `| head -1`: read one line, then close the pipe.
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(!first.is_empty());
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{args:?}");
    }
    // Every other command that writes to standard output, into a pipe whose
    // reading end is closed before it starts (`| true`).
    let module = t.dir.path().join("m.wasm");
    std::fs::write(&module, tiny_module(1)).unwrap();
    let module = module.display().to_string();
    let commands: [&[&str]; 11] = [
        &["ls", "--dir", &root, "--sort", "size"],
        &["stats", "--dir", &root],
        &["stats", "--dir", &root, "--json"],
        &["verify", "--dir", &root],
        &["gc", "--dir", &root],
        &["compile", "--dir", &root, &module],
        &["compile", "--dir", &root, &module, "--direct-mode", "trust-file-identity"],
        &["policy", "check", "default"],
        &["policy", "test", "default", "--workload", "ops=200"],
        &["--help"],
        &["clear", "--dir", &root],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_capcache"))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{args:?}");
    }
}

#[test]
fn a_file_that_is_not_webassembly_gets_a_short_message() {
    let t = TestCache::new();
    let root = t.root().display().to_string();
    let huge_line = "x".repeat(20 << 20);
    for (name, says) in [("notes.wasm", "not a WebAssembly binary"), ("bad.wat", "not valid WebAssembly text")] {
        let path = t.dir.path().join(name);
        std::fs::write(&path, &huge_line).unwrap();
        let output = capcache(&["compile", "--dir", &root, &path.display().to_string()]);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.len() < 4096, "{name}: {} bytes of error", stderr.len());
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
}

#[test]
fn a_module_compiled_twice_in_direct_mode_is_one_entry() {
    let t = TestCache::new();
    let module = t.dir.path().join("m.wasm");
    std::fs::write(&module, tiny_module(1)).unwrap();
    // Old enough by both times to be recorded in a manifest.
    set_modified_ago(&module, std::time::Duration::from_secs(3600));
    std::thread::sleep(capcache::wasmtime::RECENT_CHANGE_WINDOW + std::time::Duration::from_millis(100));
    let root = t.root().display().to_string();
    let module = module.display().to_string();
    let direct = ["--direct-mode", "trust-file-identity"];
    assert_eq!(kinds(&stdout(&capcache(&["compile", "--dir", &root, &module]))), ["miss"]);
    // By default a file's bytes are hashed: no manifest.
    let manifests = t.root().join("default/manifests");
    assert_eq!(std::fs::read_dir(&manifests).unwrap().count(), 0, "a manifest was recorded without direct mode");
    assert_eq!(kinds(&stdout(&capcache(&[&["compile", "--dir", &root, &module][..], &direct].concat()))), ["hit"]);
    assert_eq!(std::fs::read_dir(&manifests).unwrap().count(), 1, "no manifest was recorded");
    let out = stdout(&capcache(&["stats", "--dir", &root]));
    assert!(out.contains("hits            1") && out.contains("misses          1"), "{out}");
    assert!(out.contains("entries         1"), "{out}");
    assert_eq!(stdout(&capcache(&["ls", "--dir", &root])).lines().count(), 2);
    assert!(stdout(&capcache(&["verify", "--dir", &root])).contains("1 entries checked, 0 bad"));
    // The artifact goes bad; `verify --fix` removes it and its manifest.
    let artifact = std::fs::read_dir(t.root().join("default/entries")).unwrap().next().unwrap().unwrap().path();
    make_writable(&artifact);
    std::fs::write(&artifact, b"garbage").unwrap();
    assert!(stdout(&capcache(&["verify", "--dir", &root, "--fix"])).contains("1 bad, 1 removed"));
    assert_eq!(std::fs::read_dir(&manifests).unwrap().count(), 0, "the manifest outlived its artifact");
}

#[test]
fn the_command_line_sees_and_acts_on_every_namespace_of_a_library_cache() {
    let t = TestCache::new();
    let engine = wasmtime::Engine::default();
    // What an embedder's README-style cache and a second tenant wrote.
    for (namespace, n) in [("default", 1), ("tenant-b", 2)] {
        let cache = capcache::Cache::builder().directory(t.root()).namespace(namespace).open().unwrap();
        capcache::wasmtime::load_module(&cache, &engine, &tiny_module(n)).unwrap();
    }
    let root = t.root().display().to_string();
    let out = stdout(&capcache(&["ls", "--dir", &root]));
    let namespaces: Vec<&str> = out.lines().skip(1).map(|l| l.split_whitespace().last().unwrap()).collect();
    assert_eq!(namespaces.len(), 2, "{out}");
    assert!(namespaces.contains(&"default") && namespaces.contains(&"tenant-b"), "{out}");
    let out = stdout(&capcache(&["ls", "--dir", &root, "--namespace", "tenant-b"]));
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = stdout(&capcache(&["stats", "--dir", &root]));
    assert!(out.contains("namespace       default") && out.contains("namespace       tenant-b"), "{out}");
    assert!(stdout(&capcache(&["verify", "--dir", &root])).contains("2 entries checked"));
    assert!(stdout(&capcache(&["clear", "--dir", &root])).contains("2 entries removed"));
    // `compile` stores where the library's default builder looks.
    let module = t.dir.path().join("m.wasm");
    std::fs::write(&module, tiny_module(1)).unwrap();
    stdout(&capcache(&["compile", "--dir", &root, &module.display().to_string()]));
    let cache = capcache::Cache::builder().directory(t.root()).open().unwrap();
    let (_, source) = capcache::wasmtime::load_module_with_source(&cache, &engine, &tiny_module(1)).unwrap();
    assert_eq!(source, capcache::Source::Hit);
}

#[test]
fn commands_that_look_never_create_a_cache() {
    let t = TestCache::new();
    let missing = t.dir.path().join("typo/cache");
    let dir = missing.display().to_string();
    for command in ["ls", "stats", "verify", "gc", "clear"] {
        let output = capcache(&[command, "--dir", &dir]);
        assert_eq!(output.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("no cache at {dir}")), "{command}: {stderr}");
        assert!(!t.dir.path().join("typo").exists(), "{command} created the directory");
    }
    // A namespace that is not there, in a cache that is.
    let root = populated(&t);
    let output = capcache(&["ls", "--dir", &root, "--namespace", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(!t.root().join("nope").exists());
}

#[test]
fn flags_are_offered_only_where_they_act() {
    let t = TestCache::new();
    let root = populated(&t);
    for (args, flag) in [
        (vec!["ls", "--no-cache"], "--no-cache"),
        (vec!["stats", "--read-only"], "--read-only"),
        (vec!["verify", "--policy", "default"], "--policy"),
        (vec!["clear", "--set", "a=b"], "--set"),
        (vec!["gc", "--no-cache"], "--no-cache"),
    ] {
        let mut args = args;
        args.extend(["--dir", root.as_str()]);
        let output = capcache(&args);
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("unexpected argument '{flag}'")), "{args:?}: {stderr}");
    }
    // `--policy default` names the embedded policy wherever --policy is offered.
    let module = t.dir.path().join("m0.wasm").display().to_string();
    assert_eq!(kinds(&stdout(&capcache(&["compile", "--dir", &root, "--policy", "default", &module]))), ["hit"]);
    assert!(stdout(&capcache(&["gc", "--dir", &root, "--policy", "default"])).contains("default: "));
}

#[test]
fn a_text_file_given_as_a_policy_is_named_for_what_it_is() {
    let t = TestCache::new();
    let text = t.dir.path().join("policy.wasm");
    std::fs::write(&text, "def admit(): pass\n").unwrap();
    let output = capcache(&["policy", "check", &text.display().to_string()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a WebAssembly binary") && stderr.contains("must be a component"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

unix_only! { "needs Unix users: gives a file to the user nobody (chown) or runs a child as nobody",
#[test]
fn clear_and_gc_on_a_cache_that_cannot_be_written_fail_and_say_why() {
    if !have_root("clear_and_gc_on_a_cache_that_cannot_be_written...", "runs the command as another user") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let t = TestCache::new();
    let root = populated(&t);
    set_mode(t.dir.path(), 0o755);
    // Private when made: its owner shares it on purpose.
    set_mode(&t.root(), 0o755);
    for command in ["clear", "gc"] {
        let output = Command::new(env!("CARGO_BIN_EXE_capcache")).args([command, "--dir", &root]).uid(65534).gid(65534).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("read-only"), "{command}: {stderr}");
    }
    assert!(stdout(&capcache(&["verify", "--dir", &root])).contains("3 entries checked, 0 bad"));
}
}

unix_only! { "needs Unix users: gives a file to the user nobody (chown) or runs a child as nobody",
#[test]
fn a_directory_that_cannot_be_created_costs_only_the_cache_and_says_why() {
    if !have_root("a_directory_that_cannot_be_created...", "runs the command as another user") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let t = TestCache::new();
    let modules = modules(t.dir.path());
    // The parent is root's and read-only for everyone else: `nobody` cannot
    // make the cache there.
    let parent = t.dir.path().join("locked");
    std::fs::create_dir(&parent).unwrap();
    set_mode(&parent, 0o555);
    set_mode(t.dir.path(), 0o755);
    let root = parent.join("cache").display().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_capcache"))
        .args(["compile", "--dir", &root, &modules[0]])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(kinds(&stdout(&output)), ["uncached"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot use cache directory {root}")) && stderr.contains("Permission denied"), "{stderr}");
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
    assert!(!parent.join("cache").exists());
}
}

#[cfg(windows)]
#[test]
fn windows_paths_are_taken_as_written_in_a_config_file_and_on_the_command_line() {
    let t = TestCache::new();
    let modules = modules(t.dir.path());
    let root = t.root().display().to_string();
    assert!(root.as_bytes().get(1) == Some(&b':') && root.contains('\\'), "not a drive-letter path: {root}");
    // A TOML literal string, as Windows users write paths: backslashes as
    // they are.
    let config = t.dir.path().join("config.toml");
    std::fs::write(&config, format!("[cache]\ndirectory = '{root}'\n")).unwrap();
    let config_arg = config.display().to_string();
    let args = ["compile", "--config", config_arg.as_str(), modules[0].as_str()];
    assert_eq!(kinds(&stdout(&capcache(&args))), ["miss"]);
    assert_eq!(kinds(&stdout(&capcache(&args))), ["hit"]);
    // The same directory named with forward slashes on the command line.
    let forward = root.replace('\\', "/");
    let listed = stdout(&capcache(&["ls", "--dir", &forward]));
    assert_eq!(listed.lines().skip(1).count(), 1, "{listed}");
}
