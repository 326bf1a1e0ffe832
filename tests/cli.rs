//! The `capcache` binary: run twice, the second run is all hits; the policy
//! is swapped by a path.

mod support;
use std::path::Path;
use std::process::{Command, Output};
use support::*;

fn capcache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capcache")).args(args).output().unwrap()
}

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
    assert_eq!(kinds(&stdout(&output)), ["miss"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("cache unavailable"));
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
