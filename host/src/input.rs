//! Files a user names (modules, policies): read only if they are regular files
//! of a bounded size, and described in short messages when they are not what
//! they should be.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Whether hashing may use the global thread pool: it is started here on
/// first ask. A system that refuses its threads (a process limit, a cgroup's
/// `pids.max`) leaves hashing on the caller's thread, said once, rather than
/// a panic in the pool's first use.
pub(crate) fn all_cores() -> bool {
    static POOL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POOL.get_or_init(|| match rayon_core::ThreadPoolBuilder::new().build_global() {
        Ok(()) => true,
        // Already built by another part of the process: it is there.
        Err(e) if std::error::Error::source(&e).is_none() => true,
        Err(e) => {
            tracing::warn!("cannot start threads to hash on all cores ({e}): hashing on one");
            false
        }
    })
}

/// The most characters of a message quoted from a parser or a file: a
/// one-line text file of 200 MB must not become a 200 MB error message.
pub(crate) const MAX_EXCERPT: usize = 400;

/// Opens `path` for reading without blocking (a FIFO would otherwise wait for
/// a writer forever) and checks that it is a regular file of at most
/// `max_size` bytes. Returns the file and its metadata, taken from the open
/// descriptor, so they describe the very file that will be read.
pub(crate) fn open_regular_file(path: &Path, max_size: u64) -> io::Result<(File, std::fs::Metadata)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    crate::platform::open_path_without_blocking(&mut options);
    let file = options.open(path).map_err(|e| {
        // Windows refuses to open a directory as a file ("access is
        // denied"): say what it is instead.
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            io::Error::new(io::ErrorKind::InvalidInput, "a directory, not a regular file: name a file")
        } else {
            e
        }
    })?;
    let metadata = file.metadata()?;
    let kind = metadata.file_type();
    let what = (!kind.is_file()).then(|| crate::platform::kind_of_special(kind));
    if let Some(what) = what {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file: name a file")));
    }
    if metadata.len() > max_size {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{} bytes, more than the limit of {max_size}", metadata.len()),
        ));
    }
    Ok((file, metadata))
}

/// Reads the whole of the regular file at `path`, of at most `max_size` bytes.
/// Read straight into shared memory: a policy of tens of megabytes is read at
/// every host start.
pub(crate) fn read_regular_file(path: &Path, max_size: u64) -> io::Result<std::sync::Arc<[u8]>> {
    let (mut file, metadata) = open_regular_file(path, max_size)?;
    let len = metadata.len();
    let bytes = std::sync::Arc::<[u8]>::new_zeroed_slice(len as usize);
    // Safety: zeroed bytes are initialized `u8`s.
    let mut bytes = unsafe { bytes.assume_init() };
    let buffer = std::sync::Arc::get_mut(&mut bytes).expect("a new Arc has no other owner");
    let changed = || io::Error::other("the file changed while it was read; try again");
    file.read_exact(buffer).map_err(|e| if e.kind() == io::ErrorKind::UnexpectedEof { changed() } else { e })?;
    if file.read(&mut [0u8])? != 0 {
        return Err(changed());
    }
    Ok(bytes)
}

/// What [`hash_open_file`] read.
pub(crate) struct Hashed {
    /// The BLAKE3 digest of every byte read.
    pub(crate) digest: [u8; 32],
    /// How many bytes.
    pub(crate) len: u64,
    /// The first bytes (as many as the file had, up to 8; zeros after).
    head: [u8; 8],
}

impl Hashed {
    /// Whether the bytes read start with `prefix` (of at most 8 bytes).
    pub(crate) fn starts_with(&self, prefix: &[u8]) -> bool {
        self.len >= prefix.len() as u64 && self.head.starts_with(prefix)
    }
}

