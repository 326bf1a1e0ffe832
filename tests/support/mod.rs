//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod misbehaving_server;
pub mod redis_server;
pub mod s3_server;

use capcache::{Cache, CacheBuilder, ManualClock, Policy};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A policy component built from `guest/<crate>`.
pub fn guest_policy(crate_name: &str) -> Policy {
    Policy::from_file(guest_path(crate_name)).expect("the guest policies were just built")
}

/// The `.wasm` of `guest/<crate>`, built for the tests (once per test
/// process; cargo makes concurrent builds wait for each other).
pub fn guest_path(crate_name: &str) -> PathBuf {
    let file = format!("capcache_policy_{}.wasm", crate_name.replace('-', "_"));
    guest_dir().join(file)
}

/// Builds the guest workspace for wasm32-wasip2, as `guest/build` does, and
/// returns the directory that holds the components. `CAPCACHE_TEST_GUEST_DIR`
/// names one built beforehand instead: a test binary built for Windows and
/// run under Wine has no cargo to call (.ci/platforms points it at the Linux tests' build).
fn guest_dir() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        if let Some(built) = std::env::var_os("CAPCACHE_TEST_GUEST_DIR") {
            return PathBuf::from(built);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|dir| if dir.is_absolute() { dir } else { root.join(dir) })
            .unwrap_or_else(|| root.join("target"))
            .join("guest");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("guest/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            // The test build's flags are for the host, not for wasm.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .status()
            .expect("cannot run cargo to build the guest policies");
        assert!(status.success(), "building guest/ failed (is the target installed? `rustup target add wasm32-wasip2`)");
        target.join("wasm32-wasip2/release")
    })
}

/// A cache in a fresh temporary directory, on a manual clock.
pub struct TestCache {
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
}

impl TestCache {
    pub fn new() -> Self {
        // `CAPCACHE_LOG=debug cargo test ...` shows what the cache and the
        // policy did, as the command line's does.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("CAPCACHE_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
        }
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

/// A test that needs what only Unix has (users and modes, FIFOs, `/proc`,
/// signals, symbolic links anyone may make): on Unix, the test itself;
/// elsewhere a test of the same name, ignored with `$why`, so that every
/// test a Windows run cannot do is listed there with its reason.
macro_rules! unix_only {
    ($why:literal, $(#[$attr:meta])* fn $name:ident() $body:block) => {
        #[cfg(unix)]
        $(#[$attr])*
        fn $name() $body

        #[cfg(not(unix))]
        #[test]
        #[ignore = $why]
        fn $name() {}
    };
}

/// Whether this test can do what needs root (chown, mount, other users).
/// Under CI, which runs as root, a test that needs root must run: not being
/// root there is a failure. Elsewhere the test says why it does nothing.
#[cfg(unix)]
pub fn have_root(test: &str, why: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip(test, &format!("needs root ({why})"), "CI runs as root");
    false
}

/// Says that `test` cannot run here, and why, where no one can miss it:
/// straight to the terminal, past the test harness's capture of its output,
/// so the line stands among the results of `cargo test` although the test
/// reports `ok`. Under CI (`CI` set), where everything a test needs is
/// installed (`ci_has`), a skip is a failure instead.
pub fn skip(test: &str, why: &str, ci_has: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run: {why}; under CI it must ({ci_has})");
    }
    use std::io::Write;
    let line = format!("\n*** SKIPPED {test}: {why} ***\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Makes an entry file (created read-only, 0444) writable by its owner, as
/// the owner must before damaging it in place; root needs no such step.
pub fn make_writable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Windows: entries are not made read-only (that would stop their
    // removal), so there is nothing to undo.
    #[cfg(not(unix))]
    let _ = path;
}

/// Writes `bytes` over an entry file in place, as a careless tool would.
pub fn overwrite_entry(path: &Path, bytes: &[u8]) {
    make_writable(path);
    std::fs::write(path, bytes).unwrap();
}

/// Sets a file's modification time `ago` in the past (its change time, which
/// no one can set, becomes now).
pub fn set_modified_ago(path: &Path, ago: std::time::Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - ago).unwrap();
}

/// What tells one file from another at the same path: its inode on Unix,
/// its creation time on Windows (std does not give the file index).
pub fn file_id(path: &Path) -> u128 {
    let metadata = std::fs::metadata(path).unwrap();
    #[cfg(unix)]
    return u128::from(std::os::unix::fs::MetadataExt::ino(&metadata));
    #[cfg(not(unix))]
    return metadata.created().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
}

/// Makes a file readable by its owner alone, as a secret's must be: mode
/// 0600 on Unix; on Windows an access list of the owner and the system.
pub fn make_private(path: &Path) {
    #[cfg(unix)]
    set_mode(path, 0o600);
    #[cfg(windows)]
    set_access_list(path, "D:P(A;;FA;;;OW)(A;;FA;;;SY)");
}

/// A file's mode bits.
#[cfg(unix)]
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Sets a file's mode bits.
#[cfg(unix)]
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A filesystem with whole-second timestamps (ext4 with 128-byte inodes),
/// loop-mounted in a temporary directory for the test's life.
#[cfg(unix)]
pub struct CoarseTimestampFs {
    dir: tempfile::TempDir,
}

#[cfg(unix)]
impl CoarseTimestampFs {
    pub fn mount() -> CoarseTimestampFs {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        std::fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
        let made = Command::new("mkfs.ext4").args(["-q", "-F", "-I", "128"]).arg(&image).output().unwrap();
        assert!(made.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&made.stderr));
        let mounted = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mountpoint).output().unwrap();
        assert!(mounted.status.success(), "mount: {}", String::from_utf8_lossy(&mounted.stderr));
        CoarseTimestampFs { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

#[cfg(unix)]
impl Drop for CoarseTimestampFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.path()).status();
    }
}

/// The `answer` export of a module built by [`tiny_module`], instantiated
/// and called.
pub fn answer(engine: &wasmtime::Engine, module: &wasmtime::Module) -> i32 {
    let mut store = wasmtime::Store::new(engine, ());
    let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
    instance.get_typed_func::<(), i32>(&mut store, "answer").unwrap().call(&mut store, ()).unwrap()
}

/// Runs the `capcache` command to its end.
pub fn capcache(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_capcache")).args(args).output().unwrap()
}

/// `wasm` (a module or component) with a custom section `capcache-test`
/// holding `payload` appended: the same code under other bytes, and so
/// another digest.
pub fn with_custom_section(wasm: &[u8], payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let name = b"capcache-test";
    let mut section = Vec::new();
    leb(name.len(), &mut section);
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    let mut bytes = wasm.to_vec();
    bytes.push(0);
    leb(section.len(), &mut bytes);
    bytes.extend_from_slice(&section);
    bytes
}

/// Whether the caller, the test at `test` (its path in this binary, e.g.
/// `remote::a_huge_value...`), is to do its work here. The first call, in
/// the shared test process, runs that test again alone in a process of its
/// own, checks that it passed, and returns `false`; in that process it
/// returns `true`. For measures of the whole process, such as its peak
/// memory, that the other tests' threads must not blur.
pub fn in_a_process_of_its_own(test: &str) -> bool {
    const ALONE: &str = "CAPCACHE_TEST_ALONE";
    if std::env::var(ALONE).as_deref() == Ok(test) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, test)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("1 passed"), "{test}, alone in its process, failed:\n{stdout}\n{stderr}");
    // What the child could not run is said here too, where the user sees it.
    for line in stderr.lines().filter(|l| l.contains("*** SKIPPED")) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "\n{line}");
    }
    false
}

