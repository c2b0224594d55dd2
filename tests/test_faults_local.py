"""The in-process lock under faults (issue 10, "Faults"): exceptions between queuing and parking,
asynchronous exceptions on the uncontended path, fork(), and threads that exit holding a lock.

Each test fails on the lock as it was before these were fixed (the old one: an orphan ticket made
the next release raise KeyError; an exception right after the fast path left the lock held with
no owner; a forked child could never take a lock another thread held at the fork; a new thread
that got a dead owner's ident was told DeadlockError and could release the lock).
"""

from __future__ import annotations

import ctypes
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import fairlock
from fairlock import local
from fairlock._core import FairQueue

from .kinds import start, wait_for


class Injected(BaseException):
    """Stands for KeyboardInterrupt or a greenlet kill: a BaseException nobody catches."""


# -- 2. an exception between queuing and parking ---------------------------------------------------


class _QueueFailingOnce(FairQueue):
    """The core's queue, except that the first waiter's request raises after it was queued: the
    exception lands between "the core has the ticket" and "the adapter knows the waiter"."""

    armed = True

    def request(self, lane: str | None = None, ticket: int | None = None) -> int:
        got = super().request(lane, ticket)
        if lane is not None and _QueueFailingOnce.armed:  # not the holder's placeholder
            _QueueFailingOnce.armed = False
            raise Injected("right after queuing")
        return got


def test_an_exception_between_queuing_and_registering_leaves_no_orphan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "FairQueue", _QueueFailingOnce)
    _QueueFailingOnce.armed = True
    lock = fairlock.Lock("orphan")
    assert lock.acquire()
    failed: list[BaseException] = []

    def doomed() -> None:
        try:
            lock.acquire()
        except Injected as exc:
            failed.append(exc)

    start(doomed).join(10)
    assert failed, "the injected exception did not reach the caller"
    got = []
    heir = start(lambda: (lock.acquire(), got.append("heir"), lock.release()))
    wait_for(lambda: len(lock.statistics().queue) == 1)
    lock.release()  # an unrelated thread's release: raised KeyError on the orphan before
    heir.join(10)
    assert got == ["heir"]
    assert not lock.locked() and lock.statistics().waiting == 0
    assert lock.acquire(blocking=False)
    lock.release()


def test_a_failing_on_queued_callback_leaves_the_queue_as_it_was() -> None:
    def on_queued(lane: str) -> None:
        raise Injected("between queuing and parking")

    lock = fairlock.Lock("on-queued-fails", on_queued=on_queued)
    assert lock.acquire()
    failed: list[BaseException] = []
    waiter = start(lambda: _catch(lock.acquire, failed))
    waiter.join(10)
    assert [type(e) for e in failed] == [Injected]
    assert lock.statistics().waiting == 0 and lock.statistics().lanes["normal"].cancels == 1
    lock.release()
    assert not lock.locked()
    assert lock.acquire(blocking=False)
    lock.release()


def _catch(call: Callable[[], Any], into: list[BaseException]) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test looks at what arrived
        into.append(exc)


# -- 3. asynchronous exceptions on the uncontended path --------------------------------------------


def test_an_exception_right_after_the_fast_path_took_the_lock_gives_it_back() -> None:
    """Deterministic: the clock (read for hold times right after the fast path took the lock)
    raises, as an asynchronous exception arriving at that instant would."""
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        if calls[0] == 1:
            raise Injected("right after the fast path")
        return time.monotonic()

    lock = fairlock.Lock("fast-path-interrupted", record_holds=True, clock=clock)
    with pytest.raises(Injected):
        with lock:
            pytest.fail("the body must not run when __enter__ raised")
    assert not lock.locked() and lock._owner is None
    with lock:  # usable, by anyone
        assert lock.owned()
    done = []
    start(lambda: (lock.acquire(), done.append(1), lock.release())).join(10)
    assert done == [1]


def _async_raise(thread: threading.Thread, exc: type[BaseException]) -> None:
    set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async.argtypes = (ctypes.c_ulong, ctypes.py_object)
    assert set_async(thread.ident, exc) == 1


#: Tries per lock kind. The issue's figures, 20 tries: fairlock 4-12 left unusable, threading 0.
TRIES = 40


def _interrupted_loops(make: Callable[[], Any], seed: int) -> tuple[list[str], list[str]]:
    """Run ``with lock: pass`` in a loop, interrupt it at a random moment, TRIES times.

    Returns (problems, kept): what was wrong with the lock afterwards, and the tries in which the
    interrupted thread still held the lock when the exception reached it (with where it was
    raised). The thread then releases it, as a handler that checks ``owned()`` would."""
    rng = random.Random(seed)
    problems, kept = [], []
    for attempt in range(TRIES):
        lock = make()
        running = threading.Event()
        outcome: list[str] = []

        def loop() -> None:
            try:
                running.set()
                while True:
                    with lock:
                        pass
            except Injected as exc:
                outcome.append("interrupted")
                if getattr(lock, "owned", lambda: False)():
                    last = traceback.extract_tb(exc.__traceback__)[-1]
                    kept.append(f"try {attempt}: raised in {last.name}, line {last.line!r}")
                    lock.release()

        thread = start(loop)
        running.wait(10)
        time.sleep(rng.uniform(0, 0.003))
        _async_raise(thread, Injected)
        thread.join(10)
        assert outcome == ["interrupted"], f"try {attempt}: the loop did not stop"
        if not lock.acquire(timeout=1):
            problems.append(f"try {attempt}: held by nobody who could release it")
        else:
            lock.release()
    return problems, kept