/// Hashes the whole of `file` (whose length, by `fstat`, is `len`; at most
/// `max_size`), reading it at explicit offsets so the file's position does
/// not matter. A large file is split along BLAKE3's tree into as many
/// subtrees as there are threads, each read and hashed on its own thread:
/// copying from the page cache is then spread over the cores as well as the
/// hashing (the digest is BLAKE3's of the whole file, as `blake3::hash`
/// gives). A file that shrinks while it is read is an error; bytes appended
/// after the `fstat` are not hashed.
pub(crate) fn hash_open_file(file: &File, max_size: u64) -> io::Result<Hashed> {
    use blake3::hazmat::{Mode, left_subtree_len, merge_subtrees_root};
    let len = file.metadata()?.len();
    if len > max_size {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("{len} bytes, more than the limit of {max_size}")));
    }
    let mut head = [0u8; 8];
    let head_len = (len as usize).min(head.len());
    read_exact_at(file, &mut head[..head_len], 0)?;
    // Asked only for a large file: the first ask starts the thread pool,
    // which a process that hashes only small files never needs.
    let splits = if len < PARALLEL_FILE_HASH_MIN || !all_cores() { 0 } else { rayon_core::current_num_threads().max(1).ilog2() };
    let digest = if splits == 0 {
        let mut hasher = blake3::Hasher::new();
        hash_range(file, &mut hasher, 0, len)?;
        hasher.finalize()
    } else {
        let left = left_subtree_len(len);
        let (l, r) = rayon_core::join(|| subtree(file, 0, left, splits - 1), || subtree(file, left, len - left, splits - 1));
        merge_subtrees_root(&l?, &r?, Mode::Hash)
    };
    Ok(Hashed { digest: digest.into(), len, head })
}

/// The chaining value of the subtree of `file` at `start` (a subtree
/// boundary), `len` bytes long, split `splits` more times across threads.
fn subtree(file: &File, start: u64, len: u64, splits: u32) -> io::Result<blake3::hazmat::ChainingValue> {
    use blake3::hazmat::{HasherExt, Mode, left_subtree_len, merge_subtrees_non_root};
    if splits == 0 || len < PARALLEL_FILE_HASH_MIN / 2 {
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(start);
        hash_range(file, &mut hasher, start, len)?;
        return Ok(hasher.finalize_non_root());
    }
    let left = left_subtree_len(len);
    let (l, r) = rayon_core::join(
        || subtree(file, start, left, splits - 1),
        || subtree(file, start + left, len - left, splits - 1),
    );
    Ok(merge_subtrees_non_root(&l?, &r?, Mode::Hash))
}

/// Feeds `len` bytes of `file` from `start` to `hasher`, through a buffer
/// small enough to stay in the core's cache.
fn hash_range(file: &File, hasher: &mut blake3::Hasher, start: u64, len: u64) -> io::Result<()> {
    let mut buffer = vec![0u8; (HASH_BUFFER as u64).min(len) as usize];
    let mut at = start;
    while at < start + len {
        let want = ((start + len - at) as usize).min(buffer.len());
        read_exact_at(file, &mut buffer[..want], at)?;
        hasher.update(&buffer[..want]);
        at += want as u64;
    }
    Ok(())
}

/// `pread` of exactly `buffer.len()` bytes at `offset`; a file that ends
/// sooner changed while it was read.
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    crate::platform::read_exact_at(file, buffer, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof { io::Error::other("the file shrank while it was read; try again") } else { e }
    })
}

/// The buffer each thread of [`hash_open_file`] reads through: it stays in
/// the core's cache between the copy and the hash.
const HASH_BUFFER: usize = 256 << 10;

/// The smallest file [`hash_open_file`] splits across threads, and the
/// smallest module hashed on all cores: below it, handing work to another
/// thread costs more than it saves.
pub(crate) const PARALLEL_FILE_HASH_MIN: u64 = 4 << 20;

/// What the kernel says of an open file beyond `fstat`'s identity, for
/// direct mode's manifests: on Linux the mount's unique ID (`statx`'s
/// `STATX_MNT_ID_UNIQUE`, Linux 6.8, which no later mount reuses; the
/// reusable `STATX_MNT_ID` before that), the birth time, and the inode's
/// generation (`FS_IOC_GETVERSION`, where the filesystem keeps one). Each is
/// zero where the kernel or the filesystem does not give it. None of them
/// proves the bytes are the same: a filesystem image can carry any birth time
/// and generation, and a write through a shared mapping changes none of them.
pub(crate) fn more_identity(file: &File) -> Vec<u8> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{AtFlags, StatxFlags, statx};
        /// `STATX_MNT_ID_UNIQUE`, which rustix does not name yet.
        const MNT_ID_UNIQUE: u32 = 0x4000;
        let mut facts = Vec::with_capacity(40);
        let mask = StatxFlags::BTIME | StatxFlags::MNT_ID | StatxFlags::from_bits_retain(MNT_ID_UNIQUE);
        match statx(file, "", AtFlags::EMPTY_PATH, mask) {
            Ok(stx) => {
                let has = |flag: u32| stx.stx_mask & flag != 0;
                let mount_kind: u64 = if has(MNT_ID_UNIQUE) { 2 } else if has(StatxFlags::MNT_ID.bits()) { 1 } else { 0 };
                let mount = if mount_kind > 0 { stx.stx_mnt_id } else { 0 };
                let (birth_s, birth_ns) =
                    if has(StatxFlags::BTIME.bits()) { (stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec) } else { (0, 0) };
                for n in [mount_kind, mount, birth_s as u64, u64::from(birth_ns)] {
                    facts.extend(n.to_le_bytes());
                }
            }
            Err(_) => facts.extend([0u8; 32]),
        }
        facts.extend(generation(file).unwrap_or(0).to_le_bytes());
        facts
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        Vec::new()
    }
}

