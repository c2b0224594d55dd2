"""fairlock: fair locks for OpenStack-sized systems.

Fairness, in one sentence: the next owner is the oldest waiter of the highest-priority non-empty
lane, except that a waiter already overtaken ``max_bypass`` (K) times is served before anyone who
arrived after it.
"""

from ._core import DEFAULT_LANE, DEFAULT_LANES, DEFAULT_MAX_BYPASS, GRANT_RULE, Lanes
from .coalesce import ALONE, Coalescer, coalesced
from .context import current_lane, lane
from .errors import (
    AcquireTimeout,
    ArgumentTypeError,
    DeadlockError,
    FairlockError,
    InvalidArgumentError,
    NotHeldError,
    NotOwnerError,
    UnknownLaneError,
    UnknownTicketError,
)
from .local import Lock
from .protocol import FairLock, FairLockStatistics
from .registry import LockRegistry, get_lock, lock
from .stats import LaneStatistics, LockStatistics, NameStatistics

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LANE",
    "DEFAULT_LANES",
    "DEFAULT_MAX_BYPASS",
    "GRANT_RULE",
    "ALONE",
    "AcquireTimeout",
    "ArgumentTypeError",
    "Coalescer",
    "DeadlockError",
    "FairLock",
    "FairLockStatistics",
    "FairlockError",
    "InvalidArgumentError",
    "LaneStatistics",
    "Lanes",
    "Lock",
    "LockRegistry",
    "LockStatistics",
    "NameStatistics",
    "NotHeldError",
    "NotOwnerError",
    "UnknownLaneError",
    "UnknownTicketError",
    "coalesced",
    "current_lane",
    "get_lock",
    "lane",
    "lock",
]
