//! The on-disk layout and every filesystem operation, each relative to a
//! cap-std directory handle: nothing here can name a path outside the cache
//! root, whatever string it is given.
//!
//! ```text
//! <root>/<namespace>/entries/<key name>   one file per entry (see `entry`)
//!                   /manifests/<key name> direct-mode manifests (the host's own)
//!                   /tmp/<unique>         writes in progress
//!                   /state/<name>         the policy's own files
//!                   /usage.log            usage journal (see `usage`)
//! ```
//!
//! Every write goes to a fresh temporary file (create_new, so two writers never
//! share one) and is renamed into place, so readers see a whole old file or a
//! whole new one. A temporary file left by a crash never blocks a later write:
//! each write makes its own.
//!
//! Only the cache's owner may write it. Every file is created with an explicit
//! mode ([`FILE_MODE`]: read-only, whatever the umask) and every directory
//! with [`DIR_MODE`]; on opening, every directory of the namespace must be
//! owned by this user (or root) and writable by no one else; and an entry file
//! that another user owns, or that others can write, is never served.

use crate::clock::{Clock, ms_to_system_time, system_time_to_ms};
use crate::entry::{self, EntryError, Header, StoredCodec};
use crate::error::Error;
use crate::key::Key;
use cap_std::ambient_authority;
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const ENTRIES: &str = "entries";
pub const MANIFESTS: &str = "manifests";
pub const TMP: &str = "tmp";
pub const STATE: &str = "state";

/// The mode of every entry, state and temporary file: read-only for everyone,
/// so that no one but the owner (by changing the mode first) and root can
/// write one in place. Entries are replaced only by rename, which needs
/// write access to the directory, not to the file.
pub const FILE_MODE: u32 = 0o444;
/// The mode of the append-only journals (usage, statistics): written in place
/// by the owner's processes only.
pub const JOURNAL_MODE: u32 = 0o644;
/// The mode of every directory capcache creates: never writable by group or
/// others, whatever the umask (under umask 000 a default `mkdir` would make a
/// world-writable directory, which the opening check then refuses).
pub const DIR_MODE: u32 = 0o755;

/// The areas of a namespace, as directory handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// What the policy sees and manages.
    Entries,
    /// Direct-mode manifests: the host's own, kept out of the policy's sight
    /// and out of every count of entries.
    Manifests,
    Tmp,
    State,
}

/// What reading an entry found.
#[derive(Debug)]
pub enum ReadOutcome {
    /// A whole entry: its value, decoded.
    Found(Vec<u8>),
    Missing,
    Corrupt(EntryError),
    /// See [`OpenOutcome::Untrusted`].
    Untrusted(String),
}

/// How [`Store::open_entry`] hands back a raw entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEntryAs {
    /// As its open file, which holds the artifact from offset 0 (for
    /// wasmtime to map rather than copy).
    File,
    /// As its value, read (like a compressed entry's, decoded).
    Value,
}

/// What opening an entry found.
#[derive(Debug)]
pub enum OpenOutcome {
    /// A raw entry, checked: its file, positioned at the artifact.
    RawFile(std::fs::File),
    /// A compressed entry, checked and decoded.
    Value(Vec<u8>),
    Missing,
    Corrupt(EntryError),
    /// A file that someone other than the cache's owner wrote or could have
    /// written: never served, whatever its digest says.
    Untrusted(String),
}

/// Why an entry file is not trusted, if it is not: it must be a regular file
/// owned by this process's user (or root), which neither group nor others may
/// write. A valid digest proves a file whole, not who wrote it.
fn untrusted_because(metadata: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if !metadata.is_file() {
        Some("not a regular file".into())
    } else if metadata.uid() != me && metadata.uid() != 0 {
        Some(format!("owned by user {}, not by this process's user {me}", metadata.uid()))
    } else if metadata.mode() & 0o022 != 0 {
        Some(format!("writable by others (mode {:o})", metadata.mode() & 0o7777))
    } else {
        None
    }
}

/// What an entry's file says of it without reading its payload.
#[derive(Debug, Clone)]
pub struct EntryFacts {
    /// The entry's header, from the file's trailer.
    pub header: Header,
    /// The file's size.
    pub stored_size: u64,
    /// Its modification time: the entry's last use.
    pub last_used_ms: u64,
}

