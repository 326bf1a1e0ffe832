//! Files a user names (modules, policies): read only if they are regular files
//! of a bounded size, and described in short messages when they are not what
//! they should be.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The most characters of a message quoted from a parser or a file: a
/// one-line text file of 200 MB must not become a 200 MB error message.
pub(crate) const MAX_EXCERPT: usize = 400;

/// Opens `path` for reading without blocking (a FIFO would otherwise wait for
/// a writer forever) and checks that it is a regular file of at most
/// `max_size` bytes. Returns the file and its metadata, taken from the open
/// descriptor, so they describe the very file that will be read.
pub(crate) fn open_regular_file(path: &Path, max_size: u64) -> io::Result<(File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let metadata = file.metadata()?;
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
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

/// The BLAKE3 hash and the size of the regular file at `path`, of at most
/// `max_size` bytes, read through one buffer (the file is never held whole,
/// nor mapped: a file someone truncates while it is mapped kills the reader).
pub(crate) fn hash_regular_file(path: &Path, max_size: u64) -> io::Result<([u8; 32], u64)> {
    let (file, _) = open_regular_file(path, max_size)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; HASH_BUFFER];
    let mut file = file.take(max_size + 1);
    let mut total = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        total += read as u64;
        crate::entry::hash_into(&mut hasher, &buffer[..read]);
    }
    if total > max_size {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("grew past the limit of {max_size} bytes")));
    }
    Ok((hasher.finalize().into(), total))
}

/// The buffer [`hash_regular_file`] reads through: large enough that BLAKE3
/// spreads each read over all cores, small enough to stay in cache.
const HASH_BUFFER: usize = 1 << 20;

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
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.wasm");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        for (path, what) in [(fifo.as_path(), "a FIFO"), (Path::new("/dev/zero"), "a character device"), (dir.path(), "a directory")] {
            let e = read_regular_file(path, 1 << 20).unwrap_err();
            assert!(e.to_string().starts_with(what), "{path:?}: {e}");
        }
        let big = dir.path().join("big.wasm");
        std::fs::write(&big, vec![0; 2000]).unwrap();
        assert_eq!(read_regular_file(&big, 1000).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(read_regular_file(&big, 2000).unwrap().len(), 2000);
    }
}
