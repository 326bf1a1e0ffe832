//! A dry run of a policy before it is deployed: the policy component runs, as
//! it would in a host (same sandbox, limits and deadlines, same `view`
//! implementation), against a simulated cache in memory, on a simulated clock.
//! No file is touched. `capcache policy test` is this module on the command
//! line; a policy's own Rust tests can drive it too:
//!
//! ```no_run
//! use capcache::{Policy, Simulation, Workload};
//! let policy = Policy::from_file("target/wasm32-wasip2/release/my_policy.wasm")?;
//! let mut sim = Simulation::new(&policy, [("max-size", "64Mi")])?;
//! sim.run(&Workload { operations: 10_000, ..Workload::default() });
//! let report = sim.report();
//! assert_eq!(report.faults, 0);
//! assert!(report.bytes_after_passes.iter().all(|&bytes| bytes <= 64 << 20));
//! # Ok::<(), capcache::Error>(())
//! ```
//!
//! What is simulated is the host's side of each event: a miss asks `admit`
//! and stores the value (with a modelled stored size, see
//! [`modelled_stored_size`]), then tells `on-insert`; a hit counts the hit and
//! tells `on-hit`; actions are carried out as the host carries them out (at
//! most one of each kind), and `maintain` runs when an event asks for it. No
//! event is dropped: a simulation shows what the policy decides, not what a
//! loaded host would skip.

use crate::bindings::capcache::policy::types::{EntryMeta, Error as WitError, FileMeta};
use crate::bindings::exports::capcache::policy::policy::{Action, Admission, Candidate};
use crate::bindings::{codec_from_wit, codec_to_wit};
use crate::cache::{EntryInfo, MaintainReport};
use crate::entry::StoredCodec;
use crate::error::Error;
use crate::key::{Key, KeyDomain};
use crate::policy::{Policy, PolicyRuntime};
use crate::settings::HostSettings;
use crate::stats::Stats;
use crate::store::Area;
use crate::view::{MAX_STATE_FILE, ViewBackend};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Raw sizes of real compiled artifacts (wasmtime 48, x86-64), large and
/// small, so that a policy's every branch is met by default: esbuild 0.28.2,
/// sql.js 1.16.0 and brotli-wasm 3.0.1, the default policy's component, and a
/// module of one function (as plugins and Cranelift's incremental cache
/// store them), measured with `capcache compile` and `capcache ls` (the
/// decoded size).
pub const REAL_ARTIFACT_SIZES: [u64; 5] = [31_320_432, 2_406_144, 1_858_632, 292_400, 13_608];

/// What compiling each of [`REAL_ARTIFACT_SIZES`]'s modules takes, in
/// microseconds, in the same order: the median of three misses of each on
/// 2 cores (wasmtime 48, Cranelift; `capcache compile` into an empty cache,
/// and `capcache policy install` for the component), 2026-12-02. A MiB of
/// artifact takes from 75 ms (the module of one function) to 194 ms
/// (sql.js) to make.
pub const REAL_ARTIFACT_COMPILE_US: [u64; 5] = [5_134_220, 445_880, 209_030, 50_000, 980];

/// Compile time per byte of artifact for sizes given without times
/// (`sizes=` alone): the median of the real artifacts' rates.
const COMPILE_US_PER_MIB: u64 = 172_000;

/// The size of an entry's header and trailer, in the model.
const MODELLED_FRAMING: u64 = 96;

/// What an entry of `raw_size` bytes takes on disk with `codec`, in the
/// model: raw as is; zstd at level 3 at 1/2.6 of the raw size (compiled
/// artifacts of the three workloads take 2.1 to 3.2 times the disk raw that
/// they take at level 3), each level above 3 saving 0.8 points more, each one
/// below costing 0.8 points.
pub fn modelled_stored_size(raw_size: u64, codec: StoredCodec) -> u64 {
    let ratio = match codec {
        StoredCodec::Raw => 1.0,
        StoredCodec::Zstd { level } => (1.0 / 2.6 - 0.008 * (level as f64 - 3.0)).clamp(0.1, 1.0),
    };
    (raw_size as f64 * ratio) as u64 + MODELLED_FRAMING
}

