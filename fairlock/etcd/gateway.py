"""The Transport over etcd's HTTP/JSON gateway (``/v3/...``): no gRPC, so it never blocks eventlet.

1. Every call is one HTTP POST with JSON; keys and values travel base64-encoded, int64s as
   strings. Requests go to the endpoint that answered last; on a connection error, a timeout or a
   5xx (no leader, ...) the next endpoint is tried, round after round with a short back-off, until
   the call's ``timeout`` is spent: then :class:`EtcdUnavailable` lists every endpoint and why it
   failed. No call ever waits longer than ``timeout`` (plus one connect timeout at most), even
   when an answer trickles in piece by piece (:func:`_read_by`).
2. Retry safety. Reads, read-only txns and lease calls are repeated freely (a duplicated lease
   grant leaves a lease nobody uses; it expires by itself). A *writing* txn is repeated only when
   it surely never reached etcd (connection refused or connect timeout, or etcd's "no leader"
   style refusals that come before a proposal). When the connection broke or timed out after the
   request was sent, or etcd says the proposal timed out, the txn may have been applied:
   :class:`TxnOutcomeUnknown` is raised and the caller re-reads state before deciding.
3. Watches are a streaming ``POST /v3/watch`` read by one thread per watch
   (``threading.Thread`` looked up at call time, so a green thread under eventlet).
   :meth:`GatewayTransport.watch` returns only after etcd's ``"created": true`` chunk. A
   compaction (``compact_revision``) makes ``get`` raise :class:`WatchCompacted`; a cancel by
   etcd, a stream that ends or breaks, or the failure of the watch's endpoint in any other call
   makes it raise :class:`EtcdError` (``EtcdUnavailable``): the lock re-reads and watches again.
   A member that hangs without closing its sockets is noticed by the next ordinary call that
   times out on it (the session's keepalive makes one every few seconds).
4. TLS: ``ca_cert`` verifies the servers, ``cert_cert``/``cert_key`` authenticate the client; a
   failed handshake is :class:`EtcdAuthError`. Users: ``POST /v3/auth/authenticate`` once, the
   token in the ``Authorization`` header, authenticated again when etcd calls the token invalid
   or old. Wrong credentials and permission denials are :class:`EtcdAuthError`.
5. Secrets (password, token, key material) are never put in a log line, an exception message or
   a ``repr``.

Why not the ``etcd3gw`` client itself: importing any part of it (even ``etcd3gw.exceptions``,
through ``etcd3gw/__init__``) imports ``futurist`` and ``eventlet`` when they are installed, and
fairlock must never import eventlet; its ``transaction()`` takes raw JSON and its watch does not
report creation, so what it would add is ``requests.Session`` set up with ``verify``/``cert``,
which is done here the same way.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import threading as _threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from ..errors import ArgumentTypeError, InvalidArgumentError
from ._endpoints import (
    AUTH_ERRORS,
    COMPARE_RESULTS,
    COMPARE_TARGETS,
    NOT_APPLIED,
    RENEW_TOKEN,
    FailoverTransport,
    QueuedWatch,
    _RenewToken,
    _TryNext,
    check_options,
    make_config,
)
from ._endpoints import check_bytes as _check_bytes
from ._endpoints import check_lease_id as _check_lease_id
from .config import DEFAULT_TIMEOUT, EtcdConfig, parse_url
from .transport import (
    Compare,
    Delete,
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    LeaseTimeToLive,
    Put,
    Range,
    TxnResult,
    Watch,
    WatchCompacted,
    WatchEvent,
)

__all__ = ["GatewayTransport"]

LOG = logging.getLogger("fairlock.etcd.gateway")

API_PATH = "/v3/"

_TARGETS, _RESULTS = COMPARE_TARGETS, COMPARE_RESULTS
_NOT_APPLIED, _RENEW_TOKEN, _AUTH_ERRORS = NOT_APPLIED, RENEW_TOKEN, AUTH_ERRORS


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw.get("key")),
        value=_unb64(raw.get("value")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _encode_compare(c: Compare) -> dict[str, Any]:
    try:
        target, field_name = _TARGETS[c.target]
        result = _RESULTS[c.op]
    except KeyError:
        raise InvalidArgumentError(f"unknown compare target or op in {c!r}") from None
    out: dict[str, Any] = {"key": _b64(_check_bytes("Compare.key", c.key)),
                           "target": target, "result": result}
    if c.target == "value":
        out[field_name] = _b64(_check_bytes("Compare.value for target 'value'", c.value))
    else:
        if isinstance(c.value, bool) or not isinstance(c.value, int):
            raise ArgumentTypeError(f"Compare.value for target {c.target!r} must be an int")
        out[field_name] = str(c.value)
    if c.range_end is not None:
        out["range_end"] = _b64(_check_bytes("Compare.range_end", c.range_end))
    return out


def _encode_op(op: Put | Delete | Range) -> dict[str, Any]:
    if isinstance(op, Put):
        put: dict[str, Any] = {"key": _b64(_check_bytes("Put.key", op.key)),
                               "value": _b64(_check_bytes("Put.value", op.value))}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    if isinstance(op, Delete):
        delete: dict[str, Any] = {"key": _b64(_check_bytes("Delete.key", op.key))}
        if op.range_end is not None:
            delete["range_end"] = _b64(_check_bytes("Delete.range_end", op.range_end))
        return {"request_delete_range": delete}
    if isinstance(op, Range):
        rng: dict[str, Any] = {"key": _b64(_check_bytes("Range.key", op.key))}
        if op.range_end is not None:
            rng["range_end"] = _b64(_check_bytes("Range.range_end", op.range_end))
        return {"request_range": rng}
    raise ArgumentTypeError(f"txn ops are Put, Delete or Range, got {type(op).__name__}")


# --- telling failures apart ----------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests -> urllib3 -> socket/ssl), depth-first."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *e.args])


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    for e in _causes(exc):
        if isinstance(e, ssl.SSLError):
            return e
    return None


def _surely_not_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached etcd: the TCP connection never opened."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    return any(isinstance(e, (urllib3.exceptions.NewConnectionError,
                              urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError))
               for e in _causes(exc))


def _reason(exc: BaseException, read_timeout: float) -> str:
    """A short, secret-free description of a transport failure."""
    if any(isinstance(e, ConnectionRefusedError) for e in _causes(exc)):
        return "connection refused"
    if isinstance(exc, requests.exceptions.ConnectTimeout) or any(
            isinstance(e, urllib3.exceptions.ConnectTimeoutError) for e in _causes(exc)):
        return "connect timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"no answer within {read_timeout:g} s"
    if any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in _causes(exc)):
        return "cannot connect"
    inner = [type(e).__name__ for e in _causes(exc) if isinstance(e, OSError)
             and not isinstance(e, requests.exceptions.RequestException)]
    return "connection broke" + (f" ({inner[0]})" if inner else "")


def _etcd_error(resp: requests.Response) -> tuple[str, int | None]:
    """etcd's message and gRPC code from an error answer."""
    try:
        body = resp.json()
    except ValueError:
        return (resp.text.strip()[:200] or resp.reason or str(resp.status_code)), None
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):  # a gateway stream error
            return str(inner.get("message", "")), inner.get("grpc_code")
        message = body.get("message") or body.get("error") or ""
        code = body.get("code")
        return str(message), int(code) if isinstance(code, int) else None
    return str(body)[:200], None


