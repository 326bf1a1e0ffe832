//! What tools ask of a cache's entries beside the caller's own lookups:
//! listing them, verifying and clearing them, and maintenance on demand.

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
        let mut unreadable = 0u64;
        let entries: Vec<EntryInfo> = names
            .iter()
            .filter_map(|name| match namespace.entry_meta_with(&usage, name) {
                Ok(meta) => Some(EntryInfo::from(meta)),
                // Removed since the listing: not an entry any more.
                Err(crate::bindings::capcache::policy::types::Error::NotFound) => None,
                Err(e) => {
                    unreadable += 1;
                    tracing::debug!("entry {name} cannot be read: {e:?}");
                    None
                }
            })
            .collect();
        if unreadable > 0 {
            namespace.stats.failures.fetch_add(unreadable, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                "{unreadable} files in {} could not be read as entries and are not listed (`capcache verify` says why)",
                namespace.store.path().display()
            );
        }
        Ok(entries)
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
                    Ok(EntryOutcome::Found(_)) | Ok(EntryOutcome::Missing) => None,
                    Ok(EntryOutcome::Corrupt(e)) => Some(e.to_string()),
                    Ok(EntryOutcome::Untrusted(why)) => Some(format!("not trusted: {why}")),
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

    /// Removes every entry, manifest, temporary file, usage record and policy
    /// state file of the namespace (the policy starts afresh, as in a new
    /// cache; a lock another process holds is then free, which costs at
    /// most one maintenance pass run twice). Returns how many entries went;
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
        for area in [Area::Manifests, Area::Tmp, Area::State] {
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

    /// The policy's state files in the namespace, beside their quota. A
    /// listing that fails is an error.
    pub fn state_usage(&self) -> std::io::Result<StateUsage> {
        let Some(inner) = &self.inner else { return Ok(StateUsage::default()) };
        let store = &inner.namespace.store;
        let mut usage =
            StateUsage { files: 0, bytes: 0, max_files: inner.host.max_state_files, max_bytes: inner.host.max_state_bytes };
        for name in store.list_names(Area::State)? {
            if let Ok(info) = store.file_info(Area::State, &name) {
                usage.files += 1;
                usage.bytes += info.size;
            }
        }
        Ok(usage)
    }

    /// Runs the policy's maintenance pass now (after queued events) and
    /// returns its report; `None` if disabled or the policy failed.
    pub fn maintain(&self) -> Option<MaintainReport> {
        self.inner.as_ref()?.worker().maintain().map(MaintainReport::from)
    }
}
