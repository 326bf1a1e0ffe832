// An LRU policy in JavaScript, with the default policy's settings and
// behaviour (wasmtime's cache worker, less its faults): entries stored at zstd
// `baseline-compression-level` (3), made raw once served
// `raw-entries-usage-threshold` times (2) (with `raw-entries = "never"`,
// recompressed at `optimized-compression-level` (20) after
// `optimized-compression-usage-counter-threshold` (256) hits); once per `cleanup-interval` (1h),
// across processes, stale temporary files removed and, when the entry count
// or total size passes its soft limit, least recently used entries evicted
// until both are under their percent-if-deleting targets.
//
// Built with componentize-qjs (QuickJS) and ComponentizeJS (SpiderMonkey):
// see guest/build-languages.

import * as cc from "../capcache-policy.js";

const LAST_CLEANUP = "last-cleanup";

const defaults = () => ({
  baseline: 3, optimized: 20, optimizedThreshold: 256, raw: "hot", rawThreshold: 2, interval: 3600000, taskTimeout: 1800000, drift: 86400000,
  countLimit: 65536, sizeLimit: 512 * 1048576, countPercent: 70, sizePercent: 70,
});
let config = defaults();

function cleanupDue(at) {
  const text = cc.readStateText(LAST_CLEANUP);
  if (text === null) return true;
  const last = Number(text.trim());
  return !Number.isFinite(last) || at - last >= config.interval || last > at + config.drift;
}

export const policy = {
  configure(settings) {
    const c = defaults();
    for (const s of settings) {
      switch (s.key) {
        case "baseline-compression-level": c.baseline = cc.zstdLevel(s); break;
        case "optimized-compression-level": c.optimized = cc.zstdLevel(s); break;
        case "optimized-compression-usage-counter-threshold": c.optimizedThreshold = cc.count(s); break;
        case "raw-entries": c.raw = cc.oneOf(s, { never: "never", hot: "hot", always: "always" }); break;
        case "raw-entries-usage-threshold": c.rawThreshold = cc.count(s); break;
        case "cleanup-interval": c.interval = cc.durationMs(s); break;
        case "optimizing-compression-task-timeout": c.taskTimeout = cc.durationMs(s); break;
        case "allowed-clock-drift-for-files-from-future": c.drift = cc.durationMs(s); break;
        case "file-count-soft-limit": c.countLimit = cc.count(s); break;
        case "files-total-size-soft-limit": c.sizeLimit = cc.size(s); break;
        case "file-count-limit-percent-if-deleting": c.countPercent = cc.percent(s); break;
        case "files-total-size-limit-percent-if-deleting": c.sizePercent = cc.percent(s); break;
        default: throw cc.unknown(s);
      }
    }
    if (c.baseline > c.optimized) {
      const levels = settings.filter((s) => s.key === "baseline-compression-level" || s.key === "optimized-compression-level");
      const refused = [...levels].reverse().find((s) => s.key === "baseline-compression-level") ?? levels.at(-1);
      throw cc.invalid(refused, "baseline-compression-level no greater than optimized-compression-level");
    }
    config = c;
  },

  admit(candidate) {
    if (config.raw === "always") return { tag: "store", val: { tag: "raw" } };
    return { tag: "store", val: { tag: "zstd", val: config.baseline } };
  },

  onHit(entry) {
    const zstd = entry.codec.tag === "zstd";
    if (config.raw === "hot") {
      return zstd && entry.hits >= config.rawThreshold ? [{ tag: "recode", val: { tag: "raw" } }] : [];
    }
    // wasmtime's behaviour: recompress hot entries at the optimized level.
    if (zstd && entry.hits >= config.optimizedThreshold && entry.codec.val < config.optimized) {
      return [{ tag: "recode", val: { tag: "zstd", val: config.optimized } }];
    }
    return [];
  },

  onInsert(entry) {
    // Every stored value is shared, if the host has shared tiers.
    return cleanupDue(cc.now()) ? [{ tag: "share" }, { tag: "maintain" }] : [{ tag: "share" }];
  },

  maintain() {
    const at = cc.now();
    const lock = cc.takeLock("cleanup.lock", Math.max(config.interval, config.taskTimeout));
    if (lock === null) return cc.Report.skipped("another process holds the cleanup lock");
    try {
      const report = new cc.Report();
      report.removeTempFilesOlderThan(config.taskTimeout, at);
      // Over a limit, the least recently used go (those from beyond the
      // allowed drift first) until within the percent-if-deleting targets:
      // one page of entries in memory at a time.
      const limits = [config.countLimit, config.sizeLimit];
      const targets = [Math.floor((config.countLimit * config.countPercent) / 100),
        Math.floor((config.sizeLimit * config.sizePercent) / 100)];
      cc.trimLeastRecentlyUsed(report, limits, targets, at + config.drift);
      cc.writeStateText(LAST_CLEANUP, at);
      return report.finish("cleaned: ");
    } finally {
      cc.release(lock);
    }
  },
};
