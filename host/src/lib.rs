//! capcache: a compiled-module cache for WebAssembly hosts whose policy (what to
//! keep, how hard to compress, what to evict) is a sandboxed WebAssembly
//! component.
//!
//! The host owns the mechanics: keys (SHA-256, in separate domains; callers
//! make only [`ValueKey`]s), a
//! checked entry format ([`StoredCodec`]), the on-disk layout and atomic
//! writes, usage counts. The policy ([`Policy`], a component implementing
//! `wit/policy.wit`) owns the decisions and sees the cache only through a
//! capability over one namespace; the host runs it under memory and CPU limits
//! ([`HostSettings`]) and feeds it events on a worker thread, off the caller's
//! path. [`Cache`] ties them together; [`wasmtime`] loads modules and
//! components through it:
//!
//! ```no_run
//! use capcache::{Cache, Policy};
//! let cache = Cache::builder()
//!     .directory("/tmp/my-cache")
//!     .policy(Policy::default())
//!     .open()?;
//! let compiled = cache.get_or_insert_with(b"module bytes and engine config", || {
//!     Ok::<_, std::convert::Infallible>(b"expensive result".to_vec())
//! })?;
//! assert_eq!(compiled.bytes, b"expensive result");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A cache failure never fails the caller: it degrades to computing the value,
//! with a `tracing` warning.

#![deny(missing_docs)]

// The mechanics, one concern per module, private: what an embedder uses is
// re-exported below, so internals (the raw directory handles, the entry
// codec, the usage journal) are not API.
mod bindings;
mod cache;
mod clock;
pub mod config;
mod entry;
mod error;
mod flight;
#[cfg(feature = "incremental-cache")]
pub mod incremental;
mod input;
mod key;
mod lock;
mod mapped;
mod namespace;
mod platform;
mod policy;
mod remote;
mod settings;
mod simulate;
mod stats;
mod store;
mod usage;
mod view;
#[cfg(feature = "adapter")]
pub mod wasmtime;
mod worker;

pub use cache::{
    Cache, CacheBuilder, Cached, EntryInfo, MaintainReport, RemoteCheck, RemoteTransfer, Source, StateUsage, VerifyMode, VerifyReport,
    default_directory, namespaces,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, DirectMode};
pub use entry::StoredCodec;
pub use error::Error;
pub use key::ValueKey;
pub use policy::{
    InstalledPolicy, MAX_POLICY_INSTANCES, MAX_POLICY_MEMORIES, MAX_POLICY_SIZE, MAX_POLICY_TABLES, POLICY_CODE_KEPT_BYTES, Policy, PolicyCode,
    PolicyInterface, QUICK_CODE_MIN,
};
pub use remote::{MIN_HMAC_KEY_LEN, RemoteMode, RemoteSettings, S3Credentials};
pub use settings::HostSettings;
pub use simulate::{
    CallTimes, Expectation, Lookup, REAL_ARTIFACT_SIZES, SimulatedModule, Simulation, SimulationReport, Workload, modelled_stored_size,
};
pub use stats::StatsSnapshot;
pub use store::IfMissing;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
