//! Host-side bindings of the WIT world in `wit/`.

wasmtime::component::bindgen!({
    path: "wit",
    world: "policy-world",
    additional_derives: [PartialEq, Eq],
});

use crate::entry::StoredCodec;
use self::capcache::policy::types::Codec;

/// A stored codec as the WIT names it.
pub(crate) fn codec_to_wit(codec: StoredCodec) -> Codec {
    match codec {
        StoredCodec::Raw => Codec::Raw,
        StoredCodec::Zstd { level } => Codec::Zstd(level),
    }
}

/// A policy's codec; the host never trusts a level: it is clamped to zstd's
/// range.
pub(crate) fn codec_from_wit(codec: Codec) -> StoredCodec {
    match codec {
        Codec::Raw => StoredCodec::Raw,
        Codec::Zstd(level) => StoredCodec::Zstd { level: level.clamp(1, crate::entry::MAX_ZSTD_LEVEL) },
    }
}
