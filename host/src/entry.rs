//! The entry file format. An entry is one file:
//!
//! ```text
//! payload | header (postcard) | digest | header length (u32 LE) | magic "CAPCACHE"
//! ```
//!
//! The payload comes first so that a raw entry's file is, from offset 0, the
//! artifact itself: wasmtime can map it straight from the file (it ignores
//! what follows the artifact). The header names the key the entry belongs to,
//! how the payload is stored, its sizes and when the entry was first stored; the
//! digest is a checksum of header and payload together: XXH3-128 (format 3),
//! BLAKE3 in format 2. Every read checks all of it, so a truncated,
//! bit-flipped, misplaced or foreign file is never served: it is reported as
//! [`EntryError`] and the caller treats it as a miss.
//!
//! The digest guards against accidents: a torn or truncated file, bits that
//! rot, a file put under another entry's name (the header names its key).
//! It is no proof of who wrote an entry, whatever the hash: anyone who can
//! write an entry can write its digest too. Who may write is settled apart:
//! only the owner's entries, in directories only the owner can write, are
//! read (`store`), and a shared tier's values carry an HMAC tag. So the
//! checksum need not resist an adversary, and the fastest 128-bit one serves:
//! a process's first hit hashes its artifact whole, and XXH3 costs a few
//! times less than BLAKE3 there (the README's cold-start figures).

use crate::key::Key;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"CAPCACHE";
/// Bumped whenever the layout changes; versions this host cannot read are
/// then corrupt and replaced. Version 3 added `cost_us`.
pub const FORMAT_VERSION: u16 = 3;
/// The oldest version still read: its header is version 3's less `cost_us`
/// (read as 0, unknown), so a cache of the last release keeps its entries.
const OLDEST_READ_VERSION: u16 = 2;
/// No header is larger; a larger length field means corruption.
const MAX_HEADER_LEN: usize = 1024;
/// The highest zstd level.
pub const MAX_ZSTD_LEVEL: u8 = 22;

/// How a payload is stored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredCodec {
    /// As is: the entry's file is the value from offset 0 (mapped for
    /// compiled code).
    Raw,
    /// Compressed with zstd.
    Zstd {
        /// The compression level, 1 to 22.
        level: u8,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub format_version: u16,
    pub key: [u8; 32],
    pub codec: StoredCodec,
    pub raw_size: u64,
    pub payload_size: u64,
    pub created_ms: u64,
    /// Microseconds computing the value took on its miss; 0 when unknown.
    pub cost_us: u64,
}

/// The fields every readable version's header begins with (version 2's
/// header whole).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct HeaderStart {
    format_version: u16,
    key: [u8; 32],
    codec: StoredCodec,
    raw_size: u64,
    payload_size: u64,
    created_ms: u64,
}

/// Parses a header of any readable version; every byte must be used.
fn decode_header(bytes: &[u8]) -> Result<Header, EntryError> {
    let bad = |e: postcard::Error| EntryError::BadHeader(e.to_string());
    let (start, rest) = postcard::take_from_bytes::<HeaderStart>(bytes).map_err(bad)?;
    let (cost_us, rest) = match start.format_version {
        FORMAT_VERSION => postcard::take_from_bytes::<u64>(rest).map_err(bad)?,
        OLDEST_READ_VERSION => (0, rest),
        other => return Err(EntryError::Version(other)),
    };
    if !rest.is_empty() {
        return Err(EntryError::BadHeader(format!("{} bytes after the header", rest.len())));
    }
    let HeaderStart { format_version, key, codec, raw_size, payload_size, created_ms } = start;
    Ok(Header { format_version, key, codec, raw_size, payload_size, created_ms, cost_us })
}

/// Bytes after the digest: header length and magic.
const SUFFIX_LEN: usize = 12;
const DIGEST_LEN: usize = 32;
/// Bytes at the end of a file that always hold the whole trailer.
pub const MAX_TRAILER_LEN: usize = MAX_HEADER_LEN + DIGEST_LEN + SUFFIX_LEN;

