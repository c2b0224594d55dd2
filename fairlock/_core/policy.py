"""The grant policy: who owns a lock next, as one pure function over an immutable snapshot.

This module is the only place in fairlock that decides the order of owners of an exclusive lock
(the reader/writer lock's order, arrival order with readers in batches, is ``rwqueue``'s). Its
rules:

1. A :class:`Policy` is a lock's lanes (with the default lane) and K (``max_bypass``): a value,
   checked when it is made, equal for every process that shares a lock.
2. :func:`decide` is the grant rule's one entry point: given the policy and the queued waiters
   (per lane, oldest first: ticket -> times overtaken) it returns the :class:`Grant` -- who is
   the next owner and the overtaken counts the grant changes -- or None when nobody waits. It
   reads its input and changes nothing. :class:`~fairlock._core.queue.FairQueue` (the local lock)
   calls it at every handoff; the etcd lock calls it on the waiters it reads from etcd.
3. A waiter's policy state (its lane, how often it was overtaken) belongs to the core:
   transports store what :meth:`Policy.encode` gives and hand what they read back to
   :meth:`Policy.snapshot`, which validates it and decides what damaged state means (rule 4).
   Transports never interpret it.
4. Damaged or foreign state (an unreadable value, a lane this policy does not have, a count that
   is not a non-negative int) makes a waiter *due*: it is placed in the lowest lane with a count
   of K, so it is served before anyone who arrived after it. Counts are only ever raised, never
   lowered, when a snapshot is read (every waiter is counted at least as often as any younger
   one, the order rule 5 relies on), so no repair can weaken anyone's K bound.
5. The rule: the next owner is the oldest waiter of the highest-priority non-empty lane, except
   that a waiter already overtaken ``max_bypass`` (K) times is served before anyone who arrived
   after it. Because
   an older waiter is always counted at least as often as a younger one, only the oldest waiter
   can be the exception, so ``decide`` looks at lane heads only; the waiters a grant overtakes
   are the older waiters of the other lanes, each counted once more.
6. Two levels (a process queues once in etcd for all its threads): the lane the process's
   request carries is the highest of its own and those queued behind it locally
   (:meth:`Policy.carried_lane`). Coalesced calls (one queued representative per lane for many
   callers): when a representative gives up, the oldest caller of its lane takes its place
   (:func:`successor`), so nobody's position in the lock's order is worse than its own request.

It never reads a clock, starts a thread, does I/O or draws a random number: every process reaches
the same decision from the same snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import ArgumentTypeError, InvalidArgumentError
from .lanes import Lanes

__all__ = [
    "DEFAULT_MAX_BYPASS",
    "Policy",
    "Grant",
    "Snapshot",
    "WaiterPolicy",
    "check_max_bypass",
    "decide",
    "successor",
]

#: Default K. Large enough that a live migration's handful of lock holds all go ahead of event
#: handlers that queued before it; small enough that such a handler is delayed by at most four
#: extra critical sections (about four cache refreshes) beyond its FIFO position.
DEFAULT_MAX_BYPASS = 4

#: The fields of a waiter's stored policy state (see :meth:`Policy.encode`).
_LANE, _OVERTAKEN = "lane", "overtaken"


def check_max_bypass(max_bypass: int | None) -> int | None:
    """Validate K: a non-negative int, or None for strict priority (starves; tests only)."""
    if max_bypass is None:
        return None
    if isinstance(max_bypass, bool) or not isinstance(max_bypass, int):
        raise ArgumentTypeError(f"max_bypass must be an int or None, got {type(max_bypass).__name__}")
    if max_bypass < 0:
        raise InvalidArgumentError(f"max_bypass must be >= 0, got {max_bypass}")
    return max_bypass


class Grant(NamedTuple):
    """One grant by the rule: the next owner and what it changes."""

    ticket: int
    #: The lane rank and name the grant was made in.
    rank: int
    lane: str
    #: (ticket, its overtaken count after this grant) for every waiter this grant overtakes,
    #: lane by lane, oldest first within a lane.
    overtaken: tuple[tuple[int, int], ...]


class WaiterPolicy(NamedTuple):
    """A waiter's policy state as decoded by :meth:`Policy.decode` (``damaged``: rule 4 applied)."""

    lane: str
    overtaken: int
    damaged: bool


