"""The state of one lock's queue: tickets, lanes, the owner; every grant asked of the policy.

The order of owners is decided by :func:`fairlock._core.policy.decide` and nowhere else; this
module keeps one lock's state in step with it. Its rules, in order:

1. **Tickets** are positive integers issued in arrival order (or supplied by the caller, e.g. an
   etcd create revision, and then they must increase). A smaller ticket arrived earlier.
2. A ticket is in exactly one state: *queued* in one lane, the *owner*, or gone. There is at most
   one owner, and the lock is never free while anyone is queued: a request on a free lock is
   granted at once, and a release (or a cancel of the owner) hands the lock straight to the
   owner :func:`~fairlock._core.policy.decide` names, applying the overtaken counts it returns.
   Nobody barges.
3. **Grant rule** (decided by the policy): the next owner is the oldest waiter of the
   highest-priority non-empty lane, except that a waiter already overtaken ``max_bypass`` (K)
   times is served before anyone who arrived after it.  A waiter is *overtaken* each time a
   ticket that arrived after it is granted first.  With one lane this is pure FIFO; with K = 0 it
   is pure FIFO whatever the lanes.
4. Consequences that the property tests check: within a lane, grants follow ticket order; no
   waiter is ever overtaken more than K times; among queued waiters an older one has been
   overtaken at least as often as a younger one, so the rule only ever needs to look at the
   oldest waiter; a waiter that finds A waiters queued ahead of it is granted after at most
   A + K other grants.
5. Illegal operations (release with no owner or by another ticket, cancel of an unknown ticket,
   an unknown lane) raise and leave the state exactly as it was.

It never reads a clock, starts a thread, does I/O or draws a random number: the same calls give
the same answers, which is what lets every etcd client reach the same decision from the same keys.

Cost: ``request``, ``release`` and ``cancel`` are O(number of lanes) plus one step per overtake
they cause, and each waiter can be overtaken at most K times, so the cost per grant does not grow
with the queue length. ``change_lane`` is O(waiters in the target lane).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    NotHeldError,
    NotOwnerError,
    TicketOrderError,
    UnknownTicketError,
)
from .lanes import Lanes
from .policy import DEFAULT_MAX_BYPASS, Policy, check_max_bypass, decide

__all__ = [
    "DEFAULT_MAX_BYPASS",
    "GRANT_RULE",
    "FairQueue",
    "QueueState",
    "WaiterState",
    "grant_bound",
    "check_max_bypass",
]

#: The grant rule in one sentence; quoted verbatim by the docs and the README.
GRANT_RULE = (
    "The next owner is the oldest waiter of the highest-priority non-empty lane, except that a "
    "waiter already overtaken max_bypass (K) times is served before anyone who arrived after it."
)

def grant_bound(ahead: int, max_bypass: int | None) -> float:
    """The most grants to others between a request and its own grant.

    ``ahead`` is the number of waiters queued (in any lane, not counting the owner) when the
    request was made. Each later grant goes either to one of those (at most ``ahead``) or to a
    newer ticket, which overtakes the waiter (at most K times).
    """
    if max_bypass is None:
        return math.inf
    return ahead + max_bypass


@dataclass(frozen=True)
class WaiterState:
    """One queued ticket as seen in a snapshot."""

    ticket: int
    lane: str
    overtaken: int


@dataclass(frozen=True)
class QueueState:
    """A complete, immutable snapshot of a :class:`FairQueue`; ``FairQueue.restore`` rebuilds it."""

    lanes: tuple[str, ...]
    default_lane: str
    max_bypass: int | None
    owner: int | None
    owner_lane: str | None
    waiters: tuple[WaiterState, ...]  # in ticket (arrival) order
    last_ticket: int
    grants: int
    max_overtaken: int


class FairQueue:
    """The deterministic state machine behind every fairlock lock. See the module docstring."""

    __slots__ = (
        "policy",
        "lanes",
        "max_bypass",
        "_queues",
        "_rank_of",
        "_owner",
        "_owner_rank",
        "_last_ticket",
        "grants",
        "max_overtaken",
    )

    def __init__(self, lanes: Policy | Lanes | Iterable[str] | None = None,
                 max_bypass: int | None = DEFAULT_MAX_BYPASS) -> None:
        if isinstance(lanes, Policy):
            policy = lanes
        else:
            policy = Policy.of(lanes, None, max_bypass)
        self.policy: Policy = policy
        self.lanes: Lanes = policy.lanes
        self.max_bypass: int | None = policy.max_bypass
        lanes = policy.lanes
        # One FIFO per lane, ticket -> times overtaken; OrderedDict gives O(1) head and removal.
        self._queues: list[OrderedDict[int, int]] = [OrderedDict() for _ in lanes.names]
        self._rank_of: dict[int, int] = {}
        self._owner: int | None = None
        self._owner_rank: int | None = None
        self._last_ticket = 0
        #: Number of grants made so far.
        self.grants = 0
        #: The largest number of times any waiter has been overtaken.
        self.max_overtaken = 0

    # -- queries --------------------------------------------------------------------------------

    @property
    def owner(self) -> int | None:
        """The ticket that holds the lock, or None when it is free."""
        return self._owner

    @property
    def owner_lane(self) -> str | None:
        """The lane the owner queued in, or None when the lock is free."""
        return None if self._owner_rank is None else self.lanes.names[self._owner_rank]

    def __len__(self) -> int:
        """Number of queued waiters (the owner is not counted)."""
        return len(self._rank_of)

    def __contains__(self, ticket: object) -> bool:
        return _is_ticket(ticket) and ticket in self._rank_of

    def waiting(self) -> dict[str, int]:
        """Queued waiters per lane name."""
        return {name: len(q) for name, q in zip(self.lanes.names, self._queues)}

    def lane_of(self, ticket: int) -> str:
        """The lane of ``ticket`` (queued, or the owner); raises UnknownTicketError otherwise."""
        if ticket == self._owner and self._owner_rank is not None:
            return self.lanes.names[self._owner_rank]
        try:
            return self.lanes.names[self._rank_of[ticket]]
        except (KeyError, TypeError):
            raise UnknownTicketError(ticket) from None

    def overtaken(self, ticket: int) -> int:
        """How often the queued ``ticket`` has been overtaken so far."""
        try:
            return self._queues[self._rank_of[ticket]][ticket]
        except (KeyError, TypeError):
            raise UnknownTicketError(ticket) from None

    def ahead_of(self, ticket: int) -> int:
        """Queued waiters (any lane) that arrived before the queued ``ticket``."""
        if ticket not in self:
            raise UnknownTicketError(ticket)
        return sum(1 for t in self._rank_of if t < ticket)

    def peek_next(self) -> int | None:
        """The ticket the grant rule would choose now, without changing anything."""
        grant = decide(self.policy, self._queues)
        return None if grant is None else grant.ticket

    def carried_lane(self, lane: str) -> str:
        """The lane a request made for ``lane`` on behalf of this queue's waiters carries (the
        owner of a local queue that queues once more elsewhere: the two levels of the etcd lock)."""
        best = self.lanes.rank(lane)
        for rank in range(best):
            if self._queues[rank]:
                return self.lanes.names[rank]
        return lane

    # -- operations -----------------------------------------------------------------------------

    def request(self, lane: str | None = None, ticket: int | None = None) -> int:
        """Queue a new ticket in ``lane`` (default lane if None); grant it at once if the lock is free.

        Returns the ticket; the caller owns the lock iff ``queue.owner == ticket`` afterwards.
        ``ticket`` lets a transport supply its own arrival order (an etcd create revision); it
        must be larger than every ticket seen before.
        """
        rank = self.lanes.rank_or_default(lane)
        if ticket is None:
            ticket = self._last_ticket + 1
        else:
            if isinstance(ticket, bool) or not isinstance(ticket, int):
                raise ArgumentTypeError(f"ticket must be an int, got {type(ticket).__name__}")
            if ticket <= self._last_ticket:
                raise TicketOrderError(f"ticket {ticket} is not newer than the last ticket {self._last_ticket}")
        self._last_ticket = ticket
        if self._owner is None:
            # Invariant 2: a free lock has an empty queue, so the newcomer is next by every rule.
            self._owner, self._owner_rank = ticket, rank
            self.grants += 1
        else:
            self._queues[rank][ticket] = 0
            self._rank_of[ticket] = rank
        return ticket

    def release(self, ticket: int | None = None) -> int | None:
        """The owner releases; returns the next owner (already made owner) or None if now free.

        With ``ticket`` given, it must be the owner's ticket (an owner-checked release).
        """
        if self._owner is None:
            raise NotHeldError("release of a lock that is not held")
        if ticket is not None and ticket != self._owner:
            raise NotOwnerError(f"ticket {ticket!r} is not the owner (owner is ticket {self._owner})")
        return self._handoff()

    def cancel(self, ticket: int) -> int | None:
        """Withdraw ``ticket`` at any time.

        A queued ticket just leaves its lane (nobody else's count changes). If the ticket was
        already chosen as owner but its caller gave up before running, the lock passes on exactly
        as on release, so it is never stranded; the new owner is returned (None if now free).
        """
        if ticket == self._owner and ticket is not None:
            return self._handoff()
        rank = self._rank_of.pop(ticket, None) if _is_ticket(ticket) else None
        if rank is None:
            raise UnknownTicketError(ticket)
        del self._queues[rank][ticket]
        return None

    def change_lane(self, ticket: int, lane: str) -> None:
        """Move a queued ticket to another lane, keeping its arrival order and overtaken count."""
        new_rank = self.lanes.rank(lane)
        if not _is_ticket(ticket) or ticket not in self._rank_of:
            if ticket == self._owner and ticket is not None:
                raise InvalidArgumentError(f"ticket {ticket} is the owner; only queued tickets change lanes")
            raise UnknownTicketError(ticket)
        old_rank = self._rank_of[ticket]
        if old_rank == new_rank:
            return
        overtaken = self._queues[old_rank].pop(ticket)
        target = self._queues[new_rank]
        # Re-insert at its arrival position: everything newer moves behind it.
        newer = [(t, n) for t, n in target.items() if t > ticket]
        for t, _ in newer:
            del target[t]
        target[ticket] = overtaken
        target.update(newer)
        self._rank_of[ticket] = new_rank

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self) -> QueueState:
        """The whole state as a frozen :class:`QueueState` (see :meth:`restore`)."""
        names = self.lanes.names
        waiters = sorted(
            (WaiterState(t, names[r], self._queues[r][t]) for t, r in self._rank_of.items()),
            key=lambda w: w.ticket,
        )
        return QueueState(
            lanes=names,
            default_lane=self.lanes.default,
            max_bypass=self.max_bypass,
            owner=self._owner,
            owner_lane=self.owner_lane,
            waiters=tuple(waiters),
            last_ticket=self._last_ticket,
            grants=self.grants,
            max_overtaken=self.max_overtaken,
        )

    @classmethod
    def restore(cls, state: QueueState) -> FairQueue:
        """Rebuild a queue from a snapshot (or from state read back from etcd)."""
        queue = cls(Lanes(state.lanes, state.default_lane), state.max_bypass)
        if state.owner is None and state.waiters:
            raise InvalidArgumentError("inconsistent state: waiters queued on a free lock")
        last = state.owner or 0
        for w in state.waiters:
            if w.ticket <= 0 or (state.owner is not None and w.ticket == state.owner):
                raise InvalidArgumentError(f"inconsistent state: bad waiter ticket {w.ticket}")
            if w.overtaken < 0:
                raise InvalidArgumentError(f"inconsistent state: negative overtaken count for {w.ticket}")
            rank = queue.lanes.rank(w.lane)
            if w.ticket in queue._rank_of:
                raise InvalidArgumentError(f"inconsistent state: ticket {w.ticket} queued twice")
            queue._rank_of[w.ticket] = rank
            last = max(last, w.ticket)
        for w in sorted(state.waiters, key=lambda w: w.ticket):
            queue._queues[queue._rank_of[w.ticket]][w.ticket] = w.overtaken
        if state.owner is not None:
            queue._owner = state.owner
            queue._owner_rank = queue.lanes.rank(state.owner_lane or state.default_lane)
        queue._last_ticket = max(last, state.last_ticket)
        queue.grants = state.grants
        queue.max_overtaken = max([state.max_overtaken, *(w.overtaken for w in state.waiters)])
        return queue

    # -- the handoff -----------------------------------------------------------------------------

    def _handoff(self) -> int | None:
        """End the current ownership and grant the ticket the policy names (or free the lock)."""
        grant = decide(self.policy, self._queues)
        if grant is None:
            self._owner = self._owner_rank = None
            return None
        ticket, rank, _, overtaken = grant
        if overtaken:
            queues, rank_of = self._queues, self._rank_of
            for t, n in overtaken:
                queues[rank_of[t]][t] = n
                if n > self.max_overtaken:
                    self.max_overtaken = n
        del self._queues[rank][ticket]
        del self._rank_of[ticket]
        self._owner, self._owner_rank = ticket, rank
        self.grants += 1
        return ticket

    def __repr__(self) -> str:
        return (
            f"<FairQueue owner={self._owner} waiting={self.waiting()} "
            f"max_bypass={self.max_bypass} grants={self.grants}>"
        )


def _is_ticket(ticket: object) -> bool:
    return isinstance(ticket, int) and not isinstance(ticket, bool)