def _classify(url: str, status: int, message: str, code: int | None) -> Exception:
    """Map an etcd error answer to what the caller sees (or to _TryNext / _RenewToken)."""
    low = message.lower()
    if any(s in low for s in _RENEW_TOKEN) or code == 16 or status == 401:
        return _RenewToken(message)
    if code == 5 and "lease" in low or "lease not found" in low:
        return LeaseNotFound(f"{message} ({url})")
    if "larger than max" in low:
        # gRPC's message size limit (RESOURCE_EXHAUSTED, like "too many requests"): nothing was
        # applied, and no retry, on this member or another, can succeed.
        return EtcdError(f"etcd at {url} refused a request that is too large: {message}")
    if any(s in low for s in _AUTH_ERRORS) or code == 7 or status == 403:
        return EtcdAuthError(f"etcd at {url} refused: {message}")
    # 408 is gRPC's CANCELLED through the gateway: a stopping member cancels the calls it was
    # passing to its gRPC server. Try the next endpoint, as for 503 (UNAVAILABLE).
    if status >= 500 or status == 408 or code in (1, 4, 8, 13, 14):
        return _TryNext(f"{status} {message}",
                        maybe_applied=not any(s in low for s in _NOT_APPLIED))
    return EtcdError(f"etcd at {url} answered {status}: {message}")


# --- endpoints -----------------------------------------------------------------------------------


