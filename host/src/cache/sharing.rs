//! The shared tiers, as tools see them: a probe of each server, their
//! counters, and moving a whole cache to them or from them.

use super::*;

/// One finding of [`Cache::check_remote`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteCheck {
    /// Whether this part works as it should.
    pub ok: bool,
    /// What was found, and what to do if it is wrong.
    pub finding: String,
}

/// What [`Cache::push_to_remote`] or [`Cache::pull_from_remote`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteTransfer {
    /// Entries copied.
    pub copied: u64,
    /// Entries the other side had already.
    pub present: u64,
    /// Entries that failed (refused, unreadable, or failing their check).
    pub failed: u64,
}

impl Cache {
    /// Probes each shared tier, in the chain's order: reach, read and write
    /// permissions, the server's eviction policy. With more than one tier,
    /// each finding begins with `tier N:`. `None` without a tier.
    pub fn check_remote(&self) -> Option<Vec<RemoteCheck>> {
        let remotes = &self.inner.as_ref()?.namespace.remotes;
        if remotes.is_empty() {
            return None;
        }
        let chained = remotes.len() > 1;
        let findings = remotes.iter().enumerate().flat_map(|(n, remote)| {
            remote.probe().into_iter().map(move |(ok, finding)| {
                let finding = if chained { format!("tier {}: {finding}", n + 1) } else { finding };
                RemoteCheck { ok, finding }
            })
        });
        Some(findings.collect())
    }

    /// Each shared tier's counters, in the chain's order, over every process
    /// that used it with this namespace (as recorded when each closed its
    /// cache) plus this one's: its URL (password hidden) and its lookups,
    /// uploads and bytes (the `remote_*` fields).
    pub fn tier_stats(&self) -> Vec<(String, StatsSnapshot)> {
        let Some(inner) = &self.inner else { return Vec::new() };
        let dir = inner.namespace.store.namespace_dir();
        inner
            .namespace
            .remotes
            .iter()
            .map(|remote| {
                let mut total = StatsSnapshot::load_from(dir, &remote.stats_log()).unwrap_or_default();
                total.add(&remote.stats().snapshot());
                (remote.label(), total)
            })
            .collect()
    }

    /// Uploads every local entry the shared tiers this host writes to lack
    /// (warming tiers from a cache). An error if there is no tier, one
    /// cannot be reached, or this host only reads them all.
    pub fn push_to_remote(&self) -> Result<RemoteTransfer, Error> {
        let (namespace, first) = self.remote_tier()?;
        let writable: Vec<_> =
            namespace.remotes.iter().filter(|r| r.settings().mode == crate::remote::RemoteMode::ReadWrite).collect();
        if writable.is_empty() {
            return Err(first.error("this host only reads the tier (mode = \"read-only\")"));
        }
        let mut transfer = RemoteTransfer::default();
        let names = namespace.store.list_names(Area::Entries).map_err(|e| first.error(&format!("cannot list local entries: {e}")))?;
        for remote in writable {
            for key in names.iter().filter_map(|name| Key::from_name(name)) {
                if remote.contains(&key).map_err(|e| remote.error(&e))? {
                    transfer.present += 1;
                    continue;
                }
                let uploaded = namespace.store.dir(Area::Entries).read(key.name()).is_ok_and(|bytes| remote.upload(&key, &bytes, &namespace.stats));
                if uploaded {
                    transfer.copied += 1;
                } else {
                    transfer.failed += 1;
                }
            }
        }
        Ok(transfer)
    }

    /// Fetches every entry of this namespace that the shared tiers hold and
    /// the local cache lacks (warming a cache from its tiers, in the chain's
    /// order); each is checked as a lookup checks it.
    pub fn pull_from_remote(&self) -> Result<RemoteTransfer, Error> {
        let (namespace, first) = self.remote_tier()?;
        if namespace.read_only {
            return Err(first.error("the local cache is read-only"));
        }
        let mut transfer = RemoteTransfer::default();
        for remote in &namespace.remotes {
        for key in remote.keys().map_err(|e| remote.error(&e))? {
            if namespace.store.dir(Area::Entries).exists(key.name()) {
                transfer.present += 1;
                continue;
            }
            match remote.fetch(&key, &namespace.stats) {
                crate::remote::Fetch::Entry(bytes) if namespace.store.write_entry_file(&key, &bytes).is_ok() => {
                    namespace.reset_usage(&key);
                    transfer.copied += 1;
                }
                _ => transfer.failed += 1,
            }
        }
        }
        Ok(transfer)
    }

    fn remote_tier(&self) -> Result<(&Namespace, &crate::remote::RemoteTier), Error> {
        let inner = self.inner.as_ref().ok_or(Error::NoRemote)?;
        let remote = inner.namespace.remotes.first().ok_or(Error::NoRemote)?;
        Ok((&inner.namespace, remote))
    }
}
