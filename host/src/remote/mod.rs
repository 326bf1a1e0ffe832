//! The shared tiers: Redis servers (or Valkey, or a Redis Cluster) and
//! buckets of S3-compatible object storage behind the local cache, so that
//! one host of a fleet compiles and the others fetch.
//!
//! A local miss asks the tier; a value it returns is checked exactly as a
//! local entry is (header, key, checksum, and the HMAC tag when a key is
//! set), written into the local cache, and served from there: the next load
//! maps it. A local hit never touches the network. Uploads happen on the
//! worker, after the policy admitted a value locally.
//!
//! Failures tolerated, each a miss, counted, and logged: the server
//! unreachable, slow or dribbling its reply (bounded by the connect timeout
//! and one operation timeout for the whole command; the tier is then skipped
//! for a cool-off period), a reply that breaks the protocol (its connection
//! dropped, the tier cooled off), a value declared longer than
//! `max_value_size` (refused before any of it is read), a value that fails
//! its check (deleted from the tier if this host may write), a write the
//! server refuses (`maxmemory` under `noeviction`, an ACL). Nothing here stops
//! a cache from opening: the tier is reached on first use.

mod cluster;
mod connection;
mod s3;
mod tls;

pub use s3::S3Credentials;

use crate::entry;
use crate::error::Error;
use crate::key::Key;
use crate::stats::Stats;
use connection::{Aftermath, Argument, Bounds, Connection, Failure};
use std::path::PathBuf;
use tls::{TlsFiles, TlsTarget};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Whether a host writes to the shared tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteMode {
    /// Fetch, upload what is stored locally, delete values that fail their
    /// check.
    ReadWrite,
    /// Fetch only: never write or delete (give such hosts a Redis user that
    /// can only read, too).
    ReadOnly,
}

/// How to reach the shared tier and how much to trust it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteSettings {
    /// `redis://[user:password@]host:port[/db]`, `rediss://` for TLS,
    /// `unix:///path/to/socket`, `redis-cluster://seed[,seed...]`, or
    /// `s3://bucket[/key/prefix][?region=..&endpoint=..&url-style=..]`.
    pub url: String,
    /// With `rediss://`: PEM certificates of CAs to trust besides the
    /// Mozilla roots rustls ships (a private CA). With `s3://`: the only
    /// CAs to trust for the endpoint.
    pub tls_ca_file: Option<PathBuf>,
    /// With `s3://`: the keys that sign requests; `None`: the environment's
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    pub s3_credentials: Option<S3Credentials>,
    /// With `rediss://`: the client's PEM certificate chain and PEM private
    /// key, for a server that asks for one.
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Prepended to every key, `<prefix>:<namespace>:<entry name>`, so that
    /// several caches can share one server.
    pub prefix: String,
    /// Whether this host writes.
    pub mode: RemoteMode,
    /// How long connecting may take. A miss waits at most this plus
    /// [`RemoteSettings::timeout`] for the tier.
    pub connect_timeout: Duration,
    /// How long one command may take, from its first byte sent to its
    /// reply's last byte read (a GET of a large artifact included).
    pub timeout: Duration,
    /// After a failure, the tier is skipped for this long, then tried again.
    pub cool_off: Duration,
    /// When set, every value is tagged with HMAC-SHA256 under this key, and a
    /// value without a valid tag is refused: only holders of the key can
    /// plant code. Read it from a file or the environment, never the
    /// configuration file itself.
    pub hmac_key: Option<Vec<u8>>,
    /// An expiry for every value written (Redis `EX`); `None`: none, leave
    /// eviction to the server's `maxmemory-policy`.
    pub ttl: Option<Duration>,
    /// The longest value fetched or uploaded, in bytes (an entry and its
    /// tag): a reply that declares more is refused before any of it is read,
    /// and a larger value is not uploaded.
    pub max_value_size: u64,
}

impl std::fmt::Debug for RemoteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSettings")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("cool_off", &self.cool_off)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<set>"))
            .field("ttl", &self.ttl)
            .field("max_value_size", &self.max_value_size)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("s3_credentials", &self.s3_credentials)
            .finish()
    }
}

