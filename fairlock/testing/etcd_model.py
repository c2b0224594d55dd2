"""An in-memory model of etcd's revisions, leases and watches, for property tests of the lock.

1. One :class:`EtcdModel` is the store ("the etcd cluster"); each :class:`ModelTransport` is a
   client of it (one per simulated process), speaking the same
   :class:`~fairlock.etcd.transport.Transport` interface as the real gateway, so one contract
   suite runs against both (tests/test_etcd_transport.py).
2. Revisions: the store starts at revision 1; every transaction that changes something takes the
   next revision, shared by all its events; a key's ``create_revision`` is fixed for its life,
   ``mod_revision`` is its last write, ``version`` counts its writes. A transaction that changes
   nothing (failed compares with a read-only branch, a delete of nothing) keeps the revision.
3. Compares follow etcd 3.4's ``applyCompare``: over a range every key must satisfy it; an empty
   range (or missing key) compares as a key with all fields zero, except that a ``value`` compare
   on no key is always false.
4. Leases run on an injectable clock: :meth:`EtcdModel.advance` moves it and expires every due
   lease, deleting its keys in one revision (DELETE events), as etcd's lessor does. TTLs below
   ``min_ttl`` are raised to it (etcd's default election timeout gives 2 s).
5. Watches replay the history log from their start revision, then receive live events; a start
   revision at or below :meth:`EtcdModel.compact`'s revision makes ``get`` raise WatchCompacted.
6. Deterministic: no threads, no real time. ``Watch.get(timeout)`` blocks on a condition made
   from ``threading`` when the watch is created, so threaded tests (and green threads under
   eventlet) can wait on it; ``timeout=0`` never blocks.
7. Fault injection: :meth:`ModelTransport.fail_next` makes the next call of a method raise (a
   txn optionally after being applied: ``TxnOutcomeUnknown`` with the write done);
   :meth:`EtcdModel.break_watches` breaks every open watch, as a lost stream would.
"""

from __future__ import annotations

import bisect
import math
import threading as _threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentTypeError, InvalidArgumentError
from ..etcd._endpoints import QueuedWatch, check_lease_id
from ..etcd.transport import (
    Compare,
    Delete,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    LeaseTimeToLive,
    Put,
    Range,
    Transport,
    TxnResult,
    Watch,
    WatchCompacted,
    WatchEvent,
)

__all__ = ["EtcdModel", "ModelTransport"]

_FIRST_LEASE_ID = 0x694D00000000  # looks like an etcd lease id; ids then count up


def _in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    """etcd's key selection: one key; [start, end); or every key >= start when end is b"\\0"."""
    if end is None:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


def _check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise ArgumentTypeError(f"{name} must be bytes, got {type(value).__name__}")
    return value


def _compare_one(kv: KeyValue, c: Compare) -> bool:
    actual: int | bytes = getattr(kv, c.target)
    want = c.value
    if c.op == "=":
        return actual == want
    if c.op == "!=":
        return actual != want
    if c.op == "<":
        return actual < want  # type: ignore[operator]
    return actual > want  # type: ignore[operator]


@dataclass
class _Lease:
    id: int
    ttl: int
    expires_at: float


