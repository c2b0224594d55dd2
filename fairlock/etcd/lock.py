"""The distributed fair lock: the core's grant rule, decided from state every client reads in etcd.

This module only transports. The decision of who owns the lock next is
:func:`fairlock._core.decide`, applied to the waiters read from etcd (their stored policy state
encoded, decoded and judged by the core: :meth:`fairlock._core.Policy.snapshot`); the whole grant
(new owner, its waiter key removed, the overtaken counts of the waiters it overtakes) is written
in one transaction guarded by compares on everything it was computed from, so every client either
makes the same decision or retries on fresher state.

Keys and values: :mod:`fairlock.etcd.keys`.

Invariants, and where they are kept:

1. Nobody barges: the uncontended acquire writes the owner key only if there is no owner key and
   no waiter key (one transaction, one write); otherwise it queues (same transaction).
2. A release hands over in one transaction (compare: the owner key is still ours, the chosen and
   overtaken waiters are as we read them, and -- unless the core says a newcomer cannot change
   the decision (Policy.fifo) -- no waiter was added or changed since we read); the queue it
   decides from is read with the holder's grant, so in the common case a handoff needs no read
   first (_release_remote); an uncontended release is one write.
3. Wake-ups: a waiter watches its own waiter keys for DELETE only (a grant deletes one) and the
   owner key for DELETE only (a crashed holder's lease expired), on watches kept from one
   contended acquisition to the next. Ordinary handoffs are PUTs of the owner key, which wake
   nobody but the chosen waiter: O(1) events per release.
4. Fencing: the owner key's mod revision at the grant is the fencing token; every grant writes
   the owner key, so tokens strictly increase.
5. Cancel and release delete only our own key at its revision (compare on create/mod revision),
   never a newer incarnation (etcd-io/etcd#22082).
6. Two levels: threads of one process first queue on a local fair lock; only its holder queues in
   etcd, so a process has at most one waiter per lock; the lane it carries is the core's answer
   (:meth:`fairlock.Lock.carried_lane`), and it is raised when a higher-lane thread queues
   locally behind it.
7. A write etcd applies late (after its client gave up on an unknown outcome and moved on) leaves
   nothing on our live lease that nobody acts on: every write is fenced by its compares, except
   the acquire's queueing branch, whose late effects a sweeper undoes (see "writes of unknown
   outcome" below).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import threading as _threading
import weakref

from .._core import DEFAULT_MAX_BYPASS, Lanes, Policy, Snapshot, decide
from ..context import current_lane, note_unknown_lane, resolve_lane
from ..history import ETCD as _HISTORY
from ..errors import ArgumentTypeError, InvalidArgumentError, NotHeldError, NotOwnerError
from ..local import Lock, check_timeout
from ..stats import LaneCounters, LaneStatistics, _PerLane, snapshot_lanes
from .keys import MAX_NAME_BYTES, check_lock_name, decode_value, encode_value as _encode, lock_keys
from .keys import lock_name_from_key as lock_name_from_key
from .session import LockLost, Session, SessionLost
from .transport import (
    Compare,
    Delete,
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    LeaseNotFound,
    TxnOutcomeUnknown,
    KeyValue,
    Put,
    Range,
    TxnResult,
    Watch,
    WatchEvent,
    prefix_end,
)

__all__ = ["EtcdLock", "EtcdLockStatistics", "lock_keys", "decode_value", "check_lock_name",
           "MAX_NAME_BYTES"]  # the key schema's names stay importable from here

LOG = logging.getLogger("fairlock.etcd")

#: How often a waiter re-reads the state even without events (a safety net, not the mechanism).
RECHECK_INTERVAL = 5.0
#: Transactions retried on contention before giving up with an error (each retry re-reads).
MAX_TXN_RETRIES = 100
#: Pause between attempts to read etcd back while it is unreachable (see ``EtcdLock._read``).
UNREACHABLE_RETRY = 0.2
def _cancel_all(watches: list[Watch]) -> None:
    for watch in watches:
        try:
            watch.cancel()
        except Exception:  # cancelling is best effort: a broken watch is already gone
            LOG.debug("fairlock: cancelling a watch failed", exc_info=True)


class _WaitState:
    """What one queued etcd waiter knows: its key and ticket, lanes, watches, last revision seen."""

    def __init__(self, key: bytes, ticket: int, lane: str, revision: int | None) -> None:
        self.key = key
        self.ticket = ticket
        self.lane = lane
        self.current_lane = lane
        self.revision = revision
        self.watches: list[Watch] = []
        #: Read our key and the owner key before trusting the watches alone (fresh watches, an
        #: owner DELETE, a quiet re-check interval).
        self.need_read = True
        #: The revision of the DELETE of our key seen on our watch (a grant, or the key vanished).
        self.granted_at: int | None = None


@dataclass(frozen=True)
class EtcdLockStatistics(_PerLane):
    """This process's figures for one etcd lock, since the :class:`EtcdLock` was created.

    The same shape as :class:`fairlock.LockStatistics`: ``lanes`` maps each lane to a
    :class:`fairlock.LaneStatistics` (waits include the local queue and the etcd queue).
    """

    name: str
    held: bool
    fencing_token: int | None
    #: All grants to this process (the same as ``grants``).
    acquisitions: int
    #: Grants that etcd made at once, no other process queued (the local queue may have been
    #: waited on; such a grant still counts in its lane's ``queued_grants``).
    uncontended: int
    #: Releases that handed the lock to a waiter in one transaction.
    handoffs_made: int
    recoveries: int
    txn_retries: int
    watch_events: int
    lost: int
    lanes: Mapping[str, LaneStatistics] = field(default_factory=lambda: MappingProxyType({}))
    #: Requests whose context lane (:func:`fairlock.lane`) this lock does not have, so they
    #: queued in the default lane: usually a typo.
    lane_typos: int = 0

    @property
    def grants(self) -> int:
        """All grants to this process, as :attr:`fairlock.LockStatistics.grants`."""
        return self.acquisitions


class EtcdLock:
    """A fair lock shared by every process that uses the same etcd, name and prefix.

    Same rule as :class:`fairlock.Lock`: the next owner is the oldest waiter of the
    highest-priority non-empty lane, except that a waiter already overtaken ``max_bypass`` (K)
    times is served before anyone who arrived after it. All processes using a lock name must use
    the same ``lanes`` and ``max_bypass``.

    ``on_lost(lock, fencing_token, reason)`` is called when the lock is lost while held, once,
    from the session's notice thread (never the application's: a callback may take application
    locks). :meth:`is_held` is False, and :meth:`release` raises :class:`LockLost`, from the moment
    the loss is found, before the callback runs.
    """

    def __init__(
        self,
        name: str,
        session: Session,
        *,
        lanes: Iterable[str] | Lanes | None = None,
        default_lane: str | None = None,
        max_bypass: int | None = DEFAULT_MAX_BYPASS,
        on_lost: Callable[[EtcdLock, int | None, str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_lock_name(name)
        if not isinstance(session, Session):
            raise ArgumentTypeError(f"session must be a fairlock.etcd.Session, got {type(session).__name__}")
        session.check()
        if on_lost is not None and not callable(on_lost):
            raise ArgumentTypeError("on_lost must be callable")
        if not callable(clock):
            raise ArgumentTypeError("clock must be callable")
        self.name = name
        self.session = session
        self._local = Lock(name, lanes=lanes, default_lane=default_lane, max_bypass=max_bypass,
                           on_queued=self._local_queued)
        self.policy: Policy = self._local.policy
        self.lanes: Lanes = self.policy.lanes
        self.max_bypass = self.policy.max_bypass
        self._on_lost = on_lost
        self._clock = clock
        self._transport = session.transport
        self._owner_key, self._wprefix, self._wend = lock_keys(session.prefix, name)
        # State of the current holder; touched only by the thread holding the local lock, and
        # by the session (under _state_mutex) to mark it lost.
        self._token: int | None = None
        self._lost_reason: str | None = None
        # The waiters read with our current grant (revision, key-values), if any: see _release_remote.
        self._view: tuple[int, list[KeyValue]] | None = None
        # Orders the holder's release against the session marking the lock lost (either takes
        # the token first, never both); never held across I/O or a callback.
        self._state_mutex = _threading.Lock()
        self._wakeup: Any = None  # the current etcd waiter's wake-up event
        # Watches kept from one contended acquisition to the next (see _wait_step): our own
        # waiter keys (DELETE only) and the owner key (DELETE only), and the event they set.
        self._live_watches: list[Watch] = []
        self._live_wakeup = _threading.Event()
        self._mine = None  # our waiter keys' prefix, set once the session's lease is known
        weakref.finalize(self, _cancel_all, self._live_watches)
        self._stats = {"acquisitions": 0, "uncontended": 0, "handoffs_made": 0, "recoveries": 0,
                       "txn_retries": 0, "watch_events": 0, "lost": 0}
        # Per lane, in the order of self.lanes.names; bounded whatever the number of grants.
        self._lane_counters = [LaneCounters() for _ in self.lanes.names]
        self._counters_mutex = _threading.Lock()  # for the counts of requests that did not win
        self._held_since = 0.0
        self._held_lane = 0
        self._remote_uncontended = False
        # Waiter keys of acquire txns whose outcome was unknown and that had not applied when we
        # read back (see _doubt); the sweeper's wake-up while it runs. Under _doubt_mutex.
        self._doubt_mutex = _threading.Lock()
        self._doubts: set[bytes] = set()
        self._sweeper: Any = None
        self._sweep_read = False
        self._dir = self._owner_key[: -len(b"owner")]  # the owner key and the waiter keys
        self._lane_typos = [0]  # a list: fairlock.history reads it after this object is gone
        session.register(self)
        stats, names, counters, typos = self._stats, self.lanes.names, self._lane_counters, self._lane_typos
        _HISTORY.track(self, lambda: (stats["acquisitions"], stats["handoffs_made"], typos[0], names, counters))

    # -- public API -------------------------------------------------------------------------------

    @property
    def fencing_token(self) -> int | None:
        """The token of the current grant: strictly larger than every earlier grant's token."""
        return self._token if self.is_held() else None

    def is_held(self) -> bool:
        """True while this process holds the lock and its session is alive.

        Checks the session's validity deadline on the local clock (no I/O): a holder that was
        paused past its lease learns here, before it acts, that the lock is lost. Guard each write
        to the protected resource with it, and send :attr:`fencing_token` along.
        """
        return self._token is not None and self._lost_reason is None and self.session.alive()

    def owned(self) -> bool:
        """True if the calling thread (or green thread) holds the lock and the session is alive.

        :meth:`is_held` for the calling thread: no I/O (see :class:`fairlock.FairLock`).
        """
        return self._local.owned() and self.is_held()

    def locked(self) -> bool:
        """True if anyone (any process) holds the lock, as etcd says now (one read)."""
        _, kvs = self._transport.get_range(self._owner_key)
        return bool(kvs)

    def confirm_held(self) -> bool:
        """True if etcd still has this process's current grant as the owner (one read).

        :meth:`is_held` judges on the local clock without I/O; this asks etcd, and also sees an
        owner key deleted or replaced by someone else (:meth:`break_` elsewhere, an operator).
        """
        return EtcdLock.confirm_all([self])[0]

    @staticmethod
    def confirm_all(locks: Sequence[EtcdLock]) -> list[bool]:
        """:meth:`confirm_held` for several locks of one session, in one read."""
        if not locks:
            return []
        session = locks[0].session
        if any(lock.session is not session for lock in locks):
            raise InvalidArgumentError("confirm_all: every lock must use the same session")
        tokens = [lock.fencing_token for lock in locks]
        result = session.transport.txn([], [Range(lock._owner_key) for lock in locks])
        return [token is not None and bool(kvs) and kvs[0].mod_revision == token
                for token, kvs in zip(tokens, result.responses)]

    def break_(self) -> bool:
        """Delete the owner key whoever holds it (an operator's action); True if there was one.

        The waiters then grant the lock by the rule at once; the former holder's process finds
        out through :meth:`confirm_held` (or its ``release()`` raising :class:`LockLost`).
        """
        result = self._transport.txn([Compare(self._owner_key, "create_revision", ">", 0)],
                                     [Delete(self._owner_key)])
        return result.succeeded

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        """Take the lock; True if taken, False on timeout or when non-blocking and busy.

        ``timeout`` is None or -1 to wait as long as it takes (the default), or a number of
        seconds >= 0 (``inf`` also means forever); with ``blocking=False`` no timeout may be
        given, as for :class:`threading.Lock`. Threads of this process queue locally first; only
        the local head queues in etcd. ``lane`` overrides the context's :func:`fairlock.lane`.
        Raises :class:`SessionLost` if the session is lost (or closed) while waiting, and
        :class:`~fairlock.etcd.transport.EtcdError` if etcd stays unreachable past the timeout.
        """
        timeout = check_timeout(blocking, timeout)
        if lane is None and not self.lanes.knows(current_lane() or self.lanes.default):
            with self._counters_mutex:
                self._lane_typos[0] += 1
            note_unknown_lane(self.lanes, self.name)
        lane = resolve_lane(self.lanes, lane)
        self.session.check()
        start = self._clock()
        deadline = None if timeout is None else start + timeout
        if not self._local.acquire(bool(blocking), timeout, lane):
            if blocking:
                self._count_failure(lane, "timeouts")
            return False
        # Set by _hand_to for a queued local request; an owner that took the fast path has none
        # (unless a waiter registered it in the meantime: then this grant counts as queued).
        queued_locally = self._local._owner_ticket is not None
        try:
            # The session may have been lost or closed while we queued locally (the holder ahead
            # of us was told): stop with SessionLost as its etcd waiters do, before any etcd call
            # on a lease that may be gone, through a transport that close() may have closed.
            self.session.check()
            # The local holder may represent higher-lane threads queued behind it.
            remote_lane = self._local.carried_lane(lane)
            got = self._acquire_remote(remote_lane, bool(blocking), deadline)
            if got and not self.session.alive():
                # Granted while the session was being declared lost or closed: its notice found
                # no holder here to tell. Stop as every waiter of a lost session does, passing
                # the lock on at once if our lease still has it.
                self._pass_on()
                self.session.check()
        except LeaseNotFound:
            # etcd refused a write on our lease: it expired or was revoked before the keepalive
            # noticed. That is a lost session: declare it (its holders are told) and raise what
            # a lost session raises, SessionLost. etcd wrote nothing of the refused txn.
            self._local.release()
            self.session._lease_gone()
            self.session.check()
            raise
        except BaseException:
            self._local.release()
            self._count_failure(lane, "cancels")
            raise
        if not got:
            self._local.release()
            if blocking:
                self._count_failure(lane, "timeouts")
            return False
        # Counted by the holder of the local lock: no two threads update these at once.
        now = self._clock()
        rank = self.lanes.rank(lane)
        if queued_locally or not self._remote_uncontended:
            self._lane_counters[rank].granted_after(now - start)
        self._held_since = now
        self._held_lane = rank
        self._stats["acquisitions"] += 1
        return True

    def _count_failure(self, lane: str, what: str) -> None:
        counters = self._lane_counters[self.lanes.rank(lane)]
        with self._counters_mutex:
            setattr(counters, what, getattr(counters, what) + 1)

    def release(self) -> None:
        """Release the lock, handing it to the next waiter in one transaction.

        Raises :class:`LockLost` if the lock was lost while held (the critical section was not
        protected), after freeing the local lock.
        """
        if not self._local.owned():
            if self._local.locked():
                raise NotOwnerError(f"release of {self!r} by a thread that does not hold it")
            raise NotHeldError(f"release of {self!r}, which is not held")
        # A session found past its validity deadline here is declared lost now, which marks this
        # lock lost (below) before its token is read: a holder that releases right after
        # is_held() said False gets LockLost, and on_lost is delivered all the same.
        self.session.alive()
        with self._state_mutex:
            token, lost = self._token, self._lost_reason
            self._token = None
            self._lost_reason = None
            ended = self.session.lost_reason or ("the session was closed while the lock was held"
                                                 if self.session.closed else None)
            if token is not None and lost is None and ended is not None:
                # Declared lost (or closed) by another thread that has not marked this lock yet;
                # it will find no token now, so the notice is ours to send.
                lost = ended
                self._stats["lost"] += 1
                self.session._deliver(lambda: self._tell_lost(token, ended))
        self._lane_counters[self._held_lane].held_for(self._clock() - self._held_since)
        try:
            if token is not None and lost is None:
                self._release_remote(token)
            elif lost is not None:
                raise LockLost(f"{self!r} was lost while held ({lost}); the critical section was not protected")
        finally:
            self._local.release()

    def __enter__(self) -> EtcdLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def statistics(self) -> EtcdLockStatistics:
        """This process's figures for the lock: grants, handoffs, etcd traffic, and per lane the
        local waiters now, queued grants, waits, holds, timeouts."""
        waiting = self._local.statistics().waiting_per_lane
        with self._counters_mutex:
            lanes = snapshot_lanes(self.lanes.names, self._lane_counters, waiting)
        return EtcdLockStatistics(name=self.name, held=self.is_held(), fencing_token=self.fencing_token,
                                  lanes=lanes, lane_typos=self._lane_typos[0], **self._stats)

    def _counts(self) -> tuple[int, int, int, tuple[str, ...], list[LaneCounters]]:
        """(grants, handoffs, lane typos, lane names, a copy of the lane counters), for the name's
        history (fairlock.history.ETCD)."""
        with self._counters_mutex:
            return (self._stats["acquisitions"], self._stats["handoffs_made"], self._lane_typos[0],
                    self.lanes.names, [c.copy() for c in self._lane_counters])

    def __repr__(self) -> str:
        state = f"held (token {self._token})" if self.is_held() else "not held here"
        return f"<fairlock.etcd.EtcdLock {self.name!r} {state}>"

    # -- acquire ----------------------------------------------------------------------------------

    def _local_queued(self, lane: str) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()  # the etcd waiter re-checks whether its lane must rise

    def _holder_value(self, lane: str) -> dict[str, Any]:
        return {**self.session.identity, "thread": _threading.current_thread().name, "lane": lane,
                "since": self.session.wall_clock()}

    def _acquire_remote(self, lane: str, blocking: bool, deadline: float | None) -> bool:
        session = self.session
        self._remote_uncontended = False
        holder = self._holder_value(lane)
        nobody = [
            Compare(self._owner_key, "create_revision", "=", 0),
            Compare(self._wprefix, "create_revision", "=", 0, range_end=self._wend),
        ]
        reads: list[Put | Delete | Range] = [Range(self._owner_key), Range(self._wprefix, self._wend)]
        for _ in range(MAX_TXN_RETRIES):
            # A fresh key for every attempt: an earlier attempt still in flight (see below) then
            # creates, or is granted as, a key that this attempt never uses, which the sweeper
            # can tell apart and remove.
            my_key = self._wprefix + f"{session.lease_id:x}-{uuid.uuid4().hex}".encode()
            queue_me = [Put(my_key, _encode({**holder, **self.policy.encode(lane)}), lease=session.lease_id)]
            try:
                result = self._transport.txn(
                    nobody,
                    [Put(self._owner_key, _encode({**holder, "waiter": my_key.decode()}), lease=session.lease_id)],
                    reads + (queue_me if blocking else []),
                )
            except TxnOutcomeUnknown:
                # The connection broke after sending: find out whether we were granted or queued.
                seen = self._read(Range(my_key), Range(self._owner_key))
                mine, owner = seen.responses
                if owner and decode_value(owner[0]).get("waiter") == my_key.decode():
                    self._granted(owner[0].mod_revision)
                    self._stats["uncontended"] += 1
                    self._remote_uncontended = True
                    return True
                if mine:
                    return self._wait(my_key, mine[0].create_revision, lane, deadline)
                # Nothing yet, which does not mean nothing ever: the request may still be on its
                # way (etcd's gateway applies a request whose client has given up). Its compare
                # cannot be made to fail from here (its other branch queues unconditionally), so
                # it may still make my_key a waiter, or the owner, on our live lease, after we
                # moved on. The sweeper watches for that and undoes it (see _sweep_doubts).
                self._doubt(my_key, seen.revision)
                if not blocking:
                    return False
                continue  # nothing was written so far: try again, with a new key
            if result.succeeded:
                self._granted(result.revision)
                self._stats["uncontended"] += 1
                if self._live_watches:
                    self._drop_watches()  # contention is over: no watch (connection, thread) kept
                self._remote_uncontended = True
                return True
            if not blocking:
                return False
            return self._wait(my_key, result.revision, lane, deadline, owner_seen=bool(result.responses[0]))
        raise EtcdError(f"{self!r}: could not queue after {MAX_TXN_RETRIES} attempts")

    def _granted(self, token: int) -> None:
        self._view = None
        with self._state_mutex:
            self._token = token
            self._lost_reason = None

    def _wait(self, my_key: bytes, ticket: int, lane: str, deadline: float | None,
              owner_seen: bool = False) -> bool:
        """Wait in the etcd queue. ``owner_seen``: the queueing txn (at revision ``ticket``) saw
        an owner, so with live watches there is nothing to read before sleeping."""
        wakeup = self._live_wakeup
        self._wakeup = wakeup
        state = _WaitState(my_key, ticket, lane, ticket)
        if self._live_watches and owner_seen:
            # Watches that have run since before our key existed miss none of its events.
            state.watches = self._live_watches
            state.need_read = False
        withdrawn = False
        try:
            while True:
                try:
                    outcome = self._wait_step(state, wakeup, deadline)
                except (EtcdAuthError, LeaseNotFound):
                    raise
                except EtcdError as exc:
                    # etcd restarting, a member stopping, a broken watch: re-read and carry on
                    # until our deadline (or until the session is declared lost), never hang.
                    LOG.warning("fairlock %r: etcd error while waiting (%s); retrying", self.name, exc)
                    self._drop_watches(state)
                    remaining = None if deadline is None else deadline - self._clock()
                    if remaining is not None and remaining <= 0:
                        # Out of time with etcd still failing: leave the queue as a timeout does.
                        # A grant that reached etcd in time makes the lock ours (True, as a
                        # waiter chosen in the instant it timed out); otherwise raise the error.
                        withdrawn = True
                        if self._withdraw(my_key, ticket):
                            return True
                        raise
                    self.session.check()
                    wakeup.wait(0.2 if remaining is None else min(0.2, remaining))
                    continue
                if outcome is not None:
                    return outcome
        except BaseException:
            if self._token is None and not withdrawn:
                # Leaving without the lock (error, kill, session lost): take our key out of the
                # queue; if it was granted meanwhile, pass the lock on rather than strand it.
                self._abandon(my_key, ticket)
            raise
        finally:
            self._wakeup = None
            if self._token is None:
                self._drop_watches(state)  # not granted: contention may be over for us

    def _drop_watches(self, state: _WaitState | None = None) -> None:
        watches = list(self._live_watches)
        self._live_watches.clear()
        if state is not None:
            state.watches = []
            state.revision = None  # re-read before watching again
            state.need_read = True
        _cancel_all(watches)

    def _wait_step(self, state: _WaitState, wakeup: Any, deadline: float | None) -> bool | None:
        """One round: (re)watch, check, maybe recover or raise our lane, then sleep until woken.

        A DELETE of our waiter key is a grant, or the key vanished (lease expired, an operator):
        one read of our key and the owner key tells which. Reads happen only then, after an
        owner DELETE, with fresh watches, and after a quiet re-check interval.
        """
        if not state.watches:
            if state.revision is None:
                state.revision, _ = self._transport.get_range(state.key)
            # From the revision we read + 1: a synced watch, no catch-up delay. Then re-check,
            # because a grant made before the watch existed may only arrive after etcd's ~100 ms
            # catch-up of past revisions. Kept for the next acquisitions while contention lasts.
            self._drop_watches()
            self._live_watches.extend([
                self._transport.watch(self._mine_prefix(), state.revision + 1,
                                      prefix_end(self._mine_prefix()), no_put=True, wakeup=wakeup),
                self._transport.watch(self._owner_key, state.revision + 1, no_put=True, wakeup=wakeup),
            ])
            state.watches = self._live_watches
            state.need_read = True
        wakeup.clear()
        # A watch that broke before the clear() set the wake-up we just cleared: look now (a
        # broken watch raises here and is re-made), or we would sleep on it until the re-check.
        self._drain_watches(state)
        if state.need_read or state.granted_at is not None:
            state.need_read = False
            state.granted_at = None
            found = self._check(state.key, state.ticket)
            if found == "granted":
                return True
            if found == "owner-gone":
                self._recover()
                return None
        self.session.check()
        want = self._local.carried_lane(state.lane)
        if self.lanes.rank(want) < self.lanes.rank(state.current_lane):
            self._raise_lane(state.key, state.ticket, want)
            state.current_lane = want
        remaining = None if deadline is None else deadline - self._clock()
        if remaining is not None and remaining <= 0:
            return self._cancel(state.key, state.ticket)
        if wakeup.wait(RECHECK_INTERVAL if remaining is None else min(remaining, RECHECK_INTERVAL)):
            self._drain_watches(state)
        else:
            state.need_read = True  # the safety net: a quiet interval re-reads
        return None

    def _mine_prefix(self) -> bytes:
        if self._mine is None:
            self._mine = self._wprefix + f"{self.session.lease_id:x}-".encode()
        return self._mine

    def _drain_watches(self, state: _WaitState) -> None:
        """Take the events queued on our watches (raises EtcdError if one broke)."""
        for w in state.watches:
            while (event := w.get(0)) is not None:
                self._stats["watch_events"] += 1
                key, revision = event.kv.key, event.kv.mod_revision
                if revision <= state.ticket:
                    continue  # from before we queued (watches kept from earlier acquisitions)
                state.revision = max(state.revision or 0, revision)
                if key == state.key:
                    state.granted_at = revision
                elif key == self._owner_key:
                    state.need_read = True  # the holder left or crashed: recover if nobody did

    def _check(self, my_key: bytes, ticket: int) -> str:
        """'granted', 'queued' or 'owner-gone', from one read of our key and the owner key."""
        result = self._transport.txn([], [Range(my_key), Range(self._owner_key), Range(self._wprefix, self._wend)])
        mine, owner, waiters = result.responses
        if owner and decode_value(owner[0]).get("waiter") == my_key.decode() and owner[0].lease == self.session.lease_id:
            self._granted(owner[0].mod_revision)
            # The queue as it stands at our grant: our release hands over from it in one txn.
            self._view = (result.revision, list(waiters))
            return "granted"
        if not mine or mine[0].create_revision != ticket:
            # Our key vanished without a grant: our lease expired (or someone deleted it).
            self.session.check()
            raise LockLost(f"{self!r}: our waiter key vanished (lease expired or key deleted)")
        return "queued" if owner else "owner-gone"

    def _raise_lane(self, my_key: bytes, ticket: int, want: str) -> None:
        """A higher-lane thread queued locally behind us: move our etcd waiter to its lane."""
        for _ in range(MAX_TXN_RETRIES):
            _, kvs = self._transport.get_range(my_key)
            if not kvs or kvs[0].create_revision != ticket:
                return  # granted or gone: the next _check sees it
            value = decode_value(kvs[0])
            # Keeps its overtaken count (change_lane in core terms); damaged state stays due.
            value.update(self.policy.encode(want, self.policy.decode(value).overtaken))
            # Guarded by mod revision: a releaser may be raising our overtaken count right now.
            result = self._try_txn(
                [Compare(my_key, "mod_revision", "=", kvs[0].mod_revision)],
                [Put(my_key, _encode(value), lease=self.session.lease_id)],
            )
            if result is not None and result.succeeded:
                return
            self._stats["txn_retries"] += 1

    def _cancel(self, my_key: bytes, ticket: int) -> bool:
        """Timed out: delete our own key (only this incarnation of it). True if granted meanwhile."""
        for _ in range(MAX_TXN_RETRIES):
            result = self._try_txn(
                [Compare(my_key, "create_revision", "=", ticket)],
                [Delete(my_key)],
                [Range(self._owner_key)],
            )
            if result is not None:
                break
            mine, owner = self._read(Range(my_key), Range(self._owner_key)).responses
            if not mine or mine[0].create_revision != ticket:
                result = TxnResult(False, 0, (owner,))  # deleted: by us, or by a grant
                break
        else:
            raise EtcdError(f"{self!r}: could not leave the queue after {MAX_TXN_RETRIES} attempts")
        if result.succeeded:
            return False
        owner = result.responses[0]
        if owner and decode_value(owner[0]).get("waiter") == my_key.decode():
            # Chosen in the instant we timed out: we own it now; report success, as the local lock does.
            self._granted(owner[0].mod_revision)
            return True
        return False

    def _withdraw(self, my_key: bytes, ticket: int) -> bool:
        """Leave the queue; True if we were granted meanwhile (the lock is then ours)."""
        if not self.session.alive():
            # Lost or closed: the session revokes its lease, which takes our key (and a grant
            # made to it) along. Asking etcd first would only delay the SessionLost promised at
            # once, by whole transport timeouts when etcd is unreachable.
            return False
        try:
            return self._cancel(my_key, ticket)
        except (EtcdError, SessionLost) as exc:
            # Only when the session is lost (or etcd refused us otherwise than by being
            # unreachable): our lease is going, and takes our key with it.
            LOG.warning("fairlock %r: could not withdraw from the queue (%s); the key goes with the lease",
                        self.name, type(exc).__name__)
            return False

    def _abandon(self, my_key: bytes, ticket: int) -> None:
        if self._withdraw(my_key, ticket):
            self._pass_on()

    def _pass_on(self) -> None:
        """We were granted but will not run: hand the lock to the next waiter (or free it)."""
        with self._state_mutex:
            token, self._token = self._token, None
        if token is None:
            return
        try:
            self._release_remote(token)
        except (EtcdError, LockLost, SessionLost) as exc:
            LOG.warning("fairlock %r: could not pass on a grant we will not use (%s); it goes with the lease",
                        self.name, type(exc).__name__)

    # -- writes of unknown outcome ----------------------------------------------------------------
    #
    # Every write but one is fenced by compares that fail once we have moved on, so a copy that
    # etcd applies late (after its client gave up and read back) does nothing: a release or
    # handoff compares the owner key's mod revision with our token (every grant rewrites it);
    # a cancel deletes only the key's incarnation at its create revision; a lane raise compares
    # our key's mod revision; a recovery compares "owner absent" and every waiter it read, so
    # applied late it is still the decision the grant rule makes then. The exception is the
    # acquire txn: its failure branch queues unconditionally (a flat etcd txn has no third
    # branch), and no fence key could make it fail without a key that outlives each acquire.
    # So its late copy is undone instead: the key it names is remembered, and a sweeper thread
    # watches the lock's keys until that copy has applied and been undone, or the session ends
    # (then our lease takes whatever it wrote). The invariant restored: no key or grant on our
    # live lease is left that nobody in this process acts on for longer than a watch event takes.

    def _doubt(self, key: bytes, revision: int) -> None:
        """An acquire txn naming ``key`` had an unknown outcome and had not applied at ``revision``."""
        with self._doubt_mutex:
            self._doubts.add(key)
            self._sweep_read = True  # an event for key may have been drained before it was added
            wakeup = self._sweeper
            if wakeup is None:
                wakeup = self._sweeper = _threading.Event()
                _threading.Thread(target=self._sweep_doubts, args=(wakeup, revision), daemon=True,
                                  name=f"fairlock-sweeper-{self.session.lease_id:x}").start()
        wakeup.set()

    def _sweep_doubts(self, wakeup: Any, revision: int) -> None:
        """The sweeper: read and undo at once, then on every event about a doubtful key."""
        watch: Watch | None = None
        try:
            while self.session.alive():
                with self._doubt_mutex:
                    if not self._doubts:
                        self._sweeper = None  # under the mutex: a new doubt starts a new sweeper
                        return
                    read, self._sweep_read = self._sweep_read, False
                try:
                    if read:
                        revision = self._sweep()
                    if watch is None:
                        # From the revision read + 1: a late copy applied after it is an event.
                        watch = self._transport.watch(self._dir, revision + 1, prefix_end(self._dir),
                                                      wakeup=wakeup)
                    wakeup.wait(RECHECK_INTERVAL)
                    wakeup.clear()
                    while (event := watch.get(0)) is not None:
                        revision = max(revision, event.kv.mod_revision)
                        if self._concerns_doubts(event):
                            with self._doubt_mutex:
                                self._sweep_read = True
                except (EtcdError, LockLost, SessionLost) as exc:
                    # A broken or compacted watch may have lost events: read again, then re-watch.
                    LOG.warning("fairlock %r: sweeping writes of unknown outcome: %s; retrying",
                                self.name, type(exc).__name__)
                    if watch is not None:
                        watch.cancel()
                        watch = None
                    with self._doubt_mutex:
                        self._sweep_read = True
                    _threading.Event().wait(UNREACHABLE_RETRY)
        finally:
            if watch is not None:
                watch.cancel()
            with self._doubt_mutex:
                if self._sweeper is wakeup:
                    self._sweeper = None

    def _concerns_doubts(self, event: WatchEvent) -> bool:
        with self._doubt_mutex:
            if event.kv.key in self._doubts:
                return True
            return (event.type == "PUT" and event.kv.key == self._owner_key
                    and str(decode_value(event.kv).get("waiter")).encode() in self._doubts)

    def _sweep(self) -> int:
        """Undo what late acquire txns did; the revision read. A doubt is dropped once its txn is
        seen applied and undone: etcd applies a txn at most once."""
        lease = self.session.lease_id
        for _ in range(MAX_TXN_RETRIES):
            with self._doubt_mutex:
                doubts = sorted(self._doubts)
            seen = self._read(Range(self._owner_key), *(Range(key) for key in doubts))
            owner, mine = seen.responses[0], seen.responses[1:]
            done, again = set(), False
            if owner and owner[0].lease == lease:
                waiter = str(decode_value(owner[0]).get("waiter")).encode()
                if waiter in doubts:
                    # Granted to a request we had given up on (the lock was free when it arrived,
                    # or a release chose it): nobody here runs under it. Pass it on by the grant
                    # rule, as a waiter chosen the instant it timed out does; its token is never
                    # used, and the next grant's is larger.
                    try:
                        self._release_remote(owner[0].mod_revision)
                    except LockLost:
                        pass  # no longer ours (lease expired): nothing left to undo
                    done.add(waiter)
            for key, kvs in zip(doubts, mine):
                if not kvs:
                    continue  # not arrived (yet), or granted (the owner, handled above)
                # Only this incarnation: our key, created by the late txn, on our lease.
                result = self._try_txn([Compare(key, "create_revision", "=", kvs[0].create_revision)],
                                       [Delete(key)])
                if result is not None and result.succeeded:
                    done.add(key)
                else:
                    again = True  # granted meanwhile (we own it: next round), or outcome unknown
            with self._doubt_mutex:
                self._doubts -= done
            if not again:
                return seen.revision
            self._stats["txn_retries"] += 1
        raise EtcdError(f"{self!r}: could not undo a late acquire after {MAX_TXN_RETRIES} attempts")

    # -- handoff ----------------------------------------------------------------------------------

    def _snapshot(self, kvs: Sequence[KeyValue]) -> tuple[Snapshot, dict[int, KeyValue]]:
        """The core's view of these waiter keys (ticket = create revision); damaged state is
        judged by the core (it makes the waiter due) and only reported here."""
        by_ticket = {kv.create_revision: kv for kv in kvs}
        snap = self.policy.snapshot((t, decode_value(kv)) for t, kv in by_ticket.items())
        for ticket in snap.damaged:
            LOG.warning("fairlock %r: waiter %s has policy state this process cannot read (lanes or "
                        "version differ?); it is served as due", self.name, by_ticket[ticket].key)
        return snap, by_ticket

    def _grant_txn(self, owner_guard: Compare, revision: int, waiter_kvs: Sequence[KeyValue],
                   since_view: bool = False) -> TxnResult | None:
        """Write the core's grant for these waiters, guarded by everything it was computed from.

        ``since_view``: the waiters were read with our grant, a while ago. When the core says a
        later arrival cannot change its decision (:attr:`Policy.fifo`), the compares on the
        chosen key (and on the owner key) suffice, and newcomers do not make the handoff fail;
        otherwise any change to the queue since the read does.
        None when there is nobody to grant to, or when the outcome is unknown (re-read and retry).
        """
        snap, by_ticket = self._snapshot(waiter_kvs)
        grant = decide(self.policy, snap.queue)
        if grant is None:
            return None
        chosen = by_ticket[grant.ticket]
        value = decode_value(chosen)
        value.update(self.policy.encode(grant.lane))
        value.pop("overtaken", None)
        value["waiter"] = chosen.key.decode()
        value["since"] = self.session.wall_clock()
        compares = [owner_guard, Compare(chosen.key, "mod_revision", "=", chosen.mod_revision)]
        if not (since_view and self.policy.fifo):
            # No waiter was added or changed since we read (a newer high-lane waiter changes the plan).
            compares.append(Compare(self._wprefix, "mod_revision", "<", revision + 1, range_end=self._wend))
        success: list[Put | Delete | Range] = [
            Put(self._owner_key, _encode(value), lease=chosen.lease),
            Delete(chosen.key),
        ]
        lanes = {ticket: lane for ticket, lane, _ in snap.waiters()}
        for ticket, count in grant.overtaken:
            kv = by_ticket[ticket]
            compares.append(Compare(kv.key, "mod_revision", "=", kv.mod_revision))
            updated = decode_value(kv)
            updated.update(self.policy.encode(lanes[ticket], count))
            success.append(Put(kv.key, _encode(updated), lease=kv.lease))
        return self._try_txn(compares, success, [Range(self._owner_key), Range(self._wprefix, self._wend)])

    def _release_remote(self, token: int) -> None:
        ours = Compare(self._owner_key, "mod_revision", "=", token)
        free_if_alone = (
            [ours, Compare(self._wprefix, "create_revision", "=", 0, range_end=self._wend)],
            [Delete(self._owner_key)],
            [Range(self._owner_key), Range(self._wprefix, self._wend)],
        )
        uncertain = False
        view, self._view = self._view, None
        if view is not None and view[1]:
            # One round trip in the common case: hand over at once by the rule applied to the
            # queue we read with our grant, guarded so that it is still the rule's decision now
            # (see _grant_txn); otherwise its failure branch reads the queue, as below.
            result = self._grant_txn(ours, view[0], view[1], since_view=True)
            if result is not None and result.succeeded:
                self._stats["handoffs_made"] += 1
                return
        else:
            result = self._try_txn(*free_if_alone)
        for _ in range(MAX_TXN_RETRIES):
            if result is None:
                # A write of ours may or may not have been applied: read what etcd has now.
                uncertain = True
                result = self._read(Range(self._owner_key), Range(self._wprefix, self._wend))
                result = TxnResult(False, result.revision, result.responses)
            if result.succeeded:
                return
            owner, waiters = result.responses
            if not owner or owner[0].mod_revision != token:
                if uncertain:
                    return  # our delete or handoff was applied before the connection broke
                self._stats["lost"] += 1
                raise LockLost(f"{self!r}: the lock was no longer ours at release (lease expired?)")
            if not waiters:
                result = self._try_txn(*free_if_alone)
                continue
            granted = self._grant_txn(ours, result.revision, waiters)
            if granted is not None and granted.succeeded:
                self._stats["handoffs_made"] += 1
                return
            self._stats["txn_retries"] += 1
            result = granted
        raise EtcdError(f"{self!r}: release did not settle after {MAX_TXN_RETRIES} attempts")

    def _try_txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete | Range],
                 failure: Sequence[Put | Delete | Range] = ()) -> TxnResult | None:
        """A transaction, or None when etcd was unreachable: it may or may not have applied
        (TxnOutcomeUnknown), or surely did not (EtcdUnavailable); either way, read back and retry."""
        try:
            return self._transport.txn(compare, success, failure)
        except EtcdUnavailable:
            return None

    def _read(self, *ranges: Range) -> TxnResult:
        """Read back what a write of ours did, or must still do (one atomic read).

        Giving up here would leave our keys on a live lease with nobody acting on them (a holder
        that never releases, a waiter granted to nobody), so an unreachable etcd is waited out
        until it answers or the session is lost: then our lease expires and takes our keys.
        """
        while True:
            try:
                return self._transport.txn([], list(ranges))
            except EtcdUnavailable as exc:
                self.session.check()
                LOG.warning("fairlock %r: etcd unreachable (%s) while settling a write; retrying",
                            self.name, exc)
                _threading.Event().wait(UNREACHABLE_RETRY)

    def _recover(self) -> None:
        """The owner key is gone (holder crashed, or left) while waiters exist: grant by the rule."""
        absent = Compare(self._owner_key, "create_revision", "=", 0)
        for _ in range(MAX_TXN_RETRIES):
            revision, waiters = self._transport.get_range(self._wprefix, self._wend)
            _, owner = self._transport.get_range(self._owner_key)
            if owner or not waiters:
                return
            result = self._grant_txn(absent, revision, waiters)
            if result is not None and result.succeeded:
                self._stats["recoveries"] += 1
                return
            self._stats["txn_retries"] += 1  # lost a race or outcome unknown: re-read and retry

    # -- session notices --------------------------------------------------------------------------

    def _session_lost(self, reason: str) -> Callable[[], None] | None:
        """The session is lost: mark the lock lost at once (no I/O, no callback: this runs in
        whichever thread found the loss) and return the notice (log line, ``on_lost``) that the
        session delivers from its notice thread, or None when there is nothing to tell."""
        for wakeup in (self._wakeup, self._sweeper):
            if wakeup is not None:
                wakeup.set()  # a waiter stops at once with SessionLost; the sweeper stops: the lease takes its keys
        with self._state_mutex:
            token = self._token
            if token is None or self._lost_reason is not None:
                return None  # not held, or already told (close() after a loss must not tell it twice)
            self._lost_reason = reason
            self._stats["lost"] += 1
        return lambda: self._tell_lost(token, reason)

    def _tell_lost(self, token: int, reason: str) -> None:
        LOG.error("fairlock: lock %r (fencing token %s) lost: %s", self.name, token, reason)
        if self._on_lost is not None:
            self._on_lost(self, token, reason)

    def _session_closing(self) -> Callable[[], None] | None:
        sweeper = self._sweeper
        if sweeper is not None:
            sweeper.set()  # it finds the session closed and stops
        self._drop_watches()  # a waiter on them finds the session closed and stops
        return self._session_lost("the session was closed while the lock was held")
