"""A fair reader/writer lock with fasteners' API, for threads and eventlet green threads.

oslo.concurrency's ``ReaderWriterLock`` and the locks of its ``FairLocks`` container are
``fasteners.ReaderWriterLock`` objects, and nova calls their methods directly
(``nova.utils.FairLockGuard``: ``acquire_write_lock()``, ``release_write_lock()``,
``is_writer()``; ``ReaderWriterLock().write_lock()``). This class has the same methods with the
same meaning; who holds the lock next is decided by :class:`fairlock._core.RWQueue`, and this
module only maps callers to tickets, parks and wakes (one private parker per waiter, woken by the
releaser after it has made that waiter an owner: no notify-all, no race).

Fairness, in one sentence: writers and batches of readers are served in arrival order; a reader
joins the readers holding the lock only while no writer is waiting, so a writer waits at most for
the readers and writers that arrived before it.

Kept from fasteners: a writer may re-enter its write lock and take read locks inside it; a reader
may re-enter its read lock (even while a writer waits: it already holds); a reader asking for the
write lock is refused at once (``RuntimeError``: it would wait for itself); releasing what the
caller does not hold raises ``RuntimeError``. Added: ``blocking=`` and ``timeout=`` on the two
acquire methods (they return True/False), and a cancelled or timed-out waiter never strands the
lock. Not guaranteed: the order among callers arriving at the same instant (whoever reaches the
internal mutex first arrives first). No lanes: the lanes of :class:`fairlock.Lock` order
exclusive waiters; here arrival order alone decides.
"""

from __future__ import annotations

import contextlib
import threading as _threading
from collections.abc import Callable, Generator, Hashable
from typing import Any

from . import _primitives
from ._core.rwqueue import READ, WRITE, Mode, RWQueue
from .errors import ArgumentTypeError, DeadlockError, NotHeldError, NotOwnerError
from .local import check_name, check_timeout

__all__ = ["ReaderWriterLock"]


class _Holder:
    """What one thread (or green thread) holds: its ticket and how often it entered each side."""

    __slots__ = ("ticket", "mode", "writes", "reads")

    def __init__(self, ticket: int, mode: Mode) -> None:
        self.ticket = ticket
        self.mode = mode
        self.writes = 1 if mode == WRITE else 0
        self.reads = 1 if mode == READ else 0


class _Waiter:
    __slots__ = ("parker", "me", "mode")

    def __init__(self, parker: Any, me: Hashable, mode: Mode) -> None:
        self.parker = parker
        self.me = me
        self.mode = mode