class _Endpoint:
    """One etcd member: its base URL and a requests session set up for its TLS."""

    def __init__(self, url: str, config: EtcdConfig) -> None:
        self.url = url
        self.session = _new_session(config)
        self.watches: weakref.WeakSet[_GatewayWatch] = weakref.WeakSet()

    def api(self, path: str) -> str:
        return self.url + API_PATH + path


def _new_session(config: EtcdConfig) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not sit between us and etcd
    if config.ca_cert is not None:
        session.verify = config.ca_cert
    if config.cert_cert is not None and config.cert_key is not None:
        session.cert = (config.cert_cert, config.cert_key)
    return session


def _check_endpoint(url: object) -> str:
    if not isinstance(url, str):
        raise ArgumentTypeError(f"an endpoint must be a str URL, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidArgumentError("bad etcd endpoint (want http[s]://host:port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(f"bad etcd endpoint {url!r} (want http[s]://host:port)")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError("credentials go in username=/password=, not in an endpoint")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidArgumentError(f"bad etcd endpoint {url!r}: no path or query allowed")
    return url.rstrip("/")


# --- the transport -------------------------------------------------------------------------------


class GatewayTransport(FailoverTransport):
    """:class:`~fairlock.etcd.transport.Transport` over etcd's HTTP gateway, with failover.

    ``endpoints``: ``["http://127.0.0.1:2379", ...]`` (all http or all https). ``timeout``: the
    most one call may take across all endpoints. ``connect_timeout``: per endpoint.
    ``request_timeout``: how long one endpoint may take to answer (default: ``timeout``, or half
    of it with several endpoints, so a hung member leaves time to try another). Or build it from
    a URL: ``GatewayTransport.from_url("etcd3+http://h1:2379,h2:2379?timeout=5")``.
    """

    _log = LOG
    _repr_name = "GatewayTransport"

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float | None = None, request_timeout: float | None = None,
                 ca_cert: str | None = None, cert_cert: str | None = None,
                 cert_key: str | None = None, username: str | None = None,
                 password: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        urls = tuple(_check_endpoint(u) for u in endpoints)
        if not urls:
            raise InvalidArgumentError("at least one etcd endpoint is needed")
        protocols = {urlsplit(u).scheme for u in urls}
        if len(protocols) != 1:
            raise InvalidArgumentError("endpoints must be all http or all https")
        check_options(timeout=timeout, connect_timeout=connect_timeout,
                      request_timeout=request_timeout, ca_cert=ca_cert, cert_cert=cert_cert,
                      cert_key=cert_key, username=username, password=password)
        self.config = make_config(
            urls, protocols.pop(), timeout=timeout, connect_timeout=connect_timeout,
            request_timeout=request_timeout, ca_cert=ca_cert, cert_cert=cert_cert,
            cert_key=cert_key, username=username, password=password)
        self._timeout = self.config.timeout
        self._connect_timeout = self.config.connect_timeout
        self._request_timeout = self.config.effective_request_timeout
        self._clock = clock
        self._endpoints = [_Endpoint(u, self.config) for u in urls]
        self._current = 0
        self._mutex = _threading.Lock()
        self._auth_mutex = _threading.Lock()
        self._token: str | None = None
        self._readers: list[Any] = []  # watch reader threads, joined by close()
        self._closed = False

    @classmethod
    def from_config(cls, config: EtcdConfig, **kwargs: Any) -> GatewayTransport:
        return cls(list(config.endpoints), timeout=config.timeout,
                   connect_timeout=config.connect_timeout,
                   request_timeout=config.request_timeout, ca_cert=config.ca_cert,
                   cert_cert=config.cert_cert, cert_key=config.cert_key,
                   username=config.username, password=config.password, **kwargs)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> GatewayTransport:
        return cls.from_config(parse_url(url), **kwargs)

    # -- the Transport interface --

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete | Range],
            failure: Sequence[Put | Delete | Range] = ()) -> TxnResult:
        body = {
            "compare": [_encode_compare(c) for c in compare],
            "success": [_encode_op(op) for op in success],
            "failure": [_encode_op(op) for op in failure],
        }
        read_only = all(isinstance(op, Range) for op in (*success, *failure))
        answer = self._call("kv/txn", body, idempotent=read_only)
        succeeded = bool(answer.get("succeeded", False))
        ops = success if succeeded else failure
        raw = answer.get("responses") or []
        responses = []
        for i, op in enumerate(ops):
            if isinstance(op, Range):
                entry = raw[i].get("response_range", {}) if i < len(raw) else {}
                responses.append(tuple(_kv(kv) for kv in entry.get("kvs", ())))
            else:
                responses.append(())
        return TxnResult(succeeded=succeeded, revision=int(answer["header"]["revision"]),
                         responses=tuple(responses))

    def get_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KeyValue]]:
        body: dict[str, Any] = {"key": _b64(_check_bytes("key", key))}
        if range_end is not None:
            body["range_end"] = _b64(_check_bytes("range_end", range_end))
        answer = self._call("kv/range", body, idempotent=True)
        return int(answer["header"]["revision"]), [_kv(kv) for kv in answer.get("kvs", ())]

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise ArgumentTypeError("ttl must be an int number of seconds")
        if ttl < 1:
            raise InvalidArgumentError(f"ttl must be >= 1 second, got {ttl}")
        # Repeating a grant whose answer was lost leaves an unused lease that expires: harmless.
        answer = self._call("lease/grant", {"TTL": str(ttl), "ID": "0"}, idempotent=True)
        if answer.get("error"):
            raise EtcdError(f"lease grant failed: {answer['error']}")
        return int(answer["ID"]), int(answer["TTL"])

    def lease_keepalive(self, lease_id: int) -> int:
        answer = self._call("lease/keepalive", {"ID": str(lease_id)}, idempotent=True)
        result = answer.get("result", answer)
        ttl = int(result.get("TTL", 0))
        if ttl <= 0:  # etcd answers an expired or revoked lease with no TTL
            raise LeaseNotFound(f"lease {lease_id:x} expired or was revoked")
        return ttl

    def lease_revoke(self, lease_id: int) -> None:
        try:
            self._call("lease/revoke", {"ID": str(lease_id)}, idempotent=True)
        except LeaseNotFound:
            pass

    def lease_time_to_live(self, lease_id: int) -> LeaseTimeToLive | None:
        _check_lease_id(lease_id)
        try:
            answer = self._call("lease/timetolive", {"ID": str(lease_id)}, idempotent=True)
        except LeaseNotFound:
            return None
        ttl = int(answer.get("TTL", -1))
        if ttl < 0:  # etcd answers a lease it does not have with TTL -1
            return None
        return LeaseTimeToLive(lease_id, ttl, int(answer.get("grantedTTL", 0)))

    def watch(self, key: bytes, start_revision: int, range_end: bytes | None = None, *,
              no_put: bool = False, wakeup: Any = None) -> Watch:
        create: dict[str, Any] = {"key": _b64(_check_bytes("key", key)),
                                  "start_revision": str(int(start_revision))}
        if range_end is not None:
            create["range_end"] = _b64(_check_bytes("range_end", range_end))
        if no_put:
            create["filters"] = ["NOPUT"]
        body = json.dumps({"create_request": create}).encode()

        def attempt(ep: _Endpoint, remaining: float, headers: dict[str, str]) -> Any:
            watch = _GatewayWatch(self, ep, start_revision, wakeup)
            watch._start(body, headers, (min(self._connect_timeout, remaining),
                                         min(self._request_timeout, remaining)))
            failure = watch._wait_created(min(self._request_timeout, remaining) + 0.5)
            if failure is None:
                return watch
            watch.cancel()
            raise failure

        # Opening a watch twice is harmless: a failed attempt is cancelled before the next.
        result: _GatewayWatch = self._with_failover(attempt, idempotent=True, what="watch")
        return result

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            watches = [w for ep in self._endpoints for w in list(ep.watches)]
            readers = [t for t in self._readers if t.is_alive()]
        for w in watches:
            w.cancel()
        for thread in readers:  # readers see end of stream at once after cancel; bounded anyway
            if thread is not _threading.current_thread():
                thread.join(1.0)
        for ep in self._endpoints:
            ep.session.close()

    # -- calls with failover --

    def _call(self, path: str, body: dict[str, Any], *, idempotent: bool,
              auth: bool = True) -> dict[str, Any]:
        data = json.dumps(body).encode()

        def attempt(ep: _Endpoint, remaining: float, headers: dict[str, str]) -> Any:
            connect, limit = min(self._connect_timeout, remaining), min(self._request_timeout, remaining)
            give_up = self._clock() + connect + limit
            try:
                resp = ep.session.post(ep.api(path), data=data, headers=headers, stream=True,
                                       timeout=(connect, limit))
                _read_by(resp, give_up, self._clock)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                if _tls_error(exc) is not None:
                    raise _tls_failure(ep.url, exc) from None
                reason = _reason(exc, min(self._request_timeout, remaining))
                if ep.url.startswith("http://") and "RemoteDisconnected" in reason:
                    # What an https-only etcd does to a plain http request; also a crash, so a hint.
                    reason += "; an https server hangs up so on http: check the URL's scheme"
                raise _TryNext(reason, maybe_applied=not _surely_not_sent(exc)) from None
            if resp.status_code == 200:
                try:
                    answer: dict[str, Any] = resp.json()
                except ValueError:
                    raise _TryNext("answer is not JSON", maybe_applied=True) from None
                return answer
            message, code = _etcd_error(resp)
            raise _classify(ep.url, resp.status_code, message, code)

        result: dict[str, Any] = self._with_failover(attempt, idempotent=idempotent, what=path,
                                                     auth=auth)
        return result

    def _attempt(self, attempt: Callable[[_Endpoint, float, dict[str, str]], Any],
                 ep: _Endpoint, deadline: float, remaining: float, token: str | None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        return attempt(ep, remaining, headers)

    def _abandon_watches(self, ep: _Endpoint, reason: str) -> None:
        with self._mutex:
            watches = list(ep.watches)
        for watch in watches:
            watch._break(self._abandoned(ep, reason))

    # -- users and tokens --

    def _request_token(self) -> str:
        body = {"name": self.config.username, "password": self.config.password or ""}
        answer = self._call("auth/authenticate", body, idempotent=True, auth=False)
        return str(answer["token"])


# --- watches -------------------------------------------------------------------------------------


class _GatewayWatch(QueuedWatch):
    """One streaming ``/v3/watch`` request and the thread that reads it."""

    def __init__(self, transport: GatewayTransport, ep: _Endpoint, start_revision: int,
                 wakeup: Any) -> None:
        self.endpoint = ep.url
        self.start_revision = int(start_revision)
        self.watch_id: int | None = None
        super().__init__(wakeup)
        self._ep = ep
        self._session = _new_session(transport.config)
        self._created = False
        self._sock: socket.socket | None = None
        self._transport = transport
        self._registry_mutex = transport._mutex
        with self._registry_mutex:
            ep.watches.add(self)

    def __repr__(self) -> str:
        state = ("cancelled" if self._cancelled else "broken" if self._error else
                 "watching" if self._created else "creating")
        return (f"<GatewayWatch {self.endpoint} from {self.start_revision} {state}, "
                f"{len(self._events)} queued>")

    # -- what a stop releases --

    def _detach(self) -> socket.socket | None:
        sock, self._sock = self._sock, None
        return sock

    def _after_cancel(self, sock: socket.socket | None) -> None:
        with self._registry_mutex:
            self._ep.watches.discard(self)
        _shutdown(sock)

    def _after_break(self, sock: socket.socket | None) -> None:
        _shutdown(sock)

    # -- the reader --

    def _start(self, body: bytes, headers: dict[str, str], timeouts: tuple[float, float]) -> None:
        thread = _threading.Thread(target=self._run, args=(body, headers, timeouts),
                                   name=f"fairlock-watch-{self.endpoint}", daemon=True)
        with self._registry_mutex:
            readers = self._transport._readers
            readers[:] = [t for t in readers if t.is_alive()]
            readers.append(thread)
        thread.start()

    def _wait_created(self, timeout: float) -> BaseException | None:
        """None once etcd confirmed the watch; else the failure (_TryNext, an EtcdError...)."""
        with self._cond:
            self._cond.wait_for(lambda: self._created or self._error is not None
                                or self._cancelled, timeout)
            if self._created and self._error is None:
                return None
            if self._error is not None:
                return self._error
        return _TryNext(f"watch not confirmed within {timeout:g} s", maybe_applied=False)

    def _run(self, body: bytes, headers: dict[str, str], timeouts: tuple[float, float]) -> None:
        resp = None
        try:
            try:
                resp = self._session.post(self._ep.api("watch"), data=body, headers=headers,
                                          stream=True, timeout=timeouts)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                if _tls_error(exc) is not None:
                    self._break(_tls_failure(self.endpoint, exc))
                else:
                    self._break(_TryNext(_reason(exc, timeouts[1]), maybe_applied=False))
                return
            if resp.status_code != 200:
                message, code = _etcd_error(resp)
                self._break(_classify(self.endpoint, resp.status_code, message, code))
                return
            sock = _socket_of(resp)
            with self._cond:
                if self._cancelled or self._error is not None:
                    _shutdown(sock)
                    return
                self._sock = sock
            buffer = b""
            for chunk in resp.iter_content(chunk_size=None):
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    if line.strip() and not self._handle(json.loads(line), sock):
                        return
            self._break(EtcdUnavailable(f"watch stream from {self.endpoint} ended"))
        except Exception as exc:  # a broken stream: report it through get(), never lose it
            if isinstance(exc, EtcdError):
                self._break(exc)
            else:
                self._break(EtcdUnavailable(f"watch stream from {self.endpoint} broke "
                                            f"({type(exc).__name__})"))
        finally:
            if resp is not None:
                resp.close()
            self._session.close()

    def _handle(self, message: dict[str, Any], sock: socket.socket | None) -> bool:
        """Apply one stream message; False when the watch is over."""
        if isinstance(message.get("error"), dict):
            err = message["error"]
            self._break(_classify(self.endpoint, int(err.get("http_code", 500) or 500),
                                  str(err.get("message", "")), err.get("grpc_code")))
            return False
        result = message.get("result", {})
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0) or 0)
            reason = str(result.get("cancel_reason", ""))
            if compact:
                error: BaseException = WatchCompacted(
                    f"watch from revision {self.start_revision} on {self.endpoint}: history "
                    f"compacted up to revision {compact}; re-read and watch again")
            elif reason:
                error = _classify(self.endpoint, 400, reason.rsplit("desc = ", 1)[-1], None)
            else:
                error = EtcdError(f"etcd cancelled the watch on {self.endpoint}")
            self._break(error)
            return False
        if result.get("created"):
            if sock is not None:
                sock.settimeout(None)  # created: from now on the stream may stay quiet for hours
            with self._cond:
                self.watch_id = int(result.get("watch_id", 0) or 0)
                self._created = True
                self._cond.notify_all()
        events = result.get("events")
        if events:
            parsed = [WatchEvent(type="DELETE" if e.get("type") == "DELETE" else "PUT",
                                 kv=_kv(e.get("kv", {}))) for e in events]
            if not self._deliver(parsed):
                return False
        return True


