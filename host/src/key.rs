//! Cache keys: the SHA-256 of the caller's key material, named on disk in
//! base64url without padding (43 characters), as wasmtime's cache does.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// A cache key: the digest of whatever identifies the value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key(pub [u8; 32]);

/// Length of a key's file name.
pub const NAME_LEN: usize = 43;

impl Key {
    /// The key of this key material.
    pub fn of(material: &[u8]) -> Key {
        Key(Sha256::digest(material).into())
    }

    /// The key of several parts, each length-prefixed so that no two different
    /// sequences of parts share a key.
    pub fn of_parts(parts: &[&[u8]]) -> Key {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Key(hasher.finalize().into())
    }

    /// The entry's file name.
    pub fn name(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The key a file name stands for; `None` unless it is exactly a name that
    /// [`Key::name`] makes.
    pub fn from_name(name: &str) -> Option<Key> {
        if name.len() != NAME_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(name).ok()?;
        let key = Key(bytes.try_into().ok()?);
        // Reject non-canonical encodings (trailing bits set).
        (key.name() == name).then_some(key)
    }
}

/// A `std::hash::Hasher` that feeds SHA-256, to turn values that implement
/// `Hash` (such as wasmtime's engine compatibility hash) into key material.
#[derive(Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    pub fn finish_key(self) -> Key {
        Key(self.0.finalize().into())
    }
}

impl std::hash::Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap())
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_canonical() {
        let key = Key::of(b"hello");
        let name = key.name();
        assert_eq!(name.len(), NAME_LEN);
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Key::from_name(&name), Some(key));
        assert_eq!(Key::from_name("../etc/passwd"), None);
        // Same length and alphabet, but the last character carries stray bits
        // ('B' is 1; 256 bits leave the last character's low 2 bits unused).
        let mut bad = name.clone();
        bad.pop();
        bad.push('B');
        assert_eq!(Key::from_name(&bad), None);
    }

    #[test]
    fn parts_are_unambiguous() {
        assert_ne!(Key::of_parts(&[b"ab", b"c"]), Key::of_parts(&[b"a", b"bc"]));
    }
}