class EtcdModel:
    """The shared store. ``clock`` (seconds) defaults to a manual clock moved by :meth:`advance`."""

    def __init__(self, *, clock: Callable[[], float] | None = None, min_ttl: int = 2) -> None:
        self._manual = 0.0
        self._clock = clock
        self.min_ttl = min_ttl
        self.revision = 1
        self.compact_revision = 0
        self._kvs: dict[bytes, KeyValue] = {}
        self._history: list[tuple[int, WatchEvent]] = []  # (revision, event), revision order
        self._leases: dict[int, _Lease] = {}
        self._next_lease = _FIRST_LEASE_ID
        self._watches: list[_ModelWatch] = []
        self._mutex = _threading.RLock()

    # -- clock and leases --

    def now(self) -> float:
        """The model's clock (seconds)."""
        return self._manual + (self._clock() if self._clock is not None else 0.0)

    def advance(self, seconds: float) -> None:
        """Move the clock forward and expire every lease that is due (oldest deadline first)."""
        if seconds < 0:
            raise InvalidArgumentError("time only moves forward")
        with self._mutex:
            self._manual += seconds
            self._expire_due()

    def _expire_due(self) -> None:
        now = self.now()
        for lease in sorted(self._leases.values(), key=lambda le: (le.expires_at, le.id)):
            if lease.expires_at <= now:
                self._revoke(lease.id)

    def _revoke(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        keys = sorted(k for k, kv in self._kvs.items() if kv.lease == lease_id)
        if keys:
            self._commit([self._delete_event(k, self.revision + 1) for k in keys])

    def leases(self) -> dict[int, float]:
        """Live lease ids and their remaining seconds (for assertions)."""
        with self._mutex:
            self._expire_due()
            return {i: le.expires_at - self.now() for i, le in self._leases.items()}

    # -- history --

    def compact(self, revision: int | None = None) -> None:
        """Forget history below ``revision`` (default: the current revision), as etcd does."""
        with self._mutex:
            revision = self.revision if revision is None else revision
            if not self.compact_revision < revision <= self.revision:
                raise InvalidArgumentError(f"cannot compact at {revision}")
            self.compact_revision = revision
            cut = bisect.bisect_left([r for r, _ in self._history], revision)
            del self._history[:cut]

    def break_watches(self, error: EtcdError | None = None) -> None:
        """Break every open watch (their ``get`` raises), as a lost stream or member would."""
        with self._mutex:
            watches = list(self._watches)
        for w in watches:
            w._break(error or EtcdUnavailable("watch stream broke (model)"))

    def keys(self) -> dict[bytes, KeyValue]:
        """A snapshot of the store (for assertions)."""
        with self._mutex:
            self._expire_due()
            return dict(self._kvs)

    # -- writes --

    def _delete_event(self, key: bytes, revision: int) -> WatchEvent:
        return WatchEvent("DELETE", KeyValue(key=key, value=b"", create_revision=0,
                                             mod_revision=revision, version=0, lease=0))

    def _commit(self, events: list[WatchEvent]) -> None:
        """Apply events (all of one new revision) to the store, the history and the watches."""
        if not events:
            return
        self.revision += 1
        for ev in events:
            if ev.type == "PUT":
                self._kvs[ev.kv.key] = ev.kv
            else:
                self._kvs.pop(ev.kv.key, None)
            self._history.append((self.revision, ev))
        for w in list(self._watches):
            w._offer(events)

    def _range(self, key: bytes, end: bytes | None, view: dict[bytes, KeyValue]) -> tuple[KeyValue, ...]:
        return tuple(view[k] for k in sorted(view) if _in_range(k, key, end))

    def _check_compare(self, c: Compare) -> None:
        if not isinstance(c, Compare):
            raise ArgumentTypeError(f"compares are Compare, got {type(c).__name__}")
        _check_bytes("Compare.key", c.key)
        if c.range_end is not None:
            _check_bytes("Compare.range_end", c.range_end)
        if c.target == "value":
            _check_bytes("Compare.value for target 'value'", c.value)
        elif c.target in ("create_revision", "mod_revision", "version", "lease"):
            if isinstance(c.value, bool) or not isinstance(c.value, int):
                raise ArgumentTypeError(f"Compare.value for target {c.target!r} must be an int")
        else:
            raise InvalidArgumentError(f"unknown compare target {c.target!r}")
        if c.op not in ("=", "!=", "<", ">"):
            raise InvalidArgumentError(f"unknown compare op {c.op!r}")

    def _holds(self, c: Compare) -> bool:
        kvs = self._range(c.key, c.range_end, self._kvs)
        if not kvs:
            if c.target == "value":
                return False  # etcd: no way to compare a value that does not exist
            kvs = (KeyValue(key=c.key, value=b"", create_revision=0, mod_revision=0, version=0),)
        return all(_compare_one(kv, c) for kv in kvs)

    def _check_ops(self, ops: Sequence[Put | Delete | Range]) -> None:
        puts: set[bytes] = set()
        deletes: list[tuple[bytes, bytes | None]] = []
        for op in ops:
            if isinstance(op, Put):
                _check_bytes("Put.key", op.key)
                _check_bytes("Put.value", op.value)
                if op.key in puts:
                    raise EtcdError("etcdserver: duplicate key given in txn request")
                puts.add(op.key)
            elif isinstance(op, Delete):
                _check_bytes("Delete.key", op.key)
                if op.range_end is not None:
                    _check_bytes("Delete.range_end", op.range_end)
                deletes.append((op.key, op.range_end))
            elif isinstance(op, Range):
                _check_bytes("Range.key", op.key)
                if op.range_end is not None:
                    _check_bytes("Range.range_end", op.range_end)
            else:
                raise ArgumentTypeError(f"txn ops are Put, Delete or Range, got {type(op).__name__}")
        if any(_in_range(k, start, end) for k in puts for start, end in deletes):
            raise EtcdError("etcdserver: duplicate key given in txn request")

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete | Range],
            failure: Sequence[Put | Delete | Range] = ()) -> TxnResult:
        """A transaction, as :meth:`fairlock.etcd.transport.Transport.txn`."""
        with self._mutex:
            self._expire_due()
            for c in compare:
                self._check_compare(c)
            self._check_ops(success)  # etcd checks the form of both branches ...
            self._check_ops(failure)
            succeeded = all(self._holds(c) for c in compare)
            ops = success if succeeded else failure
            for op in ops:  # ... and the leases of the branch it takes only (checked on 3.4.23)
                if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                    raise LeaseNotFound("etcdserver: requested lease not found")
            new_revision = self.revision + 1
            view = dict(self._kvs)  # later ops of the txn see its earlier writes, as in etcd
            events: list[WatchEvent] = []
            responses: list[tuple[KeyValue, ...]] = []
            for op in ops:
                if isinstance(op, Range):
                    responses.append(self._range(op.key, op.range_end, view))
                    continue
                responses.append(())
                if isinstance(op, Put):
                    old = view.get(op.key)
                    kv = KeyValue(key=op.key, value=op.value,
                                  create_revision=old.create_revision if old else new_revision,
                                  mod_revision=new_revision,
                                  version=(old.version if old else 0) + 1, lease=op.lease)
                    view[op.key] = kv
                    events.append(WatchEvent("PUT", kv))
                else:
                    for kv in self._range(op.key, op.range_end, view):
                        del view[kv.key]
                        events.append(self._delete_event(kv.key, new_revision))
            self._commit(events)
            return TxnResult(succeeded=succeeded, revision=self.revision,
                             responses=tuple(responses))

    def get_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KeyValue]]:
        """Keys from ``key`` (to ``range_end``), as :meth:`fairlock.etcd.transport.Transport.get_range`."""
        _check_bytes("key", key)
        if range_end is not None:
            _check_bytes("range_end", range_end)
        with self._mutex:
            self._expire_due()
            return self.revision, list(self._range(key, range_end, self._kvs))

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of ``ttl`` seconds, as :meth:`fairlock.etcd.transport.Transport.lease_grant`."""
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise ArgumentTypeError("ttl must be an int number of seconds")
        if ttl < 1:
            raise InvalidArgumentError(f"ttl must be >= 1 second, got {ttl}")
        with self._mutex:
            self._expire_due()
            ttl = max(ttl, self.min_ttl)
            lease_id = self._next_lease
            self._next_lease += 1
            self._leases[lease_id] = _Lease(lease_id, ttl, self.now() + ttl)
            return lease_id, ttl

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease, as :meth:`fairlock.etcd.transport.Transport.lease_keepalive`."""
        with self._mutex:
            self._expire_due()
            lease = self._leases.get(lease_id)
            if lease is None:
                raise LeaseNotFound(f"lease {lease_id:x} expired or was revoked")
            lease.expires_at = self.now() + lease.ttl
            return lease.ttl

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys, as :meth:`fairlock.etcd.transport.Transport.lease_revoke`."""
        with self._mutex:
            self._expire_due()
            self._revoke(lease_id)

    def lease_time_to_live(self, lease_id: int) -> LeaseTimeToLive | None:
        """Time left of a lease, as :meth:`fairlock.etcd.transport.Transport.lease_time_to_live`
        (whole seconds, rounded down as etcd does)."""
        check_lease_id(lease_id)
        with self._mutex:
            self._expire_due()
            lease = self._leases.get(lease_id)
            if lease is None:
                return None
            return LeaseTimeToLive(lease_id, max(0, math.floor(lease.expires_at - self.now())), lease.ttl)

    def watch(self, key: bytes, start_revision: int, range_end: bytes | None = None, *,
              no_put: bool = False, wakeup: Any = None) -> _ModelWatch:
        """Watch keys from ``start_revision``, as :meth:`fairlock.etcd.transport.Transport.watch`."""
        _check_bytes("key", key)
        if range_end is not None:
            _check_bytes("range_end", range_end)
        with self._mutex:
            self._expire_due()
            start = int(start_revision) or self.revision + 1
            w = _ModelWatch(self, key, range_end, start, no_put, wakeup)
            if 0 < start <= self.compact_revision:
                w._break(WatchCompacted(
                    f"watch from revision {start}: history compacted up to revision "
                    f"{self.compact_revision}; re-read and watch again"))
                return w
            for revision, ev in self._history:
                if revision >= start:
                    w._offer([ev])
            self._watches.append(w)
            return w

    def _forget(self, w: _ModelWatch) -> None:
        with self._mutex:
            if w in self._watches:
                self._watches.remove(w)


class _ModelWatch(QueuedWatch):
    _drop_after_error = True

    def __init__(self, model: EtcdModel, key: bytes, range_end: bytes | None, start: int,
                 no_put: bool, wakeup: Any) -> None:
        super().__init__(wakeup)
        self.start_revision = start
        self._model = model
        self._key = key
        self._range_end = range_end
        self._no_put = no_put

    def __repr__(self) -> str:
        return (f"<ModelWatch {self._key!r} from {self.start_revision}, "
                f"{len(self._events)} queued{', cancelled' if self._cancelled else ''}>")

    def _offer(self, events: Sequence[WatchEvent]) -> None:
        mine = [ev for ev in events if _in_range(ev.kv.key, self._key, self._range_end)
                and ev.kv.mod_revision >= self.start_revision
                and not (self._no_put and ev.type == "PUT")]
        if mine:
            self._deliver(mine)

    def _fresh_error(self, error: BaseException) -> BaseException:
        return type(error)(*error.args)

    def _after_cancel(self, detached: Any) -> None:
        self._model._forget(self)

    def _after_break(self, detached: Any) -> None:
        self._model._forget(self)


@dataclass(frozen=True)
class _Fault:
    method: str
    error: EtcdError
    after_apply: bool


class ModelTransport(Transport):
    """A client of an :class:`EtcdModel` (a new private one by default).

    Several clients of one model behave like several processes on one etcd cluster::

        model = EtcdModel()
        a, b = ModelTransport(model), ModelTransport(model)
        model.advance(10)  # every lease not kept alive for 10 s is gone, keys deleted
    """

    def __init__(self, model: EtcdModel | None = None) -> None:
        self.model = model if model is not None else EtcdModel()
        self._faults: deque[_Fault] = deque()
        self._watches: list[_ModelWatch] = []
        self._closed = False
        self.calls: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<ModelTransport revision={self.model.revision}{' closed' if self._closed else ''}>"

    def advance(self, seconds: float) -> None:
        """Shortcut for ``self.model.advance``."""
        self.model.advance(seconds)

    def fail_next(self, method: str, error: EtcdError, *, after_apply: bool = False) -> None:
        """The next call of ``method`` (``"txn"``, ``"get_range"``, ``"watch"``, ``"lease_*"``)
        raises ``error``; with ``after_apply`` the call takes effect first (a lost answer)."""
        if not hasattr(Transport, method):
            raise InvalidArgumentError(f"no Transport method {method!r}")
        self._faults.append(_Fault(method, error, after_apply))

    def _enter(self, method: str) -> _Fault | None:
        if self._closed:
            raise EtcdError("the transport is closed")
        self.calls[method] = self.calls.get(method, 0) + 1
        for fault in self._faults:
            if fault.method == method:
                self._faults.remove(fault)
                if not fault.after_apply:
                    raise fault.error
                return fault
        return None

    def _run(self, method: str, call: Callable[[], Any]) -> Any:
        fault = self._enter(method)
        result = call()
        if fault is not None:
            if isinstance(result, Watch):
                result.cancel()
            raise fault.error
        return result

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete | Range],
            failure: Sequence[Put | Delete | Range] = ()) -> TxnResult:
        result: TxnResult = self._run("txn", lambda: self.model.txn(compare, success, failure))
        return result

    def get_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KeyValue]]:
        result: tuple[int, list[KeyValue]] = self._run(
            "get_range", lambda: self.model.get_range(key, range_end))
        return result

    def watch(self, key: bytes, start_revision: int, range_end: bytes | None = None, *,
              no_put: bool = False, wakeup: Any = None) -> Watch:
        w: _ModelWatch = self._run("watch", lambda: self.model.watch(
            key, start_revision, range_end, no_put=no_put, wakeup=wakeup))
        self._watches = [x for x in self._watches if not x._cancelled]
        self._watches.append(w)
        return w

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        result: tuple[int, int] = self._run("lease_grant", lambda: self.model.lease_grant(ttl))
        return result

    def lease_keepalive(self, lease_id: int) -> int:
        result: int = self._run("lease_keepalive", lambda: self.model.lease_keepalive(lease_id))
        return result

    def lease_revoke(self, lease_id: int) -> None:
        self._run("lease_revoke", lambda: self.model.lease_revoke(lease_id))

    def lease_time_to_live(self, lease_id: int) -> LeaseTimeToLive | None:
        result: LeaseTimeToLive | None = self._run(
            "lease_time_to_live", lambda: self.model.lease_time_to_live(lease_id))
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._watches:
            w.cancel()
        self._watches = []
