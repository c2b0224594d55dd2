"""Green-thread-only tests; they run inside the monkey-patched child of tests/test_eventlet.py."""

from __future__ import annotations

import os
import sys
import threading

import pytest

import fairlock
from fairlock import _primitives

from .kinds import wait_for

pytestmark = pytest.mark.skipif(
    os.environ.get("FAIRLOCK_EVENTLET_CHILD") != "1", reason="runs under eventlet.monkey_patch() only"
)


@pytest.fixture
def eventlet():  # type: ignore[no-untyped-def]
    return sys.modules["eventlet"]


def test_green_mode_detected_without_importing() -> None:
    assert _primitives.green_mode() is True


def test_spawn_n_greenlets_are_served_fifo(eventlet) -> None:  # type: ignore[no-untyped-def]
    lock = fairlock.Lock("spawn_n")
    order = []
    assert lock.acquire()
    for i in range(20):
        eventlet.spawn_n(lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        wait_for(lambda n=i + 1: lock.statistics().waiting == n)
    lock.release()
    wait_for(lambda: len(order) == 20)
    assert order == list(range(20))


def test_context_lane_is_per_greenlet(eventlet) -> None:  # type: ignore[no-untyped-def]
    lock = fairlock.Lock("ctx")
    order = []
    seen = {}
    assert lock.acquire()

    def waiter(tag: str, lane: str | None) -> None:
        if lane is None:
            seen[tag] = fairlock.current_lane()
            lock.acquire()
        else:
            with fairlock.lane(lane):
                seen[tag] = fairlock.current_lane()
                eventlet.sleep(0)  # let the other greenlet run inside our lane block
                lock.acquire()
        order.append(tag)
        lock.release()

    eventlet.spawn_n(waiter, "normal-1", None)
    wait_for(lambda: lock.statistics().waiting == 1)
    eventlet.spawn_n(waiter, "migration", "high")
    eventlet.spawn_n(waiter, "normal-2", None)
    wait_for(lambda: lock.statistics().waiting == 3)
    lock.release()
    wait_for(lambda: len(order) == 3)
    assert seen == {"normal-1": None, "migration": "high", "normal-2": None}
    assert order == ["migration", "normal-1", "normal-2"]


def test_kill_while_queued_leaves_queue(eventlet) -> None:  # type: ignore[no-untyped-def]
    lock = fairlock.Lock("kill-queued")
    assert lock.acquire()
    doomed = eventlet.spawn(lambda: lock.acquire())
    wait_for(lambda: lock.statistics().waiting == 1)
    doomed.kill()
    assert lock.statistics().waiting == 0
    assert lock.statistics().lanes["normal"].cancels == 1
    lock.release()
    assert lock.acquire(blocking=False)
    lock.release()


def test_kill_after_chosen_before_running_passes_lock_on(eventlet) -> None:  # type: ignore[no-untyped-def]
    """The classic race between "chosen" and "running", made deterministic by green threads."""
    lock = fairlock.Lock("kill-chosen")
    got = []
    assert lock.acquire()
    doomed = eventlet.spawn(lambda: (lock.acquire(), got.append("doomed"), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 1)
    heir = eventlet.spawn(lambda: (lock.acquire(), got.append("heir"), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 2)
    lock.release()  # doomed is now the owner but has not run (we have not yielded)
    stats = lock.statistics()
    assert stats.handoffs == 1 and stats.owner != threading.get_ident() and stats.waiting == 1
    doomed.kill()  # GreenletExit inside its wait: it must hand the lock on
    heir.wait()
    assert got == ["heir"]
    assert not lock.locked()


def test_lock_created_before_monkey_patch_parks_green_threads(eventlet) -> None:  # type: ignore[no-untyped-def]
    early = sys.modules["tests.eventlet_early"].EARLY_LOCK  # made before monkey_patch()
    order = []
    assert early.acquire()
    for i in range(5):
        eventlet.spawn_n(lambda i=i: (early.acquire(), order.append(i), early.release()))
        wait_for(lambda n=i + 1: early.statistics().waiting == n)
    early.release()
    wait_for(lambda: len(order) == 5)
    assert order == list(range(5))


class _Interrupt(BaseException):
    """Stands for KeyboardInterrupt inside a green thread (a real one would reach the hub)."""


@pytest.mark.parametrize("how", ["kill", "eventlet.Timeout", "KeyboardInterrupt"])
def test_a_coalesce_follower_killed_while_waiting_is_never_promoted(eventlet, how: str) -> None:  # type: ignore[no-untyped-def]
    """Issue 10, fault 1: a dead follower promoted by a leaving representative left the run
    pending with nobody queued, and every later call with that key joined it and hung."""
    from fairlock.coalesce import Coalescer

    lock = fairlock.Lock(f"coalesce-dead-follower-{how}")
    co = Coalescer()
    ran = []

    def fn() -> str:
        ran.append(1)
        return "refreshed"

    def call(timeout: float | None = None, die_after: float | None = None) -> object:
        try:
            if die_after is not None:
                with eventlet.Timeout(die_after):
                    return co.call(lock, "instance-1", fn, timeout=timeout)
            return co.call(lock, "instance-1", fn, timeout=timeout)
        except (eventlet.Timeout, _Interrupt, KeyboardInterrupt, fairlock.AcquireTimeout) as exc:
            return type(exc).__name__

    assert lock.acquire()
    representative = eventlet.spawn(call, 0.2)
    wait_for(lambda: lock.statistics().waiting == 1)
    doomed = eventlet.spawn(call, None, 0.05 if how == "eventlet.Timeout" else None)
    survivor = eventlet.spawn(call)
    wait_for(lambda: co.statistics().following == 2)
    if how == "kill":
        doomed.kill()
        assert doomed.dead
    elif how == "KeyboardInterrupt":
        doomed.kill(KeyboardInterrupt)
        assert doomed.wait() == "KeyboardInterrupt"
    else:
        assert doomed.wait() == "Timeout"
    assert co.statistics().following == 1
    assert representative.wait() == "AcquireTimeout"  # leaves: the survivor is promoted
    wait_for(lambda: lock.statistics().waiting == 1)  # ... and queued on the lock
    lock.release()
    assert survivor.wait() == "refreshed"
    assert call(timeout=5) == "refreshed"  # a later call is served, not joined to a dead run
    stats = co.statistics()
    assert (stats.pending, stats.following, len(ran)) == (0, 0, 2)
    assert not lock.locked()


def test_a_coalesce_follower_killed_right_after_its_promotion_passes_the_duty_on(eventlet) -> None:  # type: ignore[no-untyped-def]
    from fairlock.coalesce import Coalescer

    lock = fairlock.Lock("coalesce-killed-heir")
    co = Coalescer()

    def fn() -> str:
        return "v"

    assert lock.acquire()
    representative = eventlet.spawn(co.call, lock, "k", fn)
    wait_for(lambda: lock.statistics().waiting == 1)
    heir = eventlet.spawn(co.call, lock, "k", fn)
    last = eventlet.spawn(co.call, lock, "k", fn)
    wait_for(lambda: co.statistics().following == 2)
    representative.kill()  # promotes the heir: its event is set, it has not run yet
    heir.kill()  # dies before it queues: the duty passes to the last follower
    wait_for(lambda: lock.statistics().waiting == 1)
    lock.release()
    assert last.wait() == "v"
    assert co.statistics().pending == 0 and not lock.locked()