@pytest.mark.slow
def test_random_asynchronous_exceptions_leave_threading_lock_usable() -> None:
    """The reference the fairlock lock aims at (one C call per acquire and per release)."""
    assert _interrupted_loops(threading.Lock, seed=1) == ([], [])


@pytest.mark.slow
def test_random_asynchronous_exceptions_leave_the_fair_lock_usable() -> None:
    """PyThreadState_SetAsyncExc into an uncontended ``with lock: pass`` loop, as CPython's and
    trio's lock tests do: the lock is never left held by nobody (the old lock: 20-60 % of tries).

    One window remains, which no lock written in Python closes: an exception raised as
    ``__exit__`` is entered, before its first line runs, leaves the lock held by the interrupted
    thread, which ``owned()`` tells and which can release it (doc/source/local.rst)."""
    problems, kept = _interrupted_loops(lambda: fairlock.Lock("async"), seed=2)
    assert problems == []
    for where in kept:
        assert "raised in __exit__, line 'def __exit__(" in where, kept


# -- 4. fork ---------------------------------------------------------------------------------------

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_child(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run ``check`` in a forked child; fail unless it returns True within ``timeout``."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            code = 0 if check() else 1
        except BaseException:  # noqa: BLE001
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child hung on the lock")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0, "the child saw a broken lock (1: wrong state, 2: raised)"


def _holder(lock: fairlock.Lock) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            done.wait(30)

    thread = start(hold)
    assert holding.wait(10)
    return thread, done


@fork_only
def test_a_lock_held_by_another_thread_at_fork_is_free_in_the_child() -> None:
    lock = fairlock.Lock("fork-held")
    thread, done = _holder(lock)
    try:
        def child() -> bool:
            if lock.locked():  # the holder does not exist here
                return False
            if not lock.acquire(timeout=5):
                return False
            lock.release()
            return True

        _in_child(child)
        assert lock.locked()  # the parent is untouched
    finally:
        done.set()
        thread.join(10)


@fork_only
def test_waiters_queued_at_fork_are_gone_in_the_child() -> None:
    lock = fairlock.Lock("fork-queued")
    thread, done = _holder(lock)
    waiter = start(lambda: (lock.acquire(), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 1)
    try:
        def child() -> bool:
            stats = lock.statistics()
            if stats.waiting or stats.owner is not None or lock.locked():
                return False
            with lock:
                return lock.owned()

        _in_child(child)
    finally:
        done.set()
        thread.join(10)
        waiter.join(10)
    assert not lock.locked()


@fork_only
def test_a_handoff_pending_at_fork_to_a_thread_the_child_lacks_is_undone() -> None:
    lock = fairlock.Lock("fork-handoff")
    assert lock.acquire()
    waiter = start(lambda: (lock.acquire(), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 1)
    # Hand over without letting the waiter run: the parent holds the GIL until fork() below.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(30)
    try:
        lock.release()  # the waiter is the owner now, but has not run yet
        pid_check = lock.statistics().handoffs == 1 and not lock.owned() and lock.locked()

        def child() -> bool:
            return pid_check and not lock.locked() and lock.acquire(timeout=5) and lock.owned()

        _in_child(child)
    finally:
        sys.setswitchinterval(switch)
        waiter.join(10)
    assert not lock.locked()


@fork_only
def test_the_forking_thread_keeps_its_lock_in_the_child_and_waiters_are_dropped() -> None:
    lock = fairlock.Lock("fork-mine")
    assert lock.acquire()
    waiter = start(lambda: (lock.acquire(), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 1)
    try:
        def child() -> bool:
            if not (lock.owned() and lock.locked()):
                return False
            lock.release()  # would hand the lock to the waiter, which does not exist here
            if lock.locked():
                return False
            with fairlock.lock("fork-mine-registry"):  # the registry works in the child too
                return lock.acquire(timeout=5)

        _in_child(child)
    finally:
        lock.release()
        waiter.join(10)


# -- 5. owner identity -----------------------------------------------------------------------------


def test_a_new_thread_with_a_dead_owners_ident_is_not_the_owner() -> None:
    lock = fairlock.Lock("dead-owner")
    dead = start(lock.acquire)  # exits holding the lock
    dead.join(10)
    assert lock.locked()
    dead_ident = lock.statistics().owner
    seen: dict[str, object] = {}

    def successor() -> None:
        if threading.get_ident() != dead_ident:
            return
        seen["owned"] = lock.owned()
        seen["acquired"] = lock.acquire(timeout=0.05)  # the old lock: DeadlockError at once
        try:
            lock.release()
            seen["release"] = "released"
        except fairlock.NotOwnerError:
            seen["release"] = "NotOwnerError"

    for _ in range(200):  # glibc hands a new thread the ident of one that just exited
        start(successor).join(10)
        if seen:
            break
    if not seen:
        pytest.skip("no thread got the dead owner's ident in 200 tries")
    assert seen == {"owned": False, "acquired": False, "release": "NotOwnerError"}
    assert lock.locked() and lock.statistics().owner == dead_ident
