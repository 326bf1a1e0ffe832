//! The house's rules that a build does not check: the contract's version is
//! the same wherever it is written, and the host's modules import each other
//! without a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repository().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The contract's version, from its one source: the WIT package.
fn contract_version() -> String {
    let wit = read("wit/policy.wit");
    let line = wit.lines().find(|l| l.starts_with("package capcache:policy@")).expect("the WIT names its package");
    line.trim_start_matches("package capcache:policy@").trim_end_matches(';').to_string()
}

/// Every version written after `capcache:policy@` or
/// `capcache:policy/<interface>@` in `text`, with its line, except where the
/// text names a component built for another version ("built for
/// capcache:policy@0.1.0", the README's example of a refusal).
fn versions_named(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("capcache:policy") {
        let rest = &text[at + "capcache:policy".len()..];
        let after_interface = rest.strip_prefix('/').map(|r| r.trim_start_matches(|c: char| c.is_ascii_lowercase() || c == '-'));
        let Some(version) = after_interface.unwrap_or(rest).strip_prefix('@') else { continue };
        let version: String = version.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let before: Vec<&str> =
            text[..at].split_whitespace().rev().take(2).map(|w| w.trim_matches(|c: char| !c.is_alphanumeric())).collect();
        if before == ["for", "built"] {
            continue;
        }
        let line = text[..at].matches('\n').count() + 1;
        found.push((line, version.trim_end_matches('.').to_string()));
    }
    found
}

#[test]
fn the_contract_version_agrees_everywhere_it_is_written() {
    let version = contract_version();
    // Where the version is written as code, configuration or instructions.
    let files = [
        "host/src/bindings.rs",
        "guest/sdk/src/lib.rs",
        "guest/sdk/Cargo.toml",
        "guest/sdk/README.md",
        "guest/js/capcache-policy.js",
        "guest/build-languages",
        ".ci/run",
        "cli/templates/policy/Cargo.toml.in",
        "cli/templates/policy/README.md.in",
        "cli/templates/policy/README-js.md.in",
        "cli/templates/policy/README-python.md.in",
        "docs/writing-a-policy.md",
        "README.md",
    ];
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in files {
        let text = read(file);
        for (line, found) in versions_named(&text) {
            seen += 1;
            if found != version {
                wrong.push(format!("{file}:{line}: capcache:policy@{found}"));
            }
        }
        // The SDK's own version is the contract's.
        let constants: &[&str] = if file == "guest/sdk/Cargo.toml" { &["\nversion = \""] } else { &["CONTRACT_VERSION: &str = \""] };
        for constant in constants {
            if let Some(at) = text.find(constant) {
                let value: String = text[at + constant.len()..].chars().take_while(|c| *c != '"').collect();
                seen += 1;
                if value != version {
                    wrong.push(format!("{file}: {}{value}\"", constant.trim()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the WIT says capcache:policy@{version}; these say otherwise:\n{}", wrong.join("\n"));
    assert!(seen >= files.len(), "only {seen} mentions found: the scan itself is broken");
}

/// The arms of the `match unit.trim()` in function `name` of `file`: the
/// units a parser accepts and what each is worth, as written.
fn unit_table(file: &str, name: &str) -> Vec<String> {
    let text = read(file);
    let body = &text[text.find(&format!("fn {name}(")).unwrap_or_else(|| panic!("{file} has no {name}"))..];
    let table = &body[body.find("match unit.trim() {").unwrap_or_else(|| panic!("{file}: {name} does not trim the unit"))..];
    let table = &table[..table.find("_ => return None").expect("a refusal of other units")];
    table.lines().skip(1).map(|l| l.trim().to_string()).filter(|l| l.contains("=>")).collect()
}

#[test]
fn the_host_and_the_policy_sdk_parse_sizes_and_durations_alike() {
    // The simulator reads the same settings and expectations as policies do.
    for (host, sdk) in [("parse_size", "parse_size"), ("parse_duration", "parse_duration_ms")] {
        let ours = unit_table("host/src/simulate.rs", host);
        let theirs = unit_table("guest/sdk/src/settings.rs", sdk);
        assert!(ours.len() >= 5, "{host}: {ours:?}");
        assert_eq!(ours, theirs, "host {host} and SDK {sdk} accept different units");
    }
}

/// The host's modules (a directory counts as one module) and the modules of
/// the crate each one names in its code (comments left out).
fn host_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = repository().join("host/src");
    let mut imports = BTreeMap::<String, BTreeSet<String>>::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).unwrap() {
                files.push(inner.unwrap().path());
            }
        } else {
            files.push(path);
        }
    }
    for file in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "rs")) {
        let module = file.strip_prefix(&src).unwrap().components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let code = std::fs::read_to_string(&file).unwrap();
        let named = imports.entry(module.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !name.is_empty() && name != module {
                    named.insert(name);
                }
            }
        }
    }
    imports
}

#[test]
fn no_import_cycle_among_the_hosts_modules() {
    let imports = host_imports();
    assert!(imports.len() > 15 && imports["cache"].contains("store"), "the scan found too little: {imports:?}");
    // Depth-first, with the path so far: a module met again on its own path
    // closes a cycle.
    fn visit(module: &str, imports: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if let Some(at) = path.iter().position(|m| m == module) {
            panic!("an import cycle: {} -> {module}", path[at..].join(" -> "));
        }
        if done.contains(module) {
            return;
        }
        path.push(module.to_string());
        for next in imports.get(module).into_iter().flatten() {
            visit(next, imports, path, done);
        }
        path.pop();
        done.insert(module.to_string());
    }
    let mut done = BTreeSet::new();
    for module in imports.keys() {
        visit(module, &imports, &mut Vec::new(), &mut done);
    }
}
