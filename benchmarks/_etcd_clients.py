"""One adapter per lock the etcd benchmark compares, behind one small interface.

Every adapter is one "process" to etcd: its own client, connections and lease(s). Importing this
module needs only the standard library, because it also runs under a separate interpreter (the
venv that holds python-etcd3 0.12.0 with its old protobuf and tenacity); each adapter imports
its client library when it is built.

``acquire(lane)`` returns False when the library gave up (its own timeout) and the worker should
ask again. ``token`` is the fencing token of the current grant where the lock has one;
``ticket`` is the request's position in etcd's order where it can be known (fairlock: the
revision of the transaction that queued it); ``watch_events()`` counts watch events the client
received so far, or None where no client-side count is possible.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from typing import Any

__all__ = ["VARIANTS", "make_client"]

#: Adapter name -> what it is (the row labels live in benchmarks.etcd).
VARIANTS = ("fairlock", "fairlock-grpc", "tooz", "tooz-fairlock", "etcd3", "v3lock", "broken")

#: The anchors' lease TTL (tooz's default lock_timeout; python-etcd3's default is 60).
ANCHOR_TTL = 30


class _Fairlock:
    """fairlock's EtcdLock, one Session (one lease) per client, through a counting transport
    (over etcd's HTTP gateway, or over gRPC with ``grpc=True``)."""

    def __init__(self, endpoint: str, name: str, lanes: list[str] | None, max_bypass: int | None,
                 grpc: bool = False) -> None:
        from fairlock.etcd import EtcdLock, Session

        if grpc:
            from fairlock.etcd.grpc import GrpcTransport

            inner: Any = GrpcTransport([endpoint], timeout=10.0)
        else:
            from fairlock.etcd.gateway import GatewayTransport

            inner = GatewayTransport([endpoint], timeout=10.0)
        self._transport = _ticketing(inner)
        self.session = Session(self._transport, ttl=10, prefix="/bench")
        kwargs: dict[str, Any] = {"max_bypass": max_bypass}
        if lanes:
            kwargs["lanes"] = tuple(lanes)
        self.lock = EtcdLock(name, self.session, **kwargs)
        self.token: int | None = None

    @property
    def ticket(self) -> int | None:
        return self._transport.ticket

    def acquire(self, lane: str | None) -> bool:
        self._transport.begin()
        got = self.lock.acquire(lane=lane)
        self.token = self.lock.fencing_token
        return got

    def release(self) -> None:
        self.lock.release()

    def watch_events(self) -> int | None:
        return self.lock.statistics().watch_events

    def close(self) -> None:
        self.session.close()
        self._transport.close()


def _ticketing(inner: Any) -> Any:
    """A Transport that remembers, per thread, the revision of the first txn since ``begin()``.

    In ``EtcdLock.acquire`` (one thread per session, so no local queueing first) that txn is the
    one that either takes the free lock or queues the waiter key: its revision is the request's
    place in etcd's order (the waiter key's create revision), which the checker orders FIFO by.
    """
    from fairlock.etcd.transport import ForwardingTransport

    class TicketingTransport(ForwardingTransport):
        def __init__(self) -> None:
            super().__init__(inner)
            self._local = threading.local()

        @property
        def ticket(self) -> int | None:
            return getattr(self._local, "ticket", None)

        def begin(self) -> None:
            self._local.ticket = None
            self._local.open = True

        def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
            result = inner.txn(compare, success, failure)
            if getattr(self._local, "open", False):
                self._local.ticket = result.revision
                self._local.open = False
            return result

    return TicketingTransport()


class _Tooz:
    """tooz's etcd3gw driver: ``get_coordinator("etcd3+http://...")``, ``get_lock(name)``."""

    token = None
    ticket = None

    def __init__(self, endpoint: str, name: str, member: str) -> None:
        from tooz import coordination

        self.coordinator = coordination.get_coordinator(f"etcd3+{endpoint}", member.encode())
        self.coordinator.start(start_heart=False)
        self.lock = self.coordinator.get_lock(name.encode())

    def acquire(self, lane: str | None) -> bool:
        return bool(self.lock.acquire(blocking=True))

    def release(self) -> None:
        self.lock.release()

    def watch_events(self) -> int | None:
        return 0  # it polls: no watch at all

    def close(self) -> None:
        self.coordinator.stop()


class _ToozFairlock:
    """fairlock's tooz driver: ``get_coordinator("fairlock+etcd3+http://...")``, ``get_lock(name)``."""

    ticket = None

    def __init__(self, endpoint: str, name: str, member: str, lanes: list[str] | None,
                 max_bypass: int | None) -> None:
        from tooz import coordination

        query = {"lease_ttl": "10", "max_bypass": "none" if max_bypass is None else str(max_bypass)}
        if lanes:
            query["lanes"] = ",".join(lanes)
        url = f"fairlock+etcd3+{endpoint}/bench-tooz?{urllib.parse.urlencode(query)}"
        self.coordinator = coordination.get_coordinator(url, member.encode())
        self.coordinator.start(start_heart=False)
        self.lock = self.coordinator.get_lock(name.encode())
        self.token: int | None = None
        self._closed_events: int | None = None

    def acquire(self, lane: str | None) -> bool:
        got = bool(self.lock.acquire(blocking=True, lane=lane))
        self.token = self.lock.fencing_token
        return got

    def release(self) -> None:
        self.lock.release()

    def watch_events(self) -> int | None:
        if self._closed_events is not None:
            return self._closed_events
        return self.lock.statistics().watch_events

    def close(self) -> None:
        self._closed_events = self.lock.statistics().watch_events  # not readable once stopped
        self.coordinator.stop()


class _Etcd3:
    """python-etcd3's ``Etcd3Client.lock(name, ttl)`` (whichever release this interpreter has).

    Watch events are counted by wrapping ``add_watch_callback``, through which both 0.12.0's
    ``watch_once`` and the forks' ``watch`` register their callbacks.
    """

    ticket = None

    def __init__(self, endpoint: str, name: str) -> None:
        import etcd3

        url = urllib.parse.urlsplit(endpoint)
        self.client = etcd3.client(host=url.hostname, port=url.port)
        self._events = 0
        self._mutex = threading.Lock()
        original = self.client.add_watch_callback

        def counting(key: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
            def wrapped(response: Any) -> Any:
                events = getattr(response, "events", None)  # an exception when the watch broke
                if events:
                    with self._mutex:
                        self._events += len(events)
                return callback(response)

            return original(key, wrapped, *args, **kwargs)

        self.client.add_watch_callback = counting
        self.lock = self.client.lock(name, ttl=ANCHOR_TTL)

    @property
    def token(self) -> int | None:
        # The forks remember the revision of the put that took the lock: a usable fencing token.
        return getattr(self.lock, "revision", None)

    def acquire(self, lane: str | None) -> bool:
        return bool(self.lock.acquire())  # its default timeout (10 s); the worker asks again

    def release(self) -> None:
        self.lock.release()

    def watch_events(self) -> int | None:
        return self._events

    def close(self) -> None:
        # Not client.close(): python-etcd3's watch thread then dies with a traceback while it
        # re-opens its stream on the closed channel. The child process exits right after.
        pass


class _V3Lock:
    """etcd's own lock service over the HTTP gateway, with one lease per client (as Go's
    ``concurrency.Session`` has): ``POST /v3/lock/lock {name, lease}``, ``/v3/lock/unlock {key}``.

    The lease is granted for longer than any benchmark run and revoked at close (no keepalive).
    Its watches run inside etcd: the client receives no watch event (``None``).
    """

    token = None
    ticket = None

    def __init__(self, endpoint: str, name: str) -> None:
        import requests

        self._base = endpoint.rstrip("/") + "/v3/"
        self._http = requests.Session()
        self._http.trust_env = False
        self._name = base64.b64encode(name.encode()).decode()
        self._lease = self._post("lease/grant", {"TTL": "600"})["ID"]
        self._key: str | None = None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self._http.post(self._base + path, data=json.dumps(body), timeout=(5, None))
        resp.raise_for_status()
        answer: dict[str, Any] = resp.json()
        return answer

    def acquire(self, lane: str | None) -> bool:
        self._key = self._post("lock/lock", {"name": self._name, "lease": self._lease})["key"]
        return True

    def release(self) -> None:
        self._post("lock/unlock", {"key": self._key})
        self._key = None

    def watch_events(self) -> int | None:
        return None

    def close(self) -> None:
        self._post("lease/revoke", {"ID": self._lease})
        self._http.close()


class _Broken:
    """A deliberately broken lock, for the checker's teeth: it excludes nobody, and its "fencing
    token" is drawn from a per-process counter when the request is made (as a lock whose grant
    skips fencing would hand out), so tokens repeat across processes and run backwards.
    """

    _counter = 0
    _mutex = threading.Lock()
    ticket = None

    def __init__(self) -> None:
        self.token: int | None = None

    def acquire(self, lane: str | None) -> bool:
        with _Broken._mutex:
            _Broken._counter += 1
            self.token = _Broken._counter
        return True

    def release(self) -> None:
        pass

    def watch_events(self) -> int | None:
        return None

    def close(self) -> None:
        pass


def make_client(variant: str, endpoint: str, name: str, member: str, *,
                lanes: list[str] | None = None, max_bypass: int | None = 4) -> Any:
    if variant == "fairlock":
        return _Fairlock(endpoint, name, lanes, max_bypass)
    if variant == "fairlock-grpc":
        return _Fairlock(endpoint, name, lanes, max_bypass, grpc=True)
    if variant == "tooz":
        return _Tooz(endpoint, name, member)
    if variant == "tooz-fairlock":
        return _ToozFairlock(endpoint, name, member, lanes, max_bypass)
    if variant == "etcd3":
        return _Etcd3(endpoint, name)
    if variant == "v3lock":
        return _V3Lock(endpoint, name)
    if variant == "broken":
        return _Broken()
    raise ValueError(f"unknown variant {variant!r}")
