//! What tools and tests ask of a cache beside the caller's own lookups:
//! listing, verifying, clearing, maintenance on demand, the counters, and a
//! benchmark's hook into the policy.

use super::*;

impl Cache {
    /// Every entry, as the policy would see it (unordered). A listing that
    /// fails is an error, never an empty cache.
    pub fn entries(&self) -> std::io::Result<Vec<EntryInfo>> {
        let Some(inner) = &self.inner else { return Ok(Vec::new()) };
        let namespace = &inner.namespace;
        let mut usage = namespace.usage.lock();
        usage.refresh(namespace.store.namespace_dir())?;
        let names = namespace.store.list_names(Area::Entries)?;
        Ok(names
            .iter()
            .filter_map(|name| namespace.entry_meta_with(&usage, name).ok())
            .map(EntryInfo::from)
            .collect())
    }

    /// What is stored for `key`, without counting a use.
    pub fn entry_info(&self, key: &[u8]) -> Option<EntryInfo> {
        let inner = self.inner.as_ref()?;
        inner.namespace.entry_meta(&Key::of(key).name()).ok().map(EntryInfo::from)
    }

    /// The file that holds (or would hold) the entry for `key`.
    pub fn entry_path(&self, key: &[u8]) -> Option<PathBuf> {
        self.path().map(|p| p.join(crate::store::ENTRIES).join(Key::of(key).name()))
    }

    /// Reads and checks every file in the entries area; with
    /// [`VerifyMode::RemoveBad`], removes the bad ones. `progress(done, total)`
    /// is called after each.
    pub fn verify(&self, mode: VerifyMode, mut progress: impl FnMut(u64, u64)) -> std::io::Result<VerifyReport> {
        let fix = mode == VerifyMode::RemoveBad;
        let mut report = VerifyReport::default();
        let Some(inner) = &self.inner else { return Ok(report) };
        let store = &inner.namespace.store;
        let names = store.list_names(Area::Entries)?;
        let total = names.len() as u64;
        for name in names {
            let problem = match Key::from_name(&name) {
                None => Some("not an entry name".to_string()),
                Some(key) => match store.read_entry(&key, inner.host.max_entry_size) {
                    Ok(ReadOutcome::Found(..)) | Ok(ReadOutcome::Missing) => None,
                    Ok(ReadOutcome::Corrupt(e)) => Some(e.to_string()),
                    Ok(ReadOutcome::Untrusted(why)) => Some(format!("not trusted: {why}")),
                    Err(e) => Some(e.to_string()),
                },
            };
            report.checked += 1;
            if let Some(problem) = problem {
                if fix && store.remove(Area::Entries, &name).is_ok() {
                    report.removed += 1;
                }
                report.bad.push((name, problem));
            }
            progress(report.checked, total);
        }
        // A manifest whose artifact is gone (removed just now, or before) is
        // dead: it goes with it.
        if fix {
            store.prune_manifests()?;
        }
        Ok(report)
    }

    /// Removes every entry, manifest, temporary file and usage record of the
    /// namespace (the policy's state stays). Returns how many entries went;
    /// fails if the cache is read-only or an entry could not be removed (the
    /// error says how many were).
    pub fn clear(&self) -> std::io::Result<u64> {
        let Some(inner) = &self.inner else { return Ok(0) };
        let store = &inner.namespace.store;
        if inner.namespace.read_only {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                format!("{} cannot be written (read-only): nothing removed", store.path().display()),
            ));
        }
        self.flush();
        let mut removed = 0;
        let mut first_error = None;
        for name in store.list_names(Area::Entries)? {
            match store.remove(Area::Entries, &name) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for area in [Area::Manifests, Area::Tmp] {
            for name in store.list_names(area)? {
                let _ = store.remove(area, &name);
            }
        }
        let _ = store.namespace_dir().remove_file(crate::usage::JOURNAL);
        match first_error {
            Some(e) => Err(std::io::Error::new(e.kind(), format!("{removed} entries removed, then: {e}"))),
            None => Ok(removed),
        }
    }

    /// Runs the policy's maintenance pass now (after queued events) and
    /// returns its report; `None` if disabled or the policy failed.
    pub fn maintain(&self) -> Option<MaintainReport> {
        self.inner.as_ref()?.worker().maintain().map(MaintainReport::from)
    }

    /// This process's counters since the cache was opened.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.as_ref().map(|i| i.namespace.stats.snapshot()).unwrap_or_default()
    }

    /// The counters of every process that used this namespace (as recorded
    /// when each closed its cache), plus this one's so far.
    pub fn lifetime_stats(&self) -> StatsSnapshot {
        let Some(inner) = &self.inner else { return StatsSnapshot::default() };
        let mut total = StatsSnapshot::load(inner.namespace.store.namespace_dir()).unwrap_or_else(|e| {
            tracing::warn!("cannot read statistics: {e}");
            StatsSnapshot::default()
        });
        total.add(&inner.namespace.stats.snapshot());
        total
    }

    /// Forgets the recorded counters (this process's too).
    pub fn zero_stats(&self) -> std::io::Result<()> {
        let Some(inner) = &self.inner else { return Ok(()) };
        for counter in inner.namespace.stats.all() {
            counter.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        match inner.namespace.store.namespace_dir().remove_file(crate::stats::STATS_LOG) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// For benchmarks: calls the policy's `on-hit` for the stored entry
    /// `key` (or `admit` for a candidate of that name) `n` times, directly,
    /// as the worker does, and returns the time per call: the cost of one
    /// crossing into the sandbox and back, without the filesystem.
    #[doc(hidden)]
    pub fn time_policy_calls(&self, key: &[u8], n: u32, admit: bool) -> Option<std::time::Duration> {
        let inner = self.inner.as_ref()?;
        let key = Key::of(key);
        let meta = {
            inner.namespace.entry_meta(&key.name()).ok()?
        };
        let candidate = Candidate { name: key.name(), raw_size: meta.raw_size };
        let mut policy = inner.policy.lock();
        let started = std::time::Instant::now();
        for _ in 0..n {
            if admit {
                std::hint::black_box(policy.admit(&candidate));
            } else {
                std::hint::black_box(policy.on_hit(&meta));
            }
        }
        Some(started.elapsed() / n.max(1))
    }
}

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
