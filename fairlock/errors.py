"""The fairlock exception tree.

Every error fairlock raises on purpose derives from :class:`FairlockError`. Where callers of the
standard library expect a built-in exception (``RuntimeError`` when releasing an unheld lock,
``ValueError`` for a bad argument, ``TypeError`` for a wrong type), the fairlock class inherits
that built-in too, so ``except RuntimeError`` written for ``threading.Lock`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "FairlockError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "UnknownLaneError",
    "UnknownTicketError",
    "TicketOrderError",
    "NotHeldError",
    "NotOwnerError",
    "DeadlockError",
    "AcquireTimeout",
]


class FairlockError(Exception):
    """Base class of every error fairlock raises on purpose."""


class InvalidArgumentError(FairlockError, ValueError):
    """An argument has the right type but an unusable value (NaN timeout, empty name, ...)."""


class ArgumentTypeError(FairlockError, TypeError):
    """An argument has the wrong type."""


class UnknownLaneError(InvalidArgumentError):
    """A lane name that the lock was not configured with."""

    def __init__(self, lane: object, known: tuple[str, ...]) -> None:
        self.lane = lane
        self.known = known
        super().__init__(f"unknown lane {lane!r}; this lock has lanes {', '.join(known)}")


class UnknownTicketError(FairlockError, LookupError):
    """A ticket that is neither queued nor the owner (already granted and released, or cancelled)."""

    def __init__(self, ticket: object) -> None:
        self.ticket = ticket
        super().__init__(f"ticket {ticket!r} is neither queued nor the owner")


class TicketOrderError(InvalidArgumentError):
    """An externally issued ticket that is not newer than every ticket issued before it."""


class NotHeldError(FairlockError, RuntimeError):
    """Release of a lock that nobody holds."""


class NotOwnerError(FairlockError, RuntimeError):
    """Release by a thread (or ticket) that is not the owner."""


class DeadlockError(FairlockError, RuntimeError):
    """The owner of a non-reentrant lock tried to acquire it again and would wait forever."""


class AcquireTimeout(FairlockError, TimeoutError):
    """A context-manager acquire gave up (timeout or ``blocking=False``) without the lock."""
