"""The three local-lock benchmarks: each returns plain data (JSON-ready), prints nothing.

Within a repetition the variants run one after another in a rotating order (``_rotate``), so a
burst of noise on the shared machine hits them alike; callers report medians over repetitions.
Locks and threads are looked up in ``threading`` at call time: under ``eventlet.monkey_patch()``
the same code measures green threads.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import fairlock

from ._report import median

# Row labels: the tables, the JSON and the smoke test all use these (never two spaces in one).
THREADING_WITH = "threading.Lock with"
THREADING_CALLS = "threading.Lock acquire/release"
FAIRLOCK_WITH = "fairlock.Lock with"
FAIRLOCK_CALLS = "fairlock.Lock acquire/release"
FAIRLOCK_REGISTRY = "fairlock.lock(name)"
OSLO_DEFAULT = "oslo lockutils.lock(name)"
OSLO_FAIR = "oslo lockutils.lock(name, fair=True)"
FAIRLOCK_LOCKUTILS = "fairlock.lockutils.lock(name)"
OSLO_SYNCHRONIZED = "oslo @lockutils.synchronized(name)"
FAIRLOCK_SYNCHRONIZED = "fairlock @lockutils.synchronized(name)"
EMPTY_LOOP = "empty loop (overhead)"
THREADING = "threading.Lock"
PING_PONG = "floor: 2-thread ping-pong"
FAIRLOCK = "fairlock.Lock"
FAIRLOCK_FIFO = "fairlock.Lock FIFO"
FAIRLOCK_HIGH = "fairlock.Lock lane=high"


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is (FULL: the default run, a few minutes; QUICK: a smoke run)."""

    #: Target duration of one timed loop of the uncontended benchmark.
    loop_seconds: float
    #: Duration of one contended run, after a warm-up (until every thread is running, the first
    #: thread scheduled takes the lock uncontended: not what this benchmark is about).
    contended_seconds: float
    contended_warmup: float
    #: The contended benchmark runs once per number of threads (a table each).
    contended_threads: tuple[int, ...]
    handlers: tuple[int, ...]
    #: How long a handler holds the lock (sleeping inside the critical section).
    hold: float
    #: How long the handlers churn before the migration asks.
    churn: float
    #: A migration still waiting after this long is reported as starved.
    cap: float


FULL = Sizes(0.1, 0.15, 0.1, (16, 64), (1, 4, 16), 0.005, 0.1, 2.0)
QUICK = Sizes(0.01, 0.03, 0.02, (16,), (1, 4, 16), 0.005, 0.02, 0.2)


def optional_module(module: str) -> tuple[ModuleType | None, str]:
    """Import a module the benchmark can do without; (None, why) if it is missing or broken."""
    try:
        if importlib.util.find_spec(module) is None:
            return None, f"{module} is not installed"
    except ModuleNotFoundError:
        return None, f"{module} is not installed"
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # another engineer's module mid-edit must not stop the benchmark
        return None, f"import {module} failed: {type(exc).__name__}: {exc}"


def lockutils_or_none() -> ModuleType | None:
    lockutils, _ = optional_module("oslo_concurrency.lockutils")
    if lockutils is not None:
        # oslo's fair lock imports eventlet on construction; do that first import here, in the
        # main thread (a first eventlet import in a worker thread makes that thread unjoinable).
        lockutils.internal_fair_lock("fairlock-bench-warm-up")
    return lockutils


def _rotate(items: Sequence[Any], rep: int) -> list[Any]:
    """Repetition ``rep`` runs the variants in a rotated order: none always runs first."""
    k = rep % len(items)
    return list(items[k:]) + list(items[:k])


# -- 1. uncontended --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loop:
    label: str
    #: The row this one's ratio is taken against (threading.Lock in the same calling style).
    base: str
    #: n -> nanoseconds for n acquire+release pairs.
    timed: Callable[[int], int]


def _with_loop(lock: AbstractContextManager[Any]) -> Callable[[int], int]:
    def timed(n: int) -> int:
        rounds = itertools.repeat(None, n)
        start = time.perf_counter_ns()
        for _ in rounds:
            with lock:
                pass
        return time.perf_counter_ns() - start

    return timed


def _calls_loop(lock: Any) -> Callable[[int], int]:
    def timed(n: int) -> int:
        rounds = itertools.repeat(None, n)
        start = time.perf_counter_ns()
        for _ in rounds:
            lock.acquire()
            lock.release()
        return time.perf_counter_ns() - start

    return timed


