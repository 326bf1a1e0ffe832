//! Usage counts, kept by the host in one append-only journal per namespace.
//!
//! wasmtime keeps a `.stats` file beside every entry and updates it with a racy
//! read-modify-write (two processes serving the same entry lose counts), and it
//! leaves the file behind when the entry is evicted. Here each hit appends a
//! fixed-size record to `usage.log` with O_APPEND, which the kernel positions
//! atomically, so concurrent processes never overwrite each other's counts;
//! removing an entry appends a reset record, and compaction drops the records of
//! entries that no longer exist. There is no per-entry file to orphan.

use crate::key::Key;
use cap_std::fs::{Dir, OpenOptions};
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub const JOURNAL: &str = "usage.log";
const RECORD: usize = 16;
const ID: usize = 12;
/// A record with this count resets the entry's count to zero.
const RESET: u32 = u32::MAX;
/// Past this size the journal is compacted after a maintenance pass.
pub const COMPACT_AT: u64 = 1 << 20;

/// An entry's identity in the journal: a prefix of its key, enough to tell
/// entries apart (96 bits).
pub type EntryId = [u8; ID];

pub fn id_of(key: &Key) -> EntryId {
    key.0[..ID].try_into().unwrap()
}

fn record(id: &EntryId, count: u32) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..ID].copy_from_slice(id);
    r[ID..].copy_from_slice(&count.to_le_bytes());
    r
}

/// The journal's contents folded into counts, kept up to date by reading only
/// what was appended since the last look.
#[derive(Debug, Default)]
pub struct Usage {
    counts: HashMap<EntryId, u64>,
    /// Identity (inode) and length of the journal read so far; a different
    /// inode means another process compacted it, and it is read afresh.
    inode: u64,
    offset: u64,
}

impl Usage {
    /// Appends one count per id (`Some`) or a reset (`None`), in one write.
    pub fn append(dir: &Dir, changes: &[(EntryId, Option<u32>)]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(changes.len() * RECORD);
        for (id, count) in changes {
            bytes.extend_from_slice(&record(id, count.unwrap_or(RESET)));
        }
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        crate::platform::create_with_mode(&mut options, crate::store::JOURNAL_MODE);
        let mut file = dir.open_with(JOURNAL, &options)?;
        file.write_all(&bytes)
    }

    /// Reads what was appended since the last call.
    pub fn refresh(&mut self, dir: &Dir) -> io::Result<()> {
        let mut file = match dir.open(JOURNAL) {
            Ok(file) => file.into_std(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                *self = Usage::default();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let metadata = file.metadata()?;
        let inode = crate::platform::FileIdentity::of(&file, &metadata)?.ino;
        if inode != self.inode || metadata.len() < self.offset {
            *self = Usage { inode, ..Usage::default() };
        }
        let whole = (metadata.len() - self.offset) / RECORD as u64 * RECORD as u64;
        if whole == 0 {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = vec![0u8; whole as usize];
        file.read_exact(&mut bytes)?;
        self.fold(&bytes);
        self.offset += whole;
        Ok(())
    }

    fn fold(&mut self, bytes: &[u8]) {
        for r in bytes.chunks_exact(RECORD) {
            let id: EntryId = r[..ID].try_into().unwrap();
            let count = u32::from_le_bytes(r[ID..].try_into().unwrap());
            if count == RESET {
                self.counts.remove(&id);
            } else {
                *self.counts.entry(id).or_default() += count as u64;
            }
        }
    }

    pub fn hits(&self, id: &EntryId) -> u64 {
        self.counts.get(id).copied().unwrap_or(0)
    }

    /// Rewrites the journal as one record per live entry (`live` says which
    /// ids still have an entry). The old journal is renamed aside first, so
    /// appends that race with compaction go to a fresh journal and are kept;
    /// only appends made to the old file in the moment between its rename and
    /// its reading can be lost, and those are usage counts, never entries.
    pub fn compact(dir: &Dir, live: impl Fn(&EntryId) -> bool) -> io::Result<()> {
        let aside = format!("{JOURNAL}.compacting-{}", std::process::id());
        match dir.rename(JOURNAL, dir, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let bytes = dir.read(&aside)?;
        let mut folded = Usage::default();
        folded.fold(&bytes[..bytes.len() / RECORD * RECORD]);
        let mut changes = Vec::new();
        for (id, mut count) in folded.counts.into_iter().filter(|(id, _)| live(id)) {
            while count > 0 {
                let part = count.min(RESET as u64 - 1);
                changes.push((id, Some(part as u32)));
                count -= part;
            }
        }
        Usage::append(dir, &changes)?;
        dir.remove_file(&aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    #[test]
    fn counts_resets_and_compaction() {
        let temp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(temp.path(), ambient_authority()).unwrap();
        let (a, b) = (id_of(&Key::of(b"a")), id_of(&Key::of(b"b")));
        let mut usage = Usage::default();
        Usage::append(&dir, &[(a, Some(1)), (a, Some(1)), (b, Some(5))]).unwrap();
        usage.refresh(&dir).unwrap();
        assert_eq!((usage.hits(&a), usage.hits(&b)), (2, 5));
        Usage::append(&dir, &[(b, None), (a, Some(1))]).unwrap();
        usage.refresh(&dir).unwrap();
        assert_eq!((usage.hits(&a), usage.hits(&b)), (3, 0));
        // Compaction keeps live counts, drops dead ids, and a reader that had
        // read the old journal notices the new one.
        Usage::append(&dir, &[(b, Some(7))]).unwrap();
        Usage::compact(&dir, |id| *id == a).unwrap();
        assert_eq!(dir.metadata(JOURNAL).unwrap().len(), RECORD as u64);
        usage.refresh(&dir).unwrap();
        assert_eq!((usage.hits(&a), usage.hits(&b)), (3, 0));
    }
}
