"""fairlock as a tooz driver: ``fairlock+etcd3+http://`` instead of ``etcd3+http://`` (translation only).

A service that takes its distributed locks through tooz switches to fairlock's etcd lock by
changing one URL::

    [coordination]
    backend_url = fairlock+etcd3+http://etcd1:2379,etcd2:2379/openstack?lease_ttl=10

``tooz.coordination.get_coordinator(url, member_id)`` then returns a :class:`FairlockDriver`
(registered in the ``tooz.backends`` entry point group under ``fairlock+etcd3+http`` and
``fairlock+etcd3+https``) and ``get_lock(name)`` a :class:`FairlockToozLock` with tooz's
contract. Fairness, in one sentence: the next owner is the oldest waiter of the
highest-priority non-empty lane, except that a waiter already overtaken ``max_bypass`` (K)
times is served before anyone who arrived after it. This holds across every process and host
that uses the same etcd and prefix.

This module only translates. Who gets a lock next is decided by :class:`fairlock.etcd.EtcdLock`
(which asks ``fairlock._core``); this module maps tooz's calls, arguments, return values and
exceptions onto it, and keeps tooz's group membership as keys on the same session lease:

1. One :class:`fairlock.etcd.Session` (one etcd lease, refreshed by its own thread) per started
   coordinator, and one ``EtcdLock`` per lock name per session, shared by every tooz lock object
   of that name: threads of the process queue locally first, so the process has at most one
   etcd waiter per name.
2. A tooz lock object remembers which thread acquired through it. ``release()`` returns False
   when this object does not hold the lock (tooz's contract), and False when the lock was lost
   (lease expired, ``break_()``) -- the loss itself is reported when it happens (below).
3. Lost locks: when the session's lease expires or cannot be refreshed for ``lease_ttl``
   seconds, every lock held through it is logged at ERROR (name, fencing token, reason) at that
   moment, from the session's thread; ``heartbeat()`` also reads the owner key of every held
   lock and reports a lock whose key was deleted or taken over (``break_()`` elsewhere, an
   operator). A lost lock's ``is_still_owner()`` is False, ``fencing_token`` None,
   ``lost_reason`` says why and ``release()`` returns False. The next ``heartbeat()``,
   ``acquire()`` or group call replaces a lost session with a new one (logging which locks and
   memberships went with the old one), so the coordinator keeps working.
4. etcd failures become tooz's exceptions: unreachable -> ``ToozConnectionError``; anything
   else from etcd (auth, a lost session while waiting) -> ``ToozError``; both carry the fairlock
   exception as ``cause``. Bad arguments stay fairlock's (``ValueError``/``TypeError``
   subclasses); a bad URL is :class:`ToozURLError` (both ``ValueError`` and ``ToozError``).
"""

from __future__ import annotations

import contextlib
import logging
import threading as _threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote, unquote_to_bytes

import tooz
from tooz import coordination, locking, utils

from . import _toozurl
from ._core import Lanes
from ._nametable import NameTable
from .errors import DeadlockError, InvalidArgumentError
from .local import check_timeout
from .etcd.config import EtcdConfig
from .etcd.gateway import GatewayTransport
from .etcd.keys import check_lock_name
from .etcd.lock import EtcdLock, EtcdLockStatistics
from .etcd.session import DEFAULT_PREFIX, LockLost, Session, SessionLost
from .etcd.transport import (
    Compare,
    Delete,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    Put,
    Range,
    prefix_end,
)

__all__ = ["FairlockDriver", "FairlockToozLock", "ToozURLError", "SCHEMES"]

LOG = logging.getLogger("fairlock.tooz")

T = TypeVar("T")

#: tooz URL scheme -> the fairlock etcd URL scheme it stands for.
SCHEMES = _toozurl.SCHEMES

_NO_ELECTION = "leader election is not offered by the fairlock driver"
#: How often one acquire starts over on a new session after its session was lost under it.
_SESSION_RENEWALS = 3


