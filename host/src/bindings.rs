//! Host-side bindings of the WIT world in `wit/`.

wasmtime::component::bindgen!({
    path: "wit",
    world: "policy-world",
    additional_derives: [PartialEq, Eq],
    with: {
        "capcache:policy/view.lock": crate::lock::HeldLock,
    },
});

use crate::entry::StoredCodec;

/// The version of the contract (`wit/policy.wit`) this host speaks.
pub(crate) const CONTRACT_VERSION: &str = "0.3.0";
/// The contract's package, without its version.
pub(crate) const CONTRACT_PACKAGE: &str = "capcache:policy";
/// The world a policy component implements.
pub(crate) const POLICY_WORLD: &str = "capcache:policy/policy-world";
/// The interfaces a policy may import (besides WASI, which is granted
/// nothing), without their version.
pub(crate) const POLICY_IMPORTS: [&str; 2] = ["capcache:policy/types", "capcache:policy/view"];
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
