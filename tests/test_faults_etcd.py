"""etcd-server faults, each against real etcd on loopback (issue 6), with figures (``-s`` shows them).

1. etcd restarted on its data dir while locks are held and waited on: within the TTL the holders
   keep their locks and the waiters resume; down for longer than the TTL, the holder is told its
   lock is lost and every waiter stops with a ``SessionLost`` / ``EtcdUnavailable`` error, within
   its timeout plus the slack ``doc/source/etcd.rst`` documents; afterwards new sessions lock again.
2. A 3-member cluster: with the leader stopped, grants go on through the other endpoints; with a
   second member stopped (no quorum), acquires fail with clear errors and holders are told lost;
   with the members back, grants resume.
3. etcd down at acquire: a clear error within the configured timeouts; a dead endpoint listed
   before a live one costs at most one connect timeout.

Every critical section is a :class:`fairlock.testing.checker.Grant`, collected in memory from
threads of this process, each on its own :class:`Session` (a separate client to etcd), and the
checker judges them after each fault: no overlap of used spans (no double grant), tokens
increase, no write after a lost notice, FIFO within a lane, bypass <= K. A *write* is a check
``lock.is_held()`` that passed, stamped just **before** the check: the lost notice (``on_lost``,
or ``is_held()`` turning False) is stamped after the session was marked lost, so a passed check
is always stamped before the notice, whichever thread marked the loss.

Waits synchronise on conditions and events; the only sleeps are the critical sections' own work.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from fairlock.testing import checker
from fairlock.testing.checker import Grant
from fairlock.etcd import (
    EtcdError,
    EtcdLock,
    EtcdUnavailable,
    LeaseNotFound,
    LockLost,
    Session,
    SessionLost,
)
from fairlock.etcd.gateway import GatewayTransport
from fairlock.etcd.lock import lock_keys
from fairlock.etcd.transport import prefix_end
from fairlock.testing import EtcdServer, free_port

from .kinds import start, wait_for

TTL = 5  # lease ttl of every session here (s)
LANES = ("high", "normal")
K = 2  # max_bypass of every lock here
WRITES = 3  # writes per critical section
HOLD = 0.015  # seconds of work per critical section, spread over its writes
#: The family of errors a caller may see from etcd being down (TxnOutcomeUnknown is an
#: EtcdUnavailable). LeaseNotFound, WatchCompacted or a bare EtcdError would be a bug here.
OUTAGE_ERRORS = (SessionLost, EtcdUnavailable)


def now_ns() -> int:
    return time.monotonic_ns()


def seconds(ns: int) -> float:
    return ns / 1e9


class TicketedLock(EtcdLock):
    """An EtcdLock that remembers the ticket and the token of its last grant, for the checker.

    The ticket (etcd's revision at which the request queued; the grant's own revision for an
    uncontended grant) orders requests exactly; request times would show false FIFO inversions
    of requests made a round trip apart.
    """

    ticket: int | None = None
    granted_token: int | None = None

    def _wait(self, my_key: bytes, ticket: int, lane: str, deadline: float | None, **kw: Any) -> bool:
        self.ticket = ticket
        return super()._wait(my_key, ticket, lane, deadline, **kw)

    def _granted(self, token: int) -> None:
        self.granted_token = token
        super()._granted(token)


@dataclass
class Failure:
    who: str
    phase: str  # "session", "acquire", "release"
    error: BaseException
    at: float  # monotonic seconds when it was raised
    elapsed: float
    timeout: float | None

    @property
    def kind(self) -> str:
        return type(self.error).__name__


@dataclass
class Book:
    """Grant records and failures, behind one condition that wakes whoever waits for progress."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    records: list[Grant] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)

    def add(self, record: Grant) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def failed(self, failure: Failure) -> None:
        with self.cond:
            self.failures.append(failure)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out ({timeout:g} s) waiting for {what}"

    def grants_since(self, t: float) -> list[Grant]:
        return sorted((r for r in self.records if seconds(r.start) >= t), key=lambda r: r.start)

    def report(self) -> checker.Report:
        with self.cond:
            records = list(self.records)
        return checker.check(records, max_bypass=K, order="ticket")

    def failures_since(self, t: float) -> list[Failure]:
        with self.cond:
            return [f for f in self.failures if f.at >= t]


