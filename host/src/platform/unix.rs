//! Unix: owners are user IDs (this process's effective user, or root), and
//! "others may write" is the group and world write bits.

use super::{FileIdentity, Stat};
use cap_std::fs::Dir;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

impl FileIdentity {
    /// The identity of the open `file`, whose metadata (from `fstat`) is
    /// `metadata`: on Unix the metadata holds all of it.
    pub(crate) fn of(_file: &File, metadata: &std::fs::Metadata) -> io::Result<FileIdentity> {
        Ok(FileIdentity {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        })
    }
}

/// The identity, size and modification of `dir/name` without opening it (one
/// `statx`, links not followed); `None` when it is not a regular file.
pub(crate) fn identity_by_name(dir: &Dir, name: &str) -> io::Result<Option<(FileIdentity, Stat)>> {
    let stat = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    let identity = FileIdentity {
        dev: stat.st_dev as u64,
        ino: stat.st_ino as u64,
        size: stat.st_size as u64,
        mtime: (stat.st_mtime as i64, stat.st_mtime_nsec as i64),
        ctime: (stat.st_ctime as i64, stat.st_ctime_nsec as i64),
    };
    Ok(Some((identity, stat_of(&stat))))
}

fn stat_of(stat: &rustix::fs::Stat) -> Stat {
    let ms = (stat.st_mtime as i128 * 1000 + stat.st_mtime_nsec as i128 / 1_000_000).max(0);
    Stat { size: stat.st_size as u64, modified_ms: u64::try_from(ms).unwrap_or(u64::MAX - 1) }
}

/// The size and modification of `dir/name`, links not followed; `None` when
/// it is gone.
pub(crate) fn stat_at(dir: &Dir, name: &str) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat_of(&stat))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Why an entry file is not trusted, if it is not: it must be a regular file
/// owned by this process's user (or root), which neither group nor others may
/// write. A valid digest proves a file whole, not who wrote it.
pub(crate) fn untrusted_file(_file: &File, metadata: &std::fs::Metadata) -> Option<String> {
    let me = me();
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

/// Why a directory of the cache is not safe to load code from, if it is not:
/// writable by group or world (the sticky bit does not help: it stops others
/// removing our files, not adding theirs), or owned by another user (root's
/// directories are trusted).
pub(crate) fn insecure_directory(dir: &Dir) -> io::Result<Option<String>> {
    use cap_std::fs::{MetadataExt, PermissionsExt};
    let metadata = dir.dir_metadata()?;
    let mode = metadata.permissions().mode();
    let owner = metadata.uid();
    let me = me();
    Ok(if mode & 0o002 != 0 {
        Some(format!("world-writable (mode {:o})", mode & 0o7777))
    } else if mode & 0o020 != 0 {
        Some(format!("group-writable (mode {:o})", mode & 0o7777))
    } else if owner != me && owner != 0 {
        Some(format!("owned by user {owner}, not by this process's user {me}"))
    } else {
        None
    })
}

/// The advice to fix what [`insecure_directory`] found.
pub(crate) const INSECURE_DIRECTORY_FIX: &str = "fix its ownership or permissions (chmod go-w)";

/// Why a secret's file is exposed, if it is: group or others can read or
/// write it (as ssh asks of its keys), with the command that fixes it.
pub(crate) fn exposed_secret(file: &File, shown: &str) -> io::Result<Option<String>> {
    let mode = file.metadata()?.mode();
    Ok((mode & 0o077 != 0).then(|| {
        format!("can be read or written by group or others (mode {:o}): run `chmod 600 {shown}`", mode & 0o777)
    }))
}

/// Why a symbolic link at the cache root is not followed, if it is not: it
/// belongs to another user (not root). In `/tmp`, anyone can create the
/// cache's path as a link to a directory of their choosing.
pub(crate) fn untrusted_link(link: &std::fs::Metadata) -> Option<String> {
    let me = me();
    (link.uid() != me && link.uid() != 0).then(|| format!("owned by user {}, not by this process's user {me}", link.uid()))
}

/// Opens for reading without blocking: a FIFO would otherwise wait for a
/// writer forever.
pub(crate) fn open_without_blocking(options: &mut cap_std::fs::OpenOptions) {
    use cap_std::fs::OpenOptionsExt;
    options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
}

/// The same, for a path outside any cache (a module, a policy).
pub(crate) fn open_path_without_blocking(options: &mut std::fs::OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
}

/// Whether opening with links not followed failed because the name is a link.
pub(crate) fn is_link_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// Whether a removed file's name stays taken while anything holds the file
/// open: not on Unix, where the name goes at once.
pub(crate) const REMOVED_NAMES_LINGER: bool = false;

/// Whether a removal or a replacing rename failed because another process
/// has the file in use: never on Unix, where a name goes whatever holds the
/// file.
pub(crate) fn is_in_use(_e: &io::Error) -> bool {
    false
}

/// Opens so that the file's times can be set: its owner may set them
/// through any descriptor, even of a read-only file.
pub(crate) fn open_to_set_times(_options: &mut cap_std::fs::OpenOptions) {}

/// Creates files with `mode`, whatever the umask.
pub(crate) fn create_with_mode(options: &mut cap_std::fs::OpenOptions, mode: u32) {
    use cap_std::fs::OpenOptionsExt;
    options.mode(mode);
}

/// A builder of directories with `mode`.
pub(crate) fn dir_builder(mode: u32) -> cap_std::fs::DirBuilder {
    use cap_std::fs::DirBuilderExt;
    let mut builder = cap_std::fs::DirBuilder::new();
    builder.mode(mode);
    builder
}

/// The same, for the cache root and its parents.
pub(crate) fn path_dir_builder(mode: u32) -> std::fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(mode);
    builder
}

/// `pread` of exactly `buffer.len()` bytes at `offset`.
pub(crate) fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buffer, offset)
}

/// What a file that is not a regular file is, for a message.
pub(crate) fn kind_of_special(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Creates the cache root with `mode` (private to its owner), whatever the
/// umask.
pub(crate) fn create_private_dir(path: &std::path::Path, mode: u32) -> io::Result<()> {
    path_dir_builder(mode).create(path)
}
