"""What the etcd transports share: option checks, endpoint failover, tokens, queued watches.

1. :class:`FailoverTransport` runs one call against a list of endpoints: the endpoint that
   answered last first, then the others, round after round with a short back-off, until the
   call's ``timeout`` is spent; then :class:`EtcdUnavailable` lists every endpoint and why it
   failed. A failure that may have applied a write raises :class:`TxnOutcomeUnknown` instead of
   being repeated. A token etcd rejects is renewed once per call; a second refusal is final.
2. The transports supply only what differs: how an attempt is made on one endpoint
   (:meth:`FailoverTransport._attempt`), whether an endpoint can be tried at all, what happens
   to the watches of an endpoint that failed, and how a user is authenticated.
3. :class:`QueuedWatch` is a watch's event queue behind a condition: ``get``, ``cancel`` and
   ``_break``, with hooks for what a watch releases when it stops.
4. Never a secret in a log line or a message: tokens and passwords are only held, never shown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ArgumentTypeError, InvalidArgumentError
from .config import DEFAULT_CONNECT_TIMEOUT, EtcdConfig
from .transport import (
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    Transport,
    TxnOutcomeUnknown,
    Watch,
    WatchEvent,
)


#: a Compare's target: (etcd's enum name, the field that holds the value); its op: etcd's result
COMPARE_TARGETS = {
    "create_revision": ("CREATE", "create_revision"),
    "mod_revision": ("MOD", "mod_revision"),
    "version": ("VERSION", "version"),
    "value": ("VALUE", "value"),
    "lease": ("LEASE", "lease"),
}
COMPARE_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}

#: etcd refusals that come before anything is proposed: a write may be sent elsewhere.
#: "the client connection is closing" is grpc-go's ErrClientConnClosing, which a stopping
#: member's HTTP gateway answers (408) for calls it can no longer pass to its gRPC server.
NOT_APPLIED = ("no leader", "not enough started members", "too many requests", "not capable",
               "server stopped", "stopping", "client connection is closing")
#: etcd says the token must be renewed (expired, unknown, or issued before an auth change).
RENEW_TOKEN = ("invalid auth token", "auth store is old", "revision of auth store is old")
AUTH_ERRORS = ("permission denied", "user name is empty", "authentication failed",
               "user name not found", "invalid auth token", "auth store is old",
               "authentication is not enabled")


class _TryNext(Exception):
    """This endpoint failed; ``maybe_applied``: a write sent to it may have taken effect."""

    def __init__(self, reason: str, maybe_applied: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_applied = maybe_applied


class _RenewToken(Exception):
    """etcd rejected the token (expired or stale): authenticate again, then retry."""


def check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise ArgumentTypeError(f"{name} must be bytes, got {type(value).__name__}")
    return value


def check_lease_id(lease_id: object) -> int:
    """An etcd lease id: a positive int (etcd's ids are positive int64s)."""
    if isinstance(lease_id, bool) or not isinstance(lease_id, int):
        raise ArgumentTypeError(f"lease_id must be an int, got {type(lease_id).__name__}")
    if not 0 < lease_id < 2**63:
        raise InvalidArgumentError(f"lease_id must be a positive int64, got {lease_id}")
    return lease_id


def check_options(*, timeout: float, connect_timeout: float | None,
                  request_timeout: float | None, ca_cert: str | None, cert_cert: str | None,
                  cert_key: str | None, username: str | None, password: str | None) -> None:
    """The constructor arguments both transports take, checked the same way."""
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


def make_config(endpoints: tuple[str, ...], protocol: str, *, timeout: float,
                connect_timeout: float | None, request_timeout: float | None,
                ca_cert: str | None, cert_cert: str | None, cert_key: str | None,
                username: str | None, password: str | None) -> EtcdConfig:
    return EtcdConfig(
        endpoints=endpoints, protocol=protocol, timeout=float(timeout),
        connect_timeout=float(connect_timeout if connect_timeout is not None
                              else min(DEFAULT_CONNECT_TIMEOUT, timeout)),
        request_timeout=request_timeout, ca_cert=ca_cert, cert_cert=cert_cert,
        cert_key=cert_key, username=username, password=password,
    )


class FailoverTransport(Transport):
    """The failover loop and the token of a transport over several etcd endpoints.

    A subclass sets ``config``, ``_endpoints`` (objects with a ``url``), ``_current``,
    ``_timeout``, ``_clock``, ``_mutex``, ``_auth_mutex``, ``_token``, ``_closed``, and ``_log``.
    """

    _log: logging.Logger
    _repr_name = "Transport"
    config: EtcdConfig
    _endpoints: Sequence[Any]
    _current: int
    _timeout: float
    _clock: Callable[[], float]
    _mutex: Any
    _auth_mutex: Any
    _token: str | None
    _closed: bool

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self.config.endpoints

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call tries first (the last one that answered)."""
        return str(self._endpoints[self._current].url)

    def __repr__(self) -> str:
        user = f" user={self.config.username!r}" if self.config.username else ""
        return (f"<{self._repr_name} {list(self.endpoints)} current={self.current_endpoint}"
                f"{user}{' closed' if self._closed else ''}>")

    # -- what a transport supplies --

    def _reachable(self, ep: Any, remaining: float, failures: dict[str, str]) -> bool:
        """False (after recording why in ``failures``) to skip ``ep`` this round."""
        return True

    def _attempt(self, attempt: Callable[..., Any], ep: Any, deadline: float,
                 remaining: float, token: str | None) -> Any:
        raise NotImplementedError

    def _abandon_watches(self, ep: Any, reason: str) -> None:
        """Break every watch on ``ep`` (use :meth:`_abandoned` for each one's error)."""

    def _request_token(self) -> str:
        """Authenticate ``config.username`` once (a call with ``auth=False``); the token."""
        raise NotImplementedError

    # -- calls with failover --

    def _with_failover(self, attempt: Callable[..., Any], *, idempotent: bool, what: str,
                       auth: bool = True) -> Any:
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
                if not self._reachable(ep, remaining, failures):
                    continue
                while True:
                    token = self._get_token() if auth else None
                    try:
                        result = self._attempt(attempt, ep, deadline, remaining, token)
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
                        self._log.info("etcd: now using endpoint %s", ep.url)
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

    def _endpoint_failed(self, ep: Any, reason: str) -> None:
        if self._endpoints[self._current] is ep and len(self._endpoints) > 1:
            self._log.warning("etcd endpoint %s failed (%s); trying the next one", ep.url, reason)
        else:
            self._log.debug("etcd endpoint %s failed (%s)", ep.url, reason)
        self._abandon_watches(ep, reason)

    @staticmethod
    def _abandoned(ep: Any, reason: str) -> EtcdUnavailable:
        return EtcdUnavailable(f"watch on {ep.url} abandoned: the endpoint failed ({reason})")

    # -- users and tokens --

    def _get_token(self) -> str | None:
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
        try:
            token = self._request_token()
        except EtcdAuthError as exc:
            if "not enabled" in str(exc):
                self._log.info("etcd: auth is not enabled; user %r ignored",
                               self.config.username)
                return ""
            raise EtcdAuthError(f"etcd rejected the credentials of user "
                                f"{self.config.username!r}") from None
        self._log.debug("etcd: authenticated as %r", self.config.username)
        return token


def fresh_error(error: BaseException,
                unavailable: tuple[type[BaseException], ...] = (_TryNext,)) -> BaseException:
    """A new exception like ``error``, so repeated ``get`` calls do not grow one traceback."""
    if isinstance(error, unavailable):
        return EtcdUnavailable(str(error))
    try:
        return type(error)(*error.args)
    except Exception:
        return error


class QueuedWatch(Watch):
    """A watch's queued events, its cancellation and its failure, behind one condition.

    ``get`` returns queued events first, then None once cancelled, then raises the failure.
    A subclass releases what it holds in :meth:`_detach` (under the condition), then
    :meth:`_after_cancel` / :meth:`_after_break` (outside it).
    """

    #: deliveries after a failure are dropped (else queued, and read before the failure)
    _drop_after_error = False

    def __init__(self, wakeup: Any) -> None:
        self._wakeup = wakeup
        self._cond = threading.Condition(threading.Lock())
        self._events: deque[WatchEvent] = deque()
        self._cancelled = False
        self._error: BaseException | None = None

    def _fresh_error(self, error: BaseException) -> BaseException:
        return fresh_error(error)

    def _detach(self) -> Any:
        return None

    def _after_cancel(self, detached: Any) -> None:
        pass

    def _after_break(self, detached: Any) -> None:
        pass

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
                    raise self._fresh_error(self._error)
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
            detached = self._detach()
            self._cond.notify_all()
        self._after_cancel(detached)

    # -- from the reader --

    def _deliver(self, events: Sequence[WatchEvent]) -> bool:
        """Queue ``events`` and wake the waiter; False when the watch no longer takes any."""
        with self._cond:
            if self._cancelled or (self._drop_after_error and self._error is not None):
                return False
            self._events.extend(events)
            self._cond.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def _break(self, error: BaseException) -> None:
        with self._cond:
            if self._cancelled or self._error is not None:
                return
            self._error = error
            detached = self._detach()
            self._cond.notify_all()
        self._after_break(detached)
        if self._wakeup is not None:
            self._wakeup.set()
