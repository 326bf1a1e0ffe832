//! Listings of an area, file facts, and manifests whose artifacts are gone.

use super::*;

impl EntryStore {
    /// Names of the regular files of `area`, sorted (symlinks and directories
    /// are skipped: the host never follows them).
    pub fn list_names(&self, area: Area) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for item in self.dir(area).entries()? {
            let item = item?;
            if !item.file_type()?.is_file() {
                continue;
            }
            if let Ok(name) = item.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// Every regular file of the entries area named as an entry, with its
    /// size and last use (its modification time), in no order: one
    /// directory read and one `stat` a file, on all cores for a large
    /// directory, and no entry opened, so that a listing of a million
    /// entries reads no file. `capacity` is the number expected (the last
    /// listing's), so that a large snapshot is allocated once.
    pub fn listed_entries(&self, capacity: usize) -> io::Result<Vec<ListedEntry>> {
        let mut listed = Vec::with_capacity(capacity);
        for item in self.entries.entries()? {
            let item = item?;
            if !item.file_type()?.is_file() {
                continue;
            }
            if let Some(name) = item.file_name().to_str().and_then(EntryName::new) {
                listed.push(ListedEntry { name, stored_size: 0, last_used: GONE });
            }
        }
        let parallel = listed.len() >= PARALLEL_STAT_MIN && crate::input::all_cores();
        let splits = if parallel { rayon_core::current_num_threads().max(1).ilog2() } else { 0 };
        self.stat_listed(&mut listed, splits)?;
        // Removed between the directory read and its stat: not entries now.
        listed.retain(|e| e.last_used != GONE);
        Ok(listed)
    }

    /// Fills in the size and last use of each of `listed`, halving the work
    /// `splits` times across the hashing pool's threads.
    fn stat_listed(&self, listed: &mut [ListedEntry], splits: u32) -> io::Result<()> {
        if splits == 0 {
            for entry in listed {
                if let Some(stat) = crate::platform::stat_at(&self.entries, entry.name.as_str())? {
                    entry.stored_size = stat.size;
                    entry.last_used = stat.modified_ms;
                }
            }
            return Ok(());
        }
        let (left, right) = listed.split_at_mut(listed.len() / 2);
        let (l, r) = rayon_core::join(|| self.stat_listed(left, splits - 1), || self.stat_listed(right, splits - 1));
        l.and(r)
    }

    /// Calls `each` with the key of every file of the entries area named as
    /// an entry, from one directory read (no list of names is held).
    pub(crate) fn for_each_entry_key(&self, mut each: impl FnMut(&Key)) -> io::Result<()> {
        for item in self.entries.entries()? {
            if let Some(key) = item?.file_name().to_str().and_then(Key::from_name) {
                each(&key);
            }
        }
        Ok(())
    }

    /// Size and modification time of `area/name`, without following a symlink.
    /// For a temporary file of ours, the time is the later of its modification
    /// and its creation as the host's clock read it (kept in its name): writing
    /// sets the modification time from the system clock, and a host on another
    /// clock must still see a write in progress as fresh.
    pub fn file_info(&self, area: Area, name: &str) -> io::Result<FileInfo> {
        let metadata = self.dir(area).symlink_metadata(name)?;
        let mut modified_ms = metadata.modified().map(|t| system_time_to_ms(t.into_std())).unwrap_or(0);
        if area == Area::Tmp {
            let created = name.strip_suffix(".tmp").and_then(|n| n.rsplit('-').next()).and_then(|t| t.parse().ok());
            modified_ms = modified_ms.max(created.unwrap_or(0));
        }
        Ok(FileInfo { name: name.to_string(), size: metadata.len(), modified_ms })
    }

    /// Removes every manifest whose artifact is no longer stored (and every
    /// unreadable one); returns how many went.
    pub(crate) fn prune_manifests(&self) -> io::Result<u64> {
        let mut removed = 0;
        for name in self.list_names(Area::Manifests)? {
            let Some(manifest) = Key::from_name(&name) else { continue };
            let live = self.read_manifest(&manifest).is_some_and(|artifact| self.entries.is_file(artifact.name()));
            if !live && self.remove(Area::Manifests, &name).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The smallest listing whose `stat`s are spread over every core: below it,
/// starting the threads costs more than they save.
const PARALLEL_STAT_MIN: usize = 16_384;

/// A last use that marks a file gone before its `stat`.
const GONE: u64 = u64::MAX;

/// An entry's name as a listing's snapshot holds it: its 43 characters in
/// place, so that a snapshot of a million entries is one allocation of small
/// records, ordered as the names' strings are.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct EntryName([u8; ENTRY_NAME_LEN]);

/// The length of an entry's name: a SHA-256 in base64url, no padding.
const ENTRY_NAME_LEN: usize = 43;

impl EntryName {
    /// `name`, if it is an entry's (43 base64url characters).
    pub(crate) fn new(name: &str) -> Option<EntryName> {
        let bytes: [u8; ENTRY_NAME_LEN] = name.as_bytes().try_into().ok()?;
        bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_').then_some(EntryName(bytes))
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII is ever stored (`new` checks).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// One entry in a listing's snapshot: what its order and totals need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListedEntry {
    pub(crate) name: EntryName,
    pub(crate) stored_size: u64,
    pub(crate) last_used: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_on_all_cores_finds_every_entry_file_with_its_size() {
        let temp = tempfile::tempdir().unwrap();
        let store = EntryStore::open(temp.path(), "default", Arc::new(crate::clock::SystemClock), StoreOptions::default()).unwrap();
        // Enough files that the stats are split across threads.
        let count = PARALLEL_STAT_MIN + 1000;
        for i in 0..count as u32 {
            let key = Key::of(&i.to_le_bytes());
            std::fs::write(temp.path().join("default/entries").join(key.name()), vec![0u8; (i % 7) as usize]).unwrap();
        }
        // Not entries: a name that is no key's, and a directory.
        std::fs::write(temp.path().join("default/entries/not-an-entry"), b"x").unwrap();
        std::fs::create_dir(temp.path().join("default/entries").join(Key::of(b"dir").name())).unwrap();
        let listed = store.listed_entries(0).unwrap();
        assert_eq!(listed.len(), count);
        let bytes: u64 = listed.iter().map(|e| e.stored_size).sum();
        assert_eq!(bytes, (0..count as u64).map(|i| i % 7).sum::<u64>());
        assert!(listed.iter().all(|e| e.last_used > 0 && e.last_used != GONE));
    }
}
