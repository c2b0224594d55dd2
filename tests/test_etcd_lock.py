"""The distributed lock against a real etcd on loopback (the generic suite also runs on it, through
the "etcd" and "etcd-two-level" kinds in tests/kinds.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fairlock
from fairlock.etcd import EtcdLock, LockLost, Session, SessionLost
from fairlock.etcd.gateway import GatewayTransport
from fairlock.etcd.lock import lock_keys
from fairlock.etcd.transport import prefix_end

from .kinds import start, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Sessions:
    """Sessions made by one test (each one a separate "process" to etcd), closed afterwards."""

    def __init__(self, server: Any, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self.made: list[Session] = []

    def new(self, ttl: int = 10, **kwargs: Any) -> Session:
        session = Session(GatewayTransport([self.server.endpoint], timeout=10.0), ttl=ttl,
                          prefix=self.prefix, **kwargs)
        self.made.append(session)
        return session

    def keys(self) -> list[bytes]:
        probe = GatewayTransport([self.server.endpoint], timeout=10.0)
        try:
            start_key = self.prefix.encode()
            _, kvs = probe.get_range(start_key, prefix_end(start_key))
            return [kv.key for kv in kvs]
        finally:
            probe.close()

    def revision(self) -> int:
        probe = GatewayTransport([self.server.endpoint], timeout=10.0)
        try:
            revision, _ = probe.get_range(b"/")
            return revision
        finally:
            probe.close()

    def close(self) -> None:
        for session in self.made:
            transport = session.transport
            session.close()
            transport.close()


@pytest.fixture
def sessions(etcd_server: Any, etcd_prefix: bytes) -> Iterator[Sessions]:
    made = Sessions(etcd_server, etcd_prefix.decode().rstrip("/"))
    yield made
    made.close()


def etcd_waiters(lock: EtcdLock) -> int:
    _, wprefix, wend = lock_keys(lock.session.prefix, lock.name)
    _, kvs = lock.session.transport.get_range(wprefix, wend)
    return len(kvs)


def test_uncontended_is_one_write_to_acquire_and_one_to_release(sessions: Sessions) -> None:
    lock = EtcdLock("one-write", sessions.new())
    before = sessions.revision()
    assert lock.acquire()
    assert sessions.revision() == before + 1
    assert lock.fencing_token == before + 1 and lock.is_held()
    lock.release()
    assert sessions.revision() == before + 2
    assert sessions.keys() == []


def test_non_blocking_on_busy_lock_writes_nothing(sessions: Sessions) -> None:
    a = EtcdLock("nb", sessions.new())
    b = EtcdLock("nb", sessions.new())
    assert a.acquire()
    before = sessions.revision()
    assert b.acquire(blocking=False) is False
    assert sessions.revision() == before
    a.release()


def test_fencing_tokens_strictly_increase_across_processes(sessions: Sessions) -> None:
    locks = [EtcdLock("fence", sessions.new()) for _ in range(4)]
    tokens: list[int] = []
    guard = threading.Lock()

    def worker(lock: EtcdLock) -> None:
        for _ in range(5):
            with lock:
                with guard:
                    tokens.append(lock.fencing_token)  # type: ignore[arg-type]

    threads = [start(lambda lock=lock: worker(lock)) for lock in locks]
    for t in threads:
        t.join(60)
    assert len(tokens) == 20
    assert tokens == sorted(tokens) and len(set(tokens)) == 20
    assert sessions.keys() == []


def test_one_watch_event_per_release_with_32_waiters(sessions: Sessions) -> None:
    holder = EtcdLock("herd", sessions.new())
    assert holder.acquire()
    waiters = [EtcdLock("herd", sessions.new()) for _ in range(32)]
    order: list[int] = []
    threads = []
    for i, lock in enumerate(waiters):
        threads.append(start(lambda i=i, lock=lock: (lock.acquire(), order.append(i), lock.release())))
        wait_for(lambda n=i + 1: etcd_waiters(holder) == n, what=f"{i + 1} etcd waiters")
    holder.release()
    for t in threads:
        t.join(120)
    assert order == list(range(32))
    events = sum(lock.statistics().watch_events for lock in waiters)
    # Each release wakes only the chosen waiter (its own key deleted); nobody else hears of it.
    assert events <= 32, f"{events} watch events for 32 releases"
    assert sessions.keys() == []


def test_high_lane_goes_ahead_across_processes_bounded_by_k(sessions: Sessions) -> None:
    holder = EtcdLock("lanes", sessions.new(), max_bypass=2)
    assert holder.acquire()
    order: list[str] = []
    threads = []
    plan = [("low-0", "low"), ("low-1", "low"), ("high-0", "high"), ("high-1", "high"), ("high-2", "high")]
    for i, (tag, lane) in enumerate(plan):
        lock = EtcdLock("lanes", sessions.new(), max_bypass=2)
        threads.append(start(lambda tag=tag, lane=lane, lock=lock: (
            lock.acquire(lane=lane), order.append(tag), lock.release())))
        wait_for(lambda n=i + 1: etcd_waiters(holder) == n)
    holder.release()
    for t in threads:
        t.join(60)
    assert order == ["high-0", "high-1", "low-0", "low-1", "high-2"]


def test_timeouts_and_cancels_leave_no_keys(sessions: Sessions) -> None:
    holder = EtcdLock("cancel", sessions.new())
    assert holder.acquire()
    results = []

    def waiter(lock: EtcdLock, timeout: float) -> None:
        got = lock.acquire(timeout=timeout)
        results.append(got)
        if got:
            lock.release()

    locks = [EtcdLock("cancel", sessions.new()) for _ in range(6)]
    threads = [start(lambda lock=lock, i=i: waiter(lock, 0.3 if i % 2 else 30)) for i, lock in enumerate(locks)]
    wait_for(lambda: len(results) >= 3, what="the short timeouts")
    assert results == [False] * 3
    holder.release()
    for t in threads:
        t.join(60)
    assert sorted(results) == [False] * 3 + [True] * 3
    assert sessions.keys() == []


def test_statistics_have_the_local_locks_shape_with_int_counts(sessions: Sessions) -> None:
    holder = EtcdLock("stats", sessions.new(), lanes=("high", "low"), default_lane="low")
    waiter = EtcdLock("stats", sessions.new(), lanes=("high", "low"), default_lane="low")
    timed_out = EtcdLock("stats", sessions.new(), lanes=("high", "low"), default_lane="low")
    assert holder.acquire()
    assert timed_out.acquire(timeout=0.05) is False
    done = start(lambda: (waiter.acquire(lane="high"), waiter.release()))
    wait_for(lambda: etcd_waiters(holder) == 1, what="the waiter queued in etcd")
    holder.release()
    done.join(30)
    stats = waiter.statistics()
    assert dataclasses.is_dataclass(stats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.name = "x"  # type: ignore[misc]
    assert set(stats.lanes) == {"high", "low"}
    high = stats.lanes["high"]
    assert isinstance(high, fairlock.LaneStatistics)
    assert (stats.grants, high.queued_grants, high.wait_histogram.count, high.hold_histogram.count) == (1, 1, 1, 1)
    assert isinstance(high.queued_grants, int) and high.wait_max > 0
    assert stats.lanes["low"].queued_grants == 0
    assert timed_out.statistics().lanes["low"].timeouts == 1 and timed_out.statistics().timeouts == 1
    own = holder.statistics()
    assert (own.grants, own.uncontended, own.handoffs_made) == (1, 1, 1)
    assert own.lanes["low"].queued_grants == 0 and own.lanes["low"].hold_histogram.count == 1


def test_etcd_lock_counts_outlive_the_lock_object(sessions: Sessions) -> None:
    import gc

    from fairlock import history

    name = f"history-{os.getpid()}-{time.monotonic_ns()}"
    lock = EtcdLock(name, sessions.new())
    for _ in range(2):
        with lock:
            pass
    live = history.ETCD.statistics()[name]
    assert (live.kind, live.grants, live.live) == ("etcd", 2, 1)
    assert live.lanes["normal"].hold_histogram.count == 2
    del lock
    gc.collect()
    gone = history.ETCD.statistics()[name]
    assert (gone.grants, gone.live, gone.locks) == (2, 0, 1)


def test_holder_told_when_session_lost_and_next_waiter_proceeds(sessions: Sessions) -> None:
    lost = []
    told = threading.Event()
    holder_session = sessions.new(ttl=2)
    holder = EtcdLock("lost", holder_session, on_lost=lambda lock, token, reason: (lost.append(token), told.set()))
    assert holder.acquire()
    token = holder.fencing_token
    other = EtcdLock("lost", sessions.new())
    got = threading.Event()
    done = threading.Event()
    tokens = []
    t = start(lambda: (other.acquire(), tokens.append(other.fencing_token), got.set(), done.wait(10),
                       other.release()))
    wait_for(lambda: etcd_waiters(holder) == 1)
    # The lease vanishes (as when etcd expires it): revoke it behind the session's back.
    holder_session.transport.lease_revoke(holder_session.lease_id)
    assert told.wait(10), "the holder was not told"
    assert lost == [token] and not holder.is_held() and holder.fencing_token is None
    assert got.wait(10)
    assert tokens[0] > token
    with pytest.raises(LockLost):
        holder.release()
    done.set()
    t.join(10)
    with pytest.raises(SessionLost):
        holder.acquire()


@pytest.mark.slow
def test_holder_past_its_validity_deadline_is_told_before_etcd_expires_the_lease(sessions: Sessions) -> None:
    """A paused process wakes after its lease may have expired: the first is_held() says so, with
    no I/O, the notice runs once, and the session revokes its lease so the next waiter proceeds."""
    now = [1000.0]
    told = []
    session = sessions.new(ttl=10, clock=lambda: now[0])
    holder = EtcdLock("paused", session, on_lost=lambda lock, token, reason: told.append((token, reason)))
    assert holder.acquire()
    token = holder.fencing_token
    other = EtcdLock("paused", sessions.new())
    got, done, tokens = threading.Event(), threading.Event(), []
    t = start(lambda: (other.acquire(), tokens.append(other.fencing_token), got.set(), done.wait(10),
                       other.release()))
    wait_for(lambda: etcd_waiters(holder) == 1)
    assert session.valid_for() <= 10 and holder.is_held()
    now[0] += 10.0  # the local clock passes the deadline; etcd's lease would still live ~10 s
    assert not holder.is_held() and holder.fencing_token is None
    assert session.wait_notices(10)
    assert [t for t, _ in told] == [token] and "ttl" in told[0][1]
    assert not holder.is_held() and len(told) == 1, "told once"
    with pytest.raises(SessionLost):
        session.check()
    # Well before etcd would expire the lease (10 s): the lost session revoked it itself.
    assert got.wait(5), "the next waiter still waits: the lost session kept its lease"
    assert tokens[0] > token
    with pytest.raises(LockLost):
        holder.release()
    done.set()
    t.join(10)
    assert not t.is_alive()


def test_waiter_whose_key_vanishes_stops_at_once(sessions: Sessions) -> None:
    holder = EtcdLock("vanish", sessions.new())
    assert holder.acquire()
    waiter = EtcdLock("vanish", sessions.new())
    errors = []
    t = start(lambda: _capture(errors, lambda: waiter.acquire(timeout=60)))
    wait_for(lambda: etcd_waiters(holder) == 1)
    _, wprefix, wend = lock_keys(holder.session.prefix, "vanish")
    from fairlock.etcd.transport import Delete

    holder.session.transport.txn([], [Delete(wprefix, wend)])
    started = time.monotonic()
    t.join(30)
    assert errors and isinstance(errors[0], LockLost), errors
    assert time.monotonic() - started < 10
    holder.release()


def _capture(errors: list[BaseException], call: Any) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
        errors.append(exc)


def test_two_levels_one_etcd_waiter_per_process_and_lane_follows_local_head(sessions: Sessions) -> None:
    other = EtcdLock("two-level", sessions.new())
    assert other.acquire()
    mine = EtcdLock("two-level", sessions.new())
    order: list[str] = []
    threads = [start(lambda: (mine.acquire(lane="low"), order.append("local-low"), mine.release()))]
    wait_for(lambda: etcd_waiters(other) == 1)
    rival = EtcdLock("two-level", sessions.new())
    threads.append(start(lambda: (rival.acquire(), order.append("rival-normal"), rival.release())))
    wait_for(lambda: etcd_waiters(other) == 2)
    # A high-lane thread queues locally behind our low etcd waiter: our etcd waiter is raised.
    threads.append(start(lambda: (mine.acquire(lane="high"), order.append("local-high"), mine.release())))
    wait_for(lambda: mine._local.statistics().waiting == 1)
    _, wprefix, wend = lock_keys(other.session.prefix, "two-level")

    def lanes_in_etcd() -> list[str]:
        from fairlock.etcd.lock import decode_value

        _, kvs = other.session.transport.get_range(wprefix, wend)
        return sorted(decode_value(kv)["lane"] for kv in kvs)

    wait_for(lambda: lanes_in_etcd() == ["high", "normal"], what="the etcd waiter's lane raised")
    assert etcd_waiters(other) == 2  # still one etcd waiter for our process
    other.release()
    for t in threads:
        t.join(60)
    # Our process goes first (raised lane); locally the low thread was first in line.
    assert order[0] == "local-low" and order.index("rival-normal") > 0
    assert sessions.keys() == []


def test_bad_input(sessions: Sessions, etcd_server: Any) -> None:
    session = sessions.new()
    with pytest.raises(fairlock.InvalidArgumentError):
        EtcdLock("", session)
    with pytest.raises(fairlock.ArgumentTypeError):
        EtcdLock(None, session)  # type: ignore[arg-type]
    with pytest.raises(fairlock.ArgumentTypeError):
        EtcdLock("x", "not a session")  # type: ignore[arg-type]
    lock = EtcdLock("x/with/slashes\0and nul", session)
    with pytest.raises(fairlock.UnknownLaneError):
        lock.acquire(lane="nope")
    with pytest.raises(fairlock.InvalidArgumentError):
        lock.acquire(timeout=float("nan"))
    with pytest.raises(fairlock.NotHeldError):
        lock.release()
    assert lock.acquire(timeout=5)
    assert lock.is_held()
    lock.release()
    with pytest.raises(fairlock.InvalidArgumentError):
        Session(GatewayTransport([etcd_server.endpoint]), ttl=1)
    session.close()
    with pytest.raises(SessionLost):
        lock.acquire()
    with pytest.raises(SessionLost):
        EtcdLock("y", session)
    assert sessions.keys() == []


def test_unreachable_etcd_is_a_clear_error_within_the_timeout() -> None:
    from fairlock.etcd import EtcdUnavailable
    from fairlock.testing import free_port

    started = time.monotonic()
    with pytest.raises(EtcdUnavailable):
        Session(GatewayTransport([f"http://127.0.0.1:{free_port()}"], timeout=1.0))
    assert time.monotonic() - started < 5


HOLDER = textwrap.dedent("""
    import sys, time
    from fairlock.etcd import EtcdLock, Session
    from fairlock.etcd.gateway import GatewayTransport
    session = Session(GatewayTransport([sys.argv[1]], timeout=5.0), ttl=2, prefix=sys.argv[2])
    lock = EtcdLock("crash", session)
    lock.acquire()
    print("held", lock.fencing_token, flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_crashed_holder_is_freed_within_ttl(sessions: Sessions, etcd_server: Any) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, etcd_server.endpoint, sessions.prefix],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("held"), line
        crashed_token = int(line.split()[1])
        waiter = EtcdLock("crash", sessions.new())
        got = threading.Event()
        tokens = []
        t = start(lambda: (waiter.acquire(timeout=30), tokens.append(waiter.fencing_token), got.set(),
                           waiter.release()))
        wait_for(lambda: etcd_waiters(waiter) == 1)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert got.wait(30)
        delay = time.monotonic() - killed
        assert delay < 2 + 1.5, f"next waiter took {delay:.2f}s after the holder's SIGKILL (ttl 2s)"
        assert tokens[0] > crashed_token
        t.join(10)
    finally:
        proc.kill()
        proc.wait()
    assert sessions.keys() == []