/// A listed file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub modified_ms: u64,
}

/// One cache namespace on disk.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    namespace: Dir,
    entries: Dir,
    manifests: Dir,
    tmp: Dir,
    state: Dir,
    clock: Arc<dyn Clock>,
    temp_counter: AtomicU64,
    read_only: bool,
    known: Mutex<HashMap<Key, Known>>,
    /// Held around each rename into entries/ by this process, so a
    /// re-encoding's check-then-rename never interleaves with an insert.
    publishing: Mutex<()>,
}

/// An entry file as this process last saw it: its header, and whether its
/// digest was checked.
#[derive(Debug, Clone)]
struct Known {
    identity: FileIdentity,
    header: Header,
    checked: bool,
}

/// What identifies one version of a file: entries are replaced only by
/// rename (a new inode), and any write in place changes the change time, which
/// no one can set. A raw entry whose file still has the identity it had when
/// its digest was checked is served without hashing it again: that is what
/// makes a warm hit cost an `openat` and an `fstat` instead of a pass over the
/// whole artifact. Listings likewise take a known file's header from memory,
/// after one `statx`.
/// Direct mode identifies a module's file the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    /// Seconds and nanoseconds.
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
}

/// The identity in std's or cap-std's metadata (two traits, same methods).
macro_rules! identity_of {
    ($metadata:expr) => {
        FileIdentity {
            dev: $metadata.dev(),
            ino: $metadata.ino(),
            size: $metadata.len(),
            mtime: ($metadata.mtime(), $metadata.mtime_nsec()),
            ctime: ($metadata.ctime(), $metadata.ctime_nsec()),
        }
    };
}

impl FileIdentity {
    pub(crate) fn of(metadata: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        identity_of!(metadata)
    }

    fn of_cap(metadata: &cap_std::fs::Metadata) -> FileIdentity {
        use cap_std::fs::MetadataExt;
        identity_of!(metadata)
    }
}

/// At most this many entry files are remembered (then forgotten at once: the
/// next hit of each hashes its file again). About 150 bytes each.
const KNOWN_MAX: usize = 1 << 17;

/// What to do when the cache root or the namespace does not exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IfMissing {
    /// Create it (mode 0755, whatever the umask).
    #[default]
    Create,
    /// Fail with [`Error::NoCache`], creating nothing: for commands that only
    /// look, where a mistyped directory must not pass for an empty cache.
    Fail,
}

/// How to treat the directory when opening.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    /// Open even if the directory is writable by others or owned by another user.
    pub allow_insecure: bool,
    /// Never write: serve what is there.
    pub read_only: bool,
    /// Whether a missing root or namespace is created.
    pub if_missing: IfMissing,
}

/// Refuses a directory that others can write: they could plant compiled code
/// that the host would load. Writable by group or world (the sticky bit does
/// not help: it stops others removing our files, not adding theirs), or owned
/// by another user (root's directories are trusted).
fn check_directory_security(dir: &Dir, path: &Path) -> Result<(), Error> {
    use cap_std::fs::{MetadataExt, PermissionsExt};
    let metadata = dir.dir_metadata().map_err(|source| Error::Directory { path: path.to_path_buf(), source })?;
    let mode = metadata.permissions().mode();
    let owner = metadata.uid();
    let me = rustix::process::geteuid().as_raw();
    let problem = if mode & 0o002 != 0 {
        Some(format!("world-writable (mode {:o})", mode & 0o7777))
    } else if mode & 0o020 != 0 {
        Some(format!("group-writable (mode {:o})", mode & 0o7777))
    } else if owner != me && owner != 0 {
        Some(format!("owned by user {owner}, not by this process's user {me}"))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::InsecureDirectory { path: path.to_path_buf(), problem }),
        None => Ok(()),
    }
}

fn is_unwritable(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem)
}