/// The traffic a simulation replays. Build it from [`Workload::default`]
/// with struct update syntax, or parse it from a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Loads to simulate, each a hit or a miss.
    pub operations: u64,
    /// Distinct modules loaded.
    pub modules: u64,
    /// How skewed the loads are: module `k` (from 1) is loaded with weight
    /// `1/k^skew` (a Zipf law): 0 is uniform, 1 is a few hot modules and a
    /// long cold tail.
    pub skew: f64,
    /// Simulated time between two loads.
    pub step: Duration,
    /// Every this many loads, a crash leaves a temporary file behind (0:
    /// never).
    pub crash_every: u64,
    /// Raw sizes the modules' artifacts are drawn from (each module picks one,
    /// then varies it by up to 20% either way).
    pub sizes: Vec<u64>,
    /// What compiling each of `sizes` takes, in microseconds (each module
    /// varies its own by up to 20% either way, independently of its size);
    /// empty: in proportion to the size, at the real artifacts' median rate.
    pub compile_us: Vec<u64>,
    /// Seed of the pseudo-random choices: the same seed, the same run.
    pub seed: u64,
}

impl Default for Workload {
    /// 100,000 loads of 2,000 modules, Zipf 1.0, one every second (28 simulated
    /// hours: past many cleanup intervals), a crash every 5,000 loads, sizes of
    /// real artifacts.
    fn default() -> Self {
        Workload {
            operations: 100_000,
            modules: 2_000,
            skew: 1.0,
            step: Duration::from_secs(1),
            crash_every: 5_000,
            sizes: REAL_ARTIFACT_SIZES.to_vec(),
            compile_us: REAL_ARTIFACT_COMPILE_US.to_vec(),
            seed: 1,
        }
    }
}

impl Workload {
    /// Each module of the workload, in order: its raw artifact size and the
    /// name of the entry the simulation stores it under, to follow one
    /// module through a policy's decisions.
    pub fn modules_simulated(&self) -> Vec<SimulatedModule> {
        let profiles = self.module_profiles(&mut fastrand::Rng::with_seed(self.seed));
        profiles
            .into_iter()
            .enumerate()
            .map(|(index, (raw_size, compile_us))| SimulatedModule {
                index: index as u64,
                raw_size,
                compile_us,
                entry_name: crate::key::ValueKey::of(&simulated_key_material(index as u64)).name(),
            })
            .collect()
    }

    /// Each module's raw size (from the first draws of `rng`) and compile
    /// time (from draws of its own, so that modelling times left every
    /// workload's sizes as they were).
    fn module_profiles(&self, rng: &mut fastrand::Rng) -> Vec<(u64, u64)> {
        let (sizes, times) = if self.sizes.is_empty() {
            (REAL_ARTIFACT_SIZES.to_vec(), REAL_ARTIFACT_COMPILE_US.to_vec())
        } else {
            (self.sizes.clone(), self.compile_us.clone())
        };
        let mut time_rng = fastrand::Rng::with_seed(self.seed ^ 0x636f_7374);
        (0..self.modules.max(1))
            .map(|_| {
                let pick = rng.usize(..sizes.len());
                let size = (sizes[pick] as f64 * (0.8 + 0.4 * rng.f64())) as u64;
                let base = times.get(pick).copied().unwrap_or_else(|| sizes[pick].saturating_mul(COMPILE_US_PER_MIB) >> 20);
                (size, (base as f64 * (0.8 + 0.4 * time_rng.f64())) as u64)
            })
            .collect()
    }
}

/// The key material a simulation loads module `index` under.
fn simulated_key_material(index: u64) -> Vec<u8> {
    [b"capcache-simulated-module".as_slice(), &index.to_le_bytes()].concat()
}

/// One module of a [`Workload`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SimulatedModule {
    /// Its place in the workload, from 0: module 0 is the hottest.
    pub index: u64,
    /// The raw size of its artifact.
    pub raw_size: u64,
    /// What compiling it takes, in microseconds: each miss's cost.
    pub compile_us: u64,
    /// The entry it is stored under.
    pub entry_name: String,
}

impl std::str::FromStr for Workload {
    type Err = String;