class ReaderWriterLock:
    """A fair reader/writer lock with ``fasteners.ReaderWriterLock``'s methods.

    >>> from fairlock.rwlock import ReaderWriterLock
    >>> rw = ReaderWriterLock()
    >>> with rw.write_lock():
    ...     with rw.read_lock():          # a writer may read
    ...         rw.is_writer(), rw.is_reader(), rw.owner
    (True, True, 'w')

    ``condition_cls`` is accepted for fasteners compatibility and not used (waiters park on
    private locks). ``current_thread_functor`` names the caller; by default the identity
    :class:`fairlock.Lock` uses: one per native thread, never reused by a later thread (unlike a
    thread ident), or the current greenlet under eventlet monkey patching (also in greenlets not
    made by ``eventlet.spawn``).
    """

    WRITER = "w"  #: :attr:`owner` while a writer holds the lock
    READER = "r"  #: :attr:`owner` while readers hold the lock

    def __init__(
        self,
        condition_cls: Any = None,
        current_thread_functor: Callable[[], Hashable] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if current_thread_functor is not None and not callable(current_thread_functor):
            raise ArgumentTypeError("current_thread_functor must be callable or None")
        self.name = check_name(name)
        # The default identity is fairlock.Lock's: a token per native thread that a newer thread
        # can never reuse (thread idents are recycled), or the greenlet under monkey patching.
        self._current_thread: Callable[[], Hashable] = current_thread_functor or _primitives.current_token
        self._queue = RWQueue()
        # Guards the state below for a few lines at a time; nothing that can block runs under it.
        self._mutex = _threading.Lock()
        self._holders: dict[Hashable, _Holder] = {}
        self._waiters: dict[int, _Waiter] = {}
        #: caller -> how many of its write requests are queued (fasteners' "pending writers")
        self._pending_writers: dict[Hashable, int] = {}

    # -- queries (fasteners' names) ---------------------------------------------------------------

    @property
    def has_pending_writers(self) -> bool:
        """True if a writer is queued (waiting, not holding)."""
        return self._queue.queued_writers > 0

    def is_writer(self, check_pending: bool = True) -> bool:
        """True if the caller holds the write lock (or, with ``check_pending``, waits for it)."""
        me = self._current_thread()
        holder = self._holders.get(me)
        if holder is not None and holder.mode == WRITE:
            return True
        return bool(check_pending) and me in self._pending_writers

    def is_reader(self) -> bool:
        """True if the caller holds a read lock (a writer's nested read lock counts)."""
        holder = self._holders.get(self._current_thread())
        return holder is not None and holder.reads > 0

    @property
    def owner(self) -> str | None:
        """``'w'`` while a writer holds the lock, ``'r'`` while readers hold it, else None."""
        return self._queue.mode

    def locked(self) -> bool:
        """True if anyone holds the lock now, reading or writing."""
        return self._queue.mode is not None

    def waiting(self) -> int:
        """How many callers are queued."""
        return len(self._queue)

    # -- acquire / release ------------------------------------------------------------------------

    def acquire_write_lock(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the write lock (re-entrant for its holder); True if taken.

        Waits for the readers and writers that arrived before. ``blocking=False`` or ``timeout=``
        (seconds) return False instead of waiting (longer). Raises ``RuntimeError``
        (:class:`~fairlock.DeadlockError`) if the caller holds a read lock only.
        """
        wait = check_timeout(blocking, timeout)
        me = self._current_thread()
        holder = self._holders.get(me)
        if holder is not None:
            if holder.mode == WRITE:
                holder.writes += 1
                return True
            raise DeadlockError(f"{self!r}: reader {me} to writer privilege escalation not allowed")
        return self._acquire(me, WRITE, bool(blocking), wait)

    def release_write_lock(self) -> None:
        """Release the write lock once; the last release hands the lock to the next in line."""
        me = self._current_thread()
        with self._mutex:
            holder = self._holders.get(me)
            if holder is None or holder.mode != WRITE:
                raise self._not_holding(me, "a write lock")
            holder.writes -= 1
            if holder.writes:
                return
            if holder.reads:
                # Its read lock outlives the write lock: it stays an owner, as a reader.
                holder.mode = READ
                granted = self._queue.downgrade(holder.ticket)
            else:
                del self._holders[me]
                granted = self._queue.release(holder.ticket)
            self._hand_to(granted)

    def acquire_read_lock(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take a read lock (re-entrant; allowed to the writer); True if taken.

        Waits while a writer holds the lock or one that arrived earlier waits. ``blocking=False``
        or ``timeout=`` return False instead of waiting (longer).
        """
        wait = check_timeout(blocking, timeout)
        me = self._current_thread()
        holder = self._holders.get(me)
        if holder is not None:
            holder.reads += 1
            return True
        if me in self._pending_writers:
            raise DeadlockError(f"{self!r}: writer {me} can not acquire a read lock while waiting for the write lock")
        return self._acquire(me, READ, bool(blocking), wait)

    def release_read_lock(self) -> None:
        """Release a read lock once; the last reader out hands the lock to the next in line."""
        me = self._current_thread()
        with self._mutex:
            holder = self._holders.get(me)
            if holder is None or holder.reads == 0:
                raise self._not_holding(me, "a read lock")
            holder.reads -= 1
            if holder.reads or holder.mode == WRITE:
                return
            del self._holders[me]
            self._hand_to(self._queue.release(holder.ticket))

    @contextlib.contextmanager
    def read_lock(self) -> Generator[ReaderWriterLock, None, None]:
        """``with rw.read_lock():`` -- a read lock for the block."""
        self.acquire_read_lock()
        try:
            yield self
        finally:
            self.release_read_lock()

    @contextlib.contextmanager
    def write_lock(self) -> Generator[ReaderWriterLock, None, None]:
        """``with rw.write_lock():`` -- the write lock for the block (re-entrant)."""
        self.acquire_write_lock()
        try:
            yield self
        finally:
            self.release_write_lock()

    # -- waiting and handoff ----------------------------------------------------------------------

    def _acquire(self, me: Hashable, mode: Mode, blocking: bool, wait: float | None) -> bool:
        parker = _primitives.new_parker()
        with self._mutex:
            if not blocking and not self._queue.grantable(mode):
                return False
            ticket = self._queue.request(mode)
            if self._queue.owns(ticket):
                self._holders[me] = _Holder(ticket, mode)
                return True
            self._waiters[ticket] = _Waiter(parker, me, mode)
            if mode == WRITE:
                self._pending_writers[me] = self._pending_writers.get(me, 0) + 1
        try:
            limit = _primitives.timeout_max()
            granted = parker.acquire(True, -1 if wait is None or wait > limit else wait)
        except BaseException:
            self._abandon(ticket)
            raise
        if granted:
            return True
        with self._mutex:
            if self._queue.owns(ticket):
                # Granted in the instant the timeout fired: report success, never strand it.
                return True
            # Leaving the queue may admit the readers behind a writer that gave up (core rule 5).
            self._forget_waiter(ticket)
            self._hand_to(self._queue.cancel(ticket))
        return False

    def _abandon(self, ticket: int) -> None:
        """A waiter left by an exception (greenlet kill, KeyboardInterrupt) while queued or just
        granted: whatever it had passes on, as on release."""
        with self._mutex:
            if self._queue.owns(ticket):
                for me, holder in list(self._holders.items()):
                    if holder.ticket == ticket:
                        del self._holders[me]
            elif ticket in self._queue:
                self._forget_waiter(ticket)
            else:
                return
            self._hand_to(self._queue.cancel(ticket))

    def _forget_waiter(self, ticket: int) -> None:
        waiter = self._waiters.pop(ticket)
        if waiter.mode == WRITE:
            left = self._pending_writers[waiter.me] - 1
            if left:
                self._pending_writers[waiter.me] = left
            else:
                del self._pending_writers[waiter.me]

    def _hand_to(self, granted: tuple[int, ...]) -> None:
        """Make each granted waiter an owner, then wake it. Caller holds _mutex."""
        for ticket in granted:
            waiter = self._waiters[ticket]
            self._forget_waiter(ticket)
            self._holders[waiter.me] = _Holder(ticket, waiter.mode)
            waiter.parker.release()

    def _not_holding(self, me: Hashable, what: str) -> RuntimeError:
        if self._queue.mode is None:
            return NotHeldError(f"release of {self!r}, which is not held")
        return NotOwnerError(f"{self!r}: {me} does not own {what}")

    def __repr__(self) -> str:
        state = {WRITE: "held by a writer", READ: "held by readers", None: "free"}[self._queue.mode]
        holders = len(self._queue.owners)
        count = f" ({holders})" if self._queue.mode == READ else ""
        label = f" {self.name!r}" if self.name is not None else ""
        return f"<fairlock.rwlock.ReaderWriterLock{label} {state}{count}, {len(self._queue)} waiting>"