/// The inode's generation number (`FS_IOC_GETVERSION`), where the filesystem
/// keeps one (ext2/3/4, XFS, btrfs, tmpfs).
#[cfg(target_os = "linux")]
fn generation(file: &File) -> Option<u64> {
    use rustix::ioctl::{Getter, ioctl, opcode};
    // `FS_IOC_GETVERSION` is `_IOR('v', 1, long)`; the kernel writes an int.
    const FS_IOC_GETVERSION: rustix::ioctl::Opcode = opcode::read::<std::ffi::c_long>(b'v', 1);
    // Safety: FS_IOC_GETVERSION writes at most a `long` into the output, and
    // `Getter` gives it a `long` to write into; a filesystem without it fails
    // with ENOTTY, which is an error here, not undefined behaviour.
    let getter = unsafe { Getter::<FS_IOC_GETVERSION, std::ffi::c_long>::new() };
    // Safety: as above, for the call itself, on a descriptor we own.
    unsafe { ioctl(file, getter) }.ok().map(|g| g as u32 as u64)
}

/// Reads `file` (expected to be `expected` bytes long) to its end, failing if
/// it grows past `max_size` meanwhile.
pub(crate) fn read_at_most(file: impl Read, expected: u64, max_size: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(expected.min(max_size) as usize);
    file.take(max_size + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_size {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("grew past the limit of {max_size} bytes")));
    }
    Ok(bytes)
}

/// `message` with each line cut to a short excerpt, and at most a few lines.
pub(crate) fn excerpt(message: &str) -> String {
    let mut out = String::new();
    for (n, line) in message.lines().enumerate() {
        if n == 8 {
            out.push_str("\n[...]");
            break;
        }
        if n > 0 {
            out.push('\n');
        }
        match line.char_indices().nth(MAX_EXCERPT) {
            Some((end, _)) => {
                out.push_str(&line[..end]);
                out.push_str(" [...]");
            }
            None => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_of_a_huge_line_is_short() {
        let line = "x".repeat(10_000_000);
        let shown = excerpt(&format!("expected a paren\n --> f.wat:1:1\n  | {line}\n"));
        assert!(shown.len() < 2 * MAX_EXCERPT, "{}", shown.len());
        assert!(shown.starts_with("expected a paren\n --> f.wat:1:1"));
    }

    #[test]
    fn a_file_hashed_in_subtrees_has_blake3s_digest_of_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 1024u64;
        let sizes = [0, 1, 7, 8, chunk, chunk + 1, PARALLEL_FILE_HASH_MIN - 1, PARALLEL_FILE_HASH_MIN, 9 * (1 << 20) + 123];
        for size in sizes {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &bytes).unwrap();
            let file = File::open(&path).unwrap();
            let hashed = hash_open_file(&file, size + 10).unwrap();
            assert_eq!(hashed.digest, *blake3::hash(&bytes).as_bytes(), "{size} bytes");
            assert_eq!(hashed.len, size);
            assert!(hashed.starts_with(&bytes[..bytes.len().min(4)]));
            assert!(hash_open_file(&file, size.saturating_sub(1)).is_err() || size == 0);
        }
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut special = vec![(dir.path().to_path_buf(), "a directory")];
        // Windows' file systems have neither FIFOs nor device files.
        #[cfg(unix)]
        {
            let fifo = dir.path().join("x.wasm");
            // mkfifo(1): rustix has no mkfifoat on macOS.
            assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
            special.extend([(fifo, "a FIFO"), (Path::new("/dev/zero").to_path_buf(), "a character device")]);
        }
        for (path, what) in &special {
            let e = read_regular_file(path, 1 << 20).unwrap_err();
            assert!(e.to_string().starts_with(what), "{path:?}: {e}");
        }
        let big = dir.path().join("big.wasm");
        std::fs::write(&big, vec![0; 2000]).unwrap();
        assert_eq!(read_regular_file(&big, 1000).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(read_regular_file(&big, 2000).unwrap().len(), 2000);
    }
}
