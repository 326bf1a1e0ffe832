//! Reading entries: opened without following links or blocking, checked for
//! who could have written them, and integrity-checked; raw entries are hashed
//! once per file identity per process (the identity cache).

use super::*;

impl EntryStore {
    /// Opens `area/name` for reading: never through a symbolic link, and
    /// without blocking on a FIFO someone put there.
    pub(super) fn open_file(&self, area: Area, name: &str) -> io::Result<std::fs::File> {
        let mut options = OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No);
        crate::platform::open_without_blocking(&mut options);
        match self.dir(area).open_with(name, &options) {
            Ok(file) => Ok(file.into_std()),
            Err(e) if crate::platform::is_link_refused(&e) => {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "a symbolic link"))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads and checks the entry for `key`.
    pub fn read_entry(&self, key: &Key, max_raw_size: u64) -> io::Result<EntryOutcome> {
        self.read_from(Area::Entries, key, max_raw_size)
    }

    pub(super) fn read_from(&self, area: Area, key: &Key, max_raw_size: u64) -> io::Result<EntryOutcome> {
        let mut file = match self.open_file(area, &key.name()) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(EntryOutcome::Missing),
            Err(e) => return Err(e),
        };
        if let Some(why) = crate::platform::untrusted_file(&file, &file.metadata()?) {
            return Ok(EntryOutcome::Untrusted(why));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(match entry::decode(&bytes, key, max_raw_size) {
            Ok((_, value)) => EntryOutcome::Found(Found::Value(value)),
            Err(e) => EntryOutcome::Corrupt(e),
        })
    }

    /// The artifact key that manifest `manifest` records, if there is a whole,
    /// trusted one (a bad one is removed).
    pub(crate) fn read_manifest(&self, manifest: &Key) -> Option<Key> {
        match self.read_from(Area::Manifests, manifest, 64) {
            Ok(EntryOutcome::Found(Found::Value(value))) => <[u8; 32]>::try_from(value).ok().map(Key),
            Ok(EntryOutcome::Missing) => None,
            Ok(outcome) => {
                tracing::warn!("direct-mode manifest {} is unusable ({outcome:?}); removing it", manifest.name());
                let _ = self.remove(Area::Manifests, &manifest.name());
                None
            }
            Err(e) => {
                tracing::debug!("cannot read direct-mode manifest {}: {e}", manifest.name());
                None
            }
        }
    }

    /// Reads just the header of entry `name` (from the end of its file), and
    /// its file's size and modification time (which is the entry's last use).
    pub fn entry_header(&self, name: &str) -> io::Result<EntryFacts> {
        let key = Key::from_name(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an entry name"))?;
        // A file seen before: one statx tells whether it is unchanged.
        let known = self.known.lock().get(&key).cloned();
        if let Some(known) = known
            && let Some((identity, stat)) = crate::platform::identity_by_name(&self.entries, name)?
            && identity == known.identity
        {
            return Ok(EntryFacts { header: known.header, stored_size: stat.size, last_used_ms: stat.modified_ms });
        }
        // A symbolic link is never followed, wherever it points.
        let file = self.open_file(Area::Entries, name)?;
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let len = metadata.len();
        let tail = read_tail(&file, len)?;
        let trailer = entry::decode_trailer(&tail, len, Some(&key))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let modified = metadata.modified().map(system_time_to_ms).unwrap_or(0);
        self.remember(&key, Known { identity: FileIdentity::of(&file, &metadata)?, header: trailer.header.clone(), checked: false });
        Ok(EntryFacts { header: trailer.header, stored_size: len, last_used_ms: modified })
    }

    pub(super) fn remember(&self, key: &Key, known: Known) {
        let mut all = self.known.lock();
        if all.len() >= KNOWN_MAX {
            all.clear();
        }
        all.insert(*key, known);
    }

    /// Opens the entry for `key` and checks it whole. A raw entry is returned
    /// as its open file (which holds the artifact from offset 0, for wasmtime
    /// to map), hashed as it streams from the file on its first hit in this
    /// process and not again while the file keeps its identity; a compressed
    /// one as its decoded value.
    pub fn open_entry(&self, key: &Key, max_raw_size: u64, raw: RawEntryAs) -> io::Result<EntryOutcome> {
        let mut file = match self.open_file(Area::Entries, &key.name()) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(EntryOutcome::Missing),
            Err(e) => return Err(e),
        };
        let metadata = file.metadata()?;
        if let Some(why) = crate::platform::untrusted_file(&file, &metadata) {
            return Ok(EntryOutcome::Untrusted(why));
        }
        if raw == RawEntryAs::File {
            let identity = FileIdentity::of(&file, &metadata)?;
            let checked = self.known.lock().get(key).is_some_and(|k| k.checked && k.identity == identity);
            if checked {
                return Ok(EntryOutcome::Found(Found::RawFile(file)));
            }
            let len = metadata.len();
            let tail = read_tail(&file, len)?;
            let trailer = match entry::decode_trailer(&tail, len, Some(key)) {
                Ok(trailer) => trailer,
                Err(e) => return Ok(EntryOutcome::Corrupt(e)),
            };
            if trailer.header.codec == StoredCodec::Raw {
                if let Err(e) = check_raw_payload(&trailer, &file)? {
                    return Ok(EntryOutcome::Corrupt(e));
                }
                file.seek(SeekFrom::Start(0))?;
                self.remember(key, Known { identity, header: trailer.header.clone(), checked: true });
                return Ok(EntryOutcome::Found(Found::RawFile(file)));
            }
            file.seek(SeekFrom::Start(0))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(match entry::decode(&bytes, key, max_raw_size) {
            Ok((_, value)) => EntryOutcome::Found(Found::Value(value)),
            Err(e) => EntryOutcome::Corrupt(e),
        })
    }

    /// Sets entry `key`'s last use to now. The file's contents are untouched,
    /// so a module mapped from it is unaffected; if its digest was checked in
    /// this process, the file stays known as checked under its new times.
    pub fn touch_entry(&self, key: &Key) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No);
        crate::platform::open_to_set_times(&mut options);
        let file = self.entries.open_with(key.name(), &options)?.into_std();
        let before = FileIdentity::of(&file, &file.metadata()?)?;
        file.set_modified(ms_to_system_time(self.clock.now_ms()))?;
        let after = FileIdentity::of(&file, &file.metadata()?)?;
        if let Some(known) = self.known.lock().get_mut(key)
            && known.identity == before {
                known.identity = after;
            }
        Ok(())
    }
}

/// Checks the digest of a raw entry's payload, at the start of `file`, an
/// entry file of this store. A payload of [`entry::MAPPED_CHECK_MIN`] bytes
/// or more is mapped and hashed where it lies (on all cores when large)
/// rather than copied through a buffer.
fn check_raw_payload(trailer: &entry::Trailer, file: &std::fs::File) -> io::Result<Result<(), entry::EntryError>> {
    if trailer.header_offset < entry::MAPPED_CHECK_MIN {
        return trailer.check_payload(file);
    }
    // Safety: the map is read-only and private, and lives only for this
    // hash. The file is an entry of this store (its owner was checked),
    // replaced only by rename, never written in place; were its owner to
    // truncate it under us anyway, the read faults (SIGBUS), as it would for
    // the mapped artifact itself.
    let map = unsafe { memmap2::MmapOptions::new().len(trailer.header_offset as usize).map(file) };
    match map {
        Ok(map) => Ok(trailer.check_mapped(&map)),
        Err(_) => trailer.check_payload(file),
    }
}
