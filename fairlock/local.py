"""The in-process fair lock, for native threads and eventlet green threads.

This module only waits and wakes. Every decision about who owns the lock next is made by
:class:`fairlock._core.FairQueue`; this adapter keeps these facts in step with it:

1. **The lock word** is the entry ``"_owner"`` of the lock's instance dict: present exactly while
   someone owns the lock, its value the owner's token (:func:`fairlock._primitives.current_token`:
   one object per thread or green thread, never reused, unlike a thread ident). It is taken with
   ``dict.setdefault`` -- a test-and-set that also records the owner, in one step that neither
   another thread nor an asynchronous exception can split -- and freed with ``del``. An
   uncontended acquire+release therefore takes no mutex and builds nothing.
2. **The queue machinery** (the core's FairQueue, the waiters, the per-lane counters and the
   ``_mutex`` that guards them) is built by the first waiter, under the mutex. ``_waiting`` is
   True exactly while the core has someone queued, and then the core also knows an owner ticket
   (``_owner_ticket``: the waiter granted last, or a placeholder for an owner that came in by the
   fast path); when the queue empties, the core forgets its owner and ``_waiting`` goes False.
3. **Nobody barges.** The fast path takes the word and then reads ``_waiting``; if someone is
   queued it does not keep the lock but hands it to the core's choice. A waiter sets ``_waiting``
   and then tries the word; a releaser frees the word and then reads ``_waiting``. Of two such
   write-then-read pairs at least one sees the other, so a release never misses a waiter that
   queued meanwhile, and a waiter never sleeps on a free lock.
4. **Handoff at release.** Whoever holds the word while the previous owner is done and someone is
   queued (the releaser, a fast-path caller that took the word, or a waiter that found it free)
   asks the core for the next owner under the mutex, makes it the owner (the word becomes its
   token) and then opens only its private parker: one wake-up per release, never a notify-all.

Nothing that can block or yield to another green thread (logging, I/O) runs under ``_mutex``.

Asynchronous exceptions (KeyboardInterrupt, ``PyThreadState_SetAsyncExc``) on the uncontended
path: an interruption right after ``__enter__`` took the word gives the lock back before
propagating, and one inside ``__exit__`` or ``release`` finishes the release. What no lock written
in Python can close is the instant a Python ``__exit__`` is entered, before its first line runs
(doc/source/local.rst says more). fork(): see :meth:`Lock._after_fork`.
"""

from __future__ import annotations

import logging
import math
import sys
import threading as _threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import _primitives
from ._core import DEFAULT_MAX_BYPASS, FairQueue, Lanes, Policy, check_max_bypass
from ._primitives import (
    FORK,
    NATIVE_GET_IDENT as _NATIVE_GET_IDENT,
    TOKENS as _TOKENS,
    current_token,
    new_parker,
    new_token as _new_token,
    thread_name,
    token_ident,
)
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


def _green_token() -> Any:
    """The current greenlet. The first call rebinds this name to greenlet's own getcurrent, so
    the hot paths then call C directly (greenlet was imported by eventlet, never by us)."""
    global _green_token
    getcurrent = sys.modules["greenlet"].getcurrent
    _green_token = getcurrent
    return getcurrent()


#: The lock word's value while the lock passes from one owner to the next under ``_mutex``.
_HANDING_OVER: Any = type("HandingOver", (), {"__repr__": lambda self: "<handing over>", "ident": None})()


class _Building:
    """Guards the one-time creation of a lock's mutex (a new one in a forked child)."""

    def __init__(self) -> None:
        self._mutex = _threading.Lock()


_BUILDING = _Building()
_primitives.fresh_mutex_in_child(_BUILDING)


class _Waiter:
    __slots__ = ("parker", "token", "rank", "since")

    def __init__(self, parker: Any, token: Any, rank: int, since: float) -> None:
        self.parker = parker
        self.token = token
        self.rank = rank
        self.since = since


def no_counters(lanes: Lanes) -> list[LaneCounters]:
    """Lane counters with nothing counted, for a lock that never built its own (shared: read only)."""
    found = _NO_COUNTERS.get(len(lanes.names))
    if found is None:
        found = _NO_COUNTERS[len(lanes.names)] = [LaneCounters() for _ in lanes.names]
    return found


