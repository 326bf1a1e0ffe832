//! The capability a policy is granted: one namespace of the cache. This module
//! implements the WIT `view` interface once, over a [`ViewBackend`]: the cache
//! on disk (a [`Namespace`], seen through cap-std directory handles that
//! refuse `..`, absolute paths and symlinks that lead out, by construction),
//! or the simulated cache of `capcache policy test`. Names are checked here,
//! for a clear error, before any backend sees them; paging, the shared lock
//! and logging are here too, so both backends behave alike.

use crate::bindings::capcache::policy::types::{self, EntryMeta, EntryOrder, EntryPage, Error, FileMeta, FilePage, LogLevel};
use crate::bindings::capcache::policy::view;
use crate::key::Key;
use crate::lock::HeldLock;
use crate::namespace::{Namespace, invalid_entry_name, io_error};
use crate::stats::Stats;
use crate::store::{Area, EntryName, ListedEntry};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::component::{Resource, ResourceTable};

/// The most bytes one `read-entry` returns: enough to read any header, small
/// enough that no call copies a whole artifact into the policy.
pub const MAX_READ: u32 = 1 << 20;
/// The largest state file a policy may write: state is counters and
/// timestamps, not data.
pub const MAX_STATE_FILE: usize = 1 << 20;
/// The most items on one page of a listing, so that one call's answer stays
/// well inside the policy's memory.
pub const MAX_PAGE: u32 = 4096;
/// The longest name accepted for a state or temporary file.
pub const MAX_NAME: usize = 128;
/// The longest log line kept from a policy.
const MAX_LOG_LINE: usize = 4096;

/// What a view shows, after its names were checked: the operations of the WIT
/// `view` on one namespace, real or simulated.
pub(crate) trait ViewBackend: Send + Sync {
    /// The host's clock, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// The namespace's name.
    fn namespace_name(&self) -> String;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// The counters that policy faults and removals bump.
    fn stats(&self) -> &Stats;
    /// The names in an area (`Tmp`; `Entries` is [`ViewBackend::listed_entries`]), sorted.
    fn list_names(&self, area: Area) -> Result<Vec<String>, Error>;
    /// Every entry's name, stored size and last use, in no order: what a
    /// listing's snapshot orders and totals, without reading any entry;
    /// about `capacity` of them are expected.
    fn listed_entries(&self, capacity: usize) -> Result<Vec<ListedEntry>, Error>;
    /// Metadata of these entries, leaving out names that are not (or no
    /// longer) entries.
    fn entry_metas(&self, names: &[String]) -> Result<Vec<EntryMeta>, Error>;
    /// One entry's metadata.
    fn stat_entry(&self, name: &str) -> Result<EntryMeta, Error>;
    /// Up to `length` bytes of an entry's file from `offset`.
    fn read_entry(&self, name: &str, offset: u64, length: u32) -> Result<Vec<u8>, Error>;
    /// Removes an entry and its usage.
    fn remove_entry(&self, key: &Key) -> Result<(), Error>;
    /// A temporary or state file's metadata.
    fn file_meta(&self, area: Area, name: &str) -> Result<FileMeta, Error>;
    /// Removes a temporary or state file.
    fn remove_file(&self, area: Area, name: &str) -> Result<(), Error>;
    /// A state file's contents; `too-large` beyond [`MAX_STATE_FILE`].
    fn read_state(&self, name: &str) -> Result<Vec<u8>, Error>;
    /// Replaces a state file atomically.
    fn write_state(&self, name: &str, contents: &[u8]) -> Result<(), Error>;
    /// Creates a state file if it does not exist.
    fn create_state(&self, name: &str, contents: &[u8]) -> Result<(), Error>;
    /// Every state file's name and size.
    fn state_files(&self) -> Result<Vec<(String, u64)>, Error>;
}

