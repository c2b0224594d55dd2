"""The Transport over etcd's native gRPC API, for deployments on native threads (never eventlet).

1. Which client. python-etcd3 (PyPI ``etcd3``, last release 2020) no longer imports with current
   protobuf (its generated code predates protobuf 4) and its lock needs an old tenacity. We use
   ``etcd-sdk-python`` (import name ``pyetcd``, maintained in 2025): python-etcd3's client API
   (``MultiEndpointEtcd3Client``, ``Endpoint``, ``transactions``, ``Watcher``) with code generated
   by protobuf 5 and without six/tenacity; it coexists with everything else in our environment
   (oslo.*, tooz, etcd3gw, eventlet) and installs under its own name, so it never overwrites a
   dead ``etcd3`` package a deployment may still carry. It does not declare protobuf; the
   ``grpc`` extra asks for ``protobuf>=5.27.2`` (its gencode version; 6.x and 7.x load it too).
2. What we use of it: ``pyetcd.etcdrpc``, the request/response messages and the gRPC stubs of
   etcd's KV, Watch, Lease and Auth services, called directly on one channel per endpoint. We do
   not go through the client's methods, because each loses something the lock needs:
   ``transaction()``/``get_range()`` drop the header revision; its compare helpers have no LEASE
   target (they do carry ``range_end``; we build ``Compare`` messages ourselves for all targets);
   errors become bare ``ConnectionFailedError()`` without endpoint or reason, and a failed member
   is shunned for 300 s without the call being retried; the user is authenticated once in the
   constructor (a network call) and an expired token is never renewed; its ``Watcher`` reports a
   create that etcd cancelled (permission denied) as success and waits for creation without a
   deadline when the client has no timeout.
3. Calls, failover, retry safety, timeouts and secrets follow ``fairlock.etcd.gateway`` point
   for point: the endpoint that answered last is tried first; a connection that cannot be made
   within ``connect_timeout`` (tracked from the channel's connectivity state, so a hung member
   that accepts TCP but never speaks HTTP/2 is recognised as *not sent*) or refused, or etcd's
   "no leader"-style refusals, move on to the next endpoint; a writing txn whose request may have
   reached etcd (deadline exceeded, stream reset, "request timed out") raises
   :class:`TxnOutcomeUnknown` instead of being repeated. When ``timeout`` is spent,
   :class:`EtcdUnavailable` lists every endpoint and what went wrong there. TLS handshake
   failures, wrong credentials and permission denials are :class:`EtcdAuthError`; an invalid or
   stale token is renewed once per call. Neither password nor token ever reaches a log line, an
   exception message or a ``repr``.
4. Watches share one gRPC stream per endpoint (etcd multiplexes watches by id), read by one
   thread; :meth:`GrpcTransport.watch` returns once etcd answered ``created``. Creates are matched
   to their answers in order (etcd answers them in the order sent). Compaction gives
   :class:`WatchCompacted`; a broken stream, or the endpoint failing in any other call, breaks
   every watch on it (``get`` raises :class:`EtcdUnavailable`) and the lock re-reads and watches
   again. gRPC keepalive pings notice a member that hangs with its sockets open.
5. Not under eventlet: gRPC's own threads are native and block the hub (a watch hangs the
   process), so construction raises :class:`EventletNotSupported` when eventlet has monkey
   patched threading. Use :class:`~fairlock.etcd.gateway.GatewayTransport` there.

Select it by URL with ``etcd3+grpc://`` (or ``etcd3+grpcs://`` for TLS) and
:func:`fairlock.etcd.config.transport_from_url`; endpoints are etcd's usual client URLs (gRPC and
the HTTP gateway share the port).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from .._primitives import green_mode
from ..errors import ArgumentTypeError, InvalidArgumentError
from .config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, EtcdConfig, parse_transport_url
from .transport import (
    Compare,
    Delete,
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    Put,
    Range,
    Transport,
    TxnOutcomeUnknown,
    TxnResult,
    Watch,
    WatchCompacted,
    WatchEvent,
)

try:
    import grpc
    from pyetcd import etcdrpc
except ImportError as _exc:  # the module stays importable; the constructor says what to install
    grpc = etcdrpc = None
    _MISSING: ImportError | None = _exc
else:
    _MISSING = None

__all__ = ["GrpcTransport", "EventletNotSupported"]

LOG = logging.getLogger("fairlock.etcd.grpc")


class EventletNotSupported(EtcdError, RuntimeError):
    """gRPC under eventlet monkey patching: its native threads would block (hang) the process."""


#: gRPC channel options: never drop to IDLE (the connectivity tracking expects a live channel),
#: ping a quiet connection so a hung member breaks its watch stream (etcd accepts pings >= 5 s
#: apart), own subchannels per transport (a second transport in the process shares nothing).
#: The reconnect back-off is set per transport, see _channel_options.
_CHANNEL_OPTIONS = [
    ("grpc.client_idle_timeout_ms", 2**31 - 1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]

_TARGETS = {"create_revision": ("CREATE", "create_revision"), "mod_revision": ("MOD", "mod_revision"),
            "version": ("VERSION", "version"), "value": ("VALUE", "value"),
            "lease": ("LEASE", "lease")}
_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}

#: etcd refusals that come before anything is proposed: a write may be sent elsewhere.
_NOT_APPLIED = ("no leader", "not enough started members", "too many requests", "not capable",
                "server stopped", "stopping", "failed to connect", "connection refused")
_RENEW_TOKEN = ("invalid auth token", "auth store is old", "revision of auth store is old")
_AUTH_ERRORS = ("permission denied", "user name is empty", "authentication failed",
                "user name not found", "invalid auth token", "auth store is old",
                "authentication is not enabled")
#: gRPC's words for a failed TLS handshake; TSI_DATA_CORRUPTED is a TLS 1.3 server rejecting the
#: client certificate (or its absence) right after the handshake.
_TLS_ERRORS = ("ssl", "handshake", "certificate", "tsi_")


def _check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise ArgumentTypeError(f"{name} must be bytes, got {type(value).__name__}")
    return value


def _kv(raw: Any) -> KeyValue:
    return KeyValue(key=raw.key, value=raw.value, create_revision=raw.create_revision,
                    mod_revision=raw.mod_revision, version=raw.version, lease=raw.lease)


def _compare(c: Compare) -> Any:
    try:
        target, field_name = _TARGETS[c.target]
        result = _RESULTS[c.op]
    except KeyError:
        raise InvalidArgumentError(f"unknown compare target or op in {c!r}") from None
    msg = etcdrpc.Compare(key=_check_bytes("Compare.key", c.key),
                          target=getattr(etcdrpc.Compare, target),
                          result=getattr(etcdrpc.Compare, result))
    if c.target == "value":
        msg.value = _check_bytes("Compare.value for target 'value'", c.value)
    else:
        if isinstance(c.value, bool) or not isinstance(c.value, int):
            raise ArgumentTypeError(f"Compare.value for target {c.target!r} must be an int")
        setattr(msg, field_name, c.value)
    if c.range_end is not None:
        msg.range_end = _check_bytes("Compare.range_end", c.range_end)
    return msg


def _range_request(key: bytes, range_end: bytes | None, what: str = "") -> Any:
    req = etcdrpc.RangeRequest(key=_check_bytes(f"{what}key", key))
    if range_end is not None:
        req.range_end = _check_bytes(f"{what}range_end", range_end)
    return req


def _op(op: Put | Delete | Range) -> Any:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
            key=_check_bytes("Put.key", op.key), value=_check_bytes("Put.value", op.value),
            lease=op.lease))
    if isinstance(op, Delete):
        req = etcdrpc.DeleteRangeRequest(key=_check_bytes("Delete.key", op.key))
        if op.range_end is not None:
            req.range_end = _check_bytes("Delete.range_end", op.range_end)
        return etcdrpc.RequestOp(request_delete_range=req)
    if isinstance(op, Range):
        return etcdrpc.RequestOp(request_range=_range_request(op.key, op.range_end, "Range."))
    raise ArgumentTypeError(f"txn ops are Put, Delete or Range, got {type(op).__name__}")


# --- telling failures apart ----------------------------------------------------------------------


class _TryNext(Exception):
    """This endpoint failed; ``maybe_applied``: a write sent to it may have taken effect."""

    def __init__(self, reason: str, maybe_applied: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_applied = maybe_applied


class _RenewToken(Exception):
    """etcd rejected the token (expired or stale): authenticate again, then retry."""


def _classify(url: str, code: Any, details: str, deadline: float | None = None) -> Exception:
    """Map a gRPC status from ``url`` to what the caller sees (or to _TryNext / _RenewToken)."""
    low = details.lower()
    name = getattr(code, "name", str(code))
    if code == grpc.StatusCode.UNAUTHENTICATED or any(s in low for s in _RENEW_TOKEN):
        return _RenewToken(details)
    if "lease not found" in low:
        return LeaseNotFound(f"{details} ({url})")
    if code == grpc.StatusCode.UNAVAILABLE and any(s in low for s in _TLS_ERRORS):
        return EtcdAuthError(f"TLS with {url} failed: {_tls_reason(details)} (check ca_cert, and "
                             f"cert_cert/cert_key if the server wants a client certificate)")
    if code == grpc.StatusCode.PERMISSION_DENIED or any(s in low for s in _AUTH_ERRORS):
        return EtcdAuthError(f"etcd at {url} refused: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        waited = f" within {deadline:g} s" if deadline is not None else ""
        return _TryNext(f"no answer{waited}", maybe_applied=True)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED):
        not_sent = any(s in low for s in _NOT_APPLIED)
        return _TryNext(_short(details, name), maybe_applied=not not_sent)
    return EtcdError(f"etcd at {url} answered {name}: {details}")


def _watch_cancel(url: str, reason: str) -> EtcdError:
    """What a watch that etcd cancelled (or refused to create) raises."""
    reason = reason.rsplit("desc = ", 1)[-1]  # "rpc error: code = ... desc = etcdserver: ..."
    if any(s in reason.lower() for s in _AUTH_ERRORS):
        return EtcdAuthError(f"etcd at {url} refused the watch: {reason}")
    return EtcdError(f"etcd at {url} cancelled the watch" + (f": {reason}" if reason else ""))


def _short(details: str, name: str) -> str:
    low = details.lower()
    if "connection refused" in low:
        return "connection refused"
    if "failed to connect" in low:
        return "cannot connect"
    text = details.removeprefix("etcdserver: ")
    return f"{name}: {text[:160]}" if text else name


def _tls_reason(details: str) -> str:
    low = details.lower()
    if "tsi_data_corrupted" in low:
        return "the server dropped the session (no client certificate, or one it does not accept)"
    for marker in ("CERTIFICATE_VERIFY_FAILED", "CERTIFICATE_REQUIRED", "WRONG_VERSION_NUMBER"):
        if marker.lower() in low:
            return marker
    return "handshake failed"


def _rpc_error(url: str, exc: Any, deadline: float | None = None) -> Exception:
    try:
        code, details = exc.code(), exc.details() or ""
    except Exception:  # a grpc.RpcError that is not a Call: no status to read
        return _TryNext(f"gRPC error ({type(exc).__name__})", maybe_applied=True)
    return _classify(url, code, details, deadline)


# --- endpoints -----------------------------------------------------------------------------------


def _check_endpoint(url: object) -> tuple[str, str, bool]:
    """(normalised URL, gRPC target host:port, secure) of an ``http[s]://host:port`` endpoint."""
    if not isinstance(url, str):
        raise ArgumentTypeError(f"an endpoint must be a str URL, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgumentError("bad etcd endpoint (want http[s]://host:port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise InvalidArgumentError(f"bad etcd endpoint {url!r} (want http[s]://host:port)")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError("credentials go in username=/password=, not in an endpoint")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidArgumentError(f"bad etcd endpoint {url!r}: no path or query allowed")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return url.rstrip("/"), f"{host}:{port}", parts.scheme == "https"


class _Endpoint:
    """One etcd member: a gRPC channel, the stubs on it, its connectivity, its watch stream."""

    def __init__(self, url: str, target: str, credentials: Any, options: list[Any]) -> None:
        self.url = url
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self.kv = etcdrpc.KVStub(self.channel)
        self.lease = etcdrpc.LeaseStub(self.channel)
        self.auth = etcdrpc.AuthStub(self.channel)
        self.watch = etcdrpc.WatchStub(self.channel)
        self.stream: _WatchStream | None = None
        self.retired: list[_WatchStream] = []  # streams with an old token, until their watches end
        self._cond = threading.Condition()
        self._state: Any = None
        self._subscribed = False

    def _on_state(self, state: Any) -> None:  # from a gRPC thread
        with self._cond:
            self._state = state
            self._cond.notify_all()

    def wait_connectable(self, timeout: float) -> bool:
        """True once the channel is READY, or has failed (a call then fails at once, telling
        why); False if it is still connecting after ``timeout`` (a request would never be sent)."""
        done = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        with self._cond:
            if not self._subscribed:
                self._subscribed = True
                self.channel.subscribe(self._on_state, try_to_connect=True)
            return self._cond.wait_for(lambda: self._state in done, timeout)

    def take_streams(self) -> list[_WatchStream]:
        """Detach every watch stream (the caller closes them); under the transport's mutex."""
        streams = [s for s in (self.stream, *self.retired) if s is not None]
        self.stream, self.retired = None, []
        return streams

    def close(self) -> None:
        if self._subscribed:
            self.channel.unsubscribe(self._on_state)
        self.channel.close()


def _channel_options(connect_timeout: float) -> list[tuple[str, int]]:
    """Reconnect soon after a member comes back (gRPC's own back-off grows to 2 minutes); gRPC
    also takes the minimum back-off as the time one connection attempt may take."""
    connect_ms = max(100, int(connect_timeout * 1000))
    return [*_CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", connect_ms),
            ("grpc.max_reconnect_backoff_ms", max(1000, connect_ms))]


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


# --- the transport -------------------------------------------------------------------------------


class GrpcTransport(Transport):
    """:class:`~fairlock.etcd.transport.Transport` over etcd's gRPC API, with failover.

    The same arguments as :class:`~fairlock.etcd.gateway.GatewayTransport`: ``endpoints``
    (``["http://127.0.0.1:2379", ...]``, all http or all https), ``timeout`` for one call across
    all endpoints, ``connect_timeout`` per endpoint, ``request_timeout`` for one endpoint's
    answer (default ``timeout``, or half of it with several endpoints), TLS files, user and
    password. Or from a URL: ``GrpcTransport.from_url("etcd3+grpc://h1:2379,h2:2379?timeout=5")``.
    Raises :class:`EventletNotSupported` under eventlet monkey patching.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float | None = None, request_timeout: float | None = None,
                 ca_cert: str | None = None, cert_cert: str | None = None,
                 cert_key: str | None = None, username: str | None = None,
                 password: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if green_mode():
            raise EventletNotSupported(
                "GrpcTransport cannot run under eventlet monkey patching: gRPC's native threads "
                "block the hub and a watch hangs the process. Use the HTTP gateway transport "
                "(fairlock.etcd.gateway.GatewayTransport, or an etcd3+http:// URL) instead.")
        if _MISSING is not None:
            raise ImportError(f"GrpcTransport needs the grpc extra (pip install 'fairlock[grpc]'): "
                              f"{_MISSING}") from _MISSING
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        checked = [_check_endpoint(u) for u in endpoints]
        if not checked:
            raise InvalidArgumentError("at least one etcd endpoint is needed")
        if len({secure for _, _, secure in checked}) != 1:
            raise InvalidArgumentError("endpoints must be all http or all https")
        if len({target for _, target, _ in checked}) != len(checked):
            raise InvalidArgumentError("the same endpoint appears twice")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout),
                            ("request_timeout", request_timeout)):
            if value is None and name != "timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ArgumentTypeError(f"{name} must be a number of seconds")
            if not 0 < value < float("inf"):
                raise InvalidArgumentError(f"{name} must be positive and finite, got {value!r}")
        for name, path in (("ca_cert", ca_cert), ("cert_cert", cert_cert), ("cert_key", cert_key)):
            if path is not None and not os.path.isfile(path):
                raise InvalidArgumentError(f"{name} file {path!r} does not exist")
        if (cert_cert is None) != (cert_key is None):
            raise InvalidArgumentError("cert_cert and cert_key go together")
        if password is not None and username is None:
            raise InvalidArgumentError("a password without a username")
        secure = checked[0][2]
        if not secure and (ca_cert or cert_cert):
            raise InvalidArgumentError("TLS files need https endpoints")
        self.config = EtcdConfig(
            endpoints=tuple(u for u, _, _ in checked), protocol="https" if secure else "http",
            timeout=float(timeout),
            connect_timeout=float(connect_timeout if connect_timeout is not None
                                  else min(DEFAULT_CONNECT_TIMEOUT, timeout)),
            request_timeout=request_timeout, ca_cert=ca_cert, cert_cert=cert_cert,
            cert_key=cert_key, username=username, password=password,
        )
        self._init(checked, secure)
        self._clock = clock

    def _init(self, checked: list[tuple[str, str, bool]], secure: bool) -> None:
        c = self.config
        credentials = None
        if secure:  # key material is read here and handed to gRPC; never kept or logged
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(c.ca_cert), private_key=_read(c.cert_key),
                certificate_chain=_read(c.cert_cert))
        options = _channel_options(c.connect_timeout)
        self._endpoints = [_Endpoint(url, target, credentials, options)
                           for url, target, _ in checked]
        self._timeout = c.timeout
        self._connect_timeout = c.connect_timeout
        self._request_timeout = c.effective_request_timeout
        self._current = 0
        self._mutex = threading.Lock()
        self._auth_mutex = threading.Lock()
        self._token: str | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: EtcdConfig, **kwargs: Any) -> GrpcTransport:
        transport = cls(list(config.endpoints), timeout=config.timeout,
                        connect_timeout=config.connect_timeout,
                        request_timeout=config.request_timeout, ca_cert=config.ca_cert,
                        cert_cert=config.cert_cert, cert_key=config.cert_key,
                        username=config.username, password=config.password, **kwargs)
        transport.config = config  # keeps the URL's prefix and lease_ttl for the session
        return transport

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> GrpcTransport:
        """From an ``etcd3+grpc(s)://`` URL (an ``etcd3+http(s)://`` one also means gRPC here)."""
        return cls.from_config(parse_transport_url(url)[1], **kwargs)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self.config.endpoints

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call tries first (the last one that answered)."""
        return self._endpoints[self._current].url

    def __repr__(self) -> str:
        user = f" user={self.config.username!r}" if self.config.username else ""
        return (f"<GrpcTransport {list(self.endpoints)} current={self.current_endpoint}"
                f"{user}{' closed' if self._closed else ''}>")

    # -- the Transport interface --

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete | Range],
            failure: Sequence[Put | Delete | Range] = ()) -> TxnResult:
        request = etcdrpc.TxnRequest(compare=[_compare(c) for c in compare],
                                     success=[_op(op) for op in success],
                                     failure=[_op(op) for op in failure])
        read_only = all(isinstance(op, Range) for op in (*success, *failure))
        answer = self._unary("txn", lambda ep: ep.kv.Txn, request, idempotent=read_only)
        ops = success if answer.succeeded else failure
        responses = []
        for i, op in enumerate(ops):
            if isinstance(op, Range) and i < len(answer.responses):
                responses.append(tuple(_kv(kv) for kv in answer.responses[i].response_range.kvs))
            else:
                responses.append(())
        return TxnResult(succeeded=answer.succeeded, revision=answer.header.revision,
                         responses=tuple(responses))

    def get_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KeyValue]]:
        answer = self._unary("range", lambda ep: ep.kv.Range, _range_request(key, range_end),
                             idempotent=True)
        return answer.header.revision, [_kv(kv) for kv in answer.kvs]

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise ArgumentTypeError("ttl must be an int number of seconds")
        if ttl < 1:
            raise InvalidArgumentError(f"ttl must be >= 1 second, got {ttl}")
        # Repeating a grant whose answer was lost leaves an unused lease that expires: harmless.
        answer = self._unary("lease grant", lambda ep: ep.lease.LeaseGrant,
                             etcdrpc.LeaseGrantRequest(TTL=ttl), idempotent=True)
        if answer.error:
            raise EtcdError(f"lease grant failed: {answer.error}")
        return answer.ID, answer.TTL

    def lease_keepalive(self, lease_id: int) -> int:
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)

        def keepalive(ep: _Endpoint) -> Callable[..., Any]:
            def call(req: Any, timeout: float, metadata: Any) -> Any:
                stream = ep.lease.LeaseKeepAlive(iter([req]), timeout=timeout, metadata=metadata)
                try:
                    return next(stream)
                except StopIteration:
                    raise _TryNext("keepalive stream closed without an answer",
                                   maybe_applied=True) from None
                finally:
                    stream.cancel()
            return call

        answer = self._unary("lease keepalive", keepalive, request, idempotent=True)
        if answer.TTL <= 0:  # etcd answers an expired or revoked lease with no TTL
            raise LeaseNotFound(f"lease {lease_id:x} expired or was revoked")
        return answer.TTL

    def lease_revoke(self, lease_id: int) -> None:
        try:
            self._unary("lease revoke", lambda ep: ep.lease.LeaseRevoke,
                        etcdrpc.LeaseRevokeRequest(ID=lease_id), idempotent=True)
        except LeaseNotFound:
            pass

    def watch(self, key: bytes, start_revision: int, range_end: bytes | None = None, *,
              no_put: bool = False, wakeup: Any = None) -> Watch:
        if green_mode():
            raise EventletNotSupported("a gRPC watch under eventlet monkey patching hangs the "
                                       "process; use the HTTP gateway transport")
        create = etcdrpc.WatchCreateRequest(key=_check_bytes("key", key),
                                            start_revision=int(start_revision))
        if range_end is not None:
            create.range_end = _check_bytes("range_end", range_end)
        if no_put:
            create.filters.append(etcdrpc.WatchCreateRequest.NOPUT)
        request = etcdrpc.WatchRequest(create_request=create)

        def attempt(ep: _Endpoint, remaining: float, metadata: Any, token: str | None) -> Any:
            stream = self._stream(ep, metadata, token)
            watch = _GrpcWatch(stream, int(start_revision), wakeup)
            stream.create(watch, request)
            try:
                return watch.wait_created(min(self._request_timeout, remaining))
            except EtcdAuthError as exc:
                # etcd checks a watch against the token its stream was opened with: an expired
                # token reads "permission denied" or "invalid auth token". Renew once (so a new
                # stream); a second refusal is final.
                if token is not None:
                    raise _RenewToken(str(exc)) from None
                raise

        # Opening a watch twice is harmless: an unconfirmed create is cancelled when it answers.
        result: _GrpcWatch = self._with_failover(attempt, idempotent=True, what="watch")
        return result

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            streams = [s for ep in self._endpoints for s in ep.take_streams()]
        for stream in streams:
            stream.close(None)
        for stream in streams:
            stream.join(1.0)
        for ep in self._endpoints:
            ep.close()

    # -- calls with failover --

    def _stream(self, ep: _Endpoint, metadata: Any, token: str | None) -> _WatchStream:
        with self._mutex:
            if self._closed:
                raise EtcdError("the transport is closed")
            old = ep.stream
            if old is not None and old.alive and old.token == token:
                return old
            stream = ep.stream = _WatchStream(ep, metadata, token)
            if old is not None and old.alive:
                ep.retired = [s for s in ep.retired if s.alive] + [old]
        if old is not None:
            old.retire()  # a renewed token: the old stream serves its watches until they end
        return stream

    def _unary(self, what: str, method: Callable[[_Endpoint], Callable[..., Any]], request: Any,
               *, idempotent: bool, auth: bool = True) -> Any:
        def attempt(ep: _Endpoint, remaining: float, metadata: Any, token: str | None) -> Any:
            wait = min(self._request_timeout, remaining)
            try:
                return method(ep)(request, timeout=wait, metadata=metadata)
            except grpc.RpcError as exc:
                raise _rpc_error(ep.url, exc, wait) from None

        return self._with_failover(attempt, idempotent=idempotent, what=what, auth=auth)

    def _with_failover(self, attempt: Callable[[_Endpoint, float, Any, str | None], Any], *,
                       idempotent: bool, what: str, auth: bool = True) -> Any:
        if self._closed:
            raise EtcdError("the transport is closed")
        deadline = self._clock() + self._timeout
        failures: dict[str, str] = {}
        pause = 0.05
        renewed = False
        while True:
            start = self._current
            for k in range(len(self._endpoints)):
                index = (start + k) % len(self._endpoints)
                ep = self._endpoints[index]
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                if not ep.wait_connectable(min(self._connect_timeout, remaining)):
                    reason = f"not connected within {min(self._connect_timeout, remaining):.2g} s"
                    failures[ep.url] = reason  # nothing was sent: safe to go on, even a write
                    self._endpoint_failed(ep, reason)
                    continue
                while True:
                    token = self._get_token(ep) if auth else None
                    metadata = (("token", token),) if token else None
                    try:
                        result = attempt(ep, deadline - self._clock(), metadata, token)
                    except _RenewToken as exc:
                        if token is None or renewed:
                            raise EtcdAuthError(f"etcd at {ep.url} refused the request: {exc}"
                                                ) from None
                        renewed = True  # one renewal per call: a second refusal is final
                        self._drop_token(token)
                        continue
                    except _TryNext as exc:
                        if exc.maybe_applied and not idempotent:
                            self._endpoint_failed(ep, exc.reason)
                            raise TxnOutcomeUnknown(
                                f"{what} sent to {ep.url} but its outcome is unknown "
                                f"({exc.reason}); re-read before retrying") from None
                        failures[ep.url] = exc.reason
                        self._endpoint_failed(ep, exc.reason)
                        break
                    if self._current != index:
                        LOG.info("etcd: now using endpoint %s", ep.url)
                        self._current = index
                    return result
            remaining = deadline - self._clock()
            if remaining <= 0:
                tried = "; ".join(f"{u}: {failures.get(u, 'not tried (out of time)')}"
                                  for u in self.endpoints)
                raise EtcdUnavailable(f"no etcd endpoint answered {what} within "
                                      f"{self._timeout:g} s; tried {tried}")
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)

    def _endpoint_failed(self, ep: _Endpoint, reason: str) -> None:
        if self._endpoints[self._current] is ep and len(self._endpoints) > 1:
            LOG.warning("etcd endpoint %s failed (%s); trying the next one", ep.url, reason)
        else:
            LOG.debug("etcd endpoint %s failed (%s)", ep.url, reason)
        with self._mutex:
            streams = ep.take_streams()
        for stream in streams:
            stream.close(EtcdUnavailable(f"watch on {ep.url} abandoned: the endpoint failed "
                                         f"({reason})"))

    # -- users and tokens --

    def _get_token(self, ep: _Endpoint) -> str | None:
        if self.config.username is None:
            return None
        with self._auth_mutex:
            if self._token is None:
                self._token = self._authenticate()
            return self._token or None

    def _drop_token(self, token: str) -> None:
        with self._auth_mutex:
            if self._token == token:  # not renewed meanwhile by another thread
                self._token = None

    def _authenticate(self) -> str:
        """A fresh token ("" when etcd has auth off: requests then go without one)."""
        request = etcdrpc.AuthenticateRequest(name=self.config.username,
                                              password=self.config.password or "")
        try:
            answer = self._unary("authenticate", lambda ep: ep.auth.Authenticate, request,
                                 idempotent=True, auth=False)
        except EtcdAuthError as exc:
            if "not enabled" in str(exc):
                LOG.info("etcd: auth is not enabled; user %r ignored", self.config.username)
                return ""
            raise EtcdAuthError(f"etcd rejected the credentials of user "
                                f"{self.config.username!r}") from None
        LOG.debug("etcd: authenticated as %r", self.config.username)
        return str(answer.token)


# --- watches -------------------------------------------------------------------------------------


class _WatchStream:
    """One ``Watch`` gRPC stream to one endpoint, carrying many watches, and its reader thread."""

    def __init__(self, ep: _Endpoint, metadata: Any, token: str | None) -> None:
        self.url = ep.url
        self.token = token
        self.alive = True
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: deque[_GrpcWatch] = deque()  # creates sent, answered in this order
        self._watches: dict[int, _GrpcWatch] = {}
        self._retiring = False
        self._call = ep.watch.Watch(self._request_iter(), metadata=metadata)
        self._reader = threading.Thread(target=self._run, daemon=True,
                                        name=f"fairlock-grpc-watch-{ep.url}")
        self._reader.start()

    def _request_iter(self) -> Iterator[Any]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def create(self, watch: _GrpcWatch, request: Any) -> None:
        with self._lock:
            if not self.alive:
                if isinstance(self.error, (EtcdAuthError, _RenewToken)):
                    raise self.error
                raise _TryNext(getattr(self.error, "reason", str(self.error or "stream closed")),
                               maybe_applied=False)
            self._pending.append(watch)
            self._requests.put(request)  # under the lock: queue order is answer order

    def cancel(self, watch: _GrpcWatch) -> None:
        with self._lock:
            watch_id = watch.watch_id
            if watch_id is not None and self._watches.pop(watch_id, None) is watch and self.alive:
                self._requests.put(etcdrpc.WatchRequest(
                    cancel_request=etcdrpc.WatchCancelRequest(watch_id=watch_id)))
            close = self._retiring and not self._watches and not self._pending
        if close:
            self.close(None)

    def retire(self) -> None:
        """Close once the watches it carries are gone (a newer stream takes new ones)."""
        with self._lock:
            self._retiring = True
            close = not self._watches and not self._pending
        if close:
            self.close(None)

    def close(self, error: BaseException | None) -> None:
        """End the stream; its watches break with ``error``, or are cancelled if it is None."""
        with self._lock:
            if not self.alive:
                return
            self.alive = False
            self.error = error
            watches = [*self._pending, *self._watches.values()]
            self._pending.clear()
            self._watches.clear()
            self._requests.put(None)
        self._call.cancel()
        for watch in watches:
            if error is None:
                watch.cancel()
            else:
                watch._break(error)

    def join(self, timeout: float) -> None:
        if self._reader is not threading.current_thread():
            self._reader.join(timeout)

    def _run(self) -> None:
        try:
            for response in self._call:
                self._handle(response)
            self.close(EtcdUnavailable(f"watch stream from {self.url} ended"))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and not self.alive:
                return  # we closed it
            error = _rpc_error(self.url, exc)
            if isinstance(error, _TryNext):
                reason = error.reason
                error = EtcdUnavailable(f"watch stream from {self.url} broke ({reason})")
                error.reason = reason  # type: ignore[attr-defined] - for a create's _TryNext
            self.close(error)
        except Exception as exc:  # never lose a broken stream: report it through get()
            self.close(EtcdUnavailable(f"watch stream from {self.url} broke "
                                       f"({type(exc).__name__})"))

    def _handle(self, response: Any) -> None:
        if response.created:
            with self._lock:
                watch = self._pending.popleft() if self._pending else None
                refused = response.canceled
                if watch is not None and not refused and not watch.abandoned:
                    self._watches[response.watch_id] = watch
                elif not refused and self.alive:  # nobody waits for it any more
                    self._requests.put(etcdrpc.WatchRequest(
                        cancel_request=etcdrpc.WatchCancelRequest(watch_id=response.watch_id)))
                close = self._retiring and not self._watches and not self._pending
            if watch is not None:
                if refused:
                    watch._refused(_watch_cancel(self.url, response.cancel_reason))
                else:
                    watch._created(response.watch_id)
            if close:
                self.close(None)
            return
        with self._lock:
            watch = self._watches.get(response.watch_id)
            if watch is not None and (response.canceled or response.compact_revision):
                del self._watches[response.watch_id]
        if watch is None:
            return  # the end of a watch we cancelled
        if response.compact_revision:
            watch._break(WatchCompacted(
                f"watch from revision {watch.start_revision} on {self.url}: history compacted "
                f"up to revision {response.compact_revision}; re-read and watch again"))
        elif response.canceled:
            watch._break(_watch_cancel(self.url, response.cancel_reason))
        elif response.events:
            watch._deliver([WatchEvent(type="DELETE" if e.type == 1 else "PUT", kv=_kv(e.kv))
                            for e in response.events])


class _GrpcWatch(Watch):
    """One watch on a shared stream: its queued events, its creation, its failure."""

    def __init__(self, stream: _WatchStream, start_revision: int, wakeup: Any) -> None:
        self.endpoint = stream.url
        self.start_revision = start_revision
        self.watch_id: int | None = None
        self.abandoned = False
        self._stream = stream
        self._wakeup = wakeup
        self._cond = threading.Condition(threading.Lock())
        self._events: deque[WatchEvent] = deque()
        self._cancelled = False
        self._error: BaseException | None = None
        self._refusal: BaseException | None = None

    def __repr__(self) -> str:
        state = ("cancelled" if self._cancelled else "broken" if self._error else
                 "watching" if self.watch_id is not None else "creating")
        return (f"<GrpcWatch {self.endpoint} from {self.start_revision} {state}, "
                f"{len(self._events)} queued>")

    # -- the Watch interface --

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._events:
                    return self._events.popleft()
                if self._cancelled:
                    return None
                if self._error is not None:
                    raise _fresh(self._error)
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)

    def cancel(self) -> None:
        with self._cond:
            if self._cancelled:
                return
            self._cancelled = True
            self.abandoned = True
            self._cond.notify_all()
        self._stream.cancel(self)

    # -- from the transport and the stream's reader --

    def wait_created(self, timeout: float) -> _GrpcWatch:
        with self._cond:
            self._cond.wait_for(lambda: self.watch_id is not None or self._error is not None
                                or self._refusal is not None or self._cancelled, timeout)
            if self._cancelled:
                raise EtcdError("the transport is closed")
            if self._refusal is not None:
                raise self._refusal
            if isinstance(self._error, (EtcdAuthError, _RenewToken)):
                raise self._error
            if self._error is not None:
                raise _TryNext(getattr(self._error, "reason", str(self._error)),
                               maybe_applied=False)
            if self.watch_id is None:
                self.abandoned = True  # the stream cancels it if etcd confirms it later
                raise _TryNext(f"watch not confirmed within {timeout:g} s", maybe_applied=False)
        return self

    def _created(self, watch_id: int) -> None:
        with self._cond:
            self.watch_id = watch_id
            self._cond.notify_all()

    def _refused(self, error: BaseException) -> None:
        with self._cond:
            self._refusal = error
            self._cond.notify_all()

    def _deliver(self, events: list[WatchEvent]) -> None:
        with self._cond:
            if self._cancelled:
                return
            self._events.extend(events)
            self._cond.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()

    def _break(self, error: BaseException) -> None:
        with self._cond:
            if self._cancelled or self._error is not None:
                return
            self._error = error
            self._cond.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()


def _fresh(error: BaseException) -> BaseException:
    """A new exception like ``error``, so repeated ``get`` calls do not grow one traceback."""
    if isinstance(error, (_TryNext, _RenewToken)):
        return EtcdUnavailable(str(error))
    try:
        return type(error)(*error.args)
    except Exception:
        return error
