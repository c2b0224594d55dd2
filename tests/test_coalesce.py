"""Coalesced refreshes (fairlock.coalesce).

Every test synchronises on recorded state -- the lock's waiting count, the coalescer's follower
count, events set inside the refreshed function -- never on a fixed sleep. Freshness is checked
with a logical counter: the function's run number is compared with the number of runs started
before the caller asked.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import fairlock
from fairlock import coalesce
from fairlock.coalesce import ALONE, Coalescer, coalesced

from .kinds import wait_for as wait_until  # the shared condition poll

LANES = ("high", "normal", "low")




class Worker(threading.Thread):
    """Runs ``fn`` in a thread and keeps its result or exception."""

    def __init__(self, fn, name=None):
        super().__init__(name=name, daemon=True)
        self.fn = fn
        self.result = None
        self.error = None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: B036 - recorded for the test to assert on
            self.error = exc

    def outcome(self, timeout=10.0):
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running"
        if self.error is not None:
            raise self.error
        return self.result


class Counter:
    """A logical clock of runs: ``start()`` numbers a run, ``now()`` is the last number issued."""

    def __init__(self):
        self._lock = threading.Lock()
        self.value = 0
        self.runners = []

    def start(self):
        with self._lock:
            self.value += 1
            self.runners.append(threading.current_thread().name)
            return self.value

    def now(self):
        with self._lock:
            return self.value


def lock_waiting(lock, lane="normal"):
    return lock.statistics().lanes[lane].waiting


def park(co, lock, *, followers, reps, lane="normal"):
    wait_until(
        lambda: co.statistics().following == followers and lock_waiting(lock, lane) == reps,
        what=f"{followers} follower(s) and {reps} queued representative(s)",
    )


# -- call-count reduction ------------------------------------------------------------------------


def test_queued_callers_share_one_run():
    lock = fairlock.Lock("refresh_cache-1")
    co = Coalescer()
    counter = Counter()
    lock.acquire()
    workers = [Worker(lambda: co.call(lock, "inst-1", counter.start), f"w{i}") for i in range(20)]
    for w in workers:
        w.start()
    park(co, lock, followers=19, reps=1)
    lock.release()
    results = [w.outcome() for w in workers]
    assert results == [1] * 20
    stats = co.statistics()
    assert (stats.calls, stats.runs, stats.shared) == (20, 1, 19)
    assert (stats.pending, stats.following) == (0, 0)
    assert not lock.locked()


def test_churn_reduces_runs_and_every_result_is_fresh():
    """8 threads x 40 calls on one key: far fewer runs than calls, and rule 1 always holds."""
    lock = fairlock.Lock("refresh_cache-2")
    co = Coalescer()
    counter = Counter()
    stale = []
    barrier = threading.Barrier(8)

    def refresh():
        number = counter.start()
        time.sleep(0.0005)  # the neutron calls: time during which others queue
        return number

    def caller():
        barrier.wait()
        for _ in range(40):
            arrived = counter.now()
            started = co.call(lock, "inst", refresh)
            if started <= arrived:
                stale.append((arrived, started))

    workers = [Worker(caller, f"c{i}") for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.outcome(60)
    stats = co.statistics()
    assert stale == []
    assert stats.calls == 320
    assert stats.runs == counter.now()
    assert stats.runs < stats.calls * 0.75, stats
    assert stats.shared == stats.calls - stats.runs


# -- freshness -------------------------------------------------------------------------------------


def test_call_arriving_during_a_run_waits_for_the_next_run():
    lock = fairlock.Lock("refresh_cache-3")
    co = Coalescer()
    counter = Counter()
    entered, leave = threading.Event(), threading.Event()

    def refresh():
        number = counter.start()
        if number == 1:
            entered.set()
            assert leave.wait(10)
        return number

    first = Worker(lambda: co.call(lock, "k", refresh), "first")
    first.start()
    assert entered.wait(10)
    # The run has started: these arrive after it, so they must not get its result.
    late = [Worker(lambda: co.call(lock, "k", refresh), f"late{i}") for i in range(3)]
    for w in late:
        w.start()
    park(co, lock, followers=2, reps=1)
    leave.set()
    assert first.outcome() == 1
    assert [w.outcome() for w in late] == [2, 2, 2]
    assert co.statistics().runs == 2


def test_freshness_with_covers_lanes_and_keys_under_stress():
    """Random keys, lanes and covers: no caller ever receives a run that started before it asked."""
    import random

    lock = fairlock.Lock("refresh_cache-4", lanes=LANES)
    co = Coalescer(covers=lambda run, call: run is None or run == call)
    counter = Counter()
    stale = []
    served_wrong_key = []

    def refresh(key):
        number = counter.start()
        time.sleep(0.0002)
        return number, key

    def caller(seed):
        rng = random.Random(seed)
        for _ in range(40):
            key = rng.choice([None, "p1", "p2"])
            lane = rng.choice(LANES)
            arrived = counter.now()
            started, run_key = co.call(lock, key, refresh, (key,), lane=lane)
            if started <= arrived:
                stale.append((arrived, started))
            if not (run_key is None or run_key == key):
                served_wrong_key.append((key, run_key))

    workers = [Worker(lambda s=s: caller(s), f"s{s}") for s in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.outcome(60)
    assert stale == []
    assert served_wrong_key == []
    assert co.statistics().runs == counter.now()
    assert co.statistics().pending == 0


# -- errors ------------------------------------------------------------------------------------------


def test_exception_is_shared_by_default():
    lock = fairlock.Lock("refresh_cache-5")
    co = Coalescer()
    failure = ValueError("neutron said 500")
    calls = []

    def refresh():
        calls.append(1)
        raise failure

    lock.acquire()
    workers = [Worker(lambda: co.call(lock, "k", refresh), f"e{i}") for i in range(5)]
    for w in workers:
        w.start()
    park(co, lock, followers=4, reps=1)
    lock.release()
    for w in workers:
        with pytest.raises(ValueError) as info:
            w.outcome()
        assert info.value is failure
    assert len(calls) == 1
    assert co.statistics().runs == 1
    assert not lock.locked()


def test_errors_retry_lets_followers_run_once_more():
    lock = fairlock.Lock("refresh_cache-6")
    co = Coalescer(errors="retry")
    counter = Counter()

    def refresh():
        number = counter.start()
        if number == 1:
            raise RuntimeError("first run fails")
        return number

    lock.acquire()
    workers = [Worker(lambda: co.call(lock, "k", refresh), f"r{i}") for i in range(5)]
    for w in workers:
        w.start()
    park(co, lock, followers=4, reps=1)
    lock.release()
    outcomes = []
    for w in workers:
        try:
            outcomes.append(w.outcome())
        except RuntimeError:
            outcomes.append("error")
    # Each follower started over once: they join whatever run is pending when they wake (the
    # first to wake may find the lock free and run at once), so 1 to 4 more runs, all fresh.
    assert outcomes.count("error") == 1
    values = [o for o in outcomes if o != "error"]
    assert len(values) == 4 and all(v >= 2 for v in values)
    assert 2 <= co.statistics().runs <= 5
    assert co.statistics().retries == 4


def test_retry_gives_up_after_one_more_failed_run():
    lock = fairlock.Lock("refresh_cache-6b")
    co = Coalescer(errors="retry")
    counter = Counter()

    def refresh():
        counter.start()
        raise RuntimeError("neutron is down")

    lock.acquire()
    workers = [Worker(lambda: co.call(lock, "k", refresh), f"r{i}") for i in range(4)]
    for w in workers:
        w.start()
    park(co, lock, followers=3, reps=1)
    lock.release()
    for w in workers:
        with pytest.raises(RuntimeError):
            w.outcome()
    assert 2 <= co.statistics().runs <= 4  # the failed run, then one more for each retry at most


class Killed(BaseException):
    """Stands for GreenletExit / KeyboardInterrupt in the runner."""


def test_base_exception_abandons_the_run_and_members_start_over():
    lock = fairlock.Lock("refresh_cache-7")
    co = Coalescer()
    counter = Counter()

    def refresh():
        number = counter.start()
        if number == 1:
            raise Killed()
        return number

    lock.acquire()
    workers = [Worker(lambda: co.call(lock, "k", refresh), f"b{i}") for i in range(4)]
    for w in workers:
        w.start()
    park(co, lock, followers=3, reps=1)
    lock.release()
    outcomes = []
    for w in workers:
        try:
            outcomes.append(w.outcome())
        except Killed:
            outcomes.append("killed")
    assert outcomes.count("killed") == 1
    assert all(o >= 2 for o in outcomes if o != "killed")
    assert 2 <= co.statistics().runs <= 4
    assert not lock.locked()


# -- keys, functions, locks ----------------------------------------------------------------------------


def test_different_keys_functions_and_locks_do_not_coalesce():
    lock, other_lock = fairlock.Lock("a"), fairlock.Lock("b")
    co = Coalescer()
    counter = Counter()

    def refresh():
        return counter.start()

    def refresh_other():
        return -counter.start()

    lock.acquire()
    other_lock.acquire()
    specs = [(lock, "k1", refresh)] * 3 + [(lock, "k2", refresh)] * 3 + [(lock, "k1", refresh_other)] * 3
    specs += [(other_lock, "k1", refresh)] * 3
    workers = [Worker(lambda s=s: (s[1], s[2].__name__, s[0].name, co.call(*s)), f"d{i}") for i, s in enumerate(specs)]
    for w in workers:
        w.start()
    wait_until(lambda: co.statistics().following == 8, what="8 followers")
    wait_until(lambda: lock_waiting(lock) == 3 and lock_waiting(other_lock) == 1, what="4 representatives")
    lock.release()
    other_lock.release()
    results = [w.outcome() for w in workers]
    assert co.statistics().runs == 4
    groups = {}
    for key, fn, lock_name, value in results:
        groups.setdefault((key, fn, lock_name), set()).add(value)
    assert len(groups) == 4
    assert all(len(values) == 1 for values in groups.values())  # one run per group
    assert len({next(iter(v)) for v in groups.values()}) == 4  # four different runs


def test_alone_key_never_shares():
    lock = fairlock.Lock("refresh_cache-8")
    co = Coalescer()
    counter = Counter()
    lock.acquire()
    workers = [Worker(lambda: co.call(lock, ALONE, counter.start), f"a{i}") for i in range(3)]
    for w in workers:
        w.start()
    wait_until(lambda: lock_waiting(lock) == 3, what="3 queued")
    lock.release()
    assert sorted(w.outcome() for w in workers) == [1, 2, 3]
    assert co.statistics().runs == 3


def test_owner_calling_again_takes_the_plain_path():
    lock = fairlock.Lock("refresh_cache-9")
    co = Coalescer()
    with lock:
        with pytest.raises(fairlock.DeadlockError):
            co.call(lock, "k", lambda: 1)
    reentrant = fairlock.Lock("r", reentrant=True)
    with reentrant:
        assert co.call(reentrant, "k", lambda: 2) == 2


def test_plain_threading_lock_works_without_lanes():
    lock = threading.Lock()
    co = Coalescer()
    counter = Counter()
    lock.acquire()
    workers = [Worker(lambda: co.call(lock, "k", counter.start), f"t{i}") for i in range(6)]
    for w in workers:
        w.start()
    wait_until(lambda: co.statistics().following == 5, what="5 followers")
    lock.release()
    assert [w.outcome() for w in workers] == [1] * 6


# -- lanes -------------------------------------------------------------------------------------------------


def test_a_high_lane_member_runs_first_and_followers_leave_when_it_ends():
    """H (high) joins a pending run of normal callers: it runs before X, queued earlier in "normal";
    follower B returns as soon as H's run ends, while X still holds the lock; A, B's
    representative, gets one empty grant after X."""
    lock = fairlock.Lock("refresh_cache-10", lanes=LANES)
    co = Coalescer()
    counter = Counter()
    grants = []
    x_holds, x_go = threading.Event(), threading.Event()

    def plain_waiter():
        with lock:
            grants.append("X")
            x_holds.set()
            assert x_go.wait(10)

    def refresh():
        grants.append(threading.current_thread().name)
        return counter.start()

    lock.acquire()
    x = Worker(plain_waiter, "X")
    x.start()
    wait_until(lambda: lock_waiting(lock) == 1, what="X queued")
    a = Worker(lambda: co.call(lock, "k", refresh), "A")
    a.start()
    wait_until(lambda: lock_waiting(lock) == 2, what="A queued")
    b = Worker(lambda: co.call(lock, "k", refresh), "B")
    b.start()
    park(co, lock, followers=1, reps=2)

    def high_caller():
        with fairlock.lane("high"):
            return co.call(lock, "k", refresh)

    h = Worker(high_caller, "H")
    h.start()
    wait_until(lambda: lock_waiting(lock, "high") == 1, what="H queued in high")
    lock.release()
    assert h.outcome() == 1
    assert x_holds.wait(10)
    assert b.outcome() == 1  # returned while X still holds the lock
    assert a.is_alive()  # the representative still waits for its own grant
    x_go.set()
    assert x.outcome() is None
    assert a.outcome() == 1
    assert grants == ["H", "X"]
    stats = co.statistics()
    assert (stats.runs, stats.shared, stats.empty_grants) == (1, 2, 1)


def test_explicit_lane_wins_over_the_context():
    lock = fairlock.Lock("refresh_cache-11", lanes=LANES)
    co = Coalescer()
    lock.acquire()

    def caller():
        with fairlock.lane("high"):
            return co.call(lock, "k", lambda: "v", lane="low")

    w = Worker(caller, "low")
    w.start()
    wait_until(lambda: lock_waiting(lock, "low") == 1, what="queued in low")
    lock.release()
    assert w.outcome() == "v"
    with pytest.raises(fairlock.UnknownLaneError):
        co.call(lock, "k", lambda: 1, lane="nope")


# -- covers -------------------------------------------------------------------------------------------------


def covers(run_key, call_key):
    """None is a full refresh: it covers every port; a port refresh covers only itself."""
    return run_key is None or run_key == call_key


def echo(kind):
    return kind


def test_port_call_joins_a_pending_full_refresh():
    lock = fairlock.Lock("refresh_cache-12", lanes=LANES)
    co = Coalescer(covers=covers)
    lock.acquire()
    full = Worker(lambda: co.call(lock, None, echo, ("full",)), "full")
    full.start()
    wait_until(lambda: lock_waiting(lock) == 1, what="full queued")
    port = Worker(lambda: co.call(lock, "port-1", echo, ("port",)), "port")
    port.start()
    park(co, lock, followers=1, reps=1)
    lock.release()
    assert (full.outcome(), port.outcome()) == ("full", "full")
    assert co.statistics().runs == 1


def test_a_covered_member_that_runs_first_runs_the_wider_call():
    """A high-lane port call joins a pending full refresh and is granted first: it runs the full
    refresh (the run's call), never its own narrower one, since the full caller is served by it."""
    lock = fairlock.Lock("refresh_cache-12b", lanes=LANES)
    co = Coalescer(covers=covers)
    lock.acquire()
    full = Worker(lambda: co.call(lock, None, echo, ("full",)), "full")
    full.start()
    wait_until(lambda: lock_waiting(lock) == 1, what="full queued")
    port = Worker(lambda: co.call(lock, "port-1", echo, ("port",), lane="high"), "port")
    port.start()
    wait_until(lambda: lock_waiting(lock, "high") == 1, what="port queued in high")
    lock.release()
    assert (port.outcome(), full.outcome()) == ("full", "full")
    assert (co.statistics().runs, co.statistics().empty_grants) == (1, 1)


def test_full_call_never_joins_a_pending_port_refresh():
    lock = fairlock.Lock("refresh_cache-13", lanes=LANES)
    co = Coalescer(covers=covers)
    lock.acquire()
    port = Worker(lambda: co.call(lock, "port-1", echo, ("port",)), "port")
    port.start()
    wait_until(lambda: lock_waiting(lock) == 1, what="port queued")
    full = Worker(lambda: co.call(lock, None, echo, ("full",)), "full")
    full.start()
    wait_until(lambda: lock_waiting(lock) == 2, what="full queued on its own")
    lock.release()
    assert (port.outcome(), full.outcome()) == ("port", "full")
    assert co.statistics().runs == 2


def test_a_later_full_refresh_serves_a_queued_port_refresh():
    """The port call arrived first; a full refresh that starts later (migration lane) serves it."""
    lock = fairlock.Lock("refresh_cache-14", lanes=LANES)
    co = Coalescer(covers=covers)
    ran = []

    def refresh(kind):
        ran.append(kind)
        return kind

    lock.acquire()
    port = Worker(lambda: co.call(lock, "port-1", refresh, ("port",)), "port")
    port.start()
    port_follower = Worker(lambda: co.call(lock, "port-1", refresh, ("port",)), "port2")
    wait_until(lambda: lock_waiting(lock) == 1, what="port queued")
    port_follower.start()
    park(co, lock, followers=1, reps=1)
    full = Worker(lambda: co.call(lock, None, refresh, ("full",), lane="high"), "full")
    full.start()
    wait_until(lambda: lock_waiting(lock, "high") == 1, what="full queued in high")
    lock.release()
    assert [full.outcome(), port.outcome(), port_follower.outcome()] == ["full"] * 3
    assert ran == ["full"]
    assert co.statistics().empty_grants == 1


# -- leaving -------------------------------------------------------------------------------------------------


def test_representative_timeout_promotes_a_follower():
    lock = fairlock.Lock("refresh_cache-15")
    co = Coalescer()
    counter = Counter()
    lock.acquire()
    rep = Worker(lambda: co.call(lock, "k", counter.start, timeout=0.05), "rep")
    rep.start()
    wait_until(lambda: lock_waiting(lock) == 1, what="rep queued")
    follower = Worker(lambda: co.call(lock, "k", counter.start), "follower")
    follower.start()
    with pytest.raises(fairlock.AcquireTimeout):
        rep.outcome()
    # The follower took over the representative's duty and queued itself.
    park(co, lock, followers=0, reps=1)
    lock.release()
    assert follower.outcome() == 1
    assert co.statistics().runs == 1


def test_follower_timeout_leaves_the_run():
    lock = fairlock.Lock("refresh_cache-16")
    co = Coalescer()
    lock.acquire()
    rep = Worker(lambda: co.call(lock, "k", lambda: "v"), "rep")
    rep.start()
    wait_until(lambda: lock_waiting(lock) == 1, what="rep queued")
    follower = Worker(lambda: co.call(lock, "k", lambda: "v", timeout=0.05), "follower")
    follower.start()
    with pytest.raises(fairlock.AcquireTimeout):
        follower.outcome()
    assert co.statistics().following == 0
    lock.release()
    assert rep.outcome() == "v"


# -- the decorator -----------------------------------------------------------------------------------------


class Instance:
    def __init__(self, uuid):
        self.uuid = uuid


class FakeNetworkAPI:
    """nova's shape: get_instance_nw_info(self, context, instance, **kwargs)."""

    registry = fairlock.LockRegistry(lanes=("migration", "normal", "events"))

    def __init__(self):
        self.counter = Counter()

    @coalesced(
        lambda self, context, instance, **kw: "refresh_cache-%s" % instance.uuid,
        registry=registry,
        key=lambda self, context, instance, refresh_vif_id=None, **kw: ALONE if kw else refresh_vif_id,
        covers=covers,
        copy=copy.deepcopy,
    )
    def get_instance_nw_info(self, context, instance, **kwargs):
        return {"run": self.counter.start(), "context": context, "vif": kwargs.get("refresh_vif_id")}


def test_decorator_on_a_nova_shaped_method():
    api = FakeNetworkAPI()
    inst, other = Instance("u1"), Instance("u2")
    lock = FakeNetworkAPI.registry.get("refresh_cache-u1")
    co = FakeNetworkAPI.get_instance_nw_info.coalescer
    lock.acquire()
    workers = [Worker(lambda i=i: api.get_instance_nw_info(f"ctx{i}", inst), f"n{i}") for i in range(6)]
    for w in workers:
        w.start()
    park(co, lock, followers=5, reps=1)
    # A port-scoped event for the same instance joins the pending full refresh.
    port = Worker(lambda: api.get_instance_nw_info("ctx-port", inst, refresh_vif_id="p1"), "port")
    port.start()
    park(co, lock, followers=6, reps=1)
    # Another instance has another lock: not coalesced with these.
    assert api.get_instance_nw_info("ctx-other", other)["run"] == 1
    lock.release()
    results = [w.outcome() for w in workers] + [port.outcome()]
    assert {r["run"] for r in results} == {2}
    assert len({id(r) for r in results}) == 7  # copy=deepcopy: every follower has its own
    # Calls with other arguments (networks=..., port_ids=...) run on their own.
    assert api.get_instance_nw_info("ctx", inst, networks=["n"])["run"] == 3
    assert co.statistics().runs == 3


def test_decorator_with_a_lock_object_and_explicit_lane():
    lock = fairlock.Lock("refresh_cache-17", lanes=LANES)

    @coalesced(lock, lane="low")
    def refresh():
        return lock.statistics().owner_lane

    assert refresh() is None  # free lock: the fast path, no lane recorded
    lock.acquire()
    w = Worker(refresh, "low")
    w.start()
    wait_until(lambda: lock_waiting(lock, "low") == 1, what="queued in low")
    lock.release()
    assert w.outcome() == "low"


def test_argument_validation():
    with pytest.raises(fairlock.InvalidArgumentError):
        Coalescer(errors="ignore")
    with pytest.raises(fairlock.ArgumentTypeError):
        Coalescer(covers="yes")
    with pytest.raises(fairlock.ArgumentTypeError):
        coalesced(42)
    with pytest.raises(fairlock.ArgumentTypeError):
        coalesced(fairlock.Lock(), key="instance")
    with pytest.raises(fairlock.InvalidArgumentError):
        coalesced(fairlock.Lock(), timeout=-5)
    with pytest.raises(fairlock.InvalidArgumentError):
        Coalescer().call(fairlock.Lock(), "k", lambda: 1, timeout=float("nan"))
    assert repr(coalesce.ALONE) == "fairlock.coalesce.ALONE"
    assert "0 call(s)" in repr(Coalescer())


# -- eventlet --------------------------------------------------------------------------------------------------

EVENTLET_SCRIPT = textwrap.dedent(
    r"""
    import warnings
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet
    eventlet.monkey_patch()

    import fairlock
    from fairlock.coalesce import Coalescer

    lock = fairlock.Lock("refresh_cache-green", lanes=("migration", "normal", "events"))
    co = Coalescer()
    runs = []

    def refresh():
        runs.append(len(runs) + 1)
        eventlet.sleep(0.001)  # a neutron call: yields to the hub
        return runs[-1]

    lock.acquire()
    pool = eventlet.GreenPool()
    threads = [pool.spawn(co.call, lock, "k", refresh) for _ in range(30)]
    while co.statistics().following < 29:
        eventlet.sleep(0)
    def migration():
        with fairlock.lane("migration"):
            return co.call(lock, "k", refresh)
    m = pool.spawn(migration)
    while lock.statistics().lanes["migration"].waiting < 1:
        eventlet.sleep(0)
    lock.release()
    results = [t.wait() for t in threads] + [m.wait()]
    assert results == [1] * 31, results
    stale = []
    def churn():
        for _ in range(20):
            arrived = len(runs)
            started = co.call(lock, "k", refresh)
            if started <= arrived:
                stale.append((arrived, started))
    workers = [pool.spawn(churn) for _ in range(10)]
    for w in workers:
        w.wait()
    assert not stale, stale
    stats = co.statistics()
    assert stats.runs == len(runs) and stats.runs < stats.calls / 2, stats
    print("OK", stats.calls, stats.runs)
    """
)


def test_works_under_eventlet_in_a_fresh_process():
    pytest.importorskip("eventlet")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", EVENTLET_SCRIPT], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK"), proc.stdout
