//! The configuration file, in the spirit of wasmtime's cache configuration:
//!
//! ```toml
//! [cache]
//! enabled = true                      # false: compute everything, store nothing
//! directory = "/var/cache/capcache"   # default: the platform cache directory
//! policy = "default"                  # or the path of a policy component (.wasm)
//! read-only = false                   # serve hits only
//! allow-insecure-directory = false    # see SECURITY.md
//! direct-mode = "off"                 # or "trust-file-identity": see DirectMode
//!
//! [cache.policy-settings]             # passed to the policy's `configure`
//! cleanup-interval = "30m"
//! file-count-soft-limit = 10000
//!
//! [cache.host]                        # the host's limits on the policy
//! event-queue-size = 16
//! policy-memory-limit = 67108864      # bytes
//! admit-deadline-ms = 100
//! event-deadline-ms = 250
//! maintain-deadline-ms = 30000
//! max-module-size = 1073741824        # bytes: the largest module file read
//! max-state-files = 256               # the policy's state files in a namespace
//! max-state-bytes = 16777216          # bytes: all of them together
//!
//! [cache.remote]                      # a shared tier on Redis (off without it);
//!                                     # [[cache.remote]] once per tier for a chain
//! url = "redis://cache.internal:6379" # redis://[user:password@]host:port[/db]
//! prefix = "capcache"                 # keys are <prefix>:<namespace>:<entry>
//! mode = "read-write"                 # or "read-only": never write
//! connect-timeout-ms = 100
//! timeout-ms = 3000                   # one whole command, request and reply
//! cool-off-ms = 30000                 # skip the tier this long after a failure
//! hmac-key-file = "/etc/capcache/hmac.key"  # or the env CAPCACHE_REMOTE_HMAC_KEY
//! ttl-seconds = 604800                # an expiry for values written (default none)
//! max-value-size = 536870912         # bytes: longer values are refused unread
//! tls-ca-file = "/etc/capcache/ca.pem"      # rediss://: a private CA to trust too
//! tls-cert-file = "/etc/capcache/client.pem" # rediss://: a client certificate,
//! tls-key-file = "/etc/capcache/client.key"  # and its key, for tls-auth-clients
//!
//! [[cache.remote]]                    # a second tier, asked after the first:
//! url = "s3://fleet-cache/wasm?region=eu-west-1"  # a bucket (endpoint=... for
//!                                     # MinIO, Ceph, R2, GCS); key prefix wasm/
//! access-key-id = "AKIA..."           # or the env AWS_ACCESS_KEY_ID, with
//! secret-access-key-file = "/etc/capcache/s3.secret"  # AWS_SECRET_ACCESS_KEY
//! ```
//!
//! Every key has a default. Unknown keys and bad values are errors that name
//! the key, the value and what is allowed.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[cache]`.
    #[serde(default)]
    pub cache: CacheSection,
}

/// `[cache]`: where the cache is and how it is used.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CacheSection {
    /// `enabled`: `false` computes everything and stores nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `directory`: the cache root (default: the platform cache directory).
    pub directory: Option<PathBuf>,
    /// `policy`: `"default"` or the path of a policy component.
    #[serde(default)]
    pub policy: PolicyChoice,
    /// `read-only`: serve hits only.
    #[serde(default)]
    pub read_only: bool,
    /// `allow-insecure-directory`: see SECURITY.md.
    #[serde(default)]
    pub allow_insecure_directory: bool,
    /// `direct-mode`: `"off"` (the default: file loads hash the file's
    /// bytes) or `"trust-file-identity"` (see [`DirectMode`]).
    #[serde(default, deserialize_with = "direct_mode")]
    pub direct_mode: DirectMode,
    /// `[cache.policy-settings]`: passed to the policy's `configure`.
    #[serde(default)]
    pub policy_settings: BTreeMap<String, SettingValue>,
    /// `[cache.host]`: the host's limits.
    #[serde(default)]
    pub host: HostSection,
    /// `[cache.remote]`: the shared tier, if any; or `[[cache.remote]]`,
    /// once per tier: a chain, asked in the order written (fastest first).
    #[serde(default, deserialize_with = "one_or_many")]
    pub remote: Vec<RemoteSection>,
}

/// `[cache.remote]` (one tier) or `[[cache.remote]]` (a chain), read with the
/// messages of `RemoteSection`'s own fields.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<RemoteSection>, D::Error> {
    struct Tiers;
    impl<'de> serde::de::Visitor<'de> for Tiers {
        type Value = Vec<RemoteSection>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a [cache.remote] table, or [[cache.remote]] tables for a chain of tiers")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            RemoteSection::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|one| vec![one])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    }
    deserializer.deserialize_any(Tiers)
}

