"""Tests specific to fairlock.Lock: wake-ups, cancel/timeout races, reentrancy, stats, warnings,
context lanes, the named registry, and bad input. Also run under eventlet by test_eventlet.py."""

from __future__ import annotations

import gc
import logging
import math
import subprocess
import sys
import threading

import pytest

import fairlock
from fairlock import _primitives, local

from .kinds import start, wait_for


class CountingParker:
    """Wraps the real parker; counts wake-ups and can misbehave on purpose."""

    made: list[CountingParker] = []

    def __init__(self, real: object, after_wait: str | None = None) -> None:
        self.real = real
        self.releases = 0
        self.after_wait = after_wait
        CountingParker.made.append(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.after_wait == "raise-now":
            raise KeyboardInterrupt("interrupted while queued")
        got = self.real.acquire(blocking, timeout)  # type: ignore[attr-defined]
        if self.after_wait == "pretend-timeout":
            return False  # the timeout fired in the same instant the lock was handed to us
        if self.after_wait == "raise":
            raise KeyboardInterrupt("killed after being chosen")
        return got

    def release(self) -> None:
        self.releases += 1
        self.real.release()  # type: ignore[attr-defined]


@pytest.fixture
def parkers(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    CountingParker.made = []
    behaviour: dict[str, str | None] = {"next": None}
    real_new = _primitives.new_parker

    def new_parker() -> CountingParker:
        mode, behaviour["next"] = behaviour["next"], None
        return CountingParker(real_new(), mode)

    monkeypatch.setattr(local, "new_parker", new_parker)
    return behaviour


def test_exactly_one_wakeup_per_release(parkers) -> None:  # type: ignore[no-untyped-def]
    lock = fairlock.Lock("wakeups")
    order = []
    assert lock.acquire()
    threads = []
    for i in range(10):
        threads.append(start(lambda i=i: (lock.acquire(), order.append(i), lock.release())))
        wait_for(lambda n=i + 1: lock.statistics().waiting == n)
    lock.release()
    for t in threads:
        t.join(10)
    assert order == list(range(10))
    assert len(CountingParker.made) == 10
    assert [p.releases for p in CountingParker.made] == [1] * 10  # each woken once, nobody else
    stats = lock.statistics()
    assert stats.handoffs == 10 and stats.grants == 11


def test_timeout_at_the_instant_of_grant_keeps_the_lock(parkers) -> None:  # type: ignore[no-untyped-def]
    lock = fairlock.Lock("race")
    assert lock.acquire()
    parkers["next"] = "pretend-timeout"
    result = []
    done = threading.Event()

    def waiter() -> None:
        result.append(lock.acquire(timeout=30))
        done.set()

    start(waiter)
    wait_for(lambda: lock.statistics().waiting == 1)
    lock.release()
    done.wait(10)
    # Chosen while timing out: the waiter owns the lock and is told so; nothing is stranded.
    assert result == [True]
    assert lock.locked() and lock.statistics().waiting == 0


def test_exception_after_being_chosen_passes_the_lock_on(parkers) -> None:  # type: ignore[no-untyped-def]
    lock = fairlock.Lock("chosen-then-killed")
    assert lock.acquire()
    parkers["next"] = "raise"
    errors = []

    def doomed() -> None:
        try:
            lock.acquire()
        except KeyboardInterrupt as exc:
            errors.append(exc)

    t1 = start(doomed)
    wait_for(lambda: lock.statistics().waiting == 1)
    got = threading.Event()
    t2 = start(lambda: (lock.acquire(), got.set(), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 2)
    lock.release()  # hands to doomed, which dies before running: the lock must reach t2
    t1.join(10)
    t2.join(10)
    assert len(errors) == 1 and got.is_set()
    assert not lock.locked()


def test_exception_while_queued_leaves_queue(parkers) -> None:  # type: ignore[no-untyped-def]
    lock = fairlock.Lock("cancelled")
    assert lock.acquire()
    order = []
    first = start(lambda: (lock.acquire(), order.append("first"), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 1)
    parkers["next"] = "raise-now"
    errors = []

    def interrupted() -> None:
        try:
            lock.acquire()  # interrupted while queued, never chosen
        except KeyboardInterrupt as exc:
            errors.append(exc)

    start(interrupted).join(10)
    assert len(errors) == 1
    stats = lock.statistics()
    assert stats.waiting == 1 and stats.lanes["normal"].cancels == 1
    last = start(lambda: (lock.acquire(), order.append("last"), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 2)
    lock.release()
    first.join(10)
    last.join(10)
    assert order == ["first", "last"] and not lock.locked()


def test_owner_reacquire_raises_deadlock_error_not_hang() -> None:
    lock = fairlock.Lock("nonreentrant")
    assert lock.acquire()
    with pytest.raises(fairlock.DeadlockError):
        lock.acquire()
    with pytest.raises(fairlock.DeadlockError):
        lock.acquire(timeout=5)
    assert lock.acquire(blocking=False) is False
    lock.release()
    assert not lock.locked()


def test_reentrant_option_nests() -> None:
    lock = fairlock.Lock("reentrant", reentrant=True)
    with lock:
        with lock:
            assert lock.acquire(blocking=False)
            lock.release()
        assert lock.locked()
    assert not lock.locked()


def test_statistics_and_repr() -> None:
    lock = fairlock.Lock("stats", max_bypass=2)
    assert "free" in repr(lock) and "0 waiting" in repr(lock)
    assert lock.acquire()
    threads = []
    for i, lane in enumerate(["low", "high", "high", "high"]):
        threads.append(start(lambda lane=lane: (lock.acquire(lane=lane), lock.release())))
        wait_for(lambda n=i + 1: lock.statistics().waiting == n)
    stats = lock.statistics()
    assert stats.owner == threading.get_ident()
    assert dict(stats.waiting_per_lane) == {"high": 3, "normal": 0, "low": 1}
    assert "4 waiting" in repr(lock) and "held by" in repr(lock)
    lock.release()
    for t in threads:
        t.join(10)
    stats = lock.statistics()
    assert stats.grants == 5 and stats.handoffs == 4
    assert stats.max_overtaken == 2 and stats.max_bypass == 2
    assert stats.lanes["high"].queued_grants == 3 and stats.lanes["low"].queued_grants == 1
    # Grant order high, high, low, high: the last high arrived after low and was served after
    # it, so neither lane's longest wait bounds the other's; both waited for real.
    assert stats.wait_max["low"] > 0 and stats.wait_max["high"] > 0
    assert stats.wait_total["high"] >= stats.wait_max["high"]
    with pytest.raises(AttributeError):
        stats.grants = 0  # type: ignore[misc]


def test_injected_clock_drives_wait_statistics() -> None:
    now = [100.0]
    lock = fairlock.Lock("clock", clock=lambda: now[0])
    assert lock.acquire()
    t = start(lambda: (lock.acquire(), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 1)
    now[0] = 107.5
    lock.release()
    t.join(10)
    assert lock.statistics().lanes["normal"].wait_max == 7.5


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.seen.set()


def _logger(name: str) -> tuple[logging.Logger, _Capture]:
    log = logging.getLogger(f"fairlock.test.{name}")
    log.propagate = False
    capture = _Capture()
    log.addHandler(capture)
    log.setLevel(logging.DEBUG)
    return log, capture


def test_slow_wait_warning_names_the_holder() -> None:
    log, capture = _logger("slow_wait")
    lock = fairlock.Lock("slow", slow_wait=0.02, logger=log)
    assert lock.acquire()
    t = start(lambda: (lock.acquire(), lock.release()), name="waiter-thread")
    assert capture.seen.wait(10)  # logged while still waiting, before we release
    message = capture.records[0].getMessage()
    assert 'Lock "slow" waited on for more than 0.020s by waiter-thread' in message
    assert threading.current_thread().name in message
    lock.release()
    t.join(10)
    assert lock.statistics().lanes["normal"].queued_grants == 1


def test_slow_hold_warning() -> None:
    log, capture = _logger("slow_hold")
    now = [0.0]
    lock = fairlock.Lock("held", slow_hold=1.0, clock=lambda: now[0], logger=log)
    with lock:
        now[0] = 0.5
    assert capture.records == []
    with lock:
        now[0] = 3.0
    assert len(capture.records) == 1
    assert 'Lock "held" was held for 2.500s by' in capture.records[0].getMessage()


def test_context_lane_and_explicit_lane_precedence() -> None:
    lock = fairlock.Lock("ctx")
    order = []
    assert lock.acquire()
    threads = []

    def waiter(tag: str, ctx: str | None, lane: str | None) -> None:
        if ctx is None:
            lock.acquire(lane=lane)
        else:
            with fairlock.lane(ctx):
                lock.acquire(lane=lane)
        order.append(tag)
        lock.release()

    plan = [("normal", None, None), ("ctx-low-explicit-normal", "low", "normal"),
            ("unknown-ctx", "migration-x", None), ("ctx-high", "high", None)]
    for i, (tag, ctx, lane) in enumerate(plan):
        threads.append(start(lambda a=(tag, ctx, lane): waiter(*a)))
        wait_for(lambda n=i + 1: lock.statistics().waiting == n)
    assert dict(lock.statistics().waiting_per_lane) == {"high": 1, "normal": 3, "low": 0}
    lock.release()
    for t in threads:
        t.join(10)
    assert order == ["ctx-high", "normal", "ctx-low-explicit-normal", "unknown-ctx"]


def test_lane_decorator_and_nesting() -> None:
    @fairlock.lane("high")
    def inner() -> str | None:
        return fairlock.current_lane()

    assert fairlock.current_lane() is None
    with fairlock.lane("low"):
        assert inner() == "high"
        assert fairlock.current_lane() == "low"
    assert fairlock.current_lane() is None


def test_registry_same_lock_and_frees_unused_names() -> None:
    registry = fairlock.LockRegistry()
    a = registry.get("x")
    assert registry.get("x") is a
    del a
    gc.collect()
    for i in range(100_000):
        with registry.lock(f"name-{i}"):
            pass
    assert len(registry) == 0


def test_registry_concurrent_get_returns_one_lock() -> None:
    registry = fairlock.LockRegistry()
    seen: list[object] = []
    barrier = threading.Barrier(8)

    def get() -> None:
        barrier.wait()
        for _ in range(200):
            seen.append(registry.get("shared"))

    threads = [start(get) for _ in range(8)]
    for t in threads:
        t.join(10)
    assert len({id(x) for x in seen}) == 1


def test_registry_lock_raises_acquire_timeout() -> None:
    registry = fairlock.LockRegistry()
    with registry.lock("busy") as held:
        errors = []

        def other() -> None:
            try:
                with registry.lock("busy", timeout=0.01):
                    pass
            except fairlock.AcquireTimeout as exc:
                errors.append(exc)

        start(other).join(10)
        assert len(errors) == 1 and held.locked()
    assert not held.locked()


NAN = math.nan


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda lock: lock.acquire(timeout=NAN), fairlock.InvalidArgumentError),
        (lambda lock: lock.acquire(timeout=-2), fairlock.InvalidArgumentError),
        (lambda lock: lock.acquire(timeout=-0.5), fairlock.InvalidArgumentError),
        (lambda lock: lock.acquire(timeout="1"), fairlock.ArgumentTypeError),
        (lambda lock: lock.acquire(timeout=True), fairlock.ArgumentTypeError),
        (lambda lock: lock.acquire(blocking="yes"), fairlock.ArgumentTypeError),
        (lambda lock: lock.acquire(False, 1.0), fairlock.InvalidArgumentError),
        (lambda lock: lock.acquire(lane="nope"), fairlock.UnknownLaneError),
        (lambda lock: lock.acquire(lane=1), fairlock.ArgumentTypeError),
        (lambda lock: lock.release(), fairlock.NotHeldError),
        (lambda lock: fairlock.Lock(3), fairlock.ArgumentTypeError),
        (lambda lock: fairlock.Lock(""), fairlock.InvalidArgumentError),
        (lambda lock: fairlock.Lock("x", lanes=[]), fairlock.InvalidArgumentError),
        (lambda lock: fairlock.Lock("x", default_lane="zzz"), fairlock.UnknownLaneError),
        (lambda lock: fairlock.Lock("x", max_bypass=-1), fairlock.InvalidArgumentError),
        (lambda lock: fairlock.Lock("x", slow_hold=0), fairlock.InvalidArgumentError),
        (lambda lock: fairlock.Lock("x", slow_wait=NAN), fairlock.InvalidArgumentError),
        (lambda lock: fairlock.Lock("x", reentrant="no"), fairlock.ArgumentTypeError),
        (lambda lock: fairlock.LockRegistry().get(""), fairlock.InvalidArgumentError),
        (lambda lock: fairlock.LockRegistry().get(None), fairlock.ArgumentTypeError),
        (lambda lock: fairlock.LockRegistry(lanes="abc"), fairlock.ArgumentTypeError),
        (lambda lock: fairlock.lane(""), fairlock.InvalidArgumentError),
        (lambda lock: fairlock.lane(None), fairlock.ArgumentTypeError),
    ],
)
def test_bad_input_is_a_clear_error_and_state_intact(call, error) -> None:  # type: ignore[no-untyped-def]
    lock = fairlock.Lock("bad-input")
    with pytest.raises(error) as info:
        call(lock)
    assert isinstance(info.value, fairlock.FairlockError)
    assert str(info.value)  # a message, not a bare exception
    # The lock still works for everyone afterwards.
    assert not lock.locked() and lock.statistics().waiting == 0
    assert lock.acquire(timeout=1)
    lock.release()


def test_bad_input_while_contended_leaves_queue_intact() -> None:
    lock = fairlock.Lock("bad-contended")
    assert lock.acquire()
    order = []
    t = start(lambda: (lock.acquire(), order.append("w"), lock.release()))
    wait_for(lambda: lock.statistics().waiting == 1)
    for bad in (dict(timeout=NAN), dict(lane="nope"), dict(timeout=-3)):
        with pytest.raises(fairlock.FairlockError):
            lock.acquire(**bad)
    assert lock.statistics().waiting == 1
    lock.release()
    t.join(10)
    assert order == ["w"]


def test_infinite_and_huge_timeouts_wait_until_granted() -> None:
    lock = fairlock.Lock("inf")
    for timeout in (math.inf, 1e300, None, -1):
        assert lock.acquire()
        result = []
        t = start(lambda timeout=timeout, result=result: result.append(lock.acquire(timeout=timeout)) or lock.release())
        wait_for(lambda: lock.statistics().waiting == 1)
        lock.release()
        t.join(10)
        assert result == [True]


def test_fairlock_never_imports_eventlet() -> None:
    code = (
        "import sys, threading, fairlock\n"
        "lock = fairlock.Lock('x'); lock.acquire()\n"
        "t = threading.Thread(target=lambda: (lock.acquire(), lock.release())); t.start()\n"
        "import time\n"
        "while lock.statistics().waiting == 0: time.sleep(0.001)\n"
        "lock.release(); t.join()\n"
        "with fairlock.lane('high'), fairlock.lock('y'): pass\n"
        "import fairlock._primitives as p; assert p.green_mode() is False\n"
        "assert 'eventlet' not in sys.modules, 'fairlock imported eventlet'\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"
