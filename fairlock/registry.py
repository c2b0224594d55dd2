"""Named locks: the same name gives the same lock for as long as anyone uses it.

The registry holds its locks weakly: a lock lives while a caller holds a reference to it (which
every ``with registry.lock(name):`` block does), and leaves the registry when the last one goes.
100,000 names used once each leave it empty again.
"""

from __future__ import annotations

from typing import Any

from ._nametable import NameTable
from .local import Lock, acquire_or_raise, check_name

__all__ = ["LockRegistry", "NameTable", "get_lock", "lock", "default_registry"]

class _Held:
    """The context manager of ``registry.lock(name)``: a class, not a generator (half the cost)."""

    __slots__ = ("lock", "_lane", "_timeout", "_blocking")

    def __init__(self, lock: Lock, lane: str | None, timeout: float | None, blocking: bool) -> None:
        self.lock = lock
        self._lane = lane
        self._timeout = timeout
        self._blocking = blocking

    def __enter__(self) -> Lock:
        acquire_or_raise(self.lock, self._blocking, self._timeout, self._lane)
        return self.lock

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class LockRegistry:
    """Get-or-create named :class:`~fairlock.Lock` objects, all built with the same options.

    ``lock_options`` are passed to every ``Lock`` the registry creates (``lanes``,
    ``max_bypass``, ``slow_hold``, ...).
    """

    def __init__(self, **lock_options: Any) -> None:
        probe = Lock(None, **lock_options)  # validate the options now, not at the first use
        # Build the lanes once; every lock of this registry shares the immutable object.
        self._options = {**lock_options, "lanes": probe.lanes}
        self._options.pop("default_lane", None)
        self._locks: NameTable[Lock] = NameTable()

    def get(self, name: str) -> Lock:
        """The lock called ``name``, created on first use."""
        found = self._locks.get(name)
        if found is None:
            check_name(name, allow_none=False)
            found = self._locks.insert(name, Lock(name, **self._options))
        return found

    def lock(
        self, name: str, *, lane: str | None = None, timeout: float | None = None, blocking: bool = True
    ) -> _Held:
        """``with registry.lock(name):`` -- raises :class:`~fairlock.AcquireTimeout` if not taken."""
        return _Held(self.get(name), lane, timeout, blocking)

    def names(self) -> list[str]:
        """The names whose locks are alive now."""
        return self._locks.names()

    def __len__(self) -> int:
        return len(self._locks)

    def __contains__(self, name: object) -> bool:
        return name in self._locks

    def __repr__(self) -> str:
        return f"<fairlock.LockRegistry {len(self)} lock(s)>"


default_registry = LockRegistry()


def get_lock(name: str) -> Lock:
    """The process-wide fair lock called ``name`` (default options)."""
    return default_registry.get(name)


def lock(name: str, *, lane: str | None = None, timeout: float | None = None, blocking: bool = True):  # type: ignore[no-untyped-def]
    """``with fairlock.lock("refresh_cache-<uuid>"):`` on the process-wide registry."""
    return default_registry.lock(name, lane=lane, timeout=timeout, blocking=blocking)