/// An entry's digest as it is computed: the checksum of its format version.
pub enum EntryHasher {
    /// Format 2: BLAKE3, on all cores for a large payload.
    Blake3(Box<blake3::Hasher>),
    /// Format 3: XXH3-128, in the first 16 bytes of the digest field (the
    /// rest zero: the field keeps format 2's 32 bytes).
    Xxh3(Box<twox_hash::XxHash3_128>),
}

impl EntryHasher {
    /// The hasher of entries of `format_version`.
    pub fn of_version(format_version: u16) -> EntryHasher {
        if format_version == OLDEST_READ_VERSION {
            EntryHasher::Blake3(Box::default())
        } else {
            EntryHasher::Xxh3(Box::new(twox_hash::XxHash3_128::new()))
        }
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            EntryHasher::Blake3(hasher) => hash_into(hasher, bytes),
            EntryHasher::Xxh3(hasher) => hasher.write(bytes),
        }
    }

    /// The digest field's 32 bytes.
    pub fn finalize(self) -> [u8; DIGEST_LEN] {
        match self {
            EntryHasher::Blake3(hasher) => hasher.finalize().into(),
            EntryHasher::Xxh3(hasher) => {
                let mut field = [0u8; DIGEST_LEN];
                field[..16].copy_from_slice(&hasher.finish_128().to_le_bytes());
                field
            }
        }
    }
}

fn digest(format_version: u16, header_bytes: &[u8], payload: &[u8]) -> [u8; DIGEST_LEN] {
    let mut hasher = EntryHasher::of_version(format_version);
    hasher.update(header_bytes);
    hasher.update(payload);
    hasher.finalize()
}

/// Why an entry file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("too short for a header")]
    Truncated,
    #[error("bad magic")]
    BadMagic,
    #[error("header length {0} out of range")]
    BadHeaderLength(usize),
    #[error("header does not decode: {0}")]
    BadHeader(String),
    #[error("format version {0}, expected {OLDEST_READ_VERSION} to {FORMAT_VERSION}")]
    Version(u16),
    #[error("entry belongs to another key")]
    WrongKey,
    #[error("payload is {actual} bytes, header says {expected}")]
    PayloadSize { expected: u64, actual: u64 },
    #[error("payload checksum mismatch")]
    Checksum,
    #[error("payload does not decompress: {0}")]
    Decompress(String),
    #[error("decoded payload is {actual} bytes, header says {expected}")]
    RawSize { expected: u64, actual: u64 },
}

/// Encodes `value` as a complete entry file for `key`, whose computation took
/// `cost_us` (0: unknown).
pub fn encode(key: &Key, value: &[u8], codec: StoredCodec, created_ms: u64, cost_us: u64) -> std::io::Result<Vec<u8>> {
    let payload = match codec {
        StoredCodec::Raw => None,
        StoredCodec::Zstd { level } => Some(zstd::bulk::compress(value, level.clamp(1, MAX_ZSTD_LEVEL) as i32)?),
    };
    let payload: &[u8] = payload.as_deref().unwrap_or(value);
    let header = Header {
        format_version: FORMAT_VERSION,
        key: key.0,
        codec,
        raw_size: value.len() as u64,
        payload_size: payload.len() as u64,
        created_ms,
        cost_us,
    };
    let header_bytes = postcard::to_allocvec(&header).map_err(std::io::Error::other)?;
    let mut file = Vec::with_capacity(payload.len() + header_bytes.len() + DIGEST_LEN + SUFFIX_LEN);
    file.extend_from_slice(payload);
    file.extend_from_slice(&header_bytes);
    file.extend_from_slice(&digest(FORMAT_VERSION, &header_bytes, payload));
    file.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    file.extend_from_slice(MAGIC);
    Ok(file)
}

/// What the end of an entry file says.
#[derive(Debug, Clone)]
pub struct Trailer {
    pub header: Header,
    /// Where the header starts in the file (the payload is everything before).
    pub header_offset: u64,
    header_bytes: Vec<u8>,
    digest: [u8; DIGEST_LEN],
}

