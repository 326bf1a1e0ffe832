// Helpers for capcache policies written in JavaScript, for both engines:
// componentize-qjs (QuickJS) and ComponentizeJS (SpiderMonkey): settings
// parsed in the formats of wasmtime's cache configuration ("1h", "512Mi",
// "70%") and refused in the host's shape, whole listings with the paging
// hidden, the shared lock, a maintenance report builder. The contract is
// wit/policy.wit. Build without WASI (see guest/build-languages): a policy
// has none, and Date.now() and console.log trap; use now() and log() here.
//
// The engines differ in one way a policy sees: a WIT u64 (sizes, times, hit
// counts) is a Number in QuickJS and a BigInt in SpiderMonkey. These helpers
// take and give Numbers in both; an export's own arguments (the entry given
// to onHit) keep the engine's type: compare them freely, but pass them
// through num() before arithmetic.

import * as view from "capcache:policy/view@0.3.0";

// Whether this engine gives u64 as BigInt, known at the first call into the
// host (not at module load: ComponentizeJS runs the module's top level
// when the component is built, with no host to call).
let big = null;
const bigInts = () => (big ??= typeof view.now() === "bigint");

// A u64 from the host as a Number.
export const num = (x) => (typeof x === "bigint" ? Number(x) : x);
// A Number as this engine gives the host a u64.
const u64 = (x) => (bigInts() ? BigInt(Math.max(0, Math.floor(x))) : x);
// A record from the host with its u64 fields as Numbers.
export const plain = (record) => Object.fromEntries(Object.entries(record).map(([k, v]) => [k, num(v)]));

export const now = () => num(view.now());
export const namespace = () => view.namespace();
export const log = (level, message) => view.log(level, String(message));

const PAGE = 1024;
// How long trimLeastRecentlyUsed evicts before it stops (as the Rust SDK's
// TRIM_BUDGET_MS): a third of the host's default maintain deadline.
export const TRIM_BUDGET_MS = 10000;

// A refusal of a setting's value, as `configure` throws it: the host shows
// the key, the value and what is expected.
export function invalid(setting, expected) {
  return { tag: "invalid-value", val: { key: setting.key, value: setting.value, expected } };
}

// A refusal of a key the policy does not have.
export function unknown(setting) {
  return { tag: "unknown-key", val: setting.key };
}

const DURATIONS = { ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000 };
const SIZES = { "": 1, K: 1e3, Ki: 1024, M: 1e6, Mi: 1048576, G: 1e9, Gi: 1073741824, T: 1e12, Ti: 1099511627776 };

function split(value) {
  const m = /^\s*(\d+)\s*(\S*)\s*$/.exec(value);
  return m ? [Number(m[1]), m[2]] : [null, null];
}

export function durationMs(setting) {
  const [n, unit] = split(setting.value);
  if (n === null || !(unit in DURATIONS)) throw invalid(setting, 'a duration such as "30s", "30m", "1h" or "1d"');
  return n * DURATIONS[unit];
}

export function size(setting) {
  const [n, unit] = split(setting.value);
  if (n === null || !(unit in SIZES)) throw invalid(setting, 'a size such as "512Mi", "1Gi" or a number of bytes');
  return n * SIZES[unit];
}

export function percent(setting) {
  const [n, unit] = split(setting.value);
  if (n === null || unit !== "%" || n > 100) throw invalid(setting, 'a percentage from "0%" to "100%"');
  return n;
}

export function count(setting) {
  const [n, unit] = split(setting.value);
  if (n === null || unit !== "") throw invalid(setting, "a whole number");
  return n;
}

export function zstdLevel(setting) {
  const [n, unit] = split(setting.value);
  if (n === null || unit !== "" || n < 1 || n > 22) throw invalid(setting, "a zstd level from 1 to 22");
  return n;
}

export function oneOf(setting, choices) {
  const value = setting.value.trim();
  if (!(value in choices)) {
    const words = Object.keys(choices).map((w) => `"${w}"`);
    throw invalid(setting, words.length > 1 ? `${words.slice(0, -1).join(", ")} or ${words.at(-1)}` : words[0]);
  }
  return choices[value];
}

// A state file as text, or null if absent (QuickJS has no TextDecoder: state
// files hold ASCII, such as decimal timestamps).
export function readStateText(name) {
  try {
    return String.fromCharCode(...view.readState(name));
  } catch (e) {
    return null;
  }
}

// Replaces a state file with ASCII text.
export function writeStateText(name, text) {
  view.writeState(name, Uint8Array.from(String(text), (c) => c.charCodeAt(0) & 0xff));
}

// The error case a view call threw ("not-found", "denied", ...).
export function errorTag(e) {
  return e?.tag ?? e?.payload?.tag ?? String(e);
}

// Every entry in `order` ("name", "least-recently-used" or
// "most-recently-used"), one page at a time. Iterate it; do not spread it
// into an array: a namespace can hold millions of entries, and a policy
// holding them all runs out of its memory.
export function* entries(order = "name") {
  yield* fromPage(view.listEntries(order, null, PAGE), order);
}

