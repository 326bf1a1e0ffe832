"""Helpers for capcache policies written in Python (componentize-py).

What every policy rewrites: settings parsed in the formats of wasmtime's cache
configuration ("1h", "512Mi", "70%") and refused in the host's shape, whole
listings with the paging hidden, a maintenance report builder, and log lines.
The contract itself is `wit/policy.wit`; the bindings are componentize-py's
(`wit_world`). Build with `--stub-wasi`: a policy has no WASI, and
`time.time()`, `print()` and `open()` trap. Use `now()` and `log()` here.
"""

from typing import Iterator, List, Optional, Tuple, TypeVar

from componentize_py_types import Err
from wit_world.exports import policy
from wit_world.imports import types, view

T = TypeVar("T")

PAGE = 1024
# How long trim_least_recently_used evicts before it stops (as the Rust
# SDK's TRIM_BUDGET_MS): a third of the host's default maintain deadline.
TRIM_BUDGET_MS = 10_000

now = view.now
namespace = view.namespace


def log(level: types.LogLevel, message: str) -> None:
    """A line in the host's log (CAPCACHE_LOG=debug shows them)."""
    view.log(level, message)


def invalid(setting: policy.Setting, expected: str) -> Err:
    """Refuses a setting's value: the host shows the key, the value and `expected`."""
    return Err(policy.SettingsError_InvalidValue(policy.InvalidSetting(setting.key, setting.value, expected)))


def unknown(setting: policy.Setting) -> Err:
    """Refuses a key the policy does not have."""
    return Err(policy.SettingsError_UnknownKey(setting.key))


_DURATIONS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZES = {"": 1, "K": 1000, "Ki": 1 << 10, "M": 1000**2, "Mi": 1 << 20, "G": 1000**3, "Gi": 1 << 30, "T": 1000**4, "Ti": 1 << 40}


def _split(value: str) -> Tuple[str, str]:
    value = value.strip()
    digits = len(value) - len(value.lstrip("0123456789"))
    return value[:digits], value[digits:].strip()


def duration_ms(setting: policy.Setting) -> int:
    """"30s", "1h", "1d" in milliseconds; raises the host's refusal otherwise."""
    number, unit = _split(setting.value)
    if not number or unit not in _DURATIONS:
        raise invalid(setting, 'a duration such as "30s", "30m", "1h" or "1d"')
    return int(number) * _DURATIONS[unit]


def size(setting: policy.Setting) -> int:
    """"512Mi", "1G", "4096" in bytes."""
    number, unit = _split(setting.value)
    if not number or unit not in _SIZES:
        raise invalid(setting, 'a size such as "512Mi", "1Gi" or a number of bytes')
    return int(number) * _SIZES[unit]


def percent(setting: policy.Setting) -> int:
    """"70%", 0 to 100."""
    number, unit = _split(setting.value)
    if not number or unit != "%" or int(number) > 100:
        raise invalid(setting, 'a percentage from "0%" to "100%"')
    return int(number)


def count(setting: policy.Setting) -> int:
    """A whole number."""
    number, unit = _split(setting.value)
    if not number or unit:
        raise invalid(setting, "a whole number")
    return int(number)


def zstd_level(setting: policy.Setting) -> int:
    """A zstd level, 1 to 22."""
    level = count(setting) if setting.value.strip().isdigit() else 0
    if not 1 <= level <= 22:
        raise invalid(setting, "a zstd level from 1 to 22")
    return level


def one_of(setting: policy.Setting, choices: dict) -> T:
    """One of a few words, each standing for a value."""
    value = setting.value.strip()
    if value not in choices:
        words = [f'"{w}"' for w in choices]
        raise invalid(setting, ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0])
    return choices[value]


def entries(order: types.EntryOrder = types.EntryOrder.NAME) -> Iterator[types.EntryMeta]:
    """Every entry, in `order` (by name unless told), one page at a time.
    Iterate it; do not make a list of it: a namespace can hold millions of
    entries, and a policy holding them all runs out of its memory."""
    cursor: Optional[str] = None
    while True:
        page = view.list_entries(order, cursor, PAGE)
        yield from page.entries
        if page.next is None:
            return
        cursor = page.next


def totals() -> Tuple[int, int]:
    """(entries, bytes) the namespace's entries take, as the host counts them."""
    page = view.list_entries(types.EntryOrder.NAME, None, 1)
    return page.total_entries, page.total_bytes


