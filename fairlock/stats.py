"""Frozen statistics snapshots, and the counters they are taken from.

One shape for every lock kind: :class:`LockStatistics` (the in-process lock),
``fairlock.etcd.EtcdLockStatistics`` (the etcd lock) and :class:`NameStatistics` (the history of a
lock name, or of a name pattern, across lock objects) all give per-lane figures as a mapping of
lane name to :class:`LaneStatistics`, whose counts are ints and whose times are seconds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["BUCKETS", "Histogram", "LaneStatistics", "LockStatistics", "NameStatistics"]

#: Upper bounds (seconds) of the wait and hold histograms; a last bucket holds everything longer.
#: From a millisecond (a handoff between threads) to five minutes (past any RPC timeout).
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def _frozen(mapping: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Histogram:
    """Durations counted into the fixed buckets :data:`BUCKETS` (seconds).

    ``counts[i]`` is the number of durations ``d`` with ``BUCKETS[i-1] < d <= BUCKETS[i]``; the
    last count is for durations longer than the last bound.
    """

    counts: tuple[int, ...] = (0,) * (len(BUCKETS) + 1)
    #: The sum of all durations counted.
    total: float = 0.0

    @property
    def count(self) -> int:
        """How many durations were counted."""
        return sum(self.counts)

    @property
    def bounds(self) -> tuple[float, ...]:
        """The buckets' upper bounds (the last bucket, unbounded, is not listed)."""
        return BUCKETS

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, durations <= bound)`` pairs, ending with ``(inf, count)``, as
        Prometheus histograms are written."""
        pairs, running = [], 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts):
            running += count
            pairs.append((bound, running))
        return pairs


EMPTY_HISTOGRAM = Histogram()


@dataclass(frozen=True)
class LaneStatistics:
    """What happened in one lane: since the lock was created, or for a name's whole history."""

    #: Requests queued in this lane now.
    waiting: int = 0
    #: Grants to waiters that had to queue in this lane (uncontended grants are not counted here).
    queued_grants: int = 0
    timeouts: int = 0
    #: Waiters that left the queue by an exception (a killed green thread, KeyboardInterrupt).
    cancels: int = 0
    wait_total: float = 0.0
    wait_max: float = 0.0
    #: The waits of the queued grants (``wait_histogram.count == queued_grants``).
    wait_histogram: Histogram = EMPTY_HISTOGRAM
    #: How long the lock was held by owners in this lane; recorded only where hold times are
    #: measured (always for the etcd lock; for the in-process lock when ``slow_hold`` or
    #: ``record_holds`` is set).
    hold_histogram: Histogram = EMPTY_HISTOGRAM


class LaneCounters:
    """The mutable counters behind one :class:`LaneStatistics`.

    Updated only by the thread that holds the lock (or under the lock's internal mutex), so the
    increments need no lock of their own.
    """

    __slots__ = ("queued_grants", "timeouts", "cancels", "wait_total", "wait_max", "wait_buckets",
                 "hold_total", "hold_buckets")

    def __init__(self) -> None:
        self.queued_grants = 0
        self.timeouts = 0
        self.cancels = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        # Made at the first wait or hold: most locks never see one, and are built per use.
        self.wait_buckets: list[int] | None = None
        self.hold_total = 0.0
        self.hold_buckets: list[int] | None = None

    def granted_after(self, waited: float) -> None:
        """A waiter of this lane was granted the lock after waiting ``waited`` seconds."""
        self.queued_grants += 1
        self.wait_total += waited
        if waited > self.wait_max:
            self.wait_max = waited
        if self.wait_buckets is None:
            self.wait_buckets = [0] * (len(BUCKETS) + 1)
        self.wait_buckets[bisect_left(BUCKETS, waited)] += 1

    def held_for(self, held: float) -> None:
        """An owner of this lane held the lock ``held`` seconds."""
        self.hold_total += held
        if self.hold_buckets is None:
            self.hold_buckets = [0] * (len(BUCKETS) + 1)
        self.hold_buckets[bisect_left(BUCKETS, held)] += 1

    def empty(self) -> bool:
        """True if nothing was ever counted here."""
        return not (self.queued_grants or self.timeouts or self.cancels or self.hold_buckets)

    def add(self, other: LaneCounters) -> None:
        """Fold ``other``'s counts into these."""
        self.queued_grants += other.queued_grants
        self.timeouts += other.timeouts
        self.cancels += other.cancels
        self.wait_total += other.wait_total
        if other.wait_max > self.wait_max:
            self.wait_max = other.wait_max
        self.hold_total += other.hold_total
        self.wait_buckets = _add_buckets(self.wait_buckets, other.wait_buckets)
        self.hold_buckets = _add_buckets(self.hold_buckets, other.hold_buckets)

    def copy(self) -> LaneCounters:
        """An independent copy."""
        copied = LaneCounters()
        copied.add(self)
        return copied

    def snapshot(self, waiting: int = 0) -> LaneStatistics:
        """A frozen copy, with ``waiting`` queued now."""
        return LaneStatistics(
            waiting=waiting,
            queued_grants=self.queued_grants,
            timeouts=self.timeouts,
            cancels=self.cancels,
            wait_total=self.wait_total,
            wait_max=self.wait_max,
            wait_histogram=_histogram(self.wait_buckets, self.wait_total),
            hold_histogram=_histogram(self.hold_buckets, self.hold_total),
        )


