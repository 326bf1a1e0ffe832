//! `capcache policy`: check a policy component, dry-run it against a simulated
//! cache, and start a new one.

use crate::{out, parse_settings};
use anyhow::{Context, Result, bail};
use capcache::{Cache, Expectation, Policy, Simulation, SimulationReport, Workload};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `capcache policy check`: the component's world, imports and exports, and
/// its `configure` with these settings, in a scratch directory.
pub(crate) fn check(policy: &Path, settings: &[String]) -> Result<()> {
    let policy = Policy::named(policy)?;
    let interface = policy.describe()?;
    out!("policy   {}", policy.name())?;
    out!("world    {}: matches", interface.world)?;
    for name in &interface.imports {
        let note = if name.starts_with("wasi:") { " (granted nothing: calls trap)" } else { "" };
        out!("import   {name}{note}")?;
    }
    for name in &interface.exports {
        out!("export   {name}")?;
    }
    let scratch = tempfile::tempdir()?;
    Cache::builder().directory(scratch.path()).policy(policy.clone()).settings(parse_settings(settings)?).open()?;
    out!("configure: ok ({} settings)", settings.len())?;
    // A short dry run: the first calls of every export, where a policy that
    // reaches for WASI or panics shows it.
    let mut simulation = Simulation::new(&policy, parse_settings(settings)?)?;
    simulation.run(&Workload { operations: 2_000, modules: 200, step: std::time::Duration::from_secs(60), ..Workload::default() });
    let report = simulation.report();
    out!("dry run:  {} loads, {} maintenance passes, {} faults (capcache policy test for more)", report.operations, report.passes, report.faults)?;
    if let Some((export, why)) = report.fault_reasons.first() {
        bail!("the policy faulted in {export}: {why}");
    }
    Ok(())
}

/// `capcache policy install`: compiles the policy optimized into the cache
/// directory's store for compiled policies.
pub(crate) fn install(policy: &Path, root: &Path) -> Result<()> {
    let policy = Policy::named(policy)?;
    let installed = policy.install(root)?;
    if installed.compiled_now {
        out!(
            "installed {}: optimized code, {}, compiled in {:.2} s, kept as {}",
            policy.name(),
            bytes(installed.stored_bytes),
            installed.elapsed.as_secs_f64(),
            installed.path.display()
        )?;
    } else {
        out!("installed {}: its optimized code was kept already ({})", policy.name(), installed.path.display())?;
    }
    Ok(())
}

/// A byte count for people, as the simulation's expectations show them.
fn bytes(n: u64) -> String {
    if n >= 1 << 20 { format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64) } else { format!("{n} B") }
}

/// `capcache policy test`: replays a workload against the policy on a
/// simulated cache, prints what it decided, and fails on a fault or an unmet
/// expectation.
/// Whether `policy test` lists the workload's modules and their entry names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Names {
    Show,
    Hide,
}

pub(crate) fn test(policy: &Path, settings: &[String], workload: &str, expectations: &[String], json: bool, names: Names) -> Result<()> {
    let workload: Workload = workload.parse().map_err(|e: String| anyhow::anyhow!("--workload: {e}"))?;
    let expectations: Vec<Expectation> =
        expectations.iter().map(|e| e.parse()).collect::<Result<_, String>>().map_err(anyhow::Error::msg)?;
    let policy = Policy::named(policy)?;
    let started = std::time::Instant::now();
    let mut simulation = Simulation::new(&policy, parse_settings(settings)?)?;
    simulation.run(&workload);
    let report = simulation.report();
    let took = started.elapsed();
    let verdicts: Vec<(bool, String)> = expectations
        .iter()
        .map(|e| match report.meets(e) {
            Ok(seen) => (true, seen),
            Err(seen) => (false, seen),
        })
        .collect();

    if json {
        let value = serde_json::json!({
            "policy": policy.name(),
            "report": report,
            "expectations": verdicts.iter().map(|(ok, what)| serde_json::json!({"ok": ok, "seen": what})).collect::<Vec<_>>(),
            "seconds": took.as_secs_f64(),
        });
        let mut value = value;
        if names == Names::Show {
            value["modules"] = serde_json::to_value(workload.modules_simulated())?;
        }
        out!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        print_report(&policy, &workload, &report, &verdicts, took)?;
        if names == Names::Show {
            out!("{:>8}  {:>12}  entry", "module", "raw bytes")?;
            for module in workload.modules_simulated() {
                out!("{:>8}  {:>12}  {}", module.index, module.raw_size, module.entry_name)?;
            }
        }
    }

    let mut failures = Vec::new();
    if report.faults > 0 {
        failures.push(format!("{} policy faults ({} at a deadline)", report.faults, report.deadline_hits));
    }
    failures.extend(verdicts.iter().filter(|(ok, _)| !ok).map(|(_, what)| format!("expectation not met: {what}")));
    if !failures.is_empty() {
        bail!("policy test of {} failed: {}", policy.name(), failures.join("; "));
    }
    Ok(())
}

