//! A file load serves the code of the bytes the file holds now, whatever its
//! identity says: by default the bytes are hashed on every load. The cases
//! below keep a file's identity (device, inode, size, times) while its bytes
//! change, which is what direct mode trusts, and why it is an opt-in.
// What only the Unix-only tests use.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]

use capcache::Source;
use capcache::wasmtime::{load_module_file, load_module_file_with_source};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use crate::support::*;
use wasmtime::Engine;

/// What `fstat` says of a file, all of which direct mode's manifests record.
#[cfg(unix)]
fn identity(path: &Path) -> (u64, u64, u64, i64, i64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

/// What std can say of a file's identity on Windows: its size and times (the
/// file index and change time take a handle's query, which direct mode makes).
#[cfg(windows)]
fn identity(path: &Path) -> (u64, std::time::SystemTime, std::time::SystemTime) {
    let m = std::fs::metadata(path).unwrap();
    (m.len(), m.modified().unwrap(), m.created().unwrap())
}

/// A WASI command that exits with `code` (one digit: every version is the same size).
fn exits_with(code: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 1)
             (func (export "_start") (call $exit (i32.const {code}))))"#
    ))
    .unwrap()
}

/// A file written through a shared writable mapping, as linkers and packers
/// write their output: the first write to a page dirties it and stamps the
/// file's times; later writes to the dirty page change neither time.
struct MappedFile {
    path: PathBuf,
    map: memmap2::MmapMut,
}

impl MappedFile {
    fn create(path: PathBuf, bytes: &[u8]) -> MappedFile {
        let file = std::fs::File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        file.set_len(bytes.len() as u64).unwrap();
        // SAFETY: the file is this test's own; nothing else maps or truncates it.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        map.copy_from_slice(bytes);
        MappedFile { path, map }
    }

    /// Writes `bytes` over the file through the mapping, and flushes them.
    fn patch(&mut self, bytes: &[u8]) {
        self.map.copy_from_slice(bytes);
        self.map.flush().unwrap();
    }

    /// Waits until the file's times are older than direct mode's window, so
    /// that direct mode would trust its identity.
    fn settle(&self) {
        std::thread::sleep(capcache::wasmtime::RECENT_CHANGE_WINDOW_COARSE + Duration::from_millis(200));
    }
}

#[test]
fn a_module_patched_through_a_shared_mapping_loads_as_its_new_bytes() {
    let t = TestCache::new();
    let cache = t.open();
    let engine = Engine::default();
    let (a, b) = (tiny_module(3), tiny_module(4));
    assert_eq!(a.len(), b.len());
    let mut file = MappedFile::create(t.dir.path().join("app.wasm"), &a);
    file.settle();
    let (module, source) = load_module_file_with_source(&cache, &engine, &file.path).unwrap();
    assert_eq!((answer(&engine, &module), source), (3, Source::Miss));
    cache.flush();
    assert_eq!(answer(&engine, &load_module_file(&cache, &engine, &file.path).unwrap()), 3);
    let before = identity(&file.path);
    file.patch(&b);
    assert_eq!(identity(&file.path), before, "the patch changed the file's identity: this test proves nothing here");
    let (module, source) = load_module_file_with_source(&cache, &engine, &file.path).unwrap();
    assert_eq!((answer(&engine, &module), source), (4, Source::Miss), "the old bytes' code was served for the new bytes");
    // The old version back: its code is still there, found by its bytes.
    file.patch(&a);
    let (module, source) = load_module_file_with_source(&cache, &engine, &file.path).unwrap();
    assert_eq!((answer(&engine, &module), source), (3, Source::Hit));
}

#[test]
fn capcache_run_runs_the_bytes_a_shared_mapping_patched_in() {
    let t = TestCache::new();
    let root = t.root().display().to_string();
    let mut file = MappedFile::create(t.dir.path().join("tool.wasm"), &exits_with(3));
    file.settle();
    let path = file.path.display().to_string();
    let run = || Command::new(env!("CARGO_BIN_EXE_capcache")).args(["run", "--dir", &root, &path]).status().unwrap().code();
    assert_eq!(run(), Some(3));
    assert_eq!(run(), Some(3), "the second run, a hit");
    let before = identity(&file.path);
    file.patch(&exits_with(4));
    assert_eq!(identity(&file.path), before, "the patch changed the file's identity: this test proves nothing here");
    assert_eq!(run(), Some(4), "capcache run ran the code of the bytes the file held before");
}

/// One loop device for the images, attached to each in turn: the device
/// number, and so the files' identity, is the same for both.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(image: &Path) -> LoopDevice {
        let out = Command::new("losetup").args(["--find", "--show"]).arg(image).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        LoopDevice(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }

    /// Detaches the device and attaches it again, to `image`.
    fn swap_to(&self, image: &Path) {
        run_ok(Command::new("losetup").args(["-d", &self.0]));
        // Another test may take the device meanwhile: then wait for it.
        for _ in 0..200 {
            if Command::new("losetup").arg(&self.0).arg(image).output().unwrap().status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} stayed busy", self.0);
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An ext4 image holding `app.wasm` = `wasm`, built by `mke2fs -d` as a
/// reproducible build would: every time pinned, the inode's generation too.
fn release_image(dir: &Path, name: &str, wasm: &[u8]) -> PathBuf {
    let content = dir.join(name);
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("app.wasm"), wasm).unwrap();
    let image = dir.join(format!("{name}.img"));
    run_ok(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-d"]).arg(&content).arg(&image).arg("4M").env("E2FSPROGS_FAKE_TIME", "1600000000"));
    let mut pins: Vec<String> =
        ["mtime", "ctime", "atime", "crtime"].iter().map(|f| format!("sif /app.wasm {f} 20200101000000")).collect();
    pins.extend(["mtime_extra", "ctime_extra", "atime_extra", "crtime_extra", "generation"].iter().map(|f| format!("sif /app.wasm {f} 0")));
    for pin in pins {
        run_ok(Command::new("debugfs").args(["-w", "-R", &pin]).arg(&image));
    }
    image
}

unix_only! { "attaches loop devices and mounts ext4 images: Linux's",
#[test]
fn two_release_images_mounted_in_turn_at_one_path_load_their_own_modules() {
    if !have_root("two_release_images_mounted_in_turn...", "attaches loop devices and mounts ext4 images") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (v1, v2) = (tiny_module(1), tiny_module(2));
    assert_eq!(v1.len(), v2.len());
    let images = [release_image(work.path(), "v1", &v1), release_image(work.path(), "v2", &v2)];
    let mountpoint = work.path().join("current");
    std::fs::create_dir(&mountpoint).unwrap();
    let app = mountpoint.join("app.wasm");
    let device = LoopDevice::attach(&images[0]);
    let t = TestCache::new();
    let cache = t.open();
    let engine = Engine::default();
    let mut identities = Vec::new();
    for (release, expected) in [(0, 1), (1, 2), (0, 1)] {
        if release != 0 || !identities.is_empty() {
            device.swap_to(&images[release]);
        }
        run_ok(Command::new("mount").args(["-o", "ro", &device.0]).arg(&mountpoint));
        identities.push(identity(&app));
        let loaded = load_module_file(&cache, &engine, &app).map(|m| answer(&engine, &m));
        run_ok(Command::new("umount").arg(&mountpoint));
        assert_eq!(loaded.unwrap(), expected, "release v{} ran another release's code", release + 1);
    }
    assert!(identities.windows(2).all(|w| w[0] == w[1]), "the images' files differ in identity: this test proves nothing here: {identities:?}");
}
}