impl Trailer {
    /// Checks the digest against a payload read from `payload` (a large raw
    /// entry is hashed as it streams from its file, never held whole).
    pub fn check_payload(&self, mut payload: impl std::io::Read) -> std::io::Result<Result<(), EntryError>> {
        let mut hasher = EntryHasher::of_version(self.header.format_version);
        hasher.update(&self.header_bytes);
        // Large reads: fewer calls, and both hashes go fastest over large
        // inputs (the commit that chose 1 MiB says by how much, for the first
        // hit of a large artifact).
        let mut buffer = vec![0u8; (1 << 20).min(self.header_offset as usize).max(1)];
        let mut left = self.header_offset;
        while left > 0 {
            let want = left.min(buffer.len() as u64) as usize;
            let read = payload.read(&mut buffer[..want])?;
            if read == 0 {
                return Ok(Err(EntryError::Truncated));
            }
            hasher.update(&buffer[..read]);
            left -= read as u64;
        }
        Ok(self.check_digest(hasher))
    }

    /// Checks the digest against the whole payload in memory (a large raw
    /// entry's file, mapped: hashed on all cores).
    pub fn check_mapped(&self, payload: &[u8]) -> Result<(), EntryError> {
        if payload.len() as u64 != self.header_offset {
            return Err(EntryError::Truncated);
        }
        let mut hasher = EntryHasher::of_version(self.header.format_version);
        hasher.update(&self.header_bytes);
        hasher.update(payload);
        self.check_digest(hasher)
    }

    /// Compares the digest of what `hasher` took in with the stored one.
    fn check_digest(&self, hasher: EntryHasher) -> Result<(), EntryError> {
        if hasher.finalize() == self.digest { Ok(()) } else { Err(EntryError::Checksum) }
    }
}

