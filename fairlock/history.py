"""Statistics that outlive lock objects: counts per lock name, or per name pattern.

oslo's lockutils builds a lock per use of a name (the lock leaves its container as soon as nobody
uses it), so a lock's own statistics start from zero at every use. A :class:`History` keeps the
counts of every lock object that ever had a name, in a bounded table:

1. Recording costs nothing on the lock's paths: a lock counts in its own fields as always. When it
   is dropped, its figures are queued here (one tuple, appended to a deque); they are added to
   the table when the table is read, or in a batch once enough are queued.
2. Bounded: names are counted under a key. A name matching one of the ``patterns``
   (``fnmatch``-style, ``refresh_cache-*``) is counted under the pattern; otherwise every UUID in
   the name is replaced by ``*`` (``refresh_cache-<uuid>`` -> ``refresh_cache-*``), so one key
   covers all instances. Past ``max_keys`` keys, new keys are counted under one more,
   :data:`OVERFLOW`.
3. Reading adds the live locks' current figures to the table's (without moving them into it), so
   a read in the middle of a hold sees it.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from .errors import ArgumentTypeError, InvalidArgumentError
from .stats import LaneCounters, NameStatistics

__all__ = ["History", "OVERFLOW", "DEFAULT_MAX_KEYS", "LOCKUTILS", "ETCD", "name_key", "record_hold_times",
           "recording_hold_times"]

#: The key of the names counted after the table is full.
OVERFLOW = "*"
DEFAULT_MAX_KEYS = 1000
#: Dropped locks queued before they are added in a batch by the thread that drops one.
FOLD_EVERY = 512

_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


def name_key(name: str, patterns: Sequence[str] = ()) -> str:
    """The key ``name`` is counted under: the first matching pattern, else the name with every UUID
    replaced by ``*``."""
    for pattern in patterns:
        if fnmatchcase(name, pattern):
            return pattern
    return _UUID.sub("*", name)


class _Tally:
    __slots__ = ("grants", "handoffs", "lane_typos", "locks", "lanes")

    def __init__(self) -> None:
        self.grants = 0
        self.handoffs = 0
        self.lane_typos = 0
        self.locks = 0
        self.lanes: dict[str, LaneCounters] = {}

    def add(self, grants: int, handoffs: int, lane_typos: int, lane_names: Sequence[str],
            counters: Sequence[LaneCounters]) -> None:
        self.grants += grants
        self.handoffs += handoffs
        self.lane_typos += lane_typos
        self.locks += 1
        for lane, c in zip(lane_names, counters):
            mine = self.lanes.get(lane)
            if mine is None:
                self.lanes[lane] = mine = LaneCounters()
            if not c.empty():
                mine.add(c)

    def copy(self) -> _Tally:
        copied = _Tally()
        copied.grants, copied.handoffs, copied.lane_typos, copied.locks = (
            self.grants, self.handoffs, self.lane_typos, self.locks)
        copied.lanes = {lane: c.copy() for lane, c in self.lanes.items()}
        return copied


class History:
    """Counts per lock name (or pattern) of every lock object, past and present, of one kind.

    ``kind`` names the lock kind in the statistics (``"local"``, ``"etcd"``).
    """

    def __init__(self, kind: str, *, patterns: Iterable[str] = (), max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.kind = kind
        self._patterns: tuple[str, ...] = ()
        self.set_patterns(patterns)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise ArgumentTypeError(f"max_keys must be an int, got {type(max_keys).__name__}")
        if max_keys < 1:
            raise InvalidArgumentError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._tallies: dict[str, _Tally] = {}
        # deque.append is atomic: a lock's finaliser never takes a lock to record itself.
        self._dropped: deque[tuple[Any, ...]] = deque()
        # Locks nobody waited for, the common case: (name, grants) only, folded name by name.
        self._uncontended: deque[tuple[str | None, int]] = deque()
        self._keys: dict[str, str] = {}  # name -> key, a bounded cache (names repeat: uuids of instances)
        self._mutex = threading.Lock()
        self._tracked: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def patterns(self) -> tuple[str, ...]:
        """The name patterns counted as one key each, first match wins."""
        return self._patterns

    def set_patterns(self, patterns: Iterable[str]) -> None:
        """Count names matching these ``fnmatch`` patterns under the pattern (from now on)."""
        if isinstance(patterns, str):
            raise ArgumentTypeError("patterns must be a list of patterns, not one str")
        checked = tuple(patterns)
        for pattern in checked:
            if not isinstance(pattern, str) or not pattern:
                raise InvalidArgumentError(f"a name pattern must be a non-empty str, got {pattern!r}")
        self._patterns = checked
        self._keys = {}

    def dropped(self, name: str | None, grants: int, handoffs: int, lane_typos: int,
                lane_names: Sequence[str], counters: Sequence[LaneCounters]) -> None:
        """A lock object is gone: queue its figures (called from its finaliser, any thread)."""
        self._dropped.append((name, grants, handoffs, lane_typos, lane_names, counters))
        if len(self._dropped) >= FOLD_EVERY:
            self.fold_if_free()

    def track(self, lock: Any, counts: Callable[[], tuple[int, int, int, Sequence[str], Sequence[LaneCounters]]]) -> None:
        """Count ``lock`` as live until it is dropped; then add ``counts()`` (grants, handoffs,
        lane typos, lane names, lane counters) to its name's history.

        For long-lived locks (the etcd lock): it costs a finaliser per lock. ``counts`` must not
        refer to ``lock`` (it would never be dropped).
        """
        name = lock.name
        self._tracked.add(lock)
        weakref.finalize(lock, lambda: self.dropped(name, *counts()))

    def live(self) -> list[Any]:
        """The tracked locks alive now."""
        return list(self._tracked)

    def granted(self, name: str | None, grants: int) -> None:
        """A lock object that nobody ever waited for is gone: queue its name and grants.

        (fairlock.lockutils inlines this: ``uncontended.append(...)``, then
        :meth:`fold_if_free` once ``len(uncontended) >= FOLD_EVERY``.)
        """
        uncontended = self._uncontended
        uncontended.append((name, grants))
        if len(uncontended) >= FOLD_EVERY:
            self.fold_if_free()

    @property
    def uncontended(self) -> deque[tuple[str | None, int]]:
        """The queue :meth:`granted` appends to (``(name, grants)`` tuples, added on read)."""
        return self._uncontended

    def fold_if_free(self) -> None:
        """Add the queued figures to the table now, unless another thread is doing so (never
        waits: a finaliser may run in a thread that already holds the table's mutex)."""
        if self._mutex.acquire(False):
            try:
                self._fold()
            finally:
                self._mutex.release()

    def _fold(self) -> None:
        """Add the queued figures to the table. Caller holds _mutex."""
        uncontended = self._uncontended
        if uncontended:
            # Summed per name first: a busy name comes back many times in one batch.
            per_name: dict[str | None, list[int]] = {}
            for _ in range(len(uncontended)):
                name, grants = uncontended.popleft()
                found = per_name.get(name)
                if found is None:
                    per_name[name] = [grants, 1]
                else:
                    found[0] += grants
                    found[1] += 1
            for name, (grants, locks) in per_name.items():
                if name is not None:
                    tally = self._tally(name)
                    tally.grants += grants
                    tally.locks += locks
        dropped = self._dropped
        while dropped:
            name, grants, handoffs, lane_typos, lane_names, counters = dropped.popleft()
            if name is not None:
                self._tally(name).add(grants, handoffs, lane_typos, lane_names, counters)

    def key_of(self, name: str) -> str:
        """The key ``name`` is counted under now (:data:`OVERFLOW` once the table is full)."""
        key = name_key(name, self._patterns)
        if key not in self._tallies and len(self._tallies) >= self.max_keys:
            return OVERFLOW
        return key

    def _tally(self, name: str) -> _Tally:
        key = self._keys.get(name)
        if key is None:
            if len(self._keys) >= 4 * FOLD_EVERY:
                self._keys.clear()
            key = self._keys[name] = name_key(name, self._patterns)
        found = self._tallies.get(key)
        if found is None:
            if len(self._tallies) >= self.max_keys:
                key = OVERFLOW
                found = self._tallies.get(key)
            if found is None:
                self._tallies[key] = found = _Tally()
        return found

    def statistics(self, live: Iterable[Any] = ()) -> dict[str, NameStatistics]:
        """Per key, the figures of the dropped locks plus those of the ``live`` ones now.

        ``live`` are :class:`fairlock.Lock` objects (anything with ``name`` and ``_counts()``); the
        locks given to :meth:`track` are always included.
        """
        locks = {id(lock): lock for lock in (*live, *self._tracked)}.values()
        live_counts = [(lock.name, lock._counts()) for lock in locks if lock.name is not None]
        with self._mutex:
            self._fold()
            tallies = {key: tally.copy() for key, tally in self._tallies.items()}
            live_keys: dict[str, int] = {}
            for name, counts in live_counts:
                key = name_key(name, self._patterns)
                if key not in tallies and key not in self._tallies and len(tallies) >= self.max_keys:
                    key = OVERFLOW
                tally = tallies.get(key)
                if tally is None:
                    tallies[key] = tally = _Tally()
                tally.add(*counts)
                live_keys[key] = live_keys.get(key, 0) + 1
        return {key: self._snapshot(key, tally, live_keys.get(key, 0)) for key, tally in tallies.items()}

    def _snapshot(self, key: str, tally: _Tally, live: int) -> NameStatistics:
        return NameStatistics(
            key=key, kind=self.kind, grants=tally.grants, handoffs=tally.handoffs,
            lane_typos=tally.lane_typos, locks=tally.locks, live=live,
            lanes=MappingProxyType({lane: c.snapshot() for lane, c in tally.lanes.items()}),
        )

    def clear(self) -> None:
        """Forget every count (live locks keep their own)."""
        with self._mutex:
            self._dropped.clear()
            self._uncontended.clear()
            self._tallies.clear()

    def __len__(self) -> int:
        """Keys in the table (dropped locks not yet added are not counted)."""
        return len(self._tallies)

    def __repr__(self) -> str:
        queued = len(self._dropped) + len(self._uncontended)
        return f"<fairlock.history.History {self.kind} {len(self)} key(s), {queued} queued>"


_record_holds = False


def record_hold_times(on: bool = True) -> None:
    """Make :mod:`fairlock.lockutils` locks built from now on measure how long they are held
    (``LaneStatistics.hold_histogram``): two clock reads per use. :func:`fairlock.metrics.register`
    turns it on."""
    global _record_holds
    if not isinstance(on, bool):
        raise ArgumentTypeError("on must be a bool")
    _record_holds = on


def recording_hold_times() -> bool:
    """Whether lockutils locks built now measure their holds."""
    return _record_holds


#: Every internal lock of :mod:`fairlock.lockutils` (its locks are built per use of a name).
LOCKUTILS = History("local")
#: Every :class:`fairlock.etcd.EtcdLock` of this process.
ETCD = History("etcd")