fn print_report(
    policy: &Policy,
    workload: &Workload,
    report: &SimulationReport,
    verdicts: &[(bool, String)],
    took: std::time::Duration,
) -> Result<()> {
    let labelled = |map: &std::collections::BTreeMap<String, u64>| {
        if map.is_empty() { "none".to_string() } else { map.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ") }
    };
    out!("policy        {}", policy.name())?;
    out!(
        "workload      {} loads of {} modules, skew {}, one every {:?} ({:.1} h simulated), a crash every {} loads",
        workload.operations,
        workload.modules,
        workload.skew,
        workload.step,
        report.simulated_ms as f64 / 3_600_000.0,
        workload.crash_every
    )?;
    out!(
        "loads         {} hits ({:.1}%), {} misses",
        report.hits,
        report.hit_rate() * 100.0,
        report.misses
    )?;
    out!(
        "compiling     {:.1} s spent compiling what missed ({} misses; the workload's compile times)",
        report.compile_us_on_misses as f64 / 1e6,
        report.misses
    )?;
    out!("admitted      {}", labelled(&report.admitted))?;
    out!("skipped       {}", report.skipped)?;
    out!("recoded       {}", labelled(&report.recoded))?;
    out!("removed       {} (evictions and remove actions)", report.removed)?;
    out!("shared        {} (share actions: uploads, on a host with shared tiers)", report.shared)?;
    out!("maintenance   {} passes ran, {} did not", report.passes, report.passes_skipped)?;
    if let Some(summary) = &report.last_summary {
        let summary: String = summary.chars().take(200).collect();
        out!("last pass     {summary}")?;
    }
    if let Some(max) = report.bytes_after_passes.iter().max() {
        out!("after passes  at most {}", bytes(*max))?;
    }
    out!(
        "at the end    {} entries, {}; peak {} entries, {}",
        report.entries_at_end,
        bytes(report.bytes_at_end),
        report.peak_entries,
        bytes(report.peak_bytes)
    )?;
    out!("temporary     {} left by crashes, {} at the end", report.temp_files_left_by_crashes, report.temp_files_at_end)?;
    out!("faults        {} ({} at a deadline)", report.faults, report.deadline_hits)?;
    for (export, why) in &report.fault_reasons {
        let why: String = why.chars().take(300).collect();
        out!("  {export}: {why}")?;
    }
    out!("calls         {:<10} {:>8} {:>10} {:>10} {:>10}", "export", "calls", "p50 µs", "p99 µs", "max µs")?;
    for (export, times) in &report.call_times {
        out!(
            "              {:<10} {:>8} {:>10.1} {:>10.1} {:>10.1}",
            export,
            times.calls,
            times.p50_us,
            times.p99_us,
            times.max_us
        )?;
    }
    for (ok, what) in verdicts {
        out!("expect        {what}: {}", if *ok { "ok" } else { "NOT MET" })?;
    }
    out!("took          {:.2} s", took.as_secs_f64())?;
    Ok(())
}

/// The files of a new policy project.
const CARGO_TOML: &str = include_str!("../templates/policy/Cargo.toml.in");
const LIB_RS: &str = include_str!("../templates/policy/lib.rs.in");
const README: &str = include_str!("../templates/policy/README.md.in");
const CONTRACT: &str = include_str!("../../wit/policy.wit");

/// A Python policy project: the helper module, a starting policy, how to build.
const PYTHON_HELPERS: &str = include_str!("../../guest/python/capcache_policy.py");
const PYTHON_APP: &str = include_str!("../templates/policy/app.py.in");
const PYTHON_README: &str = include_str!("../templates/policy/README-python.md.in");
const PYTHON_REQUIREMENTS: &str = include_str!("../../guest/python/requirements.txt");
/// A JavaScript policy project, likewise.
const JS_HELPERS: &str = include_str!("../../guest/js/capcache-policy.js");
const JS_POLICY: &str = include_str!("../templates/policy/policy.js.in");
const JS_README: &str = include_str!("../templates/policy/README-js.md.in");
const JS_PACKAGE: &str = include_str!("../../guest/js/package.json");
const JS_LOCK: &str = include_str!("../../guest/js/package-lock.json");

/// The language of a new policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Language {
    /// Rust, with the capcache-policy SDK.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-qjs (QuickJS) or ComponentizeJS (SpiderMonkey).
    Js,
}