    /// `ops=100000,modules=2000,skew=1.0,step=1s,crash-every=5000,sizes=2Mi/30Mi,compile=400ms/5s,seed=1`;
    /// any subset, the rest as [`Workload::default`]. `sizes` without
    /// `compile` models compile times in proportion to size.
    fn from_str(spec: &str) -> Result<Workload, String> {
        let mut workload = Workload::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
            let bad = |what: &str| format!("{key}={value:?}: expected {what}");
            match key.trim() {
                "ops" | "operations" => workload.operations = value.parse().map_err(|_| bad("a whole number"))?,
                "modules" => {
                    workload.modules = value.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad("a whole number above 0"))?
                }
                "skew" => workload.skew = value.parse().ok().filter(|s: &f64| (0.0..=10.0).contains(s)).ok_or_else(|| bad("a number from 0 to 10"))?,
                "step" => workload.step = parse_duration(value).ok_or_else(|| bad("a duration such as 500ms, 1s, 5m"))?,
                "crash-every" => workload.crash_every = value.parse().map_err(|_| bad("a whole number (0: never)"))?,
                "sizes" => {
                    workload.sizes = value
                        .split('/')
                        .map(|s| parse_size(s).filter(|&n| n > 0))
                        .collect::<Option<Vec<u64>>>()
                        .ok_or_else(|| bad("sizes separated by '/', such as 2Mi/30Mi"))?;
                    if !spec.contains("compile=") {
                        workload.compile_us.clear();
                    }
                }
                "compile" => {
                    workload.compile_us = value
                        .split('/')
                        .map(|t| parse_duration(t).map(|d| d.as_micros() as u64))
                        .collect::<Option<Vec<u64>>>()
                        .ok_or_else(|| bad("durations separated by '/', such as 400ms/5s"))?
                }
                "seed" => workload.seed = value.parse().map_err(|_| bad("a whole number"))?,
                other => {
                    return Err(format!(
                        "unknown workload key {other:?}: expected ops, modules, skew, step, crash-every, sizes, compile or seed"
                    ));
                }
            }
        }
        workload.check()?;
        Ok(workload)
    }
}

fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    // As the policy SDK's `parse_duration_ms` (tests/structure.rs).
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(number.checked_mul(ms)?))
}

/// A size such as `512Mi`, `1G` or `4096`.
pub(crate) fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    // The units and rules of the policy SDK's `parse_size`, which reads the
    // same settings (tests/structure.rs holds the two to the same table).
    let multiplier: u64 = match unit.trim() {
        "" => 1,
        "K" => 1_000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        "T" => 1_000_000_000_000,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// A condition a simulation must meet (`capcache policy test --expect`),
/// parsed from `max-bytes=512Mi`, `max-entries=1000`, `min-hit-rate=80%` or
/// `max-temp-files=5`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Expectation {
    /// After every pass that ran (or at the end, if none ran), the entries
    /// take at most this many bytes.
    MaxBytes(u64),
    /// After every pass that ran (or at the end, if none ran), at most this
    /// many entries.
    MaxEntries(u64),
    /// At least this share of loads are hits (0 to 1).
    MinHitRate(f64),
    /// At most this share of loads are hits (0 to 1): for a policy that is
    /// meant to keep little or nothing.
    MaxHitRate(f64),
    /// Right after every pass that ran, no entry had gone unused for longer
    /// than this many milliseconds (a time to live). Fails if no pass ran.
    MaxIdle(u64),
    /// At most this many temporary files at the end.
    MaxTempFiles(u64),
    /// At no moment do the entries take more than this many bytes: a limit
    /// held between passes, not only by them.
    MaxPeakBytes(u64),
}

impl std::str::FromStr for Expectation {
    type Err = String;

    fn from_str(spec: &str) -> Result<Expectation, String> {
        let (key, value) = spec.split_once('=').ok_or_else(|| format!("{spec:?} is not KEY=VALUE"))?;
        let bad = |what: &str| format!("--expect {key}={value:?}: expected {what}");
        match key {
            "max-bytes" => Ok(Expectation::MaxBytes(parse_size(value).ok_or_else(|| bad("a size such as 512Mi"))?)),
            "max-entries" => Ok(Expectation::MaxEntries(value.parse().map_err(|_| bad("a whole number"))?)),
            "min-hit-rate" | "max-hit-rate" => {
                let percent: f64 = value
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| bad("a percentage such as 80%"))?;
                Ok(if key == "min-hit-rate" { Expectation::MinHitRate(percent / 100.0) } else { Expectation::MaxHitRate(percent / 100.0) })
            }
            "max-temp-files" => Ok(Expectation::MaxTempFiles(value.parse().map_err(|_| bad("a whole number"))?)),
            "max-peak-bytes" => Ok(Expectation::MaxPeakBytes(parse_size(value).ok_or_else(|| bad("a size such as 563Mi"))?)),
            "max-idle" => Ok(Expectation::MaxIdle(
                parse_duration(value).map(|d| d.as_millis() as u64).ok_or_else(|| bad("a duration such as 6h, 30m or 90s"))?,
            )),
            _ => Err(format!(
                "unknown expectation {key:?}: expected max-bytes, max-entries, min-hit-rate, max-hit-rate, max-temp-files or max-idle"
            )),
        }
    }
}

