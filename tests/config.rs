//! Bad settings and bad policy components are errors that name what is wrong.


use capcache::{Error, Policy};
use crate::support::*;

#[test]
fn every_wasmtime_setting_is_accepted() {
    let t = TestCache::new();
    let settings = [
        ("baseline-compression-level", "5"),
        ("optimized-compression-level", "19"),
        ("optimized-compression-usage-counter-threshold", "100"),
        ("cleanup-interval", "30m"),
        ("optimizing-compression-task-timeout", "10m"),
        ("allowed-clock-drift-for-files-from-future", "2h"),
        ("file-count-soft-limit", "1000"),
        ("files-total-size-soft-limit", "1Gi"),
        ("file-count-limit-percent-if-deleting", "50%"),
        ("files-total-size-limit-percent-if-deleting", "60%"),
    ];
    let cache = t.builder().settings(settings).open().unwrap();
    cache.insert(b"k", b"v");
    assert_eq!(cache.entry_info(b"k").unwrap().codec, capcache::StoredCodec::Zstd { level: 5 });
}

#[test]
fn unknown_key() {
    let t = TestCache::new();
    let err = t.builder().setting("file-count-hard-limit", "5").open().unwrap_err();
    assert!(matches!(&err, Error::UnknownSetting { key, .. } if key == "file-count-hard-limit"), "{err:?}");
    assert!(err.to_string().contains("file-count-hard-limit"));
}

#[test]
fn bad_values_name_the_key_the_value_and_what_is_allowed() {
    let cases = [
        ("file-count-soft-limit", "lots", "whole number"),
        ("cleanup-interval", "1 fortnight", "duration"),
        ("files-total-size-soft-limit", "big", "size"),
        ("file-count-limit-percent-if-deleting", "170%", "percentage"),
        ("baseline-compression-level", "0", "zstd level"),
        ("optimized-compression-level", "23", "zstd level"),
        ("raw-entries", "sometimes", "\"hot\""),
        ("raw-entries-usage-threshold", "-1", "whole number"),
    ];
    for (key, value, expected) in cases {
        let t = TestCache::new();
        let err = t.builder().setting(key, value).open().unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidSetting { .. }), "{key}: {err:?}");
        for part in [key, value, expected] {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }
}

#[test]
fn baseline_above_optimized_is_refused() {
    let t = TestCache::new();
    let err = t.builder().setting("baseline-compression-level", "21").open().unwrap_err();
    assert!(err.to_string().contains("baseline-compression-level"), "{err}");
}

#[test]
fn missing_policy_file() {
    let err = Policy::from_file("/nonexistent/policy.wasm").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/policy.wasm"), "{err}");
}

#[test]
fn a_policy_file_changed_after_it_was_read_is_refused_rather_than_compiled_under_the_old_hash() {
    let t = TestCache::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.wasm");
    let default = Policy::default().bytes().unwrap();
    std::fs::write(&path, with_custom_section(&default, b"changed-file test, as read")).unwrap();
    let policy = Policy::from_file(&path).unwrap();
    std::fs::write(&path, with_custom_section(&default, b"changed-file test, as changed")).unwrap();
    let err = t.builder().policy(policy).open().unwrap_err();
    assert!(matches!(err, Error::PolicyFile { .. }), "{err:?}");
    let why = std::error::Error::source(&err).map(|e| e.to_string()).unwrap_or_default();
    assert!(err.to_string().contains("policy.wasm") && why.contains("changed after"), "{err}: {why}");
}

#[test]
fn a_policy_file_is_read_again_to_compile_it_and_runs() {
    let t = TestCache::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.wasm");
    std::fs::write(&path, with_custom_section(&Policy::default().bytes().unwrap(), b"read again test")).unwrap();
    let cache = t.builder().policy(Policy::from_file(&path).unwrap()).open().unwrap();
    cache.insert(b"k", b"v");
    assert_eq!(cache.get(b"k").as_deref(), Some(&b"v"[..]));
}