/// Where the SDK is in the source tree this binary was built from.
const SDK_IN_SOURCE_TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/sdk");

/// `capcache policy new`: writes a self-contained policy crate.
pub(crate) fn new(name: &str, dir: Option<&Path>, sdk: Option<&Path>, language: Language) -> Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if !valid {
        bail!("{name:?} is not a usable crate name: use lowercase letters, digits, '-' and '_', starting with a letter");
    }
    if language != Language::Rust {
        return new_in_language(name, dir, language);
    }
    let sdk = match sdk {
        Some(path) => path.to_path_buf(),
        None => PathBuf::from(SDK_IN_SOURCE_TREE),
    };
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .with_context(|| {
            format!(
                "cannot find the capcache-policy SDK at {}: pass --sdk PATH, the guest/sdk directory of a capcache checkout",
                sdk.display()
            )
        })?;
    let root = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")).join(name);
    if root.exists() {
        bail!("{} exists already: choose another name or --dir, or remove it", root.display());
    }
    let crate_name = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{capcache}}", &this_command())
            .replace("{{module}}", &example_module())
            .replace("{{crate}}", &crate_name)
            .replace("{{sdk}}", &format!("capcache-policy = {{ path = {:?} }}", sdk.display().to_string()))
    };
    std::fs::create_dir_all(root.join("src")).with_context(|| format!("cannot create {}", root.display()))?;
    std::fs::create_dir_all(root.join("wit"))?;
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        ("README.md", fill(README)),
        ("wit/policy.wit", CONTRACT.to_string()),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, contents) in files {
        let path = root.join(file);
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    }
    out!("created {} (policy {name}, SDK at {})", root.display(), sdk.display())?;
    out!("next:   cd {} && cargo build --release --target wasm32-wasip2", root.display())?;
    out!("        {} policy test target/wasm32-wasip2/release/{crate_name}.wasm", this_command())?;
    Ok(())
}

/// How the project's README and hints name this command: the path of the
/// running executable, so that they run as written whether or not it is on
/// `PATH` (quoted for a shell if it needs to be).
fn this_command() -> String {
    let path = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "capcache".into());
    if path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) { path } else { format!("'{}'", path.replace('\'', "'\\''")) }
}

/// A module to compile through the new policy: the quick start's, from the
/// source tree this command was built from, if it is still there.
fn example_module() -> String {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/modules/sqljs-1.16.0.wasm");
    match module.canonicalize() {
        Ok(path) => path.display().to_string(),
        Err(_) => "module.wasm".into(),
    }
}

/// `policy new --lang python|js`: the policy, the helper module, the WIT,
/// the pinned toolchain and a README with the commands.
fn new_in_language(name: &str, dir: Option<&Path>, language: Language) -> Result<()> {
    let root = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")).join(name);
    if root.exists() {
        bail!("{} exists already: choose another name or --dir, or remove it", root.display());
    }
    let fill = |template: &str| template.replace("{{name}}", name).replace("{{capcache}}", &this_command());
    let files: Vec<(&str, String)> = match language {
        Language::Python => vec![
            ("app.py", fill(PYTHON_APP)),
            ("capcache_policy.py", PYTHON_HELPERS.to_string()),
            ("requirements.txt", PYTHON_REQUIREMENTS.to_string()),
            ("README.md", fill(PYTHON_README)),
        ],
        Language::Js => vec![
            ("policy.js", fill(JS_POLICY)),
            ("capcache-policy.js", JS_HELPERS.to_string()),
            ("package.json", JS_PACKAGE.to_string()),
            ("package-lock.json", JS_LOCK.to_string()),
            ("README.md", fill(JS_README)),
        ],
        Language::Rust => unreachable!("written by `new`"),
    };
    std::fs::create_dir_all(root.join("wit")).with_context(|| format!("cannot create {}", root.display()))?;
    std::fs::write(root.join("wit/policy.wit"), CONTRACT)?;
    for (file, contents) in files {
        let path = root.join(file);
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    }
    out!("created {} (policy {name}, {language:?}); its README says how to build it", root.display())?;
    Ok(())
}