/// Connecting to a server on the same network takes well under a millisecond;
/// 100 ms is a lost server, not a slow one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// A GET of a 10 MB artifact takes tens of milliseconds on loopback; 3 s
/// leaves room for a real network and still bounds a frozen server.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Long enough that a fleet does not hammer a server that is down, short
/// enough that a restarted one is used again soon.
pub const DEFAULT_COOL_OFF: Duration = Duration::from_secs(30);
/// Redis refuses a value longer than its `proto-max-bulk-len`, 512 MB unless
/// the server is configured otherwise: a longer reply cannot come from such a
/// server, and reading it would cost the host its size in memory.
pub const DEFAULT_MAX_VALUE_SIZE: u64 = 512 << 20;
/// Connections kept open for later commands; more are opened while several
/// threads use the tier at once, so that one stalled command holds up only
/// its own load.
const MAX_IDLE_CONNECTIONS: usize = 4;
/// The size of the HMAC-SHA256 tag appended to a value.
const TAG_LEN: usize = 32;

impl RemoteSettings {
    /// A tier at `url`, read-write, prefix `capcache`, default timeouts, no
    /// HMAC key, no TTL.
    pub fn new(url: impl Into<String>) -> RemoteSettings {
        RemoteSettings {
            url: url.into(),
            prefix: "capcache".into(),
            mode: RemoteMode::ReadWrite,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            cool_off: DEFAULT_COOL_OFF,
            hmac_key: None,
            ttl: None,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            tls_ca_file: None,
            tls_client_cert: None,
            s3_credentials: None,
        }
    }

    /// The same, signing S3 requests with these credentials rather than the
    /// environment's (`s3://`).
    pub fn s3_credentials(mut self, credentials: S3Credentials) -> Self {
        self.s3_credentials = Some(credentials);
        self
    }

    /// The same, trusting the CAs in this PEM file too (`rediss://`).
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// The same, with a client certificate chain and private key (PEM
    /// files) for a server that asks for one (`rediss://`).
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The same, with another mode.
    pub fn mode(mut self, mode: RemoteMode) -> Self {
        self.mode = mode;
        self
    }

    /// The same, with another key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The same, with an HMAC key.
    pub fn hmac_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.hmac_key = Some(key.into());
        self
    }

    /// The same, with these timeouts and cool-off.
    pub fn timeouts(mut self, connect: Duration, operation: Duration, cool_off: Duration) -> Self {
        self.connect_timeout = connect;
        self.timeout = operation;
        self.cool_off = cool_off;
        self
    }

    /// The same, with an expiry for values written.
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// The same, with another longest value.
    pub fn max_value_size(mut self, bytes: u64) -> Self {
        self.max_value_size = bytes;
        self
    }
}

/// A URL with its password hidden, for messages: the user information of
/// `redis://user:password@host`, and the `pass` or `password` parameter of
/// `redis+unix:///path?pass=...` and `unix:///path?pass=...`. Every message,
/// error and `Debug` output that shows a tier's URL shows this.
pub(crate) fn redact(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (url, None),
    };
    let mut shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") => {
                    format!("{name}=***")
                }
                _ => p.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&parameters.join("&"));
    }
    shown
}

/// The fewest bytes an HMAC key may have, from any source: a guessable key
/// lets anyone who can write the tier plant code.
pub const MIN_HMAC_KEY_LEN: usize = 16;

/// Refuses a key shorter than [`MIN_HMAC_KEY_LEN`] bytes; `source` names
/// where it came from.
pub(crate) fn check_hmac_key(key: &[u8], source: &str) -> Result<(), String> {
    if key.len() < MIN_HMAC_KEY_LEN {
        return Err(format!(
            "{source} holds {} bytes: use at least {MIN_HMAC_KEY_LEN} random bytes (e.g. `head -c 32 /dev/urandom | base64`)",
            key.len()
        ));
    }
    Ok(())
}

/// The tier as one namespace of one cache uses it.
pub(crate) struct RemoteTier {
    settings: RemoteSettings,
    backend: Backend,
    namespace: String,
    /// Skipped until this instant (ms since an arbitrary start), after a
    /// failure.
    skip_until_ms: AtomicU64,
    /// This tier's own counters (the namespace's count every tier's).
    stats: Stats,
    started: Instant,
}

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier").field("settings", &self.settings).field("namespace", &self.namespace).finish()
    }
}

