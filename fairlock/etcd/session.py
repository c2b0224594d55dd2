"""One etcd lease per process, kept alive in the background and shared by every lock.

tooz and python-etcd3 grant a lease per acquire attempt (and leak them); etcd's own Go client has
one per session. fairlock does the same as Go: a :class:`Session` owns one lease, refreshes it
every ``ttl / 3`` seconds from one background thread (a green thread under eventlet), and when
the lease expires or cannot be refreshed for ``ttl`` seconds it declares the session *lost*:
every lock held through it is told (callbacks, ``is_held()`` becomes False) and every waiter
stops with :class:`SessionLost`. All keys a session writes carry its lease, so a crashed process's
keys disappear with its lease.

The lease is judged on our own clock, never only on etcd's word: each refresh that etcd confirms
extends the *validity deadline* to (the moment the refresh was **sent**) + the TTL etcd granted.
etcd started its countdown after that moment, so before the deadline etcd cannot have expired the
lease and nobody else can hold our locks. Past the deadline the session is lost at once, even if
no refresh has failed yet: a process that was paused (SIGSTOP, a VM freeze, a long GC, a greenlet
hogging the hub) learns it on its first ``is_held()`` after waking, before it writes anything,
rather than after its next refresh fails. A lost session then revokes its lease (best effort), so
its queued keys stop holding up others if etcd still had the lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading as _threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import ArgumentTypeError, FairlockError, InvalidArgumentError
from .transport import EtcdError, LeaseNotFound, Transport

__all__ = ["Session", "SessionLost", "LockLost", "DEFAULT_TTL", "DEFAULT_PREFIX", "keepalive_interval"]

LOG = logging.getLogger("fairlock.etcd")

DEFAULT_TTL = 10
DEFAULT_PREFIX = "/fairlock"
#: Pause before the next refresh after one failed (the transport has retried within the call).
KEEPALIVE_RETRY = 0.5


def keepalive_interval(ttl: float) -> float:
    """Seconds between a session's lease refreshes, for a lease granted ``ttl`` seconds: a live
    session's lease never has less than ``ttl`` minus one interval left, plus a refresh's time."""
    return ttl / 3.0


class SessionLost(FairlockError, RuntimeError):
    """The session's lease expired or could not be refreshed: its locks are no longer held.

    Also a ``RuntimeError``, which is ``threading.ThreadError``: what fasteners' file lock (oslo's
    ``external=True``) raises when it cannot lock or unlock, so oslo callers that catch external
    lock failures catch this too.
    """


class LockLost(FairlockError, RuntimeError):
    """A lock this process held (or was queued for) is gone: its lease expired or its key vanished.

    Also a ``RuntimeError`` (``threading.ThreadError``), as :class:`SessionLost`.
    """


#: Longest prefix (UTF-8 bytes): it is part of every key the session writes.
MAX_PREFIX_BYTES = 256


def _checked_ttl(ttl: object) -> int:
    ttl = DEFAULT_TTL if ttl is None else ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ArgumentTypeError("ttl must be an int number of seconds")
    if ttl < 2:
        raise InvalidArgumentError(f"ttl must be >= 2 seconds, got {ttl}")
    return ttl


def _checked_prefix(prefix: object) -> bytes:
    prefix = DEFAULT_PREFIX if prefix is None else prefix
    if not isinstance(prefix, str):
        raise ArgumentTypeError("prefix must be a str")
    if not prefix.startswith("/") or "\0" in prefix:
        raise InvalidArgumentError(f"prefix must start with '/' and contain no NUL, got {prefix!r}")
    try:
        encoded = prefix.rstrip("/").encode()
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"prefix must be valid text (no lone surrogates), got {prefix!r}") from None
    if len(encoded) > MAX_PREFIX_BYTES:
        raise InvalidArgumentError(f"prefix must be at most {MAX_PREFIX_BYTES} bytes of UTF-8, "
                                   f"got {len(encoded)}")
    return encoded


class Session:
    """An etcd lease shared by all locks of a process (or of one configuration).

    ``transport`` is a :class:`~fairlock.etcd.transport.Transport` or an ``etcd3+http://`` URL.
    ``on_lost(session, reason)`` is called once when the session is lost, from the session's
    notice thread (``fairlock-notices-<lease>``), after its locks' ``on_lost`` callbacks: never
    in an application thread, so a callback may take locks the application holds. The loss
    itself is visible at once (``alive()``, ``is_held()``, ``release()`` raising ``LockLost``),
    before any callback runs.
    """

    def __init__(
        self,
        transport: Transport | str,
        *,
        ttl: int | None = None,
        prefix: str | None = None,
        on_lost: Callable[[Session, str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        owns_transport = False
        if isinstance(transport, str):
            from .config import parse_transport_url

            _, config = parse_transport_url(transport)
            ttl = ttl if ttl is not None else config.lease_ttl
            prefix = prefix if prefix is not None else config.prefix
        elif not isinstance(transport, Transport):
            raise ArgumentTypeError(f"transport must be a Transport or a URL, got {type(transport).__name__}")
        # Every argument is checked before a transport is built from a URL: a bad one must not
        # leave a client (gRPC threads, pooled connections) behind.
        ttl = _checked_ttl(ttl)
        encoded_prefix = _checked_prefix(prefix)
        if on_lost is not None and not callable(on_lost):
            raise ArgumentTypeError(f"on_lost must be callable, got {type(on_lost).__name__}")
        for what, fn in (("clock", clock), ("wall_clock", wall_clock)):
            if not callable(fn):
                raise ArgumentTypeError(f"{what} must be callable, got {type(fn).__name__}")
        if isinstance(transport, str):
            from .connect import transport_from_url

            transport = transport_from_url(transport)  # etcd3+grpc:// selects gRPC, else the gateway
            owns_transport = True
        self.transport: Transport = transport
        self.prefix = encoded_prefix
        self._owns_transport = owns_transport
        self._clock = clock
        self.wall_clock = wall_clock
        self._on_lost = on_lost
        self._locks: weakref.WeakSet[Any] = weakref.WeakSet()
        self._mutex = _threading.Lock()
        self._closed = _threading.Event()
        self._lost_reason: str | None = None
        self._notice_threads: list[_threading.Thread] = []
        sent = clock()
        try:
            self.lease_id, self.ttl = transport.lease_grant(ttl)
        except BaseException:
            if owns_transport:
                transport.close()
            raise
        # Before this moment (our clock) etcd cannot have expired the lease: see the module doc.
        self._valid_until = sent + self.ttl
        self.identity: dict[str, object] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "session": f"{self.lease_id:x}",
        }
        self._keepalive = _threading.Thread(
            target=self._keep_alive, name=f"fairlock-keepalive-{self.lease_id:x}", daemon=True
        )
        # The keepalive thread can hang in a refresh (up to the transport's timeout) past the
        # validity deadline; this one tells the holders at the deadline itself.
        self._deadline_watch = _threading.Thread(
            target=self._watch_deadline, name=f"fairlock-deadline-{self.lease_id:x}", daemon=True
        )
        self._keepalive.start()
        self._deadline_watch.start()

    # -- state ------------------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        """True once the session's lease is known to be gone (expired, revoked, or refused by etcd)."""
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        """Why the session was lost, or None while it is not."""
        return self._lost_reason

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    def valid_for(self) -> float:
        """Seconds until the validity deadline (<= 0: etcd may have expired the lease)."""
        return self._valid_until - self._clock()

    def alive(self) -> bool:
        """True while the session can hold locks: not closed, not lost, validity deadline ahead.

        The first call that finds the deadline passed declares the session lost (its locks are
        marked lost before this returns; their callbacks run on the notice thread), so no holder
        can act on a lease that may be gone.
        """
        if self._lost_reason is not None or self._closed.is_set():
            return False
        if self.valid_for() <= 0:
            self._mark_lost(f"no refresh of the lease was confirmed within its ttl ({self.ttl}s); "
                            "etcd may have expired it")
            return False
        return True

    def check(self) -> None:
        """Raise :class:`SessionLost` if the session can no longer hold locks."""
        self.alive()
        if self._lost_reason is not None:
            raise SessionLost(f"etcd session {self.lease_id:x} is lost: {self._lost_reason}")
        if self._closed.is_set():
            raise SessionLost(f"etcd session {self.lease_id:x} is closed")

    def register(self, lock: Any) -> None:
        """Tell ``lock`` (an EtcdLock of this session) when the session is lost or closed."""
        with self._mutex:
            self._locks.add(lock)

    # -- keepalive --------------------------------------------------------------------------------

    def keepalive_once(self) -> int:
        """Refresh the lease now; returns the remaining ttl. Marks the session lost if it is gone."""
        sent = self._clock()
        try:
            remaining = self.transport.lease_keepalive(self.lease_id)
        except LeaseNotFound:
            self._lease_gone()
            raise
        if remaining <= 0:
            self._lease_gone()
            raise LeaseNotFound(f"lease {self.lease_id:x} expired")
        with self._mutex:
            self._valid_until = max(self._valid_until, sent + remaining)
        return remaining

    def _lease_gone(self) -> None:
        # close() revokes the lease itself; a keepalive that was in flight then finds it gone,
        # which is the orderly end of the session, not a loss.
        if not self._closed.is_set():
            self._mark_lost("the lease expired")

    def _keep_alive(self) -> None:
        interval = pause = keepalive_interval(self.ttl)
        # Wake at the validity deadline at the latest, so a session whose refreshes keep failing
        # is declared lost when etcd may expire it, not up to one interval later.
        while not self._closed.wait(max(0.0, min(pause, self.valid_for()))):
            if not self.alive():  # lost elsewhere, or the deadline passed (a pause, failures)
                break
            try:
                self.keepalive_once()
                pause = interval
            except LeaseNotFound:
                break
            except EtcdError as exc:
                if self._closed.is_set():
                    return
                # Try again soon, not one interval later: a failed call (one transport timeout)
                # plus a full interval can outlast what is left of the validity, and a session
                # would be lost over an outage shorter than its lease (etcd restarting).
                pause = min(interval, KEEPALIVE_RETRY)
                LOG.warning("fairlock session %x: keepalive failed (%s); the lease is valid for "
                            "%.1fs more", self.lease_id, type(exc).__name__, self.valid_for())
            except Exception:  # never let the thread die silently: the locks depend on it
                LOG.exception("fairlock session %x: unexpected keepalive error", self.lease_id)
        if self._lost_reason is not None and not self._closed.is_set():
            self._revoke_lost_lease()

    def _watch_deadline(self) -> None:
        # Sleeps until the validity deadline; a refresh that moved it on meanwhile means sleep on.
        while not self._closed.wait(max(0.0, self.valid_for())):
            if not self.alive():
                return

    def _revoke_lost_lease(self) -> None:
        # Our holders were told the locks are gone; if etcd still has the lease (the deadline
        # passed before etcd's did, or etcd was down and gives every lease a fresh ttl when it
        # is back), revoking frees our keys now instead of one ttl later. So keep trying until
        # etcd answers, or until the session is closed (close() tries once more itself).
        pause = KEEPALIVE_RETRY
        while True:
            try:
                self.transport.lease_revoke(self.lease_id)
                return
            except LeaseNotFound:
                return
            except EtcdError:
                if self._closed.wait(pause):
                    return
                pause = min(pause * 2, max(KEEPALIVE_RETRY, keepalive_interval(self.ttl)))

    def _mark_lost(self, reason: str) -> None:
        # In the thread that found the loss (keepalive, deadline watch, or a caller of alive()):
        # only state changes, so that every lock says "lost" before this returns. Logging and
        # callbacks run on the notice thread (see _deliver).
        with self._mutex:
            if self._lost_reason is not None:
                return
            self._lost_reason = reason
            locks = list(self._locks)
        notices = self._marked(locks, lambda lock: lock._session_lost(reason))

        def tell_session() -> None:
            LOG.error("fairlock session %x lost: %s", self.lease_id, reason)
            for notice in notices:
                notice()
            if self._on_lost is not None:
                self._on_lost(self, reason)

        self._deliver(tell_session)

    @staticmethod
    def _marked(locks: list[Any], mark: Callable[[Any], Any]) -> list[Callable[[], None]]:
        notices = []
        for lock in locks:
            try:
                notice = mark(lock)
            except Exception:
                LOG.exception("fairlock: lost-lock notice failed for %r", lock)
                continue
            if notice is not None:
                notices.append(notice)
        return notices

    def _deliver(self, notice: Callable[[], None]) -> None:
        """Run ``notice`` on a thread of the session's own, never in the caller's: every
        ``on_lost`` callback (the session's and its locks') runs there, so a callback may take
        an application lock that the thread which found the loss (e.g. inside ``is_held()``)
        holds, without a deadlock."""

        def run() -> None:
            try:
                notice()
            except Exception:
                LOG.exception("fairlock: session %x: an on_lost callback failed", self.lease_id)

        thread = _threading.Thread(target=run, name=f"fairlock-notices-{self.lease_id:x}", daemon=True)
        with self._mutex:
            self._notice_threads.append(thread)
        thread.start()

    def wait_notices(self, timeout: float | None = None) -> bool:
        """Wait until every loss notice (``on_lost`` callbacks) given so far has run; True if so."""
        with self._mutex:
            threads = list(self._notice_threads)
        deadline = None if timeout is None else self._clock() + timeout
        for thread in threads:
            if thread is _threading.current_thread():
                continue
            thread.join(None if deadline is None else max(0.0, deadline - self._clock()))
            if thread.is_alive():
                return False
        return True

    # -- close ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Revoke the lease (deleting every key of this session) and stop the keepalive."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._mutex:
            locks = list(self._locks)
        notices = self._marked(locks, lambda lock: lock._session_closing())

        def tell_holders() -> None:
            for notice in notices:
                notice()

        if notices:
            self._deliver(tell_holders)
        try:
            self.transport.lease_revoke(self.lease_id)
        except EtcdError as exc:
            # etcd gives every lease a fresh ttl when a leader takes office: if etcd is down,
            # the ttl counts from when it is back.
            LOG.warning("fairlock session %x: lease revoke failed (%s); etcd expires it %ss after "
                        "it last heard of it", self.lease_id, type(exc).__name__, self.ttl)
        for thread in (self._keepalive, self._deadline_watch):
            if thread is not _threading.current_thread():
                thread.join(self.ttl)
        self.wait_notices(self.ttl)  # told before close() returns (on the notice thread)
        if self._owns_transport:
            self.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "lost" if self.lost else ("closed" if self.closed else "alive")
        return f"<fairlock.etcd.Session lease={self.lease_id:x} ttl={self.ttl}s {state}>"
