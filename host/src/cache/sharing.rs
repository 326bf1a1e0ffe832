//! The shared tier, as tools see it: a probe of the server, and moving a
//! whole cache to it or from it.

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
    /// Probes the shared tier: reach, read and write permissions, the
    /// server's eviction policy. `None` without a tier.
    pub fn check_remote(&self) -> Option<Vec<RemoteCheck>> {
        let remote = self.inner.as_ref()?.namespace.remote.as_ref()?;
        Some(remote.probe().into_iter().map(|(ok, finding)| RemoteCheck { ok, finding }).collect())
    }

    /// Uploads every local entry the shared tier lacks (warming a tier from
    /// a cache). An error if there is no tier, it cannot be reached, or this
    /// host only reads it.
    pub fn push_to_remote(&self) -> Result<RemoteTransfer, Error> {
        let (namespace, remote) = self.remote_tier()?;
        if remote.settings().mode == crate::remote::RemoteMode::ReadOnly {
            return Err(remote.error("this host only reads the tier (mode = \"read-only\")"));
        }
        let mut transfer = RemoteTransfer::default();
        let names = namespace.store.list_names(Area::Entries).map_err(|e| remote.error(&format!("cannot list local entries: {e}")))?;
        for key in names.iter().filter_map(|name| Key::from_name(name)) {
            if remote.contains(&key).map_err(|e| remote.error(&e))? {
                transfer.present += 1;
                continue;
            }
            if namespace.upload(&key) {
                transfer.copied += 1;
            } else {
                transfer.failed += 1;
            }
        }
        Ok(transfer)
    }

    /// Fetches every entry of this namespace that the shared tier holds and
    /// the local cache lacks (warming a cache from a tier); each is checked
    /// as a lookup checks it.
    pub fn pull_from_remote(&self) -> Result<RemoteTransfer, Error> {
        let (namespace, remote) = self.remote_tier()?;
        if namespace.read_only {
            return Err(remote.error("the local cache is read-only"));
        }
        let mut transfer = RemoteTransfer::default();
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
        Ok(transfer)
    }

    fn remote_tier(&self) -> Result<(&Namespace, &crate::remote::RemoteTier), Error> {
        let inner = self.inner.as_ref().ok_or(Error::NoRemote)?;
        let remote = inner.namespace.remote.as_ref().ok_or(Error::NoRemote)?;
        Ok((&inner.namespace, remote))
    }
}
