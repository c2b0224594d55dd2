"""The holders and queues of etcd locks as etcd has them now, read without writing anything.

:func:`read_locks` is the one place outside the lock that reads where a lock keeps its holder
and its waiters: it asks the key schema (:mod:`fairlock.etcd.keys`) for the keys
(:func:`~fairlock.etcd.keys.lock_keys`) and the values' codec
(:func:`~fairlock.etcd.keys.decode_value`), so that a change of the
lock's key schema changes this function and nothing that uses it (``fairlock inspect``).

1. One linearizable range read: every lock under the prefix (or one lock) at one revision.
2. A waiter's stored state is handed over as stored: who it is, and what the core judges
   (:meth:`fairlock._core.Policy.snapshot` reads it; nothing here interprets lanes or counts).
3. Keys of a lock that are neither its holder nor a waiter (future bookkeeping) are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .keys import decode_value, lock_keys, lock_name_from_key
from .transport import KeyValue, Transport, prefix_end

__all__ = ["Party", "LockState", "LocksRead", "read_locks"]


@dataclass(frozen=True)
class Party:
    """A holder or a waiter, as its key records it."""

    key: bytes
    #: The etcd lease its key is attached to (the session of its process); 0 for none.
    lease: int
    host: str | None
    pid: int | None
    thread: str | None
    #: The session (lease id in hex) the process wrote, as it wrote it.
    session: str | None
    #: The writer's wall clock (seconds since the epoch) when it queued, or when it was granted.
    since: float | None
    #: The value as stored; for a waiter, the policy state that the core judges.
    stored: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Holder(Party):
    #: The grant's fencing token (the owner key's mod revision).
    fencing_token: int = 0
    #: The lane it was granted in, as stored.
    lane: str | None = None


@dataclass(frozen=True)
class Waiter(Party):
    #: Its place in arrival order (the waiter key's create revision).
    ticket: int = 0


@dataclass(frozen=True)
class LockState:
    name: str
    holder: Holder | None
    #: Oldest first (ticket order).
    waiters: tuple[Waiter, ...]


@dataclass(frozen=True)
class LocksRead:
    """What one read found: the locks, in name order, and where and when it read."""

    prefix: bytes
    #: The key range read: [start, end).
    start: bytes
    end: bytes
    revision: int
    locks: tuple[LockState, ...]


def read_locks(transport: Transport, prefix: bytes, name: str | None = None) -> LocksRead:
    """Every lock under ``prefix`` with a holder or a waiter (or only lock ``name``)."""
    if name is None:
        start = prefix + b"/locks/"
    else:
        owner_key, _, _ = lock_keys(prefix, name)
        start = owner_key[: -len(b"owner")]  # the lock's own keys, and no other lock's
    end = prefix_end(start)
    revision, kvs = transport.get_range(start, end)
    grouped: dict[str, list[KeyValue]] = {}
    for kv in kvs:
        lock_name = lock_name_from_key(prefix, kv.key)
        if lock_name is not None:
            grouped.setdefault(lock_name, []).append(kv)
    locks = []
    for lock_name in sorted(grouped):
        owner_key, waiter_prefix, _ = lock_keys(prefix, lock_name)
        holder = None
        waiters = []
        for kv in grouped[lock_name]:
            if kv.key == owner_key:
                value = decode_value(kv)
                lane = value.get("lane")
                holder = Holder(**_party(kv, value), fencing_token=kv.mod_revision,
                                lane=lane if isinstance(lane, str) else None)
            elif kv.key.startswith(waiter_prefix):
                waiters.append(Waiter(**_party(kv, decode_value(kv)), ticket=kv.create_revision))
        if holder is not None or waiters:
            waiters.sort(key=lambda w: w.ticket)
            locks.append(LockState(lock_name, holder, tuple(waiters)))
    return LocksRead(prefix, start, end, revision, tuple(locks))


def _party(kv: KeyValue, value: dict[str, Any]) -> dict[str, Any]:
    def text(field_name: str) -> str | None:
        found = value.get(field_name)
        return found if isinstance(found, str) else None

    pid, since = value.get("pid"), value.get("since")
    return {
        "key": kv.key, "lease": kv.lease, "host": text("host"),
        "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        "thread": text("thread"), "session": text("session"),
        "since": float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else None,
        "stored": value,
    }
