//! A policy can name only what lies in its view: `..`, absolute paths,
//! NUL, overlong names and symlinks that lead out are refused, and nothing
//! outside the cache root changes.
// What only the Unix-only tests use.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]


use std::path::Path;
use crate::support::*;


/// The outcome the hostile policy reported for `call(name)`: one a line, the
/// line breaks escaped (`\n`) as the host escapes every control character of
/// a policy's text.
fn outcome<'a>(summary: &'a str, call: &str, name: &str) -> &'a str {
    let prefix = format!("{call}({:?})=", name.chars().take(48).collect::<String>());
    summary
        .split("\\n")
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no outcome for {prefix} in:\n{summary}"))
}

unix_only! { "plants symbolic links (std::os::unix::fs::symlink); on Windows making one takes a privilege a test does not have",
#[test]
fn escapes_are_refused_and_nothing_outside_changes() {
    let t = TestCache::new();
    // Things outside the cache a policy might want to reach.
    std::fs::write(t.dir.path().join("outside.txt"), b"precious").unwrap();
    std::fs::create_dir_all(t.root()).unwrap();
    std::fs::write(t.root().join("outside.txt"), b"beside the namespace").unwrap();

    // Another namespace, with an entry the policy must not touch.
    let other = t.builder().namespace("other").open().unwrap();
    other.insert(b"theirs", b"another engine's artifact");
    let theirs = capcache::ValueKey::of(b"theirs").name();
    drop(other);
    // Open once with the default policy to lay out the namespace, then plant
    // symlinks that point out of it.
    drop(t.open());
    let ns = t.root().join("default");
    let outside = t.dir.path().join("outside.txt");
    let link_entry = capcache::ValueKey::of(b"absolute link").name();
    let relative_link_entry = capcache::ValueKey::of(b"relative link").name();
    std::os::unix::fs::symlink(&outside, ns.join("entries").join(&link_entry)).unwrap();
    std::os::unix::fs::symlink("../../../outside.txt", ns.join("entries").join(&relative_link_entry)).unwrap();
    std::os::unix::fs::symlink(&outside, ns.join("state").join("link-out")).unwrap();
    std::os::unix::fs::symlink("/etc", ns.join("state").join("etc-link")).unwrap();
    let before = outside_view(&t);

    let other_entry = format!("../../other/entries/{theirs}");
    let targets = format!("{link_entry},{relative_link_entry},etc-link,{other_entry}");
    let cache = t
        .builder()
        .policy(guest_policy("hostile"))
        .settings([("mode", "escape"), ("targets", targets.as_str())])
        .open()
        .unwrap();
    let report = cache.maintain().expect("the policy ran");
    let summary = report.summary;

    // Names that are not names: refused before any filesystem call.
    let long = "a".repeat(5000);
    for name in [other_entry.as_str(), "../outside.txt", "../../outside.txt", "/etc/passwd", "/tmp/capcache-escape", "state/../../outside.txt", "nul\0byte", long.as_str(), ".", "..", ""] {
        for call in ["remove-entry", "read-entry", "stat-entry", "read-state", "write-state", "create-state", "remove-temp-file", "take-lock"] {
            let got = outcome(&summary, call, name);
            assert!(got.starts_with("Error::InvalidName"), "{call}({name:?}) gave {got}");
        }
    }
    // Symlinks out of the view are not followed.
    for name in [&link_entry, &relative_link_entry] {
        assert_eq!(outcome(&summary, "read-entry", name), "Error::Denied");
        assert_eq!(outcome(&summary, "stat-entry", name), "Error::Denied");
    }
    assert_eq!(outcome(&summary, "read-state", "link-out"), "Error::Denied");
    assert_eq!(outcome(&summary, "read-state", "etc-link"), "Error::Denied");

    // And the proof: nothing outside the root changed (the links themselves
    // may have been removed or replaced: they are inside the view).
    assert_eq!(outside_view(&t), before);
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    assert!(!Path::new("/tmp/capcache-escape").exists());
    assert!(Path::new("/etc/passwd").exists());
}
}

unix_only! { "plants symbolic links (std::os::unix::fs::symlink); on Windows making one takes a privilege a test does not have",
#[test]
fn the_host_lists_no_symlink_as_an_entry() {
    let t = TestCache::new();
    std::fs::create_dir_all(t.root()).unwrap();
    std::fs::write(t.dir.path().join("outside.txt"), b"precious").unwrap();
    let cache = t.open();
    cache.insert(b"real", b"value");
    let link = capcache::ValueKey::of(b"link").name();
    std::os::unix::fs::symlink(t.dir.path().join("outside.txt"), t.entries_dir().join(&link)).unwrap();
    let report = cache.maintain().unwrap();
    assert_eq!(report.entries_seen, 1, "{}", report.summary);
    // Reading through the link is refused by construction, and counts as a
    // cache failure, not a hit.
    assert_eq!(cache.get(b"link"), None);
    let stats = cache.stats();
    assert_eq!((stats.failures, stats.hits, stats.misses), (1, 0, 1), "{stats:?}");
    assert_eq!(std::fs::read(t.dir.path().join("outside.txt")).unwrap(), b"precious");
}
}