#[test]
fn compiled_policies_are_kept_within_their_byte_bound_newest_first() {
    let t = TestCache::new();
    let entries = t.root().join("policy-code/entries");
    std::fs::create_dir_all(&entries).unwrap();
    // Three older compiled policies of 150 MiB each (sparse), the oldest first.
    let planted: Vec<_> = (0..3)
        .map(|n| {
            let path = entries.join(format!("planted-{n}"));
            std::fs::File::create(&path).unwrap().set_len(150 << 20).unwrap();
            set_modified_ago(&path, std::time::Duration::from_secs(3600 * (3 - n)));
            path
        })
        .collect();
    let installed = Policy::default().install(t.root()).unwrap();
    assert!(installed.compiled_now && installed.path.exists(), "{installed:?}");
    // The new code and the newest planted one fit in 256 MiB; the other two go.
    let left: Vec<bool> = planted.iter().map(|p| p.exists()).collect();
    assert_eq!(left, [false, false, true]);
    let kept: u64 = std::fs::read_dir(&entries).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(kept <= capcache::POLICY_CODE_KEPT_BYTES, "{kept} bytes kept, over the bound");
}

#[test]
fn a_core_module_is_not_a_policy() {
    let t = TestCache::new();
    let err = t.builder().policy(Policy::from_bytes("core.wasm", tiny_module(1))).open().unwrap_err();
    assert!(matches!(err, Error::PolicyComponent { .. }), "{err:?}");
    assert!(err.to_string().contains("core.wasm"));
}

