"""The one weak name table behind every named-lock container (see :class:`NameTable`)."""

from __future__ import annotations

import weakref
from _weakref import _remove_dead_weakref  # what WeakValueDictionary uses: deletes only a dead entry
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["NameTable"]

L = TypeVar("L")


class NameTable(Generic[L]):
    """name -> object, held weakly: the object lives while someone references it, and its entry
    leaves the table when it dies. Every named-lock container of fairlock is one of these: the
    registry, lockutils' ``Semaphores`` and ``FairLocks``, the etcd backend and the tooz driver.

    ``factory(name)``, if given, makes the object of a name nobody holds: :meth:`obtain`.

    No mutex (so none that a forked child could find held): a live name costs one dict lookup
    and one weak reference call, a new one a ``dict.setdefault``. Cheaper than ``weakref.WeakValueDictionary`` (no KeyError on a miss, no
    Python-level KeyedRef per entry): lockutils and the registry look up a name on every use.
    """

    __slots__ = ("_refs", "_factory", "__weakref__")

    def __init__(self, factory: Callable[[str], L] | None = None) -> None:
        self._factory = factory
        self._refs: dict[str, weakref.ref[Any]] = {}

    def get(self, name: str) -> L | None:
        """The live object called ``name``, or None (also for an unhashable name)."""
        try:
            ref = self._refs.get(name)
        except TypeError:
            return None
        return None if ref is None else ref()

    def insert(self, name: str, candidate: L) -> L:
        """The live object called ``name``; ``candidate`` becomes it if there is none.

        Lock-free: ``dict.setdefault`` decides atomically which of two racing inserts wins, and a
        dead entry still waiting for its callback is removed only while it is dead."""
        refs = self._refs
        ref = weakref.ref(candidate, _forgetter(refs, name))
        while True:
            existing = refs.setdefault(name, ref)
            if existing is ref:
                return candidate
            found = existing()
            if found is not None:
                return found  # type: ignore[no-any-return]
            _remove_dead_weakref(refs, name)

    def obtain(self, name: str) -> L:
        """The live object called ``name``, made by the factory if there is none. The factory may
        read configuration, or fail; if two threads make one at once, both get the one inserted
        first."""
        found = self.get(name)
        if found is None:
            if self._factory is None:
                raise TypeError("this NameTable has no factory: use insert()")
            found = self.insert(name, self._factory(name))
        return found

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
    # Runs in whichever thread drops the last reference, at any point of its code: so it takes no
    # lock. _remove_dead_weakref deletes the entry only if it is still a dead
    # reference, never a newer one for the same name.
    def forget(_: Any) -> None:
        _remove_dead_weakref(refs, name)

    return forget