function* fromPage(page, order) {
  for (;;) {
    for (const entry of page.entries) yield plain(entry);
    if (page.next == null) return;
    page = view.listEntries(order, page.next, PAGE);
  }
}

// [entries, bytes] the namespace's entries take, as the host counts them.
export function totals() {
  const page = view.listEntries("name", null, 1);
  return [num(page.totalEntries), num(page.totalBytes)];
}

// The LRU trim of a cleanup pass, one page in memory at a time: if the
// entries pass `limits` ([entries, bytes]), evicts until within `targets`;
// entries last used after `futureAfter` (a clock that jumped) go first, then
// the least recently used. Counts every entry seen, and what is left.
export function trimLeastRecentlyUsed(report, limits, targets, futureAfter = Infinity) {
  const first = view.listEntries("most-recently-used", null, PAGE);
  const left = [num(first.totalEntries), num(first.totalBytes)];
  report.r.entriesSeen += left[0];
  const within = (limit) => left[0] <= limit[0] && left[1] <= limit[1];
  const evict = (entry, fromFuture) => {
    if (report.evict(entry, fromFuture, false)) {
      left[0] -= 1;
      left[1] -= entry.storedSize;
    }
  };
  if (!within(limits)) {
    const stopAt = now() + TRIM_BUDGET_MS;
    for (const entry of fromPage(first, "most-recently-used")) {
      if (entry.lastUsed <= futureAfter || within(targets) || now() >= stopAt) break;
      evict(entry, true);
    }
    for (const entry of entries("least-recently-used")) {
      if (entry.lastUsed > futureAfter || within(targets)) break;
      if (now() >= stopAt) {
        report.note = `stopped after ${TRIM_BUDGET_MS} ms with the entries still over a limit; the next pass goes on`;
        break;
      }
      evict(entry, false);
    }
  }
  report.r.entriesAfter += left[0];
  report.r.bytesAfter += left[1];
}

export function* tempFiles() {
  let cursor = null;
  for (;;) {
    const page = view.listTempFiles(cursor, PAGE);
    for (const file of page.files) yield plain(file);
    if (page.next == null) return;
    cursor = page.next;
  }
}

// The lock `name`, shared by every process, or null if another holds it.
// Release it with release(lock) (or let a fault release it).
export function takeLock(name, staleAfterMs) {
  return view.Lock.take(name, u64(staleAfterMs)) ?? null;
}

// Releases a lock (drops the handle: the host removes the lock file). The
// engines name the drop Symbol.dispose, or Symbol.for("dispose") where the
// engine has no Symbol.dispose.
export function release(lock) {
  const dispose = lock[Symbol.dispose ?? Symbol.for("dispose")] ?? lock[Symbol.for("dispose")];
  dispose.call(lock);
}

export class Report {
  constructor() {
    this.r = {
      ran: true, entriesSeen: 0, evicted: 0, removedFromFuture: 0, removedTempFiles: 0,
      bytesFreed: 0, entriesAfter: 0, bytesAfter: 0, summary: "",
    };
    // A note for the summary's end (a pass cut short).
    this.note = "";
  }

  static skipped(reason) {
    const report = new Report();
    report.r.ran = false;
    report.r.summary = reason;
    return report.finish();
  }

  kept(entry) {
    this.r.entriesAfter += 1;
    this.r.bytesAfter += entry.storedSize;
  }

  // Removes an entry and counts it; counted as kept if it cannot be (unless
  // countKept is false: the caller counts what is left).
  evict(entry, fromFuture = false, countKept = true) {
    try {
      view.removeEntry(entry.name);
    } catch (e) {
      if (errorTag(e) !== "not-found") {
        log("warn", `cannot remove entry ${entry.name}: ${errorTag(e)}`);
        if (countKept) this.kept(entry);
        return false;
      }
    }
    if (fromFuture) this.r.removedFromFuture += 1;
    else this.r.evicted += 1;
    this.r.bytesFreed += entry.storedSize;
    return true;
  }

  removeTempFilesOlderThan(olderThanMs, at) {
    for (const file of tempFiles()) {
      if (at - file.modified < olderThanMs) continue;
      try {
        view.removeTempFile(file.name);
        this.r.removedTempFiles += 1;
        this.r.bytesFreed += file.size;
      } catch (e) {}
    }
  }

  finish(prefix = "") {
    const r = this.r;
    if (!r.summary) {
      r.summary = `${prefix}${r.entriesSeen} entries seen, ${r.evicted} evicted, ${r.removedFromFuture} from the future, ` +
        `${r.removedTempFiles} stale temporary files; ${r.entriesAfter} entries (${r.bytesAfter} bytes) left` +
        (this.note ? `; ${this.note}` : "");
    }
    const out = { ...r };
    for (const key of ["entriesSeen", "evicted", "removedFromFuture", "removedTempFiles", "bytesFreed", "entriesAfter", "bytesAfter"]) {
      out[key] = u64(r[key]);
    }
    return out;
  }
}
