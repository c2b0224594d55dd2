"""Bad input to every public entry point: a clear, documented exception, no hang, state intact.

One table, :data:`CASES`: for each entry point and bad argument, the exception class the caller
gets (exactly that class) and a fragment of its message. doc/source/errors.rst shows the same
table to users; ``test_errors_doc_matches_the_table`` keeps the two equal (regenerate the block
between its ``.. begin generated`` / ``.. end generated`` comments with
``python -m tests.test_bad_input``).

Every case then checks that the state is intact: the same lock object (or a new one with the
same name) is free, is taken and released at once, and a waiter in another thread (on etcd: in
another session, i.e. another "process") is handed the lock. Cases marked ``contended`` make the
bad call while another thread holds the lock and a third one is queued: afterwards the queued
one is served, in order. Every case has a pytest timeout; calls that must give up on an
unreachable server also have an upper bound on how long they may take (``within``).

Decisions recorded here (and in errors.rst): lock names are non-empty ``str`` everywhere; '/'
and NUL are ordinary characters (the etcd lock percent-quotes the whole name into one key
component, see ``test_etcd_names_never_reach_other_keys``); a local lock's name may be any
length; an etcd lock's name is at most ``MAX_NAME_BYTES`` (1024) bytes of UTF-8.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from oslo_concurrency import lockutils as oslo_lockutils
from oslo_config import cfg

import fairlock
from fairlock import lockutils
from fairlock._core import FairQueue
from fairlock.coalesce import Coalescer, coalesced
from fairlock.context import resolve_lane
from fairlock.errors import (
    AcquireTimeout,
    ArgumentTypeError,
    DeadlockError,
    InvalidArgumentError,
    NotHeldError,
    NotOwnerError,
    TicketOrderError,
    UnknownLaneError,
    UnknownTicketError,
)
from fairlock.etcd import (
    EtcdAuthError,
    EtcdError,
    EtcdLock,
    EtcdUnavailable,
    LeaseNotFound,
    LockLost,
    Session,
    SessionLost,
)
from fairlock.etcd.backend import EtcdBackend
from fairlock.etcd.gateway import GatewayTransport
from fairlock.etcd.lock import MAX_NAME_BYTES, lock_keys, lock_name_from_key
from fairlock.etcd.transport import prefix_end
from fairlock.testing import free_port, make_tls_files

with warnings.catch_warnings():
    # tooz imports futurist, which imports eventlet when installed: its deprecation notice is
    # about the environment, not about these tests.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import tooz
    from tooz import coordination

from fairlock.tooz_driver import ToozURLError

from .kinds import start, wait_for

ROOT = Path(__file__).resolve().parent.parent
ERRORS_RST = ROOT / "doc" / "source" / "errors.rst"

#: How long a waiter may take to be served in an intact-state check (a hang fails well before
#: the pytest timeout).
SERVE = 10.0


# -- what one case works on -------------------------------------------------------------------------


class ExitStatus(Exception):
    """``python -m fairlock ...`` exited with a non-zero status (message: status, last stderr line)."""

    def __init__(self, returncode: int, stderr: str) -> None:
        lines = [line for line in stderr.splitlines() if line.strip()]
        super().__init__(f"exit status {returncode}: {lines[-1] if lines else ''}")
        self.returncode = returncode
        self.stderr = stderr


class World:
    """The objects one case works on, made on first use, closed after the case.

    ``name`` is a lock name no other case uses. ``server`` is the etcd the case talks to
    ("plain", "tls" or "auth" fixture); sessions and tooz coordinators use it with good
    credentials, under a key prefix no other test uses.
    """

    def __init__(self, request: Any, case: Case) -> None:
        self.request = request
        self.case = case
        base = f"bad-{uuid.uuid4().hex[:8]}"
        self.name = case.name(base) if case.name is not None else base
        self._sessions: list[Session] = []
        self._transports: list[Any] = []
        self._coordinators: list[Any] = []
        self._backend = lockutils.get_external_backend()
        #: strong references: the registries hold their locks weakly, and the checks after the
        #: bad call must look at the very lock object it was made on
        self.keep: list[Any] = []

    # -- local --

    @cached_property
    def lock(self) -> fairlock.Lock:
        return fairlock.Lock(self.name)

    @cached_property
    def coalescer(self) -> Coalescer:
        return Coalescer()

    @cached_property
    def queue(self) -> FairQueue:
        return FairQueue()

    @cached_property
    def fair_locks(self) -> Any:
        return lockutils.FairLocks()

    @cached_property
    def rwlock(self) -> Any:
        return self.fair_locks.get(self.name)

    @cached_property
    def tmp(self) -> str:
        return str(self.request.getfixturevalue("tmp_path"))

    # -- etcd --

    @cached_property
    def server(self) -> Any:
        fixture = {"plain": "etcd_server", "tls": "etcd_tls_server", "auth": "etcd_auth_server"}
        return self.request.getfixturevalue(fixture[self.case.server or "plain"])

    @cached_property
    def prefix(self) -> str:
        return self.request.getfixturevalue("etcd_prefix").decode().rstrip("/")

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.client_port}"

    def url(self, **params: object) -> str:
        """A good etcd URL for ``server`` (TLS files and credentials included)."""
        creds = self.server.credentials
        if creds is not None:
            params = {"username": creds.username, "password": creds.password, **params}
        return self.server.url(self.prefix, **params)

    def transport(self, **kwargs: Any) -> GatewayTransport:
        transport = GatewayTransport([self.server.endpoint], timeout=5.0,
                                     **{**self.server.transport_kwargs(), **kwargs})
        self._transports.append(transport)
        return transport

    def new_session(self) -> Session:
        session = Session(self.transport(), ttl=10, prefix=self.prefix)
        self._sessions.append(session)
        return session

    @cached_property
    def session(self) -> Session:
        return self.new_session()

    @cached_property
    def etcd_lock(self) -> EtcdLock:
        return EtcdLock(self.name, self.session)

    def etcd_waiters(self) -> int:
        _, wprefix, wend = lock_keys(self.prefix.encode(), self.name)
        _, kvs = self.probe.get_range(wprefix, wend)
        return len(kvs)

    def etcd_keys(self) -> list[bytes]:
        start_key = self.prefix.encode() + b"/"
        return [kv.key for kv in self.probe.get_range(start_key, prefix_end(start_key))[1]]

    @cached_property
    def probe(self) -> GatewayTransport:
        return self.transport()

    # -- tooz --

    def tooz_url(self, query: str = "") -> str:
        return f"fairlock+etcd3+http://{self.hostport}{self.prefix}{query}"

    def coordinator(self) -> Any:
        made = coordination.get_coordinator(self.tooz_url(), f"member-{uuid.uuid4().hex[:6]}".encode())
        made.start(start_heart=False)
        self._coordinators.append(made)
        return made

    @cached_property
    def coord(self) -> Any:
        return self.coordinator()

    @cached_property
    def tooz_lock(self) -> Any:
        return self.coord.get_lock(self.name.encode())

    def session_without_user(self) -> Session:
        transport = GatewayTransport([self.server.endpoint], timeout=1.0)
        self._transports.append(transport)
        session = Session(transport, prefix=self.prefix)
        self._sessions.append(session)
        return session

    def close(self) -> None:
        lockutils.set_external_backend(self._backend if not isinstance(
            self._backend, lockutils.FileLockBackend) else None)
        for made in self._coordinators:
            if made.is_started:
                made.stop()
        for session in self._sessions:
            session.close()
        for transport in self._transports:
            transport.close()


# -- the lock handles used by the intact-state checks ----------------------------------------------


@dataclass(frozen=True)
class Handle:
    """One way to take the lock: blocking with a timeout, or a single try."""

    acquire: Callable[[float], bool]
    try_acquire: Callable[[], bool]
    release: Callable[[], object]


def local_handle(lock: Any) -> Handle:
    return Handle(lambda t: lock.acquire(True, t), lambda: lock.acquire(False), lock.release)


def rw_write_handle(lock: Any) -> Handle:
    return Handle(lambda t: lock.acquire_write_lock(True, t), lambda: lock.acquire_write_lock(False),
                  lock.release_write_lock)


def tooz_handle(lock: Any) -> Handle:
    def release() -> None:
        assert lock.release() is True

    return Handle(lambda t: lock.acquire(blocking=True, timeout=t),
                  lambda: lock.acquire(blocking=False), release)


@dataclass(frozen=True)
class Handles:
    mine: Callable[[], Handle]  #: the object the case worked on (or a new one with its name)
    other: Callable[[], Handle]  #: another handle on the same lock (another session on etcd)
    waiting: Callable[[], int]  #: how many are queued


def handles(w: World) -> Handles:
    subject = w.case.subject
    if subject in ("lock", "coalesce", "lane-context"):
        return Handles(lambda: local_handle(w.lock), lambda: local_handle(w.lock),
                       lambda: w.lock.statistics().waiting)
    if subject == "registry":
        lock = fairlock.get_lock(w.name)
        w.keep.append(lock)
        return Handles(lambda: local_handle(lock), lambda: local_handle(fairlock.get_lock(w.name)),
                       lambda: lock.statistics().waiting)
    if subject == "lockutils":
        internal = lockutils.internal_lock(w.name)
        w.keep.append(internal)
        return Handles(lambda: local_handle(internal), lambda: local_handle(lockutils.internal_lock(w.name)),
                       lambda: internal.statistics().waiting)
    if subject == "rwlock":
        rw = w.rwlock
        return Handles(lambda: rw_write_handle(rw), lambda: rw_write_handle(w.fair_locks.get(w.name)),
                       rw.waiting)
    if subject == "etcd":
        return Handles(lambda: local_handle(w.etcd_lock),
                       lambda: local_handle(EtcdLock(w.name, w.new_session())), w.etcd_waiters)
    if subject == "tooz":
        return Handles(lambda: tooz_handle(w.tooz_lock),
                       lambda: tooz_handle(w.coordinator().get_lock(w.name.encode())), w.etcd_waiters)
    raise AssertionError(f"no handles for subject {subject!r}")


def check_handoff(h: Handles) -> None:
    """The lock is free now, is taken at once, and is handed to a waiter in another thread."""
    mine = h.mine()
    assert mine.try_acquire(), "the lock is not free after the bad call"
    other = h.other()
    got: list[bool] = []

    def wait() -> None:
        ok = other.acquire(SERVE)
        got.append(ok)
        if ok:
            other.release()

    waiter = start(wait, name="intact-waiter")
    wait_for(lambda: h.waiting() == 1, what="the waiter to queue")
    mine.release()
    waiter.join(SERVE + 5)
    assert not waiter.is_alive() and got == [True], "the waiter was not served"
    assert mine.try_acquire(), "the lock is not free after the waiter released it"
    mine.release()
    assert h.waiting() == 0


@contextlib.contextmanager
def contention(h: Handles) -> Iterator[None]:
    """Another thread holds the lock and a third one waits while the bad call is made; both are
    served in order afterwards (the bad call left the queue alone)."""
    holder, waiter = h.other(), h.other()
    order: list[str] = []
    let_go = threading.Event()

    def hold() -> None:
        assert holder.acquire(SERVE)
        order.append("holder")
        let_go.wait(3 * SERVE)
        holder.release()

    def wait() -> None:
        if waiter.acquire(3 * SERVE):
            order.append("waiter")
            waiter.release()

    threads = [start(hold, name="contention-holder")]
    wait_for(lambda: order == ["holder"], what="the holder")
    threads.append(start(wait, name="contention-waiter"))
    wait_for(lambda: h.waiting() == 1, what="the waiter to queue")
    try:
        yield
    finally:
        queued = h.waiting()
        let_go.set()
        for thread in threads:
            thread.join(3 * SERVE)
    assert queued == 1, f"the bad call left {queued} waiter(s) queued instead of 1"
    assert order == ["holder", "waiter"], order


def check_intact(w: World, outcome: BaseException | None) -> None:
    subject = w.case.subject
    if subject == "cli":
        assert isinstance(outcome, ExitStatus) or outcome is None
        if outcome is not None:
            assert "Traceback" not in outcome.stderr, outcome.stderr
        return
    if subject == "core":
        q = w.queue
        first = q.request()
        second = q.request("high")
        assert q.owner == first and second in q
        assert q.release(first) == second and q.release(second) is None and len(q) == 0
        return
    if subject == "lane-context":
        assert fairlock.current_lane() is None
    if subject == "coalesce":
        stats = w.coalescer.statistics()
        assert stats.pending == 0 and stats.following == 0, stats
        assert w.coalescer.call(w.lock, "k", lambda: 42) == 42
    if subject == "lockutils":
        assert lockutils.internal_lock(w.name).lanes.names == lockutils.DEFAULT_LANES
        assert isinstance(lockutils.get_external_backend(), lockutils.FileLockBackend) or (
            lockutils.get_external_backend() is w._backend)
        with lockutils.lock(w.name):
            pass
    if subject == "registry":
        with fairlock.lock(w.name):
            pass
    check_handoff(handles(w))
    if subject in ("etcd", "tooz"):
        # Nothing of this lock is left in etcd: no owner key, no waiter key.
        quoted = lock_keys(w.prefix.encode(), w.name)[0].rsplit(b"/", 1)[0] + b"/"
        assert not [k for k in w.etcd_keys() if k.startswith(quoted)]


# -- the table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row: ``call(world)`` must raise exactly ``raises`` with ``match`` in its message (or,
    with ``raises=None``, be accepted; ``match`` then says what happens, for the docs)."""

    group: str
    entry: str
    bad: str
    call: Callable[[World], object]
    raises: type[BaseException] | None
    match: str = ""
    subject: str = "lock"  #: what check_intact looks at: see handles() and check_intact()
    server: str = ""  #: "" (no etcd), "plain", "tls" or "auth"
    contended: bool = False
    within: float | None = None  #: the call takes at most this many seconds
    name: Callable[[str], str] | None = None  #: the lock name, from a unique base name
    secret: str = ""  #: must appear in no message
    xfail: str = ""  #: a known gap (the reason), outside this change's files
    shows: str = ""  #: what the docs say instead of the exception class

    @property
    def id(self) -> str:
        return re.sub(r"\s+", "_", f"{self.entry}:{self.bad}")


