//! The write protocol: every write goes to a fresh temporary file (create_new,
//! mode 0444) and is renamed (or hard-linked) into place; a re-encoding
//! replaces an entry only if it is still the file that was read.

use super::*;

impl EntryStore {
    /// Creates a fresh temporary file; its name is unique to this process and
    /// write, and create_new guarantees no one else has it.
    pub(super) fn temp_file(&self) -> io::Result<(String, cap_std::fs::File)> {
        loop {
            let name = self.temp_name();
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            crate::platform::create_with_mode(&mut options, FILE_MODE);
            match self.tmp.open_with(&name, &options) {
                Ok(file) => return Ok((name, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A temporary file's name that no other process and no other write of
    /// this one uses.
    pub(super) fn temp_name(&self) -> String {
        format!("{}-{}-{}.tmp", std::process::id(), self.temp_counter.fetch_add(1, Ordering::Relaxed), self.clock.now_ms())
    }

    /// Writes `contents` to a temporary file with its modification time set to
    /// `modified_ms`, and hands its name to `publish`; removes it if that fails.
    pub(super) fn write_then(
        &self,
        contents: &[u8],
        modified_ms: u64,
        publish: impl FnOnce(&str) -> io::Result<()>,
    ) -> io::Result<()> {
        let (temp, file) = self.temp_file()?;
        let result = (|| {
            let mut file = file.into_std();
            file.write_all(contents)?;
            file.set_modified(ms_to_system_time(modified_ms))?;
            drop(file);
            publish(&temp)
        })();
        if result.is_err() {
            let _ = self.tmp.remove_file(&temp);
        }
        result
    }

    /// Replaces `area/name` with `contents`, atomically.
    pub fn write_atomic(&self, area: Area, name: &str, contents: &[u8]) -> io::Result<()> {
        let now = self.clock.now_ms();
        self.write_then(contents, now, |temp| self.publish(temp, area, name))
    }

    /// Creates `area/name` with `contents` only if it does not exist, atomically
    /// (a hard link of a complete file, which fails if the name is taken).
    pub fn create_exclusive(&self, area: Area, name: &str, contents: &[u8]) -> io::Result<()> {
        let now = self.clock.now_ms();
        self.write_then(contents, now, |temp| {
            let linked = self.tmp.hard_link(temp, self.dir(area), name);
            let _ = self.tmp.remove_file(temp);
            linked
        })
    }

    /// Stores `value` under `key` with `codec`; computing it took `cost_us`
    /// (0: unknown).
    pub fn write_entry(&self, key: &Key, value: &[u8], codec: StoredCodec, cost_us: u64) -> io::Result<u64> {
        self.write_encoded(Area::Entries, key, value, codec, cost_us)
    }

    /// Stores an entry file made elsewhere (fetched from the shared tier and
    /// checked whole by the caller) under `key`, atomically.
    pub(crate) fn write_entry_file(&self, key: &Key, entry_bytes: &[u8]) -> io::Result<()> {
        let now = self.clock.now_ms();
        let name = key.name();
        self.write_then(entry_bytes, now, |temp| {
            let _publishing = self.publishing.lock();
            self.publish(temp, Area::Entries, &name)
        })
    }

    /// Encodes `value` as a new entry of `key` and renames it into `area`.
    pub(super) fn write_encoded(&self, area: Area, key: &Key, value: &[u8], codec: StoredCodec, cost_us: u64) -> io::Result<u64> {
        let now = self.clock.now_ms();
        let file = entry::encode(key, value, codec, now, cost_us)?;
        let name = key.name();
        self.write_then(&file, now, |temp| {
            let _publishing = self.publishing.lock();
            self.publish(temp, area, &name)
        })?;
        Ok(file.len() as u64)
    }

    /// Records, in the manifests area, that `manifest` stands for the artifact
    /// `artifact`. A manifest is checked as an entry is when read.
    pub(crate) fn write_manifest(&self, manifest: &Key, artifact: &Key) -> io::Result<()> {
        self.write_encoded(Area::Manifests, manifest, &artifact.0, StoredCodec::Raw, 0).map(drop)
    }

    /// Re-encodes the entry for `key` with `codec`, keeping its creation time
    /// and cost.
    /// The new file replaces the old only if the entry is still the file that
    /// was read: an insert that lands while a slow recompression runs is never
    /// overwritten with the older value. (Within this process the check and
    /// the rename are one step; another process's insert landing in the
    /// microseconds between them is the one race left.)
    /// Returns whether the entry was replaced.
    pub fn recode_entry(&self, key: &Key, codec: StoredCodec) -> io::Result<bool> {
        let name = key.name();
        let mut file = match self.entries.open(&name) {
            Ok(file) => file.into_std(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let identity = FileIdentity::of(&file, &file.metadata()?)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let Ok((header, value)) = entry::decode(&bytes, key, u64::MAX) else { return Ok(false) };
        if header.codec == codec {
            return Ok(false);
        }
        drop(bytes);
        let now = self.clock.now_ms();
        let encoded = entry::encode(key, &value, codec, header.created_ms, header.cost_us)?;
        let mut replaced = false;
        self.write_then(&encoded, now, |temp| {
            let _publishing = self.publishing.lock();
            let current = self.entries.open(&name).and_then(|f| {
                let f = f.into_std();
                FileIdentity::of(&f, &f.metadata()?)
            });
            let unchanged = current.is_ok_and(|now| (now.dev, now.ino) == (identity.dev, identity.ino));
            if !unchanged {
                return Err(io::Error::other("entry replaced meanwhile"));
            }
            self.publish(temp, Area::Entries, &name)?;
            replaced = true;
            Ok(())
        })
        .or_else(|e| if replaced { Err(e) } else { Ok(()) })?;
        Ok(replaced)
    }
}
