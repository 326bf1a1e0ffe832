//! Whole listings, paging hidden.

use crate::{EntryMeta, Error, FileMeta, view};

/// Items asked for per page: large pages mean few calls; the host caps them.
const PAGE: u32 = 1024;

/// Every entry of the namespace, in name order, one page at a time. Yields an
/// error once, then ends, if a page cannot be listed.
pub struct Entries {
    page: std::vec::IntoIter<EntryMeta>,
    cursor: Option<String>,
    done: bool,
}

/// Iterates over every entry (see [`Entries`]).
pub fn entries() -> Entries {
    Entries { page: Vec::new().into_iter(), cursor: None, done: false }
}

/// Every entry, collected; the first error ends the listing.
pub fn all_entries() -> Result<Vec<EntryMeta>, Error> {
    entries().collect()
}

impl Iterator for Entries {
    type Item = Result<EntryMeta, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            match view::list_entries(self.cursor.as_deref(), PAGE) {
                Ok(page) => {
                    self.page = page.entries.into_iter();
                    self.cursor = page.next;
                    self.done = self.cursor.is_none();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Every temporary file (writes in progress, or left by a crashed process),
/// in name order; see [`Entries`].
pub struct TempFiles {
    page: std::vec::IntoIter<FileMeta>,
    cursor: Option<String>,
    done: bool,
}

/// Iterates over every temporary file (see [`TempFiles`]).
pub fn temp_files() -> TempFiles {
    TempFiles { page: Vec::new().into_iter(), cursor: None, done: false }
}

impl Iterator for TempFiles {
    type Item = Result<FileMeta, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(file) = self.page.next() {
                return Some(Ok(file));
            }
            if self.done {
                return None;
            }
            match view::list_temp_files(self.cursor.as_deref(), PAGE) {
                Ok(page) => {
                    self.page = page.files.into_iter();
                    self.cursor = page.next;
                    self.done = self.cursor.is_none();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