CASES: list[Case] = []


def case(*args: Any, **kwargs: Any) -> None:
    CASES.append(Case(*args, **kwargs))


def enter(manager: Any) -> bool:
    with manager:
        return True


def in_thread(fn: Callable[[], object]) -> object:
    """``fn()`` in another thread; its exception is raised here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = start(run, name="other-thread")
    thread.join(SERVE)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def holding(acquire: Callable[[], object], release: Callable[[], object],
            fn: Callable[[], object]) -> object:
    """``fn()`` while this thread holds the lock."""
    assert acquire()
    try:
        return fn()
    finally:
        release()


def accepted(value: object, expected: object = True) -> object:
    assert value == expected, value
    return value


NAN, INF = math.nan, math.inf
HUGE = 1_000_000  # characters of a "huge" local name

# --- fairlock.Lock ---------------------------------------------------------------------------------

G = "Local locks: fairlock.Lock"
L = "fairlock.Lock(name)"
case(G, L, "name=b'x'", lambda w: fairlock.Lock(b"x"), ArgumentTypeError, "lock name must be a str, got bytes")
case(G, L, "name=1", lambda w: fairlock.Lock(1), ArgumentTypeError, "got int")
case(G, L, "name=''", lambda w: fairlock.Lock(""), InvalidArgumentError, "lock name must not be empty")
case(G, L, "name with '/'", lambda w: accepted(fairlock.Lock(w.name).name, w.name), None,
     "accepted: any character", name=lambda base: f"{base}/a/../b")
case(G, L, "name with NUL", lambda w: accepted(fairlock.Lock(w.name).name, w.name), None,
     "accepted: any character", name=lambda base: f"{base}\0nul")
case(G, L, f"name of {HUGE:,} characters", lambda w: accepted(fairlock.Lock(w.name).name, w.name), None,
     "accepted: any length", name=lambda base: base + "x" * HUGE)
case(G, L, "lanes='high'", lambda w: fairlock.Lock(w.name, lanes="high"), ArgumentTypeError,
     "not a single string")
case(G, L, "lanes=[]", lambda w: fairlock.Lock(w.name, lanes=[]), InvalidArgumentError, "at least one lane")
case(G, L, "lanes=['a', 'a']", lambda w: fairlock.Lock(w.name, lanes=["a", "a"]), InvalidArgumentError,
     "lane names must be distinct")
case(G, L, "lanes=[None]", lambda w: fairlock.Lock(w.name, lanes=[None]), ArgumentTypeError,
     "lane names must be str")
case(G, L, "default_lane='nope'", lambda w: fairlock.Lock(w.name, default_lane="nope"), UnknownLaneError,
     "unknown lane 'nope'")
case(G, L, "max_bypass=-1", lambda w: fairlock.Lock(w.name, max_bypass=-1), InvalidArgumentError,
     "max_bypass must be >= 0")
case(G, L, "max_bypass=1.5", lambda w: fairlock.Lock(w.name, max_bypass=1.5), ArgumentTypeError,
     "max_bypass must be an int or None")
case(G, L, "max_bypass=True", lambda w: fairlock.Lock(w.name, max_bypass=True), ArgumentTypeError,
     "max_bypass must be an int or None")
case(G, L, "reentrant=1", lambda w: fairlock.Lock(w.name, reentrant=1), ArgumentTypeError,
     "reentrant must be a bool")
case(G, L, "slow_hold=-1", lambda w: fairlock.Lock(w.name, slow_hold=-1), InvalidArgumentError,
     "slow_hold must be > 0 seconds")
case(G, L, "slow_wait=NaN", lambda w: fairlock.Lock(w.name, slow_wait=NAN), InvalidArgumentError,
     "slow_wait must be > 0 seconds")
case(G, L, "slow_hold='1'", lambda w: fairlock.Lock(w.name, slow_hold="1"), ArgumentTypeError,
     "slow_hold must be a number of seconds")
case(G, L, "clock=1", lambda w: fairlock.Lock(w.name, clock=1), ArgumentTypeError, "clock must be callable")
case(G, L, "logger=1", lambda w: fairlock.Lock(w.name, logger=1), ArgumentTypeError,
     "logger must be a logging.Logger")
case(G, L, "on_queued=1", lambda w: fairlock.Lock(w.name, on_queued=1), ArgumentTypeError,
     "on_queued must be callable")

A = "Lock.acquire()"
for bad, kwargs, exc, fragment in [
    ("timeout=-2", dict(timeout=-2), InvalidArgumentError, "timeout must be -1 (forever) or >= 0"),
    ("timeout=-inf", dict(timeout=-INF), InvalidArgumentError, "timeout must be -1 (forever) or >= 0"),
    ("timeout=NaN", dict(timeout=NAN), InvalidArgumentError, "timeout must not be NaN"),
    ("timeout='1'", dict(timeout="1"), ArgumentTypeError, "timeout must be a number or None"),
    ("timeout=True", dict(timeout=True), ArgumentTypeError, "timeout must be a number or None"),
    ("blocking=False, timeout=1", dict(blocking=False, timeout=1), InvalidArgumentError,
     "can't specify a timeout for a non-blocking call"),
    ("blocking=False, timeout=0", dict(blocking=False, timeout=0), InvalidArgumentError,
     "can't specify a timeout for a non-blocking call"),
    ("blocking='yes'", dict(blocking="yes"), ArgumentTypeError, "blocking must be a bool"),
    ("blocking=None", dict(blocking=None), ArgumentTypeError, "blocking must be a bool"),
    ("lane='nope'", dict(lane="nope"), UnknownLaneError, "unknown lane 'nope'; this lock has lanes high"),
    ("lane=''", dict(lane=""), UnknownLaneError, "unknown lane ''"),
    ("lane=5", dict(lane=5), ArgumentTypeError, "lane must be a str"),
    ("lane=b'high'", dict(lane=b"high"), ArgumentTypeError, "lane must be a str"),
]:
    case(G, A, bad, lambda w, kw=kwargs: w.lock.acquire(**kw), exc, fragment, contended=True)
case(G, A, "timeout=inf (free lock)", lambda w: (accepted(w.lock.acquire(timeout=INF)), w.lock.release()),
     None, "accepted: waits without limit")
case(G, A, "timeout=0.05 (busy)", lambda w: accepted(w.lock.acquire(timeout=0.05), False), None,
     "returns False; leaves the queue", contended=True)
case(G, A, "blocking=False (busy)", lambda w: accepted(w.lock.acquire(False), False), None,
     "returns False", contended=True)
case(G, A, "again by its owner", lambda w: holding(w.lock.acquire, w.lock.release, w.lock.acquire),
     DeadlockError, "the owner tried to acquire it again")
case(G, "Lock.release()", "not held", lambda w: w.lock.release(), NotHeldError, "which is not held")
case(G, "Lock.release()", "by another thread",
     lambda w: holding(w.lock.acquire, w.lock.release, lambda: in_thread(w.lock.release)),
     NotOwnerError, "which is not the owner")

# --- named locks ----------------------------------------------------------------------------------

G = "Named locks: fairlock.lock, fairlock.get_lock, fairlock.LockRegistry"
R = "registry"
case(G, "fairlock.get_lock(name)", "name=None", lambda w: fairlock.get_lock(None), ArgumentTypeError,
     "lock name must be a str, got NoneType", subject=R)
case(G, "fairlock.get_lock(name)", "name=''", lambda w: fairlock.get_lock(""), InvalidArgumentError,
     "lock name must not be empty", subject=R)
case(G, "fairlock.get_lock(name)", "name=b'x'", lambda w: fairlock.get_lock(b"x"), ArgumentTypeError,
     "got bytes", subject=R)
W = "with fairlock.lock(name, ...)"
for bad, kwargs, exc, fragment in [
    ("timeout=NaN", dict(timeout=NAN), InvalidArgumentError, "timeout must not be NaN"),
    ("timeout=-2", dict(timeout=-2), InvalidArgumentError, "timeout must be -1 (forever) or >= 0"),
    ("blocking=False, timeout=1", dict(blocking=False, timeout=1), InvalidArgumentError,
     "can't specify a timeout for a non-blocking call"),
    ("lane='nope'", dict(lane="nope"), UnknownLaneError, "unknown lane 'nope'"),
    ("blocking=False (busy)", dict(blocking=False), AcquireTimeout, "non-blocking acquire failed"),
    ("timeout=0.05 (busy)", dict(timeout=0.05), AcquireTimeout, "not acquired within 0.05s"),
]:
    case(G, W, bad, lambda w, kw=kwargs: enter(fairlock.lock(w.name, **kw)), exc, fragment, subject=R,
         contended=True)
case(G, "fairlock.LockRegistry(**options)", "lanes=5", lambda w: fairlock.LockRegistry(lanes=5),
     ArgumentTypeError, "lanes must be a sequence of names", subject=R)
case(G, "fairlock.LockRegistry(**options)", "max_bypass=-1", lambda w: fairlock.LockRegistry(max_bypass=-1),
     InvalidArgumentError, "max_bypass must be >= 0", subject=R)
case(G, "fairlock.LockRegistry(**options)", "bogus=1", lambda w: fairlock.LockRegistry(bogus=1),
     TypeError, "unexpected keyword argument 'bogus'", subject=R)
case(G, "LockRegistry.get(name)", "name=5", lambda w: fairlock.LockRegistry().get(5), ArgumentTypeError,
     "lock name must be a str, got int", subject=R)
case(G, "LockRegistry.lock(name, lane=...)", "lane unknown to the registry's lanes",
     lambda w: enter(fairlock.LockRegistry(lanes=("a", "b")).lock(w.name, lane="high")), UnknownLaneError,
     "unknown lane 'high'; this lock has lanes a, b", subject=R)

# --- lanes and the core ---------------------------------------------------------------------------

G = "Lanes: fairlock.lane, fairlock.Lanes, the core"
C = "lane-context"
case(G, "fairlock.lane(name)", "name=None", lambda w: fairlock.lane(None), ArgumentTypeError,
     "lane name must be a str", subject=C)
case(G, "fairlock.lane(name)", "name=''", lambda w: fairlock.lane(""), InvalidArgumentError,
     "lane name must not be empty", subject=C)
case(G, "fairlock.lane(name)", "name=5", lambda w: fairlock.lane(5), ArgumentTypeError,
     "lane name must be a str", subject=C)


def _context_lane_unknown(w: World) -> object:
    with fairlock.lane("nope"):
        assert w.lock.acquire(timeout=SERVE)
        w.lock.release()
        return resolve_lane(w.lock.lanes, None)


case(G, "with fairlock.lane(name): lock.acquire()", "a lane the lock does not have",
     lambda w: accepted(_context_lane_unknown(w), "normal"), None,
     "accepted: the lock's default lane", subject=C)
case(G, "fairlock.Lanes(names, default)", "names='abc'", lambda w: fairlock.Lanes("abc"), ArgumentTypeError,
     "not a single string", subject=C)
case(G, "fairlock.Lanes(names, default)", "names=[]", lambda w: fairlock.Lanes([]), InvalidArgumentError,
     "at least one lane", subject=C)
case(G, "fairlock.Lanes(names, default)", "names=None", lambda w: fairlock.Lanes(None), ArgumentTypeError,
     "lanes must be a sequence of names, got NoneType", subject=C)
case(G, "fairlock.Lanes(names, default)", "names=['a', '']", lambda w: fairlock.Lanes(["a", ""]),
     InvalidArgumentError, "lane names must not be empty", subject=C)
case(G, "fairlock.Lanes(names, default)", "default not in names", lambda w: fairlock.Lanes(["a"], "b"),
     UnknownLaneError, "unknown lane 'b'; this lock has lanes a", subject=C)
case(G, "Lanes.rank(lane)", "lane='x'", lambda w: fairlock.Lanes().rank("x"), UnknownLaneError,
     "unknown lane 'x'", subject=C)
case(G, "FairQueue.request(lane, ticket)", "ticket=True", lambda w: w.queue.request(ticket=True),
     ArgumentTypeError, "ticket must be an int", subject="core")
case(G, "FairQueue.request(lane, ticket)", "ticket=0", lambda w: w.queue.request(ticket=0), TicketOrderError,
     "is not newer than the last ticket", subject="core")
case(G, "FairQueue.release(ticket)", "nobody holds it", lambda w: w.queue.release(), NotHeldError,
     "not held", subject="core")
case(G, "FairQueue.cancel(ticket)", "ticket='x'", lambda w: w.queue.cancel("x"), UnknownTicketError,
     "is neither queued nor the owner", subject="core")
case(G, "FairQueue.ahead_of(ticket)", "ticket=[]", lambda w: w.queue.ahead_of([]), UnknownTicketError,
     "is neither queued nor the owner", subject="core")

# --- coalescing -----------------------------------------------------------------------------------

G = "Coalescing: fairlock.coalesce"
K = "coalesce"
case(G, "Coalescer(...)", "errors='x'", lambda w: Coalescer(errors="x"), InvalidArgumentError,
     "errors must be one of", subject=K)
case(G, "Coalescer(...)", "covers=1", lambda w: Coalescer(covers=1), ArgumentTypeError,
     "covers must be callable", subject=K)
case(G, "Coalescer(...)", "clock=1", lambda w: Coalescer(clock=1), ArgumentTypeError,
     "clock must be callable", subject=K)
CC = "Coalescer.call(lock, key, fn, ...)"
case(G, CC, "lock=None", lambda w: w.coalescer.call(None, "k", lambda: 1), ArgumentTypeError,
     "lock must have acquire() and release()", subject=K)
case(G, CC, "lock='a name'", lambda w: w.coalescer.call(w.name, "k", lambda: 1), ArgumentTypeError,
     "lock must have acquire() and release(), got str", subject=K)
case(G, CC, "fn=5", lambda w: w.coalescer.call(w.lock, "k", 5), ArgumentTypeError, "fn must be callable",
     subject=K)
case(G, CC, "args=5", lambda w: w.coalescer.call(w.lock, "k", lambda *a: 1, 5), ArgumentTypeError,
     "args must be a tuple", subject=K)
case(G, CC, "timeout=NaN", lambda w: w.coalescer.call(w.lock, "k", lambda: 1, timeout=NAN),
     InvalidArgumentError, "timeout must not be NaN", subject=K, contended=True)
case(G, CC, "lane='nope'", lambda w: w.coalescer.call(w.lock, "k", lambda: 1, lane="nope"),
     UnknownLaneError, "unknown lane 'nope'", subject=K, contended=True)
case(G, CC, "timeout=0.05 (busy)", lambda w: w.coalescer.call(w.lock, "k", lambda: 1, timeout=0.05),
     AcquireTimeout, "not acquired within the timeout", subject=K, contended=True)
CD = "coalesced(lock, ...)"
case(G, CD, "lock=5", lambda w: coalesced(5), ArgumentTypeError, "lock must be a lock object or a callable",
     subject=K)
case(G, CD, "key=5", lambda w: coalesced(w.lock, key=5), ArgumentTypeError, "key must be a callable",
     subject=K)
case(G, CD, "lane='nope' (at decoration)", lambda w: coalesced(w.lock, lane="nope"), UnknownLaneError,
     "unknown lane 'nope'", subject=K)
case(G, CD, "covers=5 (at decoration)", lambda w: coalesced(w.lock, covers=5), ArgumentTypeError,
     "covers must be callable", subject=K)
case(G, CD, "decorates 5", lambda w: coalesced(w.lock)(5), ArgumentTypeError,
     "coalesced() decorates a callable, got int", subject=K)
case(G, CD, "lock callable returns 5", lambda w: coalesced(lambda: 5)(lambda: 1)(), ArgumentTypeError,
     "the lock callable returned int", subject=K)
case(G, CD, "lock callable returns ''", lambda w: coalesced(lambda: "")(lambda: 1)(), InvalidArgumentError,
     "lock name must not be empty", subject=K)

# --- lockutils ------------------------------------------------------------------------------------

G = "oslo.concurrency drop-in: fairlock.lockutils"
RW = "rwlock"
U = "lockutils"
LU = "with lockutils.lock(name, ...)"
case(G, LU, "name=None", lambda w: enter(lockutils.lock(None)), ArgumentTypeError,
     "lock name must be a str, got NoneType", subject=U)
case(G, LU, "name=''", lambda w: enter(lockutils.lock("")), InvalidArgumentError,
     "lock name must not be empty", subject=U)
case(G, LU, "name=b'x'", lambda w: enter(lockutils.lock(b"x")), ArgumentTypeError, "got bytes", subject=U)
for bad, kwargs, exc, fragment in [
    ("timeout=-1", dict(timeout=-1), InvalidArgumentError, "timeout must be >= 0 seconds (None waits forever)"),
    ("timeout=NaN", dict(timeout=NAN), InvalidArgumentError, "timeout must not be NaN"),
    ("blocking=False, timeout=1", dict(blocking=False, timeout=1), InvalidArgumentError,
     "timeout= needs blocking=True"),
    ("blocking='y'", dict(blocking="y"), ArgumentTypeError, "blocking must be a bool"),
    ("lane='nope'", dict(lane="nope"), UnknownLaneError, "unknown lane 'nope'; this lock has lanes migration"),
    ("lane=''", dict(lane=""), InvalidArgumentError, "lane must not be empty"),
    ("lane=5", dict(lane=5), ArgumentTypeError, "lane must be a str or None"),
    ("semaphores=5", dict(semaphores=5), ArgumentTypeError, "semaphores= must be a container of fairlock locks"),
    ("semaphores=oslo's Semaphores()", dict(semaphores=oslo_lockutils.Semaphores()), ArgumentTypeError,
     "its get() returned Semaphore"),
    ("lock_file_prefix=5", dict(lock_file_prefix=5), ArgumentTypeError, "lock_file_prefix must be a str or None"),
    ("blocking=False (busy)", dict(blocking=False), lockutils.AcquireLockFailedException,
     "Failed to acquire the lock"),
    ("timeout=0.05 (busy)", dict(timeout=0.05), lockutils.AcquireLockFailedException,
     "Failed to acquire the lock"),
]:
    case(G, LU, bad, lambda w, kw=kwargs: enter(lockutils.lock(w.name, do_log=False, **kw)), exc, fragment,
         subject=U, contended=True)
case(G, LU, "external=True, name with NUL",
     lambda w: enter(lockutils.lock(w.name, external=True, lock_path=w.tmp)), ValueError,
     "embedded null byte", subject=U, name=lambda base: f"{base}\0nul")
case(G, LU, "external=True, name of 300 characters",
     lambda w: enter(lockutils.lock(w.name, external=True, lock_path=w.tmp)), OSError,
     "File name too long", subject=U, name=lambda base: base + "x" * 300)


def _without_lock_path(fn: Callable[[], object]) -> object:
    lockutils.CONF.set_override("lock_path", None, "oslo_concurrency")
    try:
        return fn()
    finally:
        lockutils.CONF.clear_override("lock_path", "oslo_concurrency")


case(G, LU, "external=True, no lock_path configured",
     lambda w: _without_lock_path(lambda: enter(lockutils.lock(w.name, external=True))), cfg.RequiredOptError,
     "value required for option lock_path", subject=U)
case(G, LU, "external=True, delay=-1",
     lambda w: enter(lockutils.lock(w.name, external=True, lock_path=w.tmp, delay=-1)), ValueError,
     "Delay must be greater than or equal to zero", subject=U)


def _etcd_backend(w: World, backend: EtcdBackend, name: str) -> object:
    lockutils.set_external_backend(backend)
    try:
        return enter(lockutils.lock(name, external=True, do_log=False))
    finally:
        lockutils.set_external_backend(None)
        backend.close()


case(G, LU, f"external=True on etcd, name over {MAX_NAME_BYTES} bytes",
     lambda w: _etcd_backend(w, EtcdBackend(w.session), w.name), InvalidArgumentError,
     f"an etcd lock name is at most {MAX_NAME_BYTES}", subject=U, server="plain",
     name=lambda base: base + "x" * MAX_NAME_BYTES)
case(G, LU, "external=True on etcd, etcd unreachable (timeout=1)",
     lambda w: _etcd_backend(w, EtcdBackend(f"etcd3+http://127.0.0.1:{free_port()}?timeout=1"), w.name),
     EtcdUnavailable, "connection refused", subject=U, within=3.0)
SY = "lockutils.synchronized(name, ...)"
case(G, SY, "name=None", lambda w: lockutils.synchronized(None), ArgumentTypeError,
     "lock name must be a str", subject=U)
case(G, SY, "blocking=False, timeout=1 (at decoration)",
     lambda w: lockutils.synchronized(w.name, blocking=False, timeout=1), InvalidArgumentError,
     "timeout= needs blocking=True", subject=U)
case(G, SY, "lock_file_prefix=5 (at decoration)", lambda w: lockutils.synchronized(w.name, lock_file_prefix=5),
     ArgumentTypeError, "lock_file_prefix must be a str or None", subject=U)
case(G, SY, "lane='nope' (when called)", lambda w: lockutils.synchronized(w.name, lane="nope")(lambda: 1)(),
     UnknownLaneError, "unknown lane 'nope'", subject=U)
case(G, "lockutils.internal_lock(name, ...)", "name=''", lambda w: lockutils.internal_lock(""),
     InvalidArgumentError, "lock name must not be empty", subject=U)
case(G, "lockutils.internal_lock(name, ...)", "semaphores=5", lambda w: lockutils.internal_lock(w.name, 5),
     ArgumentTypeError, "semaphores= must be a container", subject=U)
case(G, "lockutils.internal_lock(name, ...)", "blocking='y'",
     lambda w: lockutils.internal_lock(w.name, blocking="y"), ArgumentTypeError, "blocking must be a bool",
     subject=U)
case(G, "InternalLock.release()", "not held", lambda w: lockutils.internal_lock(w.name).release(),
     NotHeldError, "which is not held", subject=U)
case(G, "InternalLock.release()", "by another thread",
     lambda w: holding(lockutils.internal_lock(w.name).acquire, lockutils.internal_lock(w.name).release,
                       lambda: in_thread(lockutils.internal_lock(w.name).release)),
     NotOwnerError, "which is not the owner", subject=U)
case(G, "lockutils.external_lock(name, ...)", "name=None", lambda w: lockutils.external_lock(None, lock_path=w.tmp),
     ArgumentTypeError, "lock name must be a str", subject=U)
case(G, "lockutils.lock_with_prefix(prefix)", "prefix=5",
     lambda w: enter(lockutils.lock_with_prefix(5)(w.name, external=True, lock_path=w.tmp)), ArgumentTypeError,
     "lock_file_prefix must be a str or None", subject=U)
RM = "lockutils.remove_external_lock_file(name, ...)"
case(G, RM, "name=None", lambda w: lockutils.remove_external_lock_file(None, lock_path=w.tmp),
     ArgumentTypeError, "lock name must be a str", subject=U)
case(G, RM, "lock_file_prefix=5", lambda w: lockutils.remove_external_lock_file(w.name, 5, lock_path=w.tmp),
     ArgumentTypeError, "lock_file_prefix must be a str or None", subject=U)
case(G, RM, "no lock_path configured",
     lambda w: _without_lock_path(lambda: lockutils.remove_external_lock_file(w.name)), cfg.RequiredOptError,
     "value required for option lock_path", subject=U)
case(G, "lockutils.Semaphores(...)", "lanes='ab'", lambda w: lockutils.Semaphores(lanes="ab"),
     InvalidArgumentError, "the lanes must be a list of lane names", subject=U)
case(G, "lockutils.Semaphores(...)", "max_bypass=-1", lambda w: lockutils.Semaphores(max_bypass=-1),
     InvalidArgumentError, "max_bypass must be >= 0", subject=U)
case(G, "Semaphores.get(name)", "name=''", lambda w: lockutils.Semaphores().get(""), InvalidArgumentError,
     "lock name must not be empty", subject=U)
SD = "lockutils.set_defaults(...)"
case(G, SD, "fairlock_lanes=[]", lambda w: lockutils.set_defaults(fairlock_lanes=[]), InvalidArgumentError,
     "a lock needs at least one lane", subject=U)
case(G, SD, "fairlock_default_lane='nope'", lambda w: lockutils.set_defaults(fairlock_default_lane="nope"),
     InvalidArgumentError, "unknown lane 'nope'", subject=U)
case(G, SD, "fairlock_max_bypass=-1", lambda w: lockutils.set_defaults(fairlock_max_bypass=-1),
     InvalidArgumentError, "max_bypass must be >= 0", subject=U)
case(G, SD, "fairlock_slow_wait=-1", lambda w: lockutils.set_defaults(fairlock_slow_wait=-1),
     InvalidArgumentError, "fairlock_slow_wait must be >= 0 seconds", subject=U)
case(G, SD, "fairlock_slow_hold='5'", lambda w: lockutils.set_defaults(fairlock_slow_hold="5"),
     ArgumentTypeError, "fairlock_slow_hold must be a number of seconds", subject=U)
case(G, "lockutils.set_external_backend(backend)", "backend=object()",
     lambda w: lockutils.set_external_backend(object()), ArgumentTypeError,
     "needs lock() and remove() methods", subject=U)
FL = "lockutils.FairLocks().get(name)"
case(G, FL, "name=None", lambda w: lockutils.FairLocks().get(None), ArgumentTypeError,
     "lock name must be a str, got NoneType", subject=RW)
case(G, FL, "name=''", lambda w: lockutils.FairLocks().get(""), InvalidArgumentError,
     "lock name must not be empty", subject=RW)
RWL = "lockutils.ReaderWriterLock(...)"
case(G, RWL, "current_thread_functor=5", lambda w: lockutils.ReaderWriterLock(current_thread_functor=5),
     ArgumentTypeError, "current_thread_functor must be callable", subject=RW)
case(G, RWL, "name=5", lambda w: lockutils.ReaderWriterLock(name=5), ArgumentTypeError,
     "lock name must be a str, got int", subject=RW)
RWA = "ReaderWriterLock.acquire_write_lock() / acquire_read_lock()"
case(G, RWA, "blocking=False, timeout=1", lambda w: w.rwlock.acquire_write_lock(blocking=False, timeout=1),
     InvalidArgumentError, "can't specify a timeout for a non-blocking call", subject=RW)
case(G, RWA, "timeout='1'", lambda w: w.rwlock.acquire_read_lock(timeout="1"), ArgumentTypeError,
     "timeout must be a number or None", subject=RW, contended=True)
case(G, RWA, "timeout=-5", lambda w: w.rwlock.acquire_write_lock(timeout=-5), InvalidArgumentError,
     "timeout must be -1 (forever) or >= 0", subject=RW, contended=True)
case(G, RWA, "write lock asked by a reader",
     lambda w: holding(w.rwlock.acquire_read_lock, w.rwlock.release_read_lock, w.rwlock.acquire_write_lock),
     DeadlockError, "reader", subject=RW)
RWR = "ReaderWriterLock.release_write_lock() / release_read_lock()"
case(G, RWR, "not held", lambda w: w.rwlock.release_write_lock(), NotHeldError, "which is not held",
     subject=RW)
case(G, RWR, "by another thread",
     lambda w: holding(w.rwlock.acquire_read_lock, w.rwlock.release_read_lock,
                       lambda: in_thread(w.rwlock.release_read_lock)),
     NotOwnerError, "does not own a read lock", subject=RW)
case(G, RWR, "write lock released by a reader",
     lambda w: holding(w.rwlock.acquire_read_lock, w.rwlock.release_read_lock, w.rwlock.release_write_lock),
     NotOwnerError, "does not own a write lock", subject=RW)

# --- etcd URLs ------------------------------------------------------------------------------------

G = "etcd URLs: fairlock.etcd.Session(url)"
E = "etcd"
S = "fairlock.etcd.Session(url)"


def url_case(bad: str, url: Callable[[World], str], exc: type[BaseException], fragment: str,
             **kwargs: Any) -> None:
    case(G, S, bad, lambda w: Session(url(w)), exc, fragment, subject=E, server="plain", **kwargs)


def with_query(query: str) -> Callable[[World], str]:
    return lambda w: f"etcd3+http://{w.hostport}{w.prefix}{query}"


url_case("url=''", lambda w: "", InvalidArgumentError, "scheme must be one of etcd3+http, etcd3+https")
url_case("scheme ftp://", lambda w: f"ftp://{w.hostport}", InvalidArgumentError, "scheme must be one of")
url_case("no scheme (host:port)", lambda w: w.hostport, InvalidArgumentError, "scheme must be one of")
url_case("no host", lambda w: "etcd3+http://", InvalidArgumentError, "no host")
url_case("no host, a path", lambda w: "etcd3+http:///fairlock", InvalidArgumentError, "no host")
url_case("port 0", lambda w: "etcd3+http://127.0.0.1:0", InvalidArgumentError, "is out of range")
url_case("port 99999", lambda w: "etcd3+http://127.0.0.1:99999", InvalidArgumentError, "is out of range")
url_case("port 'abc'", lambda w: "etcd3+http://127.0.0.1:abc", InvalidArgumentError, "is not host[:port]")
url_case("the same host twice", lambda w: f"etcd3+http://{w.hostport},{w.hostport}", InvalidArgumentError,
         "the same host appears twice")
url_case("unclosed IPv6 bracket", lambda w: "etcd3+http://[::1", InvalidArgumentError, "Invalid IPv6 URL")
url_case("whitespace", lambda w: f"etcd3+http://{w.hostport} /x", InvalidArgumentError, "contains whitespace")
url_case("a #fragment", lambda w: f"etcd3+http://{w.hostport}#x", InvalidArgumentError, "a fragment")
url_case("?bogus=1", with_query("?bogus=1"), InvalidArgumentError, "unknown parameter 'bogus'")
url_case("?timeout=1&timeout=2", with_query("?timeout=1&timeout=2"), InvalidArgumentError,
         "parameter 'timeout' given twice")
url_case("?timeout (no value)", with_query("?timeout"), InvalidArgumentError, "the query is not name=value")
for query in ("?timeout=-1", "?timeout=0", "?timeout=nan", "?timeout=inf"):
    url_case(query, with_query(query), InvalidArgumentError, "timeout must be a positive finite number")
url_case("?connect_timeout=-1", with_query("?connect_timeout=-1"), InvalidArgumentError,
         "connect_timeout must be a positive finite number")
url_case("?request_timeout=x", with_query("?request_timeout=x"), InvalidArgumentError,
         "request_timeout must be a number of seconds")
url_case("?lease_ttl=0", with_query("?lease_ttl=0"), InvalidArgumentError,
         "lease_ttl must be a whole number of seconds >= 2")
url_case("?lease_ttl=2.5", with_query("?lease_ttl=2.5"), InvalidArgumentError,
         "lease_ttl must be a whole number of seconds >= 2")
# Issue 9 bug 4: the URL took 1, which the Session then refused with another message.
url_case("?lease_ttl=1", with_query("?lease_ttl=1"), InvalidArgumentError,
         "lease_ttl must be a whole number of seconds >= 2")
url_case("?protocol=https on etcd3+http", with_query("?protocol=https"), InvalidArgumentError,
         "disagrees with the scheme")
url_case("?ca_cert=... on etcd3+http", with_query("?ca_cert=/etc/ssl/ca.pem"), InvalidArgumentError,
         "ca_cert needs an https URL")
url_case("?cert_cert without cert_key", lambda w: f"etcd3+https://{w.hostport}?cert_cert=/x.pem",
         InvalidArgumentError, "cert_cert and cert_key go together")
url_case("?ca_cert=a missing file", lambda w: f"etcd3+https://{w.hostport}?ca_cert=/nonexistent/ca.pem",
         InvalidArgumentError, "ca_cert file '/nonexistent/ca.pem' does not exist")
url_case("user:password@ and ?password=", lambda w: f"etcd3+http://u:s3cr3t-pw@{w.hostport}?password=x",
         InvalidArgumentError, "credentials given both before the host and as parameters",
         secret="s3cr3t-pw")
url_case("?password= without a user", with_query("?password=s3cr3t-pw"), InvalidArgumentError,
         "a password without a username", secret="s3cr3t-pw")
url_case("prefix with NUL (%00)", lambda w: f"etcd3+http://{w.hostport}/a%00b", InvalidArgumentError,
         "the prefix contains NUL")
url_case("etcd3+grpc:// ?timeout=0", lambda w: f"etcd3+grpc://{w.hostport}?timeout=0", InvalidArgumentError,
         "timeout must be a positive finite number")
case(G, S, "url=None", lambda w: Session(None), ArgumentTypeError,
     "transport must be a Transport or a URL, got NoneType", subject=E, server="plain")
case(G, S, "url=b'etcd3+http://...'", lambda w: Session(w.url().encode()), ArgumentTypeError,
     "transport must be a Transport or a URL, got bytes", subject=E, server="plain")

# --- sessions and locks ---------------------------------------------------------------------------

G = "etcd sessions and locks: fairlock.etcd.Session, fairlock.etcd.EtcdLock"
ST = "Session(transport, ...)"
for bad, kwargs, exc, fragment in [
    ("ttl=1", dict(ttl=1), InvalidArgumentError, "ttl must be >= 2 seconds, got 1"),
    ("ttl=-5", dict(ttl=-5), InvalidArgumentError, "ttl must be >= 2 seconds"),
    ("ttl=2.5", dict(ttl=2.5), ArgumentTypeError, "ttl must be an int number of seconds"),
    ("ttl='10'", dict(ttl="10"), ArgumentTypeError, "ttl must be an int number of seconds"),
    ("ttl=True", dict(ttl=True), ArgumentTypeError, "ttl must be an int number of seconds"),
    ("ttl=10**12", dict(ttl=10**12), EtcdError, "too large lease TTL"),
    ("prefix='x'", dict(prefix="x"), InvalidArgumentError, "prefix must start with '/'"),
    ("prefix=''", dict(prefix=""), InvalidArgumentError, "prefix must start with '/'"),
    ("prefix=b'/x'", dict(prefix=b"/x"), ArgumentTypeError, "prefix must be a str"),
    ("prefix with NUL", dict(prefix="/a\0b"), InvalidArgumentError, "contain no NUL"),
    ("on_lost=1", dict(on_lost=1), ArgumentTypeError, "on_lost must be callable"),
]:
    case(G, ST, bad, lambda w, kw=kwargs: Session(w.transport(), **kw), exc, fragment, subject=E, server="plain")
case(G, ST, "transport=5", lambda w: Session(5), ArgumentTypeError, "transport must be a Transport or a URL",
     subject=E, server="plain")
case(G, ST, "prefix with a lone surrogate", lambda w: Session(w.transport(), prefix="/\ud800"),
     InvalidArgumentError, "prefix must be valid text", subject=E, server="plain")
case(G, ST, "prefix of 257 bytes", lambda w: Session(w.transport(), prefix="/" + "p" * 256),
     InvalidArgumentError, "prefix must be at most 256 bytes", subject=E, server="plain")
case(G, ST, "clock=1", lambda w: Session(w.transport(), clock=1), ArgumentTypeError, "clock must be callable",
     subject=E, server="plain")
EL = "EtcdLock(name, session, ...)"
for bad, name, exc, fragment in [
    ("name=None", lambda w: None, ArgumentTypeError, "lock name must be a str, got NoneType"),
    ("name=''", lambda w: "", InvalidArgumentError, "lock name must not be empty"),
    ("name=b'x'", lambda w: b"x", ArgumentTypeError, "got bytes"),
    (f"name of {MAX_NAME_BYTES + 1} bytes", lambda w: w.name + "x" * MAX_NAME_BYTES, InvalidArgumentError,
     f"an etcd lock name is at most {MAX_NAME_BYTES}"),
    (f"name of {MAX_NAME_BYTES + 2} bytes ('é' * {MAX_NAME_BYTES // 2 + 1})",
     lambda w: "é" * (MAX_NAME_BYTES // 2 + 1), InvalidArgumentError, "is 1026 bytes in UTF-8"),
    ("name with a lone surrogate", lambda w: w.name + "\ud800", InvalidArgumentError,
     "cannot be encoded as UTF-8"),
]:
    case(G, EL, bad, lambda w, n=name: EtcdLock(n(w), w.session), exc, fragment, subject=E, server="plain")


def _pad(base: str, size: int, char: str = "x") -> str:
    return base + char * ((size - len(base.encode())) // len(char.encode()))


for bad, make in [
    (f"name of exactly {MAX_NAME_BYTES} bytes", lambda base: _pad(base, MAX_NAME_BYTES)),
    (f"name of {MAX_NAME_BYTES} bytes of 'é'", lambda base: _pad(base[:10], MAX_NAME_BYTES, "é")),
    ("name with '/'", lambda base: f"{base}/w/../owner"),
    ("name with NUL", lambda base: f"{base}\0nul"),
]:
    case(G, EL, bad, lambda w: accepted(EtcdLock(w.name, w.session).name, w.name), None,
         "accepted (the name is percent-quoted into one key component)", subject=E, server="plain", name=make)
for bad, kwargs, exc, fragment in [
    ("session=None", dict(session=None), ArgumentTypeError, "session must be a fairlock.etcd.Session"),
    ("session=a URL", dict(session="etcd3+http://127.0.0.1:2379"), ArgumentTypeError,
     "session must be a fairlock.etcd.Session, got str"),
    ("lanes=5", dict(lanes=5), ArgumentTypeError, "lanes must be a sequence of names"),
    ("max_bypass=-1", dict(max_bypass=-1), InvalidArgumentError, "max_bypass must be >= 0"),
    ("on_lost=1", dict(on_lost=1), ArgumentTypeError, "on_lost must be callable"),
    ("clock=1", dict(clock=1), ArgumentTypeError, "clock must be callable"),
]:
    case(G, EL, bad, lambda w, kw=kwargs: EtcdLock(w.name, **{"session": w.session, **kw}), exc, fragment,
         subject=E, server="plain")
EA = "EtcdLock.acquire()"
for bad, kwargs, exc, fragment in [
    ("timeout=-2", dict(timeout=-2), InvalidArgumentError, "timeout must be -1 (forever) or >= 0"),
    ("timeout=NaN", dict(timeout=NAN), InvalidArgumentError, "timeout must not be NaN"),
    ("timeout=-inf", dict(timeout=-INF), InvalidArgumentError, "timeout must be -1 (forever) or >= 0"),
    ("timeout='1'", dict(timeout="1"), ArgumentTypeError, "timeout must be a number or None"),
    ("blocking=False, timeout=1", dict(blocking=False, timeout=1), InvalidArgumentError,
     "can't specify a timeout for a non-blocking call"),
    ("blocking='y'", dict(blocking="y"), ArgumentTypeError, "blocking must be a bool"),
    ("lane='nope'", dict(lane="nope"), UnknownLaneError, "unknown lane 'nope'"),
    ("lane=5", dict(lane=5), ArgumentTypeError, "lane must be a str"),
]:
    case(G, EA, bad, lambda w, kw=kwargs: w.etcd_lock.acquire(**kw), exc, fragment, subject=E, server="plain",
         contended=True)
case(G, EA, "timeout=0.2 (busy)", lambda w: accepted(w.etcd_lock.acquire(timeout=0.2), False), None,
     "returns False; leaves the queue", subject=E, server="plain", contended=True)
case(G, EA, "blocking=False (busy)", lambda w: accepted(w.etcd_lock.acquire(False), False), None,
     "returns False", subject=E, server="plain", contended=True)
case(G, EA, "again by its owner",
     lambda w: holding(w.etcd_lock.acquire, w.etcd_lock.release, w.etcd_lock.acquire), DeadlockError,
     "the owner tried to acquire it again", subject=E, server="plain")
case(G, "EtcdLock.release()", "not held", lambda w: w.etcd_lock.release(), NotHeldError, "which is not held",
     subject=E, server="plain")
case(G, "EtcdLock.release()", "by another thread",
     lambda w: holding(w.etcd_lock.acquire, w.etcd_lock.release, lambda: in_thread(w.etcd_lock.release)),
     NotOwnerError, "by a thread that does not hold it", subject=E, server="plain")


def _closed_session(w: World) -> Session:
    session = w.new_session()
    session.close()
    return session


def _lock_then_close(w: World, hold: bool) -> EtcdLock:
    session = w.new_session()
    lock = EtcdLock(w.name, session)
    if hold:
        assert lock.acquire(timeout=SERVE)
    session.close()
    return lock


case(G, EA, "after its Session.close()", lambda w: _lock_then_close(w, hold=False).acquire(timeout=1),
     SessionLost, "is closed", subject=E, server="plain")
case(G, "EtcdLock.release()", "held across its Session.close()",
     lambda w: _lock_then_close(w, hold=True).release(), LockLost,
     "was lost while held (the session was closed while the lock was held)", subject=E, server="plain")
case(G, EL, "session closed", lambda w: EtcdLock(w.name, _closed_session(w)), SessionLost, "is closed",
     subject=E, server="plain")
case(G, "Session.check()", "after close()", lambda w: _closed_session(w).check(), SessionLost, "is closed",
     subject=E, server="plain")
case(G, "Session.keepalive_once()", "after close()", lambda w: _closed_session(w).keepalive_once(),
     LeaseNotFound, "expired or was revoked", subject=E, server="plain")

# --- connecting -----------------------------------------------------------------------------------

G = "Connecting to etcd: TLS, credentials, unreachable servers"
CONNECT = 1.0  # the timeout= of every URL below that must give up (connect_timeout 0.5)
BOUND = CONNECT + 0.5 + 1.0  # timeout + one connect timeout + slack for a loaded machine


def _tls_files(w: World) -> Any:
    return make_tls_files(w.request.getfixturevalue("tmp_path_factory").mktemp("wrong-ca"))


case(G, S, "etcd3+https:// to a plain http server",
     lambda w: Session(f"etcd3+https://{w.hostport}?timeout={CONNECT}"), EtcdAuthError, "TLS with",
     subject=E, server="plain", within=BOUND)
case(G, S, "etcd3+http:// to an https server",
     lambda w: Session(f"etcd3+http://{w.hostport}?timeout={CONNECT}&connect_timeout=0.5"), EtcdUnavailable,
     "check the URL's scheme", subject=E, server="tls", within=BOUND)
case(G, S, "?ca_cert= of another CA",
     lambda w: Session(w.url(ca_cert=_tls_files(w).ca_cert, timeout=CONNECT)), EtcdAuthError,
     "TLS with", subject=E, server="tls", within=BOUND)
case(G, S, "no client certificate (the server wants one)",
     lambda w: Session(f"etcd3+https://{w.hostport}?ca_cert={w.server.tls.ca_cert}&timeout={CONNECT}"),
     EtcdAuthError, "TLS with", subject=E, server="tls", within=BOUND)
case(G, S, "etcd3+grpcs:// with ?ca_cert= of another CA",
     lambda w: Session(w.url(ca_cert=_tls_files(w).ca_cert, timeout=CONNECT).replace("etcd3+https", "etcd3+grpcs")),
     EtcdAuthError, "TLS with", subject=E, server="tls", within=BOUND)
case(G, S, "wrong password",
     lambda w: Session(w.url(password="s3cr3t-wrong", timeout=CONNECT)), EtcdAuthError,
     "etcd rejected the credentials of user", subject=E, server="auth", secret="s3cr3t-wrong", within=BOUND)
case(G, S, "unknown user",
     lambda w: Session(w.url(username="nobody", password="s3cr3t-wrong", timeout=CONNECT)), EtcdAuthError,
     "etcd rejected the credentials of user 'nobody'", subject=E, server="auth", secret="s3cr3t-wrong",
     within=BOUND)
case(G, EA, "no user on a server with auth",
     lambda w: EtcdLock(w.name, w.session_without_user()).acquire(timeout=1),
     EtcdAuthError, "user name is empty", subject=E, server="auth", within=BOUND)
case(G, S, "a closed port (timeout=1, connect_timeout=0.5)",
     lambda w: Session(f"etcd3+http://127.0.0.1:{free_port()}?timeout={CONNECT}&connect_timeout=0.5"),
     EtcdUnavailable, "connection refused", subject=E, server="plain", within=BOUND)
case(G, S, "etcd3+grpc://, a closed port (timeout=1)",
     lambda w: Session(f"etcd3+grpc://127.0.0.1:{free_port()}?timeout={CONNECT}&connect_timeout=0.5"),
     EtcdUnavailable, "no etcd endpoint answered", subject=E, server="plain", within=BOUND)
GT = "GatewayTransport(endpoints, ...)"
case(G, GT, "endpoints=[]", lambda w: GatewayTransport([]), InvalidArgumentError,
     "at least one etcd endpoint is needed", subject=E, server="plain")
case(G, GT, "endpoint 'notaurl'", lambda w: GatewayTransport(["notaurl"]), InvalidArgumentError,
     "bad etcd endpoint", subject=E, server="plain")
case(G, GT, "timeout=0", lambda w: GatewayTransport([w.server.endpoint], timeout=0), InvalidArgumentError,
     "timeout must be positive and finite", subject=E, server="plain")

# --- tooz -----------------------------------------------------------------------------------------

G = "tooz driver: fairlock+etcd3+http://"
T = "tooz"
GC = "tooz.coordination.get_coordinator(url, member)"


def _coordinator(w: World, query: str = "", host: str | None = None, scheme: str = "fairlock+etcd3+http",
                 member: Any = b"m", started: bool = False) -> Any:
    made = coordination.get_coordinator(
        f"{scheme}://{host or w.hostport}{w.prefix}{query}", member)
    if started:
        made.start(start_heart=False)
        made.stop()
    return made


for bad, query, fragment in [
    ("?bogus=1", "?bogus=1", "unknown parameter 'bogus'"),
    ("?timeout=-1", "?timeout=-1", "timeout must be a positive finite number"),
    ("?lease_ttl=1", "?lease_ttl=1", "lease_ttl must be a whole number of seconds >= 2"),
    ("?lanes=a,a", "?lanes=a,a", "lane names must be distinct"),
    ("?default_lane=nope", "?default_lane=nope", "unknown lane 'nope'"),
    ("?max_bypass=x", "?max_bypass=x", "max_bypass must be a whole number or none"),
    ("?api_version=v2", "?api_version=v2", "fairlock speaks etcd's /v3 gateway only"),
    ("?timeout=1&timeout=2", "?timeout=1&timeout=2", "parameter 'timeout' given 2 times"),
]:
    case(G, GC, bad, lambda w, q=query: _coordinator(w, q), ToozURLError, fragment, subject=T, server="plain")
case(G, GC, "port 99999", lambda w: _coordinator(w, host="127.0.0.1:99999"), ToozURLError, "is out of range",
     subject=T, server="plain")
case(G, GC, "member=5", lambda w: _coordinator(w, member=5), TypeError, "member_id must be bytes or str",
     subject=T, server="plain")
CS = "get_coordinator(url, member).start()"
case(G, CS, "fairlock+etcd3+https:// to a plain server",
     lambda w: _coordinator(w, f"?timeout={CONNECT}", scheme="fairlock+etcd3+https", started=True),
     tooz.ToozError, "TLS with", subject=T, server="plain", within=BOUND)
case(G, CS, "a closed port (timeout=1)",
     lambda w: _coordinator(w, f"?timeout={CONNECT}", host=f"127.0.0.1:{free_port()}", started=True),
     coordination.ToozConnectionError, "connection refused", subject=T, server="plain", within=BOUND)
GL = "Coordinator.get_lock(name)"
for bad, name, exc, fragment in [
    ("name=b''", b"", ValueError, "Locks must be provided a name"),
    ("name=5", 5, TypeError, "lock name must be bytes or str"),
    ("name=b'\\xff'", b"\xff", ValueError, "is not UTF-8"),
    (f"name of {MAX_NAME_BYTES + 1} bytes", b"x" * (MAX_NAME_BYTES + 1), InvalidArgumentError,
     f"an etcd lock name is at most {MAX_NAME_BYTES}"),
    ("name with a lone surrogate", "a\ud800", InvalidArgumentError, "cannot be encoded as UTF-8"),
]:
    case(G, GL, bad, lambda w, n=name: w.coord.get_lock(n), exc, fragment,
         subject=T, server="plain")
TA = "tooz lock .acquire()"
for bad, kwargs, exc, fragment in [
    ("shared=True", dict(shared=True), tooz.NotImplemented, "no shared (reader) mode"),
    ("timeout=NaN", dict(timeout=NAN), InvalidArgumentError, "timeout must not be NaN"),
    ("timeout='1'", dict(timeout="1"), ArgumentTypeError, "timeout must be a number or None"),
    ("blocking='y'", dict(blocking="y"), ValueError, "could not convert string to float"),
    ("lane='nope'", dict(lane="nope"), UnknownLaneError, "unknown lane 'nope'"),
]:
    case(G, TA, bad, lambda w, kw=kwargs: w.tooz_lock.acquire(**kw), exc, fragment, subject=T, server="plain",
         contended=True)
case(G, TA, "timeout=-2 (free lock)", lambda w: (accepted(w.tooz_lock.acquire(timeout=-2)), w.tooz_lock.release()),
     None, "accepted: one try (tooz's convention)", subject=T, server="plain")
case(G, TA, "blocking=False, timeout=1 (free lock)",
     lambda w: (accepted(w.tooz_lock.acquire(blocking=False, timeout=1)), w.tooz_lock.release()), None,
     "accepted: the timeout is ignored (tooz's convention)", subject=T, server="plain")
case(G, TA, "blocking=0.2 (busy)", lambda w: accepted(w.tooz_lock.acquire(blocking=0.2), False), None,
     "returns False; leaves the queue", subject=T, server="plain", contended=True)
def _after_stop(w: World) -> object:
    stopped = w.coordinator()
    lock = stopped.get_lock(w.name.encode())
    stopped.stop()
    return lock.acquire(blocking=False)


case(G, TA, "after the coordinator's stop()", _after_stop, tooz.ToozError,
     "the fairlock coordinator is not started", subject=T, server="plain")
case(G, "tooz lock .release()", "not held", lambda w: accepted(w.tooz_lock.release(), False), None,
     "returns False (tooz's contract)", subject=T, server="plain")
case(G, "tooz lock .release()", "by another thread",
     lambda w: holding(w.tooz_lock.acquire, w.tooz_lock.release, lambda: in_thread(w.tooz_lock.release)),
     tooz.ToozError, "by a thread that did not acquire it", subject=T, server="plain")

# --- the command line -----------------------------------------------------------------------------

G = "Command line: python -m fairlock"


def cli(*argv: str) -> Callable[[World], object]:
    def run(w: World) -> object:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        out = subprocess.run([sys.executable, "-m", "fairlock", *argv], capture_output=True, text=True,
                             timeout=60, cwd=ROOT, env=env)
        if out.returncode != 0:
            raise ExitStatus(out.returncode, out.stderr)
        return out.returncode

    return run


for command, args, says in [
    ("bench local", "--reps 0", "fairlock bench local: error: argument --reps: must be >= 1, got 0"),
    ("bench local", "--reps x", "fairlock bench local: error: argument --reps: invalid"),
    ("bench local", "--threads 1", "fairlock bench local: error: argument --threads: must be >= 2, got 1"),
    ("bench local", "--cap nan", "fairlock bench local: error: argument --cap: must be > 0 seconds, got nan"),
    ("bench local", "--mode foo", "fairlock bench local: error: argument --mode: invalid choice: 'foo'"),
    ("bench etcd", "--waiters 0", "fairlock bench etcd: error: argument --waiters: must be >= 1, got 0"),
    ("bench etcd", "--seconds -1", "fairlock bench etcd: error: argument --seconds: must be > 0 seconds"),
    ("bench etcd", "--max-bypass -1", "fairlock bench etcd: --max-bypass must be >= 0"),
    ("bench local", "--json /nonexistent-dir/x.json",
     "fairlock bench local: error: argument --json: directory '/nonexistent-dir' does not exist"),
    ("bench faults", "--soak nan", "fairlock bench faults: error: argument --soak: must be > 0 seconds"),
    ("inspect", "", "fairlock inspect: error: one of the arguments --url --endpoint --config-file is required"),
    ("inspect", "--url ftp://x", "fairlock inspect: error: argument --url: bad etcd URL 'ftp://x': scheme must be one of"),
    ("inspect", "--url etcd3+http://h:2379 --endpoint http://h:2379",
     "fairlock inspect: error: argument --endpoint: not allowed with argument --url"),
    ("inspect", "--url fairlock+etcd3+http://h:2379/p?bogus=1",
     "fairlock inspect: error: argument --url: fairlock tooz URL: unknown parameter 'bogus'"),
    ("inspect", "--url fairlock+etcd3+http://h:2379/p?lanes=a,b&default_lane=c",
     "fairlock inspect: error: argument --url: fairlock tooz URL: unknown lane 'c'"),
    ("inspect", "--endpoint etcd3+http://h:2379",
     "fairlock inspect: error: argument --endpoint: endpoint 'etcd3+http://h:2379' is not http(s)://HOST:PORT"),
    ("inspect", "--endpoint http://h:2379/prefix",
     "fairlock inspect: error: argument --endpoint: endpoint 'http://h:2379/prefix' is http(s)://HOST:PORT "
     "without a path or options; name a prefix with --url (its path)"),
    ("inspect", "--url etcd3+http://h:2379 --prefix locks",
     "fairlock inspect: error: argument --prefix: must start with '/', got 'locks'"),
    ("inspect", "--url etcd3+http://h:2379 --lanes a,,b",
     "fairlock inspect: error: argument --lanes: must be lane names separated by commas"),
    ("inspect", "--url etcd3+http://h:2379 --max-bypass -1",
     "fairlock inspect: error: argument --max-bypass: must be a whole number >= 0 or none, got '-1'"),
    ("inspect", "--url etcd3+http://h:2379 --lanes a,b --default-lane c",
     "fairlock inspect: error: unknown lane 'c'"),
    ("bench faults", "--url ftp://x", "fairlock bench faults: error: argument --url: bad etcd URL 'ftp://x': scheme must be"),
    ("", "nosuch", "fairlock: error: argument COMMAND: invalid choice: 'nosuch'"),
]:
    case(G, f"python -m fairlock {command}".strip(), args or "(no arguments)", cli(*command.split(), *args.split()),
         ExitStatus, f"exit status 2: {says}", subject="cli", shows="exit status 2, usage error on stderr")
case(G, "python -m fairlock inspect", "--url to a closed port (timeout=1)",
     lambda w: cli("inspect", "--url", f"etcd3+http://127.0.0.1:{free_port()}?timeout=1")(w), ExitStatus,
     "exit status 1: fairlock inspect: no etcd endpoint answered", subject="cli",
     shows="exit status 1, the reason on stderr", within=15.0)
for option, value, says in [("--url", "ftp://x", "bad etcd URL 'ftp://x': scheme must be"),
                            ("--endpoint", "notaurl", "endpoint 'notaurl' is not http(s)://HOST:PORT")]:
    case(G, "python -m fairlock bench etcd", f"{option} {value}", cli("bench", "etcd", option, value), ExitStatus,
         f"exit status 2: fairlock bench etcd: error: argument {option}: {says}",
         subject="cli", shows="exit status 2, usage error on stderr")


def _config_file(text: str | None) -> Callable[[World], object]:
    """``fairlock inspect --config-file FILE`` with ``text`` in FILE (None: no such file)."""
    def run(w: World) -> object:
        path = os.path.join(w.tmp, "nova.conf")
        if text is not None:
            with open(path, "w") as f:
                f.write(text)
        return cli("inspect", "--config-file", path)(w)

    return run


for what, text, says in [
    ("a file that does not exist", None, "cannot read config file "),
    ("no [oslo_concurrency] fairlock_backend_url", "[oslo_concurrency]\nlock_path = /tmp\n",
     "[oslo_concurrency] fairlock_backend_url is not set in "),
    ("fairlock_backend_url = ftp://x", "[oslo_concurrency]\nfairlock_backend_url = ftp://x\n",
     "[oslo_concurrency] options in "),
    ("fairlock_max_bypass = -1", "[oslo_concurrency]\nfairlock_backend_url = etcd3+http://h:2379\n"
     "fairlock_max_bypass = -1\n", "[oslo_concurrency] options: "),
]:
    case(G, "python -m fairlock inspect", f"--config-file with {what}", _config_file(text), ExitStatus,
         f"exit status 2: fairlock inspect: error: {says.strip()}", subject="cli",
         shows="exit status 2, usage error on stderr")

IDS = [c.id for c in CASES]
assert len(IDS) == len(set(IDS)), [i for i in IDS if IDS.count(i) > 1]


# -- running the table ------------------------------------------------------------------------------


def _params() -> list[Any]:
    params = []
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        params.append(pytest.param(c, id=c.id, marks=marks))
    return params


@pytest.mark.timeout(90)
@pytest.mark.parametrize("c", _params())
def test_bad_input(c: Case, request: Any) -> None:
    w = World(request, c)
    if c.server:
        w.server, w.prefix  # noqa: B018 - start the server now, not in the timed call
    try:
        with contention(handles(w)) if c.contended else contextlib.nullcontext():
            began = time.monotonic()
            outcome: BaseException | None = None
            try:
                c.call(w)
            except Exception as exc:  # noqa: BLE001 - judged below
                outcome = exc
            took = time.monotonic() - began
        if c.raises is None:
            assert outcome is None, f"{c.entry} {c.bad}: expected it accepted, got {outcome!r}"
        else:
            assert outcome is not None, f"{c.entry} {c.bad}: nothing raised"
            assert type(outcome) is c.raises, f"got {type(outcome).__name__}: {outcome}"
            assert c.match in str(outcome), str(outcome)
        if c.secret and outcome is not None:
            assert c.secret not in f"{outcome} {outcome!r} {outcome.__cause__!r}"
        if c.within is not None:
            assert took <= c.within, f"took {took:.2f}s, more than {c.within}s"
        check_intact(w, outcome)
    finally:
        w.close()


# -- decisions that need more than one row ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_etcd_names_never_reach_other_keys(etcd_server: Any, etcd_prefix: bytes) -> None:
    """'/' and NUL are ordinary characters of an etcd lock name: each name's keys are one
    percent-quoted component under ``<prefix>/locks/``, so names that look like another lock's
    key path (``a/owner``, ``a/w/x``), escapes (``../../x``) or quoting (``a%2Fowner``) get locks
    of their own, all held at once."""
    prefix = etcd_prefix.decode().rstrip("/")
    names = ["a", "a/owner", "a/w/x", "a/w/", "../../x", "a%2Fowner", "a\0b", "/", "%", "a b"]
    session = Session(GatewayTransport([etcd_server.endpoint], timeout=5.0), prefix=prefix)
    try:
        locks = [EtcdLock(name, session) for name in names]
        for lock in locks:
            assert lock.acquire(False), lock.name
        head = prefix.encode() + b"/locks/"
        _, kvs = session.transport.get_range(prefix.encode(), prefix_end(prefix.encode()))
        keys = [kv.key for kv in kvs]
        assert all(key.startswith(head) for key in keys)
        assert sorted(lock_name_from_key(prefix.encode(), key) for key in keys) == sorted(names)
        assert sorted(keys) == sorted(lock_keys(prefix.encode(), name)[0] for name in names)
        for lock in locks:
            lock.release()
        assert not session.transport.get_range(prefix.encode(), prefix_end(prefix.encode()))[1]
    finally:
        session.close()
        session.transport.close()


@pytest.mark.timeout(90)
def test_longest_etcd_name_hands_over_among_many_waiters(etcd_server: Any, etcd_prefix: bytes) -> None:
    """A name of MAX_NAME_BYTES bytes that percent-quoting triples ('é' is 2 bytes, 6 quoted),
    with 24 waiters in two lanes: the grants that overtake every low waiter (the largest
    transactions) stay under etcd's request limit, and everyone is served."""
    prefix = etcd_prefix.decode().rstrip("/")
    name = "é" * (MAX_NAME_BYTES // 2)
    sessions = [Session(GatewayTransport([etcd_server.endpoint], timeout=10.0), prefix=prefix)
                for _ in range(25)]
    try:
        holder = EtcdLock(name, sessions[0])
        assert holder.acquire(False)
        served: list[str] = []
        threads = []
        for i, session in enumerate(sessions[1:]):
            lane = "low" if i < 16 else "high"
            lock = EtcdLock(name, session)

            def wait(lock: EtcdLock = lock, lane: str = lane) -> None:
                if lock.acquire(timeout=60, lane=lane):
                    served.append(lane)
                    lock.release()

            threads.append(start(wait))
            _, wprefix, wend = lock_keys(prefix.encode(), name)
            wait_for(lambda n=i + 1: len(sessions[0].transport.get_range(wprefix, wend)[1]) == n,
                     what="the waiter to queue")
        holder.release()
        for thread in threads:
            thread.join(60)
        assert len(served) == 24 and served.count("high") == 8
    finally:
        for session in sessions:
            session.close()
            session.transport.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_failed_session_from_a_url_closes_its_transport() -> None:
    before = {t.ident for t in threading.enumerate()}
    for _ in range(3):
        with pytest.raises(EtcdUnavailable):
            Session(f"etcd3+grpc://127.0.0.1:{free_port()}?timeout=0.5")
    wait_for(lambda: {t.ident for t in threading.enumerate()} <= before, timeout=3.0,
             what="the transport's threads to end")


def test_a_value_the_library_refuses_at_run_time_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The command line's safety net: a FairlockError about an argument that the parser let
    through ends as exit status 2 and one line on stderr, not a traceback."""
    import argparse

    from fairlock import __main__ as cli_main

    def refuse(args: argparse.Namespace) -> int:
        raise InvalidArgumentError("lock name must not be empty")

    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="fairlock")
        commands = parser.add_subparsers(dest="command", required=True)
        commands.add_parser("demo").set_defaults(func=refuse)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", build)
    assert cli_main.main(["demo"]) == 2
    assert capsys.readouterr().err == "fairlock demo: error: lock name must not be empty\n"


# -- the table in the docs -------------------------------------------------------------------------


def public_name(cls: type[BaseException]) -> str:
    """How users import ``cls``, with the built-in class ``except`` clauses may use."""
    module = cls.__module__
    for public in ("fairlock", "fairlock.etcd", "tooz", "tooz.coordination"):
        if getattr(sys.modules.get(public), cls.__name__, None) is cls:
            module = public
            break
    name = cls.__name__ if module == "builtins" else f"{module}.{cls.__name__}"
    builtin = next((b for b in cls.__mro__[1:] if b.__module__ == "builtins"
                    and b not in (Exception, BaseException, object)), None)
    return f"``{name}``" + (f" (a ``{builtin.__name__}``)" if builtin is not None and module != "builtins" else "")


def _literal(text: str) -> str:
    return f"``{text}``" if text.strip() else "--"


def render_rst() -> str:
    """The generated block of doc/source/errors.rst."""
    out: list[str] = []
    for group, rows in itertools.groupby(CASES, key=lambda c: c.group):
        out += [group, "~" * len(group), "", ".. list-table::", "   :header-rows: 1",
                "   :widths: 28 26 24 22", "",
                "   * - Entry point", "     - Bad input", "     - What the caller gets",
                "     - The message says"]
        for c in rows:
            if c.xfail:
                gets, says = "*a known gap (see above)*", "--"
            elif c.raises is None:
                gets, says = c.match, "--"
            else:
                gets = c.shows or public_name(c.raises)
                says = _literal(c.match.removeprefix("exit status 2: ").removeprefix("exit status 1: "))
            out += [f"   * - {_literal(c.entry)}", f"     - {_literal(c.bad)}", f"     - {gets}",
                    f"     - {says}"]
        out.append("")
    return "\n".join(out)


BEGIN, END = ".. begin generated by tests/test_bad_input.py", ".. end generated"


def test_errors_doc_matches_the_table() -> None:
    text = ERRORS_RST.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
    assert block == render_rst().strip("\n"), (
        "doc/source/errors.rst is out of date: regenerate its table with python -m tests.test_bad_input")


def test_url_lease_ttl_below_the_sessions_minimum_is_refused_where_the_url_is_read() -> None:
    """Issue 9 bug 4: parse_url accepted lease_ttl=1 (docs said >= 1); Session then refused it."""
    from fairlock.etcd.config import parse_url

    assert parse_url("etcd3+http://127.0.0.1:2379/p?lease_ttl=2").lease_ttl == 2
    with pytest.raises(InvalidArgumentError, match="lease_ttl must be a whole number of seconds >= 2"):
        parse_url("etcd3+http://127.0.0.1:2379/p?lease_ttl=1")


if __name__ == "__main__":
    print(render_rst())