/// Adds `bytes` to `hasher`, on all cores when there are enough of them to
/// pay for the threads.
pub fn hash_into(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_HASH_MIN && crate::input::all_cores() {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// The smallest input [`hash_into`] hashes on all cores. BLAKE3's
/// documentation puts the break-even at 128 KiB for a pool that is running;
/// the first hit of a short-lived process must start the pool's threads
/// first, which costs more than a second core saves below this size
/// (`benches/cold.rs`, the first hit against a later one).
const PARALLEL_HASH_MIN: usize = 8 << 20;

/// The smallest raw payload that is mapped to be checked rather than read
/// through a buffer: compiled code about to be mapped anyway, whose first
/// hit in a process waits on the check, is hashed where it lies instead of
/// being copied first; below this, a copy costs less than a mapping.
pub const MAPPED_CHECK_MIN: u64 = 256 << 10;

/// Parses the trailer from `tail`, the last bytes of a file `file_len` long
/// (at least [`MAX_TRAILER_LEN`] of them, or the whole file). Checks the form,
/// the sizes and the key, not the digest: enough for listings.
pub fn decode_trailer(tail: &[u8], file_len: u64, key: Option<&Key>) -> Result<Trailer, EntryError> {
    if tail.len() < SUFFIX_LEN || (tail.len() as u64) > file_len {
        return Err(EntryError::Truncated);
    }
    let suffix = &tail[tail.len() - SUFFIX_LEN..];
    if &suffix[4..] != MAGIC {
        return Err(EntryError::BadMagic);
    }
    let header_len = u32::from_le_bytes(suffix[..4].try_into().unwrap()) as usize;
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(EntryError::BadHeaderLength(header_len));
    }
    let trailer_len = header_len + DIGEST_LEN + SUFFIX_LEN;
    if tail.len() < trailer_len {
        return Err(EntryError::Truncated);
    }
    let start = tail.len() - trailer_len;
    let header_bytes = &tail[start..start + header_len];
    let header = decode_header(header_bytes)?;
    if let StoredCodec::Zstd { level } = header.codec
        && !(1..=MAX_ZSTD_LEVEL).contains(&level) {
            return Err(EntryError::BadHeader(format!("zstd level {level}")));
        }
    if key.is_some_and(|k| k.0 != header.key) {
        return Err(EntryError::WrongKey);
    }
    let payload_len = file_len - trailer_len as u64;
    if payload_len != header.payload_size {
        return Err(EntryError::PayloadSize { expected: header.payload_size, actual: payload_len });
    }
    let digest = tail[start + header_len..start + header_len + DIGEST_LEN].try_into().unwrap();
    Ok(Trailer { header, header_offset: payload_len, header_bytes: header_bytes.to_vec(), digest })
}

/// Checks a whole entry file: its trailer and its digest. Returns the trailer;
/// the payload is `file[..trailer.header_offset]`.
pub fn check(file: &[u8], key: &Key) -> Result<Trailer, EntryError> {
    let trailer = decode_trailer(file, file.len() as u64, Some(key))?;
    let payload_end = trailer.header_offset as usize;
    if digest(trailer.header.format_version, &trailer.header_bytes, &file[..payload_end]) != trailer.digest {
        return Err(EntryError::Checksum);
    }
    Ok(trailer)
}

/// Checks a whole entry file and returns its header and decoded value.
pub fn decode(file: &[u8], key: &Key, max_raw_size: u64) -> Result<(Header, Vec<u8>), EntryError> {
    let trailer = check(file, key)?;
    let header = trailer.header;
    let payload = &file[..trailer.header_offset as usize];
    let value = match header.codec {
        StoredCodec::Raw => payload.to_vec(),
        StoredCodec::Zstd { .. } => {
            // The digest vouches for the header's size; the cap guards against a
            // writer that lied consistently.
            let capacity = header.raw_size.min(max_raw_size) as usize;
            zstd::bulk::decompress(payload, capacity).map_err(|e| EntryError::Decompress(e.to_string()))?
        }
    };
    if value.len() as u64 != header.raw_size {
        return Err(EntryError::RawSize { expected: header.raw_size, actual: value.len() as u64 });
    }
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzzer's seed corpus: valid entries of its key, raw and zstd, so
    /// that it explores past the digest check (random bytes practically never
    /// carry a valid checksum).
    const FUZZ_SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/entry_decode");

    fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let key = Key::of(b"fuzz");
        let text: Vec<u8> = b"capcache entry ".iter().copied().cycle().take(3000).collect();
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        [
            ("raw-empty", Vec::new(), StoredCodec::Raw),
            ("raw-small", b"\0asm\x01\0\0\0".to_vec(), StoredCodec::Raw),
            ("raw-4k", bytes.clone(), StoredCodec::Raw),
            ("zstd3-text", text.clone(), StoredCodec::Zstd { level: 3 }),
            ("zstd19-text", text, StoredCodec::Zstd { level: 19 }),
            ("zstd1-4k", bytes, StoredCodec::Zstd { level: 1 }),
        ]
        .into_iter()
        .map(|(name, value, codec)| (name, encode(&key, &value, codec, 7, 0).unwrap()))
        .collect()
    }

    #[test]
    #[ignore = "writes the fuzzer's seed corpus: cargo test -p capcache --lib -- --ignored write_fuzz_seeds"]
    fn write_fuzz_seeds() {
        std::fs::create_dir_all(FUZZ_SEEDS).unwrap();
        for (name, file) in fuzz_seeds() {
            std::fs::write(std::path::Path::new(FUZZ_SEEDS).join(name), file).unwrap();
        }
    }

    #[test]
    fn the_committed_fuzz_seeds_are_what_the_encoder_makes_now() {
        for (name, file) in fuzz_seeds() {
            let committed = std::fs::read(std::path::Path::new(FUZZ_SEEDS).join(name))
                .unwrap_or_else(|e| panic!("seed {name}: {e}; write them with --ignored write_fuzz_seeds"));
            assert!(committed == file, "seed {name} is stale: write them again with --ignored write_fuzz_seeds");
            decode(&committed, &Key::of(b"fuzz"), u64::MAX).unwrap();
        }
    }

    fn sample() -> (Key, Vec<u8>) {
        let value: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        (Key::of(b"sample"), value)
    }

    #[test]
    fn round_trips_both_codecs() {
        let (key, value) = sample();
        for codec in [StoredCodec::Raw, StoredCodec::Zstd { level: 3 }, StoredCodec::Zstd { level: 19 }] {
            let file = encode(&key, &value, codec, 1234, 5678).unwrap();
            let (header, decoded) = decode(&file, &key, u64::MAX).unwrap();
            assert_eq!(decoded, value);
            assert_eq!(header.codec, codec);
            assert_eq!((header.created_ms, header.cost_us), (1234, 5678));
        }
    }

    #[test]
    fn an_entry_of_format_2_is_read_with_an_unknown_cost() {
        let (key, value) = sample();
        // Version 2's header is what every version's begins with.
        let header = HeaderStart { format_version: 2, key: key.0, codec: StoredCodec::Raw, raw_size: value.len() as u64, payload_size: value.len() as u64, created_ms: 9 };
        let header_bytes = postcard::to_allocvec(&header).unwrap();
        let mut file = value.clone();
        file.extend_from_slice(&header_bytes);
        file.extend_from_slice(&digest(2, &header_bytes, &value));
        file.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
        file.extend_from_slice(MAGIC);
        let (decoded_header, decoded) = decode(&file, &key, u64::MAX).unwrap();
        assert_eq!((decoded, decoded_header.created_ms, decoded_header.cost_us), (value, 9, 0));
        // A version this host never wrote is refused by name.
        let mut future = postcard::to_allocvec(&HeaderStart { format_version: 4, ..header }).unwrap();
        future.extend_from_slice(&[0]);
        assert_eq!(decode_header(&future).unwrap_err(), EntryError::Version(4));
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let (key, value) = sample();
        let value = &value[..300];
        for codec in [StoredCodec::Raw, StoredCodec::Zstd { level: 3 }] {
            let file = encode(&key, value, codec, 1, 0).unwrap();
            for bit in 0..file.len() * 8 {
                let mut bad = file.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(&bad, &key, u64::MAX).is_err(), "flip of bit {bit} undetected");
            }
            for len in 0..file.len() {
                assert!(decode(&file[..len], &key, u64::MAX).is_err(), "truncation to {len} undetected");
            }
        }
    }

    #[test]
    fn streamed_check_agrees_with_the_whole_file_check() {
        let (key, value) = sample();
        let file = encode(&key, &value, StoredCodec::Raw, 1, 0).unwrap();
        let trailer = decode_trailer(&file, file.len() as u64, Some(&key)).unwrap();
        assert_eq!(trailer.check_payload(&file[..]).unwrap(), Ok(()));
        let mut bad = file.clone();
        bad[17] ^= 4;
        assert_eq!(trailer.check_payload(&bad[..]).unwrap(), Err(EntryError::Checksum));
        assert_eq!(trailer.check_payload(&file[..100]).unwrap(), Err(EntryError::Truncated));
    }

    #[test]
    fn mapped_check_of_a_large_payload_agrees_with_the_streamed_check() {
        let key = Key::of(b"large");
        let value: Vec<u8> = (0..(3u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let file = encode(&key, &value, StoredCodec::Raw, 1, 0).unwrap();
        let trailer = decode_trailer(&file, file.len() as u64, Some(&key)).unwrap();
        let payload = &file[..trailer.header_offset as usize];
        assert_eq!(trailer.check_payload(&file[..]).unwrap(), Ok(()));
        assert_eq!(trailer.check_mapped(payload), Ok(()));
        let mut bad = payload.to_vec();
        bad[(2 << 20) + 5] ^= 1;
        assert_eq!(trailer.check_mapped(&bad), Err(EntryError::Checksum));
        assert_eq!(trailer.check_payload(&bad[..]).unwrap(), Err(EntryError::Checksum));
        assert_eq!(trailer.check_mapped(&payload[..payload.len() - 1]), Err(EntryError::Truncated));
    }

    #[test]
    fn another_keys_entry_is_refused() {
        let (key, value) = sample();
        let file = encode(&key, &value, StoredCodec::Raw, 1, 0).unwrap();
        assert_eq!(decode(&file, &Key::of(b"other"), u64::MAX).unwrap_err(), EntryError::WrongKey);
    }
}