/// `[cache.remote]`: a shared tier on Redis (see [`crate::RemoteSettings`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RemoteSection {
    /// `url`: `redis://[user:password@]host:port[/db]`, or `rediss://` for
    /// TLS.
    pub url: String,
    /// `prefix` of every key (default `capcache`).
    pub prefix: Option<String>,
    /// `mode`: `read-write` (default) or `read-only`.
    pub mode: Option<String>,
    /// `connect-timeout-ms` (default 100).
    pub connect_timeout_ms: Option<u64>,
    /// `timeout-ms` of one command (default 3000).
    pub timeout_ms: Option<u64>,
    /// `cool-off-ms` after a failure (default 30000).
    pub cool_off_ms: Option<u64>,
    /// `hmac-key-file`: a file holding the HMAC key.
    pub hmac_key_file: Option<PathBuf>,
    /// `ttl-seconds`: an expiry for every value written.
    pub ttl_seconds: Option<u64>,
    /// `max-value-size`: the longest value fetched or uploaded, in bytes
    /// (default 536870912, Redis's own limit).
    pub max_value_size: Option<u64>,
    /// `tls-ca-file`: with `rediss://`, PEM certificates of CAs to trust
    /// besides the shipped roots.
    pub tls_ca_file: Option<PathBuf>,
    /// `tls-cert-file`: with `rediss://`, the client's PEM certificate
    /// chain (with `tls-key-file`).
    pub tls_cert_file: Option<PathBuf>,
    /// `tls-key-file`: the client certificate's PEM private key.
    pub tls_key_file: Option<PathBuf>,
    /// `access-key-id`: with `s3://`, the key that signs requests (with
    /// `secret-access-key-file`); default: the environment's.
    pub access_key_id: Option<String>,
    /// `secret-access-key-file`: a file holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            enabled: true,
            directory: None,
            policy: PolicyChoice::Default,
            read_only: false,
            allow_insecure_directory: false,
            direct_mode: DirectMode::Off,
            policy_settings: BTreeMap::new(),
            host: HostSection::default(),
            remote: Vec::new(),
        }
    }
}

/// How a file load (`capcache::wasmtime::load_module_file` and its kin, so
/// `capcache compile` and `run`) finds a file's artifact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectMode {
    /// Read and hash the file's bytes on every load (large files on all
    /// cores), then look the artifact of those bytes up: a hit is the code of
    /// exactly the bytes the file holds now. The default.
    #[default]
    Off,
    /// Trust the file's identity, as ccache's direct mode and "sloppiness"
    /// do: a manifest maps what the kernel says of the file (device, inode,
    /// size, modification and change times; on Linux also the mount's unique
    /// ID, the birth time and the inode's generation) to the artifact its
    /// bytes had, and a later load whose file says the same skips reading and
    /// hashing it. A manifest is recorded only once both of the file's times
    /// are a few seconds old, and only if the identity did not change while
    /// the file was read.
    ///
    /// **Known to be wrong** when the bytes change and the identity does not:
    /// - a file written through a shared writable mapping (`mmap` with
    ///   `MAP_SHARED`, as linkers and packers write their output) changes
    ///   neither its modification nor its change time for writes to a page
    ///   that is already dirty, even after `msync`;
    /// - filesystem images (container layers, squashfs, erofs, composefs,
    ///   ext4 images, Nix-style stores) carry whatever times their builder
    ///   chose, and loop devices and anonymous device numbers are reused
    ///   between mounts, so two releases mounted in turn at one path can look
    ///   the same;
    /// - a network filesystem whose server's clock runs behind this host's.
    ///
    /// Use it only for directories whose files are never changed in place
    /// and that you control: an immutable deploy directory, where every
    /// release gets new files.
    TrustFileIdentity,
}

impl std::str::FromStr for DirectMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(DirectMode::Off),
            "trust-file-identity" => Ok(DirectMode::TrustFileIdentity),
            other => Err(format!("{other:?} is not a direct mode: expected \"off\" (the default: hash the file's bytes) or \"trust-file-identity\"")),
        }
    }
}

fn yes() -> bool {
    true
}

fn direct_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DirectMode, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

/// `"default"`, or a path to a policy component.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum PolicyChoice {
    /// The embedded default policy.
    #[default]
    Default,
    /// A policy component at this path.
    File(PathBuf),
}

impl<'de> Deserialize<'de> for PolicyChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "default" => Ok(PolicyChoice::Default),
            "" => Err(serde::de::Error::custom("policy is empty: expected \"default\" or the path of a .wasm component")),
            path => Ok(PolicyChoice::File(PathBuf::from(path))),
        }
    }
}

/// A policy setting's value: written as a string, number or boolean, and
/// passed to the policy as text.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingValue(pub String);

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SettingValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
/// `[cache.host]`: the host's limits, each [`crate::HostSettings`]'s field of
/// the same name (durations in milliseconds).
pub struct HostSection {
    /// `event-queue-size`.
    pub event_queue_size: Option<u32>,
    /// `policy-memory-limit`, bytes.
    pub policy_memory_limit: Option<u64>,
    /// `admit-deadline-ms`.
    pub admit_deadline_ms: Option<u64>,
    /// `event-deadline-ms`.
    pub event_deadline_ms: Option<u64>,
    /// `maintain-deadline-ms`.
    pub maintain_deadline_ms: Option<u64>,
    /// `max-module-size`, bytes.
    pub max_module_size: Option<u64>,
    /// `max-state-files`.
    pub max_state_files: Option<u64>,
    /// `max-state-bytes`.
    pub max_state_bytes: Option<u64>,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid configuration.
    #[error("configuration {origin}: {message}")]
    Invalid {
        /// The file (or other origin) of the text.
        origin: String,
        /// What is wrong, naming the key, the value and what is allowed.
        message: String,
    },
}

