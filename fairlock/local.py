"""The in-process fair lock, for native threads and eventlet green threads.

This module only waits and wakes. Every decision about who owns the lock next is made by
:class:`fairlock._core.FairQueue`; this adapter keeps three facts in step with it:

1. ``_held`` (a plain lock that nobody ever blocks on) is locked exactly while someone owns the
   lock. It is released only when the core says the queue is empty, so the fast path
   (``_held.acquire(False)``) can never barge past a queued waiter: the core's rule for an empty
   queue ("a request on a free lock is granted at once") is the only decision it short-cuts.
2. An owner that took the fast path is unknown to the core (``_owner_ticket is None``) until the
   first waiter arrives, which registers it under the mutex before queuing behind it.
3. A release hands the lock over under the mutex: the releaser makes the chosen waiter the owner
   and then opens that waiter's private parker -- one wake-up per release, never a notify-all.

Nothing that can block or yield to another green thread (logging, I/O) runs under ``_mutex``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any

from . import _primitives
from ._core import DEFAULT_MAX_BYPASS, FairQueue, Lanes, Policy
import threading as _threading

from ._primitives import new_parker, thread_name
from .context import current_lane, note_unknown_lane, resolve_lane
from .errors import (
    AcquireTimeout,
    ArgumentTypeError,
    DeadlockError,
    InvalidArgumentError,
    NotHeldError,
    NotOwnerError,
)
from .stats import LaneCounters, LockStatistics, snapshot_lanes

__all__ = ["Lock", "check_timeout", "check_name"]

LOG = logging.getLogger("fairlock.local")

_DEFAULT_LANES = Lanes()


def check_name(name: object, *, allow_none: bool = True) -> str | None:
    """Lock names are non-empty strings (None for an anonymous lock where allowed)."""
    if name is None and allow_none:
        return None
    if not isinstance(name, str):
        raise ArgumentTypeError(f"lock name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidArgumentError("lock name must not be empty")
    return name


def check_timeout(blocking: object, timeout: object) -> float | None:
    """Validate ``acquire`` arguments; returns seconds to wait, or None for no limit.

    ``timeout`` is -1 or None (wait forever), or a non-negative number of seconds; ``inf`` also
    means forever. A timeout together with ``blocking=False`` is an error, as for threading.Lock.
    """
    if not isinstance(blocking, (bool, int)):
        raise ArgumentTypeError(f"blocking must be a bool, got {type(blocking).__name__}")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"timeout must be a number or None, got {type(timeout).__name__}")
    if math.isnan(timeout):
        raise InvalidArgumentError("timeout must not be NaN")
    if timeout == -1:
        return None
    if timeout < 0:
        raise InvalidArgumentError(f"timeout must be -1 (forever) or >= 0, got {timeout}")
    if not blocking:
        raise InvalidArgumentError("can't specify a timeout for a non-blocking call")
    if math.isinf(timeout):
        return None
    return float(timeout)


def _check_threshold(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number of seconds or None")
    if math.isnan(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be > 0 seconds, got {value}")
    return float(value)


class _Waiter:
    __slots__ = ("parker", "ident", "rank", "since")

    def __init__(self, parker: Any, ident: int, rank: int, since: float) -> None:
        self.parker = parker
        self.ident = ident
        self.rank = rank
        self.since = since


class Lock:
    """A fair, non-reentrant lock for threads and eventlet green threads.

    Fairness, in one sentence: the next owner is the oldest waiter of the highest-priority
    non-empty lane, except that a waiter already overtaken ``max_bypass`` (K) times is served
    before anyone who arrived after it. The releaser hands the lock directly to that waiter and
    wakes only it; a newcomer never takes the lock while anyone is queued.

    >>> import fairlock
    >>> lock = fairlock.Lock("refresh_cache-1")
    >>> with lock:
    ...     lock.locked()
    True
    >>> lock.acquire(lane="high") and lock.statistics().grants
    2
    >>> lock.release()

    Not guaranteed: the order among callers that arrive at the same instant (whoever reaches the
    internal mutex first arrives first), and fairness towards threads that never call
    ``acquire`` again after a timeout.

    Re-acquiring by the owner: with ``reentrant=False`` (the default, as oslo's internal locks),
    a blocking ``acquire`` by the owner raises :class:`~fairlock.errors.DeadlockError` at once
    instead of hanging forever, and a non-blocking one returns False. With ``reentrant=True`` the
    owner may nest acquires and must release as often.
    """

    __slots__ = (
        "name",
        "lanes",
        "_queue",
        "_held",
        "_held_acquire",
        "_mutex",
        "_owner",
        "_owner_ticket",
        "_plain",
        "_held_release",
        "_depth",
        "_reentrant",
        "_waiters",
        "_fast_grants",
        "_handoffs",
        "_lane_counters",
        "_clock",
        "_slow_hold",
        "_slow_wait",
        "_timed",
        "_lane_typos",
        "_contended",
        "_held_since",
        "_held_lane",
        "_log",
        "_on_queued",
        "__weakref__",
    )

    def __init__(
        self,
        name: str | None = None,
        *,
        lanes: Iterable[str] | Lanes | None = None,
        default_lane: str | None = None,
        max_bypass: int | None = DEFAULT_MAX_BYPASS,
        reentrant: bool = False,
        slow_hold: float | None = None,
        slow_wait: float | None = None,
        record_holds: bool = False,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
        on_queued: Callable[[str], object] | None = None,
    ) -> None:
        self.name = check_name(name)
        if isinstance(lanes, Lanes):
            if default_lane is not None and default_lane != lanes.default:
                lanes = Lanes(lanes.names, default_lane)
        elif lanes is None and default_lane is None:
            lanes = _DEFAULT_LANES  # immutable, shared: saves building it for every named lock
        else:
            lanes = Lanes(lanes if lanes is not None else _DEFAULT_LANES.names, default_lane)
        if not isinstance(reentrant, bool):
            raise ArgumentTypeError("reentrant must be a bool")
        if not isinstance(record_holds, bool):
            raise ArgumentTypeError("record_holds must be a bool")
        if not callable(clock):
            raise ArgumentTypeError("clock must be callable")
        if on_queued is not None and not callable(on_queued):
            raise ArgumentTypeError("on_queued must be callable or None")
        if logger is not None and not callable(getattr(logger, "warning", None)):
            # Checked now: the slow_hold/slow_wait warnings would fail long after construction.
            raise ArgumentTypeError(f"logger must be a logging.Logger or None, got {type(logger).__name__}")
        self._on_queued = on_queued
        self.lanes: Lanes = lanes
        self._queue = FairQueue(lanes, max_bypass)
        # Both looked up now from the threading module (green if monkey patched). Neither is ever
        # blocked on for long: _held only sees acquire(False); _mutex guards a few lines.
        self._held = _threading.Lock()
        self._held_acquire = self._held.acquire
        self._held_release = self._held.release
        self._mutex = _threading.Lock()
        self._owner: int | None = None
        self._owner_ticket: int | None = None
        self._depth = 0
        self._reentrant = reentrant
        self._waiters: dict[int, _Waiter] = {}
        self._fast_grants = 0
        self._handoffs = 0
        self._lane_counters = [LaneCounters() for _ in lanes.names]
        self._lane_typos = 0
        # Set once anyone queues: until then the lane counters hold nothing worth keeping (see
        # fairlock.history: a dropped lock that never queued is recorded as name and grants).
        self._contended = False
        self._clock = clock
        self._slow_hold = _check_threshold("slow_hold", slow_hold)
        self._slow_wait = _check_threshold("slow_wait", slow_wait)
        # Hold times cost a clock read per acquire and release: only when asked for.
        self._timed = self._slow_hold is not None or record_holds
        self._held_since = 0.0
        self._held_lane: str | None = None  # the lane= of a fast-path grant (slow_hold only)
        self._log = logger or LOG
        # True when release needs no bookkeeping beyond the handoff (the common, fast case).
        self._plain = not reentrant and not self._timed

    # -- acquire ---------------------------------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None = -1, lane: str | None = None) -> bool:
        """Take the lock; True if taken, False on timeout or when non-blocking and busy.

        ``lane`` (a name from ``lanes``) overrides the context's :func:`fairlock.lane`.
        """
        if lane is not None:
            self.lanes.rank(lane)
        timeout = check_timeout(blocking, timeout) if blocking is not True or timeout != -1 else None
        if self._held_acquire(False):
            self._owner = _threading.get_ident()
            self._fast_grants += 1
            if self._timed:
                self._held_since = self._clock()
                self._held_lane = lane
            return True
        return self._acquire_contended(bool(blocking), timeout, lane)

    def __enter__(self) -> Lock:
        if self._held_acquire(False):
            self._owner = _threading.get_ident()
            self._fast_grants += 1
            if self._timed:
                self._held_since = self._clock()
                self._held_lane = None
        else:
            self._acquire_contended(True, None, None)
        return self

    def _acquire_contended(self, blocking: bool, timeout: float | None, lane: str | None) -> bool:
        me = _threading.get_ident()
        if self._owner == me:  # only this thread could have made itself the owner
            if self._reentrant:
                self._depth += 1
                return True
            if not blocking:
                return False
            raise DeadlockError(f"{self!r}: the owner tried to acquire it again (not reentrant)")
        if not blocking:
            return False
        # A context lane this lock does not know is a hint for other locks: use the default
        # (counted as a lane typo: with lockutils every lock has the same lanes).
        typo = lane is None and not self.lanes.knows(current_lane() or self.lanes.default)
        if typo:
            note_unknown_lane(self.lanes, self.name)
        lane = resolve_lane(self.lanes, lane)
        parker = new_parker()
        with self._mutex:
            if typo:
                self._lane_typos += 1
            if self._held_acquire(False):
                # Freed since the fast path failed; free implies an empty queue (core rule 2).
                self._owner = me
                self._fast_grants += 1
                if self._timed:
                    self._held_since = self._clock()
                    self._held_lane = lane
                return True
            self._contended = True
            if self._owner_ticket is None:
                # The owner came in by the fast path; tell the core, so it queues us behind it.
                self._owner_ticket = self._queue.request()
            ticket = self._queue.request(lane)
            waiter = _Waiter(parker, me, self.lanes.rank(lane), self._clock())
            self._waiters[ticket] = waiter
        try:
            if self._on_queued is not None:
                # Outside the mutex: the distributed lock uses this to raise its etcd waiter's lane.
                self._on_queued(lane)
            granted = self._park(waiter, timeout, ticket)
        except BaseException:
            self._abandon(ticket)
            raise
        if granted:
            return True
        with self._mutex:
            if self._owner_ticket == ticket:
                # Chosen in the instant our timeout fired: we own it now, so report success
                # rather than strand the lock.
                return True
            # Invariant: leaving the queue changes nobody else's order or overtaken count.
            self._queue.cancel(ticket)
            del self._waiters[ticket]
            self._lane_counters[waiter.rank].timeouts += 1
        return False

    def _park(self, waiter: _Waiter, timeout: float | None, ticket: int) -> bool:
        limit = _primitives.timeout_max()
        if self._slow_wait is None or (timeout is not None and timeout <= self._slow_wait):
            return waiter.parker.acquire(True, -1 if timeout is None or timeout > limit else timeout)
        if waiter.parker.acquire(True, self._slow_wait):
            return True
        self._warn_slow_wait(ticket)
        rest = None if timeout is None else timeout - self._slow_wait
        return waiter.parker.acquire(True, -1 if rest is None or rest > limit else rest)

    def _abandon(self, ticket: int) -> None:
        """The waiter left by an exception (greenlet kill, KeyboardInterrupt) while queued."""
        with self._mutex:
            if self._owner_ticket == ticket:
                # Chosen but never ran: the core passes the lock on, as on release.
                self._hand_to(self._queue.cancel(ticket))
                return
            if ticket in self._queue:
                self._queue.cancel(ticket)
                waiter = self._waiters.pop(ticket)
                self._lane_counters[waiter.rank].cancels += 1

    # -- release ---------------------------------------------------------------------------------

    def release(self) -> None:
        """Release the lock; raises if the caller is not the owner. Hands over to the next owner."""
        # Kept identical to __exit__ (one frame less on the hot path).
        if self._owner != _threading.get_ident() or not self._plain:
            return self._release_checked()
        with self._mutex:
            if self._owner_ticket is None:  # the core never saw a waiter: nobody to hand to
                self._owner = None
                self._held_release()
            else:
                self._hand_to(self._queue.release(self._owner_ticket))

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._owner != _threading.get_ident() or not self._plain:
            return self._release_checked()
        with self._mutex:
            if self._owner_ticket is None:
                self._owner = None
                self._held_release()
            else:
                self._hand_to(self._queue.release(self._owner_ticket))

    def _release_checked(self) -> None:
        """Release with the owner check's errors, reentrancy and the slow-hold warning."""
        me = _threading.get_ident()
        if self._owner != me:
            if self._owner is None and not self._held.locked():
                raise NotHeldError(f"release of {self!r}, which is not held")
            raise NotOwnerError(f"release of {self!r} by {thread_name(me)}, which is not the owner")
        if self._depth:
            self._depth -= 1
            return
        held_since, timed = self._held_since, self._timed
        if timed:
            # The lane it queued in, or a fast-path owner's lane=, or else its context's lane
            # (what it would have queued in).
            lane = self._held_lane if self._held_lane is not None else resolve_lane(self.lanes, None)
            held = self._clock() - held_since
        with self._mutex:
            if timed:
                self._lane_counters[self.lanes.rank(lane)].held_for(held)
            if self._owner_ticket is None:
                self._owner = None
                self._held_release()
            else:
                self._hand_to(self._queue.release(self._owner_ticket))
        if self._slow_hold is not None and held > self._slow_hold:
            holder = thread_name(me)
            self._log.warning(
                'Lock "%s" was held for %.3fs by %s in lane %s (slow_hold threshold %.3fs)',
                self.name, held, holder, lane, self._slow_hold,
                extra={"fairlock_lock": self.name, "fairlock_lane": lane, "fairlock_holder": holder,
                       "fairlock_seconds": held, "fairlock_event": "slow_hold"},
            )

    def _hand_to(self, ticket: int | None) -> None:
        """Make ``ticket`` the owner and wake only it, or free the lock. Caller holds _mutex."""
        if ticket is None:
            self._owner = None
            self._owner_ticket = None
            self._held_release()
            return
        waiter = self._waiters.pop(ticket)
        now = self._clock()
        self._owner = waiter.ident
        self._owner_ticket = ticket
        self._handoffs += 1
        self._lane_counters[waiter.rank].granted_after(now - waiter.since)
        if self._timed:
            self._held_since = now
            self._held_lane = self.lanes.names[waiter.rank]
        waiter.parker.release()

    # -- queries ---------------------------------------------------------------------------------

    def locked(self) -> bool:
        """True if anyone holds the lock now."""
        return self._held.locked()

    def owned(self) -> bool:
        """True if the calling thread (or green thread) holds the lock."""
        return self._owner == _threading.get_ident()

    @property
    def max_bypass(self) -> int | None:
        """K: how many times a waiter may be overtaken by later, higher-lane waiters (None: unbounded)."""
        return self._queue.max_bypass

    @property
    def policy(self) -> Policy:
        """The lanes and K this lock's grants follow (:class:`fairlock._core.Policy`)."""
        return self._queue.policy

    def carried_lane(self, lane: str) -> str:
        """The lane the owner's request elsewhere carries for itself (in ``lane``) and the threads
        queued behind it here: the etcd lock's second level asks this (the core decides)."""
        with self._mutex:
            return self._queue.carried_lane(lane)

    def statistics(self) -> LockStatistics:
        """A consistent snapshot: holder, queue in grant order, grants, and per-lane figures."""
        with self._mutex:
            lanes = snapshot_lanes(self.lanes.names, self._lane_counters, self._queue.waiting())
            order = _grant_order(self._queue) if len(self._queue) else ()
            queue = tuple((thread_name(self._waiters[t].ident), lane) for t, lane in order)
            owner = self._owner
            return LockStatistics(
                name=self.name,
                owner=owner,
                owner_lane=self._queue.owner_lane if self._owner_ticket is not None else None,
                grants=self._fast_grants + self._handoffs,
                handoffs=self._handoffs,
                max_overtaken=self._queue.max_overtaken,
                max_bypass=self._queue.max_bypass,
                lanes=lanes,
                holder=None if owner is None else thread_name(owner),
                lane_typos=self._lane_typos,
                queue=queue,
            )

    def _counts(self) -> tuple[int, int, int, tuple[str, ...], list[LaneCounters]]:
        """(grants, handoffs, lane typos, lane names, a copy of the lane counters), for a name's
        history (fairlock.history)."""
        with self._mutex:
            return (self._fast_grants + self._handoffs, self._handoffs, self._lane_typos, self.lanes.names,
                    [c.copy() for c in self._lane_counters])

    def _warn_slow_wait(self, ticket: int) -> None:
        with self._mutex:
            queued = ticket in self._queue
            owner, since, ahead = self._owner, self._held_since, self._queue.ahead_of(ticket) if queued else 0
            lane = self._queue.lane_of(ticket) if queued else None
            # Known when hold times are tracked (the core registers a fast-path owner in the
            # default lane, which need not be the lane it asked for).
            owner_lane = self._held_lane if self._timed else None
        if lane is None:
            return  # granted (or gone) while the warning was being decided: it did not wait longer
        held = f" for {self._clock() - since:.3f}s" if self._timed else ""
        in_lane = f" in lane {owner_lane}" if owner_lane is not None else ""
        waiter, holder = thread_name(_threading.get_ident()), thread_name(owner)
        self._log.warning(
            'Lock "%s" waited on for more than %.3fs by %s in lane %s; held by %s%s%s, %d waiter(s) ahead',
            self.name, self._slow_wait, waiter, lane, holder, in_lane, held, ahead,
            extra={"fairlock_lock": self.name, "fairlock_lane": lane, "fairlock_holder": holder,
                   "fairlock_seconds": self._slow_wait, "fairlock_event": "slow_wait"},
        )

    def __repr__(self) -> str:
        owner = self._owner
        state = f"held by {thread_name(owner)}" if owner is not None else (
            "held" if self._held.locked() else "free"
        )
        return f"<fairlock.Lock {self.name!r} {state}, {len(self._queue)} waiting>"


def _grant_order(queue: FairQueue) -> list[tuple[int, str]]:
    """The queued tickets and their lanes in the order the core would grant them if nobody else
    arrived or left (worked out on a copy: the queue itself is not touched)."""
    copy = FairQueue.restore(queue.snapshot())
    order = []
    while True:
        ticket = copy.release() if copy.owner is not None else None
        if ticket is None:
            return order
        order.append((ticket, copy.lane_of(ticket)))


def acquire_or_raise(lock: Lock, blocking: bool, timeout: float | None, lane: str | None) -> None:
    """Acquire for a context manager: a failed attempt raises AcquireTimeout."""
    if not lock.acquire(blocking, -1 if timeout is None else timeout, lane):
        what = "non-blocking acquire failed" if not blocking else f"not acquired within {timeout}s"
        raise AcquireTimeout(f"{lock!r}: {what}")
