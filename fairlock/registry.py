"""Named locks: the same name gives the same lock for as long as anyone uses it.

The registry holds its locks weakly: a lock lives while a caller holds a reference to it (which
every ``with registry.lock(name):`` block does), and leaves the registry when the last one goes.
100,000 names used once each leave it empty again.
"""

from __future__ import annotations

import threading
import weakref
from _weakref import _remove_dead_weakref  # what WeakValueDictionary uses: deletes only a dead entry
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._primitives import fresh_mutex_in_child
from .local import Lock, acquire_or_raise, check_name

__all__ = ["LockRegistry", "NameTable", "get_lock", "lock", "default_registry"]

L = TypeVar("L")


class NameTable(Generic[L]):
    """name -> object, held weakly: the object lives while someone references it, and its entry
    leaves the table when it dies.

    The lookup of a live name takes no mutex (one dict lookup and one weak reference call);
    creating one does. Cheaper than ``weakref.WeakValueDictionary`` (no KeyError on a miss, no
    Python-level KeyedRef per entry): lockutils and the registry look up a name on every use.
    """

    __slots__ = ("_refs", "_mutex", "__weakref__")

    def __init__(self) -> None:
        self._refs: dict[str, weakref.ref[Any]] = {}
        # Guards insertion only; nothing that can block or yield runs under it.
        self._mutex = threading.Lock()
        fresh_mutex_in_child(self)

    def get(self, name: str) -> L | None:
        """The live object called ``name``, or None (also for an unhashable name)."""
        try:
            ref = self._refs.get(name)
        except TypeError:
            return None
        return None if ref is None else ref()

    def insert(self, name: str, candidate: L) -> L:
        """The live object called ``name``; ``candidate`` becomes it if there is none."""
        refs = self._refs
        with self._mutex:
            ref = refs.get(name)
            found = None if ref is None else ref()
            if found is None:
                found = candidate
                refs[name] = weakref.ref(candidate, _forgetter(refs, name))
            return found  # type: ignore[return-value]

    def names(self) -> list[str]:
        return [name for name, ref in list(self._refs.items()) if ref() is not None]

    def live(self) -> list[L]:
        """The objects alive now."""
        return [found for found in (ref() for ref in list(self._refs.values())) if found is not None]

    def __len__(self) -> int:
        return sum(1 for ref in list(self._refs.values()) if ref() is not None)

    def __contains__(self, name: object) -> bool:
        return self.get(name) is not None  # type: ignore[arg-type]


def _forgetter(refs: dict[str, Any], name: str) -> Callable[[Any], None]:
    # Runs in whichever thread drops the last reference, maybe while it holds the table's mutex:
    # so no mutex here. _remove_dead_weakref deletes the entry only if it is still a dead
    # reference, never a newer one for the same name.
    def forget(_: Any) -> None:
        _remove_dead_weakref(refs, name)

    return forget


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