/// A byte count for people: `512.0 MiB`, or bytes below a MiB.
fn format_bytes(n: u64) -> String {
    if n >= 1 << 20 { format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64) } else { format!("{n} B") }
}

/// What one export cost, over a simulation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct CallTimes {
    /// Calls made.
    pub calls: u64,
    /// Median wall time of a call, in microseconds.
    pub p50_us: f64,
    /// 99th percentile, in microseconds.
    pub p99_us: f64,
    /// The slowest call, in microseconds.
    pub max_us: f64,
}

/// What a simulation saw the policy decide.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct SimulationReport {
    /// Loads simulated.
    pub operations: u64,
    /// Loads served from the cache.
    pub hits: u64,
    /// Loads that found nothing.
    pub misses: u64,
    /// What the misses cost to compute, in microseconds, summed: the time a
    /// host spent compiling what the cache did not have.
    pub compile_us_on_misses: u64,
    /// Entries the policy asked to upload to the shared tiers (`share`).
    pub shared: u64,
    /// Misses stored, by codec (`raw`, `zstd-3`, ...).
    pub admitted: BTreeMap<String, u64>,
    /// Misses the policy chose not to store.
    pub skipped: u64,
    /// Entries re-encoded at the policy's request, by the codec they got.
    pub recoded: BTreeMap<String, u64>,
    /// Entries the policy removed: through the view (evictions) or by an
    /// event's `remove` action.
    pub removed: u64,
    /// Maintenance passes that ran.
    pub passes: u64,
    /// Maintenance passes asked for that did not run (their summaries say
    /// why).
    pub passes_skipped: u64,
    /// Bytes the entries took on disk right after each pass that ran.
    pub bytes_after_passes: Vec<u64>,
    /// Entries right after each pass that ran.
    pub entries_after_passes: Vec<u64>,
    /// The longest any entry had gone unused, in milliseconds, right after
    /// each pass that ran.
    pub idle_after_passes: Vec<u64>,
    /// The last pass's summary, as the policy wrote it.
    pub last_summary: Option<String>,
    /// Temporary files crashes left.
    pub temp_files_left_by_crashes: u64,
    /// Temporary files still there at the end.
    pub temp_files_at_end: u64,
    /// Entries at the end.
    pub entries_at_end: u64,
    /// Bytes they take on disk, in the model.
    pub bytes_at_end: u64,
    /// The most bytes the entries took at any moment.
    pub peak_bytes: u64,
    /// The most entries at any moment.
    pub peak_entries: u64,
    /// Calls that trapped, ran out of time or memory: each used the safe
    /// default, as a host would.
    pub faults: u64,
    /// Of those, calls stopped at their deadline.
    pub deadline_hits: u64,
    /// The first faults: the export, and why.
    pub fault_reasons: Vec<(String, String)>,
    /// Per export: what a call cost.
    pub call_times: BTreeMap<String, CallTimes>,
    /// Simulated time covered, in milliseconds.
    pub simulated_ms: u64,
}

impl SimulationReport {
    /// Whether the run met `expectation`: `Ok` or `Err` with what was seen,
    /// in a line for people.
    pub fn meets(&self, expectation: &Expectation) -> Result<String, String> {
        let (met, seen) = match *expectation {
            Expectation::MaxBytes(limit) => {
                let seen = self.bytes_after_passes.iter().copied().max().unwrap_or(self.bytes_at_end);
                let when = if self.bytes_after_passes.is_empty() { "at the end (no pass ran)" } else { "at most, after a pass" };
                (seen <= limit, format!("max-bytes={}: {} {when}", format_bytes(limit), format_bytes(seen)))
            }
            Expectation::MaxEntries(limit) => {
                let seen = self.entries_after_passes.iter().copied().max().unwrap_or(self.entries_at_end);
                let when = if self.entries_after_passes.is_empty() { "at the end (no pass ran)" } else { "at most, after a pass" };
                (seen <= limit, format!("max-entries={limit}: {seen} {when}"))
            }
            Expectation::MinHitRate(rate) => (
                self.hit_rate() >= rate,
                format!("min-hit-rate={:.1}%: {:.1}%", rate * 100.0, self.hit_rate() * 100.0),
            ),
            Expectation::MaxHitRate(rate) => (
                self.hit_rate() <= rate,
                format!("max-hit-rate={:.1}%: {:.1}%", rate * 100.0, self.hit_rate() * 100.0),
            ),
            Expectation::MaxIdle(limit) => match self.idle_after_passes.iter().max() {
                Some(&seen) => (seen <= limit, format!("max-idle={limit} ms: {seen} ms at most, after a pass")),
                None => (false, format!("max-idle={limit} ms: no pass ran")),
            },
            Expectation::MaxTempFiles(limit) => (
                self.temp_files_at_end <= limit,
                format!("max-temp-files={limit}: {} at the end", self.temp_files_at_end),
            ),
            Expectation::MaxPeakBytes(limit) => (
                self.peak_bytes <= limit,
                format!("max-peak-bytes={}: {} at the peak", format_bytes(limit), format_bytes(self.peak_bytes)),
            ),
        };
        if met { Ok(seen) } else { Err(seen) }
    }

