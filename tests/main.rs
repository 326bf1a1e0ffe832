//! The host's integration tests, as one binary (one link of wasmtime instead
//! of one per file), with a module per concern. Each loads real policy
//! components: the default one the crate ships, and the others built from
//! `guest/` by `support`.

#[macro_use]
mod support;

mod adapter;
mod authoring;
mod cache;
mod chain;
mod cluster;
mod cli;
mod cold_start;
mod config;
mod corruption;
mod eviction;
mod faults;
mod file_loads;
mod hostile;
mod in_use;
mod incremental;
mod languages;
mod model;
mod recompression;
mod remote;
mod s3;
mod structure;
mod sandbox;
mod scale;
mod swap;
mod tls;
mod trust;
