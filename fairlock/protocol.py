"""What every fair lock of fairlock is: one protocol for the in-process and the etcd lock.

:class:`fairlock.Lock` (threads and green threads in one process) and
:class:`fairlock.etcd.EtcdLock` (every process on one etcd) both satisfy :class:`FairLock`, so
code written against it -- :mod:`fairlock.coalesce`, a caller's own helpers, the generic test
suite -- takes either. The contract:

1. ``acquire(blocking=True, timeout=None, lane=None) -> bool``: ``timeout`` None (or -1, as for
   :class:`threading.Lock`) waits as long as it takes, otherwise seconds >= 0; with
   ``blocking=False`` no timeout may be given; ``lane`` is one of ``lanes`` and overrides the
   context's :func:`fairlock.lane`. True if taken, False on timeout or when non-blocking and busy.
   Bad arguments raise at once (:mod:`fairlock.errors`), before anything is queued.
2. ``release()``: by the owner only (else :class:`~fairlock.errors.NotOwnerError` or
   :class:`~fairlock.errors.NotHeldError`, both RuntimeError); hands the lock to the next owner
   by the rule.
3. ``owned()``: the calling thread (or green thread) holds it -- no I/O, the lock's own
   knowledge (for the etcd lock: and its session is within its validity deadline).
4. ``locked()``: anyone holds it. The in-process lock answers from memory; the etcd lock asks
   etcd (one read).
5. ``statistics()``: a frozen snapshot whose ``lanes`` maps each lane, in priority order, to a
   :class:`fairlock.LaneStatistics` with int counts; ``grants`` and ``waiting`` are totals.
6. A context manager: ``with lock:`` acquires (blocking, no limit) and releases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, Union, runtime_checkable

from ._core import Lanes
from .stats import LaneStatistics

__all__ = ["FairLock", "FairLockStatistics", "PlainLock", "LockLike"]


@runtime_checkable
class FairLockStatistics(Protocol):
    """The part of a statistics snapshot every lock kind gives (see the module docstring, 5)."""

    @property
    def name(self) -> str | None:
        """The lock's name (None for an anonymous in-process lock)."""

    @property
    def lanes(self) -> Mapping[str, LaneStatistics]:
        """Each lane, highest priority first, to its figures."""

    @property
    def grants(self) -> int:
        """Every grant so far (uncontended and queued)."""

    @property
    def waiting(self) -> int:
        """Waiters queued now, over all lanes."""


@runtime_checkable
class FairLock(Protocol):
    """A fair lock: see the module docstring for the contract of each method."""

    name: str | None
    lanes: Lanes

    def acquire(self, blocking: bool = True, timeout: float | None = None, lane: str | None = None) -> bool:
        """Take the lock (timeout None: no limit); True if taken, False if not (1 above)."""

    def release(self) -> None:
        """Release by the owner, handing the lock to the next owner by the rule (2 above)."""

    def owned(self) -> bool:
        """True if the calling thread or green thread holds the lock, without I/O (3 above)."""

    def locked(self) -> bool:
        """True if anyone holds the lock (4 above)."""

    def statistics(self) -> FairLockStatistics:
        """A frozen snapshot of the lock's figures (5 above)."""

    def __enter__(self) -> Any:
        """``with lock:`` acquires, blocking with no limit."""

    def __exit__(self, *exc: object) -> Any:
        """Releases at the end of the ``with`` block."""


class PlainLock(Protocol):
    """Any lock with ``acquire``/``release`` (``threading.Lock``, a semaphore): what
    :mod:`fairlock.coalesce` accepts besides a :class:`FairLock` (without lanes, then)."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool:
        """Take the lock, as :meth:`threading.Lock.acquire`."""

    def release(self) -> None:
        """Release the lock, as :meth:`threading.Lock.release`."""


#: What takes a lock in fairlock's helpers: a fair lock (lanes honoured) or a plain one.
LockLike = Union[FairLock, PlainLock]
