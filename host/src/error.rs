//! Errors that reach the user: they name what was wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cache directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid namespace {0:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ - (not starting with '.')")]
    InvalidNamespace(String),
    #[error("cannot read policy component {path}: {source}")]
    PolicyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy {policy}: not a valid policy component: {reason}")]
    PolicyComponent { policy: String, reason: String },
    #[error("policy {policy} does not match the WIT world capcache:policy/policy-world@0.1.0: {reason}")]
    PolicyWorld { policy: String, reason: String },
    #[error("policy {policy} refused setting {key:?}: it has no such setting")]
    UnknownSetting { policy: String, key: String },
    #[error("policy {policy} refused setting {key} = {value:?}: expected {expected}")]
    InvalidSetting {
        policy: String,
        key: String,
        value: String,
        expected: String,
    },
    #[error("policy {policy} failed while being configured: {reason}")]
    PolicyFault { policy: String, reason: String },
    #[error(
        "cache directory {path} is {problem}: anyone who can write it can plant compiled code that will run; \
         fix its ownership or permissions, or allow it explicitly (allow_insecure_directory, --allow-insecure-dir)"
    )]
    InsecureDirectory { path: PathBuf, problem: String },
    #[error("no directory given for the cache and the platform has no cache directory")]
    NoDirectory,
}