def _named_loop(open_lock: Callable[[str], AbstractContextManager[Any]], name: str) -> Callable[[int], int]:
    def timed(n: int) -> int:
        rounds = itertools.repeat(None, n)
        start = time.perf_counter_ns()
        for _ in rounds:
            with open_lock(name):
                pass
        return time.perf_counter_ns() - start

    return timed


def _call_loop(function: Callable[[], Any]) -> Callable[[int], int]:
    def timed(n: int) -> int:
        rounds = itertools.repeat(None, n)
        start = time.perf_counter_ns()
        for _ in rounds:
            function()
        return time.perf_counter_ns() - start

    return timed


def _synchronized(module: ModuleType, name: str) -> Callable[[], None]:
    @module.synchronized(name)
    def critical_section() -> None:
        pass

    return critical_section  # type: ignore[no-any-return]


def _empty_loop(n: int) -> int:
    rounds = itertools.repeat(None, n)
    start = time.perf_counter_ns()
    for _ in rounds:
        pass
    return time.perf_counter_ns() - start


def _oslo_fair(lockutils: ModuleType) -> Callable[[str], AbstractContextManager[Any]]:
    def open_lock(name: str) -> AbstractContextManager[Any]:
        return lockutils.lock(name, fair=True)  # type: ignore[no-any-return]

    return open_lock


def _uncontended_loops(
    lockutils: ModuleType | None, shim: ModuleType | None, shim_missing: str
) -> tuple[list[_Loop], dict[str, str]]:
    loops = [
        _Loop(THREADING_WITH, THREADING_WITH, _with_loop(threading.Lock())),
        _Loop(THREADING_CALLS, THREADING_CALLS, _calls_loop(threading.Lock())),
        _Loop(FAIRLOCK_WITH, THREADING_WITH, _with_loop(fairlock.Lock("bench-with"))),
        _Loop(FAIRLOCK_CALLS, THREADING_CALLS, _calls_loop(fairlock.Lock("bench-calls"))),
        # Nobody else holds the name, so (as in nova) every use creates the lock afresh.
        _Loop(FAIRLOCK_REGISTRY, THREADING_WITH, _named_loop(fairlock.lock, "bench-registry")),
    ]
    skipped: dict[str, str] = {}
    if lockutils is not None:
        loops.append(_Loop(OSLO_DEFAULT, THREADING_WITH, _named_loop(lockutils.lock, "bench-oslo")))
        loops.append(_Loop(OSLO_FAIR, THREADING_WITH, _named_loop(_oslo_fair(lockutils), "bench-oslo-fair")))
        loops.append(_Loop(OSLO_SYNCHRONIZED, THREADING_WITH, _call_loop(_synchronized(lockutils, "bench-oslo-sync"))))
    else:
        skipped[OSLO_DEFAULT] = skipped[OSLO_FAIR] = skipped[OSLO_SYNCHRONIZED] = "oslo.concurrency is not installed"
    if shim is not None:
        loops.append(_Loop(FAIRLOCK_LOCKUTILS, THREADING_WITH, _named_loop(shim.lock, "bench-shim")))
        loops.append(_Loop(FAIRLOCK_SYNCHRONIZED, THREADING_WITH, _call_loop(_synchronized(shim, "bench-shim-sync"))))
    else:
        skipped[FAIRLOCK_LOCKUTILS] = skipped[FAIRLOCK_SYNCHRONIZED] = shim_missing
    loops.append(_Loop(EMPTY_LOOP, EMPTY_LOOP, _empty_loop))
    return loops, skipped


def _timed_without_gc(timed: Callable[[int], int], n: int) -> int:
    enabled = gc.isenabled()
    gc.disable()
    try:
        return timed(n)
    finally:
        if enabled:
            gc.enable()


def _calibrate(timed: Callable[[int], int], seconds: float) -> int:
    """Iterations for one timed loop of about ``seconds``."""
    n = 100
    while True:
        elapsed = _timed_without_gc(timed, n)
        if elapsed >= seconds * 1e8 or n >= 10**8:  # a tenth of the target: enough to scale
            return max(100, int(n * seconds * 1e9 / max(elapsed, 1)))
        n *= 10


#: Each repetition times every variant in this many slices, interleaved with the other variants.
SLICES = 10


