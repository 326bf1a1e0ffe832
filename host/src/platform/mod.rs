//! What differs between operating systems, behind one set of functions: who
//! may have written a file or directory (Unix owners and modes, Windows owner
//! SIDs and access control lists), what identifies a version of a file, and
//! how files are opened and created.
//!
//! Each platform's module has the same functions with the same meaning; the
//! rest of the crate calls only these and never names a platform's own API.
//! SECURITY.md says, per platform, what the trust checks here establish.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// What identifies one version of a file: entries are replaced only by
/// rename (a new file), and any write in place changes the change time, which
/// no one can set. A raw entry whose file still has the identity it had when
/// its digest was checked is served without hashing it again: that is what
/// makes a warm hit cost an open and a stat instead of a pass over the whole
/// artifact. Listings likewise take a known file's header from memory.
/// Direct mode identifies a module's file the same way.
///
/// On Unix `dev` and `ino` are the device and inode; on Windows the volume's
/// serial number and the file index, and `ctime` is the change time of
/// `FILE_BASIC_INFO` (which, as on Unix, a write sets and no caller can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    /// Seconds and nanoseconds.
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
}

/// What a file's size and last modification are, from a listing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) size: u64,
    /// Milliseconds since the Unix epoch (0 before it).
    pub(crate) modified_ms: u64,
}
