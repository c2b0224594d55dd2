"""Load on the in-process lock (issue 6): 1,000 waiters on one lock, 100,000 names churned.

The short form of ``python -m fairlock bench load``. Order and counts are asserted exactly; the
one timing assertion (per-handoff cost flat in the queue length) compares the median handoff at
1,000 waiters with the one at 10, each a median over repetitions made within seconds of each
other, against a bound far below what a cost growing with N would give (about 100x).
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

import fairlock
import fairlock.local
from benchmarks._load_handoff import (
    FairlockSubject,
    handoff_chain,
    inversions,
    median_handoff_us,
)
from benchmarks._load_memory import Churner, measure_once
from fairlock.registry import default_registry

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10, 100, 1000)
REPS = 3
#: Each repetition times at least this many handoffs at every N (23 chains of 10 waiters, ...).
HANDOFFS = 200
#: The median handoff at N = 1,000 over the one at N = 10 must stay below this (flat is about 1).
FLAT_BOUND = 5.0
NAMES = 100_000
MIB = 1024 * 1024
#: Python memory blocks left after a churn must stay below this (one lock per name: about 20 each).
BLOCKS_BOUND = 1000


def test_inversions_counts_pairs_out_of_order() -> None:
    assert inversions([0, 1, 2, 3]) == 0
    assert inversions([1, 0, 2, 3]) == 1
    assert inversions([3, 2, 1, 0]) == 6


class _CountingParker:
    """A waiter's parker that records every wake-up: whether the woken waiter already owned the
    lock (a handoff) or not (a herd or a spurious wake-up)."""

    def __init__(self, inner: Any, lock: list[fairlock.Lock], wakes: list[bool]) -> None:
        self._inner, self._lock, self._wakes = inner, lock, wakes

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        woke = self._inner.acquire(blocking, timeout)
        if woke:
            self._wakes.append(self._lock[0].owned())
        return woke

    def release(self) -> None:
        self._inner.release()


def measure(prefix: str) -> dict[str, Any]:
    """Chains of 10, 100 and 1,000 waiters on fresh fairlock.Locks, REPS times: the median
    handoff per repetition and N, and the facts of every chain. Plain data: the green child
    (below) runs this too and prints it."""
    threads_before = threading.active_count()
    current: list[fairlock.Lock] = []
    wakes: list[bool] = []
    make_parker = fairlock.local.new_parker
    fairlock.local.new_parker = lambda: _CountingParker(make_parker(), current, wakes)  # type: ignore
    cost: dict[int, list[float]] = {n: [] for n in SIZES}
    chains: list[dict[str, Any]] = []
    try:
        for rep in range(REPS):
            for n in SIZES:
                taken = []
                for run in range(math.ceil(HANDOFFS / (n - 1))):
                    subject = FairlockSubject(f"{prefix}-{rep}-{n}-{run}")
                    current[:] = [subject.lock]
                    wakes.clear()
                    chain = handoff_chain(subject, n, timeout=60)
                    stats = subject.lock.statistics()
                    chains.append({
                        "n": n, "in_order": chain.order == tuple(range(n)),
                        "inversions": inversions(chain.order), "handoffs": chain.handoffs,
                        "left": chain.left, "wakes": len(wakes), "wakes_of_owner": sum(wakes),
                        "grants": stats.grants, "queued_grants": stats.lanes["normal"].queued_grants,
                        "gave_up": stats.lanes["normal"].timeouts + stats.lanes["normal"].cancels,
                        "waiting": stats.waiting, "owner": stats.owner, "locked": subject.lock.locked(),
                        "held_lock": type(subject.lock._guard()).__module__,  # the mutex, made at first use
                    })
                    taken.append(chain)
                cost[n].append(median_handoff_us(taken))
    finally:
        fairlock.local.new_parker = make_parker
    return {"cost": cost, "chains": chains, "threads_before": threads_before,
            "threads_after": threading.active_count()}


def _check(result: dict[str, Any], green: bool) -> None:
    assert result["threads_after"] == result["threads_before"], "waiters left behind"
    for chain in result["chains"]:
        n = chain["n"]
        assert chain["held_lock"].startswith("eventlet") == green, chain  # green iff patched
        # Granted in arrival order.
        assert chain["in_order"] and chain["inversions"] == 0, chain
        # N releases (the holder's, then N - 1 waiters'): N handoffs, N wake-ups, each of the
        # waiter that had just been made the owner: exactly one wake-up per release.
        assert chain["handoffs"] == chain["queued_grants"] == n, chain
        assert chain["grants"] == n + 1, chain  # and the holder's uncontended grant
        assert chain["wakes"] == chain["wakes_of_owner"] == n, chain
        assert chain["gave_up"] == 0 and chain["left"] == 0, chain
        assert chain["waiting"] == 0 and chain["owner"] is None and not chain["locked"], chain
    cost = {int(n): values for n, values in result["cost"].items()}
    assert all(len(values) == REPS for values in cost.values())
    flat = statistics.median(cost[max(SIZES)]) / statistics.median(cost[min(SIZES)])
    assert flat < FLAT_BOUND, cost


def test_1000_native_threads_fifo_one_wakeup_per_release_flat_cost() -> None:
    _check(measure("load-native"), green=False)


# The green child: monkey patching first, then the same measurement with green threads.
GREEN_CHILD = """
import json, sys, warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
import eventlet
eventlet.monkey_patch()
from fairlock._primitives import green_mode
assert green_mode()
from tests.test_load_local import measure
json.dump(measure("load-green"), sys.stdout)
"""


def test_1000_greenlets_under_monkey_patching_fifo_one_wakeup_per_release_flat_cost() -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    done = subprocess.run(
        [sys.executable, "-c", GREEN_CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _check(json.loads(done.stdout), green=True)


# -- the benchmark command -------------------------------------------------------------------------


@pytest.mark.usefixtures("churn_children")
def test_bench_load_quick_smoke(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, "-m", "fairlock", "bench", "load", "--quick", "--reps", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert text.startswith("python -m fairlock bench load --reps 1 --quick:")
    assert "1. Per-handoff cost" in text and "distinct names created" in text
    for label in ("fairlock.Lock", "fairlock.lockutils.lock(name)", "oslo lockutils.lock(name, fair=True)",
                  "threading.Lock", "fairlock.lock(name)", "fairlock.get_lock(name)"):
        assert re.search(rf"^{re.escape(label)}  ", text, re.MULTILINE), label
    goals = text.split("Goals", 1)[1]
    # Timings may miss a goal on a loaded machine; order, counts and registries may not.
    for mode in ("native", "eventlet"):
        assert f"{mode}: fairlock grant order and handoffs: 0 inversions" in goals
    assert "registries after 1000 names: empty in every run; goal: met" in goals
    results = json.loads(out.read_text())
    for mode in ("native", "eventlet"):
        for row in results["handoff"][mode]["rows"]:
            if row["label"] in ("fairlock.Lock", "fairlock.lockutils.lock(name)"):
                assert set(row["inversions"]) == {0}, row
                assert set(row["handoffs"]) == {row["waiters"]} and all(row["in_order"]), row
    for key, runs in results["memory"]["runs"].items():
        for run in runs:
            assert run["registry_after"] == run["registry_before"], (key, run)


# -- 100,000 names ---------------------------------------------------------------------------------


# Each churn runs in a fresh interpreter through the benchmark's own code (a clean baseline, and
# the pytest process's large heap does not slow the traced churn down); the two run side by side.
CHURN_CHILD = """
import json, sys
from benchmarks._load_memory import measure_churner
json.dump(measure_churner(sys.argv[1], int(sys.argv[2]), [("one", sys.argv[3] == "traced")]), sys.stdout)
"""


@pytest.fixture(scope="module")
def churn_children() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """100,000 names one at a time: through fairlock.lock() traced by tracemalloc, and through
    the lockutils drop-in untraced (tracing slows it fourfold; the block count is exact anyway).
    Started by the smoke test (below), so they run beside it, which asserts no timing."""
    jobs = {"lock": "traced", "lockutils": "untraced"}
    children = {
        key: subprocess.Popen(
            [sys.executable, "-c", CHURN_CHILD, key, str(NAMES), kind], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for key, kind in jobs.items()
    }
    yield children
    for child in children.values():  # never waited for when only the smoke test ran
        if child.poll() is None:
            child.kill()
            child.communicate()


@pytest.fixture(scope="module")
def churned(churn_children: dict[str, subprocess.Popen[str]]) -> dict[str, dict[str, Any]]:
    results = {}
    for key, child in churn_children.items():
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err[-3000:]
        [results[key]] = json.loads(out)
    return results


def _check_churn(run: dict[str, Any]) -> None:
    assert run["names"] == NAMES and run["pattern"] == "one"
    assert run["registry_before"] == run["registry_after"] == 0, run
    # A lock left behind per name would leave about 20 blocks each: 2,000,000.
    assert run["blocks_after"] - run["blocks_base"] < BLOCKS_BOUND, run


def test_100k_names_through_fairlock_lock_leave_nothing(churned: dict[str, dict[str, Any]]) -> None:
    run = churned["lock"]
    _check_churn(run)
    assert run["traced"] and run["traced_after"] - run["traced_base"] < MIB, run


def test_100k_names_through_the_lockutils_dropin_leave_nothing(churned: dict[str, dict[str, Any]]) -> None:
    _check_churn(churned["lockutils"])


def test_the_memory_bounds_catch_a_leak() -> None:
    """Teeth: the same measurement, with every lock kept alive (as a registry holding strong
    references would), breaks every bound."""
    kept: list[Any] = []

    def keep(_: Any, name: str) -> AbstractContextManager[Any]:
        kept.append(fairlock.get_lock(name))
        return kept[-1]

    leaky = Churner("leaky", "leaky", None, keep, lambda _: len(default_registry))
    run = measure_once(leaky, None, "one", 10_000, traced=True)
    assert run["registry_after"] - run["registry_before"] == 10_000
    assert run["blocks_after"] - run["blocks_base"] > BLOCKS_BOUND
    assert run["traced_after"] - run["traced_base"] > MIB
    kept.clear()
    gc.collect()
    assert len(default_registry) == run["registry_before"]