def bench_uncontended(
    sizes: Sizes, reps: int, lockutils: ModuleType | None, shim: ModuleType | None, shim_missing: str
) -> dict[str, Any]:
    """ns per acquire+release pair. A repetition's figure for a variant is its best slice: the
    slices of all variants alternate every few milliseconds, and noise only ever adds time."""
    loops, skipped = _uncontended_loops(lockutils, shim, shim_missing)
    rounds = {loop.label: _calibrate(loop.timed, sizes.loop_seconds / SLICES) for loop in loops}
    samples: dict[str, list[float]] = {loop.label: [] for loop in loops}
    for rep in range(reps):
        best = {loop.label: math.inf for loop in loops}
        for piece in range(SLICES):
            for loop in _rotate(loops, rep + piece):
                n = rounds[loop.label]
                best[loop.label] = min(best[loop.label], _timed_without_gc(loop.timed, n) / n)
        for label, ns in best.items():
            samples[label].append(ns)
    medians = {label: median(values) for label, values in samples.items()}
    overhead = medians[EMPTY_LOOP]
    rows = []
    for loop in loops:
        ns, base = medians[loop.label], medians[loop.base]
        rows.append({
            "label": loop.label,
            "base": loop.base,
            "iterations_per_slice": rounds[loop.label],
            "ns": samples[loop.label],
            "median_ns": ns,
            "ratio": ns / base,
            "ratio_net": (ns - overhead) / max(base - overhead, 1e-9),
        })
    return {"slices": SLICES, "rows": rows, "skipped": skipped}


# -- 2. contended ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Contended:
    label: str
    #: name -> (what each acquisition enters, the fairlock.Lock to read statistics from or None).
    make: Callable[[str], tuple[Callable[[], AbstractContextManager[Any]], fairlock.Lock | None]]


def _object_lock(lock: Any) -> Callable[[], AbstractContextManager[Any]]:
    return lambda: lock


def _contended_variants(lockutils: ModuleType | None, shim: ModuleType | None) -> list[_Contended]:
    variants = [
        _Contended(THREADING, lambda name: (_object_lock(threading.Lock()), None)),
    ]
    if lockutils is not None:
        variants.append(_Contended(OSLO_DEFAULT, lambda name: (lambda: lockutils.lock(name), None)))
        variants.append(_Contended(OSLO_FAIR, lambda name: (lambda: lockutils.lock(name, fair=True), None)))

    def make_fairlock(name: str) -> tuple[Callable[[], AbstractContextManager[Any]], fairlock.Lock]:
        lock = fairlock.Lock(name)
        return _object_lock(lock), lock

    variants.append(_Contended(FAIRLOCK, make_fairlock))
    if shim is not None:
        variants.append(_Contended(FAIRLOCK_LOCKUTILS, lambda name: (lambda: shim.lock(name), None)))
    return variants


_names = itertools.count()


def _contended_once(variant: _Contended, sizes: Sizes, threads: int, yield_inside: bool) -> dict[str, Any]:
    enter, stats_lock = variant.make(f"bench-contended-{next(_names)}")
    hits = [0]
    stop = [False]
    go = threading.Event()

    def work() -> None:
        go.wait()
        while not stop[0]:
            with enter():
                hits[0] += 1

    def work_yielding() -> None:
        go.wait()
        while not stop[0]:
            with enter():
                hits[0] += 1
                time.sleep(0)  # a green thread yields only when it blocks: make it contend

    threads = [
        threading.Thread(target=work_yielding if yield_inside else work, daemon=True)
        for _ in range(threads)
    ]
    for thread in threads:
        thread.start()
    go.set()
    time.sleep(sizes.contended_warmup)
    before = stats_lock.statistics() if stats_lock is not None else None
    count, start = hits[0], time.perf_counter()
    time.sleep(sizes.contended_seconds)
    after = stats_lock.statistics() if stats_lock is not None else None
    count, elapsed = hits[0] - count, time.perf_counter() - start
    stop[0] = True
    for thread in threads:
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError(f"{variant.label}: a contended thread did not stop")
    result: dict[str, Any] = {"rate": count / elapsed}
    if before is not None and after is not None:
        grants = after.grants - before.grants
        result["handoff_share"] = (after.handoffs - before.handoffs) / max(grants, 1)
    return result