def test_close_racing_a_keepalive_is_not_a_loss(sessions: Sessions) -> None:
    """close() revokes the lease; a keepalive in flight then finds it gone: not a lost session."""
    lost: list[str] = []
    session = sessions.new(on_lost=lambda s, reason: lost.append(reason))
    real = session.transport.lease_keepalive
    entered, proceed = threading.Event(), threading.Event()

    def slow_keepalive(lease_id: int) -> int:
        entered.set()
        proceed.wait(10)
        return real(lease_id)

    session.transport.lease_keepalive = slow_keepalive  # type: ignore[method-assign]
    caller = start(lambda: _capture([], session.keepalive_once))
    assert entered.wait(10)
    closer = start(session.close)
    wait_for(lambda: session.closed, what="close() to begin")
    proceed.set()
    caller.join(10)
    closer.join(30)
    assert lost == [] and not session.lost


def test_holder_is_told_once_even_if_the_session_is_closed_after_the_loss(sessions: Sessions) -> None:
    told: list[str] = []
    session = sessions.new()
    lock = EtcdLock("told-once", session, on_lost=lambda lock, token, reason: told.append(reason))
    assert lock.acquire()
    session._mark_lost("test: lease gone")
    session.close()
    assert told == ["test: lease gone"]
    with pytest.raises(LockLost):
        lock.release()