impl ViewBackend for Namespace {
    fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    fn namespace_name(&self) -> String {
        self.store.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn list_names(&self, area: Area) -> Result<Vec<String>, Error> {
        self.store.list_names(area).map_err(io_error)
    }

    fn listed_entries(&self, capacity: usize) -> Result<Vec<ListedEntry>, Error> {
        self.store.listed_entries(capacity).map_err(io_error)
    }

    fn entry_metas(&self, names: &[String]) -> Result<Vec<EntryMeta>, Error> {
        let mut usage = self.usage.lock();
        usage.refresh(self.store.namespace_dir()).map_err(io_error)?;
        // Foreign files and vanished entries are not entries: left out.
        Ok(names.iter().filter_map(|name| self.entry_meta_with(&usage, name).ok()).collect())
    }

    fn stat_entry(&self, name: &str) -> Result<EntryMeta, Error> {
        let mut usage = self.usage.lock();
        usage.refresh(self.store.namespace_dir()).map_err(io_error)?;
        self.entry_meta_with(&usage, name)
    }

    fn read_entry(&self, name: &str, offset: u64, length: u32) -> Result<Vec<u8>, Error> {
        let mut file = self.store.dir(Area::Entries).open(name).map_err(io_error)?;
        file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
        let mut bytes = Vec::new();
        file.take(length as u64).read_to_end(&mut bytes).map_err(io_error)?;
        Ok(bytes)
    }

    fn remove_entry(&self, key: &Key) -> Result<(), Error> {
        Namespace::remove_entry(self, key).map_err(io_error)
    }

    fn file_meta(&self, area: Area, name: &str) -> Result<FileMeta, Error> {
        let f = self.store.file_info(area, name).map_err(io_error)?;
        Ok(FileMeta { name: f.name, size: f.size, modified: f.modified_ms })
    }

    fn remove_file(&self, area: Area, name: &str) -> Result<(), Error> {
        self.store.remove(area, name).map_err(io_error)
    }

    fn read_state(&self, name: &str) -> Result<Vec<u8>, Error> {
        let file = self.store.dir(Area::State).open(name).map_err(io_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE as u64 + 1).read_to_end(&mut bytes).map_err(io_error)?;
        if bytes.len() > MAX_STATE_FILE {
            return Err(Error::TooLarge);
        }
        Ok(bytes)
    }

    fn write_state(&self, name: &str, contents: &[u8]) -> Result<(), Error> {
        self.store.write_atomic(Area::State, name, contents).map_err(io_error)
    }

    fn create_state(&self, name: &str, contents: &[u8]) -> Result<(), Error> {
        self.store.create_exclusive(Area::State, name, contents).map_err(io_error)
    }

    fn state_files(&self) -> Result<Vec<(String, u64)>, Error> {
        let names = self.store.list_names(Area::State).map_err(io_error)?;
        // Removed since the listing: gone, and so not counted.
        Ok(names.into_iter().filter_map(|name| self.store.file_info(Area::State, &name).ok().map(|f| (name, f.size))).collect())
    }
}

/// A listing in progress: the snapshot its first page took, which later
/// pages of the same call continue.
enum Listing {
    /// Temporary files, by name.
    Files(Vec<String>),
    /// Entries, in `order`, with what they take in all.
    Entries { order: EntryOrder, entries: Vec<ListedEntry>, total_bytes: u64 },
}

/// Where a listing of entries in `order` stands after `entry`: the cursor
/// handed out as `next`. Names sort as their strings do, so the cursor of
/// the name order is the name itself.
fn cursor_of(order: EntryOrder, entry: &ListedEntry) -> String {
    match order {
        EntryOrder::Name => entry.name.as_str().to_string(),
        EntryOrder::LeastRecentlyUsed | EntryOrder::MostRecentlyUsed => format!("{}:{}", entry.last_used, entry.name.as_str()),
    }
}

/// The index of the first entry of `entries` (in `order`) after `cursor`.
fn after_cursor(order: EntryOrder, entries: &[ListedEntry], cursor: &str) -> Result<usize, Error> {
    if order == EntryOrder::Name {
        return Ok(entries.partition_point(|e| e.name.as_str() <= cursor));
    }
    let parsed = cursor.split_once(':').and_then(|(t, n)| Some((t.parse::<u64>().ok()?, EntryName::new(n)?)));
    let Some((last_used, name)) = parsed else {
        let shown: String = cursor.chars().take(64).collect();
        return Err(Error::InvalidName(format!("{shown:?} is not a cursor of a listing by last use (pass back `next` as it came)")));
    };
    Ok(match order {
        EntryOrder::LeastRecentlyUsed => entries.partition_point(|e| (e.last_used, e.name) <= (last_used, name)),
        _ => entries.partition_point(|e| (std::cmp::Reverse(e.last_used), e.name) <= (std::cmp::Reverse(last_used), name)),
    })
}

/// Sorts a snapshot into `order`; ties of last use go by name.
fn sort_listing(order: EntryOrder, entries: &mut [ListedEntry]) {
    match order {
        EntryOrder::Name => entries.sort_unstable_by_key(|e| e.name),
        EntryOrder::LeastRecentlyUsed => entries.sort_unstable_by_key(|e| (e.last_used, e.name)),
        EntryOrder::MostRecentlyUsed => entries.sort_unstable_by_key(|e| (std::cmp::Reverse(e.last_used), e.name)),
    }
}

/// How much state a policy may keep in its namespace, from
/// [`crate::HostSettings`]'s `max_state_files` and `max_state_bytes`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateQuota {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
}

