//! A misbehaving policy, for the host's tests. The setting `mode` chooses the
//! misbehaviour; in every other respect it behaves (stores at zstd level 1,
//! or raw with the setting `raw` = `yes`).
//!
//! Modes: `loop-admit`, `loop-hit`, `loop-insert`, `loop-maintain` (spin
//! forever), `alloc-<export>` (allocate without bound in `configure`,
//! `admit`, `hit`, `insert` or `maintain`), `trap-all`
//! (trap on every call but `configure`), `garbage` (out-of-range levels and a
//! flood of actions), `huge-summary` (a 20 MiB maintenance report), `wasi`
//! (reach for files, environment and clocks through WASI, which is not
//! granted, during `maintain`), `escape` (try to name things outside its view during
//! `maintain`, and report each attempt's outcome in the summary, one
//! `call(name)=outcome` a line; the setting `targets` adds names to try),
//! `namespace` (report the view's namespace as the summary), `lock-then-trap`
//! (take the cleanup lock in `maintain`, then trap while holding it),
//! `terminal` (log a line and write a summary full of escape sequences and
//! line breaks), `refuse-and-linger` (admit nothing; in `maintain`, write the state file
//! `lingering`, then stay busy for `linger-ms`, default 500, by the view's
//! clock), `hoard-state` (in `maintain`, write state files of `state-bytes`
//! bytes each, default 1 MiB, until refused; then rewrite the first, and take
//! a lock; the summary says what happened, as `files=N bytes=N refused=..
//! rewrite=.. lock=..`), `slow-configure` (stay busy in `configure` for
//! `linger-ms` by the view's clock, then accept the settings). Only
//! `garbage` asks to share anything.

use capcache_policy::{Action, Admission, Candidate, Codec, EntryMeta, Lock, MaintainReport, Policy, Setting, SettingsError, view};
use std::sync::Mutex;

static MODE: Mutex<String> = Mutex::new(String::new());
/// Extra names for `escape` to try (setting `targets`, comma-separated): the
/// test plants symlinks under these names.
static TARGETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// How long `refuse-and-linger` stays in `maintain` (setting `linger-ms`).
static LINGER_MS: Mutex<u64> = Mutex::new(500);
/// The size of each file `hoard-state` writes (setting `state-bytes`).
static STATE_BYTES: Mutex<u64> = Mutex::new(1 << 20);
/// Whether it stores raw (setting `raw`).
static RAW: Mutex<bool> = Mutex::new(false);

fn mode() -> String {
    MODE.lock().unwrap().clone()
}

#[inline(never)]
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = core::hint::black_box(x.wrapping_add(1));
    }
}

#[inline(never)]
fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        block[0] = hoard.len() as u8;
        hoard.push(core::hint::black_box(block));
    }
}

fn misbehave(export: &str) {
    let mode = mode();
    if mode == "trap-all" {
        panic!("trap-all: {export}");
    }
    match mode.strip_prefix("loop-") {
        Some(e) if e == export => spin(),
        _ => {}
    }
    match mode.strip_prefix("alloc-") {
        Some(e) if e == export => hoard(),
        _ => {}
    }
}

/// Every way out of the view this policy can think of. Each outcome is written
/// as `what=ok` or `what=<error>` into the report, for the test to read.
fn try_escapes() -> String {
    let long = "a".repeat(5000);
    let names = [
        "../outside.txt",
        "../../outside.txt",
        "/etc/passwd",
        "/tmp/capcache-escape",
        "state/../../outside.txt",
        "nul\0byte",
        long.as_str(),
        "link-out",
        ".",
        "..",
        "",
    ];
    let targets = TARGETS.lock().unwrap().clone();
    let names = names.iter().copied().chain(targets.iter().map(String::as_str));
    let mut outcomes = Vec::new();
    let mut record = |what: String, result: Result<(), capcache_policy::Error>| {
        let outcome = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e:?}"),
        };
        outcomes.push(format!("{what}={outcome}"));
    };
    for name in names {
        let shown: String = name.chars().take(48).collect();
        // Reads first: a removal would take a planted link away.
        record(format!("read-entry({shown:?})"), view::read_entry(name, 0, 16).map(|_| ()));
        record(format!("stat-entry({shown:?})"), view::stat_entry(name).map(|_| ()));
        record(format!("read-state({shown:?})"), view::read_state(name).map(|_| ()));
        record(format!("write-state({shown:?})"), view::write_state(name, b"escaped"));
        record(format!("create-state({shown:?})"), view::create_state(name, b"escaped"));
        record(format!("remove-temp-file({shown:?})"), view::remove_temp_file(name));
        record(format!("remove-entry({shown:?})"), view::remove_entry(name));
        record(format!("take-lock({shown:?})"), Lock::take(name, 1).map(|_| ()));
    }
    outcomes.join("\n")
}

