"""Frozen statistics snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["LaneStatistics", "LockStatistics"]


def _frozen(mapping: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class LaneStatistics:
    """What happened in one lane since the lock was created."""

    waiting: int = 0
    #: Grants to waiters that had to queue in this lane (uncontended grants are not counted here).
    queued_grants: int = 0
    timeouts: int = 0
    cancels: int = 0
    wait_total: float = 0.0
    wait_max: float = 0.0


@dataclass(frozen=True)
class LockStatistics:
    """A consistent snapshot of one lock, taken under its internal mutex."""

    name: str | None
    #: Thread (or green thread) identity of the holder, None when free.
    owner: int | None
    #: The lane the owner queued in; None when free or when it took the lock without queuing.
    owner_lane: str | None
    #: All grants: uncontended ones plus handoffs.
    grants: int
    #: Grants made at release time to a queued waiter (direct handoff).
    handoffs: int
    #: The largest number of times any waiter was overtaken (never more than ``max_bypass``).
    max_overtaken: int
    max_bypass: int | None
    lanes: Mapping[str, LaneStatistics] = field(default_factory=_frozen)  # type: ignore[arg-type]

    @property
    def waiting(self) -> int:
        """Total queued waiters over all lanes."""
        return sum(lane.waiting for lane in self.lanes.values())

    @property
    def waiting_per_lane(self) -> Mapping[str, int]:
        return MappingProxyType({name: lane.waiting for name, lane in self.lanes.items()})

    @property
    def wait_total(self) -> Mapping[str, float]:
        return MappingProxyType({name: lane.wait_total for name, lane in self.lanes.items()})

    @property
    def wait_max(self) -> Mapping[str, float]:
        return MappingProxyType({name: lane.wait_max for name, lane in self.lanes.items()})
