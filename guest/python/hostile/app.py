"""A misbehaving Python policy, for the host's tests: the setting `mode`
chooses the misbehaviour in `on-hit` (`loop`: spin forever; `alloc`: allocate
without bound); otherwise it stores everything at zstd level 1."""

from typing import List

import capcache_policy as cc
from wit_world import exports
from wit_world.exports import policy
from wit_world.imports import types

mode = ""


class Policy(exports.Policy):
    def configure(self, settings: List[policy.Setting]) -> None:
        global mode
        for s in settings:
            if s.key != "mode":
                raise cc.unknown(s)
            mode = s.value

    def admit(self, candidate: policy.Candidate) -> policy.Admission:
        return policy.Admission_Store(types.Codec_Zstd(1))

    def on_hit(self, entry: types.EntryMeta) -> List[policy.Action]:
        if mode == "loop":
            n = 0
            while True:
                n += 1
        if mode == "alloc":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        return []

    def on_insert(self, entry: types.EntryMeta) -> List[policy.Action]:
        return []

    def maintain(self) -> policy.MaintainReport:
        return cc.Report().finish()
