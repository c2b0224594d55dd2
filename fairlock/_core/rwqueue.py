"""The reader/writer core: who holds a fair reader/writer lock next.

This module decides every grant of :class:`fairlock.rwlock.ReaderWriterLock`; the adapter only
maps threads to tickets, parks and wakes. Its rules:

1. **Tickets** are positive integers issued in arrival order; each is a *read* or a *write*
   request. A ticket is in exactly one state: queued, an owner, or gone.
2. **Owners** are nobody, one writer, or any number of readers (a *batch*).
3. **Admission**: a request is granted at once only if nobody is queued and it is compatible with
   the owners (a write needs no owners; a read needs no writer). So readers join readers only
   while no writer waits: a later reader never overtakes a waiting writer.
4. **Handoff**: whenever the owners change (a release, a cancel, a downgrade), the head of the
   queue is granted while it is compatible: a writer alone once the owners are gone, or the head
   reader together with every reader queued behind it up to the next writer. Grants therefore go
   in arrival order, writers one by one and readers in batches; the releaser learns who was
   granted and wakes exactly those.
5. **Invariant** after every operation: the queue is empty or its head is incompatible with the
   owners. In particular the lock is never free while anyone is queued, and a writer that gives
   up while readers hold never leaves the readers behind it parked behind nobody (rule 4 runs on
   cancel too).
6. **Downgrade**: the writer may turn into a reader (its nested read outlives its write); then
   the readers at the head of the queue join it, as on release.
7. Illegal operations (releasing a ticket that is not an owner, cancelling an unknown ticket, a
   downgrade of a non-writer) raise and change nothing.

It never reads a clock, starts a thread, does I/O or draws a random number.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from ..errors import ArgumentTypeError, InvalidArgumentError, NotOwnerError, UnknownTicketError

__all__ = ["READ", "WRITE", "Mode", "RWQueue"]

READ: Literal["r"] = "r"
WRITE: Literal["w"] = "w"
Mode = Literal["r", "w"]


def _check_mode(mode: object) -> Mode:
    if mode == READ:
        return READ
    if mode == WRITE:
        return WRITE
    if not isinstance(mode, str):
        raise ArgumentTypeError(f"mode must be 'r' or 'w', got {type(mode).__name__}")
    raise InvalidArgumentError(f"mode must be 'r' (read) or 'w' (write), got {mode!r}")


class RWQueue:
    """The deterministic state machine of a fair reader/writer lock. See the module docstring."""

    __slots__ = ("_queue", "_owners", "_owner_mode", "_last_ticket", "_queued_writers", "grants")

    def __init__(self) -> None:
        #: queued ticket -> mode, in arrival order
        self._queue: OrderedDict[int, Mode] = OrderedDict()
        self._owners: set[int] = set()
        self._owner_mode: Mode | None = None
        self._last_ticket = 0
        self._queued_writers = 0
        #: Number of grants made so far (each reader of a batch counts once).
        self.grants = 0

    # -- queries ----------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode | None:
        """``'w'`` while a writer holds, ``'r'`` while readers hold, None when free."""
        return self._owner_mode

    @property
    def owners(self) -> frozenset[int]:
        """The tickets holding the lock now (several readers, or one writer)."""
        return frozenset(self._owners)

    def owns(self, ticket: int) -> bool:
        """True if ``ticket`` holds the lock now."""
        return ticket in self._owners

    def __len__(self) -> int:
        """Queued tickets (owners not counted)."""
        return len(self._queue)

    def __contains__(self, ticket: object) -> bool:
        """True if ``ticket`` is queued (not an owner)."""
        return ticket in self._queue

    @property
    def queued_writers(self) -> int:
        """How many queued tickets want to write."""
        return self._queued_writers

    def grantable(self, mode: Mode) -> bool:
        """Whether a request of ``mode`` made now would be granted at once (rule 3)."""
        return not self._queue and self._compatible(_check_mode(mode))

    # -- operations -------------------------------------------------------------------------------

    def request(self, mode: Mode) -> int:
        """A new ticket of ``mode``: granted at once (``owns(ticket)``) or queued at the tail."""
        mode = _check_mode(mode)
        self._last_ticket += 1
        ticket = self._last_ticket
        if not self._queue and self._compatible(mode):
            self._grant(ticket, mode)
        else:
            self._queue[ticket] = mode
            if mode == WRITE:
                self._queued_writers += 1
        return ticket

    def release(self, ticket: int) -> tuple[int, ...]:
        """An owner leaves; returns the tickets granted because of it (already owners)."""
        if ticket not in self._owners:
            if ticket in self._queue:
                raise NotOwnerError(f"ticket {ticket!r} is queued, not an owner")
            raise UnknownTicketError(ticket)
        self._owners.discard(ticket)
        if not self._owners:
            self._owner_mode = None
        return self._admit()

    def cancel(self, ticket: int) -> tuple[int, ...]:
        """Withdraw ``ticket``, queued or already granted; returns the tickets granted because of it.

        An owner that gives up before it ran passes the lock on exactly as a release does.
        """
        if ticket in self._owners:
            return self.release(ticket)
        mode = self._queue.pop(ticket, None)
        if mode is None:
            raise UnknownTicketError(ticket)
        if mode == WRITE:
            self._queued_writers -= 1
        # Rule 5: the waiter behind it may be compatible with the owners now.
        return self._admit()

    def downgrade(self, ticket: int) -> tuple[int, ...]:
        """The writer ``ticket`` becomes a reader; returns the readers that join it."""
        if self._owner_mode != WRITE or ticket not in self._owners:
            raise NotOwnerError(f"ticket {ticket!r} is not the writer")
        self._owner_mode = READ
        return self._admit()

    # -- the rule ---------------------------------------------------------------------------------

    def _compatible(self, mode: Mode) -> bool:
        if self._owner_mode is None:
            return True
        return mode == READ and self._owner_mode == READ

    def _grant(self, ticket: int, mode: Mode) -> None:
        self._owners.add(ticket)
        self._owner_mode = mode
        self.grants += 1

    def _admit(self) -> tuple[int, ...]:
        """Rule 4: grant from the head of the queue while it is compatible with the owners."""
        granted: list[int] = []
        while self._queue:
            ticket, mode = next(iter(self._queue.items()))
            if not self._compatible(mode):
                break
            del self._queue[ticket]
            if mode == WRITE:
                self._queued_writers -= 1
            self._grant(ticket, mode)
            granted.append(ticket)
            if mode == WRITE:
                break
        return tuple(granted)

    def __repr__(self) -> str:
        return (
            f"<RWQueue mode={self._owner_mode} owners={len(self._owners)} queued={len(self._queue)} "
            f"queued_writers={self._queued_writers}>"
        )
