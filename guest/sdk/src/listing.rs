//! Whole listings, paging hidden, and the streaming LRU trim.
//!
//! A listing holds one page at a time: iterate it, do not collect it. A
//! namespace can hold millions of entries, and a policy that holds every
//! entry's metadata at once runs out of its memory (about 120 bytes an entry:
//! the default 64 MiB is gone past about half a million). [`all_entries`] is
//! for small caches and tests.

use crate::{EntryMeta, EntryOrder, Error, FileMeta, MaintainReport, Timestamp, view};

/// Items asked for per page: large pages mean few calls; the host caps them.
const PAGE: u32 = 1024;

/// How long [`trim_least_recently_used`] evicts before it stops, by the
/// host's clock: a third of the host's default `maintain` deadline (30 s),
/// so that a pass that must remove hundreds of thousands of files (a slow
/// filesystem removes a few tens of thousands a second) ends in time, and
/// the next pass goes on where it stopped.
pub const TRIM_BUDGET_MS: u64 = 10_000;

/// What a listing's entries take in all (the host counts them when the
/// listing starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Entries.
    pub entries: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// Limits on what the entries of a namespace take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries at most.
    pub entries: u64,
    /// Bytes on disk at most.
    pub bytes: u64,
}

impl Limits {
    /// Whether `totals` are within these limits.
    pub fn hold(&self, totals: Totals) -> bool {
        totals.entries <= self.entries && totals.bytes <= self.bytes
    }
}

/// Every entry of the namespace, in one order, one page at a time. Yields an
/// error once, then ends, if a page cannot be listed.
pub struct Entries {
    order: EntryOrder,
    page: std::vec::IntoIter<EntryMeta>,
    cursor: Option<String>,
    started: bool,
    done: bool,
    totals: Totals,
}

/// Iterates over every entry in name order (see [`Entries`]).
pub fn entries() -> Entries {
    entries_by(EntryOrder::Name)
}

/// Iterates over every entry in `order`: least recently used first, for a
/// pass that evicts from the front and stops once under its limits.
pub fn entries_by(order: EntryOrder) -> Entries {
    Entries { order, page: Vec::new().into_iter(), cursor: None, started: false, done: false, totals: Totals::default() }
}

/// Every entry, collected; the first error ends the listing. Holds every
/// entry's metadata at once: for small caches (see the module's docs).
pub fn all_entries() -> Result<Vec<EntryMeta>, Error> {
    entries().collect()
}

impl Entries {
    /// What the whole listing takes, from its first page (fetched now if
    /// the iteration has not started).
    pub fn totals(&mut self) -> Result<Totals, Error> {
        if !self.started {
            self.fetch()?;
        }
        Ok(self.totals)
    }

    fn fetch(&mut self) -> Result<(), Error> {
        let result = view::list_entries(self.order, self.cursor.as_deref(), PAGE);
        self.started = true;
        match result {
            Ok(page) => {
                self.page = page.entries.into_iter();
                self.cursor = page.next;
                self.done = self.cursor.is_none();
                self.totals = Totals { entries: page.total_entries, bytes: page.total_bytes };
                Ok(())
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }
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
            if let Err(e) = self.fetch() {
                return Some(Err(e));
            }
        }
    }
}

/// The least-recently-used trim of a cleanup pass, holding one page at a
/// time: if the entries pass `limits`, evicts until they are within
/// `targets` (hysteresis: a pass that must evict makes room for many
/// stores). Entries last used after `future_after` (dated in the future: a
/// clock that jumped) go first, then the least recently used. Counts every
/// entry as seen, and what is left, in `report`. Stops evicting after
/// [`TRIM_BUDGET_MS`] and says so in the report's summary: what is left
/// then still passes a limit, and the next pass goes on. An error if the
/// entries cannot be listed: what they take is then unknown.
pub fn trim_least_recently_used(
    report: &mut MaintainReport,
    limits: Limits,
    targets: Limits,
    future_after: Option<Timestamp>,
) -> Result<(), Error> {
    // Newest first: the totals, and whether any entry lies in the future.
    let mut newest = entries_by(EntryOrder::MostRecentlyUsed);
    let totals = newest.totals()?;
    report.entries_seen += totals.entries;
    let mut left = totals;
    if !limits.hold(totals) {
        let future_after = future_after.unwrap_or(Timestamp::MAX);
        let stop_at = crate::now().saturating_add(TRIM_BUDGET_MS);
        let out_of_time = || crate::now() >= stop_at;
        for entry in newest {
            let entry = entry?;
            if entry.last_used <= future_after || targets.hold(left) || out_of_time() {
                break;
            }
            evict_counted(report, &entry, true, &mut left);
        }
        for entry in entries_by(EntryOrder::LeastRecentlyUsed) {
            let entry = entry?;
            if entry.last_used > future_after || targets.hold(left) {
                break;
            }
            if out_of_time() {
                report.summary = format!("stopped after {TRIM_BUDGET_MS} ms with the entries still over a limit; the next pass goes on");
                break;
            }
            evict_counted(report, &entry, false, &mut left);
        }
    }
    report.entries_after += left.entries;
    report.bytes_after += left.bytes;
    Ok(())
}

/// Evicts `entry`, counting it in `report` and taking it from `left` if it is
/// gone.
fn evict_counted(report: &mut MaintainReport, entry: &EntryMeta, from_future: bool, left: &mut Totals) {
    if report.remove_uncounted(entry, from_future) {
        left.entries = left.entries.saturating_sub(1);
        left.bytes = left.bytes.saturating_sub(entry.stored_size);
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