/// One policy instance's view of the cache.
pub struct PolicyView {
    backend: Arc<dyn ViewBackend>,
    /// Who is speaking, in log lines.
    policy_name: String,
    /// A listing taken at a listing's first page, so that later pages continue
    /// it rather than list the directory again.
    listing: Option<Listing>,
    /// The locks the policy holds. Dropping the instance drops them, and so
    /// releases them.
    locks: ResourceTable,
    quota: StateQuota,
    /// Whether this instance was told once that its state is over quota.
    warned_over_quota: bool,
    /// Entries in the last listing's snapshot, a little over: the next
    /// snapshot's capacity.
    listing_capacity: usize,
}

impl PolicyView {
    pub(crate) fn new(backend: Arc<dyn ViewBackend>, policy_name: String, quota: StateQuota) -> Self {
        PolicyView { backend, policy_name, listing: None, locks: ResourceTable::new(), quota, warned_over_quota: false, listing_capacity: 0 }
    }

    /// Refuses, with `too-large`, writing `len` bytes to the state file
    /// `name` if the namespace's state would then pass its quota. Processes
    /// that write at the same moment may each pass the check: the state
    /// then exceeds the quota by at most one file each, and no further.
    fn within_state_quota(&mut self, name: &str, len: usize) -> Result<(), Error> {
        if len > MAX_STATE_FILE {
            return Err(Error::TooLarge);
        }
        let files = self.backend.state_files()?;
        let others = files.iter().filter(|(n, _)| n != name);
        let (count, bytes) = others.fold((1u64, len as u64), |(c, b), (_, size)| (c + 1, b + size));
        if count <= self.quota.files && bytes <= self.quota.bytes {
            return Ok(());
        }
        if !std::mem::replace(&mut self.warned_over_quota, true) {
            tracing::warn!(
                policy = self.policy_name,
                "the policy's state in {} would hold {count} files, {bytes} bytes: over its quota of {} files, {} bytes                  (max-state-files, max-state-bytes in [cache.host]); the write is refused",
                self.backend.namespace_name(),
                self.quota.files,
                self.quota.bytes
            );
        }
        Err(Error::TooLarge)
    }

    /// Forgets per-call state (a listing's snapshot: a million entries' is
    /// tens of megabytes); called before and after each call into the policy.
    pub fn forget_call_state(&mut self) {
        self.listing = None;
    }

    /// The page of temporary files after `cursor`, continuing the snapshot
    /// if one was taken for them.
    fn files_page(&mut self, cursor: Option<String>, limit: u32) -> Result<(Vec<String>, Option<String>), Error> {
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        if cursor.is_none() || !matches!(self.listing, Some(Listing::Files(_))) {
            self.listing = Some(Listing::Files(self.backend.list_names(Area::Tmp)?));
        }
        let Some(Listing::Files(names)) = &self.listing else { unreachable!("taken above") };
        let start = match &cursor {
            None => 0,
            Some(c) => names.partition_point(|n| n.as_str() <= c.as_str()),
        };
        let end = (start + limit).min(names.len());
        let page = names[start..end].to_vec();
        let next = (end < names.len()).then(|| page.last().cloned()).flatten();
        Ok((page, next))
    }

