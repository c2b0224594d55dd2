"""Every lock class fairlock offers, behind one small interface, for the generic suite.

A kind makes a lock handle with ``acquire(blocking=True, timeout=None, lane=None) -> bool``,
``release()`` and ``waiting() -> int`` (queued waiters, used as the "all parked" barrier).
Later backends (lockutils shim, etcd, tooz) add a kind here and inherit every generic test.
"""

from __future__ import annotations

import itertools
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


KINDS: list[LockKind] = [
    LockKind("local", _local),
    LockKind("registry", _registry),
    LockKind("lockutils", _LockutilsHandle),
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