def critical_section(lock: TicketedLock, book: Book, who: str, lane: str, request: int,
                     lost: dict[int, int], hold: float = HOLD,
                     until: threading.Event | None = None) -> Grant:
    """Write under the lock (each write guarded by is_held()), release, record the grant.

    ``until``: hold, writing every 50 ms, until it is set or the lock is lost.
    """
    start_ns = now_ns()
    token = lock.granted_token
    ticket = lock.ticket if lock.ticket is not None else token
    writes: list[int] = []
    seen_lost: int | None = None

    def write() -> bool:
        nonlocal seen_lost
        stamp = now_ns()
        if not lock.is_held():
            seen_lost = now_ns()
            return False
        writes.append(stamp)
        return True

    if until is None:
        for _ in range(WRITES):
            if not write():
                break
            time.sleep(hold / WRITES)  # the critical section's work
    else:
        while write() and not until.wait(0.05):
            pass
    end = now_ns()
    try:
        lock.release()
    except LockLost:
        pass  # told before: the record carries lost_at
    except (SessionLost, EtcdError) as exc:
        book.failed(Failure(who, "release", exc, time.monotonic(), seconds(now_ns() - end), None))
    told = [t for t in (lost.get(token or 0), seen_lost) if t is not None]
    record = Grant(fencing_token=token, holder=who, lane=lane, request=request, start=start_ns,
                   end=end, ticket=ticket, writes=tuple(writes),
                   lost_at=min(told) if told else None)
    book.add(record)
    return record


