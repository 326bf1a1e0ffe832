//! The `capcache` command.

use anyhow::{Context, Result, bail};
use capcache::{Cache, Policy, Source};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "capcache",
    version,
    about = "A compiled-module cache for WebAssembly hosts, with a sandboxed policy",
    after_help = "Exit codes: 0 success; 1 error (the message says what was wrong); 2 `verify` found bad entries.\n\
                  Logging: CAPCACHE_LOG=info (or debug) shows what the cache and its policy do."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile modules with wasmtime through the cache; print, per module,
    /// whether it was a hit or a miss and how long it took to get a usable
    /// module. Run it twice: the second run is all hits.
    Compile {
        /// The modules (.wasm or .wat).
        #[arg(required = true)]
        modules: Vec<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Run a WASI command (a core module exporting `_start`) through the
    /// cache, so that a second run starts without compiling. The command gets
    /// its arguments and the terminal's standard streams, nothing else: no
    /// files, no environment.
    #[cfg(feature = "run")]
    Run {
        /// The module (.wasm or .wat).
        module: PathBuf,
        /// Arguments for the command (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Run the policy's maintenance pass now and print its report.
    Gc {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Print what the cache did, over every process that used it: hits,
    /// misses, hit rate, bytes stored, entries, evictions, policy faults.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Forget the recorded counters.
        #[arg(long)]
        zero: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// List the entries: size on disk, size decoded, codec, age, hits.
    Ls {
        /// Order by this column (largest, oldest or most used first).
        #[arg(long, value_enum, default_value = "name")]
        sort: SortBy,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Check every entry's integrity. Exit code 2 if any is bad (and not
    /// removed with --fix).
    Verify {
        /// Remove the bad entries.
        #[arg(long)]
        fix: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Remove every entry of the cache (for this engine configuration).
    Clear {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a policy component, say whether it matches the WIT world, list
    /// what it imports and exports, and run its `configure` with the given
    /// settings (in a scratch directory).
    Check {
        /// The component (.wasm); "default" for the embedded default policy.
        policy: String,
        /// A setting to pass to `configure`, KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SortBy {
    Name,
    Size,
    Age,
    Hits,
}

#[derive(clap::Args)]
struct CacheArgs {
    /// Configuration file [default: $CAPCACHE_CONFIG, else the platform config
    /// dir's capcache/config.toml if it exists]. Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cache directory [default: the platform cache directory, e.g. ~/.cache/capcache].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A policy component (.wasm) to use instead of the embedded default.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A policy setting, KEY=VALUE (repeatable), e.g. --set cleanup-interval=30m.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Compile without the cache.
    #[arg(long)]
    no_cache: bool,
    /// Serve hits only; store and clean nothing.
    #[arg(long)]
    read_only: bool,
    /// Use a cache directory that others can write (anyone who can write it
    /// can plant code that will run).
    #[arg(long)]
    allow_insecure_dir: bool,
}

impl CacheArgs {
    fn open(&self, namespace: &str) -> Result<Cache> {
        let config = match capcache::Config::locate(self.config.as_deref()) {
            Some(path) => capcache::Config::read(&path)?,
            None => capcache::Config::default(),
        };
        let mut builder = capcache::CacheBuilder::from_config(&config)?.namespace(namespace);
        if self.no_cache {
            builder = builder.enabled(false);
        }
        if self.read_only {
            builder = builder.read_only(true);
        }
        if self.allow_insecure_dir {
            builder = builder.allow_insecure_directory(true);
        }
        if let Some(dir) = &self.dir {
            builder = builder.directory(dir);
        }
        if let Some(path) = &self.policy {
            builder = builder.policy(Policy::from_file(path)?);
        }
        for (key, value) in parse_settings(&self.settings)? {
            builder = builder.setting(key, value);
        }
        Ok(builder.open()?)
    }
}

fn parse_settings(settings: &[String]) -> Result<Vec<(String, String)>> {
    settings
        .iter()
        .map(|setting| match setting.split_once('=') {
            Some((key, value)) => Ok((key.trim().to_string(), value.trim().to_string())),
            None => bail!("--set {setting:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// Exit code when `verify` finds bad entries it did not remove.
const EXIT_BAD_ENTRIES: u8 = 2;

/// An error that carries its own exit code.
#[derive(Debug)]
struct Exit(u8);
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    // Hidden when stderr is not a terminal, and for a handful of items.
    if total < 4 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})").unwrap().progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPCACHE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Exit>().is_some() => std::process::ExitCode::from(e.downcast_ref::<Exit>().unwrap().0),
        Err(e) => {
            eprintln!("capcache: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let engine = wasmtime::Engine::default();
    let namespace = capcache::wasmtime::engine_namespace(&engine);
    match cli.command {
        Command::Compile { modules, cache } => {
            let cache = open_or_compute(&cache, &namespace)?;
            let mut failed = 0;
            let bar = progress_bar(modules.len() as u64, "compiling");
            for path in &modules {
                match compile(&engine, &cache, path) {
                    Ok((source, elapsed)) => {
                        let what = match source {
                            Source::Hit => "hit",
                            Source::Computed => "miss",
                        };
                        bar.println(format!("{what:4}  {:9.2} ms  {}", elapsed.as_secs_f64() * 1e3, path.display()));
                        if bar.is_hidden() {
                            println!("{what:4}  {:9.2} ms  {}", elapsed.as_secs_f64() * 1e3, path.display());
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        bar.suspend(|| eprintln!("capcache: {}: {e:#}", path.display()));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            cache.flush();
            if failed > 0 {
                bail!("{failed} of {} modules failed to compile", modules.len());
            }
            Ok(())
        }
        #[cfg(feature = "run")]
        Command::Run { module, args, cache } => {
            let cache = open_or_compute(&cache, &namespace)?;
            let code = run_command(&engine, &cache, &module, &args)?;
            cache.flush();
            drop(cache);
            if code != 0 {
                return Err(Exit(code.clamp(1, 255) as u8).into());
            }
            Ok(())
        }
        Command::Gc { cache } => {
            let cache = cache.open(&namespace)?;
            let report = cache.maintain().context("the policy's maintenance pass failed (see the log)")?;
            println!("{}", report.summary);
            Ok(())
        }
        Command::Stats { json, zero, cache } => {
            let cache = cache.open(&namespace)?;
            if zero {
                cache.zero_stats().context("cannot forget the statistics")?;
                println!("statistics zeroed");
                return Ok(());
            }
            let stats = cache.lifetime_stats();
            let entries = cache.entries();
            let stored: u64 = entries.iter().map(|e| e.stored_size).sum();
            let raw: u64 = entries.iter().map(|e| e.raw_size).sum();
            if json {
                let value = serde_json::json!({
                    "directory": cache.path(),
                    "counters": stats,
                    "hit_rate": stats.hit_rate(),
                    "entries": entries.len(),
                    "bytes_stored": stored,
                    "bytes_raw": raw,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let path = cache.path().map(|p| p.display().to_string()).unwrap_or_default();
                println!("directory       {path}");
                println!("hits            {}", stats.hits);
                println!("misses          {}", stats.misses);
                println!("hit rate        {:.1} %", stats.hit_rate() * 100.0);
                println!("entries         {}", entries.len());
                println!("bytes stored    {stored}");
                println!("bytes decoded   {raw}");
                println!("inserts         {}", stats.inserts);
                println!("skipped         {}", stats.skipped);
                println!("evictions       {}", stats.removed);
                println!("recoded         {}", stats.recoded);
                println!("corrupt         {}", stats.corrupt);
                println!("failures        {}", stats.failures);
                println!("policy faults   {}", stats.policy_faults);
                println!("events dropped  {}", stats.events_dropped);
            }
            Ok(())
        }
        Command::Ls { sort, cache } => {
            let cache = cache.open(&namespace)?;
            let mut entries = cache.entries();
            match sort {
                SortBy::Name => entries.sort_by(|a, b| a.name.cmp(&b.name)),
                SortBy::Size => entries.sort_by(|a, b| b.stored_size.cmp(&a.stored_size)),
                SortBy::Age => entries.sort_by(|a, b| a.created_ms.cmp(&b.created_ms)),
                SortBy::Hits => entries.sort_by(|a, b| b.hits.cmp(&a.hits)),
            }
            let now = capcache::Clock::now_ms(&capcache::SystemClock);
            println!("{:43}  {:>12}  {:>12}  {:7}  {:>10}  {:>6}", "name", "stored", "decoded", "codec", "age", "hits");
            for e in &entries {
                let codec = match e.codec {
                    capcache::StoredCodec::Raw => "raw".to_string(),
                    capcache::StoredCodec::Zstd { level } => format!("zstd:{level}"),
                };
                let age = std::time::Duration::from_secs(now.saturating_sub(e.created_ms) / 1000);
                println!(
                    "{:43}  {:>12}  {:>12}  {:7}  {:>10}  {:>6}",
                    e.name, e.stored_size, e.raw_size, codec, format_age(age), e.hits
                );
            }
            Ok(())
        }
        Command::Verify { fix, cache } => {
            let cache = cache.open(&namespace)?;
            let bar = progress_bar(cache.entries().len() as u64, "verifying");
            let report = cache.verify(fix, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            for (name, problem) in &report.bad {
                println!("bad  {name}: {problem}");
            }
            println!("{} entries checked, {} bad, {} removed", report.checked, report.bad.len(), report.removed);
            if report.bad.len() as u64 > report.removed {
                return Err(Exit(EXIT_BAD_ENTRIES).into());
            }
            Ok(())
        }
        Command::Clear { cache } => {
            let cache = cache.open(&namespace)?;
            let removed = cache.clear()?;
            println!("{removed} entries removed");
            Ok(())
        }
        Command::Policy(PolicyCommand::Check { policy, settings }) => {
            let policy = if policy == "default" { Policy::default() } else { Policy::from_file(&policy)? };
            let (imports, exports) = policy.describe()?;
            println!("policy   {}", policy.name());
            println!("world    capcache:policy/policy-world@0.1.0: matches");
            for name in &imports {
                let note = if name.starts_with("wasi:") { " (granted nothing: calls trap)" } else { "" };
                println!("import   {name}{note}");
            }
            for name in &exports {
                println!("export   {name}");
            }
            let scratch = tempfile::tempdir()?;
            Cache::builder().directory(scratch.path()).policy(policy).settings(parse_settings(&settings)?).open()?;
            println!("configure: ok ({} settings)", settings.len());
            Ok(())
        }
    }
}

/// Opens the cache; a directory that cannot be used only costs the cache (a
/// policy or setting the user named must work, and a bad one is an error).
fn open_or_compute(args: &CacheArgs, namespace: &str) -> Result<Cache> {
    match args.open(namespace) {
        Ok(cache) => Ok(cache),
        Err(e)
            if e.downcast_ref::<capcache::Error>()
                .is_some_and(|e| matches!(e, capcache::Error::Directory { .. } | capcache::Error::NoDirectory)) =>
        {
            tracing::warn!("cache unavailable, compiling without it: {e:#}");
            Ok(Cache::disabled())
        }
        Err(e) => Err(e),
    }
}

/// Runs a WASI command module; returns its exit code.
#[cfg(feature = "run")]
fn run_command(engine: &wasmtime::Engine, cache: &Cache, path: &PathBuf, args: &[String]) -> Result<i32> {
    use wasmtime_wasi::p1::WasiP1Ctx;
    let module = capcache::wasmtime::load_module_file(cache, engine, path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile {}", path.display()))?;
    let mut linker = wasmtime::Linker::<WasiP1Ctx>::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |ctx| ctx).map_err(anyhow::Error::from)?;
    let program = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut argv = vec![program];
    argv.extend(args.iter().cloned());
    let wasi = wasmtime_wasi::WasiCtxBuilder::new().inherit_stdio().args(&argv).build_p1();
    let mut store = wasmtime::Store::new(engine, wasi);
    let instance = linker.instantiate(&mut store, &module).map_err(anyhow::Error::from)?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(anyhow::Error::from)
        .context("not a WASI command: it exports no `_start`")?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(anyhow::Error::from(e).context(format!("{} trapped", path.display()))),
        },
    }
}

fn format_age(age: std::time::Duration) -> String {
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Gets a usable module for `path` through the cache (direct mode: a hit
/// need not read the file); returns where it came from and how long that took.
fn compile(engine: &wasmtime::Engine, cache: &Cache, path: &PathBuf) -> Result<(Source, std::time::Duration)> {
    let started = Instant::now();
    let (_module, source) = capcache::wasmtime::load_module_file_with_source(cache, engine, path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile {}", path.display()))?;
    Ok((source, started.elapsed()))
}
