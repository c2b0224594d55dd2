"""The pure fairness core: every decision about who owns a fairlock lock next.

:class:`FairQueue` decides for the exclusive locks, :class:`RWQueue` for the reader/writer lock.

No threads, no I/O, no clock reads, no randomness. The local lock (``fairlock.local``) and the
distributed lock consult :class:`FairQueue` for every grant and only wait or transport.
"""

from .lanes import DEFAULT_LANE, DEFAULT_LANES, Lanes
from .queue import (
    DEFAULT_MAX_BYPASS,
    GRANT_RULE,
    FairQueue,
    GrantPlan,
    QueueState,
    WaiterState,
    check_max_bypass,
    grant_bound,
    plan_grant,
)
from .rwqueue import READ, WRITE, RWQueue

__all__ = [
    "DEFAULT_LANE",
    "DEFAULT_LANES",
    "DEFAULT_MAX_BYPASS",
    "GRANT_RULE",
    "FairQueue",
    "GrantPlan",
    "Lanes",
    "QueueState",
    "READ",
    "RWQueue",
    "WRITE",
    "WaiterState",
    "check_max_bypass",
    "grant_bound",
    "plan_grant",
]