def _add_buckets(mine: list[int] | None, theirs: list[int] | None) -> list[int] | None:
    if theirs is None:
        return mine
    if mine is None:
        return list(theirs)
    for i, n in enumerate(theirs):
        mine[i] += n
    return mine


def _histogram(buckets: list[int] | None, total: float) -> Histogram:
    return EMPTY_HISTOGRAM if buckets is None else Histogram(tuple(buckets), total)


class _PerLane:
    """Figures summed over the lanes, for every statistics class with ``lanes``."""

    lanes: Mapping[str, LaneStatistics]

    @property
    def waiting(self) -> int:
        """Total queued waiters over all lanes."""
        return sum(lane.waiting for lane in self.lanes.values())

    @property
    def waiting_per_lane(self) -> Mapping[str, int]:
        """Queued waiters, by lane."""
        return MappingProxyType({name: lane.waiting for name, lane in self.lanes.items()})

    @property
    def wait_total(self) -> Mapping[str, float]:
        """Seconds waited by the queued grants, by lane."""
        return MappingProxyType({name: lane.wait_total for name, lane in self.lanes.items()})

    @property
    def wait_max(self) -> Mapping[str, float]:
        """The longest wait of a queued grant, by lane."""
        return MappingProxyType({name: lane.wait_max for name, lane in self.lanes.items()})

    @property
    def timeouts(self) -> int:
        """Requests that gave up waiting, over all lanes."""
        return sum(lane.timeouts for lane in self.lanes.values())


@dataclass(frozen=True)
class LockStatistics(_PerLane):
    """A consistent snapshot of one lock, taken under its internal mutex."""

    name: str | None
    #: Thread (or green thread) identity of the holder, None when free.
    owner: int | None
    #: The lane the owner queued in; None when free or when it took the lock without queuing.
    owner_lane: str | None
    #: All grants: uncontended ones plus handoffs.
    grants: int
    #: Grants made at release time to a queued waiter (direct handoff).
    handoffs: int
    #: The largest number of times any waiter was overtaken (never more than ``max_bypass``).
    max_overtaken: int
    max_bypass: int | None
    lanes: Mapping[str, LaneStatistics] = field(default_factory=_frozen)  # type: ignore[arg-type]
    #: The holder's thread name (``"MainThread (ident 140...)"``), None when free.
    holder: str | None = None
    #: Requests whose context lane (:func:`fairlock.lane`) this lock does not have, so they
    #: queued in the default lane: usually a typo. Counted when a request queues.
    lane_typos: int = 0
    #: The queued waiters as ``(thread name, lane)``, in the order the core would grant them if
    #: nobody else arrived or left.
    queue: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NameStatistics(_PerLane):
    """The history of one lock name, or of every name matching a pattern, across lock objects.

    Lock objects come and go (oslo's lockutils builds one per use of a name); their counts are
    added here when they are dropped, and the live ones' counts are added when this is read.
    """

    #: The name, or the pattern (``refresh_cache-*``) that the names were counted under.
    key: str
    #: Which lock kind: ``"local"`` or ``"etcd"``.
    kind: str
    grants: int
    handoffs: int
    lane_typos: int
    #: Lock objects counted (live ones included).
    locks: int
    #: Lock objects alive now.
    live: int
    lanes: Mapping[str, LaneStatistics] = field(default_factory=_frozen)  # type: ignore[arg-type]

    @property
    def queued_grants(self) -> int:
        """Grants that had to queue, over all lanes."""
        return sum(lane.queued_grants for lane in self.lanes.values())

    @property
    def max_wait(self) -> float:
        """The longest wait of any queued grant."""
        return max((lane.wait_max for lane in self.lanes.values()), default=0.0)


def snapshot_lanes(names: Iterable[str], counters: Iterable[LaneCounters],
                   waiting: Mapping[str, int] | None = None) -> Mapping[str, LaneStatistics]:
    """Frozen per-lane statistics from parallel sequences of lane names and counters."""
    waiting = waiting or {}
    return MappingProxyType({name: c.snapshot(waiting.get(name, 0)) for name, c in zip(names, counters)})
