"""The generic lock suite: the same tests for every lock class (see tests/kinds.py).

Also run under real ``eventlet.monkey_patch()`` in a subprocess by tests/test_eventlet.py, where
``threading.Thread`` makes green threads: the same assertions then hold for green threads.
Order is asserted on recorded sequences; each waiter is started only once the previous one is
parked in the queue (``waiting()`` barrier), never on sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from fairlock._primitives import green_mode

from .kinds import KINDS, Handle, LockKind, Waiter, start, wait_for

LANES = ("high", "normal", "low")


@pytest.fixture(params=KINDS, ids=str)
def kind(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The lock kind under test; handles it made are closed afterwards (etcd sessions)."""
    made: list[Handle] = []
    base: LockKind = request.param

    def make(lanes):  # type: ignore[no-untyped-def]
        handle = base.make(lanes)
        made.append(handle)
        return handle

    yield dataclasses.replace(base, make=make)
    for handle in made:
        close = getattr(handle, "close", None)
        if close is not None:
            close()


def queue_waiters(lock: Handle, count: int, order: list[object], lane: str | None = None, tag: object = None,
                  hold: threading.Event | None = None) -> list[threading.Thread]:
    """Start ``count`` waiters one by one, each parked before the next starts."""
    threads = []
    base = lock.waiting()
    for i in range(count):
        label = (tag, i) if tag is not None else i

        def run(label: object = label) -> None:
            assert lock.acquire(lane=lane)
            order.append(label)
            if hold is not None:
                hold.wait()
            lock.release()

        threads.append(start(run))
        wait_for(lambda n=base + i + 1: lock.waiting() == n, what=f"{i + 1} parked waiters")
    return threads


def test_mutual_exclusion(kind: LockKind) -> None:
    lock = kind.make(LANES)
    inside = 0
    max_inside = 0
    counter = [0]

    rounds = 200 // kind.cost

    def work() -> None:
        nonlocal inside, max_inside
        for _ in range(rounds):
            assert lock.acquire()
            inside += 1
            max_inside = max(max_inside, inside)
            value = counter[0]
            if _ % 20 == 0:
                time.sleep(0)  # a switch point inside the critical section
            counter[0] = value + 1
            inside -= 1
            lock.release()

    threads = [start(work) for _ in range(8)]
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert counter[0] == 8 * rounds
    assert max_inside == 1


def test_fifo_handoff(kind: LockKind) -> None:
    lock = kind.make(LANES)
    order: list[object] = []
    assert lock.acquire()
    threads = queue_waiters(lock, 8, order)
    lock.release()
    for t in threads:
        t.join(10)
    assert order == list(range(8))
    assert lock.waiting() == 0


def test_no_barging_after_release(kind: LockKind) -> None:
    """A releaser that immediately tries again does not take the lock from a queued waiter."""
    lock = kind.make(LANES)
    got = threading.Event()
    go = threading.Event()
    assert lock.acquire()

    def waiter() -> None:
        assert lock.acquire()
        got.set()
        go.wait(10)
        lock.release()

    t = start(waiter)
    wait_for(lambda: lock.waiting() == 1, what="waiter parked")
    lock.release()
    assert lock.acquire(blocking=False) is False  # handed to the waiter, not up for grabs
    go.set()
    t.join(10)
    assert got.is_set()
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_timeout_returns_false_and_leaves_queue_consistent(kind: LockKind) -> None:
    lock = kind.make(LANES)
    order: list[object] = []
    assert lock.acquire()
    first = queue_waiters(lock, 1, order, tag="a")
    timed_out = []
    t = start(lambda: timed_out.append(lock.acquire(timeout=0.05)))
    t.join(10)
    assert timed_out == [False]
    assert lock.waiting() == 1  # the timed-out waiter left; the other is still queued
    last = queue_waiters(lock, 1, order, tag="c")
    lock.release()
    for th in first + last:
        th.join(10)
    assert order == [("a", 0), ("c", 0)]
    assert lock.acquire(blocking=False)
    lock.release()


def test_non_blocking(kind: LockKind) -> None:
    lock = kind.make(LANES)
    assert lock.acquire(blocking=False) is True
    result = []
    t = start(lambda: result.append(lock.acquire(blocking=False)))
    t.join(10)
    assert result == [False]
    assert lock.waiting() == 0
    lock.release()


def test_zero_timeout_on_busy_lock(kind: LockKind) -> None:
    lock = kind.make(LANES)
    assert lock.acquire()
    result = []
    t = start(lambda: result.append(lock.acquire(timeout=0)))
    t.join(10)
    assert result == [False] and lock.waiting() == 0
    lock.release()


