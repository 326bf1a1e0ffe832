//! Helpers shared by the integration tests.
#![allow(dead_code)]

use capcache::{Cache, CacheBuilder, ManualClock, Policy};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A policy component built from `guest/<crate>` by the host's build script.
pub fn guest_policy(crate_name: &str) -> Policy {
    Policy::from_file(guest_path(crate_name)).expect("the guest policies are built by host/build.rs")
}

pub fn guest_path(crate_name: &str) -> PathBuf {
    let file = format!("capcache_policy_{}.wasm", crate_name.replace('-', "_"));
    Path::new(env!("CAPCACHE_GUEST_DIR")).join(file)
}

/// A cache in a fresh temporary directory, on a manual clock.
pub struct TestCache {
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
}

impl TestCache {
    pub fn new() -> Self {
        TestCache { dir: tempfile::tempdir().unwrap(), clock: Arc::new(ManualClock::starting_now()) }
    }

    /// The cache root: `<dir>/cache`, so that `<dir>` holds things outside it.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn builder(&self) -> CacheBuilder {
        Cache::builder().directory(self.root()).clock(self.clock.clone())
    }

    pub fn open(&self) -> Cache {
        self.builder().open().expect("cache opens")
    }

    pub fn entries_dir(&self) -> PathBuf {
        self.root().join("default").join("entries")
    }

    pub fn entry_count(&self) -> usize {
        std::fs::read_dir(self.entries_dir()).unwrap().count()
    }
}

/// `n` bytes that zstd cannot shrink, different for each `seed`.
pub fn incompressible(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Every file under `root` (not following symlinks) with its contents, or
/// the link's target for a symlink: to prove that nothing changed there.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                files.insert(path, target.into_os_string().into_encoded_bytes());
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Everything under the test's directory outside the policy's view (the
/// namespace `default`): what no policy may change. (The host's own store of
/// compiled policies, `policy-code`, is left out: the host writes it when it
/// opens the cache, and no view reaches it.)
pub fn outside_view(t: &TestCache) -> BTreeMap<PathBuf, Vec<u8>> {
    let view = t.root().join("default");
    let code = t.root().join("policy-code");
    snapshot(t.dir.path()).into_iter().filter(|(p, _)| !p.starts_with(&view) && !p.starts_with(&code)).collect()
}

/// Plants files outside the view: beside the root, and in another namespace.
pub fn plant_outside(t: &TestCache) {
    std::fs::create_dir_all(t.root().join("other/entries")).unwrap();
    std::fs::write(t.dir.path().join("outside.txt"), b"precious").unwrap();
    std::fs::write(t.root().join("other/entries/theirs"), b"another engine's artifact").unwrap();
}

/// A small valid core module, different for each `n`.
pub fn tiny_module(n: u32) -> Vec<u8> {
    wat::parse_str(format!(r#"(module (func (export "answer") (result i32) i32.const {n}))"#)).unwrap()
}
