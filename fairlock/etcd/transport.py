"""The narrow interface between the distributed lock and an etcd client.

The lock algorithm (``fairlock.etcd.lock``) speaks only this interface; adapters translate it to
a real client (``etcd3gw`` over etcd's HTTP gateway: ``fairlock.etcd.gateway``; the gRPC
``etcd3`` API: ``fairlock.etcd.grpc``) or to the in-memory model used by property tests
(``fairlock.testing.etcd_model``). Adapters only transport: they make no locking decision.

Keys and values are ``bytes``. Revisions are etcd's: every write transaction gets the next
revision; a key's ``create_revision`` is fixed for its life, ``mod_revision`` is its last write.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import FairlockError

__all__ = [
    "KeyValue",
    "Compare",
    "Put",
    "Delete",
    "Range",
    "TxnResult",
    "LeaseTimeToLive",
    "WatchEvent",
    "Watch",
    "Transport",
    "ForwardingTransport",
    "EtcdError",
    "EtcdUnavailable",
    "EtcdAuthError",
    "LeaseNotFound",
    "WatchCompacted",
    "TxnOutcomeUnknown",
    "prefix_end",
]


class EtcdError(FairlockError):
    """Any failure talking to etcd (base class)."""


class EtcdUnavailable(EtcdError, ConnectionError):
    """No endpoint answered (connection refused, timeout, no quorum) within the configured time."""


class EtcdAuthError(EtcdError, PermissionError):
    """Wrong credentials, missing permissions, or a TLS verification failure."""


class LeaseNotFound(EtcdError):
    """The lease expired or was revoked (the session is lost)."""


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted away; re-read and watch again."""


class TxnOutcomeUnknown(EtcdUnavailable):
    """A writing txn reached (or may have reached) etcd, but its answer was lost.

    The connection broke or timed out after the request was sent, or etcd answered that the
    proposal timed out: the txn may or may not have been applied, so the transport does not
    retry it. Re-read the keys the txn would have written (e.g. is our key there, at which
    create revision?) before deciding what to do. Subclass of EtcdUnavailable, so code that
    only handles "etcd is unreachable" still treats it as that.
    """


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix`` (etcd's convention)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """``target`` of ``key`` (or of every key in [key, range_end)) ``op`` ``value``.

    For a range, etcd applies the comparison to every key in it; an empty range compares as a
    missing key (create_revision = mod_revision = version = 0), so
    ``Compare(prefix, "version", "=", 0, range_end=prefix_end(prefix))`` means "no key under prefix".
    """

    key: bytes
    target: Literal["create_revision", "mod_revision", "version", "value", "lease"]
    op: Literal["=", "!=", "<", ">"]
    value: int | bytes
    range_end: bytes | None = None


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: bytes
    range_end: bytes | None = None


@dataclass(frozen=True)
class Range:
    key: bytes
    range_end: bytes | None = None


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    #: The store's revision after the transaction (the txn's own revision if it wrote).
    revision: int
    #: One entry per op of the branch taken: the KeyValues for a Range, [] for Put/Delete.
    responses: tuple[tuple[KeyValue, ...], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LeaseTimeToLive:
    """What etcd says of a live lease (its LeaseTimeToLive call)."""

    id: int
    #: Whole seconds left before etcd expires the lease (etcd rounds down).
    ttl: int
    #: The TTL the lease was granted with (each keepalive sets ``ttl`` back to it).
    granted_ttl: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue  # for DELETE: key and mod_revision (the deleting revision) are set


class Watch(abc.ABC):
    """A watch on one key or a key range. Created (registered with etcd) when returned."""

    @abc.abstractmethod
    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, or None if ``timeout`` passed first. Raises EtcdError if the watch broke."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the watch; idempotent; a blocked ``get`` returns None."""


class Transport(abc.ABC):
    """What the distributed lock needs from etcd, and nothing more."""

    @abc.abstractmethod
    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete | Range],
            failure: Sequence[Put | Delete | Range] = ()) -> TxnResult:
        """One atomic etcd transaction (one write if any branch op writes)."""

    @abc.abstractmethod
    def get_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KeyValue]]:
        """(store revision, key-values sorted by key) for one key or a range; no write."""

    @abc.abstractmethod
    def watch(self, key: bytes, start_revision: int, range_end: bytes | None = None, *,
              no_put: bool = False, wakeup: Any = None) -> Watch:
        """Watch from ``start_revision`` on; returns once etcd has confirmed the watch is created.

        ``no_put``: deliver DELETE events only (etcd's NOPUT filter), so a waiter watching the
        owner key is not woken by ordinary handoffs. ``wakeup``: an object with ``set()`` (e.g. a
        ``threading.Event``) that the watch sets after queuing each event and when it breaks, so
        one thread can wait on several watches at once.
        """

    @abc.abstractmethod
    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease; returns (lease id, granted ttl in seconds)."""

    @abc.abstractmethod
    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns the remaining ttl. Raises LeaseNotFound if it is gone."""

    @abc.abstractmethod
    def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease (deleting its keys); a missing lease is not an error."""

    @abc.abstractmethod
    def lease_time_to_live(self, lease_id: int) -> LeaseTimeToLive | None:
        """Time left of a lease, without refreshing it; None if it expired, was revoked or never
        existed. Read-only (for observers such as ``fairlock inspect``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and stop background threads; idempotent."""


class ForwardingTransport(Transport):
    """Passes every call on to ``inner``: subclass it and override only the calls to intercept
    (counting, recording, holding a write back to deliver it late in a fault test)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete | Range],
            failure: Sequence[Put | Delete | Range] = ()) -> TxnResult:
        return self.inner.txn(compare, success, failure)

    def get_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KeyValue]]:
        return self.inner.get_range(key, range_end)

    def watch(self, key: bytes, start_revision: int, range_end: bytes | None = None, *,
              no_put: bool = False, wakeup: Any = None) -> Watch:
        return self.inner.watch(key, start_revision, range_end, no_put=no_put, wakeup=wakeup)

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        return self.inner.lease_grant(ttl)

    def lease_keepalive(self, lease_id: int) -> int:
        return self.inner.lease_keepalive(lease_id)

    def lease_revoke(self, lease_id: int) -> None:
        self.inner.lease_revoke(lease_id)

    def lease_time_to_live(self, lease_id: int) -> LeaseTimeToLive | None:
        return self.inner.lease_time_to_live(lease_id)

    def close(self) -> None:
        self.inner.close()