/// Whether `name` is acceptable as a namespace.
pub fn valid_namespace(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Opens the cache root, creating it (and its missing parents, each with
/// [`DIR_MODE`]) unless told not to or read-only.
pub(crate) fn open_root(root: &Path, options: StoreOptions) -> Result<Dir, Error> {
    let dir_err = |source| Error::Directory { path: root.to_path_buf(), source };
    match std::fs::symlink_metadata(root) {
        Ok(metadata) if !metadata.is_dir() && !root.is_dir() => {
            return Err(Error::NotADirectory { path: root.to_path_buf() });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if options.if_missing == IfMissing::Fail {
                return Err(Error::NoCache { path: root.to_path_buf() });
            }
            if !options.read_only {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(root).map_err(dir_err)?;
            }
        }
        Err(e) => return Err(dir_err(e)),
    }
    let root_dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(dir_err)?;
    if !options.allow_insecure {
        check_directory_security(&root_dir, root)?;
    }
    Ok(root_dir)
}

impl Store {
    /// Opens (creating as needed, unless `options` say otherwise) `namespace`
    /// under `root`. A directory that exists but cannot be written is opened
    /// read-only, with a warning.
    pub fn open(root: &Path, namespace: &str, clock: Arc<dyn Clock>, options: StoreOptions) -> Result<Store, Error> {
        if !valid_namespace(namespace) {
            return Err(Error::InvalidNamespace(namespace.to_string()));
        }
        let dir_err = |path: PathBuf| move |source| Error::Directory { path, source };
        let mut read_only = options.read_only;
        let root_dir = open_root(root, options)?;
        let path = root.join(namespace);
        if options.if_missing == IfMissing::Fail && !root_dir.is_dir(namespace) {
            return Err(Error::NoCache { path });
        }
        let open_area = |parent: &Dir, name: &str, path: &Path, read_only: &mut bool| -> Result<Dir, Error> {
            if !*read_only {
                use cap_std::fs::{DirBuilder, DirBuilderExt};
                match parent.create_dir_with(name, DirBuilder::new().mode(DIR_MODE)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) if is_unwritable(&e) => *read_only = true,
                    Err(e) => return Err(dir_err(path.to_path_buf())(e)),
                }
            }
            let dir = parent.open_dir(name).map_err(dir_err(path.to_path_buf()))?;
            if !options.allow_insecure {
                check_directory_security(&dir, path)?;
            }
            Ok(dir)
        };
        let namespace_dir = open_area(&root_dir, namespace, &path, &mut read_only)?;
        let entries = open_area(&namespace_dir, ENTRIES, &path.join(ENTRIES), &mut read_only)?;
        let manifests = open_area(&namespace_dir, MANIFESTS, &path.join(MANIFESTS), &mut read_only)?;
        let tmp = open_area(&namespace_dir, TMP, &path.join(TMP), &mut read_only)?;
        let state = open_area(&namespace_dir, STATE, &path.join(STATE), &mut read_only)?;
        let mut store = Store {
            entries,
            manifests,
            tmp,
            state,
            namespace: namespace_dir,
            path,
            clock,
            temp_counter: AtomicU64::new(0),
            read_only,
            known: Mutex::new(HashMap::new()),
            publishing: Mutex::new(()),
        };
        // Prove now, not on the first miss, that the directory is writable.
        if !store.read_only {
            match store.temp_file() {
                Ok((probe, _)) => {
                    let _ = store.tmp.remove_file(&probe);
                }
                Err(e) if is_unwritable(&e) => store.read_only = true,
                Err(e) => return Err(dir_err(store.path.join(TMP))(e)),
            }
        }
        if store.read_only && !options.read_only {
            tracing::warn!("cache directory {} cannot be written: serving hits only, storing nothing", store.path.display());
        }
        Ok(store)
    }

    /// Whether the store writes nothing.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The namespace's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(crate) fn namespace_dir(&self) -> &Dir {
        &self.namespace
    }

    pub fn dir(&self, area: Area) -> &Dir {
        match area {
            Area::Entries => &self.entries,
            Area::Manifests => &self.manifests,
            Area::Tmp => &self.tmp,
            Area::State => &self.state,
        }
    }

    /// Creates a fresh temporary file; its name is unique to this process and
    /// write, and create_new guarantees no one else has it.
    fn temp_file(&self) -> io::Result<(String, cap_std::fs::File)> {
        loop {
            let name = format!(
                "{}-{}-{}.tmp",
                std::process::id(),
                self.temp_counter.fetch_add(1, Ordering::Relaxed),
                self.clock.now_ms()
            );
            match self.tmp.open_with(&name, OpenOptions::new().write(true).create_new(true).mode(FILE_MODE)) {
                Ok(file) => return Ok((name, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `contents` to a temporary file with its modification time set to
    /// `modified_ms`, and hands its name to `publish`; removes it if that fails.
    fn write_then(
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
        self.write_then(contents, now, |temp| self.tmp.rename(temp, self.dir(area), name))
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

    /// Stores `value` under `key` with `codec`. `created_ms` is kept from an
    /// earlier version of the entry when re-encoding.
    pub fn write_entry(&self, key: &Key, value: &[u8], codec: StoredCodec, created_ms: Option<u64>) -> io::Result<u64> {
        self.write_encoded(Area::Entries, key, value, codec, created_ms)
    }

    /// Encodes `value` as an entry of `key` and renames it into `area`.
    fn write_encoded(&self, area: Area, key: &Key, value: &[u8], codec: StoredCodec, created_ms: Option<u64>) -> io::Result<u64> {
        let now = self.clock.now_ms();
        let file = entry::encode(key, value, codec, created_ms.unwrap_or(now))?;
        let name = key.name();
        self.write_then(&file, now, |temp| {
            let _publishing = self.publishing.lock();
            self.tmp.rename(temp, self.dir(area), &name)
        })?;
        Ok(file.len() as u64)
    }

    /// Records, in the manifests area, that `manifest` stands for the artifact
    /// `artifact`. A manifest is checked as an entry is when read.
    pub(crate) fn write_manifest(&self, manifest: &Key, artifact: &Key) -> io::Result<()> {
        self.write_encoded(Area::Manifests, manifest, &artifact.0, StoredCodec::Raw, None).map(drop)
    }

    /// The artifact key that manifest `manifest` records, if there is a whole,
    /// trusted one (a bad one is removed).
    pub(crate) fn read_manifest(&self, manifest: &Key) -> Option<Key> {
        match self.read_from(Area::Manifests, manifest, 64) {
            Ok(ReadOutcome::Found(value)) => <[u8; 32]>::try_from(value).ok().map(Key),
            Ok(ReadOutcome::Missing) => None,
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

    /// Opens `area/name` for reading: never through a symbolic link, and
    /// without blocking on a FIFO someone put there.
    fn open_file(&self, area: Area, name: &str) -> io::Result<std::fs::File> {
        let mut options = OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
        match self.dir(area).open_with(name, &options) {
            Ok(file) => Ok(file.into_std()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "a symbolic link"))
            }
            Err(e) => Err(e),
        }
    }

    /// Re-encodes the entry for `key` with `codec`, keeping its creation time.
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
        let identity = FileIdentity::of(&file.metadata()?);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let Ok((header, value)) = entry::decode(&bytes, key, u64::MAX) else { return Ok(false) };
        if header.codec == codec {
            return Ok(false);
        }
        drop(bytes);
        let now = self.clock.now_ms();
        let encoded = entry::encode(key, &value, codec, header.created_ms)?;
        let mut replaced = false;
        self.write_then(&encoded, now, |temp| {
            let _publishing = self.publishing.lock();
            let current = self.entries.open(&name).and_then(|f| f.into_std().metadata());
            let unchanged = current.is_ok_and(|m| {
                let now = FileIdentity::of(&m);
                (now.dev, now.ino) == (identity.dev, identity.ino)
            });
            if !unchanged {
                return Err(io::Error::other("entry replaced meanwhile"));
            }
            self.tmp.rename(temp, &self.entries, &name)?;
            replaced = true;
            Ok(())
        })
        .or_else(|e| if replaced { Err(e) } else { Ok(()) })?;
        Ok(replaced)
    }

    /// Reads and checks the entry for `key`.
    pub fn read_entry(&self, key: &Key, max_raw_size: u64) -> io::Result<ReadOutcome> {
        self.read_from(Area::Entries, key, max_raw_size)
    }

    fn read_from(&self, area: Area, key: &Key, max_raw_size: u64) -> io::Result<ReadOutcome> {
        let mut file = match self.open_file(area, &key.name()) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome::Missing),
            Err(e) => return Err(e),
        };
        if let Some(why) = untrusted_because(&file.metadata()?) {
            return Ok(ReadOutcome::Untrusted(why));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(match entry::decode(&bytes, key, max_raw_size) {
            Ok((_, value)) => ReadOutcome::Found(value),
            Err(e) => ReadOutcome::Corrupt(e),
        })
    }

    /// Reads just the header of entry `name` (from the end of its file), and
    /// its file's size and modification time (which is the entry's last use).
    pub fn entry_header(&self, name: &str) -> io::Result<EntryFacts> {
        let key = Key::from_name(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an entry name"))?;
        // A file seen before: one statx tells whether it is unchanged.
        let known = self.known.lock().get(&key).cloned();
        if let Some(known) = known {
            let metadata = self.entries.symlink_metadata(name)?;
            if metadata.is_file() && FileIdentity::of_cap(&metadata) == known.identity {
                let modified = metadata.modified().map(|t| system_time_to_ms(t.into_std())).unwrap_or(0);
                return Ok(EntryFacts { header: known.header, stored_size: metadata.len(), last_used_ms: modified });
            }
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
        self.remember(&key, Known { identity: FileIdentity::of(&metadata), header: trailer.header.clone(), checked: false });
        Ok(EntryFacts { header: trailer.header, stored_size: len, last_used_ms: modified })
    }

    fn remember(&self, key: &Key, known: Known) {
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
    pub fn open_entry(&self, key: &Key, max_raw_size: u64, raw: RawEntryAs) -> io::Result<OpenOutcome> {
        let mut file = match self.open_file(Area::Entries, &key.name()) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OpenOutcome::Missing),
            Err(e) => return Err(e),
        };
        let metadata = file.metadata()?;
        if let Some(why) = untrusted_because(&metadata) {
            return Ok(OpenOutcome::Untrusted(why));
        }
        if raw == RawEntryAs::File {
            let identity = FileIdentity::of(&metadata);
            let checked = self.known.lock().get(key).is_some_and(|k| k.checked && k.identity == identity);
            if checked {
                return Ok(OpenOutcome::RawFile(file));
            }
            let len = metadata.len();
            let tail = read_tail(&file, len)?;
            let trailer = match entry::decode_trailer(&tail, len, Some(key)) {
                Ok(trailer) => trailer,
                Err(e) => return Ok(OpenOutcome::Corrupt(e)),
            };
            if trailer.header.codec == StoredCodec::Raw {
                if let Err(e) = trailer.check_payload(&file)? {
                    return Ok(OpenOutcome::Corrupt(e));
                }
                file.seek(SeekFrom::Start(0))?;
                self.remember(key, Known { identity, header: trailer.header.clone(), checked: true });
                return Ok(OpenOutcome::RawFile(file));
            }
            file.seek(SeekFrom::Start(0))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(match entry::decode(&bytes, key, max_raw_size) {
            Ok((_, value)) => OpenOutcome::Value(value),
            Err(e) => OpenOutcome::Corrupt(e),
        })
    }

    /// Sets entry `key`'s last use to now. The file's contents are untouched,
    /// so a module mapped from it is unaffected; if its digest was checked in
    /// this process, the file stays known as checked under its new times.
    pub fn touch_entry(&self, key: &Key) -> io::Result<()> {
        let file = self.entries.open(key.name())?.into_std();
        let before = FileIdentity::of(&file.metadata()?);
        file.set_modified(ms_to_system_time(self.clock.now_ms()))?;
        let after = FileIdentity::of(&file.metadata()?);
        if let Some(known) = self.known.lock().get_mut(key)
            && known.identity == before {
                known.identity = after;
            }
        Ok(())
    }

    pub fn remove(&self, area: Area, name: &str) -> io::Result<()> {
        self.dir(area).remove_file(name)
    }

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
}

/// The last bytes of a file `len` long that hold an entry's whole trailer.
fn read_tail(file: &std::fs::File, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let tail_len = len.min(entry::MAX_TRAILER_LEN as u64);
    let mut tail = vec![0; tail_len as usize];
    file.read_exact_at(&mut tail, len - tail_len)?;
    Ok(tail)
}
