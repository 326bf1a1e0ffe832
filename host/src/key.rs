//! Cache keys: SHA-256 digests, named on disk in base64url without padding (43
//! characters), as wasmtime's cache does.
//!
//! Every key belongs to one [`KeyDomain`], whose tag is the first part hashed:
//! a key made from a caller's own key material (`Cache::get`, `insert`) can
//! never equal an artifact's, a manifest's or a compiled policy's key, whatever
//! bytes the caller passes, so a host that feeds attacker-influenced material
//! to `insert` cannot land a value on a module's key.
//!
//! Only [`ValueKey`] is public: [`Key`] and [`KeyDomain`] are the crate's, so
//! no safe call outside it can name a key of another domain, let alone store
//! bytes under one. Artifacts, manifests, compiled policies and incremental
//! code are written only by the code that compiled them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// A cache key of any domain: the digest of whatever identifies the value.
/// The crate's own: its field and its constructors stay private, so that a
/// key of the artifact domain is made only by the adapter that compiles.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Key(pub(crate) [u8; 32]);

/// A key in the value domain: the only kind of key a caller can make, and
/// so the only kind [`Cache::get_by_key`](crate::Cache::get_by_key) and
/// [`Cache::insert_by_key`](crate::Cache::insert_by_key) take. Whatever bytes
/// it is made from, it never equals a compiled module's key: storing under it
/// cannot plant code.
///
/// ```compile_fail
/// // Artifact keys are not public, and nothing public takes a key of
/// // another domain: planting a module's code through the API does not compile.
/// # let (cache, engine, wasm, code) = (capcache::Cache::disabled(), wasmtime::Engine::default(), vec![0u8], vec![0u8]);
/// let key = capcache::wasmtime::artifact_key(&engine, capcache::wasmtime::Kind::Module, &wasm);
/// cache.insert_by_key(&key, &code);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ValueKey(Key);

impl ValueKey {
    /// The key of the caller's key material.
    pub fn of(material: &[u8]) -> ValueKey {
        ValueKey(Key::derive(KeyDomain::Value, &[material]))
    }

    /// The key of several parts, each length-prefixed so that no two
    /// different sequences of parts share a key.
    pub fn of_parts(parts: &[&[u8]]) -> ValueKey {
        ValueKey(Key::derive(KeyDomain::Value, parts))
    }

    /// The entry's file name: the key in base64url, 43 characters.
    pub fn name(&self) -> String {
        self.0.name()
    }

    pub(crate) fn key(&self) -> &Key {
        &self.0
    }
}

/// Length of a key's file name.
pub(crate) const NAME_LEN: usize = 43;

/// What a key stands for. Keys of different domains never meet: the domain's
/// tag is hashed first, length-prefixed like every part after it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum KeyDomain {
    /// A value stored under the caller's own key material (`Cache::get`,
    /// `Cache::insert`, `get_or_insert_with`).
    Value,
    /// A compiled module or component (`capcache::wasmtime`).
    Artifact,
    /// A direct-mode manifest: a file's identity, mapped to its artifact's key.
    Manifest,
    /// A compiled policy component, kept by the host.
    PolicyCode,
    /// One function's code in Cranelift's incremental compilation cache.
    Incremental,
}

impl KeyDomain {
    fn tag(self) -> &'static [u8] {
        match self {
            KeyDomain::Value => b"capcache-value-v1",
            KeyDomain::Artifact => b"capcache-artifact-v3",
            KeyDomain::Manifest => b"capcache-manifest-v2",
            KeyDomain::PolicyCode => b"capcache-policy-code-v2",
            KeyDomain::Incremental => b"capcache-incremental-v2",
        }
    }
}

impl Key {
    /// The key of the caller's key material (domain [`KeyDomain::Value`]).
    pub(crate) fn of(material: &[u8]) -> Key {
        Key::derive(KeyDomain::Value, &[material])
    }

    /// The key of several parts in `domain`, each length-prefixed so that no
    /// two different sequences of parts, in any two domains, share a key.
    pub(crate) fn derive(domain: KeyDomain, parts: &[&[u8]]) -> Key {
        let mut hasher = Sha256::new();
        for part in std::iter::once(domain.tag()).chain(parts.iter().copied()) {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Key(hasher.finalize().into())
    }

    /// The entry's file name.
    pub(crate) fn name(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The key a file name stands for; `None` unless it is exactly a name that
    /// [`Key::name`] makes.
    pub(crate) fn from_name(name: &str) -> Option<Key> {
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
pub(crate) struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    pub(crate) fn finish_key(self) -> Key {
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
        assert_ne!(Key::derive(KeyDomain::Artifact, &[b"ab", b"c"]), Key::derive(KeyDomain::Artifact, &[b"a", b"bc"]));
    }

    /// The bytes SHA-256 is fed for `parts` in `domain`: what a caller would
    /// pass as key material to forge that key, if domains were not apart.
    fn preimage(domain: Option<KeyDomain>, parts: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for part in domain.map(KeyDomain::tag).into_iter().chain(parts.iter().copied()) {
            bytes.extend((part.len() as u64).to_le_bytes());
            bytes.extend(part);
        }
        bytes
    }

    #[test]
    fn no_value_key_equals_a_key_of_another_domain() {
        let parts: [&[u8]; 3] = [b"module", &[7; 32], &[9; 32]];
        for domain in [KeyDomain::Artifact, KeyDomain::Manifest, KeyDomain::PolicyCode, KeyDomain::Incremental] {
            let target = Key::derive(domain, &parts);
            // Whatever a caller passes as key material, with or without the
            // domain's tag spelled out, it lands in the value domain.
            for forged in [preimage(Some(domain), &parts), preimage(None, &parts)] {
                assert_ne!(Key::of(&forged), target, "{domain:?}");
            }
            assert_ne!(Key::derive(KeyDomain::Value, &parts), target, "{domain:?}");
        }
    }
}