#[test]
fn a_component_of_another_contract_is_refused_by_name() {
    let t = TestCache::new();
    let newer = wat::parse_str(r#"(component (import "capcache:policy/view@0.4.0" (instance)))"#).unwrap();
    let err = t.builder().policy(Policy::from_bytes("v4.wasm", newer)).open().unwrap_err();
    assert!(matches!(err, Error::PolicyWorld { .. }), "{err:?}");
    assert!(err.to_string().contains("built for capcache:policy@0.4.0; this host speaks capcache:policy@0.3.0"), "{err}");

    // The default policy as contract 0.2.0 shipped it: a real component of
    // the previous contract is refused with both versions named.
    let older = Policy::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/default-policy-contract-0.2.0.wasm")).unwrap();
    let err = t.builder().policy(older).open().unwrap_err();
    assert!(err.to_string().contains("built for capcache:policy@0.2.0; this host speaks capcache:policy@0.3.0"), "{err}");

    let no_exports = wat::parse_str("(component)").unwrap();
    let err = t.builder().policy(Policy::from_bytes("empty.wasm", no_exports)).open().unwrap_err();
    assert!(matches!(err, Error::PolicyWorld { .. }), "{err:?}");
    assert!(err.to_string().contains("capcache:policy/policy"), "{err}");
}

#[test]
fn a_remote_section_is_read_and_a_bad_mode_or_key_file_is_named() {
    let config = capcache::Config::parse(
        "[cache.remote]\nurl = \"redis://127.0.0.1:1\"\nmode = \"read-only\"\ntimeout-ms = 500\n",
        "test",
    )
    .unwrap();
    let remote = config.cache.remote.first().unwrap();
    assert_eq!((remote.mode.as_deref(), remote.timeout_ms), (Some("read-only"), Some(500)));
    let err = capcache::Config::parse("[cache.remote]\nurl = \"redis://h:1\"\nmode = \"sometimes\"\n", "test").unwrap_err();
    assert!(err.to_string().contains("cache.remote.mode = \"sometimes\""), "{err}");
    let t = TestCache::new();
    let key_file = t.dir.path().join("short.key");
    std::fs::write(&key_file, "short").unwrap();
    make_private(&key_file);
    let text = format!("[cache.remote]\nurl = \"redis://h:1\"\nhmac-key-file = {:?}\n", key_file.display().to_string());
    let err = capcache::CacheBuilder::from_config(&capcache::Config::parse(&text, "test").unwrap()).unwrap_err();
    assert!(err.to_string().contains("use at least 16 random bytes"), "{err}");
    let err = t.builder().remote(capcache::RemoteSettings::new("http://not-redis")).open().unwrap_err();
    assert!(err.to_string().contains("not a usable Redis URL"), "{err}");
}

/// A shared tier's configuration for the command line: `url`, and a key
/// file holding `key` with `mode` if there is one.
#[cfg(unix)]
fn remote_config(t: &TestCache, url: &str, key: Option<(&str, u32)>) -> String {
    let mut text = format!("[cache.remote]\nurl = {url:?}\n");
    if let Some((key, mode)) = key {
        let path = t.dir.path().join("hmac.key");
        std::fs::write(&path, key).unwrap();
        set_mode(&path, mode);
        text.push_str(&format!("hmac-key-file = {:?}\n", path.display().to_string()));
    }
    let config = t.dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();
    config.display().to_string()
}

unix_only! { "Unix modes on the key file; the Windows counterpart, on access lists, is trust::an_hmac_key_file_others_can_read_is_refused_on_windows",
#[test]
fn weak_or_exposed_hmac_keys_are_refused_from_every_source_and_no_password_is_printed() {
    let t = TestCache::new();
    let root = t.root().display().to_string();
    let url = "redis://admin:SECRET-PASSWORD@127.0.0.1:1";
    let module = t.dir.path().join("m.wasm");
    std::fs::write(&module, tiny_module(1)).unwrap();
    let module = module.display().to_string();
    let run = |config: &str, env: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_capcache"));
        command.args(["compile", "--config", config, "--dir", &root, &module]).env_remove("CAPCACHE_REMOTE_HMAC_KEY");
        if let Some(key) = env {
            command.env("CAPCACHE_REMOTE_HMAC_KEY", key);
        }
        let output = command.output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr))
    };
    let strong = "0123456789abcdef0123";
    for (key, env, says) in [
        (Some(("short", 0o600)), None, "holds 5 bytes: use at least 16"),
        (Some((strong, 0o644)), None, "can be read or written by group or others (mode 644): run `chmod 600"),
        (Some((strong, 0o660)), None, "(mode 660)"),
        (None, Some(""), "CAPCACHE_REMOTE_HMAC_KEY holds 0 bytes"),
        (None, Some("x"), "CAPCACHE_REMOTE_HMAC_KEY holds 1 bytes"),
    ] {
        let config = remote_config(&t, url, key);
        let (ok, said) = run(&config, env);
        assert!(!ok && said.contains(says), "{key:?} {env:?}: {said}");
        assert!(!said.contains("SECRET-PASSWORD"), "the password was printed: {said}");
    }
    // A good key from either source is taken (the server is down: the
    // module compiles all the same).
    for (key, env) in [(Some((strong, 0o600)), None), (None, Some(strong))] {
        let (ok, said) = run(&remote_config(&t, url, key), env);
        assert!(ok, "{key:?} {env:?}: {said}");
        assert!(!said.contains("SECRET-PASSWORD"), "the password was printed: {said}");
    }
    // A timeout of 0 is refused when the configuration is read.
    let config = t.dir.path().join("zero.toml");
    std::fs::write(&config, format!("[cache.remote]\nurl = {url:?}\ntimeout-ms = 0\n")).unwrap();
    let (ok, said) = run(&config.display().to_string(), None);
    assert!(!ok && said.contains("timeout-ms = 0 would leave the tier unusable"), "{said}");
    // A password in a Unix socket URL's parameters is hidden too.
    let unix = "redis+unix:///nonexistent/redis.sock?db=0&pass=SECRET-PASSWORD";
    let output = capcache(&["remote", "check", "--dir", &root, "--remote", unix]);
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && said.contains("pass=***"), "{said}");
    assert!(!said.contains("SECRET-PASSWORD"), "the password was printed: {said}");
}
}