    /// The page of entries in `order` after `cursor`, continuing the
    /// snapshot if one was taken in this order, with the snapshot's totals.
    fn entries_page(&mut self, order: EntryOrder, cursor: Option<String>, limit: u32) -> Result<EntryPage, Error> {
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let continues = matches!(&self.listing, Some(Listing::Entries { order: o, .. }) if *o == order);
        if cursor.is_none() || !continues {
            // Dropped first: two snapshots never coexist.
            self.listing = None;
            let mut entries = self.backend.listed_entries(self.listing_capacity)?;
            self.listing_capacity = entries.len() + entries.len() / 16;
            sort_listing(order, &mut entries);
            let total_bytes = entries.iter().map(|e| e.stored_size).sum();
            self.listing = Some(Listing::Entries { order, entries, total_bytes });
        }
        let Some(Listing::Entries { entries: listed, total_bytes, .. }) = &self.listing else { unreachable!("taken above") };
        let start = match &cursor {
            None => 0,
            Some(c) => after_cursor(order, listed, c)?,
        };
        let end = (start + limit).min(listed.len());
        let page = &listed[start..end];
        let next = (end < listed.len()).then(|| page.last().map(|e| cursor_of(order, e))).flatten();
        let (total_entries, total_bytes) = (listed.len() as u64, *total_bytes);
        let names: Vec<String> = page.iter().map(|e| e.name.as_str().to_string()).collect();
        let entries = self.backend.entry_metas(&names)?;
        Ok(EntryPage { entries, next, total_entries, total_bytes })
    }

    fn writable(&self) -> Result<(), Error> {
        if self.backend.read_only() { Err(Error::Denied) } else { Ok(()) }
    }

    fn log_line(&self, level: LogLevel, message: &str) {
        let message: String = message.chars().take(MAX_LOG_LINE).collect();
        let message = printable(&message);
        let policy = &self.policy_name;
        match level {
            LogLevel::Debug => tracing::debug!(policy, "{message}"),
            LogLevel::Info => tracing::info!(policy, "{message}"),
            LogLevel::Warn => tracing::warn!(policy, "{message}"),
            LogLevel::Error => tracing::error!(policy, "{message}"),
        }
    }
}

/// `text` from a policy, fit for a terminal and a log: every control
/// character (escape sequences, carriage returns, newlines that would forge
/// another log line) is written as its escape, `\u{1b}`, `\r`, `\n`; all
/// else is kept as it is.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Checks a state or temporary file name: 1 to 128 characters from
/// `A-Z a-z 0-9 . _ -`, not starting with `.` (so never `.` or `..`).
pub fn check_plain_name(name: &str) -> Result<(), Error> {
    let shown: String = name.chars().take(64).collect();
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME {
        Some("is longer than 128 bytes")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a path separator")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Some("has characters outside A-Z a-z 0-9 . _ -")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::InvalidName(format!("{shown:?} {why}"))),
        None => Ok(()),
    }
}

fn check_entry_name(name: &str) -> Result<Key, Error> {
    Key::from_name(name).ok_or_else(|| invalid_entry_name(name))
}

/// Makes each lock's token unique within the process; the process id makes
/// it unique between processes.
static LOCK_TOKENS: AtomicU64 = AtomicU64::new(0);