def _read_by(resp: requests.Response, give_up: float, clock: Callable[[], float]) -> None:
    """Read the whole answer by ``give_up`` (then ``resp.json()`` and ``resp.text`` work as usual).

    requests' read timeout bounds each wait for the next bytes, not the answer: over a lossy link
    (a stall before each piece, each shorter than the timeout) an answer could trickle in for
    many times the timeout. Here the socket's timeout is what is left before ``give_up`` at each
    read, and each read waits for one receive at most (``read1``, where urllib3 has it).
    """
    sock = _socket_of(resp)
    reader = getattr(resp.raw, "read1", None) or resp.raw.read
    parts = []
    try:
        while True:
            left = give_up - clock()
            if left <= 0:
                raise socket.timeout("the answer did not complete in time")
            if sock is not None:
                sock.settimeout(left)
            part = reader(65536, decode_content=True)
            if not part:
                break
            parts.append(part)
    except (socket.timeout, urllib3.exceptions.ReadTimeoutError) as exc:
        resp.close()
        raise requests.exceptions.ReadTimeout(exc) from exc
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        resp.close()
        raise requests.exceptions.ConnectionError(exc) from exc
    # What requests keeps a read answer in (as every requests-based client that reads a
    # stream itself does): resp.json(), .text and .content then work unchanged.
    resp._content = b"".join(parts)


def _tls_failure(url: str, exc: BaseException) -> EtcdAuthError:
    tls = _tls_error(exc)
    why = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or "handshake"
    return EtcdAuthError(f"TLS with {url} failed: {why} (check ca_cert, and cert_cert/cert_key "
                         f"if the server wants a client certificate)")


def _socket_of(resp: requests.Response) -> socket.socket | None:
    """The socket under a streaming response (http.client's reader), or None if not found."""
    try:
        sock = resp.raw._fp.fp.raw._sock  # urllib3 HTTPResponse -> http.client -> SocketIO
    except AttributeError:
        return None
    return sock if isinstance(sock, socket.socket) else None


def _shutdown(sock: socket.socket | None) -> None:
    """Wake a reader blocked in recv() on ``sock`` (it then sees end of stream)."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