@dataclass(frozen=True)
class Snapshot:
    """Queued waiters read from outside this process, validated by :meth:`Policy.snapshot`."""

    lanes: tuple[str, ...]
    #: Per lane rank: ticket -> times overtaken, oldest first (the input of :func:`decide`).
    queue: tuple[Mapping[int, int], ...]
    #: Tickets whose stored state was damaged or foreign (rule 4), for the caller to report.
    damaged: tuple[int, ...]

    def waiters(self) -> list[tuple[int, str, int]]:
        """(ticket, lane, overtaken) of every waiter, oldest first, as the rule sees them."""
        return sorted((t, self.lanes[rank], n) for rank, lane in enumerate(self.queue) for t, n in lane.items())


@dataclass(frozen=True)
class Policy:
    """The lanes (highest priority first, with a default) and K of a lock. See the module doc."""

    lanes: Lanes
    max_bypass: int | None = DEFAULT_MAX_BYPASS

    def __post_init__(self) -> None:
        if not isinstance(self.lanes, Lanes):
            raise ArgumentTypeError(f"lanes must be fairlock._core.Lanes, got {type(self.lanes).__name__}")
        check_max_bypass(self.max_bypass)

    @classmethod
    def of(cls, lanes: Lanes | Iterable[str] | None = None, default_lane: str | None = None,
           max_bypass: int | None = DEFAULT_MAX_BYPASS) -> Policy:
        """A policy from the keyword arguments every lock takes (checked here, once)."""
        if isinstance(lanes, Lanes):
            if default_lane is not None and default_lane != lanes.default:
                lanes = Lanes(lanes.names, default_lane)
        elif lanes is None and default_lane is None:
            lanes = _DEFAULT_LANES
        else:
            lanes = Lanes(lanes if lanes is not None else _DEFAULT_LANES.names, default_lane)
        return cls(lanes, check_max_bypass(max_bypass))

    @property
    def fifo(self) -> bool:
        """True when the rule always grants the oldest waiter (one lane, or K = 0): a waiter that
        arrives after a decision is younger than every waiter it was made over, so it can never
        change it. A transport may then keep a decision made on an older view of the queue."""
        return len(self.lanes) == 1 or self.max_bypass == 0

    # -- waiters' state (rule 3, 4) ---------------------------------------------------------------

    def encode(self, lane: str, overtaken: int = 0) -> dict[str, object]:
        """The policy state of a waiter in ``lane`` overtaken ``overtaken`` times, to store."""
        self.lanes.rank(lane)
        if isinstance(overtaken, bool) or not isinstance(overtaken, int) or overtaken < 0:
            raise InvalidArgumentError(f"overtaken must be an int >= 0, got {overtaken!r}")
        return {_LANE: lane, _OVERTAKEN: overtaken}

    def decode(self, stored: object) -> WaiterPolicy:
        """A waiter's policy state from what a transport stored (any object; never raises)."""
        if isinstance(stored, Mapping):
            lane, count = stored.get(_LANE), stored.get(_OVERTAKEN)
            if (self.lanes.knows(lane) and isinstance(count, int) and not isinstance(count, bool)
                    and count >= 0):
                return WaiterPolicy(lane, count, False)  # type: ignore[arg-type]
        # Rule 4: due now, in the lowest lane.
        return WaiterPolicy(self.lanes.names[-1], self.max_bypass or 0, True)

    def snapshot(self, waiters: Iterable[tuple[int, object]]) -> Snapshot:
        """Validate ``(ticket, stored state)`` pairs read from a transport into a :class:`Snapshot`.

        Tickets must be distinct positive ints (a transport's arrival order: an etcd create
        revision); anything else is the transport's bug and raises. Stored state is the core's to
        judge: see rule 4.
        """
        decoded: list[tuple[int, WaiterPolicy]] = []
        seen: set[int] = set()
        for ticket, stored in waiters:
            if isinstance(ticket, bool) or not isinstance(ticket, int) or ticket <= 0:
                raise InvalidArgumentError(f"bad waiter ticket {ticket!r}")
            if ticket in seen:
                raise InvalidArgumentError(f"ticket {ticket} queued twice")
            seen.add(ticket)
            decoded.append((ticket, self.decode(stored)))
        decoded.sort()
        counts = [w.overtaken for _, w in decoded]
        # Rule 4: an older waiter counts at least as often as any younger one (a no-op for
        # state this core wrote); raising counts only ever makes grants more FIFO.
        floor = 0
        for i in range(len(counts) - 1, -1, -1):
            floor = counts[i] = max(counts[i], floor)
        queue: list[dict[int, int]] = [{} for _ in self.lanes.names]
        for (ticket, w), count in zip(decoded, counts):
            queue[self.lanes.rank(w.lane)][ticket] = count
        return Snapshot(self.lanes.names, tuple(queue), tuple(t for t, w in decoded if w.damaged))

    # -- two levels (rule 6) ------------------------------------------------------------------------

    def carried_lane(self, lane: str, queued: Iterable[str]) -> str:
        """The lane a request made for ``lane`` and the local waiters of ``queued`` lanes carries."""
        best = self.lanes.rank(lane)
        for name in queued:
            rank = self.lanes.rank(name)
            if rank < best:
                best = rank
        return self.lanes.names[best]


