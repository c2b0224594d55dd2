"""Every lock class fairlock offers, behind one small interface, for the generic suite.

A kind makes a lock handle with ``acquire(blocking=True, timeout=None, lane=None) -> bool``,
``release()`` and ``waiting() -> int`` (queued waiters, used as the "all parked" barrier).
Later backends (lockutils shim, etcd, tooz) add a kind here and inherit every generic test.
"""

from __future__ import annotations

import itertools
import uuid
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import fairlock

_names = itertools.count()


class Handle(Protocol):
    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool: ...

    def release(self) -> None: ...

    def waiting(self) -> int: ...


@dataclass(frozen=True)
class LockKind:
    id: str
    make: Callable[[Sequence[str]], Handle]  # lanes (highest first) -> handle
    has_lanes: bool = True
    #: Round trips to a server make each acquisition cost more: stress tests divide their
    #: iteration counts by this.
    cost: int = 1

    def __str__(self) -> str:
        return self.id


class _LocalHandle:
    def __init__(self, lock: fairlock.Lock) -> None:
        self.lock = lock

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        return self.lock.acquire(blocking, -1 if timeout is None else timeout, lane)

    def release(self) -> None:
        self.lock.release()

    def waiting(self) -> int:
        return self.lock.statistics().waiting


def _local(lanes: Sequence[str]) -> Handle:
    return _LocalHandle(fairlock.Lock(f"generic-{next(_names)}", lanes=lanes))


_registry_keepalive: list[Any] = []


def _registry(lanes: Sequence[str]) -> Handle:
    registry = fairlock.LockRegistry(lanes=lanes)
    _registry_keepalive.append(registry)
    name = f"generic-{next(_names)}"
    handle = _LocalHandle(registry.get(name))
    assert registry.get(name) is handle.lock
    return handle


class _LockutilsHandle:
    """``fairlock.lockutils.lock(name, ...)`` held open between acquire() and release(), per thread."""

    def __init__(self, lanes: Sequence[str]) -> None:
        from fairlock import lockutils

        self.lockutils = lockutils
        self.semaphores = lockutils.Semaphores(lanes=tuple(lanes))
        self.name = f"generic-{next(_names)}"
        self.lock = self.semaphores.get(self.name)
        self._held: dict[int, list[Any]] = {}

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        manager = self.lockutils.lock(
            self.name, semaphores=self.semaphores, do_log=False, blocking=blocking, timeout=timeout, lane=lane
        )
        try:
            manager.__enter__()
        except self.lockutils.AcquireLockFailedException:
            return False
        self._held.setdefault(threading.get_ident(), []).append(manager)
        return True

    def release(self) -> None:
        held = self._held.get(threading.get_ident())
        if not held:
            self.lock.release()  # not held by this thread: raises as the lock does
            return
        held.pop().__exit__(None, None, None)

    def waiting(self) -> int:
        return self.lock.statistics().waiting


_etcd_server: Any = None


def etcd_server() -> Any:
    """One real etcd per test process, started on first use (closed at exit by fairlock.testing)."""
    global _etcd_server
    if _etcd_server is None:
        from fairlock import testing

        if testing.find_etcd() is None:
            import pytest

            testing._require_etcd()  # fails under CI, skips elsewhere
            pytest.skip("no etcd")
        _etcd_server = testing.EtcdServer(name="kinds").start()
    return _etcd_server


class _EtcdHandle:
    """The distributed lock; ``per_thread=True`` gives each thread its own session (a separate
    "process" to etcd, so threads contend in etcd itself); otherwise all threads share one session
    and meet in the local queue first (two levels)."""

    def __init__(self, lanes: Sequence[str], per_thread: bool) -> None:
        from fairlock.etcd import EtcdLock, Session
        from fairlock.etcd.gateway import GatewayTransport

        server = etcd_server()
        self.name = f"generic-{next(_names)}"
        self.prefix = f"/fairlock-kinds/{uuid.uuid4().hex[:8]}"
        self._make_session = lambda: Session(GatewayTransport([server.endpoint], timeout=10.0),
                                             ttl=10, prefix=self.prefix)
        self._make_lock = lambda session: EtcdLock(self.name, session, lanes=lanes)
        self.per_thread = per_thread
        self._mutex = threading.Lock()
        self._locks: dict[int, Any] = {}
        self.sessions: list[Any] = []
        self.shared = None if per_thread else self._make_lock(self._new_session())

    def _new_session(self) -> Any:
        session = self._make_session()
        with self._mutex:
            self.sessions.append(session)
        return session

    def _lock(self) -> Any:
        if self.shared is not None:
            return self.shared
        me = threading.get_ident()
        if me not in self._locks:
            self._locks[me] = self._make_lock(self._new_session())
        return self._locks[me]

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        return self._lock().acquire(blocking, -1 if timeout is None else timeout, lane)

    def release(self) -> None:
        self._lock().release()

    def waiting(self) -> int:
        """Parked waiters: etcd waiter keys, plus threads queued locally behind the etcd waiter."""
        from fairlock.etcd.lock import lock_keys

        session = self.sessions[0]
        _, wprefix, wend = lock_keys(session.prefix, self.name)
        _, kvs = session.transport.get_range(wprefix, wend)
        local = self.shared._local.statistics().waiting if self.shared is not None else 0
        return len(kvs) + local

    def close(self) -> None:
        for session in self.sessions:
            transport = session.transport
            session.close()
            transport.close()


KINDS: list[LockKind] = [
    LockKind("local", _local),
    LockKind("registry", _registry),
    LockKind("lockutils", _LockutilsHandle),
    LockKind("etcd", lambda lanes: _EtcdHandle(lanes, per_thread=True), cost=8),
    LockKind("etcd-two-level", lambda lanes: _EtcdHandle(lanes, per_thread=False), cost=4),
]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a condition (not a fixed sleep): returns as soon as it holds, fails after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0005)


def start(target: Callable[[], object], name: str | None = None) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
