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
use cap_std::fs::{Dir, OpenOptions};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod list;
pub(crate) use list::{EntryName, ListedEntry};
mod read;
mod write;

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
/// The mode of a cache root capcache creates: private to its owner. Compiled
/// code holds its module's data (strings, tables, at times secrets), and a
/// module kept private must not become readable to every local user once
/// compiled; the directories below it may then be 0755, since no one else
/// can reach them. (A root that exists keeps its mode.)
pub const ROOT_MODE: u32 = 0o700;

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

/// How [`EntryStore::open_entry`] hands back a raw entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEntryAs {
    /// As its open file, which holds the artifact from offset 0 (for
    /// wasmtime to map rather than copy).
    File,
    /// As its value, read (like a compressed entry's, decoded).
    Value,
}

/// A checked entry, as a read hands it back.
#[derive(Debug)]
pub enum Found {
    /// A raw entry: its file, positioned at the artifact (for wasmtime to
    /// map rather than copy).
    RawFile(std::fs::File),
    /// Its value, decoded.
    Value(Vec<u8>),
}

/// What reading or opening an entry found.
#[derive(Debug)]
pub enum EntryOutcome {
    /// A whole entry of its key, checked.
    Found(Found),
    Missing,
    Corrupt(EntryError),
    /// A file that someone other than the cache's owner wrote or could have
    /// written: never served, whatever its digest says.
    Untrusted(String),
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
pub struct EntryStore {
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

pub(crate) use crate::platform::FileIdentity;

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
/// that the host would load (see [`crate::platform::insecure_directory`]).
fn check_directory_security(dir: &Dir, path: &Path) -> Result<(), Error> {
    match crate::platform::insecure_directory(dir).map_err(|source| Error::Directory { path: path.to_path_buf(), source })? {
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

/// Opens the cache root, creating it (with [`ROOT_MODE`], its missing
/// parents with [`DIR_MODE`]) unless told not to or read-only. A root reached
/// through a symbolic link that another user owns is refused, as the
/// kernel's `protected_symlinks` refuses to follow one in a sticky directory:
/// in `/tmp`, anyone can create the cache's path as a link to a directory of
/// their choosing.
pub(crate) fn open_root(root: &Path, options: StoreOptions) -> Result<Dir, Error> {
    let dir_err = |source| Error::Directory { path: root.to_path_buf(), source };
    match std::fs::symlink_metadata(root) {
        Ok(metadata) if metadata.file_type().is_symlink() && !options.allow_insecure => {
            if let Some(problem) = crate::platform::untrusted_link(&metadata) {
                return Err(Error::UntrustedSymlink { path: root.to_path_buf(), problem });
            }
            if !root.is_dir() {
                return Err(Error::NotADirectory { path: root.to_path_buf() });
            }
        }
        Ok(metadata) if !metadata.is_dir() && !root.is_dir() => {
            return Err(Error::NotADirectory { path: root.to_path_buf() });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if options.if_missing == IfMissing::Fail {
                return Err(Error::NoCache { path: root.to_path_buf() });
            }
            if !options.read_only {
                if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::platform::path_dir_builder(DIR_MODE).recursive(true).create(parent).map_err(dir_err)?;
                }
                match crate::platform::create_private_dir(root, ROOT_MODE) {
                    Ok(()) => {}
                    // Another process made it meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(dir_err(e)),
                }
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

impl EntryStore {
    /// Opens (creating as needed, unless `options` say otherwise) `namespace`
    /// under `root`. A directory that exists but cannot be written is opened
    /// read-only, with a warning.
    pub fn open(root: &Path, namespace: &str, clock: Arc<dyn Clock>, options: StoreOptions) -> Result<EntryStore, Error> {
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
                match parent.create_dir_with(name, &crate::platform::dir_builder(DIR_MODE)) {
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
        let mut store = EntryStore {
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

    /// Removes `area/name`, so that the name is free at once. Where a
    /// removed file keeps its name while anything holds it open, or cannot
    /// be removed while mapped (Windows), it is set aside instead.
    pub fn remove(&self, area: Area, name: &str) -> io::Result<()> {
        match area {
            Area::Tmp => self.tmp.remove_file(name),
            _ if crate::platform::REMOVED_NAMES_LINGER => self.set_aside(area, name),
            _ => self.dir(area).remove_file(name),
        }
    }

    /// Moves `area/name` into the temporary area under a fresh temporary
    /// name, then removes it there if it can. One still in use is left for
    /// maintenance, which removes stale temporary files on every pass until
    /// it goes: a failed removal is retried, never lost, and a set-aside
    /// file is never served (no read looks in the temporary area).
    fn set_aside(&self, area: Area, name: &str) -> io::Result<()> {
        // Unique by process and counter, as a write's temporary file is; the
        // clock is not read (maintenance goes by the file's times).
        let aside = format!("{}-{}-removed.tmp", std::process::id(), self.temp_counter.fetch_add(1, Ordering::Relaxed));
        self.dir(area).rename(name, &self.tmp, &aside)?;
        if let Err(e) = self.tmp.remove_file(&aside) {
            tracing::debug!("{name}, in use by another process, is set aside as tmp/{aside} until it can be removed ({e})");
        }
        Ok(())
    }

    /// Renames the temporary file `temp` to `area/name`, replacing what is
    /// there. Where the file it replaces is mapped by another process
    /// (Windows refuses that rename), that file is set aside first.
    pub(super) fn publish(&self, temp: &str, area: Area, name: &str) -> io::Result<()> {
        match self.tmp.rename(temp, self.dir(area), name) {
            Err(e) if crate::platform::is_in_use(&e) => {
                self.set_aside(area, name).map_err(|_| e)?;
                self.tmp.rename(temp, self.dir(area), name)
            }
            published => published,
        }
    }
}

/// The last bytes of a file `len` long that hold an entry's whole trailer.
fn read_tail(file: &std::fs::File, len: u64) -> io::Result<Vec<u8>> {
    let tail_len = len.min(entry::MAX_TRAILER_LEN as u64);
    let mut tail = vec![0; tail_len as usize];
    crate::platform::read_exact_at(file, &mut tail, len - tail_len)?;
    Ok(tail)
}