/// What stores the tier's values.
enum Backend {
    Redis(RedisServer),
    S3(s3::S3Bucket),
}

/// A Redis server, or a cluster of them.
struct RedisServer {
    /// Where the server is and how to log in, from the URL.
    server: redis::ConnectionInfo,
    /// TLS, for a `rediss://` URL.
    tls: Option<TlsTarget>,
    /// The cluster, for a `redis-cluster://` URL (`server` is then its first
    /// seed's).
    cluster: Option<cluster::Cluster>,
    /// Connections in step and not in use.
    idle: Mutex<Vec<Connection>>,
}

/// What a fetch from the tier gave.
pub(crate) enum Fetch {
    /// A whole, checked local entry file.
    Entry(Vec<u8>),
    /// Not there, skipped, or refused: compute.
    Nothing,
}

impl RedisServer {
    fn keep(&self, connection: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(connection);
        }
    }

    /// The server (or cluster) a Redis URL names; only the URL is checked.
    fn new(settings: &RemoteSettings) -> Result<RedisServer, String> {
        let tls_files = settings.tls_ca_file.is_some() || settings.tls_client_cert.is_some();
        let cluster_url = settings.url.starts_with("redis-cluster://");
        if settings.url.starts_with("rediss-cluster://") || cluster_url && tls_files {
            return Err("TLS to a Redis Cluster is not supported yet: use redis-cluster:// on a network you trust".into());
        }
        let cluster = if cluster_url { Some(cluster::Cluster::parse(&settings.url)?) } else { None };
        // The redis crate parses the URL; TLS is spoken here (see tls.rs).
        let (plain_url, tls) = match settings.url.split_once("://") {
            Some(("rediss", rest)) => (format!("redis://{rest}"), true),
            Some(("valkeys", rest)) => (format!("valkey://{rest}"), true),
            // The first seed stands for the cluster where one server is asked.
            Some(("redis-cluster", rest)) => (format!("redis://{}", rest.split(',').next().unwrap_or_default()), false),
            _ => (settings.url.clone(), false),
        };
        if tls && plain_url.contains('#') {
            return Err(
                "TLS verification cannot be turned off (#insecure): for a server whose certificate a private CA signed, set tls-ca-file".into(),
            );
        }
        if !tls && tls_files {
            return Err("TLS files are set but the URL is not rediss:// (or s3://): use rediss:// to speak TLS".into());
        }
        let client = redis::Client::open(plain_url.as_str()).map_err(|e| {
            format!("not a usable Redis URL ({}): expected redis[s]://[user:password@]host:port[/db], or s3://bucket", redact(&e.to_string()))
        })?;
        let tls = match (tls, client.get_connection_info().addr()) {
            (false, _) => None,
            (true, redis::ConnectionAddr::Tcp(host, _)) => {
                let files = TlsFiles {
                    ca_file: settings.tls_ca_file.as_deref(),
                    client: settings.tls_client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                };
                Some(TlsTarget::new(host, files)?)
            }
            (true, _) => return Err("rediss:// needs a host and port".into()),
        };
        Ok(RedisServer { server: client.get_connection_info().clone(), tls, cluster, idle: Mutex::new(Vec::new()) })
    }
}