def trim_least_recently_used(report: "Report", limits: Tuple[int, int], targets: Tuple[int, int],
                             future_after: Optional[int] = None) -> None:
    """The LRU trim of a cleanup pass, one page in memory at a time: if the
    entries pass `limits` (entries, bytes), evicts until within `targets`;
    entries last used after `future_after` (a clock that jumped) go first,
    then the least recently used. Counts every entry seen, and what is left."""
    first = view.list_entries(types.EntryOrder.MOST_RECENTLY_USED, None, PAGE)
    left = [first.total_entries, first.total_bytes]
    report.r.entries_seen += first.total_entries

    def within(limit: Tuple[int, int]) -> bool:
        return left[0] <= limit[0] and left[1] <= limit[1]

    def evict(entry: types.EntryMeta, from_future: bool) -> None:
        if report.evict(entry, from_future, count_kept=False):
            left[0] -= 1
            left[1] -= entry.stored_size

    if not within(limits):
        future = future_after if future_after is not None else 1 << 64
        stop_at = now() + TRIM_BUDGET_MS
        newest = _continue(first, types.EntryOrder.MOST_RECENTLY_USED)
        for entry in newest:
            if entry.last_used <= future or within(targets) or now() >= stop_at:
                break
            evict(entry, True)
        for entry in entries(types.EntryOrder.LEAST_RECENTLY_USED):
            if entry.last_used > future or within(targets):
                break
            if now() >= stop_at:
                report.note = f"stopped after {TRIM_BUDGET_MS} ms with the entries still over a limit; the next pass goes on"
                break
            evict(entry, False)
    report.r.entries_after += left[0]
    report.r.bytes_after += left[1]


def _continue(page: types.EntryPage, order: types.EntryOrder) -> Iterator[types.EntryMeta]:
    """The entries of a listing from its first page on."""
    while True:
        yield from page.entries
        if page.next is None:
            return
        page = view.list_entries(order, page.next, PAGE)


def temp_files() -> Iterator[types.FileMeta]:
    """Every temporary file (left by crashed writers, or in progress)."""
    cursor: Optional[str] = None
    while True:
        page = view.list_temp_files(cursor, PAGE)
        yield from page.files
        if page.next is None:
            return
        cursor = page.next


def take_lock(name: str, stale_after_ms: int) -> Optional[view.Lock]:
    """The lock `name`, shared by every process, or None if another holds it.
    Use it in a `with` block: it is released at the block's end."""
    return view.Lock.take(name, stale_after_ms)


class Report:
    """What a maintenance pass did, built as it goes."""

    def __init__(self) -> None:
        self.r = policy.MaintainReport(True, 0, 0, 0, 0, 0, 0, 0, "")
        # A note for the summary's end (a pass cut short).
        self.note = ""

    @staticmethod
    def skipped(reason: str) -> policy.MaintainReport:
        return policy.MaintainReport(False, 0, 0, 0, 0, 0, 0, 0, reason)

    def saw(self, entry: types.EntryMeta) -> None:
        self.r.entries_seen += 1

    def kept(self, entry: types.EntryMeta) -> None:
        self.r.entries_after += 1
        self.r.bytes_after += entry.stored_size

    def evict(self, entry: types.EntryMeta, from_future: bool = False, count_kept: bool = True) -> bool:
        """Removes an entry and counts it; counted as kept if it cannot be
        (unless `count_kept` is False: the caller counts what is left)."""
        try:
            view.remove_entry(entry.name)
        except Err as e:
            if not isinstance(e.value, types.Error_NotFound):
                log(types.LogLevel.WARN, f"cannot remove entry {entry.name}: {e.value}")
                if count_kept:
                    self.kept(entry)
                return False
        if from_future:
            self.r.removed_from_future += 1
        else:
            self.r.evicted += 1
        self.r.bytes_freed += entry.stored_size
        return True

    def remove_temp_files_older_than(self, older_than_ms: int, at: int) -> None:
        for file in temp_files():
            if at - file.modified >= older_than_ms:
                try:
                    view.remove_temp_file(file.name)
                    self.r.removed_temp_files += 1
                    self.r.bytes_freed += file.size
                except Err:
                    pass

    def finish(self, prefix: str = "") -> policy.MaintainReport:
        r = self.r
        if not r.summary:
            r.summary = (
                f"{prefix}{r.entries_seen} entries seen, {r.evicted} evicted, {r.removed_from_future} from the future, "
                f"{r.removed_temp_files} stale temporary files; {r.entries_after} entries ({r.bytes_after} bytes) left"
            ) + (f"; {self.note}" if self.note else "")
        return r
