//! The entry decoder never panics, never allocates beyond its limit, and
//! accepts only whole entries: what decodes is a value that the encoder
//! stores and decodes back to the same header and value. (Not byte for byte
//! the same file: a zstd frame made by another zstd version or setting, as
//! another host of a shared tier may make, is a valid payload. libFuzzer
//! builds such frames, taking the digest the decoder compares against from
//! its comparison hooks: `fuzz/regressions/entry_decode`.)
#![no_main]

#[path = "../../host/src/key.rs"]
#[allow(dead_code)]
mod key;
#[path = "../../host/src/entry.rs"]
#[allow(dead_code)]
mod entry;
/// What the decoder asks of the host's `input` module: whether hashing may
/// start a thread pool. Fuzzing hashes on its own thread.
mod input {
    pub fn all_cores() -> bool {
        false
    }
}

use entry::StoredCodec;
use key::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Key::of(b"fuzz");
    // Arbitrary bytes as an entry file.
    if let Ok((header, value)) = entry::decode(data, &key, 1 << 24) {
        assert_eq!(value.len() as u64, header.raw_size);
        // Whatever decodes, the encoder stores again as the same entry.
        let again = entry::encode(&key, &value, header.codec, header.created_ms, header.cost_us).unwrap();
        let (header_again, value_again) = entry::decode(&again, &key, 1 << 24).unwrap();
        assert_eq!(value_again, value, "an entry's value does not survive re-encoding");
        assert_eq!(
            (header_again.codec, header_again.raw_size, header_again.created_ms, header_again.cost_us, header_again.key),
            (header.codec, header.raw_size, header.created_ms, header.cost_us, header.key),
            "an entry's header does not survive re-encoding"
        );
        if header.codec == StoredCodec::Raw && header.format_version == entry::FORMAT_VERSION {
            // A raw payload has one encoding: the value itself (an older
            // format's entry is written again in the current one).
            assert!(again == data, "a raw entry decoded that the encoder would not have written");
        }
    }
    // The streamed check (raw hits) agrees with the whole-file check.
    if let Ok(trailer) = entry::decode_trailer(data, data.len() as u64, Some(&key)) {
        let streamed = trailer.check_payload(data).unwrap();
        assert_eq!(streamed.is_ok(), entry::check(data, &key).is_ok());
    }
    let _ = entry::decode_trailer(data, data.len() as u64, None);
    let _ = entry::check(data, &key);
    // Arbitrary bytes as a value: encoded, it decodes back exactly.
    let codec = match data.first() {
        Some(b) if b % 2 == 0 => StoredCodec::Raw,
        Some(b) => StoredCodec::Zstd { level: 1 + b % 5 },
        None => StoredCodec::Raw,
    };
    let file = entry::encode(&key, data, codec, 7, 0).unwrap();
    let (_, value) = entry::decode(&file, &key, 1 << 24).unwrap();
    assert_eq!(value, data);
});