impl RemoteTier {
    /// The tier for `namespace`. Only the URL is checked here: a server that
    /// is down never stops a cache from opening.
    pub(crate) fn new(settings: RemoteSettings, namespace: &str) -> Result<RemoteTier, Error> {
        let refuse = |reason: String| Error::Remote { url: redact(&settings.url), reason };
        if settings.max_value_size == 0 {
            return Err(refuse("a max-value-size of 0 would leave the tier unusable".into()));
        }
        if settings.timeout.is_zero() || settings.connect_timeout.is_zero() {
            return Err(refuse("a timeout of 0 (connect-timeout-ms or timeout-ms) would leave the tier unusable: give each at least 1 ms".into()));
        }
        let backend = if settings.url.starts_with("s3://") {
            if settings.ttl.is_some() {
                return Err(refuse(
                    "S3 has no expiry per object: leave ttl-seconds out and give the bucket a lifecycle rule that expires \
                     objects under the prefix (README)"
                        .into(),
                ));
            }
            if settings.tls_client_cert.is_some() {
                return Err(refuse("an S3 tier takes no client certificate: leave tls-cert-file and tls-key-file out".into()));
            }
            let bounds = Bounds { connect_timeout: settings.connect_timeout, timeout: settings.timeout, max_value_size: settings.max_value_size };
            Backend::S3(s3::S3Bucket::new(&settings.url, settings.s3_credentials.as_ref(), settings.tls_ca_file.as_deref(), bounds).map_err(refuse)?)
        } else {
            if settings.s3_credentials.is_some() {
                return Err(refuse("S3 credentials are set but the URL is not s3://: leave access-key-id out for Redis".into()));
            }
            Backend::Redis(RedisServer::new(&settings).map_err(refuse)?)
        };
        match &settings.hmac_key {
            Some(key) => check_hmac_key(key, "the HMAC key").map_err(refuse)?,
            None => {
                // Once per process: a host reading a tier that anyone who can
                // write to it can plant code in should say so.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(
                        "shared tier {} is used without an HMAC key: its values are checked whole, not who wrote them, \
                         so anyone who can write to it can plant code here; set hmac-key-file (SECURITY.md)",
                        redact(&settings.url)
                    )
                });
            }
        }
        Ok(RemoteTier {
            settings,
            backend,
            namespace: namespace.to_string(),
            skip_until_ms: AtomicU64::new(0),
            stats: Stats::default(),
            started: Instant::now(),
        })
    }

    pub(crate) fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// The tier as people name it: its URL, its password hidden.
    pub(crate) fn label(&self) -> String {
        redact(&self.settings.url)
    }

    /// This tier's own counters, since the cache opened.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The file, in the namespace's directory, that keeps this tier's
    /// counters over every process: named after its URL (password hidden)
    /// and prefix, so that a chain reordered keeps each tier's own.
    pub(crate) fn stats_log(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{}\n{}", self.label(), self.settings.prefix));
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("stats-tier-{hex}.log")
    }

    /// Adds `by` to a counter, the namespace's (`shared`) and this tier's.
    fn count(&self, shared: &Stats, counter: fn(&Stats) -> &AtomicU64, by: u64) {
        counter(shared).fetch_add(by, Relaxed);
        counter(&self.stats).fetch_add(by, Relaxed);
    }

    /// The key of an entry in the tier: `<prefix>:<namespace>:<entry>` in
    /// Redis, `<prefix>/<namespace>/<entry>` in a bucket.
    pub(crate) fn tier_key(&self, key: &Key) -> String {
        format!("{}{}", self.namespace_key(), key.name())
    }

    /// What every tier key of this namespace starts with.
    fn namespace_key(&self) -> String {
        let separator = match self.backend {
            Backend::Redis(_) => ':',
            Backend::S3(_) => '/',
        };
        format!("{}{separator}{}{separator}", self.settings.prefix, self.namespace)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether the tier is in its cool-off after a failure.
    fn cooling_off(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Relaxed)
    }

    /// Runs `f` on a connection: an idle one still in step, or a new one.
    /// Several threads each use their own, so one stalled command holds up
    /// only its own caller. A failure that leaves the connection out of step
    /// drops it; one that says the server is unreachable or misbehaving
    /// starts the cool-off too.
    fn with_connection<R>(&self, redis: &RedisServer, f: impl FnOnce(&mut Connection) -> Result<R, Failure>) -> Result<R, Failure> {
        let bounds = self.bounds();
        if let Some(cluster) = &redis.cluster {
            // A command of no key: any master answers for the cluster.
            let master = cluster.masters(bounds).inspect_err(|e| self.after(e))?.into_iter().next();
            let master = master.ok_or(Failure::Protocol("a cluster with no master".into()))?;
            return cluster.on_node(&master, bounds, f).inspect_err(|e| self.after(e));
        }
        let pooled = std::iter::from_fn(|| redis.idle.lock().pop()).find_map(|mut c| c.is_in_step().then_some(c));
        let mut connection = match pooled {
            Some(connection) => connection,
            None => Connection::open(&redis.server, bounds, redis.tls.as_ref()).inspect_err(|e| self.after(e))?,
        };
        let result = f(&mut connection);
        match &result {
            Ok(_) => redis.keep(connection),
            Err(e) if e.aftermath() == Aftermath::KeepConnection => redis.keep(connection),
            Err(e) => self.after(e),
        }
        result
    }

    /// Runs the command `f` makes for the Redis key `key`: on the tier's
    /// server, or on the cluster node that serves the key's slot.
    fn with_key<R>(&self, redis: &RedisServer, key: &str, f: impl FnMut(&mut Connection) -> Result<R, Failure>) -> Result<R, Failure> {
        match &redis.cluster {
            Some(cluster) => cluster.on_key(key, self.bounds(), f).inspect_err(|e| self.after(e)),
            None => self.with_connection(redis, f),
        }
    }

    /// The value at `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        match &self.backend {
            Backend::Redis(redis) => self.with_key(redis, key, |c| c.get(key)),
            Backend::S3(bucket) => bucket.get(key).inspect_err(|e| self.after(e)),
        }
    }

    /// Stores `value` and then `tag` at `key`, with the expiry `ttl`.
    fn set(&self, key: &str, value: &[u8], tag: &[u8], ttl: Option<Duration>) -> Result<(), Failure> {
        match &self.backend {
            Backend::Redis(redis) => self.with_key(redis, key, |c| c.set(key, Argument::Joined(value, tag), ttl)),
            Backend::S3(bucket) => bucket.put(key, &[value, tag].concat()).inspect_err(|e| self.after(e)),
        }
    }

    fn del(&self, key: &str) -> Result<(), Failure> {
        match &self.backend {
            Backend::Redis(redis) => self.with_key(redis, key, |c| c.del(key)).map(drop),
            Backend::S3(bucket) => bucket.delete(key).inspect_err(|e| self.after(e)),
        }
    }

    fn bounds(&self) -> Bounds {
        Bounds { connect_timeout: self.settings.connect_timeout, timeout: self.settings.timeout, max_value_size: self.settings.max_value_size }
    }

    /// Starts the cool-off when a failure calls for it.
    fn after(&self, failure: &Failure) {
        if failure.aftermath() == Aftermath::CoolOff {
            self.skip_until_ms.store(self.now_ms() + self.settings.cool_off.as_millis() as u64, Relaxed);
        }
    }


    /// Looks `key` up in the tier. Never fails: errors, timeouts and values
    /// that fail their check are misses, counted.
    pub(crate) fn fetch(&self, key: &Key, stats: &Stats) -> Fetch {
        if self.cooling_off() {
            self.count(stats, |s| &s.remote_skipped, 1);
            return Fetch::Nothing;
        }
        let tier_key = self.tier_key(key);
        let started = Instant::now();
        let result = self.get(&tier_key);
        self.count(stats, |s| &s.remote_us, started.elapsed().as_micros() as u64);
        let value = match result {
            Ok(Some(value)) => value,
            Ok(None) => {
                self.count(stats, |s| &s.remote_misses, 1);
                return Fetch::Nothing;
            }
            Err(e @ Failure::TooLarge { .. }) => {
                // The server is fine; the value is not one this host takes.
                self.count(stats, |s| &s.remote_rejected, 1);
                tracing::warn!("shared tier value {tier_key} refused: {e}; computing instead");
                return Fetch::Nothing;
            }
            Err(e) => {
                self.count(stats, |s| &s.remote_errors, 1);
                tracing::warn!(
                    "shared tier {} failed on GET {tier_key} ({e}); computing, and skipping the tier for {:?}",
                    redact(&self.settings.url),
                    self.settings.cool_off
                );
                return Fetch::Nothing;
            }
        };
        self.count(stats, |s| &s.remote_bytes_in, value.len() as u64);
        match self.unseal(&tier_key, value) {
            Ok(entry_bytes) => match entry::check(&entry_bytes, key) {
                Ok(_) => {
                    self.count(stats, |s| &s.remote_hits, 1);
                    Fetch::Entry(entry_bytes)
                }
                Err(e) => {
                    self.reject(&tier_key, &format!("not a whole entry of its key ({e})"), stats);
                    Fetch::Nothing
                }
            },
            Err(why) => {
                self.reject(&tier_key, why, stats);
                Fetch::Nothing
            }
        }
    }

    /// A value that failed its check: counted, never served, and deleted if
    /// this host may write (so that the next writer replaces it).
    fn reject(&self, tier_key: &str, why: &str, stats: &Stats) {
        self.count(stats, |s| &s.remote_rejected, 1);
        tracing::warn!("shared tier value {tier_key} refused: {why}; computing instead");
        if self.settings.mode == RemoteMode::ReadWrite {
            let _ = self.del(tier_key);
        }
    }

    /// Uploads a local entry file, unless this host only reads or the tier is
    /// cooling off; returns whether it was stored. Never fails: a refusal
    /// (`maxmemory`, ACL) or an error is counted and logged.
    pub(crate) fn upload(&self, key: &Key, entry_bytes: &[u8], stats: &Stats) -> bool {
        if self.settings.mode == RemoteMode::ReadOnly {
            return false;
        }
        if self.cooling_off() {
            self.count(stats, |s| &s.remote_skipped, 1);
            return false;
        }
        let tier_key = self.tier_key(key);
        let tag = self.tag(&tier_key, entry_bytes);
        let tag: &[u8] = tag.as_ref().map_or(&[], |t| t.as_slice());
        let size = (entry_bytes.len() + tag.len()) as u64;
        if size > self.settings.max_value_size {
            self.count(stats, |s| &s.remote_upload_failures, 1);
            tracing::warn!(
                "shared tier {}: {tier_key} is not uploaded: its {size} bytes are over max-value-size ({} bytes)",
                redact(&self.settings.url),
                self.settings.max_value_size
            );
            return false;
        }
        let started = Instant::now();
        let result = self.set(&tier_key, entry_bytes, tag, self.settings.ttl);
        self.count(stats, |s| &s.remote_us, started.elapsed().as_micros() as u64);
        match result {
            Ok(()) => {
                self.count(stats, |s| &s.remote_uploads, 1);
                self.count(stats, |s| &s.remote_bytes_out, size);
                true
            }
            Err(e) => {
                self.count(stats, |s| &s.remote_upload_failures, 1);
                tracing::warn!("shared tier {} refused the upload of {tier_key} ({e})", redact(&self.settings.url));
                false
            }
        }
    }

    /// The value to store for an entry: the entry file, followed by its tag
    /// when an HMAC key is set.
    #[cfg(test)]
    fn seal(&self, tier_key: &str, entry_bytes: &[u8]) -> Vec<u8> {
        let mut value = entry_bytes.to_vec();
        if let Some(tag) = self.tag(tier_key, entry_bytes) {
            value.extend_from_slice(&tag);
        }
        value
    }

    /// The entry file inside a value, once its tag (if a key is set) checks.
    fn unseal(&self, tier_key: &str, mut value: Vec<u8>) -> Result<Vec<u8>, &'static str> {
        if self.settings.hmac_key.is_none() {
            return Ok(value);
        }
        if value.len() < TAG_LEN {
            return Err("shorter than its HMAC tag");
        }
        let tag = value.split_off(value.len() - TAG_LEN);
        let mut mac = self.mac(tier_key);
        mac.update(&value);
        // Constant time: the comparison reveals nothing of the right tag.
        mac.verify_slice(&tag).map_err(|_| "its HMAC tag does not match (written without the key, or altered)")?;
        Ok(value)
    }

    fn tag(&self, tier_key: &str, entry_bytes: &[u8]) -> Option<[u8; TAG_LEN]> {
        self.settings.hmac_key.as_ref()?;
        let mut mac = self.mac(tier_key);
        mac.update(entry_bytes);
        Some(mac.finalize().into_bytes().into())
    }

    /// The MAC of a value, keyed, over its Redis key first: a tagged value
    /// moved to another key does not check.
    fn mac(&self, tier_key: &str) -> Hmac<sha2::Sha256> {
        let key = self.settings.hmac_key.as_deref().unwrap_or_default();
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(&(tier_key.len() as u64).to_le_bytes());
        mac.update(tier_key.as_bytes());
        mac
    }

    /// An error about this tier, for people.
    pub(crate) fn error(&self, reason: &str) -> Error {
        Error::Remote { url: redact(&self.settings.url), reason: reason.to_string() }
    }

    /// Whether the tier holds a value for `key`.
    pub(crate) fn contains(&self, key: &Key) -> Result<bool, String> {
        let tier_key = self.tier_key(key);
        match &self.backend {
            Backend::Redis(redis) => self.with_key(redis, &tier_key, |c| c.exists(&tier_key)),
            Backend::S3(bucket) => bucket.exists(&tier_key),
        }
        .map_err(|e| e.to_string())
    }

    /// Every entry key the tier holds for this namespace (SCAN, so a Redis
    /// server is never blocked; a bucket's listing, page by page).
    pub(crate) fn keys(&self) -> Result<Vec<Key>, String> {
        let redis = match &self.backend {
            Backend::Redis(redis) => redis,
            Backend::S3(bucket) => {
                let mut names = Vec::new();
                let mut cursor = None;
                loop {
                    let page = bucket.list(&self.namespace_key(), cursor.as_deref()).map_err(|e| e.to_string())?;
                    names.extend(page.keys);
                    match page.next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                return Ok(names.iter().filter_map(|n| n.rsplit('/').next()).filter_map(Key::from_name).collect());
            }
        };
        let pattern = format!("{}*", self.namespace_key());
        let scan_all = |c: &mut Connection| {
            let mut names = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch) = c.scan(cursor, &pattern)?;
                names.extend(batch);
                if next == 0 {
                    return Ok(names);
                }
                cursor = next;
            }
        };
        let names: Vec<String> = match &redis.cluster {
            // Each master holds its own slots' keys.
            Some(cluster) => cluster.masters(self.bounds()).and_then(|masters| {
                masters.iter().try_fold(Vec::new(), |mut all, master| {
                    all.extend(cluster.on_node(master, self.bounds(), scan_all)?);
                    Ok(all)
                })
            }),
            None => self.with_connection(redis, scan_all),
        }
            .map_err(|e| e.to_string())?;
        Ok(names.iter().filter_map(|n| n.rsplit(':').next()).filter_map(Key::from_name).collect())
    }

    /// Probes the server: reach, read, write (unless read-only), and its
    /// eviction policy. Each line says what was found.
    pub(crate) fn probe(&self) -> Vec<(bool, String)> {
        let mut lines = match &self.backend {
            Backend::Redis(redis) => self.probe_redis(redis),
            Backend::S3(bucket) => self.probe_bucket(bucket),
        };
        if lines.last().is_some_and(|(ok, line)| !ok && line.starts_with("reach:")) {
            return lines;
        }
        if self.settings.hmac_key.is_none() {
            lines.push((
                true,
                "integrity: WARNING no HMAC key: values are checked whole, not who wrote them; anyone who can write \
                 the tier can plant code on this host: set hmac-key-file (SECURITY.md)"
                    .into(),
            ));
        } else {
            lines.push((true, "integrity: values are tagged and checked with the HMAC key".into()));
        }
        lines
    }

    /// The probe of a bucket: reach (HEAD bucket), read, write, and what
    /// stands for eviction.
    fn probe_bucket(&self, bucket: &s3::S3Bucket) -> Vec<(bool, String)> {
        let mut lines = Vec::new();
        let started = Instant::now();
        match bucket.head_bucket() {
            Ok(()) => lines.push((
                true,
                format!("reach: {} answers HEAD in {:.1} ms", bucket.describe(), started.elapsed().as_secs_f64() * 1e3),
            )),
            Err(e) => {
                lines.push((false, format!("reach: {}: {e}", bucket.describe())));
                return lines;
            }
        }
        let probe_key = format!("{}probe-{}", self.namespace_key(), std::process::id());
        match bucket.get(&probe_key) {
            Ok(_) => lines.push((true, "read: GET allowed".into())),
            Err(e) => lines.push((false, format!("read: GET refused: {e}"))),
        }
        if self.settings.mode == RemoteMode::ReadWrite {
            match bucket.put(&probe_key, b"probe").and_then(|()| bucket.delete(&probe_key)) {
                Ok(()) => lines.push((true, "write: PUT and DELETE allowed".into())),
                Err(e) => lines.push((false, format!("write: refused ({e}); use mode = \"read-only\" on this host, or grant PutObject and DeleteObject"))),
            }
        } else {
            lines.push((true, "write: not attempted (read-only mode)".into()));
        }
        lines.push((
            true,
            format!(
                "eviction: a bucket keeps every object until it is deleted: give it a lifecycle rule that expires objects under {} (README)",
                bucket.object_key(&format!("{}/", self.settings.prefix))
            ),
        ));
        lines
    }

    /// The probe of a Redis server: reach, read, write (unless read-only),
    /// and its eviction policy.
    fn probe_redis(&self, redis: &RedisServer) -> Vec<(bool, String)> {
        let mut lines = Vec::new();
        let url = redact(&self.settings.url);
        let started = Instant::now();
        match self.with_connection(redis, |c| c.ping()) {
            Ok(_) => lines.push((true, format!("reach: {url} answers PING in {:.1} ms", started.elapsed().as_secs_f64() * 1e3))),
            Err(e) => {
                lines.push((false, format!("reach: {url}: {}", e)));
                return lines;
            }
        }
        let probe_key = format!("{}probe-{}", self.namespace_key(), std::process::id());
        if let Some(cluster) = &redis.cluster {
            match cluster.masters(self.bounds()) {
                Ok(masters) => lines.push((true, format!("cluster: {} masters serve the slots ({})", masters.len(), masters.join(", ")))),
                Err(e) => lines.push((false, format!("cluster: CLUSTER SLOTS failed: {e}"))),
            }
        }
        match self.with_key(redis, &probe_key, |c| c.get(&probe_key)) {
            Ok(_) => lines.push((true, "read: GET allowed".into())),
            Err(e) => lines.push((false, format!("read: GET refused: {}", e))),
        }
        if self.settings.mode == RemoteMode::ReadWrite {
            let wrote = self.with_key(redis, &probe_key, |c| {
                c.set(&probe_key, Argument::Bytes(b"probe"), Some(Duration::from_secs(10)))?;
                c.del(&probe_key)
            });
            match wrote {
                Ok(_) => lines.push((true, "write: SET and DEL allowed".into())),
                Err(e) => lines.push((false, format!("write: refused ({}); use mode = \"read-only\" on this host, or grant SET and DEL", e))),
            }
        } else {
            lines.push((true, "write: not attempted (read-only mode)".into()));
        }
        match self.with_connection(redis, |c| c.config_get("maxmemory-policy")) {
            Ok(reply) => {
                let policy = reply.unwrap_or_default();
                let good = policy.starts_with("allkeys-") || policy.starts_with("volatile-") && self.settings.ttl.is_some();
                let advice = if good {
                    String::new()
                } else {
                    "; set maxmemory and maxmemory-policy allkeys-lru, or a full server refuses every upload".into()
                };
                lines.push((good, format!("eviction: maxmemory-policy {policy}{advice}")));
            }
            Err(e) => lines.push((true, format!("eviction: unknown, CONFIG GET refused ({}): check maxmemory-policy on the server", e))),
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(redact("redis://user:secret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let settings = RemoteSettings::new("redis://:hunter2@host:1").hmac_key(b"k".to_vec());
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<set>"), "{shown}");
        for url in ["redis+unix:///run/redis.sock?db=1&pass=hunter2", "unix:///run/redis.sock?password=hunter2", "rediss://u:hunter2@h:1/0?pass=hunter2"] {
            let shown = redact(url);
            assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
        }
        assert_eq!(redact("redis+unix:///run/redis.sock?db=1&pass=x"), "redis+unix:///run/redis.sock?db=1&pass=***");
    }

    #[test]
    fn a_tag_binds_the_value_to_its_key() {
        let tier = RemoteTier::new(RemoteSettings::new("redis://127.0.0.1:1").hmac_key(b"a secret of 16 bytes or more".to_vec()), "ns").unwrap();
        let sealed = tier.seal("p:ns:a", b"entry");
        assert_eq!(tier.unseal("p:ns:a", sealed.clone()).unwrap(), b"entry");
        assert!(tier.unseal("p:ns:b", sealed.clone()).is_err(), "a value moved to another key was accepted");
        let mut flipped = sealed;
        flipped[0] ^= 1;
        assert!(tier.unseal("p:ns:a", flipped).is_err());
        let untagged = RemoteTier::new(RemoteSettings::new("redis://127.0.0.1:1"), "ns").unwrap();
        assert!(tier.unseal("p:ns:a", untagged.seal("p:ns:a", b"entry")).is_err(), "a value without a tag was accepted");
    }
}