def test_high_lane_goes_first_then_bypass_is_bounded(kind: LockKind) -> None:
    if not kind.has_lanes:
        pytest.skip("no lanes")
    lock = kind.make(LANES)
    order: list[object] = []
    assert lock.acquire()
    threads = queue_waiters(lock, 2, order, lane="low", tag="low")
    threads += queue_waiters(lock, 6, order, lane="high", tag="high")
    lock.release()
    for t in threads:
        t.join(10)
    # K = 4: both low waiters are overtaken by 4 highs, then the oldest low goes; the second low
    # has been overtaken 4 times too, so it goes next, before the remaining highs.
    assert order == [("high", 0), ("high", 1), ("high", 2), ("high", 3), ("low", 0), ("low", 1),
                     ("high", 4), ("high", 5)]


def test_release_without_holding_raises(kind: LockKind) -> None:
    lock = kind.make(LANES)
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire(blocking=False)
    lock.release()


def test_release_by_non_owner_raises_and_lock_stays_held(kind: LockKind) -> None:
    lock = kind.make(LANES)
    assert lock.acquire()
    errors = []

    def intruder() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            errors.append(exc)

    start(intruder).join(10)
    assert len(errors) == 1
    other = []
    start(lambda: other.append(lock.acquire(blocking=False))).join(10)
    assert other == [False]
    lock.release()


def test_the_lock_satisfies_the_fair_lock_protocol(kind: LockKind) -> None:
    import fairlock

    handle = kind.make(LANES)
    if not hasattr(handle, "fair_lock"):
        pytest.skip("a foreign protocol (tooz's, fasteners' reader/writer lock)")
    lock = handle.fair_lock()
    assert isinstance(lock, fairlock.FairLock)
    assert not lock.owned() and not lock.locked()
    assert lock.acquire(True, None) is True  # None: no limit, for every kind
    assert lock.owned() and lock.locked()
    seen: list[bool] = []
    start(lambda: seen.append(lock.owned())).join(10)
    assert seen == [False]  # owned() is the calling thread's
    stats = lock.statistics()
    assert isinstance(stats, fairlock.FairLockStatistics)
    assert tuple(stats.lanes) == LANES and stats.grants >= 1 and stats.waiting == 0
    assert all(isinstance(lane, fairlock.LaneStatistics) for lane in stats.lanes.values())
    lock.release()
    assert not lock.owned() and not lock.locked()
    with lock:
        assert lock.owned()
    assert not lock.owned()


#: Cancelling a waiter from outside needs green threads: in native threads the only way out of a
#: wait is a timeout (tests above). These run in the eventlet child of tests/test_eventlet.py.
green_only = pytest.mark.skipif(not green_mode(), reason="cancels green threads; runs in the eventlet child")


@green_only
def test_cancel_while_queued_leaves_the_queue_consistent(kind: LockKind) -> None:
    lock = kind.make(LANES)
    order: list[object] = []
    assert lock.acquire()
    threads = queue_waiters(lock, 1, order, tag="a")
    victim = Waiter(lock, lambda: order.append("victim"))
    wait_for(lambda: lock.waiting() == 2, what="the victim parked")
    threads += queue_waiters(lock, 1, order, tag="c")
    victim.cancel()
    assert victim.cancelled.wait(10)
    # Invariant: leaving the queue changes nobody else's place in it.
    wait_for(lambda: lock.waiting() == 2, what="the victim gone from the queue")
    lock.release()
    for t in [*threads, victim.thread]:
        t.join(20)
    assert order == [("a", 0), ("c", 0)]
    assert not victim.acquired.is_set()
    assert lock.waiting() == 0
    assert lock.acquire(blocking=False)
    lock.release()


@green_only
def test_cancel_at_the_instant_of_grant_passes_the_lock_on(kind: LockKind) -> None:
    """The classic bug between "chosen" and "running": the waiter the release chose is cancelled
    before it runs. Whoever is next must still get the lock; nothing may stay held."""
    lock = kind.make(LANES)
    order: list[object] = []
    hold = threading.Event()
    assert lock.acquire()
    victim = Waiter(lock, lambda: (order.append("victim"), hold.wait(10)))
    wait_for(lambda: lock.waiting() == 1, what="the victim parked")
    threads = queue_waiters(lock, 1, order, tag="c")
    lock.release()  # chooses the victim...
    victim.cancel()  # ...which is cancelled before it runs (or, over a network, soon after)
    hold.set()
    for t in [*threads, victim.thread]:
        t.join(20)
    assert victim.cancelled.is_set() != victim.acquired.is_set()
    if kind.cost == 1:
        # An in-process release hands over without yielding: the cancel lands between chosen and
        # running, every time.
        assert victim.cancelled.is_set()
    assert order == ([("c", 0)] if victim.cancelled.is_set() else ["victim", ("c", 0)])
    assert lock.waiting() == 0
    assert lock.acquire(blocking=False)
    lock.release()
