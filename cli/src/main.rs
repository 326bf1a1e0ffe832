//! The `capcache` command.

mod policy;

use anyhow::{Context, Result, bail};
use capcache::{Cache, CacheBuilder, EntryInfo, IfMissing, Policy, Source};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "capcache",
    version,
    about = "A compiled-module cache for WebAssembly hosts, with a sandboxed policy",
    after_help = "Exit codes: 0 success; 1 error (the message says what was wrong); 2 `verify` found bad entries; \
                  64 the command line is wrong. `run` exits with the command's own code, and 125 if capcache \
                  could not run it (or it trapped).\n\
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
        /// The modules (.wasm, or .wat for the text format).
        #[arg(required = true)]
        modules: Vec<PathBuf>,
        /// Also print the name of the entry each module's code is kept in (as
        /// `capcache ls` lists it), before the module's path.
        #[arg(long)]
        show_entry: bool,
        #[command(flatten)]
        options: CompileOptions,
    },
    /// Run a WASI command (a core module exporting `_start`) through the
    /// cache, so that a second run starts without compiling. The command gets
    /// its arguments and the terminal's standard streams, nothing else: no
    /// files, no environment.
    #[cfg(feature = "run")]
    Run {
        /// The module (.wasm, or .wat for the text format).
        module: PathBuf,
        /// Arguments for the command (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
        #[command(flatten)]
        options: CompileOptions,
    },
    /// Run the policy's maintenance pass now, in every namespace of the
    /// directory (or the one named), and print its report.
    Gc {
        #[command(flatten)]
        location: Location,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Print what the cache did, per namespace, over every process that used
    /// it: hits, misses, hit rate, bytes stored, entries, evictions, policy
    /// faults.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Forget the recorded counters.
        #[arg(long)]
        zero: bool,
        #[command(flatten)]
        location: Location,
    },
    /// List the entries of every namespace (or the one named): size on disk,
    /// size decoded, codec, age, hits, what its miss took to compile (`-`:
    /// not measured), namespace.
    Ls {
        /// Order by this column (largest, oldest or most used first).
        #[arg(long, value_enum, default_value = "name")]
        sort: SortBy,
        #[command(flatten)]
        location: Location,
    },
    /// Check every entry's integrity. Exit code 2 if any is bad (and not
    /// removed with --fix).
    Verify {
        /// Remove the bad entries.
        #[arg(long)]
        fix: bool,
        #[command(flatten)]
        location: Location,
    },
    /// Remove every entry and the policy's state, of every namespace (or of the one named).
    Clear {
        #[command(flatten)]
        location: Location,
    },
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work with the shared tiers (Redis servers and S3 buckets behind the local
    /// cache).
    #[command(subcommand)]
    Remote(RemoteCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a policy component, say whether it matches the WIT world, list
    /// what it imports and exports, and run its `configure` with the given
    /// settings (in a scratch directory).
    Check {
        /// The component (.wasm); "default" for the embedded default policy.
        policy: PathBuf,
        /// A setting to pass to `configure`, KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Dry-run a policy before deploying it: replay a simulated workload
    /// (misses, skewed hits, sizes of real artifacts, crashes leaving
    /// temporary files) against a simulated cache on a simulated clock, and
    /// print what the policy decided and what its calls cost. No cache is
    /// touched. Fails on any policy fault, or an unmet --expect.
    Test {
        /// The component (.wasm); "default" for the embedded default policy.
        policy: PathBuf,
        /// A setting to pass to `configure`, KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// The workload, as KEY=VALUE pairs separated by commas: ops (100000),
        /// modules (2000), skew (1.0: Zipf), step (1s between loads),
        /// crash-every (5000 loads), sizes (a list, not a range: each module
        /// draws one of these raw artifact sizes, then varies it by up to 20%
        /// either way; e.g. 16Ki/2Mi/30Mi; default: five real artifacts from
        /// 13 KB to 31 MB), seed (1).
        #[arg(long, value_name = "SPEC", default_value = "")]
        workload: String,
        /// A condition the run must meet (repeatable): max-bytes=SIZE (after
        /// every pass), max-entries=N (likewise), min-hit-rate=P%, max-hit-rate=P%,
        /// max-temp-files=N (at the end), max-idle=DURATION (no entry left
        /// unused longer, after every pass), max-peak-bytes=SIZE (at every
        /// moment).
        #[arg(long = "expect", value_name = "KEY=VALUE")]
        expectations: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also list each module of the workload: its place (0 is the
        /// hottest), its raw size and the entry name it is stored under, to
        /// follow one module through the policy's decisions.
        #[arg(long)]
        show_names: bool,
    },
    /// Compile a policy with the optimizing compiler and keep its code in the
    /// cache directory, so that no host starting it from there compiles it
    /// or runs it on quick code first (a policy in Python or JavaScript takes
    /// seconds to compile). Run it when deploying a policy.
    Install {
        /// The component (.wasm); "default" for the embedded default policy.
        policy: PathBuf,
        #[command(flatten)]
        location: Location,
    },
    /// Write a new policy crate, ready to build for wasm32-wasip2: Cargo.toml,
    /// the contract's WIT, src/lib.rs with every export written out and
    /// commented, and a README with the commands to build, check and test it.
    New {
        /// The crate's name (lowercase letters, digits, '-', '_').
        name: String,
        /// Where to create it [default: the current directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The capcache-policy SDK to depend on (guest/sdk of a capcache
        /// checkout) [default: the one in the source tree capcache was built from].
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// The policy's language: rust (with the SDK), python
        /// (componentize-py) or js (componentize-qjs).
        #[arg(long, value_enum, default_value = "rust")]
        lang: policy::Language,
    },
}

#[derive(Subcommand)]
enum RemoteCommand {
    /// Probe the shared tier: can it be reached, read and written, and will
    /// it evict when full. Exits 1 if anything is wrong.
    Check {
        #[command(flatten)]
        location: Location,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Upload every local entry the tier lacks.
    Push {
        #[command(flatten)]
        location: Location,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Fetch every entry the tier holds and the local cache lacks (each
    /// checked as a lookup checks it).
    Pull {
        #[command(flatten)]
        location: Location,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// The shared tier, in place of the configuration's `[cache.remote]` tiers.
#[derive(clap::Args)]
struct RemoteArgs {
    /// A shared tier: redis://[user:password@]host:port[/db], rediss:// for
    /// TLS, redis-cluster://seed[,seed], or s3://bucket[/prefix][?region=..&endpoint=..]
    /// (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY). Local
    /// misses look there; what the policy shares is uploaded.
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// Only read the shared tier: never upload or delete.
    #[arg(long)]
    remote_read_only: bool,
}

impl RemoteArgs {
    fn apply(&self, builder: CacheBuilder) -> CacheBuilder {
        let Some(url) = &self.remote else {
            return builder;
        };
        let mut settings = capcache::RemoteSettings::new(url);
        if self.remote_read_only {
            settings = settings.mode(capcache::RemoteMode::ReadOnly);
        }
        if let Some(key) = std::env::var_os("CAPCACHE_REMOTE_HMAC_KEY") {
            settings = settings.hmac_key(key.into_encoded_bytes().trim_ascii().to_vec());
        }
        builder.remotes([settings])
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SortBy {
    Name,
    Size,
    Age,
    Hits,
    /// What the entry's miss took to compute: the dearest first.
    Cost,
}

/// Where the cache is.
#[derive(clap::Args)]
struct Location {
    /// Configuration file [default: $CAPCACHE_CONFIG, else the platform config
    /// dir's capcache/config.toml if it exists]. Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cache directory [default: the platform cache directory, e.g. ~/.cache/capcache].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The namespace: where `compile` and `run` store [default: "default",
    /// as the library's]; the only one other commands look at [default: all].
    #[arg(long)]
    namespace: Option<String>,
    /// Use a cache directory that others can write (anyone who can write it
    /// can plant code that will run).
    #[arg(long)]
    allow_insecure_dir: bool,
}

/// Which policy decides, with what settings.
#[derive(clap::Args)]
struct PolicyArgs {
    /// A policy component (.wasm) to use instead of the embedded default
    /// ("default" names the embedded one).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A policy setting, KEY=VALUE (repeatable), e.g. --set cleanup-interval=30m.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

/// Everything `compile` and `run` take about the cache.
#[derive(clap::Args)]
struct CompileOptions {
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    storing: Storing,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Whether compiling stores anything.
#[derive(clap::Args)]
struct Storing {
    /// Compile without the cache.
    #[arg(long)]
    no_cache: bool,
    /// Serve hits only; store and clean nothing.
    #[arg(long)]
    read_only: bool,
    /// How a module file finds its compiled code. "off" (the default, unless
    /// the configuration's `direct-mode` says otherwise): read and hash the
    /// file's bytes every time, so a hit is the code of exactly these bytes.
    /// "trust-file-identity": skip that for a file whose identity (device,
    /// inode, size, times) was seen before; wrong when bytes change and the
    /// identity does not (a file patched through a shared mapping, filesystem
    /// images mounted in turn at one path): only for deploy directories whose
    /// files are never changed in place.
    #[arg(long, value_name = "MODE", value_parser = ["off", "trust-file-identity"])]
    direct_mode: Option<String>,
}

/// The namespace `compile` and `run` use, as the library's builder does.
const DEFAULT_NAMESPACE: &str = "default";

impl Location {
    /// A builder from the configuration file and these flags, for `namespace`.
    fn builder(&self, namespace: &str) -> Result<CacheBuilder> {
        let config = match capcache::Config::locate(self.config.as_deref()) {
            Some(path) => capcache::Config::read(&path)?,
            None => capcache::Config::default(),
        };
        let mut builder = CacheBuilder::from_config(&config)?.namespace(namespace);
        if self.allow_insecure_dir {
            builder = builder.allow_insecure_directory(true);
        }
        if let Some(dir) = &self.dir {
            builder = builder.directory(dir);
        }
        Ok(builder)
    }

    /// The cache root these flags name (or the configuration, or the default).
    fn root(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        let config = match capcache::Config::locate(self.config.as_deref()) {
            Some(path) => capcache::Config::read(&path)?,
            None => capcache::Config::default(),
        };
        Ok(match config.cache.directory {
            Some(dir) => dir,
            None => capcache::default_directory()?,
        })
    }

    /// Opens, without creating anything, the namespace named or every
    /// namespace of the directory: for commands that look or tidy up.
    fn open_existing(&self, policy: Option<&PolicyArgs>) -> Result<Vec<(String, Cache)>> {
        let root = self.root()?;
        let names = match &self.namespace {
            Some(name) => vec![name.clone()],
            None => capcache::namespaces(&root)?,
        };
        names
            .into_iter()
            .map(|name| {
                let mut builder = self.builder(&name)?.if_missing(IfMissing::Fail);
                if let Some(policy) = policy {
                    builder = policy.apply(builder)?;
                }
                Ok((name, builder.open()?))
            })
            .collect()
    }
}

impl PolicyArgs {
    fn apply(&self, mut builder: CacheBuilder) -> Result<CacheBuilder> {
        if let Some(path) = &self.policy {
            builder = builder.policy(Policy::named(path)?);
        }
        for (key, value) in parse_settings(&self.settings)? {
            builder = builder.setting(key, value);
        }
        Ok(builder)
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
/// Exit code for a command line that is wrong (sysexits' EX_USAGE), apart
/// from 1 and 2, which mean what the command found.
const EXIT_USAGE: u8 = 64;
/// Exit code of `run` when capcache could not run the command, or the
/// command trapped: apart from 1 to 124, which a command's own code may be
/// (as `env` and `timeout` keep 125 for themselves).
const EXIT_RUN_FAILED: u8 = 125;

/// An error that carries its own exit code.
#[derive(Debug)]
struct Exit(u8);
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

/// Writes a line to standard output, returning the error (a closed pipe
/// among them) instead of panicking as `println!` does.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}
pub(crate) use out;

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

/// Whether `e` is, at its root, a write to a pipe whose reader has gone
/// (`capcache ls | head -1`): not an error worth a word.
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPCACHE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log piped to a file or a collector
        // gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() { std::process::ExitCode::from(EXIT_USAGE) } else { std::process::ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if is_closed_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Exit>().is_some() => std::process::ExitCode::from(e.downcast_ref::<Exit>().unwrap().0),
        Err(e) => {
            eprintln!("capcache: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compile { modules, show_entry, options } => {
            let entries = if show_entry { EntryNames::Show } else { EntryNames::Hide };
            compile_all(&modules, &options, entries)
        }
        #[cfg(feature = "run")]
        Command::Run { module, args, options } => run_wasi(&module, &args, &options),
        Command::Gc { location, policy } => gc(&location, &policy),
        Command::Stats { json, zero, location } => stats(&location, json, zero),
        Command::Ls { sort, location } => ls(&location, sort),
        Command::Verify { fix, location } => verify(&location, fix),
        Command::Clear { location } => clear(&location),
        Command::Policy(PolicyCommand::Check { policy, settings }) => policy::check(&policy, &settings),
        Command::Remote(command) => remote(command),
        Command::Policy(PolicyCommand::Test { policy, settings, workload, expectations, json, show_names }) => {
            let names = if show_names { policy::Names::Show } else { policy::Names::Hide };
            policy::test(&policy, &settings, &workload, &expectations, json, names)
        }
        Command::Policy(PolicyCommand::Install { policy, location }) => policy::install(&policy, &location.root()?),
        Command::Policy(PolicyCommand::New { name, dir, sdk, lang }) => policy::new(&name, dir.as_deref(), sdk.as_deref(), lang),
    }
}

/// Opens the cache to compile through; a directory that cannot be used only
/// costs the cache (a policy or setting the user named must work, and a bad
/// one is an error).
fn open_for_compiling(options: &CompileOptions) -> Result<Cache> {
    let CompileOptions { location, policy, storing, remote } = options;
    if storing.no_cache {
        return Ok(Cache::disabled());
    }
    let namespace = location.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let builder = remote.apply(policy.apply(location.builder(namespace)?)?);
    let builder = if storing.read_only { builder.read_only(true) } else { builder };
    let builder = match &storing.direct_mode {
        Some(mode) => builder.direct_mode(mode.parse().map_err(anyhow::Error::msg)?),
        None => builder,
    };
    match builder.open() {
        Ok(cache) => Ok(cache),
        Err(
            e @ (capcache::Error::Directory { .. }
            | capcache::Error::NotADirectory { .. }
            | capcache::Error::NoDirectory),
        ) => {
            tracing::warn!("cache unavailable, compiling without it: {:#}", anyhow::Error::from(e));
            Ok(Cache::disabled())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `compile` prints each module's entry name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryNames {
    Show,
    Hide,
}

fn compile_all(modules: &[PathBuf], options: &CompileOptions, entries: EntryNames) -> Result<()> {
    let engine = wasmtime::Engine::default();
    let cache = open_for_compiling(options)?;
    let mut failed = 0;
    let bar = progress_bar(modules.len() as u64, "compiling");
    for path in modules {
        match compile(&engine, &cache, path) {
            Ok((source, elapsed)) => {
                let what = match source {
                    Source::Hit => "hit",
                    Source::RemoteHit => "remote",
                    Source::Miss => "miss",
                    _ => "uncached",
                };
                let entry = match entries {
                    EntryNames::Show => {
                        let kind = capcache::wasmtime::Kind::Module;
                        let max_size = cache.max_module_size();
                        let name = capcache::wasmtime::artifact_name_of_file(&engine, kind, path, max_size)
                            .map_err(anyhow::Error::from)?;
                        format!("{name}  ")
                    }
                    EntryNames::Hide => String::new(),
                };
                let line = format!("{what:6}  {:9.2} ms  {entry}{}", elapsed.as_secs_f64() * 1e3, path.display());
                bar.suspend(|| out!("{line}"))?;
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("capcache: {e:#}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Dropping the cache lets the worker finish what must be stored; a
    // flush would also start the policy to hear of the hits, which a
    // process that only hit never needs.
    drop(cache);
    if failed > 0 {
        bail!("{failed} of {} modules failed to compile", modules.len());
    }
    Ok(())
}

/// Gets a usable module for `path` through the cache (by the file's bytes,
/// unless direct mode trusts its identity); returns where it came from and
/// how long that took.
fn compile(engine: &wasmtime::Engine, cache: &Cache, path: &Path) -> Result<(Source, std::time::Duration)> {
    let started = Instant::now();
    let (_module, source) = capcache::wasmtime::load_module_file_with_source(cache, engine, path)
        .map_err(anyhow::Error::from)
        .context("cannot compile")?;
    Ok((source, started.elapsed()))
}

#[cfg(feature = "run")]
fn run_wasi(module: &Path, args: &[String], options: &CompileOptions) -> Result<()> {
    let engine = wasmtime::Engine::default();
    let cache = open_for_compiling(options)?;
    let code = match run_command(&engine, &cache, module, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("capcache: {e:#}");
            return Err(Exit(EXIT_RUN_FAILED).into());
        }
    };
    drop(cache);
    match code {
        0 => Ok(()),
        // WASI allows exit codes 0 to 125 (any other traps, and is 125 here):
        // the command's own are never confused with capcache's.
        code => Err(Exit(code.clamp(1, 255) as u8).into()),
    }
}

/// Runs a WASI command module; returns its exit code.
#[cfg(feature = "run")]
fn run_command(engine: &wasmtime::Engine, cache: &Cache, path: &Path, args: &[String]) -> Result<i32> {
    use wasmtime_wasi::p1::WasiP1Ctx;
    let module = capcache::wasmtime::load_module_file(cache, engine, path)
        .map_err(anyhow::Error::from)
        .context("cannot compile")?;
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

fn gc(location: &Location, policy: &PolicyArgs) -> Result<()> {
    for (namespace, cache) in location.open_existing(Some(policy))? {
        if cache.is_read_only() {
            bail!("namespace {namespace}: the cache cannot be written (read-only), and maintenance removes and rewrites files");
        }
        let report = cache.maintain().with_context(|| {
            format!("namespace {namespace}: the policy's maintenance pass failed (its fault is logged above)")
        })?;
        out!("{namespace}: {}", report.summary)?;
        let state = cache.state_usage().with_context(|| format!("namespace {namespace}: cannot list the policy's state"))?;
        if state.over_quota() {
            out!("{namespace}: {}", state_line(&state))?;
        }
    }
    Ok(())
}

/// The policy's state in a line, with a way out when it is over its quota.
fn state_line(state: &capcache::StateUsage) -> String {
    let line = format!("policy state    {} files, {} bytes (quota {} files, {} bytes)", state.files, state.bytes, state.max_files, state.max_bytes);
    if state.over_quota() {
        format!("{line}: OVER QUOTA, the policy's writes are refused; `capcache clear` removes it with the entries")
    } else {
        line
    }
}

fn stats(location: &Location, json: bool, zero: bool) -> Result<()> {
    let caches = location.open_existing(None)?;
    if zero {
        for (namespace, cache) in &caches {
            cache.zero_stats().with_context(|| format!("namespace {namespace}: cannot forget the statistics"))?;
        }
        out!("statistics zeroed")?;
        return Ok(());
    }
    let mut reports = Vec::new();
    for (namespace, cache) in &caches {
        let entries = cache.entries().with_context(|| format!("namespace {namespace}: cannot list the entries"))?;
        let state = cache.state_usage().with_context(|| format!("namespace {namespace}: cannot list the policy's state"))?;
        reports.push((namespace, cache.lifetime_stats(), entries, state, cache.tier_stats()));
    }
    if json {
        let namespaces: Vec<_> = reports
            .iter()
            .map(|(namespace, stats, entries, state, tiers)| {
                let tiers: Vec<_> = tiers.iter().map(|(url, counters)| serde_json::json!({ "url": url, "counters": counters })).collect();
                serde_json::json!({
                    "tiers": tiers,
                    "namespace": namespace,
                    "counters": stats,
                    "hit_rate": stats.hit_rate(),
                    "entries": entries.len(),
                    "bytes_stored": entries.iter().map(|e| e.stored_size).sum::<u64>(),
                    "bytes_raw": entries.iter().map(|e| e.raw_size).sum::<u64>(),
                    "state_files": state.files,
                    "state_bytes": state.bytes,
                })
            })
            .collect();
        let value = serde_json::json!({ "directory": location.root()?, "namespaces": namespaces });
        out!("{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    out!("directory       {}", location.root()?.display())?;
    for (namespace, stats, entries, state, tiers) in &reports {
        out!()?;
        out!("namespace       {namespace}")?;
        out!("hits            {}", stats.hits)?;
        out!("misses          {}", stats.misses)?;
        out!("hit rate        {:.1} %", stats.hit_rate() * 100.0)?;
        out!("entries         {}", entries.len())?;
        out!("bytes stored    {}", entries.iter().map(|e| e.stored_size).sum::<u64>())?;
        out!("bytes decoded   {}", entries.iter().map(|e| e.raw_size).sum::<u64>())?;
        out!("{}", state_line(state))?;
        out!("inserts         {}", stats.inserts)?;
        out!("skipped         {}", stats.skipped)?;
        out!("evictions       {}", stats.removed)?;
        out!("recoded         {}", stats.recoded)?;
        out!("corrupt         {}", stats.corrupt)?;
        out!("untrusted       {}", stats.untrusted)?;
        out!("failures        {}", stats.failures)?;
        out!("policy faults   {}", stats.policy_faults)?;
        out!("events dropped  {}", stats.events_dropped)?;
        let remote_lookups = stats.remote_hits + stats.remote_misses + stats.remote_errors + stats.remote_rejected + stats.remote_skipped;
        if remote_lookups + stats.remote_uploads + stats.remote_upload_failures > 0 {
            out!(
                "shared tier     {} hits, {} misses, {} errors, {} refused values, {} skipped while cooling off",
                stats.remote_hits,
                stats.remote_misses,
                stats.remote_errors,
                stats.remote_rejected,
                stats.remote_skipped
            )?;
            out!("  uploads       {} ({} failed)", stats.remote_uploads, stats.remote_upload_failures)?;
            out!("  bytes         {} in, {} out", stats.remote_bytes_in, stats.remote_bytes_out)?;
            out!("  time waited   {:.1} ms", stats.remote_us as f64 / 1e3)?;
            // A chain: each tier's own, in its order.
            for (n, (url, tier)) in tiers.iter().enumerate().filter(|_| tiers.len() > 1) {
                out!(
                    "  tier {}        {url}: {} hits, {} misses, {} errors, {} refused, {} skipped; {} uploads ({} failed)",
                    n + 1,
                    tier.remote_hits,
                    tier.remote_misses,
                    tier.remote_errors,
                    tier.remote_rejected,
                    tier.remote_skipped,
                    tier.remote_uploads,
                    tier.remote_upload_failures
                )?;
            }
        }
    }
    Ok(())
}

/// `capcache remote check|push|pull`, on the namespace `compile` uses (or
/// `--namespace`).
fn remote(command: RemoteCommand) -> Result<()> {
    let (location, remote_args) = match &command {
        RemoteCommand::Check { location, remote } | RemoteCommand::Push { location, remote } | RemoteCommand::Pull { location, remote } => {
            (location, remote)
        }
    };
    let namespace = location.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let cache = remote_args.apply(location.builder(namespace)?).open()?;
    match command {
        RemoteCommand::Check { .. } => {
            let checks = cache.check_remote().ok_or(capcache::Error::NoRemote)?;
            for check in &checks {
                out!("{}  {}", if check.ok { "ok  " } else { "FAIL" }, check.finding)?;
            }
            if checks.iter().any(|c| !c.ok) {
                bail!("the shared tier is not usable as it is (see above)");
            }
        }
        RemoteCommand::Push { .. } => {
            let moved = cache.push_to_remote()?;
            out!("{} entries uploaded, {} there already, {} failed", moved.copied, moved.present, moved.failed)?;
        }
        RemoteCommand::Pull { .. } => {
            let moved = cache.pull_from_remote()?;
            out!("{} entries fetched, {} here already, {} failed", moved.copied, moved.present, moved.failed)?;
        }
    }
    Ok(())
}

fn ls(location: &Location, sort: SortBy) -> Result<()> {
    let mut rows: Vec<(String, EntryInfo)> = Vec::new();
    for (namespace, cache) in location.open_existing(None)? {
        let entries = cache.entries().with_context(|| format!("namespace {namespace}: cannot list the entries"))?;
        rows.extend(entries.into_iter().map(|e| (namespace.clone(), e)));
    }
    match sort {
        SortBy::Name => rows.sort_by(|a, b| (&a.1.name, &a.0).cmp(&(&b.1.name, &b.0))),
        SortBy::Size => rows.sort_by_key(|a| std::cmp::Reverse(a.1.stored_size)),
        SortBy::Age => rows.sort_by_key(|a| a.1.created_ms),
        SortBy::Hits => rows.sort_by_key(|a| std::cmp::Reverse(a.1.hits)),
        SortBy::Cost => rows.sort_by_key(|a| std::cmp::Reverse(a.1.cost_us)),
    }
    let now = capcache::Clock::now_ms(&capcache::SystemClock);
    out!("{:43}  {:>12}  {:>12}  {:7}  {:>10}  {:>6}  {:>10}  namespace", "name", "stored", "decoded", "codec", "age", "hits", "compile")?;
    for (namespace, e) in &rows {
        let codec = match e.codec {
            capcache::StoredCodec::Raw => "raw".to_string(),
            capcache::StoredCodec::Zstd { level } => format!("zstd:{level}"),
        };
        let age = std::time::Duration::from_secs(now.saturating_sub(e.created_ms) / 1000);
        let cost = if e.cost_us == 0 { "-".to_string() } else { format!("{:.1}ms", e.cost_us as f64 / 1e3) };
        out!(
            "{:43}  {:>12}  {:>12}  {:7}  {:>10}  {:>6}  {:>10}  {namespace}",
            e.name,
            e.stored_size,
            e.raw_size,
            codec,
            format_age(age),
            e.hits,
            cost
        )?;
    }
    Ok(())
}

fn verify(location: &Location, fix: bool) -> Result<()> {
    let (mut checked, mut bad, mut removed) = (0, 0, 0);
    for (namespace, cache) in location.open_existing(None)? {
        if fix && cache.is_read_only() {
            bail!("namespace {namespace}: the cache cannot be written (read-only), so --fix cannot remove anything");
        }
        let total = cache.entries().map(|e| e.len() as u64).unwrap_or(0);
        let bar = progress_bar(total, "verifying");
        let report = cache
            .verify(if fix { capcache::VerifyMode::RemoveBad } else { capcache::VerifyMode::Report }, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .with_context(|| format!("namespace {namespace}: cannot list the entries"))?;
        bar.finish_and_clear();
        for (name, problem) in &report.bad {
            out!("bad  {name} ({namespace}): {problem}")?;
        }
        let state = cache.state_usage().with_context(|| format!("namespace {namespace}: cannot list the policy's state"))?;
        if state.over_quota() {
            out!("{namespace}: {}", state_line(&state))?;
        }
        checked += report.checked;
        bad += report.bad.len() as u64;
        removed += report.removed;
    }
    out!("{checked} entries checked, {bad} bad, {removed} removed")?;
    if bad > removed {
        return Err(Exit(EXIT_BAD_ENTRIES).into());
    }
    Ok(())
}

fn clear(location: &Location) -> Result<()> {
    let mut removed = 0;
    for (namespace, cache) in location.open_existing(None)? {
        removed += cache.clear().with_context(|| format!("namespace {namespace}: cannot clear"))?;
    }
    out!("{removed} entries removed")?;
    Ok(())
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
