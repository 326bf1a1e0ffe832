//! Errors that reach the user: they name what was wrong and what to do.
//!
//! A variant that wraps an I/O error keeps it as its `source()` and does not
//! repeat it in its own message, so that a chain printed whole (`{:#}` with
//! anyhow, or a walk over `source()`) says each thing once.

use std::path::PathBuf;

/// Why a cache could not be opened, or a policy not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cache directory could not be created, opened or probed.
    #[error("cannot use cache directory {path}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The cache directory names something that is not a directory.
    #[error("cache directory {path} is not a directory: name a directory (it is created if missing)")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Nothing has been cached at this path (a command that only looks never
    /// creates one).
    #[error("no cache at {path}: nothing has been stored there (check the directory or --dir)")]
    NoCache {
        /// The missing cache root or namespace.
        path: PathBuf,
    },
    /// A namespace name that cannot be a directory name of the cache.
    #[error(
        "invalid namespace {0:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ - (not starting with '.', and not \"policy-code\")"
    )]
    InvalidNamespace(String),
    /// The policy file could not be read.
    #[error("cannot read policy component {path}")]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The policy's bytes are not a component wasmtime accepts.
    #[error("policy {policy}: {reason}")]
    PolicyComponent {
        /// The policy's name or path.
        policy: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The policy was built against another contract.
    #[error(
        "policy {policy} does not match the WIT world {world}@{version}: {reason}",
        world = crate::bindings::POLICY_WORLD,
        version = crate::bindings::CONTRACT_VERSION
    )]
    PolicyWorld {
        /// The policy's name or path.
        policy: String,
        /// What does not match.
        reason: String,
    },
    /// The shared tier's settings cannot be used.
    #[error("shared tier {url}: {reason}")]
    Remote {
        /// The server's URL, password hidden.
        url: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A shared-tier operation was asked of a cache without one.
    #[error("no shared tier is configured: set [cache.remote] url in the configuration file, or pass --remote redis://HOST:PORT")]
    NoRemote,
    /// The policy does not know a setting it was given.
    #[error("policy {policy} refused setting {key:?}: it has no such setting")]
    UnknownSetting {
        /// The policy's name or path.
        policy: String,
        /// The setting's name.
        key: String,
    },
    /// The policy refused a setting's value.
    #[error("policy {policy} refused setting {key} = {value:?}: expected {expected}")]
    InvalidSetting {
        /// The policy's name or path.
        policy: String,
        /// The setting's name.
        key: String,
        /// The value given.
        value: String,
        /// What the policy accepts.
        expected: String,
    },
    /// The policy trapped or ran out of time or memory in `configure`.
    #[error("policy {policy} failed while being configured: {reason}")]
    PolicyFault {
        /// The policy's name or path.
        policy: String,
        /// What happened.
        reason: String,
    },
    /// The cache directory can be written by someone other than its owner.
    #[error(
        "cache directory {path} is {problem}: anyone who can write it can plant compiled code that will run; \
         {fix}, or allow it explicitly (allow_insecure_directory, --allow-insecure-dir)",
        fix = crate::platform::INSECURE_DIRECTORY_FIX
    )]
    InsecureDirectory {
        /// The directory.
        path: PathBuf,
        /// Who else can write it.
        problem: String,
    },
    /// The cache directory's path is a symbolic link that another user owns.
    #[error(
        "cache directory {path} is a symbolic link {problem}: not followed, since in a \
         directory such as /tmp anyone can plant one that leads to a directory of their choosing; name a \
         directory you own"
    )]
    UntrustedSymlink {
        /// The link.
        path: PathBuf,
        /// Whose it is (its owner, and this process's user).
        problem: String,
    },
    /// The system refused a thread the cache needs.
    #[error("cannot start {what}'s thread")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No directory was given and the platform has no cache directory.
    #[error("no directory given for the cache and the platform has no cache directory: give one")]
    NoDirectory,
}