/// This process's peak memory, in bytes: its peak working set on Windows.
#[cfg(windows)]
pub fn peak_rss() -> u64 {
    use windows_sys::Win32::System::ProcessStatus::{GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
    use windows_sys::Win32::System::Threading::GetCurrentProcess;
    // Safety: a plain structure the call fills in, of the size it is told.
    let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    // Safety: the pseudo-handle of this process, and the structure above.
    assert_ne!(unsafe { GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, size) }, 0);
    counters.PeakWorkingSetSize as u64
}

/// This process's peak resident set size, in bytes (`VmHWM`).
#[cfg(unix)]
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Replaces the access list of `path` (a file or a directory) with the one
/// `sddl` describes (for example `D:P(A;;FA;;;WD)`: full control for
/// Everyone, nothing inherited), as `icacls` would.
#[cfg(windows)]
pub fn set_access_list(path: &Path, sddl: &str) {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1};
    use windows_sys::Win32::Security::{DACL_SECURITY_INFORMATION, SetFileSecurityW};
    let sddl: Vec<u16> = sddl.encode_utf16().chain([0]).collect();
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
    let mut descriptor = std::ptr::null_mut();
    // Safety: NUL-terminated strings; the descriptor the call allocates is
    // freed once, after the call that reads it.
    unsafe {
        let made = ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl.as_ptr(), SDDL_REVISION_1, &mut descriptor, std::ptr::null_mut());
        assert_ne!(made, 0, "{}", std::io::Error::last_os_error());
        let set = SetFileSecurityW(wide.as_ptr(), DACL_SECURITY_INFORMATION, descriptor);
        let error = std::io::Error::last_os_error();
        LocalFree(descriptor);
        assert_ne!(set, 0, "cannot set the access list of {}: {error}", path.display());
    }
}

/// Whether this is a Windows build running under Wine (whose ntdll exports
/// `wine_get_version`): what Wine cannot do (map a file read-only) is done
/// another way there, and said.
pub fn under_wine() -> bool {
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
        // Safety: NUL-terminated names; ntdll is loaded in every process.
        unsafe {
            let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
            !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }
    #[cfg(not(windows))]
    false
}

/// The access list of `path` (a file or a directory) in SDDL, such as
/// `D:P(A;OICI;FA;;;SY)...`: to check who it lets in.
#[cfg(windows)]
pub fn access_list_of(path: &Path) -> String {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::{ERROR_SUCCESS, LocalFree};
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, GetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT,
    };
    use windows_sys::Win32::Security::DACL_SECURITY_INFORMATION;
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
    use std::ptr::null_mut;
    let (mut descriptor, mut text) = (null_mut(), null_mut());
    // Safety: a NUL-terminated path and out-pointers; the descriptor and the
    // string the calls allocate are freed once, after their last use.
    unsafe {
        let error = GetNamedSecurityInfoW(wide.as_ptr(), SE_FILE_OBJECT, DACL_SECURITY_INFORMATION, null_mut(), null_mut(), null_mut(), null_mut(), &mut descriptor);
        assert_eq!(error, ERROR_SUCCESS, "cannot read the access list of {}", path.display());
        let made = ConvertSecurityDescriptorToStringSecurityDescriptorW(descriptor, SDDL_REVISION_1, DACL_SECURITY_INFORMATION, &mut text, null_mut());
        assert_ne!(made, 0, "{}", std::io::Error::last_os_error());
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        let sddl = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
        LocalFree(text.cast());
        LocalFree(descriptor);
        sddl
    }
}