_NO_COUNTERS: dict[int, list[LaneCounters]] = {}


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
    owner may nest acquires and must release as often. The owner is the thread (or green thread)
    itself, not its ident: a thread that exits holding the lock keeps it held, and a new thread
    that happens to get the same ident is an ordinary waiter, not the owner.
    """

    __slots__ = (
        "name",
        "lanes",
        "__dict__",  # holds the lock word "_owner" and nothing else (see the module docstring)
        "__weakref__",
        "_max_bypass",
        "_reentrant",
        "_plain",
        "_clock",
        "_slow_hold",
        "_slow_wait",
        "_timed",
        "_lane_typos",
        "_log",
        "_on_queued",
        "_mutex",
        "_queue",
        "_waiters",
        "_lane_counters",
        "_waiting",
        "_owner_ticket",
        "_owner_rank",
        "_depth",
        "_fast_grants",
        "_handoffs",
        "_held_since",
        "_held_lane",
        "_fork_generation",
    )

    #: The owner's token while held; this class default (None) shows through while free.
    _owner: Any = None

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
        if reentrant is not False and reentrant is not True:
            raise ArgumentTypeError("reentrant must be a bool")
        if record_holds is not False and record_holds is not True:
            raise ArgumentTypeError("record_holds must be a bool")
        if not callable(clock):
            raise ArgumentTypeError("clock must be callable")
        if on_queued is not None and not callable(on_queued):
            raise ArgumentTypeError("on_queued must be callable or None")
        if logger is not None and not callable(getattr(logger, "warning", None)):
            # Checked now: the slow_hold/slow_wait warnings would fail long after construction.
            raise ArgumentTypeError(f"logger must be a logging.Logger or None, got {type(logger).__name__}")
        self.lanes: Lanes = lanes
        self._max_bypass = max_bypass if max_bypass is DEFAULT_MAX_BYPASS else check_max_bypass(max_bypass)
        self._reentrant = reentrant
        self._clock = clock
        self._slow_hold = _check_threshold("slow_hold", slow_hold) if slow_hold is not None else None
        self._slow_wait = _check_threshold("slow_wait", slow_wait) if slow_wait is not None else None
        self._log = logger or LOG
        self._on_queued = on_queued
        # Hold times cost a clock read per acquire and release: only when asked for.
        self._timed = slow_hold is not None or record_holds
        # True when release needs no bookkeeping beyond the handoff (the common, fast case).
        self._plain = not reentrant and not self._timed
        # The queue machinery: built by the first waiter (_build), under the mutex.
        self._mutex: Any = None
        self._queue: FairQueue | None = None
        self._waiters: dict[int, _Waiter] | None = None
        self._lane_counters: list[LaneCounters] | None = None
        self._lane_typos = 0
        self._waiting = False
        self._owner_ticket: int | None = None
        self._owner_rank: int | None = None
        self._depth = 0
        self._fast_grants = 0
        self._handoffs = 0
        self._held_since = 0.0
        self._held_lane: str | None = None  # the lane= of a fast-path grant (slow_hold only)
        self._fork_generation = FORK.generation

    # -- acquire ---------------------------------------------------------------------------------
    #
    # acquire(), __enter__, release() and __exit__ inline _primitives.current_token() and the
    # fast path: a call less is a fifth of the cost of an uncontended acquire+release.

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        """Take the lock; True if taken, False on timeout or when non-blocking and busy.

        ``timeout``: None (or -1, as for :class:`threading.Lock`) waits as long as it takes;
        otherwise seconds >= 0 (``inf`` also means forever); with ``blocking=False`` no timeout
        may be given. ``lane`` (a name from ``lanes``) overrides the context's
        :func:`fairlock.lane`. The same contract as every fairlock lock (:class:`fairlock.FairLock`).
        """
        if lane is not None:
            self.lanes.rank(lane)
        if blocking is not True or (timeout is not None and timeout != -1):
            timeout = check_timeout(blocking, timeout)
        else:
            timeout = None
        was = self._owner
        try:
            if _threading.get_ident is _NATIVE_GET_IDENT:
                try:
                    me = _TOKENS.token
                except AttributeError:
                    me = _new_token()
            else:
                me = _green_token()
            if was is not me and self.__dict__.setdefault("_owner", me) is me and not self._waiting:
                self._fast_grants += 1
                self._owner_rank = None
                if self._timed:
                    self._held_since = self._clock()
                    self._held_lane = lane
                return True
        except BaseException:
            self._interrupted_acquire(was)
            raise
        return self._acquire_contended(me, was, bool(blocking), timeout, lane)

    def __enter__(self) -> Lock:
        was = self._owner
        try:
            if _threading.get_ident is _NATIVE_GET_IDENT:
                try:
                    me = _TOKENS.token
                except AttributeError:
                    me = _new_token()
            else:
                me = _green_token()
            if was is not me and self.__dict__.setdefault("_owner", me) is me and not self._waiting:
                self._fast_grants += 1
                self._owner_rank = None
                if self._timed:
                    self._held_since = self._clock()
                    self._held_lane = None
                return self
        except BaseException:
            self._interrupted_acquire(was)
            raise
        self._acquire_contended(me, was, True, None, None)
        return self

    def _interrupted_acquire(self, was: Any) -> None:
        """An exception (asynchronous, or a failing clock) hit the fast path. If it came after we
        took the word, give the lock back: our caller's ``with`` never started, so nobody else
        would ever release it (threading.Lock behaves so, its acquire being one C call)."""
        me = current_token()
        if was is not me and self._owner is me:
            del self._owner
            if self._waiting:
                self._after_release()

    def _acquire_contended(
        self, me: Any, was: Any, blocking: bool, timeout: float | None, lane: str | None
    ) -> bool:
        if was is me:  # only this thread could have made itself the owner
            if self._reentrant:
                self._depth += 1
                return True
            if not blocking:
                return False
            raise DeadlockError(f"{self!r}: the owner tried to acquire it again (not reentrant)")
        # True when the fast path took the word although waiters were queued: it must not keep it.
        holding = self._owner is me
        if not blocking and not holding:
            return False
        ticket = None
        try:
            # A context lane this lock does not know is a hint for other locks: use the default
            # (counted as a lane typo: with lockutils every lock has the same lanes).
            typo = lane is None and not self.lanes.knows(current_lane() or self.lanes.default)
            if typo:
                note_unknown_lane(self.lanes, self.name)  # logs: never under the mutex
            lane = resolve_lane(self.lanes, lane)
            waiter = _Waiter(new_parker(), me, self.lanes.rank(lane), self._clock()) if blocking else None
            with self._guard():
                if typo:
                    self._lane_typos += 1
                if holding or self.__dict__.setdefault("_owner", me) is me:
                    if not self._waiting:
                        # Nobody queued (any more): ours by the rule for a free lock.
                        self._fast_grants += 1
                        self._owner_rank = None
                        if self._timed:
                            self._held_since = self._clock()
                            self._held_lane = lane
                        return True
                    # The word was free but someone is queued: the release that freed it has not
                    # handed over yet. Hand over for it, then queue behind (invariant 3).
                    self._grant_next()
                if waiter is None:
                    return False
                ticket = self._enqueue(waiter, lane)
                # Invariant 3: _waiting is set; now look at the word again. If the owner left
                # before it could see _waiting, the handover is ours to make.
                if self.__dict__.setdefault("_owner", _HANDING_OVER) is _HANDING_OVER:
                    self._grant_next()
                if self._owner is me:
                    return True  # we were next
            if self._on_queued is not None:
                # Outside the mutex: the distributed lock uses this to raise its etcd waiter's lane.
                self._on_queued(lane)
            granted = self._park(waiter, timeout, ticket)
        except BaseException:
            # Killed, interrupted or timed out by eventlet while queued, or before: leave no
            # ticket behind and, if the lock was already ours, pass it on.
            self._abandon(me, ticket)
            raise
        if granted:
            return True
        with self._guard():
            if self._owner is me:
                # Chosen in the instant our timeout fired: we own it now, so report success
                # rather than strand the lock.
                return True
            # Invariant: leaving the queue changes nobody else's order or overtaken count.
            self._withdraw(ticket, timed_out=True)
        return False

    def _enqueue(self, waiter: _Waiter, lane: str) -> int:
        """Queue ``waiter`` in the core. Caller holds _mutex and does not hold the word."""
        queue = self._queue
        if queue is None:
            queue = self._build()
        if not self._waiting:
            # The owner came in by the fast path (or the core forgot it when the queue emptied):
            # tell the core, so that it queues us behind it.
            self._owner_ticket = queue.request()
            self._waiting = True
        ticket = queue.request(lane)
        self._waiters[ticket] = waiter  # type: ignore[index]
        return ticket

    def _build(self) -> FairQueue:
        self._queue = queue = FairQueue(self.lanes, self._max_bypass)
        self._waiters = {}
        self._counters()
        return queue

    def _counters(self) -> list[LaneCounters]:
        """This lock's lane counters, made on first need. Caller holds _mutex."""
        counters = self._lane_counters
        if counters is None:
            counters = self._lane_counters = [LaneCounters() for _ in self.lanes.names]
        return counters

    def _park(self, waiter: _Waiter, timeout: float | None, ticket: int) -> bool:
        limit = _primitives.timeout_max()
        if self._slow_wait is None or (timeout is not None and timeout <= self._slow_wait):
            return waiter.parker.acquire(True, -1 if timeout is None or timeout > limit else timeout)
        if waiter.parker.acquire(True, self._slow_wait):
            return True
        self._warn_slow_wait(ticket)
        rest = None if timeout is None else timeout - self._slow_wait
        return waiter.parker.acquire(True, -1 if rest is None or rest > limit else rest)

    def _abandon(self, me: Any, ticket: int | None) -> None:
        """The caller leaves the slow path by an exception (greenlet kill, KeyboardInterrupt,
        eventlet.Timeout, a failing on_queued): nothing of it may stay behind."""
        with self._guard():
            if self._owner is me:
                # Chosen (or holding the word) but never ran: pass the lock on, as on release.
                self._pass_on()
            elif ticket is not None:
                self._withdraw(ticket, timed_out=False)

    def _withdraw(self, ticket: int, timed_out: bool) -> None:
        """Take a queued ticket out of the core. Caller holds _mutex."""
        queue = self._queue
        if queue is None or ticket not in queue:
            return  # already granted and passed on, or reset by a fork
        queue.cancel(ticket)
        waiter = self._waiters.pop(ticket, None)  # type: ignore[union-attr]
        if waiter is not None:
            counters = self._lane_counters[waiter.rank]  # type: ignore[index]
            if timed_out:
                counters.timeouts += 1
            else:
                counters.cancels += 1
        if not len(queue):
            self._forget_owner()

    def _forget_owner(self) -> None:
        """Nobody is queued any more: the core forgets the owner, so that its release needs no
        mutex (invariant 2). Caller holds _mutex."""
        if self._owner_ticket is not None:
            self._queue.release(self._owner_ticket)  # type: ignore[union-attr]
        self._owner_ticket = None
        self._waiting = False

    # -- release ---------------------------------------------------------------------------------

    def release(self) -> None:
        """Release the lock; raises if the caller is not the owner. Hands over to the next owner."""
        try:
            if _threading.get_ident is _NATIVE_GET_IDENT:
                try:
                    me = _TOKENS.token
                except AttributeError:
                    me = _new_token()
            else:
                me = _green_token()
            if self._owner is me and self._plain:
                del self._owner
                if self._waiting:
                    self._after_release()
                return
        except BaseException:
            self._interrupted_release()
            raise
        return self._release_checked(me)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if _threading.get_ident is _NATIVE_GET_IDENT:
                try:
                    me = _TOKENS.token
                except AttributeError:
                    me = _new_token()
            else:
                me = _green_token()
            if self._owner is me and self._plain:
                del self._owner
                if self._waiting:
                    self._after_release()
                return
        except BaseException:
            self._interrupted_release()
            raise
        return self._release_checked(me)

    def _interrupted_release(self) -> None:
        """An exception hit the plain release path: finish the release before it propagates."""
        if self._plain and self._owner is current_token():
            del self._owner
        if self._waiting:
            self._after_release()

    def _after_release(self) -> None:
        """The word was freed while someone is queued: hand over, unless a fast-path caller took
        the word meanwhile (it hands over itself) or someone already did."""
        with self._guard():
            if self._waiting and self.__dict__.setdefault("_owner", _HANDING_OVER) is _HANDING_OVER:
                self._grant_next()

    def _release_checked(self, me: Any) -> None:
        """Release with the owner check's errors, reentrancy and the slow-hold warning."""
        owner = self._owner
        if owner is not me:
            if self._fork_generation != FORK.generation:
                self._guard()  # a fork may have reset the lock: report what the child sees
                owner = self._owner
            if owner is None:
                raise NotHeldError(f"release of {self!r}, which is not held")
            raise NotOwnerError(
                f"release of {self!r} by {thread_name(token_ident(me))}, which is not the owner")
        if self._depth:
            self._depth -= 1
            return
        timed = self._timed
        if timed:
            # The lane it queued in, or a fast-path owner's lane=, or else its context's lane
            # (what it would have queued in).
            lane = self._held_lane if self._held_lane is not None else resolve_lane(self.lanes, None)
            held = self._clock() - self._held_since
            with self._guard():
                self._counters()[self.lanes.rank(lane)].held_for(held)
        try:
            del self._owner
        finally:
            if self._waiting:
                self._after_release()
        if self._slow_hold is not None and held > self._slow_hold:
            holder = thread_name(token_ident(me))
            self._log.warning(
                'Lock "%s" was held for %.3fs by %s in lane %s (slow_hold threshold %.3fs)',
                self.name, held, holder, lane, self._slow_hold,
                extra={"fairlock_lock": self.name, "fairlock_lane": lane, "fairlock_holder": holder,
                       "fairlock_seconds": held, "fairlock_event": "slow_hold"},
            )

    def _pass_on(self) -> None:
        """The caller holds the word and is done with it. Caller holds _mutex."""
        if self._waiting:
            self._grant_next()
        else:
            self.__dict__.pop("_owner", None)

    def _grant_next(self) -> None:
        """The previous owner is done, the caller holds the word and someone is queued: the core
        chooses the next owner. Caller holds _mutex."""
        self._hand_to(self._queue.release(self._owner_ticket))  # type: ignore[union-attr]

    def _hand_to(self, ticket: int | None) -> None:
        """Make ``ticket`` the owner and wake only it, or free the lock. Caller holds _mutex."""
        queue, waiters = self._queue, self._waiters
        waiter = None
        while ticket is not None:
            waiter = waiters.pop(ticket, None)  # type: ignore[union-attr]
            if waiter is not None:
                break
            # An orphan: its caller left by an exception between queuing and registering. The
            # core passes the lock on, as for a waiter that gave up when it was chosen.
            ticket = queue.cancel(ticket)  # type: ignore[union-attr]
        if ticket is None or waiter is None:
            self._owner_ticket = None
            self._waiting = False
            self.__dict__.pop("_owner", None)
            return
        now = self._clock()
        self.__dict__["_owner"] = waiter.token
        self._owner_ticket = ticket
        self._owner_rank = waiter.rank
        self._handoffs += 1
        self._lane_counters[waiter.rank].granted_after(now - waiter.since)  # type: ignore[index]
        if self._timed:
            self._held_since = now
            self._held_lane = self.lanes.names[waiter.rank]
        if not len(queue):  # type: ignore[arg-type]
            self._forget_owner()
        waiter.parker.release()

    # -- the mutex, and fork ---------------------------------------------------------------------

    def _guard(self) -> Any:
        """The mutex of the queue machinery: made on first use, and again in a forked child."""
        mutex = self._mutex
        if mutex is None or self._fork_generation != FORK.generation:
            with _BUILDING._mutex:
                if self._fork_generation != FORK.generation:
                    self._after_fork()
                if self._mutex is None:
                    self._mutex = _threading.Lock()
                mutex = self._mutex
        return mutex

    def _after_fork(self) -> None:
        """First use in a forked child (native threads): only the thread that called fork()
        exists here. A lock it held stays held by it; one held by any other thread, or being
        handed to one, is free; waiters (all of them other threads) are gone; the mutex, which
        another thread may have held at the fork, is new. Lane counters are kept."""
        if self._owner is not None and self._owner is not FORK.survivor:
            self.__dict__.pop("_owner", None)
            self._depth = 0
        self._queue = None
        self._waiters = None
        self._waiting = False
        self._owner_ticket = None
        self._mutex = None
        self._fork_generation = FORK.generation

    # -- queries ---------------------------------------------------------------------------------

    def locked(self) -> bool:
        """True if anyone holds the lock now."""
        if self._fork_generation != FORK.generation:
            self._guard()
        return "_owner" in self.__dict__

    def owned(self) -> bool:
        """True if the calling thread (or green thread) holds the lock."""
        return self._owner is current_token()

    @property
    def _contended(self) -> bool:
        """True once anyone queued (or a hold was timed): until then the lane counters hold nothing
        worth keeping (fairlock.history records such a dropped lock as its name and grants)."""
        return self._lane_counters is not None

    @property
    def max_bypass(self) -> int | None:
        """K: how many times a waiter may be overtaken by later, higher-lane waiters (None: unbounded)."""
        return self._max_bypass

    @property
    def policy(self) -> Policy:
        """The lanes and K this lock's grants follow (:class:`fairlock._core.Policy`)."""
        queue = self._queue
        return queue.policy if queue is not None else Policy(self.lanes, self._max_bypass)

    def carried_lane(self, lane: str) -> str:
        """The lane the owner's request elsewhere carries for itself (in ``lane``) and the threads
        queued behind it here: the etcd lock's second level asks this (the core decides)."""
        with self._guard():
            queue = self._queue
            if queue is None:  # nobody ever queued here: the core has nothing to add
                self.lanes.rank(lane)
                return lane
            return queue.carried_lane(lane)

    def statistics(self) -> LockStatistics:
        """A consistent snapshot: holder, queue in grant order, grants, and per-lane figures."""
        with self._guard():
            queue, waiters = self._queue, self._waiters
            waiting = queue.waiting() if queue is not None else dict.fromkeys(self.lanes.names, 0)
            lanes = snapshot_lanes(self.lanes.names, self._lane_counters or no_counters(self.lanes), waiting)
            order = _grant_order(queue) if queue is not None and len(queue) else ()
            queued = tuple(
                (thread_name(token_ident(waiters[t].token)), lane)  # type: ignore[index]
                for t, lane in order
                if t in waiters  # type: ignore[operator]
            )
            owner = self._owner
            rank = self._owner_rank
            owner_ident = token_ident(owner)
            return LockStatistics(
                name=self.name,
                owner=owner_ident,
                owner_lane=self.lanes.names[rank] if owner is not None and rank is not None else None,
                grants=self._fast_grants + self._handoffs,
                handoffs=self._handoffs,
                max_overtaken=queue.max_overtaken if queue is not None else 0,
                max_bypass=self._max_bypass,
                lanes=lanes,
                holder=None if owner is None else thread_name(owner_ident),
                lane_typos=self._lane_typos,
                queue=queued,
            )

    def _counts(self) -> tuple[int, int, int, tuple[str, ...], list[LaneCounters]]:
        """(grants, handoffs, lane typos, lane names, a copy of the lane counters), for a name's
        history (fairlock.history)."""
        with self._guard():
            counters = self._lane_counters or no_counters(self.lanes)
            return (self._fast_grants + self._handoffs, self._handoffs, self._lane_typos, self.lanes.names,
                    [c.copy() for c in counters])

    def _warn_slow_wait(self, ticket: int) -> None:
        with self._guard():
            queue = self._queue
            queued = queue is not None and ticket in queue
            owner, since, ahead = self._owner, self._held_since, queue.ahead_of(ticket) if queued else 0  # type: ignore[union-attr]
            lane = queue.lane_of(ticket) if queued else None  # type: ignore[union-attr]
            # Known when hold times are tracked (the core registers a fast-path owner in the
            # default lane, which need not be the lane it asked for).
            owner_lane = self._held_lane if self._timed else None
        if lane is None:
            return  # granted (or gone) while the warning was being decided: it did not wait longer
        held = f" for {self._clock() - since:.3f}s" if self._timed else ""
        in_lane = f" in lane {owner_lane}" if owner_lane is not None else ""
        waiter, holder = thread_name(token_ident(current_token())), thread_name(token_ident(owner))
        self._log.warning(
            'Lock "%s" waited on for more than %.3fs by %s in lane %s; held by %s%s%s, %d waiter(s) ahead',
            self.name, self._slow_wait, waiter, lane, holder, in_lane, held, ahead,
            extra={"fairlock_lock": self.name, "fairlock_lane": lane, "fairlock_holder": holder,
                   "fairlock_seconds": self._slow_wait, "fairlock_event": "slow_wait"},
        )

    def __repr__(self) -> str:
        owner = self._owner
        state = f"held by {thread_name(token_ident(owner))}" if owner is not None else "free"
        queue = self._queue
        return f"<fairlock.Lock {self.name!r} {state}, {len(queue) if queue is not None else 0} waiting>"


def _grant_order(queue: FairQueue) -> list[tuple[int, str]]:
    """The queued tickets and their lanes in the order the core would grant them if nobody else
    arrived or left (worked out on a copy: the queue itself is not touched)."""
    copy = FairQueue.restore(queue.snapshot())
    if copy.owner is None:
        return []
    order = []
    while True:
        ticket = copy.release()
        if ticket is None:
            return order
        order.append((ticket, copy.lane_of(ticket)))


def acquire_or_raise(lock: Lock, blocking: bool, timeout: float | None, lane: str | None) -> None:
    """Acquire for a context manager: a failed attempt raises AcquireTimeout."""
    if not lock.acquire(blocking, timeout, lane):
        what = "non-blocking acquire failed" if not blocking else f"not acquired within {timeout}s"
        raise AcquireTimeout(f"{lock!r}: {what}")
