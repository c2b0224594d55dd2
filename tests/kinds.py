"""Every lock class fairlock offers, behind one small interface, for the generic suite.

A kind makes a lock handle with ``acquire(blocking=True, timeout=None, lane=None) -> bool``,
``release()`` (raises a RuntimeError on misuse) and ``waiting() -> int`` (queued waiters, used as
the "all parked" barrier). Every lock class is a kind: the local lock, the named registry, the
lockutils shim (internal and, on etcd, external), the etcd lock over the gateway and over gRPC (one
session per thread, and two levels: one session shared by threads) and the tooz driver.
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
from fairlock._primitives import green_mode

_names = itertools.count()


class Handle(Protocol):
    """What the generic tests use. A handle over a :class:`fairlock.FairLock` also has
    ``fair_lock()`` (the lock object, for the calling thread); the tooz driver's and the
    reader/writer lock's speak their own foreign protocols and have none."""

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
    #: Works under eventlet monkey patching (the gRPC transport refuses it, by design).
    green: bool = True

    def __str__(self) -> str:
        return self.id


class _LocalHandle:
    def __init__(self, lock: fairlock.Lock) -> None:
        self.lock = lock

    def fair_lock(self) -> fairlock.FairLock:
        """The :class:`fairlock.FairLock` behind the handle, for the calling thread."""
        return self.lock

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

    external = False

    def fair_lock(self) -> fairlock.FairLock:
        return self.lock  # the internal lock, an InternalLock

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        manager = self.lockutils.lock(self.name, semaphores=self.semaphores, external=self.external, do_log=False,
                                      blocking=blocking, timeout=timeout, lane=lane)
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


class _RWWriteHandle:
    """The write side of :class:`fairlock.rwlock.ReaderWriterLock` (what ``FairLocks`` gives):
    exclusive, FIFO, no lanes."""

    def __init__(self, lanes: Sequence[str]) -> None:
        from fairlock.lockutils import FairLocks

        self.container = FairLocks()
        self.lock = self.container.get(f"generic-{next(_names)}")

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        assert lane is None, "the reader/writer lock has no lanes"
        return self.lock.acquire_write_lock(blocking, timeout)

    def release(self) -> None:
        self.lock.release_write_lock()

    def waiting(self) -> int:
        return self.lock.waiting()


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

    def __init__(self, lanes: Sequence[str], per_thread: bool, transport: str = "gateway") -> None:
        from fairlock.etcd import EtcdLock, Session

        server = etcd_server()
        self.name = f"generic-{next(_names)}"
        self.prefix = f"/fairlock-kinds/{uuid.uuid4().hex[:8]}"
        make_transport = _transports()[transport]
        self._make_session = lambda: Session(make_transport(server.endpoint), ttl=10, prefix=self.prefix)
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

    def fair_lock(self) -> fairlock.FairLock:
        return self._lock()

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
        local = self.shared._local.statistics().waiting if self.shared is not None else 0
        return _etcd_waiters(self.sessions[0], self.name) + local

    def close(self) -> None:
        for session in self.sessions:
            transport = session.transport
            session.close()
            transport.close()


def _transports() -> dict[str, Callable[[str], Any]]:
    from fairlock.etcd.gateway import GatewayTransport

    def grpc(endpoint: str) -> Any:
        from fairlock.etcd.grpc import GrpcTransport

        return GrpcTransport([endpoint], timeout=10.0)

    return {"gateway": lambda endpoint: GatewayTransport([endpoint], timeout=10.0), "grpc": grpc}


def _etcd_waiters(session: Any, name: str) -> int:
    from fairlock.etcd.lock import lock_keys

    _, wprefix, wend = lock_keys(session.prefix, name)
    _, kvs = session.transport.get_range(wprefix, wend)
    return len(kvs)


class _LockutilsExternalHandle(_LockutilsHandle):
    """``fairlock.lockutils.lock(name, external=True)`` with the etcd backend: every thread queues
    in the process's internal lock, then its one etcd waiter queues in etcd (as in nova with
    ``[oslo_concurrency] fairlock_backend_url`` set)."""

    external = True

    def __init__(self, lanes: Sequence[str]) -> None:
        from fairlock.etcd import Session
        from fairlock.etcd.backend import EtcdBackend
        from fairlock.etcd.gateway import GatewayTransport

        super().__init__(lanes)
        self.session = Session(GatewayTransport([etcd_server().endpoint], timeout=10.0), ttl=10,
                               prefix=f"/fairlock-kinds/{uuid.uuid4().hex[:8]}")
        # Process-wide, as the config option is; put back by close() at the end of the test.
        self._previous = self.lockutils.set_external_backend(EtcdBackend(self.session, lanes=tuple(lanes)))

    def waiting(self) -> int:
        return super().waiting() + _etcd_waiters(self.session, self.name)

    def close(self) -> None:
        self.lockutils.set_external_backend(self._previous)
        transport = self.session.transport
        self.session.close()
        transport.close()