    /// Hits over loads, from 0 to 1.
    pub fn hit_rate(&self) -> f64 {
        if self.operations == 0 { 0.0 } else { self.hits as f64 / self.operations as f64 }
    }
}

/// A policy running against a simulated cache.
pub struct Simulation {
    runtime: PolicyRuntime,
    cache: Arc<SimulatedCache>,
    report: SimulationReport,
    crashes: u64,
    rng: fastrand::Rng,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation").field("policy", &self.runtime.name()).field("report", &self.report).finish()
    }
}

impl Workload {
    /// Checks what parsing alone cannot: as many compile times as sizes.
    fn check(&self) -> Result<(), String> {
        if !self.compile_us.is_empty() && self.compile_us.len() != self.sizes.len() {
            return Err(format!(
                "the workload has {} sizes and {} compile times: give one time per size, or none",
                self.sizes.len(),
                self.compile_us.len()
            ));
        }
        Ok(())
    }
}

/// Whether a simulated load was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Served from the simulated cache.
    Hit,
    /// Not there: the value was computed, and stored if the policy admitted it.
    Miss {
        /// Whether it was stored.
        stored: bool,
    },
}

/// The simulated clock starts here: 2026-01-01T00:00:00Z.
const SIMULATION_START_MS: u64 = 1_767_225_600_000;

