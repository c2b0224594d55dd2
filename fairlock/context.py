"""Lanes set by the calling context.

``with fairlock.lane("high"):`` makes every fairlock lock acquired inside the block, by the same
thread or green thread, queue in that lane, without touching the code that takes the locks
(nova's ``refresh_cache`` sites keep calling ``lockutils.lock(name)``). It is a
``contextvars.ContextVar``, so it is per thread, per asyncio task, and per greenlet (greenlet >= 1.0
gives every greenlet its own context).

Precedence: an explicit ``lane=`` argument wins over the context. A lock whose lanes do not
include the context's lane uses its own default lane: the context is a hint that applies to the
locks that know the lane, so one ``fairlock.lane("migration")`` around a migration cannot break
an unrelated lock with other lanes. An explicit ``lane=`` that the lock does not know is an error.

A hint that no lock knows is usually a typo (``fairlock.lane("migraton")``), which would silently
disable the lane: the locks count such requests (``statistics().lane_typos``) and
:func:`note_unknown_lane` logs one WARNING per (lane, lock's lane set) on the ``fairlock.lanes``
logger.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from contextlib import ContextDecorator
from typing import Any, TypeVar

from typing import TYPE_CHECKING

from ._core.lanes import check_lane_name

if TYPE_CHECKING:
    from ._core import Lanes

__all__ = ["lane", "current_lane", "resolve_lane", "note_unknown_lane"]

LOG = logging.getLogger("fairlock.lanes")

#: (context lane, a lock's lane names) pairs already warned about. Bounded: a program that makes
#: up lane names at run time cannot grow it without limit (past the bound nothing more is logged;
#: the statistics still count every request).
_warned: set[tuple[str, tuple[str, ...]]] = set()
_WARNED_MAX = 1024
_warned_mutex = threading.Lock()

_LANE: contextvars.ContextVar[str | None] = contextvars.ContextVar("fairlock_lane", default=None)

F = TypeVar("F", bound=Callable[..., Any])


def current_lane() -> str | None:
    """The lane set by the innermost active ``fairlock.lane(...)`` block, or None."""
    return _LANE.get()


def resolve_lane(lanes: Lanes, explicit: str | None) -> str:
    """The lane a request queues in: ``explicit`` (must be known), else the context's lane if the
    lock knows it, else the lock's default lane."""
    if explicit is not None:
        lanes.rank(explicit)
        return explicit
    context_lane = _LANE.get()
    return context_lane if lanes.knows(context_lane) else lanes.default


def note_unknown_lane(lanes: Lanes, lock_name: str | None) -> None:
    """Log once per (context lane, lane set) that a lock queued a request in its default lane
    because it does not have the lane of the caller's :func:`lane` block.

    Called by the locks where they count ``lane_typos``, outside their internal mutex (logging
    may block or switch green threads).
    """
    context_lane = _LANE.get()
    if context_lane is None:
        return
    key = (context_lane, lanes.names)
    with _warned_mutex:
        if key in _warned or len(_warned) >= _WARNED_MAX:
            return
        _warned.add(key)
    LOG.warning(
        'fairlock.lane(%r) is not a lane of lock "%s" (its lanes: %s), so the request queued in '
        "its default lane %r. A typo? Each entry point's lanes are listed in the fairness docs. "
        "Logged once per lane and lane set; statistics().lane_typos counts every such request.",
        context_lane, lock_name, ", ".join(lanes.names), lanes.default,
    )


class lane(ContextDecorator):
    """Context manager and decorator: locks taken inside queue in ``name``.

    >>> import fairlock
    >>> with fairlock.lane("high"):
    ...     fairlock.current_lane()
    'high'
    """

    def __init__(self, name: str) -> None:
        self.name = check_lane_name(name)
        self._tokens: list[contextvars.Token[str | None]] = []

    def _recreate_cm(self) -> lane:
        # A fresh object per decorated call, so concurrent calls never share a token stack.
        return lane(self.name)

    def __enter__(self) -> lane:
        self._tokens.append(_LANE.set(self.name))
        return self

    def __exit__(self, *exc: object) -> None:
        _LANE.reset(self._tokens.pop())

    def __repr__(self) -> str:
        return f"fairlock.lane({self.name!r})"