impl Config {
    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid { origin: origin.to_string(), message: e.to_string().trim_end().to_string() })?;
        let host = &config.cache.host;
        let checks: [(&str, Option<u64>, u64, u64); 8] = [
            ("event-queue-size", host.event_queue_size.map(u64::from), 1, 1 << 20),
            ("policy-memory-limit", host.policy_memory_limit, 1 << 20, 4 << 30),
            ("admit-deadline-ms", host.admit_deadline_ms, 1, 60_000),
            ("event-deadline-ms", host.event_deadline_ms, 1, 60_000),
            ("maintain-deadline-ms", host.maintain_deadline_ms, 1, 3_600_000),
            ("max-module-size", host.max_module_size, 1, 1 << 40),
            ("max-state-files", host.max_state_files, 1, 1 << 20),
            ("max-state-bytes", host.max_state_bytes, 1, 1 << 40),
        ];
        for (key, value, min, max) in checks {
            if let Some(value) = value.filter(|v| !(min..=max).contains(v)) {
                return Err(ConfigError::Invalid {
                    origin: origin.to_string(),
                    message: format!("cache.host.{key} = {value}: expected a number from {min} to {max}"),
                });
            }
        }
        if let Some(mode) =
            config.cache.remote.iter().find_map(|remote| remote.mode.as_deref().filter(|m| !["read-write", "read-only"].contains(m)))
        {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                message: format!("cache.remote.mode = {mode:?}: expected \"read-write\" or \"read-only\""),
            });
        }
        Ok(config)
    }

    /// Reads and parses a configuration file.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The configuration file to use: `explicit` (e.g. `--config`), else
    /// `CAPCACHE_CONFIG`, else `<platform config dir>/capcache/config.toml` if
    /// it exists. `None`: no file, all defaults.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_path_buf());
        }
        if let Some(path) = std::env::var_os("CAPCACHE_CONFIG") {
            return Some(PathBuf::from(path));
        }
        dirs::config_dir().map(|d| d.join("capcache").join("config.toml")).filter(|p| p.is_file())
    }

    /// The policy settings, in the order `configure` receives them.
    pub fn policy_settings(&self) -> Vec<(String, String)> {
        self.cache.policy_settings.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_all_defaults() {
        let config = Config::parse("", "test").unwrap();
        assert_eq!(config, Config::default());
        assert!(config.cache.enabled);
        assert_eq!(config.cache.policy, PolicyChoice::Default);
    }

    #[test]
    fn full_file() {
        let config = Config::parse(
            r#"
            [cache]
            enabled = true
            directory = "/var/cache/x"
            policy = "/opt/policy.wasm"
            read-only = true
            [cache.policy-settings]
            cleanup-interval = "30m"
            file-count-soft-limit = 10000
            [cache.host]
            event-queue-size = 32
            "#,
            "test",
        )
        .unwrap();
        assert_eq!(config.cache.directory.as_deref(), Some(Path::new("/var/cache/x")));
        assert_eq!(config.cache.policy, PolicyChoice::File("/opt/policy.wasm".into()));
        assert!(config.cache.read_only);
        assert_eq!(
            config.policy_settings(),
            [("cleanup-interval".to_string(), "30m".to_string()), ("file-count-soft-limit".into(), "10000".into())]
        );
        assert_eq!(config.cache.host.event_queue_size, Some(32));
    }

    /// Each bad file, and what its message must name.
    #[test]
    fn errors_name_key_value_and_what_is_allowed() {
        let cases: [(&str, &[&str]); 6] = [
            ("[cache]\ndirectroy = \"/x\"", &["directroy", "directory"]),
            ("[cash]\n", &["cash", "cache"]),
            ("[cache]\nenabled = \"yes\"", &["enabled", "yes", "boolean"]),
            ("[cache]\npolicy = \"\"", &["policy", "default", ".wasm"]),
            ("[cache.policy-settings]\nlimits = [1, 2]", &["limits", "a string, a number or a boolean"]),
            ("[cache.host]\nevent-queue-size = 0", &["event-queue-size", "0", "from 1"]),
        ];
        for (text, needles) in cases {
            let message = Config::parse(text, "test.toml").unwrap_err().to_string();
            assert!(message.contains("test.toml"), "{message}");
            for needle in needles {
                assert!(message.contains(needle), "{text:?}: {message:?} lacks {needle:?}");
            }
        }
    }
}