def test_confirm_held_and_break_through_the_lock_api(sessions: Sessions) -> None:
    """The owner check and break_ the tooz driver uses are the lock's (no raw keys outside it)."""
    holder = EtcdLock("broken-into", sessions.new())
    other = EtcdLock("broken-into", sessions.new())
    assert not holder.confirm_held() and EtcdLock.confirm_all([]) == []
    assert holder.acquire()
    assert holder.confirm_held() and EtcdLock.confirm_all([holder]) == [True]
    assert not other.confirm_held()
    assert other.break_() is True
    assert other.break_() is False  # nothing left to break
    assert not holder.confirm_held()
    with pytest.raises(LockLost):
        holder.release()
    with pytest.raises(fairlock.InvalidArgumentError):
        EtcdLock.confirm_all([holder, other])


class _SlowHandler(logging.Handler):
    """Widens the gap between a session being declared lost and its holders being told."""

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.5)


def test_on_lost_is_never_skipped_by_a_release_right_after_is_held(sessions: Sessions) -> None:
    """Issue 9 bug 1: the session was marked lost, logged (slowly), and only then told its locks;
    a holder that released in that gap cleared its token, so the notice found nothing to tell and
    release() returned normally. Now the lock is marked lost before anything is logged, release()
    raises LockLost, and on_lost is called once."""
    now = [1000.0]
    told: list[int | None] = []
    session = sessions.new(ttl=10, clock=lambda: now[0])
    holder = EtcdLock("gap", session, on_lost=lambda lock, token, reason: told.append(token))
    handler = _SlowHandler()
    logging.getLogger("fairlock.etcd").addHandler(handler)
    try:
        assert holder.acquire()
        token = holder.fencing_token
        now[0] += 11.0
        declarer = start(session.alive)
        assert not holder.is_held()
        with pytest.raises(LockLost):
            holder.release()
        declarer.join(10)
        assert session.wait_notices(10)
    finally:
        logging.getLogger("fairlock.etcd").removeHandler(handler)
    assert told == [token]


