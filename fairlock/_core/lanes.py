"""Lanes: the named priority classes of one lock.

What this module decides, and its invariants:

1. A lane set is a non-empty tuple of distinct, non-empty string names, highest priority first.
   The position of a name is its *rank*: rank 0 is served first.
2. Exactly one lane of the set is the default lane, used by requests that name no lane.
3. Lane names are checked here and only here: a non-string is an ``ArgumentTypeError``, an
   empty one an ``InvalidArgumentError`` (:func:`check_lane_name`), a name outside the set an
   ``UnknownLaneError`` (:meth:`Lanes.rank`). Everything else in fairlock that takes a lane name
   asks one of these.

It never reads a clock, starts a thread or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ArgumentTypeError, InvalidArgumentError, UnknownLaneError

__all__ = ["Lanes", "DEFAULT_LANES", "DEFAULT_LANE", "check_lane_name"]

#: The lanes of a lock created without ``lanes=``: highest priority first.
DEFAULT_LANES: tuple[str, ...] = ("high", "normal", "low")
#: The lane of a request that names none, when the lock was created without ``default_lane=``.
DEFAULT_LANE = "normal"


def check_lane_name(name: object, what: str = "lane name") -> str:
    """A lane name: a non-empty str (whether a lock has it is :meth:`Lanes.rank`'s question)."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"{what} must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidArgumentError(f"{what} must not be empty")
    return name


class Lanes:
    """An ordered set of lane names (highest priority first) with a default lane."""

    __slots__ = ("names", "default", "default_rank", "_rank")

    def __init__(self, names: Iterable[str] = DEFAULT_LANES, default: str | None = None) -> None:
        if isinstance(names, str):
            raise ArgumentTypeError("lanes must be a sequence of names, not a single string")
        try:
            names = tuple(names)
        except TypeError:
            raise ArgumentTypeError(f"lanes must be a sequence of names, got {type(names).__name__}") from None
        if not names:
            raise InvalidArgumentError("a lock needs at least one lane")
        for name in names:
            if not isinstance(name, str):
                raise ArgumentTypeError(f"lane names must be str, got {type(name).__name__}")
            if not name:
                raise InvalidArgumentError("lane names must not be empty")
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"lane names must be distinct: {names!r}")
        if default is None:
            default = DEFAULT_LANE if DEFAULT_LANE in names else names[len(names) // 2]
        self.names: tuple[str, ...] = names
        self._rank: dict[str, int] = {name: rank for rank, name in enumerate(names)}
        self.default_rank: int = self.rank(default)
        self.default: str = default

    def rank(self, lane: str) -> int:
        """The rank of ``lane`` (0 = highest priority); raises for a wrong type or unknown name."""
        if not isinstance(lane, str):
            raise ArgumentTypeError(f"lane must be a str, got {type(lane).__name__}")
        try:
            return self._rank[lane]
        except KeyError:
            raise UnknownLaneError(lane, self.names) from None

    def rank_or_default(self, lane: str | None) -> int:
        """The rank of ``lane``, or of the default lane when ``lane`` is None."""
        if lane is None:
            return self.default_rank
        return self.rank(lane)

    def knows(self, lane: object) -> bool:
        """True if ``lane`` is one of these lanes (any object may be asked)."""
        return isinstance(lane, str) and lane in self._rank

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Lanes):
            return NotImplemented
        return self.names == other.names and self.default == other.default

    def __hash__(self) -> int:
        return hash((self.names, self.default))

    def __repr__(self) -> str:
        return f"Lanes({self.names!r}, default={self.default!r})"
