//! The shared tier: a Redis server (or Valkey) behind the local cache, so that
//! one host of a fleet compiles and the others fetch.
//!
//! A local miss asks the tier; a value it returns is checked exactly as a
//! local entry is (header, key, BLAKE3 digest, and the HMAC tag when a key is
//! set), written into the local cache, and served from there: the next load
//! maps it. A local hit never touches the network. Uploads happen on the
//! worker, after the policy admitted a value locally.
//!
//! Failures tolerated, each a miss, counted, and logged: the server
//! unreachable or slow (bounded by the connect and operation timeouts; the
//! tier is then skipped for a cool-off period), a value that fails its check
//! (deleted from the tier if this host may write), a write the server refuses
//! (`maxmemory` under `noeviction`, an ACL). Nothing here stops a cache from
//! opening: the tier is reached on first use.

use crate::entry;
use crate::error::Error;
use crate::key::Key;
use crate::stats::Stats;
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
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prepended to every key, `<prefix>:<namespace>:<entry name>`, so that
    /// several caches can share one server.
    pub prefix: String,
    /// Whether this host writes.
    pub mode: RemoteMode,
    /// How long connecting may take. A miss waits at most this plus
    /// [`RemoteSettings::timeout`] for the tier.
    pub connect_timeout: Duration,
    /// How long one command may take (a GET of a large artifact included).
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
        }
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
    client: redis::Client,
    namespace: String,
    connection: Mutex<Option<redis::Connection>>,
    /// Skipped until this instant (ms since an arbitrary start), after a
    /// failure.
    skip_until_ms: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier").field("settings", &self.settings).field("namespace", &self.namespace).finish()
    }
}

/// What a fetch from the tier gave.
pub(crate) enum Fetch {
    /// A whole, checked local entry file.
    Entry(Vec<u8>),
    /// Not there, skipped, or refused: compute.
    Nothing,
}