def _ping_pong_once(sizes: Sizes) -> dict[str, Any]:
    """Thread switches per second between two threads passing the turn through two plain locks:
    the most that any lock handing over at every release can reach (one switch per grant)."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()
    hits = [0]
    stop = [False]

    def serve() -> None:
        while True:
            ping.acquire()
            if stop[0]:
                pong.release()  # the driver may be waiting for its turn back
                return
            hits[0] += 2  # one switch here, one back
            pong.release()

    def drive() -> None:
        while not stop[0]:
            ping.release()
            pong.acquire()
        ping.release()  # the server took ping before giving the turn back: let it see stop

    threads = [threading.Thread(target=serve, daemon=True), threading.Thread(target=drive, daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(sizes.contended_warmup)
    count, start = hits[0], time.perf_counter()
    time.sleep(sizes.contended_seconds)
    count, elapsed = hits[0] - count, time.perf_counter() - start
    stop[0] = True
    for thread in threads:
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError("ping-pong: a thread did not stop")
    return {"rate": count / elapsed}


#: Each repetition runs every variant this many times, interleaved with the other variants.
SLICES_CONTENDED = 3


def bench_contended(
    sizes: Sizes, reps: int, lockutils: ModuleType | None, shim: ModuleType | None, mode: str, threads: int
) -> dict[str, Any]:
    variants = _contended_variants(lockutils, shim)
    yield_inside = mode == "eventlet"
    labels = [v.label for v in variants] + [PING_PONG]
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for rep in range(reps):
        # A repetition's figure for a variant is the median of its runs. (Not the best run: a
        # herd of woken waiters makes oslo's fair lock alternate between fast and collapsed runs,
        # which is its behaviour, not noise.)
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
        for piece in range(SLICES_CONTENDED):
            for variant in _rotate(variants + [None], rep + piece):
                if variant is None:
                    runs[PING_PONG].append(_ping_pong_once(sizes))
                else:
                    runs[variant.label].append(_contended_once(variant, sizes, threads, yield_inside))
        for label, done in runs.items():
            samples[label].append({
                key: median(run[key] for run in done) for key in done[0]
            })
    rows = []
    for label in labels:
        runs = samples[label]
        row: dict[str, Any] = {
            "label": label,
            "rates": [run["rate"] for run in runs],
            "median_rate": median(run["rate"] for run in runs),
        }
        if "handoff_share" in runs[0]:
            row["handoff_shares"] = [run["handoff_share"] for run in runs]
            row["median_handoff_share"] = median(row["handoff_shares"])
        rows.append(row)
    by_label = {row["label"]: row for row in rows}
    ratio, paired = None, None
    shim_ratio, shim_paired = None, None
    if OSLO_FAIR in by_label:
        ratio = by_label[FAIRLOCK]["median_rate"] / by_label[OSLO_FAIR]["median_rate"]
        # The two ran within a second of each other: a per-repetition ratio is less exposed to
        # the machine's slow drifts than the ratio of the medians.
        paired = [f / o for f, o in zip(by_label[FAIRLOCK]["rates"], by_label[OSLO_FAIR]["rates"])]
        if FAIRLOCK_LOCKUTILS in by_label:
            shim_ratio = by_label[FAIRLOCK_LOCKUTILS]["median_rate"] / by_label[OSLO_FAIR]["median_rate"]
            shim_paired = [
                f / o for f, o in zip(by_label[FAIRLOCK_LOCKUTILS]["rates"], by_label[OSLO_FAIR]["rates"])
            ]
    return {
        "threads": threads,
        "seconds": sizes.contended_seconds,
        "slices": SLICES_CONTENDED,
        "critical_section": "time.sleep(0)" if yield_inside else "empty",
        "rows": rows,
        "ratio_fairlock_to_oslo_fair": ratio,
        "paired_ratios_fairlock_to_oslo_fair": paired,
        "ratio_lockutils_to_oslo_fair": shim_ratio,
        "paired_ratios_lockutils_to_oslo_fair": shim_paired,
    }


# -- 3. starvation ---------------------------------------------------------------------------------

_Section = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class _Contender:
    label: str
    #: name -> (how a handler takes the lock, how the migration takes it).
    make: Callable[[str], tuple[_Section, _Section]]


@contextmanager
def _in_lane(lock: fairlock.Lock, lane: str) -> Iterator[None]:
    lock.acquire(lane=lane)
    try:
        yield
    finally:
        lock.release()


def _starvation_variants(lockutils: ModuleType | None, shim: ModuleType | None) -> list[_Contender]:
    variants = []
    if lockutils is not None:
        def oslo(name: str) -> tuple[_Section, _Section]:
            section = lambda: lockutils.lock(name)  # noqa: E731
            return section, section

        def oslo_fair(name: str) -> tuple[_Section, _Section]:
            section = lambda: lockutils.lock(name, fair=True)  # noqa: E731
            return section, section

        variants += [_Contender(OSLO_DEFAULT, oslo), _Contender(OSLO_FAIR, oslo_fair)]

    def fifo(name: str) -> tuple[_Section, _Section]:
        lock = fairlock.Lock(name)
        return _object_lock(lock), _object_lock(lock)

    def high(name: str) -> tuple[_Section, _Section]:
        lock = fairlock.Lock(name)  # handlers queue in the default lane, "normal"
        return _object_lock(lock), lambda: _in_lane(lock, "high")

    variants += [_Contender(FAIRLOCK_FIFO, fifo), _Contender(FAIRLOCK_HIGH, high)]
    if shim is not None:
        def shim_lock(name: str) -> tuple[_Section, _Section]:
            section = lambda: shim.lock(name)  # noqa: E731
            return section, section

        variants.append(_Contender(FAIRLOCK_LOCKUTILS, shim_lock))
    return variants


def _starvation_once(variant: _Contender, handlers: int, sizes: Sizes) -> dict[str, Any]:
    handler_section, migration_section = variant.make(f"bench-starvation-{next(_names)}")
    sequence = itertools.count()
    # (request sequence number, is the migration, grant time), appended in grant order: the
    # append runs inside the critical section, so the list order is the order of owners.
    grants: list[tuple[int, bool, float]] = []
    stop = [False]
    ask = threading.Event()
    migration: dict[str, float] = {}

    def handler() -> None:
        while not stop[0]:
            ticket = next(sequence)
            with handler_section():
                grants.append((ticket, False, time.perf_counter()))
                if not stop[0]:
                    time.sleep(sizes.hold)

    def migrate() -> None:
        ask.wait()
        ticket = next(sequence)
        asked = time.perf_counter()
        with migration_section():
            granted = time.perf_counter()
            grants.append((ticket, True, granted))
        migration.update(ticket=ticket, asked=asked, granted=granted)

    threads = [threading.Thread(target=handler, daemon=True) for _ in range(handlers)]
    migrant = threading.Thread(target=migrate, daemon=True)
    for thread in threads + [migrant]:
        thread.start()
    time.sleep(sizes.churn)
    ask.set()
    migrant.join(sizes.cap + 0.05)
    stop[0] = True  # past the cap: handlers stop re-asking, so the migration gets the lock
    for thread in [migrant] + threads:
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError(f"{variant.label}: a starvation thread did not stop")
    ticket, asked = int(migration["ticket"]), migration["asked"]
    wait = migration["granted"] - asked
    starved = wait > sizes.cap
    horizon = asked + sizes.cap
    before = grants[: grants.index((ticket, True, migration["granted"]))]
    overtakes = sum(1 for seq, _, at in before if seq > ticket and at < horizon)
    return {"overtakes": overtakes, "wait": min(wait, sizes.cap), "starved": starved}


def bench_starvation(
    sizes: Sizes, reps: int, lockutils: ModuleType | None, shim: ModuleType | None
) -> dict[str, Any]:
    variants = _starvation_variants(lockutils, shim)
    cases = [(variant, n) for n in sizes.handlers for variant in variants]
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {(v.label, n): [] for v, n in cases}
    for rep in range(reps):
        for variant, n in _rotate(cases, rep):
            samples[variant.label, n].append(_starvation_once(variant, n, sizes))
    rows = []
    for variant, n in sorted(cases, key=lambda case: (variants.index(case[0]), case[1])):
        runs = samples[variant.label, n]
        waits = [run["wait"] for run in runs]
        mid = median(waits)
        rows.append({
            "label": variant.label,
            "handlers": n,
            "overtakes": [run["overtakes"] for run in runs],
            "waits": waits,
            "starved": [run["starved"] for run in runs],
            "median_overtakes": median(run["overtakes"] for run in runs),
            "median_wait": mid,
            # The median run hit the cap: its wait and overtakes are lower bounds.
            "median_starved": mid >= sizes.cap,
        })
    return {"hold": sizes.hold, "cap": sizes.cap, "churn": sizes.churn, "rows": rows}
