//! Redis Cluster behind the tier (`redis-cluster://host:port[,host:port...]`):
//! each key goes to the master of its slot (CRC16 of the key, or of its
//! `{hash tag}`, modulo 16384), as the last `CLUSTER SLOTS` said; a `MOVED`
//! reply learns the map anew and goes where it says, an `ASK` sends that one
//! command, after `ASKING`, to the node importing the slot. Each node has
//! its own connections, held to the bounds of `connection.rs`. A node that
//! fails costs its command a miss, as a lone server does.

use super::connection::{Aftermath, Bounds, Connection, Failure};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;

/// The slots of a cluster.
const SLOTS: u16 = 16384;
/// Redirections followed for one command: one `MOVED` while slots move, and
/// the `ASK` of a slot being migrated.
const MAX_REDIRECTS: usize = 3;
/// Idle connections kept per node.
const MAX_IDLE_PER_NODE: usize = 2;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (what lies between the
/// first `{` and the next `}`, when not empty) or of the whole key.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Where a redirection sends a command.
enum Redirect {
    Moved(String),
    Ask(String),
}

fn redirect(failure: &Failure) -> Option<Redirect> {
    let Failure::Refused(message) = failure else { return None };
    let mut words = message.split_whitespace();
    let (kind, _slot, addr) = (words.next()?, words.next()?, words.next()?);
    match kind {
        "MOVED" => Some(Redirect::Moved(addr.to_string())),
        "ASK" => Some(Redirect::Ask(addr.to_string())),
        _ => None,
    }
}

/// A cluster's nodes, as this tier knows them.
pub(crate) struct Cluster {
    /// `host:port` of the nodes the URL names.
    seeds: Vec<String>,
    /// `user:password@`, or nothing: every node is logged into alike.
    login: String,
    /// Each range of slots and its master, as last learnt.
    slots: RwLock<Vec<(u16, u16, String)>>,
    /// Connections in step and not in use, per node.
    idle: Mutex<HashMap<String, Vec<Connection>>>,
}

impl Cluster {
    /// The cluster `redis-cluster://[user:password@]host:port[,host:port...]`
    /// names; a message for people if it names none.
    pub(crate) fn parse(url: &str) -> Result<Cluster, String> {
        let rest = url.strip_prefix("redis-cluster://").ok_or("not a redis-cluster:// URL")?;
        let (login, nodes) = match rest.rsplit_once('@') {
            Some((login, nodes)) => (format!("{login}@"), nodes),
            None => (String::new(), rest),
        };
        let seeds: Vec<String> = nodes.trim_end_matches('/').split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
        if seeds.is_empty() || seeds.iter().any(|s| s.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err())) {
            return Err("expected redis-cluster://[user:password@]host:port[,host:port...]: one or more seed nodes, each with its port".into());
        }
        let cluster = Cluster { seeds, login, slots: RwLock::new(Vec::new()), idle: Mutex::new(HashMap::new()) };
        cluster.info(&cluster.seeds[0]).map_err(|e| format!("not a usable node address ({e})"))?;
        Ok(cluster)
    }

    fn info(&self, addr: &str) -> Result<redis::ConnectionInfo, Failure> {
        redis::IntoConnectionInfo::into_connection_info(format!("redis://{}{addr}", self.login).as_str())
            .map_err(|_| Failure::Unsupported("a cluster node address that is not host:port"))
    }

    /// The master of `slot` as last learnt, else the first seed (whose
    /// `MOVED` then teaches the map).
    fn node_for(&self, slot: u16) -> String {
        let slots = self.slots.read();
        slots.iter().find(|(start, end, _)| (*start..=*end).contains(&slot)).map(|(_, _, addr)| addr.clone()).unwrap_or_else(|| self.seeds[0].clone())
    }

    /// Learns the slot map from the first node that answers, among those
    /// known and the seeds.
    fn refresh(&self, bounds: Bounds) -> Result<(), Failure> {
        let mut nodes: Vec<String> = self.slots.read().iter().map(|(_, _, addr)| addr.clone()).collect();
        nodes.extend(self.seeds.iter().cloned());
        nodes.dedup();
        let mut last = Failure::Unsupported("no cluster node to ask");
        for node in nodes {
            match self.on_node(&node, bounds, |c| c.cluster_slots()) {
                Ok(slots) if !slots.is_empty() => {
                    *self.slots.write() = slots;
                    return Ok(());
                }
                Ok(_) => last = Failure::Protocol("a cluster node that serves no slot".into()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Every master, learning the map first if it is not known.
    pub(crate) fn masters(&self, bounds: Bounds) -> Result<Vec<String>, Failure> {
        if self.slots.read().is_empty() {
            self.refresh(bounds)?;
        }
        let mut masters: Vec<String> = self.slots.read().iter().map(|(_, _, addr)| addr.clone()).collect();
        masters.sort();
        masters.dedup();
        Ok(masters)
    }

    /// Runs `f` on a connection to `node`: an idle one in step, or a new one.
    pub(crate) fn on_node<R>(&self, node: &str, bounds: Bounds, f: impl FnOnce(&mut Connection) -> Result<R, Failure>) -> Result<R, Failure> {
        let pooled = std::iter::from_fn(|| self.idle.lock().get_mut(node)?.pop()).find_map(|mut c| c.is_in_step().then_some(c));
        let mut connection = match pooled {
            Some(connection) => connection,
            None => Connection::open(&self.info(node)?, bounds, None)?,
        };
        let result = f(&mut connection);
        let keep = match &result {
            Ok(_) => true,
            Err(e) => e.aftermath() == Aftermath::KeepConnection,
        };
        if keep {
            let mut idle = self.idle.lock();
            let pool = idle.entry(node.to_string()).or_default();
            if pool.len() < MAX_IDLE_PER_NODE {
                pool.push(connection);
            }
        }
        result
    }

    /// Runs the command `f` makes for `key` on the master of its slot,
    /// following `MOVED` (learning the map anew) and `ASK` redirections.
    pub(crate) fn on_key<R>(&self, key: &str, bounds: Bounds, mut f: impl FnMut(&mut Connection) -> Result<R, Failure>) -> Result<R, Failure> {
        let mut node = self.node_for(slot_of(key.as_bytes()));
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let result = self.on_node(&node, bounds, |c| {
                if asking {
                    c.asking()?;
                }
                f(c)
            });
            match result.as_ref().err().and_then(redirect) {
                Some(Redirect::Moved(to)) => {
                    // The map changed: learn it, and go where the node said.
                    let _ = self.refresh(bounds);
                    node = to;
                    asking = false;
                }
                Some(Redirect::Ask(to)) => {
                    node = to;
                    asking = true;
                }
                None => return result,
            }
        }
        Err(Failure::Protocol(format!("redirected more than {MAX_REDIRECTS} times for one key")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // The examples of the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"{user1000}.followers"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot_of(b"foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
    }

    #[test]
    fn a_cluster_url_names_its_seeds_and_login() {
        let cluster = Cluster::parse("redis-cluster://u:p@10.0.0.1:7000,10.0.0.2:7001").unwrap();
        assert_eq!((cluster.seeds.as_slice(), cluster.login.as_str()), (&["10.0.0.1:7000".to_string(), "10.0.0.2:7001".to_string()][..], "u:p@"));
        assert!(Cluster::parse("redis-cluster://10.0.0.1").err().unwrap().contains("each with its port"));
        assert!(Cluster::parse("redis-cluster://").is_err());
    }
}