impl RemoteTier {
    /// The tier for `namespace`. Only the URL is checked here: a server that
    /// is down never stops a cache from opening.
    pub(crate) fn new(settings: RemoteSettings, namespace: &str) -> Result<RemoteTier, Error> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| Error::Remote {
            url: redact(&settings.url),
            reason: format!("not a usable Redis URL ({}): expected redis://[user:password@]host:port[/db]", redact(&e.to_string())),
        })?;
        if settings.timeout.is_zero() || settings.connect_timeout.is_zero() {
            return Err(Error::Remote {
                url: redact(&settings.url),
                reason: "a timeout of 0 (connect-timeout-ms or timeout-ms) would leave the tier unusable: give each at least 1 ms".into(),
            });
        }
        match &settings.hmac_key {
            Some(key) => check_hmac_key(key, "the HMAC key").map_err(|reason| Error::Remote { url: redact(&settings.url), reason })?,
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
            client,
            namespace: namespace.to_string(),
            connection: Mutex::new(None),
            skip_until_ms: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    pub(crate) fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// The Redis key of an entry.
    pub(crate) fn redis_key(&self, key: &Key) -> String {
        format!("{}:{}:{}", self.settings.prefix, self.namespace, key.name())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether the tier is in its cool-off after a failure.
    fn cooling_off(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Relaxed)
    }

    /// Runs `f` on the connection (made on first use, and again after a
    /// failure), within the timeouts. A failure drops the connection and
    /// starts the cool-off.
    fn with_connection<R>(&self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<R>) -> redis::RedisResult<R> {
        let mut slot = self.connection.lock();
        let result = (|| {
            if slot.is_none() {
                let connection = self.client.get_connection_with_timeout(self.settings.connect_timeout)?;
                connection.set_read_timeout(Some(self.settings.timeout))?;
                connection.set_write_timeout(Some(self.settings.timeout))?;
                *slot = Some(connection);
            }
            f(slot.as_mut().expect("connected above"))
        })();
        if let Err(e) = &result
            && !is_refusal(e)
        {
            *slot = None;
            self.skip_until_ms.store(self.now_ms() + self.settings.cool_off.as_millis() as u64, Relaxed);
        }
        result
    }

    /// Looks `key` up in the tier. Never fails: errors, timeouts and values
    /// that fail their check are misses, counted.
    pub(crate) fn fetch(&self, key: &Key, stats: &Stats) -> Fetch {
        if self.cooling_off() {
            Stats::bump(&stats.remote_skipped);
            return Fetch::Nothing;
        }
        let redis_key = self.redis_key(key);
        let started = Instant::now();
        let result = self.with_connection(|c| redis::cmd("GET").arg(&redis_key).query::<Option<Vec<u8>>>(c));
        stats.remote_us.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        let value = match result {
            Ok(Some(value)) => value,
            Ok(None) => {
                Stats::bump(&stats.remote_misses);
                return Fetch::Nothing;
            }
            Err(e) => {
                Stats::bump(&stats.remote_errors);
                tracing::warn!(
                    "shared tier {} failed on GET {redis_key} ({}); computing, and skipping the tier for {:?}",
                    redact(&self.settings.url),
                    describe(&e),
                    self.settings.cool_off
                );
                return Fetch::Nothing;
            }
        };
        stats.remote_bytes_in.fetch_add(value.len() as u64, Relaxed);
        match self.unseal(&redis_key, value) {
            Ok(entry_bytes) => match entry::check(&entry_bytes, key) {
                Ok(_) => {
                    Stats::bump(&stats.remote_hits);
                    Fetch::Entry(entry_bytes)
                }
                Err(e) => {
                    self.reject(&redis_key, &format!("not a whole entry of its key ({e})"), stats);
                    Fetch::Nothing
                }
            },
            Err(why) => {
                self.reject(&redis_key, why, stats);
                Fetch::Nothing
            }
        }
    }

    /// A value that failed its check: counted, never served, and deleted if
    /// this host may write (so that the next writer replaces it).
    fn reject(&self, redis_key: &str, why: &str, stats: &Stats) {
        Stats::bump(&stats.remote_rejected);
        tracing::warn!("shared tier value {redis_key} refused: {why}; computing instead");
        if self.settings.mode == RemoteMode::ReadWrite {
            let _ = self.with_connection(|c| redis::cmd("DEL").arg(redis_key).query::<i64>(c));
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
            Stats::bump(&stats.remote_skipped);
            return false;
        }
        let redis_key = self.redis_key(key);
        let value = self.seal(&redis_key, entry_bytes);
        let started = Instant::now();
        let result = self.with_connection(|c| {
            let mut set = redis::cmd("SET");
            set.arg(&redis_key).arg(&value);
            if let Some(ttl) = self.settings.ttl {
                set.arg("EX").arg(ttl.as_secs().max(1));
            }
            set.query::<()>(c)
        });
        stats.remote_us.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        match result {
            Ok(()) => {
                Stats::bump(&stats.remote_uploads);
                stats.remote_bytes_out.fetch_add(value.len() as u64, Relaxed);
                true
            }
            Err(e) => {
                if e.code() == Some("OOM") {
                    // The server keeps the refused value in this connection's
                    // query buffer for a while, and counts it against
                    // maxmemory: a new connection lets the next upload fit.
                    *self.connection.lock() = None;
                }
                Stats::bump(&stats.remote_upload_failures);
                tracing::warn!("shared tier {} refused SET {redis_key} ({})", redact(&self.settings.url), describe(&e));
                false
            }
        }
    }

    /// The value to store for an entry: the entry file, followed by its tag
    /// when an HMAC key is set.
    pub(crate) fn seal(&self, redis_key: &str, entry_bytes: &[u8]) -> Vec<u8> {
        let mut value = entry_bytes.to_vec();
        if let Some(tag) = self.tag(redis_key, entry_bytes) {
            value.extend_from_slice(&tag);
        }
        value
    }

    /// The entry file inside a value, once its tag (if a key is set) checks.
    fn unseal(&self, redis_key: &str, mut value: Vec<u8>) -> Result<Vec<u8>, &'static str> {
        if self.settings.hmac_key.is_none() {
            return Ok(value);
        }
        if value.len() < TAG_LEN {
            return Err("shorter than its HMAC tag");
        }
        let tag = value.split_off(value.len() - TAG_LEN);
        let mut mac = self.mac(redis_key);
        mac.update(&value);
        // Constant time: the comparison reveals nothing of the right tag.
        mac.verify_slice(&tag).map_err(|_| "its HMAC tag does not match (written without the key, or altered)")?;
        Ok(value)
    }

    fn tag(&self, redis_key: &str, entry_bytes: &[u8]) -> Option<[u8; TAG_LEN]> {
        self.settings.hmac_key.as_ref()?;
        let mut mac = self.mac(redis_key);
        mac.update(entry_bytes);
        Some(mac.finalize().into_bytes().into())
    }

    /// The MAC of a value, keyed, over its Redis key first: a tagged value
    /// moved to another key does not check.
    fn mac(&self, redis_key: &str) -> Hmac<sha2::Sha256> {
        let key = self.settings.hmac_key.as_deref().unwrap_or_default();
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(&(redis_key.len() as u64).to_le_bytes());
        mac.update(redis_key.as_bytes());
        mac
    }

    /// An error about this tier, for people.
    pub(crate) fn error(&self, reason: &str) -> Error {
        Error::Remote { url: redact(&self.settings.url), reason: reason.to_string() }
    }

    /// Whether the tier holds a value for `key`.
    pub(crate) fn contains(&self, key: &Key) -> Result<bool, String> {
        let redis_key = self.redis_key(key);
        self.with_connection(|c| redis::cmd("EXISTS").arg(&redis_key).query::<bool>(c)).map_err(|e| describe(&e))
    }

    /// Every entry key the tier holds for this namespace (SCAN, so the server
    /// is never blocked).
    pub(crate) fn keys(&self) -> Result<Vec<Key>, String> {
        let pattern = format!("{}:{}:*", self.settings.prefix, self.namespace);
        let names: Vec<String> = self
            .with_connection(|c| {
                let mut names = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) =
                        redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query(c)?;
                    names.extend(batch);
                    if next == 0 {
                        return Ok(names);
                    }
                    cursor = next;
                }
            })
            .map_err(|e| describe(&e))?;
        Ok(names.iter().filter_map(|n| n.rsplit(':').next()).filter_map(Key::from_name).collect())
    }

    /// Probes the server: reach, read, write (unless read-only), and its
    /// eviction policy. Each line says what was found.
    pub(crate) fn probe(&self) -> Vec<(bool, String)> {
        let mut lines = Vec::new();
        let url = redact(&self.settings.url);
        let started = Instant::now();
        match self.with_connection(|c| redis::cmd("PING").query::<String>(c)) {
            Ok(_) => lines.push((true, format!("reach: {url} answers PING in {:.1} ms", started.elapsed().as_secs_f64() * 1e3))),
            Err(e) => {
                lines.push((false, format!("reach: {url}: {}", describe(&e))));
                return lines;
            }
        }
        let probe_key = format!("{}:{}:probe-{}", self.settings.prefix, self.namespace, std::process::id());
        match self.with_connection(|c| redis::cmd("GET").arg(&probe_key).query::<Option<Vec<u8>>>(c)) {
            Ok(_) => lines.push((true, "read: GET allowed".into())),
            Err(e) => lines.push((false, format!("read: GET refused: {}", describe(&e)))),
        }
        if self.settings.mode == RemoteMode::ReadWrite {
            let wrote = self.with_connection(|c| {
                redis::cmd("SET").arg(&probe_key).arg(b"probe".as_slice()).arg("EX").arg(10).query::<()>(c)?;
                redis::cmd("DEL").arg(&probe_key).query::<i64>(c)
            });
            match wrote {
                Ok(_) => lines.push((true, "write: SET and DEL allowed".into())),
                Err(e) => lines.push((false, format!("write: refused ({}); use mode = \"read-only\" on this host, or grant SET and DEL", describe(&e)))),
            }
        } else {
            lines.push((true, "write: not attempted (read-only mode)".into()));
        }
        match self.with_connection(|c| redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query::<Vec<String>>(c)) {
            Ok(reply) => {
                let policy = reply.get(1).cloned().unwrap_or_default();
                let good = policy.starts_with("allkeys-") || policy.starts_with("volatile-") && self.settings.ttl.is_some();
                let advice = if good {
                    String::new()
                } else {
                    "; set maxmemory and maxmemory-policy allkeys-lru, or a full server refuses every upload".into()
                };
                lines.push((good, format!("eviction: maxmemory-policy {policy}{advice}")));
            }
            Err(e) => lines.push((true, format!("eviction: unknown, CONFIG GET refused ({}): check maxmemory-policy on the server", describe(&e)))),
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
}

/// Whether the server answered with a refusal (an error reply such as
/// `OOM` or `NOPERM`), as opposed to a failure to talk to it.
fn is_refusal(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
}

/// A Redis error in a line.
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        format!("timed out: {e}")
    } else if e.is_connection_refusal() {
        format!("connection refused: {e}")
    } else {
        e.to_string()
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