_DEFAULT_LANES = Lanes()


def decide(policy: Policy, queue: Sequence[Mapping[int, int]]) -> Grant | None:
    """The grant the rule makes next for ``queue`` (per lane rank: ticket -> overtaken, oldest
    first), or None if nobody waits. Reads ``queue`` only. See the module docstring."""
    first_ticket = oldest_ticket = -1
    first_rank = oldest_rank = -1
    for rank, lane in enumerate(queue):
        if not lane:
            continue
        head = next(iter(lane))
        if first_rank < 0:
            first_ticket, first_rank = head, rank
        if oldest_rank < 0 or head < oldest_ticket:
            oldest_ticket, oldest_rank = head, rank
    if oldest_rank < 0:
        return None
    k = policy.max_bypass
    if k is not None and queue[oldest_rank][oldest_ticket] >= k:
        ticket, rank = oldest_ticket, oldest_rank
    else:
        ticket, rank = first_ticket, first_rank
    if oldest_ticket == ticket:  # the oldest waiter overtakes nobody
        return _new_grant(Grant, (ticket, rank, policy.lanes.names[rank], ()))
    # The chosen ticket heads its lane: only other lanes hold older waiters, each overtaken
    # once by this grant.
    overtaken: list[tuple[int, int]] = []
    for other, lane in enumerate(queue):
        if other == rank:
            continue
        for t, n in lane.items():
            if t > ticket:
                break
            overtaken.append((t, n + 1))
    return _new_grant(Grant, (ticket, rank, policy.lanes.names[rank], tuple(overtaken)))


# Grant's fields are built positionally in decide (on every handoff of every lock): skip the
# NamedTuple constructor's extra Python frame.
_new_grant = tuple.__new__


def successor(waiting_lanes: Sequence[str | None], lane: str | None) -> int | None:
    """Index of the caller (``waiting_lanes``: their lanes, oldest first) that takes over the
    queued request of ``lane`` when its maker gives up: the oldest of that lane (None: nobody)."""
    for i, other in enumerate(waiting_lanes):
        if other == lane:
            return i
    return None