struct Hostile;

impl Policy for Hostile {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        capcache_policy::log_panics();
        for setting in settings {
            match setting.key.as_str() {
                "mode" => *MODE.lock().unwrap() = setting.value,
                "linger-ms" => *LINGER_MS.lock().unwrap() = setting.count()?,
                "state-bytes" => *STATE_BYTES.lock().unwrap() = setting.count()?,
                "raw" => *RAW.lock().unwrap() = setting.value == "yes",
                "targets" => {
                    *TARGETS.lock().unwrap() = setting.value.split(',').map(str::to_string).collect()
                }
                _ => return Err(setting.unknown()),
            }
        }
        if mode() == "loop-configure" {
            spin();
        }
        if mode() == "slow-configure" {
            let until = view::now() + *LINGER_MS.lock().unwrap();
            while view::now() < until {
                core::hint::spin_loop();
            }
        }
        if mode() == "alloc-configure" {
            hoard();
        }
        Ok(())
    }

    fn admit(_candidate: Candidate) -> Admission {
        misbehave("admit");
        if mode() == "refuse-and-linger" {
            return Admission::Skip;
        }
        if mode() == "garbage" {
            return Admission::Store(Codec::Zstd(255));
        }
        if *RAW.lock().unwrap() {
            return Admission::Store(Codec::Raw);
        }
        Admission::Store(Codec::Zstd(1))
    }

    fn on_hit(_entry: EntryMeta) -> Vec<Action> {
        misbehave("hit");
        if mode() == "garbage" {
            return vec![Action::Recode(Codec::Raw); 1_000_000];
        }
        Vec::new()
    }

    fn on_insert(_entry: EntryMeta) -> Vec<Action> {
        misbehave("insert");
        if mode() == "garbage" {
            return [vec![Action::Maintain; 100_000], vec![Action::Share; 100_000]].concat();
        }
        Vec::new()
    }

    fn maintain() -> MaintainReport {
        misbehave("maintain");
        match mode().as_str() {
            "escape" => return report(try_escapes()),
            "namespace" => return report(capcache_policy::namespace()),
            "lock-then-trap" => {
                let lock = Lock::take("cleanup.lock", 3_600_000);
                assert!(matches!(lock, Ok(Some(_))), "the lock was not free: {lock:?}");
                panic!("lock-then-trap: trapping while holding the lock");
            }
            "huge-summary" => return report("x".repeat(20 << 20)),
            "hoard-state" => return report(hoard_state()),
            "terminal" => {
                let forged = "pass done\r\n2026-01-01T00:00:00Z ERROR capcache: forged line\u{1b}]0;pwned\u{7}\u{1b}[31mred";
                capcache_policy::log(capcache_policy::LogLevel::Warn, forged);
                return report(forged.into());
            }
            "refuse-and-linger" => {
                let _ = view::write_state("lingering", b"in maintain");
                let until = view::now() + *LINGER_MS.lock().unwrap();
                while view::now() < until {
                    core::hint::spin_loop();
                }
                return report("lingered".into());
            }
            "wasi" => {
                // Each of these needs WASI, which the host links to traps.
                let _ = std::fs::write("/tmp/capcache-wasi-escape", b"escaped");
                let listing = std::fs::read_dir("/").map(|d| d.count()).unwrap_or(0);
                let home = std::env::var("HOME").unwrap_or_default();
                return report(format!("wasi worked: {listing} entries in /, HOME={home}"));
            }
            _ => {}
        }
        report(format!("hostile policy in mode {:?}: nothing done", mode()))
    }
}

/// Writes state files until the host refuses one (or 100,000 went in).
fn hoard_state() -> String {
    let contents = vec![b's'; *STATE_BYTES.lock().unwrap() as usize];
    let (mut files, mut refused) = (0u64, String::from("never"));
    while files < 100_000 {
        match view::write_state(&format!("hoard-{files}"), &contents) {
            Ok(()) => files += 1,
            Err(e) => {
                refused = format!("{e:?}");
                break;
            }
        }
    }
    let rewrite = view::write_state("hoard-0", &contents).map_err(|e| format!("{e:?}"));
    let lock = Lock::take("hoard.lock", 60_000).map(|l| l.is_some()).map_err(|e| format!("{e:?}"));
    format!("files={files} bytes={} refused={refused} rewrite={rewrite:?} lock={lock:?}", files * contents.len() as u64)
}

/// A report of a pass that "ran", saying `summary`.
fn report(summary: String) -> MaintainReport {
    MaintainReport { summary, ..MaintainReport::started() }
}

capcache_policy::export_policy!(Hostile);