impl Simulation {
    /// Starts `policy` with `settings` on an empty simulated cache, with the
    /// host's default limits. Refused settings are an error, as when a cache
    /// opens.
    pub fn new<K: Into<String>, V: Into<String>>(
        policy: &Policy,
        settings: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Simulation, Error> {
        Simulation::with_host_settings(policy, settings, HostSettings::default())
    }

    /// As [`Simulation::new`], under these limits and deadlines.
    pub fn with_host_settings<K: Into<String>, V: Into<String>>(
        policy: &Policy,
        settings: impl IntoIterator<Item = (K, V)>,
        host: HostSettings,
    ) -> Result<Simulation, Error> {
        let settings: Vec<(String, String)> = settings.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let cache = Arc::new(SimulatedCache::new());
        let mut runtime = PolicyRuntime::start(policy, &settings, cache.clone(), host, None, crate::policy::StartAt::Now)?;
        runtime.record_calls();
        Ok(Simulation { runtime, cache, report: SimulationReport::default(), crashes: 0, rng: fastrand::Rng::with_seed(0) })
    }

    /// Replays `workload`, adding to the report.
    pub fn run(&mut self, workload: &Workload) {
        let mut rng = fastrand::Rng::with_seed(workload.seed);
        let modules = workload.modules.max(1) as usize;
        let profiles = workload.module_profiles(&mut rng);
        // Zipf weights, as a cumulative distribution to search.
        let mut cumulative = Vec::with_capacity(modules);
        let mut total = 0.0;
        for k in 1..=modules {
            total += 1.0 / (k as f64).powf(workload.skew);
            cumulative.push(total);
        }
        let step = workload.step.as_millis() as u64;
        for op in 0..workload.operations {
            let draw = rng.f64() * total;
            let module = cumulative.partition_point(|&c| c < draw).min(modules - 1);
            let (raw_size, compile_us) = profiles[module];
            self.load_with_cost(&simulated_key_material(module as u64), raw_size, Duration::from_micros(compile_us));
            if workload.crash_every > 0 && (op + 1) % workload.crash_every == 0 {
                self.leave_temp_file(raw_size / 2);
            }
            self.advance(Duration::from_millis(step));
        }
    }

    /// One load of the value for `key_material`, `raw_size` bytes when
    /// computed, at no known cost.
    pub fn load(&mut self, key_material: &[u8], raw_size: u64) -> Lookup {
        self.load_with_cost(key_material, raw_size, Duration::ZERO)
    }

    /// One load of the value for `key_material`, `raw_size` bytes that take
    /// `cost` to compute on a miss (the report sums it).
    pub fn load_with_cost(&mut self, key_material: &[u8], raw_size: u64, cost: Duration) -> Lookup {
        let name = Key::derive(KeyDomain::Value, &[key_material]).name();
        let cost_us = crate::cache::micros(cost);
        self.report.operations += 1;
        let now = self.cache.now_ms();
        let hit = self.cache.state.lock().entries.get_mut(&name).map(|entry| {
            entry.hits += 1;
            entry.last_used = now;
            entry.clone()
        });
        if let Some(meta) = hit {
            self.report.hits += 1;
            let actions = self.runtime.on_hit(&meta);
            self.act(&name, actions);
            return Lookup::Hit;
        }
        self.report.misses += 1;
        self.report.compile_us_on_misses += cost_us;
        let codec = match self.runtime.admit(&Candidate { name: name.clone(), raw_size, cost_us }) {
            Some(Admission::Store(codec)) => codec_from_wit(codec),
            // As the host does when the policy fails: what it did not admit
            // is not stored.
            Some(Admission::Skip) | None => {
                self.report.skipped += 1;
                return Lookup::Miss { stored: false };
            }
        };
        *self.report.admitted.entry(codec_label(codec)).or_default() += 1;
        let meta = EntryMeta {
            name: name.clone(),
            stored_size: modelled_stored_size(raw_size, codec),
            raw_size,
            codec: codec_to_wit(codec),
            created: now,
            last_used: now,
            hits: 0,
            cost_us,
        };
        self.cache.state.lock().insert_entry(meta.clone());
        self.note_peaks();
        let actions = self.runtime.on_insert(&meta);
        self.act(&name, actions);
        Lookup::Miss { stored: true }
    }

    /// Carries out an event's actions, as the host's worker does.
    fn act(&mut self, name: &str, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Recode(codec) => {
                    let codec = codec_from_wit(codec);
                    let mut guard = self.cache.state.lock();
                    let state = &mut *guard;
                    if let Some(entry) = state.entries.get_mut(name)
                        && codec_from_wit(entry.codec) != codec
                    {
                        entry.codec = codec_to_wit(codec);
                        let stored_size = modelled_stored_size(entry.raw_size, codec);
                        state.bytes = state.bytes - entry.stored_size + stored_size;
                        entry.stored_size = stored_size;
                        *self.report.recoded.entry(codec_label(codec)).or_default() += 1;
                    }
                    drop(guard);
                    self.note_peaks();
                }
                Action::Remove => {
                    if self.cache.state.lock().remove_entry(name).is_some() {
                        self.report.removed += 1;
                    }
                }
                Action::Maintain => {
                    self.maintain();
                }
                Action::Share => {
                    if self.cache.state.lock().entries.contains_key(name) {
                        self.report.shared += 1;
                    }
                }
            }
        }
    }

    /// Runs the policy's maintenance pass now.
    pub fn maintain(&mut self) -> Option<MaintainReport> {
        let report = self.runtime.maintain()?;
        if report.ran {
            self.report.passes += 1;
            let now = self.now_ms();
            let state = self.cache.state.lock();
            self.report.bytes_after_passes.push(state.bytes());
            self.report.entries_after_passes.push(state.entries.len() as u64);
            let idle = state.entries.values().map(|e| now.saturating_sub(e.last_used)).max().unwrap_or(0);
            drop(state);
            self.report.idle_after_passes.push(idle);
            self.report.last_summary = Some(report.summary.clone());
        } else {
            self.report.passes_skipped += 1;
        }
        Some(report.into())
    }

    /// Moves the simulated clock forward.
    pub fn advance(&mut self, by: Duration) {
        self.cache.now.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// The simulated clock, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.cache.now_ms()
    }

    /// Leaves a temporary file of `size` bytes, as a process that crashed
    /// mid-write does.
    pub fn leave_temp_file(&mut self, size: u64) {
        self.crashes += 1;
        let name = format!("crashed-{}-{:08x}.tmp", self.crashes, self.rng.u32(..));
        let now = self.cache.now_ms();
        self.cache.state.lock().temp.insert(name.clone(), FileMeta { name, size, modified: now });
        self.report.temp_files_left_by_crashes += 1;
    }

    /// The simulated cache's entries, in name order.
    pub fn entries(&self) -> Vec<EntryInfo> {
        self.cache
            .state
            .lock()
            .entries
            .values()
            .map(|e| EntryInfo {
                name: e.name.clone(),
                codec: codec_from_wit(e.codec),
                stored_size: e.stored_size,
                raw_size: e.raw_size,
                created_ms: e.created,
                last_used_ms: e.last_used,
                hits: e.hits,
                cost_us: e.cost_us,
            })
            .collect()
    }

    /// What the simulation saw so far.
    pub fn report(&self) -> SimulationReport {
        let mut report = self.report.clone();
        let state = self.cache.state.lock();
        report.entries_at_end = state.entries.len() as u64;
        report.bytes_at_end = state.bytes();
        report.temp_files_at_end = state.temp.len() as u64;
        drop(state);
        // Removals through the view, beside those by actions.
        report.removed += self.cache.stats.removed.load(Ordering::Relaxed);
        report.simulated_ms = self.cache.now_ms() - SIMULATION_START_MS;
        if let Some(record) = self.runtime.call_record() {
            report.faults = record.fault_count;
            report.deadline_hits = record.deadline_hits;
            report.fault_reasons = record.faults.iter().map(|(what, why)| (what.to_string(), why.clone())).collect();
            report.call_times = record.times.iter().map(|(what, times)| (what.to_string(), call_times(times))).collect();
        }
        report
    }

    fn note_peaks(&mut self) {
        let state = self.cache.state.lock();
        self.report.peak_bytes = self.report.peak_bytes.max(state.bytes());
        self.report.peak_entries = self.report.peak_entries.max(state.entries.len() as u64);
    }
}

