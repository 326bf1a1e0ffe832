"""An LRU policy in Python, with the default policy's settings and behaviour
(wasmtime's cache worker, less its faults): entries stored at zstd
`baseline-compression-level` (3), made raw once served
`raw-entries-usage-threshold` times (2) (with `raw-entries = "never"`,
recompressed at `optimized-compression-level` (20) after
`optimized-compression-usage-counter-threshold` (256) hits); once per `cleanup-interval` (1h),
across processes, stale temporary files removed and, when the entry count or
total size passes its soft limit, least recently used entries evicted until
both are under their percent-if-deleting targets.

Built with componentize-py and `--stub-wasi` (see guest/build-languages).
"""

from typing import List

import capcache_policy as cc
from wit_world import exports
from wit_world.exports import policy
from wit_world.imports import types, view

LAST_CLEANUP = "last-cleanup"

config = {}


def defaults() -> dict:
    return {
        "baseline": 3,
        "optimized": 20,
        "optimized_threshold": 256,
        "raw": "hot",
        "raw_threshold": 2,
        "interval": 3_600_000,
        "task_timeout": 30 * 60_000,
        "drift": 86_400_000,
        "count_limit": 65_536,
        "size_limit": 512 << 20,
        "count_percent": 70,
        "size_percent": 70,
    }


def cleanup_due(at: int) -> bool:
    try:
        last = int(view.read_state(LAST_CLEANUP).decode().strip())
    except Exception:
        return True
    return at - last >= config["interval"] or last > at + config["drift"]


class Policy(exports.Policy):
    def configure(self, settings: List[policy.Setting]) -> None:
        global config
        c = defaults()
        for s in settings:
            if s.key == "baseline-compression-level":
                c["baseline"] = cc.zstd_level(s)
            elif s.key == "optimized-compression-level":
                c["optimized"] = cc.zstd_level(s)
            elif s.key == "optimized-compression-usage-counter-threshold":
                c["optimized_threshold"] = cc.count(s)
            elif s.key == "raw-entries":
                c["raw"] = cc.one_of(s, {"never": "never", "hot": "hot", "always": "always"})
            elif s.key == "raw-entries-usage-threshold":
                c["raw_threshold"] = cc.count(s)
            elif s.key == "cleanup-interval":
                c["interval"] = cc.duration_ms(s)
            elif s.key == "optimizing-compression-task-timeout":
                c["task_timeout"] = cc.duration_ms(s)
            elif s.key == "allowed-clock-drift-for-files-from-future":
                c["drift"] = cc.duration_ms(s)
            elif s.key == "file-count-soft-limit":
                c["count_limit"] = cc.count(s)
            elif s.key == "files-total-size-soft-limit":
                c["size_limit"] = cc.size(s)
            elif s.key == "file-count-limit-percent-if-deleting":
                c["count_percent"] = cc.percent(s)
            elif s.key == "files-total-size-limit-percent-if-deleting":
                c["size_percent"] = cc.percent(s)
            else:
                raise cc.unknown(s)
        if c["baseline"] > c["optimized"]:
            levels = [s for s in settings if s.key in ("baseline-compression-level", "optimized-compression-level")]
            refused = next((s for s in reversed(levels) if s.key == "baseline-compression-level"), levels[-1])
            raise cc.invalid(refused, "baseline-compression-level no greater than optimized-compression-level")
        config = c

    def admit(self, candidate: policy.Candidate) -> policy.Admission:
        if config["raw"] == "always":
            return policy.Admission_Store(types.Codec_Raw())
        return policy.Admission_Store(types.Codec_Zstd(config["baseline"]))

    def on_hit(self, entry: types.EntryMeta) -> List[policy.Action]:
        zstd = isinstance(entry.codec, types.Codec_Zstd)
        if config["raw"] == "hot":
            if zstd and entry.hits >= config["raw_threshold"]:
                return [policy.Action_Recode(types.Codec_Raw())]
            return []
        # wasmtime's behaviour: recompress hot entries at the optimized level.
        if zstd and entry.hits >= config["optimized_threshold"] and entry.codec.value < config["optimized"]:
            return [policy.Action_Recode(types.Codec_Zstd(config["optimized"]))]
        return []

    def on_insert(self, entry: types.EntryMeta) -> List[policy.Action]:
        # Every stored value is shared, if the host has shared tiers.
        return [policy.Action_Share(), policy.Action_Maintain()] if cleanup_due(cc.now()) else [policy.Action_Share()]

    def maintain(self) -> policy.MaintainReport:
        at = cc.now()
        lock = cc.take_lock("cleanup.lock", max(config["interval"], config["task_timeout"]))
        if lock is None:
            return cc.Report.skipped("another process holds the cleanup lock")
        with lock:
            report = cc.Report()
            report.remove_temp_files_older_than(config["task_timeout"], at)
            # Over a limit, the least recently used go (those from beyond
            # the allowed drift first) until within the percent-if-deleting
            # targets: one page of entries in memory at a time.
            limits = (config["count_limit"], config["size_limit"])
            targets = (config["count_limit"] * config["count_percent"] // 100,
                       config["size_limit"] * config["size_percent"] // 100)
            cc.trim_least_recently_used(report, limits, targets, at + config["drift"])
            view.write_state(LAST_CLEANUP, str(at).encode())
            return report.finish("cleaned: ")