def test_on_lost_runs_on_the_sessions_notice_thread_not_in_is_held(sessions: Sessions) -> None:
    """Issue 9 bug 2: on_lost ran inside is_held(), in the caller's thread; a callback that takes
    an application lock the caller holds deadlocked. It runs on the session's notice thread."""
    now = [1000.0]
    app_lock = threading.Lock()
    ran_on: list[str] = []
    done = threading.Event()

    def on_lost(lock: EtcdLock, token: int | None, reason: str) -> None:
        with app_lock:  # held by the thread calling is_held() below
            ran_on.append(threading.current_thread().name)
        done.set()

    session = sessions.new(ttl=10, clock=lambda: now[0])
    holder = EtcdLock("callback-thread", session, on_lost=on_lost)
    assert holder.acquire()
    with app_lock:
        now[0] += 11.0
        assert not holder.is_held()  # finds the loss; must not run the callback here
        assert ran_on == []
    assert done.wait(10)
    assert ran_on == [f"fairlock-notices-{session.lease_id:x}"]
    with pytest.raises(LockLost):
        holder.release()


def test_statistics_keep_no_per_acquisition_data(sessions: Sessions) -> None:
    """Issue 9 bug 3: EtcdLock kept every wait in a list (one float per acquisition, forever), and
    statistics() slowed with it. Nothing the lock keeps may grow with the number of grants."""
    lock = EtcdLock("bounded", sessions.new())

    def sizes() -> dict[str, int]:
        return {name: len(value) for name, value in vars(lock).items()
                if isinstance(value, (list, dict, set, tuple)) and name != "_doubts"}

    for _ in range(5):
        with lock:
            pass
    before = sizes()
    for _ in range(60):
        with lock:
            pass
    assert sizes() == before
    assert lock.statistics().grants == 65


def test_public_methods_document_the_timeout_convention() -> None:
    """Issue 9 bug 5: acquire, release and statistics had no docstrings; -1/None = forever was
    written only in fairlock/local.py."""
    for method in (EtcdLock.acquire, EtcdLock.release, EtcdLock.statistics, EtcdLock.confirm_held,
                   EtcdLock.break_):
        assert method.__doc__ and len(method.__doc__.split()) > 8, method
    assert "None or -1" in (EtcdLock.acquire.__doc__ or "")  # one convention: None, -1 as threading