fn codec_label(codec: StoredCodec) -> String {
    match codec {
        StoredCodec::Raw => "raw".into(),
        StoredCodec::Zstd { level } => format!("zstd-{level}"),
    }
}

fn call_times(times: &[Duration]) -> CallTimes {
    let mut us: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us.get(((us.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    CallTimes { calls: us.len() as u64, p50_us: at(0.5), p99_us: at(0.99), max_us: us.last().copied().unwrap_or(0.0) }
}

/// The simulated cache: entries, temporary files and state files in memory.
struct SimulatedCache {
    now: AtomicU64,
    stats: Stats,
    state: Mutex<SimulatedState>,
}

#[derive(Default)]
struct SimulatedState {
    entries: BTreeMap<String, EntryMeta>,
    /// The entries' stored sizes, summed as they change: a dry run of a
    /// million loads asks for it after every one.
    bytes: u64,
    temp: BTreeMap<String, FileMeta>,
    files: HashMap<String, (Vec<u8>, u64)>,
}

impl SimulatedState {
    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn insert_entry(&mut self, meta: EntryMeta) {
        self.bytes += meta.stored_size;
        if let Some(old) = self.entries.insert(meta.name.clone(), meta) {
            self.bytes -= old.stored_size;
        }
    }

    fn remove_entry(&mut self, name: &str) -> Option<EntryMeta> {
        let old = self.entries.remove(name)?;
        self.bytes -= old.stored_size;
        Some(old)
    }
}

impl SimulatedCache {
    fn new() -> SimulatedCache {
        SimulatedCache { now: AtomicU64::new(SIMULATION_START_MS), stats: Stats::default(), state: Mutex::default() }
    }
}

impl ViewBackend for SimulatedCache {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    fn namespace_name(&self) -> String {
        "simulated".into()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn list_names(&self, area: Area) -> Result<Vec<String>, WitError> {
        let state = self.state.lock();
        // Entries are listed by `listed_entries`.
        Ok(match area {
            Area::Tmp => state.temp.keys().cloned().collect(),
            _ => Vec::new(),
        })
    }

    fn listed_entries(&self, _capacity: usize) -> Result<Vec<crate::store::ListedEntry>, WitError> {
        let state = self.state.lock();
        Ok(state
            .entries
            .values()
            .filter_map(|e| {
                let name = crate::store::EntryName::new(&e.name)?;
                Some(crate::store::ListedEntry { name, stored_size: e.stored_size, last_used: e.last_used })
            })
            .collect())
    }

    fn entry_metas(&self, names: &[String]) -> Result<Vec<EntryMeta>, WitError> {
        let state = self.state.lock();
        Ok(names.iter().filter_map(|name| state.entries.get(name).cloned()).collect())
    }

    fn stat_entry(&self, name: &str) -> Result<EntryMeta, WitError> {
        self.state.lock().entries.get(name).cloned().ok_or(WitError::NotFound)
    }

    fn read_entry(&self, name: &str, offset: u64, length: u32) -> Result<Vec<u8>, WitError> {
        // The model has sizes, not contents: zeros of the right length.
        let size = self.stat_entry(name)?.stored_size;
        Ok(vec![0; size.saturating_sub(offset).min(length as u64) as usize])
    }

    fn remove_entry(&self, key: &Key) -> Result<(), WitError> {
        self.state.lock().remove_entry(&key.name()).map(|_| ()).ok_or(WitError::NotFound)
    }

    fn file_meta(&self, area: Area, name: &str) -> Result<FileMeta, WitError> {
        let state = self.state.lock();
        match area {
            Area::Tmp => state.temp.get(name).cloned().ok_or(WitError::NotFound),
            _ => state
                .files
                .get(name)
                .map(|(contents, modified)| FileMeta { name: name.into(), size: contents.len() as u64, modified: *modified })
                .ok_or(WitError::NotFound),
        }
    }

    fn remove_file(&self, area: Area, name: &str) -> Result<(), WitError> {
        let mut state = self.state.lock();
        let removed = match area {
            Area::Tmp => state.temp.remove(name).is_some(),
            _ => state.files.remove(name).is_some(),
        };
        if removed { Ok(()) } else { Err(WitError::NotFound) }
    }

    fn read_state(&self, name: &str) -> Result<Vec<u8>, WitError> {
        let contents = self.state.lock().files.get(name).map(|(c, _)| c.clone()).ok_or(WitError::NotFound)?;
        if contents.len() > MAX_STATE_FILE { Err(WitError::TooLarge) } else { Ok(contents) }
    }

    fn write_state(&self, name: &str, contents: &[u8]) -> Result<(), WitError> {
        let now = self.now_ms();
        self.state.lock().files.insert(name.into(), (contents.to_vec(), now));
        Ok(())
    }

    fn create_state(&self, name: &str, contents: &[u8]) -> Result<(), WitError> {
        let now = self.now_ms();
        let mut state = self.state.lock();
        if state.files.contains_key(name) {
            return Err(WitError::AlreadyExists);
        }
        state.files.insert(name.into(), (contents.to_vec(), now));
        Ok(())
    }

    fn state_files(&self) -> Result<Vec<(String, u64)>, WitError> {
        Ok(self.state.lock().files.iter().map(|(name, (contents, _))| (name.clone(), contents.len() as u64)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_spec_sets_what_it_names_and_keeps_the_rest() {
        let w: Workload = "ops=10,skew=0.5,step=5m,sizes=1Mi/2Mi".parse().unwrap();
        assert_eq!((w.operations, w.skew, w.step), (10, 0.5, Duration::from_secs(300)));
        assert_eq!(w.sizes, vec![1 << 20, 2 << 20]);
        assert_eq!(w.modules, Workload::default().modules);
        let e = "ops=ten".parse::<Workload>().unwrap_err();
        assert!(e.contains("ops=\"ten\""), "{e}");
        assert!("colour=red".parse::<Workload>().unwrap_err().contains("unknown workload key"));
    }

    #[test]
    fn expectations_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("max-bytes=512Mi".parse::<Expectation>(), Ok(Expectation::MaxBytes(512 << 20)));
        assert_eq!("min-hit-rate=80%".parse::<Expectation>(), Ok(Expectation::MinHitRate(0.8)));
        let e = "max-bytes=lots".parse::<Expectation>().unwrap_err();
        assert!(e.contains("a size such as 512Mi"), "{e}");
        assert!("speed=fast".parse::<Expectation>().unwrap_err().contains("unknown expectation"));
    }

    #[test]
    fn the_running_total_is_the_sum_of_the_entries_through_stores_recodes_and_evictions() {
        let mut simulation = Simulation::new(&crate::Policy::default(), [("files-total-size-soft-limit", "64Mi")]).unwrap();
        simulation.run(&Workload { operations: 20_000, modules: 2_000, ..Workload::default() });
        let report = simulation.report();
        assert!(report.passes > 0 && report.removed > 0 && !report.recoded.is_empty(), "nothing was evicted or recoded: {report:?}");
        let summed: u64 = simulation.entries().iter().map(|e| e.stored_size).sum();
        assert_eq!(report.bytes_at_end, summed);
    }

    #[test]
    fn higher_zstd_levels_model_smaller_entries() {
        let raw = 10 << 20;
        let sizes: Vec<u64> = [1, 3, 19].iter().map(|&level| modelled_stored_size(raw, StoredCodec::Zstd { level })).collect();
        assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "{sizes:?}");
        assert!(modelled_stored_size(raw, StoredCodec::Raw) > sizes[0]);
    }
}