class _ToozHandle:
    """The tooz driver (``fairlock+etcd3+http://``), one coordinator per thread as tooz users run
    one per process. tooz's own misuse signals are mapped to the handle's: ``release()`` returning
    False (not held) and ``ToozError`` (released by another thread) raise a RuntimeError here."""

    def __init__(self, lanes: Sequence[str]) -> None:
        # Imported here, in the test's thread: tooz imports futurist, which imports eventlet when
        # installed, and a first eventlet import in a worker thread leaves that thread unjoinable.
        from tooz import coordination

        self.coordination = coordination
        server = etcd_server()
        self.name = f"generic-{next(_names)}"
        self.url = (f"fairlock+etcd3+http://127.0.0.1:{server.client_port}/fairlock-kinds/"
                    f"{uuid.uuid4().hex[:8]}?lanes={','.join(lanes)}&lease_ttl=10&timeout=10")
        self._mutex = threading.Lock()
        self._coordinators: dict[int, Any] = {}

    def _lock(self) -> Any:
        me = threading.get_ident()
        with self._mutex:
            found = self._coordinators.get(me)
            if found is None:
                coordinator = self.coordination.get_coordinator(self.url, f"member-{me}".encode())
                coordinator.start()
                # A tooz lock object remembers its own holder: one per coordinator, kept.
                found = self._coordinators[me] = (coordinator, coordinator.get_lock(self.name.encode()))
        return found[1]

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        lock = self._lock()
        if not blocking:
            return bool(lock.acquire(False, lane=lane))
        return bool(lock.acquire(True, timeout=timeout, lane=lane))

    def release(self) -> None:
        import tooz

        try:
            released = self._lock().release()
        except tooz.ToozError as exc:
            raise RuntimeError(f"tooz: {exc}") from exc
        if not released:
            raise RuntimeError("tooz: release() returned False (the lock was not held)")

    def waiting(self) -> int:
        with self._mutex:
            coordinators = list(self._coordinators.values())
        if not coordinators:
            return 0
        session = coordinators[0][0]._session
        return _etcd_waiters(session, self.name)

    def close(self) -> None:
        with self._mutex:
            coordinators, self._coordinators = list(self._coordinators.values()), {}
        for coordinator, _ in coordinators:
            if coordinator.is_started:
                coordinator.stop()


KINDS: list[LockKind] = [
    LockKind("local", _local),
    LockKind("registry", _registry),
    LockKind("lockutils", _LockutilsHandle),
    LockKind("rwlock-write", _RWWriteHandle, has_lanes=False),
    LockKind("etcd", lambda lanes: _EtcdHandle(lanes, per_thread=True), cost=8),
    LockKind("etcd-two-level", lambda lanes: _EtcdHandle(lanes, per_thread=False), cost=4),
    LockKind("etcd-grpc", lambda lanes: _EtcdHandle(lanes, per_thread=True, transport="grpc"), cost=8,
             green=False),
    LockKind("lockutils-etcd", _LockutilsExternalHandle, cost=4),
    LockKind("tooz", _ToozHandle, cost=16),
]
if green_mode():  # the eventlet child of tests/test_eventlet.py: only the kinds made for it
    KINDS = [kind for kind in KINDS if kind.green]


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


class Cancelled(BaseException):
    """Raised into a parked waiter by :meth:`Waiter.cancel`, as greenthread.kill raises GreenletExit."""


class Waiter:
    """A thread that acquires ``lock``, runs ``then()`` while holding it, and releases; it can be
    cancelled while it waits, the way a green thread is cancelled in real code (``kill``,
    ``eventlet.Timeout``): an exception raised at the point where it is parked.

    Only green threads can be cancelled from outside (a native thread blocked in a lock cannot be
    interrupted; its only way out is a timeout, which the timeout tests cover), so ``cancel()``
    exists under eventlet monkey patching only.
    """

    def __init__(self, lock: Handle, then: Callable[[], object] = lambda: None, lane: str | None = None) -> None:
        self.cancelled = threading.Event()
        self.acquired = threading.Event()
        self._greenlet: Any = None
        ready = threading.Event()

        def run() -> None:
            if green_mode():
                import greenlet

                self._greenlet = greenlet.getcurrent()
            ready.set()
            try:
                assert lock.acquire(lane=lane)
            except Cancelled:
                self.cancelled.set()
                return
            self.acquired.set()
            try:
                then()
            finally:
                lock.release()

        self.thread = start(run)
        ready.wait(10)

    def cancel(self) -> None:
        """Raise :class:`Cancelled` in the waiter where it waits (it yields to it at once)."""
        import eventlet.greenthread  # only ever called in the monkey-patched child

        eventlet.greenthread.kill(self._greenlet, Cancelled())
