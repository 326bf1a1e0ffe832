//! Building a maintenance report as a pass goes.

use crate::{EntryMeta, FileMeta, MaintainReport};

impl MaintainReport {
    /// A pass that did not run, and why (for example: another process holds
    /// the lock, or no cleanup is due).
    pub fn skipped(reason: impl Into<String>) -> MaintainReport {
        MaintainReport { ran: false, summary: reason.into(), ..MaintainReport::started() }
    }

    /// A pass that runs, with nothing counted yet.
    pub fn started() -> MaintainReport {
        MaintainReport {
            ran: true,
            entries_seen: 0,
            evicted: 0,
            removed_from_future: 0,
            removed_temp_files: 0,
            bytes_freed: 0,
            entries_after: 0,
            bytes_after: 0,
            summary: String::new(),
        }
    }

    /// Counts an entry seen.
    pub fn saw(&mut self, _entry: &EntryMeta) {
        self.entries_seen += 1;
    }

    /// Counts an entry kept.
    pub fn kept(&mut self, entry: &EntryMeta) {
        self.entries_after += 1;
        self.bytes_after += entry.stored_size;
    }

    /// Removes an entry to bring the cache under its limits, and counts it:
    /// as evicted if it was removed (or someone else removed it first), as
    /// kept if it could not be. Returns whether it is gone.
    pub fn evict(&mut self, entry: &EntryMeta) -> bool {
        self.remove(entry, false)
    }

    /// As [`MaintainReport::evict`], for an entry removed because its times
    /// lie too far in the future (a clock that jumped).
    pub fn evict_from_future(&mut self, entry: &EntryMeta) -> bool {
        self.remove(entry, true)
    }

    fn remove(&mut self, entry: &EntryMeta, from_future: bool) -> bool {
        let gone = self.remove_uncounted(entry, from_future);
        if !gone {
            self.kept(entry);
        }
        gone
    }

    /// Removes an entry and counts it as evicted (or from the future) and its
    /// bytes freed; one that cannot be removed is not counted at all (the
    /// caller counts what is left).
    pub(crate) fn remove_uncounted(&mut self, entry: &EntryMeta, from_future: bool) -> bool {
        match crate::view::remove_entry(&entry.name) {
            Ok(()) | Err(crate::Error::NotFound) => {
                if from_future {
                    self.removed_from_future += 1;
                } else {
                    self.evicted += 1;
                }
                self.bytes_freed += entry.stored_size;
                true
            }
            Err(e) => {
                crate::log(crate::LogLevel::Warn, format!("cannot remove entry {}: {e:?}", entry.name));
                false
            }
        }
    }

    /// Removes a temporary file and counts it; returns whether it is gone.
    pub fn remove_temp_file(&mut self, file: &FileMeta) -> bool {
        match crate::view::remove_temp_file(&file.name) {
            Ok(()) => {
                self.removed_temp_files += 1;
                self.bytes_freed += file.size;
                true
            }
            Err(crate::Error::NotFound) => true,
            Err(e) => {
                crate::log(crate::LogLevel::Warn, format!("cannot remove temporary file {}: {e:?}", file.name));
                false
            }
        }
    }

    /// Removes every temporary file last modified at least `older_than` ms
    /// before `now` (left by a process that crashed mid-write: a write in
    /// progress touches its file), and counts them.
    pub fn remove_temp_files_older_than(&mut self, older_than: u64, now: crate::Timestamp) {
        for file in crate::temp_files() {
            match file {
                Ok(file) if now.saturating_sub(file.modified) >= older_than => {
                    self.remove_temp_file(&file);
                }
                Ok(_) => {}
                Err(e) => {
                    crate::log(crate::LogLevel::Warn, format!("cannot list temporary files: {e:?}"));
                    return;
                }
            }
        }
    }

    /// The finished report; its summary, unless one was set, says what the
    /// pass did in one line.
    pub fn finish(mut self) -> MaintainReport {
        if self.summary.is_empty() {
            self.summary = format!(
                "{} entries seen, {} evicted, {} from the future, {} stale temporary files; {} entries ({} bytes) left",
                self.entries_seen,
                self.evicted,
                self.removed_from_future,
                self.removed_temp_files,
                self.entries_after,
                self.bytes_after
            );
        }
        self
    }
}
