//! The capability a policy is granted: one namespace of the cache, seen
//! through cap-std directory handles. This module implements the WIT `view`
//! interface; every name is checked here for a clear error, and resolved by
//! cap-std inside its area, which refuses `..`, absolute paths and symlinks
//! that lead out by construction.

use crate::bindings::capcache::policy::types::{self, EntryMeta, EntryPage, Error, FileMeta, FilePage, LogLevel};
use crate::bindings::capcache::policy::view;
use crate::key::Key;
use crate::namespace::{Namespace, invalid_entry_name, io_error};
use crate::stats::Stats;
use crate::store::{Area, Store};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

/// The most bytes one `read-entry` returns.
pub const MAX_READ: u32 = 1 << 20;
/// The largest state file a policy may write.
pub const MAX_STATE_FILE: usize = 1 << 20;
/// The most items on one page of a listing.
pub const MAX_PAGE: u32 = 4096;
/// The longest name accepted for a state or temporary file.
pub const MAX_NAME: usize = 128;

/// One policy instance's view of the cache.
pub struct PolicyView {
    namespace: Arc<Namespace>,
    /// Who is speaking, in log lines.
    policy_name: String,
    /// A listing taken at a listing's first page, so that later pages continue
    /// it rather than list the directory again.
    listing: Option<(Area, Vec<String>)>,
}

impl PolicyView {
    pub(crate) fn new(namespace: Arc<Namespace>, policy_name: String) -> Self {
        PolicyView { namespace, policy_name, listing: None }
    }

    /// Forgets per-call state; called before each call into the policy.
    pub fn begin_call(&mut self) {
        self.listing = None;
    }

    fn store(&self) -> &Store {
        &self.namespace.store
    }

    /// The page of `area` after `cursor`, continuing the snapshot if one was
    /// taken for this area.
    fn page(&mut self, area: Area, cursor: Option<String>, limit: u32) -> Result<(Vec<String>, Option<String>), Error> {
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let fresh = cursor.is_none() || !matches!(&self.listing, Some((a, _)) if *a == area);
        if fresh {
            let names = self.store().list_names(area).map_err(io_error)?;
            self.listing = Some((area, names));
        }
        let names = &self.listing.as_ref().unwrap().1;
        let start = match &cursor {
            None => 0,
            Some(c) => names.partition_point(|n| n.as_str() <= c.as_str()),
        };
        let end = (start + limit).min(names.len());
        let page = names[start..end].to_vec();
        let next = (end < names.len()).then(|| page.last().cloned()).flatten();
        Ok((page, next))
    }

    fn writable(&self) -> Result<(), Error> {
        if self.namespace.read_only { Err(Error::Denied) } else { Ok(()) }
    }
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

impl types::Host for PolicyView {}

impl view::Host for PolicyView {
    fn now(&mut self) -> u64 {
        self.store().now_ms()
    }

    fn log(&mut self, level: LogLevel, message: String) {
        let message: String = message.chars().take(4096).collect();
        let policy = &self.policy_name;
        match level {
            LogLevel::Debug => tracing::debug!(policy, "{message}"),
            LogLevel::Info => tracing::info!(policy, "{message}"),
            LogLevel::Warn => tracing::warn!(policy, "{message}"),
            LogLevel::Error => tracing::error!(policy, "{message}"),
        }
    }

    fn list_entries(&mut self, cursor: Option<String>, limit: u32) -> Result<EntryPage, Error> {
        let (names, next) = self.page(Area::Entries, cursor, limit)?;
        let mut usage = self.namespace.usage.lock();
        usage.refresh(self.store().namespace_dir()).map_err(io_error)?;
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            // Foreign files and vanished entries are not entries: skip them.
            if let Ok(meta) = self.namespace.entry_meta_with(&usage, &name) {
                entries.push(meta);
            }
        }
        Ok(EntryPage { entries, next })
    }

    fn stat_entry(&mut self, name: String) -> Result<EntryMeta, Error> {
        check_entry_name(&name)?;
        let mut usage = self.namespace.usage.lock();
        usage.refresh(self.store().namespace_dir()).map_err(io_error)?;
        self.namespace.entry_meta_with(&usage, &name)
    }

    fn read_entry(&mut self, name: String, offset: u64, length: u32) -> Result<Vec<u8>, Error> {
        check_entry_name(&name)?;
        if length > MAX_READ {
            return Err(Error::TooLarge);
        }
        let mut file = self.store().dir(Area::Entries).open(&name).map_err(io_error)?;
        file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
        let mut bytes = Vec::new();
        file.take(length as u64).read_to_end(&mut bytes).map_err(io_error)?;
        Ok(bytes)
    }

    fn remove_entry(&mut self, name: String) -> Result<(), Error> {
        let key = check_entry_name(&name)?;
        self.writable()?;
        self.namespace.remove_entry(&key).map_err(io_error)?;
        Stats::bump(&self.namespace.stats.removed);
        Ok(())
    }

    fn list_temp_files(&mut self, cursor: Option<String>, limit: u32) -> Result<FilePage, Error> {
        let (names, next) = self.page(Area::Tmp, cursor, limit)?;
        let files = names
            .iter()
            .filter_map(|name| self.store().file_info(Area::Tmp, name).ok())
            .map(|f| FileMeta { name: f.name, size: f.size, modified: f.modified_ms })
            .collect();
        Ok(FilePage { files, next })
    }

    fn remove_temp_file(&mut self, name: String) -> Result<(), Error> {
        check_plain_name(&name)?;
        self.writable()?;
        self.store().remove(Area::Tmp, &name).map_err(io_error)
    }

    fn read_state(&mut self, name: String) -> Result<Vec<u8>, Error> {
        check_plain_name(&name)?;
        let dir = self.store().dir(Area::State);
        let file = dir.open(&name).map_err(io_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE as u64 + 1).read_to_end(&mut bytes).map_err(io_error)?;
        if bytes.len() > MAX_STATE_FILE {
            return Err(Error::TooLarge);
        }
        Ok(bytes)
    }

    fn write_atomic(&mut self, name: String, contents: Vec<u8>) -> Result<(), Error> {
        check_plain_name(&name)?;
        self.writable()?;
        if contents.len() > MAX_STATE_FILE {
            return Err(Error::TooLarge);
        }
        self.store().write_atomic(Area::State, &name, &contents).map_err(io_error)
    }

    fn create_state(&mut self, name: String, contents: Vec<u8>) -> Result<(), Error> {
        check_plain_name(&name)?;
        self.writable()?;
        if contents.len() > MAX_STATE_FILE {
            return Err(Error::TooLarge);
        }
        self.store().create_exclusive(Area::State, &name, &contents).map_err(io_error)
    }

    fn remove_state(&mut self, name: String) -> Result<(), Error> {
        check_plain_name(&name)?;
        self.writable()?;
        self.store().remove(Area::State, &name).map_err(io_error)
    }

    fn stat_state(&mut self, name: String) -> Result<FileMeta, Error> {
        check_plain_name(&name)?;
        let f = self.store().file_info(Area::State, &name).map_err(io_error)?;
        Ok(FileMeta { name: f.name, size: f.size, modified: f.modified_ms })
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
