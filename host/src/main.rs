//! The `capcache` command.

use anyhow::{Context, Result, bail};
use capcache::{Cache, Policy, Source};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "capcache", version, about = "A compiled-module cache for WebAssembly hosts, with a sandboxed policy")]
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
    /// Run the policy's maintenance pass now and print its report.
    Gc {
        #[command(flatten)]
        cache: CacheArgs,
    },
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
        for setting in &self.settings {
            let Some((key, value)) = setting.split_once('=') else {
                bail!("--set {setting:?}: expected KEY=VALUE");
            };
            builder = builder.setting(key.trim(), value.trim());
        }
        Ok(builder.open()?)
    }
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
            // A policy or setting the user named explicitly must work; a cache
            // directory that cannot be used only costs the cache.
            let cache = match cache.open(&namespace) {
                Ok(cache) => cache,
                Err(e) if e.downcast_ref::<capcache::Error>().is_some_and(|e| {
                    matches!(e, capcache::Error::Directory { .. } | capcache::Error::NoDirectory)
                }) =>
                {
                    tracing::warn!("cache unavailable, compiling without it: {e:#}");
                    Cache::disabled()
                }
                Err(e) => return Err(e),
            };
            let mut failed = 0;
            for path in &modules {
                match compile(&engine, &cache, path) {
                    Ok((source, elapsed)) => {
                        let what = match source {
                            Source::Hit => "hit",
                            Source::Computed => "miss",
                        };
                        println!("{what:4}  {:9.2} ms  {}", elapsed.as_secs_f64() * 1e3, path.display());
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("capcache: {}: {e:#}", path.display());
                    }
                }
            }
            cache.flush();
            if failed > 0 {
                bail!("{failed} of {} modules failed to compile", modules.len());
            }
            Ok(())
        }
        Command::Gc { cache } => {
            let cache = cache.open(&namespace)?;
            let report = cache.maintain().context("the policy's maintenance pass failed (see the log)")?;
            println!("{}", report.summary);
            Ok(())
        }
    }
}

/// Gets a usable module for `path` through the cache; returns where it came
/// from and how long that took.
fn compile(engine: &wasmtime::Engine, cache: &Cache, path: &PathBuf) -> Result<(Source, std::time::Duration)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = wat::parse_bytes(&bytes).with_context(|| format!("{} is neither wasm nor wat", path.display()))?;
    let started = Instant::now();
    let key = capcache::Key::of_parts(&[b"core-module", &bytes]);
    let cached = cache.get_or_insert_with(&key.0, || engine.precompile_module(&bytes))?;
    // SAFETY: the artifact was produced by `precompile_module` of an engine
    // with the same compatibility hash (it is in the namespace), and capcache
    // verified the entry's digest on reading it.
    let module = unsafe { wasmtime::Module::deserialize(engine, &cached.bytes) };
    let source = match module {
        Ok(_) => cached.source,
        Err(e) => {
            tracing::warn!("cached artifact for {} does not load ({e:#}); compiling", path.display());
            wasmtime::Module::new(engine, &bytes)?;
            Source::Computed
        }
    };
    Ok((source, started.elapsed()))
}
