"""The pure fairness core: every decision about who owns a fairlock lock next.

No threads, no I/O, no clock reads, no randomness. For the exclusive locks :func:`decide` (in
``policy``) is the grant rule's one entry point; :class:`FairQueue` keeps a local lock's state and
calls it at every handoff, and the distributed lock calls it on the waiters it reads from etcd.
:class:`RWQueue` decides for the reader/writer lock (arrival order, readers in batches). The
adapters only wait or transport.
"""

from .lanes import DEFAULT_LANE, DEFAULT_LANES, Lanes
from .policy import DEFAULT_MAX_BYPASS, Grant, Policy, Snapshot, WaiterPolicy, check_max_bypass, decide, successor
from .queue import GRANT_RULE, FairQueue, QueueState, WaiterState, grant_bound
from .rwqueue import READ, WRITE, RWQueue

__all__ = [
    "DEFAULT_LANE",
    "DEFAULT_LANES",
    "DEFAULT_MAX_BYPASS",
    "GRANT_RULE",
    "FairQueue",
    "Grant",
    "Lanes",
    "Policy",
    "QueueState",
    "READ",
    "RWQueue",
    "WRITE",
    "Snapshot",
    "WaiterPolicy",
    "WaiterState",
    "check_max_bypass",
    "decide",
    "grant_bound",
    "successor",
]