class Load:
    """Threads looping acquire / write / release on one lock, each on its own Session.

    A worker whose session is lost (or that cannot make one) closes it and makes a new one, as a
    service would; every session it made stays in ``book.sessions`` for the leak check.
    """

    def __init__(self, url: str, name: str, lanes: Sequence[str], *, acquire_timeout: float,
                 book: Book | None = None) -> None:
        self.url = url
        self.name = name
        self.acquire_timeout = acquire_timeout
        self.book = book or Book()
        self.stop = threading.Event()
        self.threads = [start(lambda i=i, lane=lane: self._work(f"load{i}-{lane}", lane),
                              name=f"load{i}") for i, lane in enumerate(lanes)]

    def _session(self, who: str) -> Session | None:
        began = time.monotonic()
        try:
            session = Session(self.url)
        except EtcdError as exc:
            self.book.failed(Failure(who, "session", exc, time.monotonic(),
                                     time.monotonic() - began, None))
            return None
        with self.book.cond:
            self.book.sessions.append(session)
        return session

    def _work(self, who: str, lane: str) -> None:
        session: Session | None = None
        lock: TicketedLock | None = None
        lost: dict[int, int] = {}

        def told(_lock: EtcdLock, token: int | None, _reason: str) -> None:
            lost.setdefault(token or 0, now_ns())

        try:
            while not self.stop.is_set():
                if session is not None and not session.alive():
                    session.close()
                    session = None
                if session is None:
                    session = self._session(who)
                    if session is None:
                        self.stop.wait(0.2)
                        continue
                    lock = TicketedLock(self.name, session, lanes=LANES, max_bypass=K, on_lost=told)
                assert lock is not None
                lock.ticket = None
                request = now_ns()
                began = time.monotonic()
                try:
                    got = lock.acquire(timeout=self.acquire_timeout, lane=lane)
                except (SessionLost, LockLost, EtcdError) as exc:
                    self.book.failed(Failure(f"{who}/{session.lease_id:x}", "acquire", exc,
                                             time.monotonic(), time.monotonic() - began,
                                             self.acquire_timeout))
                    continue
                if not got:
                    with self.book.cond:
                        self.book.timeouts.append(time.monotonic() - began)
                    continue
                critical_section(lock, self.book, f"{who}/{session.lease_id:x}", lane, request, lost)
        finally:
            if session is not None:
                session.close()

    def close(self, join_within: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + join_within
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"load threads still running {join_within:g} s after stop: {alive}"


@dataclass
class Attempt:
    """One acquire in its own thread: what it returned or raised, and when."""

    thread: threading.Thread | None = None
    got: bool | None = None
    error: BaseException | None = None
    elapsed: float = 0.0
    ended: float = 0.0  # monotonic time when acquire returned or raised
    done: threading.Event = field(default_factory=threading.Event)


def attempt(lock: TicketedLock, book: Book, who: str, *, timeout: float, lane: str = "normal",
            lost: dict[int, int] | None = None, until: threading.Event | None = None,
            granted: threading.Event | None = None) -> Attempt:
    """acquire(timeout) in a thread; if granted, a critical section (recorded in ``book``)."""
    out = Attempt()
    lost = {} if lost is None else lost

    def run() -> None:
        request = now_ns()
        began = time.monotonic()
        try:
            out.got = lock.acquire(timeout=timeout, lane=lane)
        except BaseException as exc:  # noqa: BLE001 - judged by the test
            out.error = exc
        out.ended = time.monotonic()
        out.elapsed = out.ended - began
        try:
            if out.got:
                if granted is not None:
                    granted.set()
                critical_section(lock, book, who, lane, request, lost, until=until)
        finally:
            out.done.set()

    out.thread = start(run, name=who)
    return out


def etcd_waiters(transport: Any, prefix: bytes, name: str) -> int:
    _, wprefix, wend = lock_keys(prefix, name)
    _, kvs = transport.get_range(wprefix, wend)
    return len(kvs)


def keys_under(endpoints: Sequence[str], prefix: str) -> list[bytes]:
    probe = GatewayTransport(list(endpoints), timeout=10.0)
    try:
        start_key = prefix.encode()
        _, kvs = probe.get_range(start_key, prefix_end(start_key))
        return [kv.key for kv in kvs]
    finally:
        probe.close()


def live_leases(server: EtcdServer, lease_ids: Sequence[int]) -> list[int]:
    """The leases among ``lease_ids`` that etcd still has."""
    alive = []
    for lease in lease_ids:
        answer = server.post("lease/timetolive", {"ID": str(lease)}, timeout=5.0)
        if int(answer.get("TTL", -1)) > 0:
            alive.append(lease)
    return alive


def assert_clean(book: Book, what: str) -> checker.Report:
    report = book.report()
    print(f"  checker after {what}: {report.summary()}")
    assert report.ok, f"{what}: {report.summary()}: {report.violations}"
    return report


def assert_outage_errors(failures: Sequence[Failure], what: str) -> None:
    wrong = [f"{f.who} {f.phase}: {f.kind}: {f.error}" for f in failures
             if not isinstance(f.error, OUTAGE_ERRORS)]
    assert not wrong, f"{what}: errors outside SessionLost/EtcdUnavailable: {wrong}"


def describe_failures(failures: Sequence[Failure]) -> str:
    if not failures:
        return "none"
    by: dict[tuple[str, str], list[Failure]] = {}
    for f in failures:
        by.setdefault((f.phase, f.kind), []).append(f)
    parts = []
    for (phase, kind), fs in sorted(by.items()):
        worst = max(f.elapsed for f in fs)
        parts.append(f"{len(fs)} {phase} {kind} (slowest {worst:.2f} s)")
    return ", ".join(parts)


def slack(timeout: float, transport_timeout: float) -> float:
    """How late an acquire may fail during an outage, as doc/source/etcd.rst allows: a timed-out
    waiter reads back until etcd answers or its session is lost (about one TTL), plus the
    etcd calls in flight when the deadline and the loss come (one transport timeout each), plus
    one second for two noisy cores."""
    return timeout + TTL + 3 * transport_timeout + 1.0


# --- 1. etcd restarted on its data dir -----------------------------------------------------------


@pytest.fixture
def own_etcd(etcd_binary: str) -> Iterator[EtcdServer]:
    with EtcdServer(binary=etcd_binary, name="restart") as server:
        yield server


def test_etcd_restart_within_the_ttl_holders_keep_waiters_resume(own_etcd: EtcdServer) -> None:
    transport_timeout = 2.0
    url = own_etcd.url("/faults", timeout=transport_timeout, lease_ttl=TTL)
    load = Load(url, "load", ["high", "normal", "high", "normal"], acquire_timeout=10.0)
    held = Book()
    holder_session, waiter_session = Session(url), Session(url)
    try:
        load.book.wait(lambda: len(load.book.records) >= 10, 30, "10 grants before the fault")
        lost: dict[int, int] = {}
        release = threading.Event()
        holder = attempt(TicketedLock("held", holder_session, lanes=LANES, max_bypass=K,
                                      on_lost=lambda _l, token, _r: lost.setdefault(token or 0, now_ns())),
                         held, "holder", timeout=10, lost=lost, until=release,
                         granted=(holder_granted := threading.Event()))
        assert holder_granted.wait(10)
        waiter = attempt(TicketedLock("held", waiter_session, lanes=LANES, max_bypass=K),
                         held, "waiter", timeout=30)
        wait_for(lambda: etcd_waiters(holder_session.transport, holder_session.prefix, "held") == 1,
                 what="the waiter queued")

        down = time.monotonic()
        own_etcd.stop()
        own_etcd.start()
        back = time.monotonic()
        outage = back - down
        print(f"\netcd restart (same data dir): down {outage:.2f} s (ttl {TTL} s)")

        # The holder's lease outlived the outage (etcd also extends every lease when it starts).
        if outage < TTL - TTL / 3 - 1:
            assert holder_session.alive() and not lost, "the holder lost its lock over a short restart"
        release.set()
        assert waiter.done.wait(30), "the waiter hangs after the restart"
        assert waiter.error is None and waiter.got, waiter.error
        assert holder.done.wait(10)
        waiter_grant = [r for r in held.records if r.holder == "waiter"][0]
        print(f"  waiter of the held lock granted {seconds(waiter_grant.start) - back:.2f} s after "
              f"etcd was back (holder released then)")

        load.book.wait(lambda: len(load.book.grants_since(back)) >= 10, 30, "10 grants after the restart")
        first = load.book.grants_since(back)[0]
        print(f"  load: first grant {seconds(first.start) - back:.2f} s after etcd was back; "
              f"errors during the fault: {describe_failures(load.book.failures_since(down))}")
    finally:
        load.close(join_within=slack(10.0, transport_timeout) + 5)
        holder_session.close()
        waiter_session.close()
    assert_outage_errors(load.book.failures, "restart within the ttl")
    assert_clean(load.book, "a restart within the ttl (load)")
    assert_clean(held, "a restart within the ttl (held lock)")
    assert keys_under([own_etcd.endpoint], "/faults") == []
    leases = [s.lease_id for s in load.book.sessions] + [holder_session.lease_id, waiter_session.lease_id]
    assert live_leases(own_etcd, leases) == []


def test_etcd_down_longer_than_the_ttl_holder_told_waiters_fail_then_locks_work_again(
        own_etcd: EtcdServer) -> None:
    transport_timeout = 2.0
    url = own_etcd.url("/faults", timeout=transport_timeout, lease_ttl=TTL)
    load = Load(url, "load", ["high", "normal", "high", "normal"], acquire_timeout=3.0)
    held = Book()
    holder_session = Session(url)
    waiter_sessions = {timeout: Session(url) for timeout in (1.0, 3.0, 30.0)}
    new_session: Session | None = None
    try:
        load.book.wait(lambda: len(load.book.records) >= 10, 30, "10 grants before the fault")
        lost: dict[int, int] = {}
        told = threading.Event()

        def on_lost(_lock: EtcdLock, token: int | None, _reason: str) -> None:
            lost.setdefault(token or 0, now_ns())
            told.set()

        release = threading.Event()
        holder_granted = threading.Event()
        holder = attempt(TicketedLock("held", holder_session, lanes=LANES, max_bypass=K,
                                      on_lost=on_lost),
                         held, "holder", timeout=10, lost=lost, until=release, granted=holder_granted)
        assert holder_granted.wait(10)
        waiters = {}
        for n, (timeout, session) in enumerate(waiter_sessions.items()):
            waiters[timeout] = attempt(TicketedLock("held", session, lanes=LANES, max_bypass=K),
                                       held, f"waiter-{timeout:g}s", timeout=timeout)
            wait_for(lambda n=n: etcd_waiters(holder_session.transport, holder_session.prefix,
                                              "held") == n + 1, what=f"waiter {n} queued")

        down = time.monotonic()
        own_etcd.stop()
        print(f"\netcd down longer than the ttl ({TTL} s), transport timeout {transport_timeout:g} s:")
        assert told.wait(TTL + transport_timeout + 2), "the holder was not told its lock was lost"
        told_after = seconds(min(lost.values())) - down
        assert holder.done.wait(5)
        assert not holder_session.alive()
        print(f"  holder told its lock was lost {told_after:.2f} s after etcd stopped")
        assert told_after <= TTL + transport_timeout + 1
        for timeout, w in waiters.items():
            bound = slack(timeout, transport_timeout)
            assert w.done.wait(max(0.0, down + bound - time.monotonic())), \
                f"waiter with timeout {timeout:g} s still waiting {bound:.1f} s after etcd stopped"
            assert isinstance(w.error, OUTAGE_ERRORS), (timeout, w.got, w.error)
            print(f"  waiter with timeout {timeout:4.1f} s: {type(w.error).__name__} after "
                  f"{w.elapsed:.2f} s (allowed {bound:.1f} s)")
            assert w.elapsed <= bound
        load.book.wait(lambda: all(not s.alive() for s in load.book.sessions), TTL + 5,
                       "every load session lost")

        own_etcd.start()
        back = time.monotonic()
        print(f"  etcd back after {back - down:.2f} s down")
        new_session = Session(url)
        again = attempt(TicketedLock("held", new_session, lanes=LANES, max_bypass=K),
                        held, "after", timeout=30)
        assert again.done.wait(35) and again.got, again.error
        after = [r for r in held.records if r.holder == "after"][0]
        # etcd extends every lease by its ttl when it starts again: the lost sessions' leases
        # (revoked only while etcd was down) keep their keys up to one ttl + an election longer.
        print(f"  held lock granted to a new session {seconds(after.start) - back:.2f} s after etcd "
              f"was back (its lost holder's lease lived on in etcd)")
        load.book.wait(lambda: len(load.book.grants_since(back)) >= 10, 30, "10 grants after the restart")
        first = load.book.grants_since(back)[0]
        failures = load.book.failures_since(down)
        acquires = [f for f in failures if f.phase == "acquire"]
        print(f"  load: first grant {seconds(first.start) - back:.2f} s after etcd was back; errors: "
              f"{describe_failures(failures)}")
        for f in acquires:
            assert f.elapsed <= slack(3.0, transport_timeout), f
    finally:
        load.close(join_within=slack(3.0, transport_timeout) + 5)
        for s in (holder_session, *waiter_sessions.values(), new_session):
            if s is not None:
                s.close()
    assert_outage_errors(load.book.failures, "etcd down longer than the ttl")
    report = assert_clean(load.book, "etcd down longer than the ttl (load)")
    assert_clean(held, "etcd down longer than the ttl (held lock)")
    assert held.report().lost >= 1  # the holder's section is recorded as lost
    print(f"  lost sections in the load: {report.lost}")
    assert keys_under([own_etcd.endpoint], "/faults") == []
    leases = [s.lease_id for s in (*load.book.sessions, holder_session, *waiter_sessions.values(),
                                   new_session) if s is not None]
    wait_for(lambda: live_leases(own_etcd, leases) == [], timeout=TTL + 3,
             what="the leases of sessions lost during the outage to expire")


def test_a_session_outlives_an_outage_shorter_than_its_remaining_validity(own_etcd: EtcdServer) -> None:
    """etcd stops just before a refresh is due and is back ~2.5 s later, before the validity
    deadline (last refresh sent + ttl). The refresh due then fails after one transport timeout
    (2 s); the session used to wait a whole interval (ttl/3) more, which ran past the deadline,
    and declared itself lost without another try. It now retries within 0.5 s and keeps its lock."""
    transport_timeout = 2.0
    told: list[str] = []
    session = Session(own_etcd.url("/faults", timeout=transport_timeout, lease_ttl=TTL))
    try:
        lock = EtcdLock("outlive", session, on_lost=lambda _l, _t, reason: told.append(reason))
        assert lock.acquire(timeout=5)
        interval = TTL / 3
        first = session.valid_for()
        wait_for(lambda: session.valid_for() > first, timeout=interval + transport_timeout + 1,
                 what="a refresh")
        refreshed = time.monotonic() + session.valid_for() - TTL  # when that refresh was sent
        time.sleep(max(0.0, refreshed + interval - 0.2 - time.monotonic()))  # just before the next
        down = time.monotonic()
        own_etcd.stop()
        time.sleep(max(0.0, refreshed + 2.4 - time.monotonic()))  # etcd takes ~1.5 s to be ready
        own_etcd.start()
        back = time.monotonic()
        print(f"\netcd down {back - down:.2f} s from just before a refresh; the lease was valid "
              f"until {refreshed + TTL - down:.2f} s after the stop")
        assert back < refreshed + TTL, "etcd took too long to start: the test proves nothing"
        wait_for(lambda: session.lost or session.valid_for() > TTL - interval - 1,
                 timeout=transport_timeout + 2, what="a refresh after the outage")
        assert not told and session.alive() and lock.is_held(), told
        lock.release()
    finally:
        session.close()
    assert keys_under([own_etcd.endpoint], "/faults") == []


def test_a_waiter_stops_soon_after_its_session_is_lost_while_etcd_is_down(etcd_binary: str) -> None:
    """doc/source/etcd.rst: waiters of a lost session stop at once with SessionLost. With etcd
    down, the waiter used to try to withdraw its key first (one txn, then reads until the session
    is lost: two transport timeouts more); the lost session's lease revoke takes the key anyway."""
    ttl, transport_timeout = 2, 1.5
    with EtcdServer(binary=etcd_binary, name="lost-waiter") as server:
        url = server.url("/faults", timeout=transport_timeout, lease_ttl=ttl)
        holder_session, waiter_session = Session(url), Session(url)
        try:
            holder = EtcdLock("lost-waiter", holder_session)
            assert holder.acquire(timeout=5)
            waiter = attempt(TicketedLock("lost-waiter", waiter_session), Book(), "waiter", timeout=60)
            wait_for(lambda: etcd_waiters(holder_session.transport, holder_session.prefix,
                                          "lost-waiter") == 1, what="the waiter queued")
            server.stop()
            down = time.monotonic()
            lost_by = down + waiter_session.valid_for()  # its validity deadline
            assert waiter.done.wait(ttl + 3 * transport_timeout + 2)
            after = waiter.ended - lost_by
            print(f"\nwaiter of a session lost with etcd down (ttl {ttl} s, transport timeout "
                  f"{transport_timeout:g} s): SessionLost {after:.2f} s after the validity deadline")
            assert isinstance(waiter.error, SessionLost), waiter.error
            # the etcd call in flight at the loss (one transport timeout), then at once
            assert after <= transport_timeout + 0.5 + 0.5, after
        finally:
            holder_session.close()
            waiter_session.close()


def test_a_stopping_etcd_is_unavailable_never_a_final_error(own_etcd: EtcdServer) -> None:
    """A member being stopped answers 408 "grpc: the client connection is closing" through its
    gateway: that is etcd going away (try again, elsewhere), not a final answer. Classified as a
    final EtcdError, it made release() give up with the owner key still on a live lease: the lock
    stayed stranded until that session closed (found by the restart test above)."""
    from fairlock.etcd._endpoints import _TryNext
    from fairlock.etcd.gateway import _classify

    refused = _classify("http://x", 408, "grpc: the client connection is closing", 1)
    assert isinstance(refused, _TryNext) and not refused.maybe_applied
    # The gRPC transport reads the same status (CANCELLED) the same way.
    import grpc

    from fairlock.etcd.grpc import _classify as grpc_classify

    refused = grpc_classify("x:2379", grpc.StatusCode.CANCELLED, "grpc: the client connection is closing")
    assert isinstance(refused, _TryNext) and not refused.maybe_applied

    transport = GatewayTransport([own_etcd.endpoint], timeout=1.0)
    stop, errors, calls = threading.Event(), [], [0]

    def hammer(n: int) -> None:
        from fairlock.etcd.transport import Put, Range

        while not stop.is_set():
            try:
                transport.txn([], [Put(b"/faults/stopping/%d" % n, b"x")] if n % 2 else
                              [Range(b"/faults/stopping/1")])
                calls[0] += 1
            except EtcdUnavailable:
                pass
            except EtcdError as exc:  # noqa: PERF203 - the finding
                errors.append(exc)

    threads = [start(lambda n=n: hammer(n)) for n in range(4)]
    try:
        wait_for(lambda: calls[0] >= 50, what="calls going through")
        own_etcd.stop()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        transport.close()
    assert not [t for t in threads if t.is_alive()]
    assert errors == [], errors[:3]


# --- 2. a 3-member cluster: the leader, then quorum, lost ----------------------------------------


def test_cluster_leader_stop_then_quorum_loss_then_back(etcd_cluster: Any, etcd_prefix: bytes) -> None:
    prefix = etcd_prefix.decode().rstrip("/")
    transport_timeout = 3.0  # 1.5 s per endpoint (request_timeout defaults to half with several)
    acquire_timeout = 5.0
    url = etcd_cluster.url(prefix, timeout=transport_timeout, lease_ttl=TTL)
    load = Load(url, "load", ["high", "normal", "high", "normal"], acquire_timeout=acquire_timeout)
    held = Book()
    holder_session = Session(url)
    print(f"\n3-member cluster, ttl {TTL} s, transport timeout {transport_timeout:g} s, "
          f"acquire timeout {acquire_timeout:g} s:")
    try:
        load.book.wait(lambda: len(load.book.records) >= 10, 30, "10 grants before the fault")

        # The leader stops: grants go on through the other endpoints.
        leader = etcd_cluster.leader()
        stop1 = time.monotonic()
        etcd_cluster.stop_member(leader)
        load.book.wait(lambda: len(load.book.grants_since(stop1)) >= 10, 30,
                       "10 grants after the leader stopped")
        with load.book.cond:
            starts = sorted(seconds(r.start) for r in load.book.records)
        before = [s for s in starts if s < stop1]
        window = [before[-1]] + [s for s in starts if s >= stop1][:10]
        gap = max(b - a for a, b in zip(window, window[1:]))
        first = window[1] - stop1
        print(f"  leader m{leader} stopped: first grant {first:.2f} s later; longest gap between "
              f"grants around the stop {gap:.2f} s; errors: "
              f"{describe_failures(load.book.failures_since(stop1))}")
        assert_clean(load.book, "the leader's stop")

        # A holder through the quorum loss: told within the ttl, is_held() False.
        lost: dict[int, int] = {}
        told = threading.Event()

        def on_lost(_lock: EtcdLock, token: int | None, _reason: str) -> None:
            lost.setdefault(token or 0, now_ns())
            told.set()

        release, granted = threading.Event(), threading.Event()
        holder = attempt(TicketedLock("long", holder_session, lanes=LANES, max_bypass=K,
                                      on_lost=on_lost),
                         held, "long-holder", timeout=10, lost=lost, until=release, granted=granted)
        assert granted.wait(15)

        second = etcd_cluster.leader()
        stop2 = time.monotonic()
        etcd_cluster.stop_member(second)
        workers = {t.name for t in load.threads}

        def every_worker_failed() -> bool:
            return {f.who.split("-")[0] for f in load.book.failures_since(stop2)} >= workers

        assert told.wait(TTL + transport_timeout + 2), "the holder was not told within the ttl"
        told_after = seconds(min(lost.values())) - stop2
        assert holder.done.wait(5) and not holder_session.alive()
        load.book.wait(every_worker_failed, slack(acquire_timeout, transport_timeout) + 2,
                       "every load worker to see an error without quorum")
        failures = load.book.failures_since(stop2)
        print(f"  quorum lost (m{second} stopped too): holder told {told_after:.2f} s later; "
              f"errors: {describe_failures(failures)}")
        assert told_after <= TTL + transport_timeout + 1
        for f in failures:
            bound = {"acquire": slack(acquire_timeout, transport_timeout),
                     # a release is read back until etcd answers or the session is lost
                     "release": slack(0.0, transport_timeout),
                     "session": transport_timeout + 1.0}[f.phase]
            assert f.elapsed <= bound, (bound, f)
        assert_outage_errors(failures, "no quorum")
        assert_clean(load.book, "the quorum loss")

        heal = time.monotonic()
        etcd_cluster.heal()
        healthy = time.monotonic()
        load.book.wait(lambda: len(load.book.grants_since(healthy)) >= 5, TTL + 30,
                       "5 grants after quorum returned")
        resumed = seconds(load.book.grants_since(heal)[0].start)
        print(f"  members back: healthy {healthy - heal:.2f} s after start; first grant "
              f"{resumed - healthy:.2f} s after healthy ({resumed - heal:.2f} s after the start)")
    finally:
        load.close(join_within=slack(acquire_timeout, transport_timeout) + 5)
        holder_session.close()
    assert_outage_errors(load.book.failures, "the cluster run")
    report = assert_clean(load.book, "the whole cluster run")
    assert_clean(held, "the whole cluster run (long holder)")
    print(f"  lost sections in the load: {report.lost}")
    assert keys_under(etcd_cluster.endpoints, prefix) == []
    leases = [s.lease_id for s in (*load.book.sessions, holder_session)]
    wait_for(lambda: live_leases(etcd_cluster.members[0], leases) == [], timeout=TTL + 3,
             what="the leases of sessions lost without quorum to expire")


# --- 3. etcd down at acquire ---------------------------------------------------------------------


@pytest.fixture
def hanging_endpoint() -> Iterator[str]:
    """A loopback port whose TCP connects hang (its listener's backlog is full): a member that
    is down without refusing, as a host that drops packets is."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        filler.close()
        listener.close()


def timed(call: Callable[[], object]) -> tuple[float, BaseException | None, object]:
    began = time.monotonic()
    try:
        result = call()
    except BaseException as exc:  # noqa: BLE001 - judged by the test
        return time.monotonic() - began, exc, None
    return time.monotonic() - began, None, result


def test_etcd_down_at_acquire_is_a_clear_error_within_the_configured_timeouts(
        etcd_binary: str, etcd_server: EtcdServer, etcd_prefix: bytes, hanging_endpoint: str) -> None:
    timeout, connect = 1.5, 0.5
    query = f"timeout={timeout}&connect_timeout={connect}&lease_ttl={TTL}"
    print(f"\netcd down at acquire (timeout={timeout:g}, connect_timeout={connect:g}):")

    closed = f"127.0.0.1:{free_port()}"
    took, error, _ = timed(lambda: Session(f"etcd3+http://{closed}/faults?{query}"))
    print(f"  Session on a closed port: {type(error).__name__} after {took:.2f} s")
    assert isinstance(error, EtcdUnavailable) and "connection refused" in str(error), error
    assert closed in str(error)
    assert took <= timeout + connect + 0.5

    took, error, _ = timed(lambda: Session(f"etcd3+http://{hanging_endpoint}/faults?{query}"))
    print(f"  Session on a port whose connects hang: {type(error).__name__} after {took:.2f} s")
    assert isinstance(error, EtcdUnavailable) and "connect timed out" in str(error), error
    assert took <= timeout + connect + 0.5

    with EtcdServer(binary=etcd_binary, name="down") as server:
        url = server.url("/faults", timeout=timeout, connect_timeout=connect, lease_ttl=TTL)
        session = Session(url)
        lock = EtcdLock("down", session)
        server.stop()
        took, error, _ = timed(lambda: lock.acquire(timeout=30))
        print(f"  acquire(timeout=30) with its etcd stopped: {type(error).__name__} after {took:.2f} s")
        assert isinstance(error, EtcdUnavailable), error
        assert took <= timeout + connect + 0.5
        took, error, _ = timed(lambda: Session(url))
        print(f"  Session on a stopped etcd: {type(error).__name__} after {took:.2f} s")
        assert isinstance(error, EtcdUnavailable), error
        assert took <= timeout + connect + 0.5
        session.close()
        assert not lock.is_held()

    prefix = etcd_prefix.decode().rstrip("/")
    live = etcd_server.endpoint.split("://", 1)[1]
    for dead, why in ((closed, "closed port"), (hanging_endpoint, "hanging connect")):
        url = f"etcd3+http://{dead},{live}{prefix}?{query}"
        took, error, session = timed(lambda: Session(url))
        assert error is None, error
        assert isinstance(session, Session)
        try:
            lock = EtcdLock("failover", session)
            took_lock, error, got = timed(lambda: lock.acquire(timeout=10))
            assert error is None and got, error
            lock.release()
            print(f"  {why} listed first, live etcd second: Session in {took:.2f} s, then "
                  f"acquire in {took_lock:.3f} s (the live endpoint is remembered)")
            assert took <= connect + 1.0  # one connect timeout at most for the dead endpoint
            assert took_lock <= 1.0
        finally:
            session.close()
    assert keys_under([etcd_server.endpoint], prefix) == []


# --- loose ends: the error a user sees is the documented one ------------------------------------


class FlakyTransport(GatewayTransport):
    """The real transport, except that the lock's calls (txn, range, watch) fail as if etcd were
    unreachable until ``fail_until`` (monotonic); the lease keepalive always goes through."""

    fail_until = 0.0

    def _fault(self) -> None:
        if time.monotonic() < self.fail_until:
            raise EtcdUnavailable("injected: etcd unreachable from this client")

    def txn(self, *args: Any, **kwargs: Any) -> Any:
        self._fault()
        return super().txn(*args, **kwargs)

    def get_range(self, *args: Any, **kwargs: Any) -> Any:
        self._fault()
        return super().get_range(*args, **kwargs)

    def watch(self, *args: Any, **kwargs: Any) -> Any:
        self._fault()
        return super().watch(*args, **kwargs)


def test_a_grant_made_in_time_is_kept_though_etcd_errors_last_past_the_deadline(
        etcd_server: EtcdServer, etcd_prefix: bytes) -> None:
    """Loose end (a): the waiter was granted before its deadline, but its reads kept failing
    until after it. It used to raise the etcd error (and pass the grant on); like a waiter
    chosen in the instant it timed out, it now owns the lock and acquire() returns True."""
    prefix = etcd_prefix.decode().rstrip("/")
    flaky = FlakyTransport([etcd_server.endpoint], timeout=2.0)
    holder_session = Session(GatewayTransport([etcd_server.endpoint], timeout=2.0), ttl=TTL, prefix=prefix)
    waiter_session = Session(flaky, ttl=TTL, prefix=prefix)
    try:
        holder = EtcdLock("in-time", holder_session)
        assert holder.acquire()
        token = holder.fencing_token
        book = Book()
        timeout = 1.5
        before = time.monotonic()
        waiter = attempt(TicketedLock("in-time", waiter_session), book, "waiter", timeout=timeout)
        wait_for(lambda: etcd_waiters(holder_session.transport, holder_session.prefix, "in-time") == 1)
        flaky.fail_until = before + timeout + 0.5  # failing from now until past its deadline
        holder.release()  # the grant reaches etcd now, well before the waiter's deadline
        assert waiter.done.wait(timeout + TTL + 5)
        assert waiter.error is None and waiter.got is True, waiter.error
        assert book.records[0].fencing_token > token  # type: ignore[operator]
        assert keys_under([etcd_server.endpoint], prefix) == []
    finally:
        holder_session.close()
        waiter_session.close()
        holder_session.transport.close()
        flaky.close()


@pytest.mark.parametrize("contended", [False, True])
def test_acquire_on_a_lease_that_died_unnoticed_raises_session_lost(
        etcd_server: EtcdServer, etcd_prefix: bytes, contended: bool) -> None:
    """Loose end (b): etcd refuses the acquire's write because the lease is gone (revoked behind
    the session's back, before its keepalive noticed): the caller sees SessionLost, as
    documented, not the transport's LeaseNotFound; and the session is lost from then on."""
    prefix = etcd_prefix.decode().rstrip("/")
    transports = [GatewayTransport([etcd_server.endpoint], timeout=2.0) for _ in range(2)]
    other = Session(transports[0], ttl=TTL, prefix=prefix)
    session = Session(transports[1], ttl=TTL, prefix=prefix)
    try:
        other_lock = EtcdLock("unnoticed", other)
        if contended:
            assert other_lock.acquire()
        lock = EtcdLock("unnoticed", session)
        session.transport.lease_revoke(session.lease_id)
        with pytest.raises(SessionLost) as info:
            lock.acquire(timeout=5)
        assert not isinstance(info.value, LeaseNotFound)
        assert session.lost and not lock.is_held()
        with pytest.raises(SessionLost):
            lock.acquire(timeout=5)
        if contended:
            other_lock.release()
        assert keys_under([etcd_server.endpoint], prefix) == []
    finally:
        other.close()
        session.close()
        for t in transports:
            t.close()