impl PolicyView {
    fn take_lock(&mut self, name: &str, stale_after: u64) -> Result<Option<HeldLock>, Error> {
        check_plain_name(name)?;
        self.writable()?;
        for _ in 0..3 {
            let now = self.backend.now_ms();
            let token = LOCK_TOKENS.fetch_add(1, Ordering::Relaxed);
            let contents = format!("{now} {}-{token}\n", std::process::id()).into_bytes();
            self.within_state_quota(name, contents.len())?;
            match self.backend.create_state(name, &contents) {
                Ok(()) => {
                    let (backend, name) = (self.backend.clone(), name.to_string());
                    // Released when dropped: the state file is removed only if
                    // it still holds this token (no one took the lock since).
                    let release = move || {
                        if backend.read_state(&name).is_ok_and(|now| now == contents)
                            && let Err(e) = backend.remove_file(Area::State, &name)
                        {
                            tracing::warn!("cannot release the policy's lock {name}: {e:?}");
                        }
                    };
                    return Ok(Some(HeldLock::new(now, release)));
                }
                Err(Error::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
            let taken_at = match self.backend.read_state(name) {
                // Released meanwhile: try again. (Treating a vanished lock as
                // stale would remove the next holder's lock.)
                Err(Error::NotFound) => continue,
                Err(e) => return Err(e),
                Ok(bytes) => match std::str::from_utf8(&bytes).ok().and_then(|s| s.split_whitespace().next()?.parse().ok()) {
                    Some(t) => t,
                    // Not written by a host: judge it by the file's age.
                    None => match self.backend.file_meta(Area::State, name) {
                        Ok(meta) => meta.modified,
                        Err(Error::NotFound) => continue,
                        Err(e) => return Err(e),
                    },
                },
            };
            let stale = now.saturating_sub(taken_at) >= stale_after || taken_at > now.saturating_add(stale_after);
            if !stale {
                return Ok(None);
            }
            self.log_line(LogLevel::Info, &format!("breaking the stale lock {name} (taken at {taken_at}, now {now})"));
            match self.backend.remove_file(Area::State, name) {
                Ok(()) | Err(Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        // Changed hands under us three times: someone else has it.
        Ok(None)
    }
}

impl types::Host for PolicyView {}

impl view::HostLock for PolicyView {
    fn take(&mut self, name: String, stale_after: u64) -> Result<Option<Resource<HeldLock>>, Error> {
        let Some(lock) = self.take_lock(&name, stale_after)? else { return Ok(None) };
        match self.locks.push(lock) {
            Ok(handle) => Ok(Some(handle)),
            // The lock was dropped with the push's error, and so released.
            Err(e) => Err(Error::Io(format!("cannot hold the lock: {e}"))),
        }
    }

    fn taken_at(&mut self, lock: Resource<HeldLock>) -> u64 {
        self.locks.get(&lock).map(HeldLock::taken_at).unwrap_or(0)
    }

    fn drop(&mut self, lock: Resource<HeldLock>) -> wasmtime::Result<()> {
        self.locks.delete(lock)?;
        Ok(())
    }
}

impl view::Host for PolicyView {
    fn now(&mut self) -> u64 {
        self.backend.now_ms()
    }

    fn namespace(&mut self) -> String {
        self.backend.namespace_name()
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.log_line(level, &message);
    }

    fn list_entries(&mut self, order: EntryOrder, cursor: Option<String>, limit: u32) -> Result<EntryPage, Error> {
        self.entries_page(order, cursor, limit)
    }

    fn stat_entry(&mut self, name: String) -> Result<EntryMeta, Error> {
        check_entry_name(&name)?;
        self.backend.stat_entry(&name)
    }

    fn read_entry(&mut self, name: String, offset: u64, length: u32) -> Result<Vec<u8>, Error> {
        check_entry_name(&name)?;
        if length > MAX_READ {
            return Err(Error::TooLarge);
        }
        self.backend.read_entry(&name, offset, length)
    }

    fn remove_entry(&mut self, name: String) -> Result<(), Error> {
        let key = check_entry_name(&name)?;
        self.writable()?;
        self.backend.remove_entry(&key)?;
        Stats::bump(&self.backend.stats().removed);
        Ok(())
    }

    fn list_temp_files(&mut self, cursor: Option<String>, limit: u32) -> Result<FilePage, Error> {
        let (names, next) = self.files_page(cursor, limit)?;
        let files = names.iter().filter_map(|name| self.backend.file_meta(Area::Tmp, name).ok()).collect();
        Ok(FilePage { files, next })
    }

    fn remove_temp_file(&mut self, name: String) -> Result<(), Error> {
        check_plain_name(&name)?;
        self.writable()?;
        self.backend.remove_file(Area::Tmp, &name)
    }

    fn read_state(&mut self, name: String) -> Result<Vec<u8>, Error> {
        check_plain_name(&name)?;
        self.backend.read_state(&name)
    }

    fn write_state(&mut self, name: String, contents: Vec<u8>) -> Result<(), Error> {
        check_plain_name(&name)?;
        self.writable()?;
        self.within_state_quota(&name, contents.len())?;
        self.backend.write_state(&name, &contents)
    }

    fn create_state(&mut self, name: String, contents: Vec<u8>) -> Result<(), Error> {
        check_plain_name(&name)?;
        self.writable()?;
        self.within_state_quota(&name, contents.len())?;
        self.backend.create_state(&name, &contents)
    }

    fn remove_state(&mut self, name: String) -> Result<(), Error> {
        check_plain_name(&name)?;
        self.writable()?;
        self.backend.remove_file(Area::State, &name)
    }

    fn stat_state(&mut self, name: String) -> Result<FileMeta, Error> {
        check_plain_name(&name)?;
        self.backend.file_meta(Area::State, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names() {
        for good in ["last-cleanup", "cleanup.lock", "a", "A_b-9.x"] {
            assert!(check_plain_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../x", "/etc/passwd", "a/b", "a\\b", "nul\0", ".hidden", "sp ace", &"a".repeat(129)] {
            assert!(matches!(check_plain_name(bad), Err(Error::InvalidName(_))), "{bad:?}");
        }
    }
}
