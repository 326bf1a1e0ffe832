//! capcache: a compiled-module cache for WebAssembly hosts whose policy (what to
//! keep, how hard to compress, what to evict) is a sandboxed WebAssembly
//! component.
//!
//! The host owns the mechanics: keys ([`key`]), the entry format ([`entry`]),
//! the on-disk layout and atomic writes ([`store`]), usage counts ([`usage`]).
//! The policy owns the decisions and sees the cache only through the capability
//! in [`view`]; [`policy`] runs it under memory and CPU limits, and [`worker`]
//! feeds it events off the caller's path. [`Cache`] ties them together:
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

mod bindings;
mod input;
pub mod cache;
pub mod clock;
pub mod config;
pub mod entry;
pub mod error;
#[cfg(feature = "incremental-cache")]
pub mod incremental;
pub mod key;
mod mapped;
pub mod policy;
pub mod settings;
pub mod stats;
pub mod store;
pub mod usage;
pub mod view;
#[cfg(feature = "adapter")]
pub mod wasmtime;
mod worker;

pub use bindings::exports::capcache::policy::policy::MaintainReport;
pub use entry::StoredCodec;
pub use store::IfMissing;
pub use cache::{Cache, CacheBuilder, Cached, EntryInfo, Source, VerifyReport};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use error::Error;
pub use key::{Key, KeyDomain};
pub use policy::Policy;
pub use settings::HostSettings;
pub use stats::StatsSnapshot;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