class ToozURLError(InvalidArgumentError, tooz.ToozError):
    """A ``fairlock+etcd3+http(s)://`` URL (or a coordinator option) that cannot be used."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.cause = None  # tooz.ToozError's attribute; ValueError's __init__ does not set it


# -- errors -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """fairlock's etcd errors as tooz's (with the original as ``cause``); everything else as is."""
    try:
        yield
    except EtcdUnavailable as exc:  # also TxnOutcomeUnknown: the caller re-reads and retries
        utils.raise_with_cause(coordination.ToozConnectionError, f"{what}: {exc}", cause=exc)
    except (EtcdError, SessionLost, LockLost) as exc:
        utils.raise_with_cause(tooz.ToozError, f"{what}: {exc}", cause=exc)


def _as_bytes(value: object, what: str) -> bytes:
    """tooz ids are bytes; str is accepted (tooz does not enforce the type) and stored as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


# -- the lock ---------------------------------------------------------------------------------------


class FairlockToozLock(locking.Lock):
    """tooz's lock contract over a shared :class:`fairlock.etcd.EtcdLock`.

    ``acquire(blocking=True, shared=False, timeout=None, *, lane=None)``: ``blocking`` may be a
    number of seconds (tooz's convention); ``timeout`` is the most seconds to wait when
    ``blocking`` is True; ``lane`` (or ``fairlock.lane(...)`` around the call) picks the lane.
    ``shared=True`` raises ``tooz.NotImplemented``. ``with lock:`` raises
    ``tooz.coordination.LockAcquireFailed`` when not acquired; ``with lock(5, lane="high"):``
    passes arguments. ``release()`` returns False when this object does not hold the lock.

    Extras: ``fencing_token`` (strictly increasing over all grants of the name; None when not
    held), ``is_still_owner()`` (reads etcd), ``lost_reason``, ``statistics()``.
    """

    def __init__(self, coordinator: FairlockDriver, name: bytes | str) -> None:
        super().__init__(name)  # type: ignore[arg-type]  # tooz: ValueError for an empty name
        if isinstance(name, bytes):
            try:
                self._lock_name = name.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"lock name {name!r} is not UTF-8: {exc}") from None
        elif isinstance(name, str):
            self._lock_name = name
        else:
            raise TypeError(f"lock name must be bytes or str, not {type(name).__name__}")
        check_lock_name(self._lock_name)  # too long, or not UTF-8: a ValueError now, not at acquire
        self._coord = coordinator
        # Set by the acquiring thread once it holds the lock; cleared before the EtcdLock is
        # released, so the next holder (maybe another thread using this same object) never
        # has its state cleared by us.
        self._holder: int | None = None
        self._held_on: EtcdLock | None = None
        self._last: EtcdLock | None = None  # keeps the shared EtcdLock (and its statistics) alive
        self._lost: str | None = None
        self._generation = 0  # one per grant: a heartbeat's owner check ignores a newer grant

    # -- tooz API ---------------------------------------------------------------------------------

    def acquire(self, blocking: bool | float = True, shared: bool = False,  # type: ignore[override]
                timeout: float | None = None, *, lane: str | None = None) -> bool:
        if shared:
            raise tooz.NotImplemented("fairlock locks are exclusive: no shared (reader) mode")
        blocking, timeout = utils.convert_blocking(blocking, timeout)
        if not blocking:
            timeout = None  # tooz ignores a timeout for a non-blocking try
        elif timeout is not None:
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout < 0:
                timeout = 0.0  # tooz's retry loop stops after one try for a negative delay
            # A non-number is a TypeError (ArgumentTypeError), NaN a ValueError; inf means forever.
            timeout = check_timeout(True, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(_SESSION_RENEWALS + 1):
            etcd_lock = self._last = self._coord._etcd_lock(self._lock_name)
            remaining = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                with _translated(f"acquire of tooz lock {self._lock_name!r}"):
                    try:
                        got = etcd_lock.acquire(bool(blocking), remaining if blocking else -1, lane)
                    except (SessionLost, LeaseNotFound, LockLost):
                        # The session died under us (its lease, and with it our waiter key,
                        # is gone; we hold nothing): ask again on a new session, with the time
                        # left. A waiter key deleted by someone else while the lease lives is
                        # an error.
                        if not self._coord._session_failed(etcd_lock.session) or attempt == _SESSION_RENEWALS:
                            raise
                        continue
            except DeadlockError:
                # This thread holds the lock already (through this object or another of the
                # same name). tooz's drivers would wait in vain until the timeout; fairlock
                # answers at once, and refuses to wait forever.
                if timeout is None:
                    raise
                return False
            if got:
                self._held_on = etcd_lock
                self._lost = None
                self._generation += 1
                self._holder = _threading.get_ident()
                self._coord._acquired_locks.add(self)
            return got
        return False  # pragma: no cover - the loop returns or raises

    def release(self) -> bool:
        holder, etcd_lock = self._holder, self._held_on
        if holder is None or etcd_lock is None:
            return False
        if holder != _threading.get_ident():
            # fairlock locks are owned by a thread; tooz's etcd3gw lets any thread release.
            raise tooz.ToozError(f"release of tooz lock {self._lock_name!r} by a thread that did not acquire it")
        lost = self._lost
        self._holder = None
        self._held_on = None
        self._coord._acquired_locks.discard(self)
        try:
            with _translated(f"release of tooz lock {self._lock_name!r}"):
                try:
                    etcd_lock.release()
                except LockLost as exc:
                    LOG.warning("fairlock: released tooz lock %r, which had been lost (%s)",
                                self._lock_name, lost or exc)
                    return False
        finally:
            self._lost = None
        # A loss noticed earlier (heartbeat's owner check) stands whatever the release found:
        # tooz says False for a lock that was no longer held.
        return lost is None

    def break_(self) -> bool:
        """Delete the lock's owner key whoever holds it; True if there was one.

        The oldest waiter (by the grant rule) is granted at once; the former holder's
        ``release()`` returns False and its next ``heartbeat()`` reports the loss.
        """
        self._coord._live_session()
        etcd_lock = self._coord._etcd_lock(self._lock_name)
        with _translated(f"break of tooz lock {self._lock_name!r}"):
            return etcd_lock.break_()

    def heartbeat(self) -> bool:
        """Refresh the coordinator's lease; True while this object still holds the lock."""
        etcd_lock = self._held_on
        if self._holder is None or etcd_lock is None or self._lost is not None:
            return False
        with _translated("heartbeat"):
            try:
                etcd_lock.session.keepalive_once()
            except LeaseNotFound:
                return False
        return self.is_still_owner()

    def is_still_owner(self) -> bool:
        """True if etcd still has this object's grant as the lock's owner (one read)."""
        etcd_lock = self._held_on
        if self._holder is None or etcd_lock is None or self._lost is not None:
            return False
        if etcd_lock.fencing_token is None:
            return False
        with _translated(f"owner check of tooz lock {self._lock_name!r}"):
            return etcd_lock.confirm_held()

    @property
    def acquired(self) -> bool:
        """True while this object holds the lock and no loss has been noticed."""
        etcd_lock = self._held_on
        return (self._holder is not None and etcd_lock is not None and self._lost is None
                and etcd_lock.is_held())

    @property
    def fencing_token(self) -> int | None:
        """The current grant's token (strictly increasing over every grant of this name)."""
        etcd_lock = self._held_on
        if self._holder is None or etcd_lock is None or self._lost is not None:
            return None
        return etcd_lock.fencing_token

    def statistics(self) -> EtcdLockStatistics:
        """This process's figures for the lock name (grants, handoffs, watch events, waits per lane)."""
        etcd_lock = self._last
        if etcd_lock is None or etcd_lock.session is not self._coord._session:
            etcd_lock = self._last = self._coord._etcd_lock(self._lock_name)
        return etcd_lock.statistics()

    @property
    def lost_reason(self) -> str | None:
        """Why the lock held through this object was lost, or None."""
        if self._lost is not None:
            return self._lost
        etcd_lock = self._held_on
        if self._holder is not None and etcd_lock is not None and not etcd_lock.is_held():
            return etcd_lock.session.lost_reason or "the coordinator's session ended"
        return None

    def __enter__(self, blocking: bool | float = True, shared: bool = False,  # type: ignore[override]
                  timeout: float | None = None, lane: str | None = None) -> FairlockToozLock:
        # Called without lane= when none is given, so acquire() sees exactly tooz's arguments.
        if lane is None:
            acquired = self.acquire(blocking, shared, timeout)
        else:
            acquired = self.acquire(blocking, shared, timeout, lane=lane)
        if not acquired:
            raise coordination.LockAcquireFailed(f"Acquiring lock {self._lock_name} failed")
        return self

    # -- for the coordinator ----------------------------------------------------------------------

    def _mark_lost(self, generation: int, reason: str) -> None:
        if self._generation != generation or self._holder is None or self._lost is not None:
            return  # released or granted again meanwhile: the reading was about an old grant
        token = self.fencing_token
        self._lost = reason
        LOG.error("fairlock: tooz lock %r (fencing token %s) lost: %s; its critical section is no "
                  "longer protected and release() will return False", self._lock_name, token, reason)

    def __repr__(self) -> str:
        if self._holder is None:
            state = "not held here"
        elif self.lost_reason is not None:
            state = f"lost ({self.lost_reason})"
        else:
            state = f"held (token {self.fencing_token})"
        return f"<fairlock tooz lock {self._lock_name!r} {state}>"


# -- the coordinator --------------------------------------------------------------------------------


def _not_started(name: str) -> EtcdLock:
    raise tooz.ToozError("the fairlock coordinator is not started")


class FairlockDriver(coordination.CoordinationDriverCachedRunWatchers,
                     coordination.CoordinationDriverWithExecutor):
    """tooz coordinator over fairlock's etcd lock: ``fairlock+etcd3+http(s)://``.

    URL::

        fairlock+etcd3+http://[user:password@]host1:2379[,host2:2379...][/prefix][?option=value&...]

    Options: those of :func:`fairlock.etcd.config.parse_url` (``timeout``, ``connect_timeout``,
    ``request_timeout``, ``ca_cert``, ``cert_cert``, ``cert_key``, ``username``, ``password``,
    ``lease_ttl``, ``protocol``); the locks' ``lanes`` (comma-separated, highest first),
    ``default_lane`` and ``max_bypass`` (an int, or ``none``); tooz's ``executor``; and tooz
    etcd3gw's ``lock_timeout``/``membership_timeout`` (the lease TTL when ``lease_ttl`` is not
    given: the smaller of them) and ``api_version`` (only ``v3``). No host means localhost:2379,
    as for etcd3gw; the path is the key prefix (default ``/fairlock``).

    Characteristics (see doc/source/tooz.rst for the reasoning):

    * DISTRIBUTED_ACROSS_THREADS / _PROCESSES / _HOSTS: one etcd for all; threads queue locally
      first.
    * NON_TIMEOUT_BASED in tooz's sense (as its ZooKeeper driver): a live process keeps its
      locks and memberships without calling ``heartbeat()`` -- the session's own thread
      refreshes the lease; only a process that stops refreshing (crash, partition longer than
      the lease TTL) loses them, and then the loss is reported.
    * LINEARIZABLE, and therefore SEQUENTIAL, CAUSAL and SERIALIZABLE: every decision is an etcd
      transaction and every read is a linearizable (quorum) read; nothing is served from a cache.
    * Not SAME_VIEW_UNDER_PARTITIONS nor SAME_VIEW_ACROSS_CLIENTS: a holder cut off from etcd
      believes it holds the lock until its session gives up (up to the lease TTL), while etcd
      may already have granted it to another client -- the window fencing tokens close.
    """

    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.LINEARIZABLE,
        coordination.Characteristics.SEQUENTIAL,
        coordination.Characteristics.CAUSAL,
        coordination.Characteristics.SERIALIZABLE,
    )

    def __init__(self, member_id: bytes, parsed_url: Any, options: dict[str, Any]) -> None:
        settings = _settings(parsed_url, options)  # before anything starts: a bad URL fails here
        super().__init__(member_id, parsed_url, options)
        self._member_id = _as_bytes(member_id, "member_id")
        self.config: EtcdConfig = settings["config"]
        self.lease_ttl: int | None = settings["lease_ttl"]
        self.lanes: Lanes | None = settings["lanes"]
        self.max_bypass: int | None = settings["max_bypass"]
        self.prefix: str = self.config.prefix or DEFAULT_PREFIX
        self._mutex = _threading.Lock()
        self._transport: GatewayTransport | None = None
        self._session: Session | None = None
        # The locks of the current session (a new session, a new table: a lost one's are dead).
        self._etcd_locks: NameTable[EtcdLock] = NameTable(_not_started)
        # Strong references: a held lock stays reachable (for stop() and heartbeat()) even if
        # the caller dropped its lock object, as in tooz's etcd3gw driver.
        self._acquired_locks: set[FairlockToozLock] = set()

    # -- lifecycle --------------------------------------------------------------------------------

    def _start(self) -> None:
        super()._start()
        transport = GatewayTransport.from_config(self.config)
        try:
            with _translated(f"cannot start the fairlock coordinator on {list(self.config.endpoints)}"):
                session = Session(transport, ttl=self.lease_ttl, prefix=self.prefix)
        except BaseException:
            transport.close()
            raise
        with self._mutex:
            self._transport, self._session = transport, session
            self._etcd_locks = self._lock_table(session)

    def _stop(self) -> None:
        me = _threading.get_ident()
        for lock in list(self._acquired_locks):
            if lock._holder == me:
                try:
                    lock.release()  # a handoff, rather than leaving the next owner to recovery
                except tooz.ToozError as exc:
                    LOG.warning("fairlock: release of %r at stop failed (%s)", lock, exc)
        with self._mutex:
            session, self._session = self._session, None
            transport, self._transport = self._transport, None
            self._etcd_locks = NameTable(_not_started)
        # Revoking the lease deletes every key of ours: waiter keys, member keys, and the owner
        # keys of locks other threads still hold (those are reported lost, at ERROR).
        if session is not None:
            session.close()
        if transport is not None:
            transport.close()
        super()._stop()

    def heartbeat(self) -> float:
        """Refresh the lease now, report lost locks, and replace a lost session.

        Returns the seconds until the next heartbeat is useful (the lease TTL; tooz's Heart
        waits half of it). Not required for liveness: the session refreshes its lease itself.
        """
        session = self._live_session()
        with _translated("heartbeat"):
            try:
                session.keepalive_once()
            except LeaseNotFound:
                session = self._live_session()  # reports what the old session held
            self._check_owners(session)
        return float(session.ttl)

    def get_lock(self, name: bytes) -> FairlockToozLock:
        return FairlockToozLock(self, name)

    def __repr__(self) -> str:
        session = self._session
        return f"<fairlock tooz coordinator {self._member_id!r} {list(self.config.endpoints)} {session!r}>"

    # -- sessions and locks (for FairlockToozLock) ------------------------------------------------

    def _live_session(self) -> Session:
        """The current session; a lost one is replaced here (after reporting what it held)."""
        with self._mutex:
            session, transport = self._session, self._transport
            if session is None or transport is None:
                raise tooz.ToozError("the fairlock coordinator is not started")
            session.alive()  # past its validity deadline it is declared lost here
            if not session.lost:
                return session
            with _translated("cannot replace the lost etcd session"):
                new = Session(transport, ttl=self.lease_ttl, prefix=self.prefix)
            self._session = new
            self._etcd_locks = self._lock_table(new)
        locks = sorted(lock._lock_name for lock in list(self._acquired_locks)
                       if lock._held_on is not None and lock._held_on.session is session)
        LOG.error("fairlock: etcd session %x of tooz member %r was lost (%s): locks lost with it: "
                  "%s; memberships lost with it: %s; new session %x",
                  session.lease_id, self._member_id, session.lost_reason, locks or "none",
                  sorted(self._joined_groups) or "none", new.lease_id)
        # Not session.close(): that would report its locks lost a second time. Its thread has
        # stopped; revoking frees at once the keys of a lease that may still be alive in etcd
        # (lost because no refresh got through for a whole TTL).
        with contextlib.suppress(EtcdError):
            transport.lease_revoke(session.lease_id)
        return new

    def _session_failed(self, session: Session) -> bool:
        """An acquire saw ``session`` fail; True if it was lost (and is now replaced)."""
        if session.closed and not session.lost:
            return False  # stop() closed it: nothing to wait on any more
        if not session.lost:
            try:
                session.keepalive_once()  # LeaseNotFound marks it lost
            except EtcdError:
                pass
        if not session.lost:
            return False
        self._live_session()
        return True

    def _etcd_lock(self, name: str) -> EtcdLock:
        session = self._live_session()
        with self._mutex:
            locks = self._etcd_locks
        found = locks.obtain(name)
        if found.session is not session:  # the session was replaced in between: ask again
            return self._etcd_lock(name)
        return found

    def _lock_table(self, session: Session) -> NameTable[EtcdLock]:
        kwargs: dict[str, Any] = {"max_bypass": self.max_bypass}
        if self.lanes is not None:
            kwargs["lanes"] = self.lanes
        return NameTable(lambda name: EtcdLock(name, session, **kwargs))

    def _check_owners(self, session: Session) -> None:
        """One read of the owner keys of all held locks; a key gone or taken over is a loss."""
        held = []
        for lock in list(self._acquired_locks):
            etcd_lock, generation = lock._held_on, lock._generation
            token = None if etcd_lock is None else etcd_lock.fencing_token
            if etcd_lock is not None and etcd_lock.session is session and token is not None:
                held.append((lock, generation, token))
        if not held:
            return
        confirmed = EtcdLock.confirm_all([lock._held_on for lock, _, _ in held])
        for (lock, generation, token), ok in zip(held, confirmed):
            if not ok:
                lock._mark_lost(generation, "its owner key in etcd was deleted or replaced "
                                            "(tooz break_() or an operator)")

    # -- groups: keys under <prefix>/groups/, members on the session lease ------------------------
    #
    #   <prefix>/groups/<quoted group>/               the group (no lease: groups outlive members)
    #   <prefix>/groups/<quoted group>/m/<quoted member>  a member; value = msgpack capabilities
    #
    # Every check-and-write is one transaction, so concurrent joins, leaves and deletes never
    # race (delete of a non-empty group fails atomically). Leader election is not offered.

    def _group_keys(self, session: Session, group_id: bytes | str) -> tuple[bytes, bytes, bytes]:
        """(group key, member prefix, member prefix end)."""
        group = session.prefix + b"/groups/" + quote(_as_bytes(group_id, "group_id"), safe="").encode() + b"/"
        members = group + b"m/"
        return group, members, prefix_end(members)

    def _member_key(self, members: bytes, member_id: bytes | str) -> bytes:
        return members + quote(_as_bytes(member_id, "member_id"), safe="").encode()

    def _submit(self, what: str, func: Callable[[Session], T]) -> coordination.CoordinatorResult[T]:
        def run() -> T:
            with _translated(what):
                return func(self._live_session())

        return coordination.CoordinatorResult(self._executor.submit(run))

    def create_group(self, group_id: bytes) -> coordination.CoordinatorResult[None]:
        def create(session: Session) -> None:
            group, _, _ = self._group_keys(session, group_id)
            if not session.transport.txn([Compare(group, "create_revision", "=", 0)],
                                         [Put(group, b"")]).succeeded:
                raise coordination.GroupAlreadyExist(group_id)

        return self._submit("create_group", create)

    def get_groups(self) -> coordination.CoordinatorResult[list[bytes]]:
        def groups(session: Session) -> list[bytes]:
            head = session.prefix + b"/groups/"
            _, kvs = session.transport.get_range(head, prefix_end(head))
            found = []
            for kv in kvs:
                rest = kv.key[len(head):]
                if rest.endswith(b"/") and rest.count(b"/") == 1:
                    found.append(unquote_to_bytes(rest[:-1]))
            return found

        return self._submit("get_groups", groups)

    def delete_group(self, group_id: bytes) -> coordination.CoordinatorResult[None]:
        def delete(session: Session) -> None:
            group, members, end = self._group_keys(session, group_id)
            result = session.transport.txn(
                [Compare(group, "create_revision", ">", 0),
                 Compare(members, "create_revision", "=", 0, range_end=end)],
                [Delete(group)], [Range(group)])
            if not result.succeeded:
                if not result.responses[0]:
                    raise coordination.GroupNotCreated(group_id)
                raise coordination.GroupNotEmpty(group_id)

        return self._submit("delete_group", delete)

    def join_group(self, group_id: bytes,
                   capabilities: coordination.Capabilities | None = None) -> coordination.CoordinatorResult[None]:
        value = utils.dumps(capabilities)

        def join(session: Session) -> None:
            group, members, _ = self._group_keys(session, group_id)
            member = self._member_key(members, self._member_id)
            result = session.transport.txn(
                [Compare(group, "create_revision", ">", 0), Compare(member, "create_revision", "=", 0)],
                [Put(member, value, lease=session.lease_id)], [Range(group)])
            if not result.succeeded:
                if not result.responses[0]:
                    raise coordination.GroupNotCreated(group_id)
                raise coordination.MemberAlreadyExist(group_id, self._member_id)
            self._joined_groups.add(group_id)

        return self._submit("join_group", join)

    def leave_group(self, group_id: bytes) -> coordination.CoordinatorResult[None]:
        def leave(session: Session) -> None:
            group, members, _ = self._group_keys(session, group_id)
            member = self._member_key(members, self._member_id)
            # Whoever created it (another coordinator with our member id may leave for us, as
            # in tooz's etcd3gw driver).
            result = session.transport.txn([Compare(member, "create_revision", ">", 0)],
                                           [Delete(member)], [Range(group)])
            if not result.succeeded:
                if not result.responses[0]:
                    raise coordination.GroupNotCreated(group_id)
                raise coordination.MemberNotJoined(group_id, self._member_id)
            self._joined_groups.discard(group_id)

        return self._submit("leave_group", leave)

    def _read_group(self, session: Session, group_id: bytes) -> tuple[bytes, list[KeyValue]]:
        group, members, _ = self._group_keys(session, group_id)
        _, kvs = session.transport.get_range(group, prefix_end(group))
        if not kvs or kvs[0].key != group:  # the group key sorts before its members
            raise coordination.GroupNotCreated(group_id)
        return members, [kv for kv in kvs if kv.key.startswith(members)]

    def get_members(self, group_id: bytes) -> coordination.CoordinatorResult[set[bytes]]:
        def get(session: Session) -> set[bytes]:
            members, kvs = self._read_group(session, group_id)
            return {unquote_to_bytes(kv.key[len(members):]) for kv in kvs}

        return self._submit("get_members", get)

    def get_members_with_capabilities(
        self, group_id: bytes
    ) -> coordination.CoordinatorResult[dict[bytes, coordination.Capabilities | None]]:
        def get(session: Session) -> dict[bytes, coordination.Capabilities | None]:
            members, kvs = self._read_group(session, group_id)
            return {unquote_to_bytes(kv.key[len(members):]): utils.loads(kv.value) for kv in kvs}

        return self._submit("get_members_with_capabilities", get)

    def get_member_capabilities(
        self, group_id: bytes, member_id: bytes
    ) -> coordination.CoordinatorResult[coordination.Capabilities | None]:
        def get(session: Session) -> coordination.Capabilities | None:
            group, members, _ = self._group_keys(session, group_id)
            found_group, found_member = session.transport.txn(
                [], [Range(group), Range(self._member_key(members, member_id))]).responses
            if not found_group:
                raise coordination.GroupNotCreated(group_id)
            if not found_member:
                raise coordination.MemberNotJoined(group_id, member_id)
            return utils.loads(found_member[0].value)  # type: ignore[no-any-return]

        return self._submit("get_member_capabilities", get)

    def update_capabilities(self, group_id: bytes,
                            capabilities: coordination.Capabilities) -> coordination.CoordinatorResult[None]:
        value = utils.dumps(capabilities)

        def update(session: Session) -> None:
            group, members, _ = self._group_keys(session, group_id)
            member = self._member_key(members, self._member_id)
            result = session.transport.txn([Compare(member, "create_revision", ">", 0)],
                                           [Put(member, value, lease=session.lease_id)], [Range(group)])
            if not result.succeeded:
                if not result.responses[0]:
                    raise coordination.GroupNotCreated(group_id)
                raise coordination.MemberNotJoined(group_id, self._member_id)

        return self._submit("update_capabilities", update)

    def watch_elected_as_leader(self, group_id: bytes, callback: Any) -> None:
        raise tooz.NotImplemented(_NO_ELECTION)

    def unwatch_elected_as_leader(self, group_id: bytes, callback: Any) -> None:
        raise tooz.NotImplemented(_NO_ELECTION)

    def run_elect_coordinator(self) -> None:
        raise tooz.NotImplemented(_NO_ELECTION)

    def get_leader(self, group_id: bytes) -> coordination.CoordAsyncResult[bytes]:
        raise tooz.NotImplemented(_NO_ELECTION)

    def stand_down_group_leader(self, group_id: bytes) -> bool:
        raise tooz.NotImplemented(_NO_ELECTION)


# -- the URL ----------------------------------------------------------------------------------------


def _settings(parsed_url: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Everything the driver needs from tooz's parsed URL and options, validated (read by
    :func:`fairlock._toozurl.settings`, which ``fairlock inspect`` shares)."""
    try:
        found = _toozurl.settings(parsed_url, options)
    except InvalidArgumentError as exc:
        raise ToozURLError(str(exc)) from None
    return {"config": found.config, "lease_ttl": found.lease_ttl, "lanes": found.lanes,
            "max_bypass": found.max_bypass}
