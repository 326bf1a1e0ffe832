//! The entry decoder never panics, never allocates beyond its limit, and
//! accepts only what the encoder produced.
#![no_main]

#[path = "../../host/src/key.rs"]
#[allow(dead_code)]
mod key;
#[path = "../../host/src/entry.rs"]
#[allow(dead_code)]
mod entry;

use entry::StoredCodec;
use key::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Key::of(b"fuzz");
    // Arbitrary bytes as an entry file.
    if let Ok((header, value)) = entry::decode(data, &key, 1 << 24) {
        // Whatever decodes must be what the encoder makes of it, byte for byte.
        let again = entry::encode(&key, &value, header.codec, header.created_ms).unwrap();
        assert!(again == data, "an entry decoded that the encoder would not have written");
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
    let file = entry::encode(&key, data, codec, 7).unwrap();
    let (_, value) = entry::decode(&file, &key, 1 << 24).unwrap();
    assert_eq!(value, data);
});
