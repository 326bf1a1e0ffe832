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

    /// Calls `each(name, size, last use)` for every regular file of the
    /// entries area, from one directory read and one `stat` a file (an
    /// entry's last use is its modification time): no entry is opened, so a
    /// listing of a million entries reads no file.
    pub fn for_each_entry_file(&self, mut each: impl FnMut(&str, u64, u64)) -> io::Result<()> {
        for item in self.entries.entries()? {
            let item = item?;
            if !item.file_type()?.is_file() {
                continue;
            }
            let metadata = match item.metadata() {
                Ok(metadata) => metadata,
                // Removed since the directory was read: not an entry now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let last_used = metadata.modified().map(|t| system_time_to_ms(t.into_std())).unwrap_or(0);
            if let Ok(name) = item.file_name().into_string() {
                each(&name, metadata.len(), last_used);
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
