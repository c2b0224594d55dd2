"""Benchmarks of the in-process lock: ``python -m fairlock bench local``.

Three benchmarks, each run with native threads and with eventlet green threads:

1. Uncontended acquire+release, ns per pair, against threading.Lock and oslo.concurrency.
2. Contended acquisitions per second: 16 threads on one lock, empty critical section.
3. Starvation: one "migration" asks for a lock that N "handlers" keep re-taking (5 ms holds).
   An overtake is a handler acquisition requested after the migration's request (by a global
   sequence number taken just before calling acquire) and granted before the migration.

Every figure is the median over ``--reps`` repetitions, and within each repetition the variants
run one after another (in a rotating order), so a noisy machine disturbs them alike: read the
ratios, not the absolute figures. Overtake counts are properties of the lock, not timings.

Eventlet mode runs in a fresh interpreter whose first statement is ``eventlet.monkey_patch()``;
fairlock never imports eventlet (in native mode oslo.concurrency's fair lock imports it, unpatched).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, replace
from types import ModuleType
from typing import Any

import fairlock
from fairlock._primitives import green_mode

from ._report import Table, fmt, machine, median, progress

__all__ = ["HELP", "add_arguments", "run", "measure", "Sizes", "FULL", "QUICK"]

HELP = "fairlock.Lock vs threading.Lock and oslo.concurrency: uncontended, contended, starvation"

MODES = ("native", "eventlet")

# Row labels: the tables, the JSON and the smoke test all use these (never two spaces in one).
THREADING_WITH = "threading.Lock with"
THREADING_CALLS = "threading.Lock acquire/release"
FAIRLOCK_WITH = "fairlock.Lock with"
FAIRLOCK_CALLS = "fairlock.Lock acquire/release"
FAIRLOCK_REGISTRY = "fairlock.lock(name)"
OSLO_DEFAULT = "oslo lockutils.lock(name)"
OSLO_FAIR = "oslo lockutils.lock(name, fair=True)"
FAIRLOCK_LOCKUTILS = "fairlock.lockutils.lock(name)"
EMPTY_LOOP = "empty loop (overhead)"
THREADING = "threading.Lock"
FAIRLOCK = "fairlock.Lock"
FAIRLOCK_FIFO = "fairlock.Lock FIFO"
FAIRLOCK_HIGH = "fairlock.Lock lane=high"

# The eventlet child: monkey patching comes first, before threading users such as fairlock are
# imported (only the warning filters for eventlet's and oslo's deprecation notices precede it).
_CHILD_BOOTSTRAP = (
    "import warnings; "
    "warnings.filterwarnings('ignore', message=r'\\s*Eventlet is deprecated'); "
    "warnings.filterwarnings('ignore', category=DeprecationWarning); "
    "import eventlet; eventlet.monkey_patch(); "
    "import sys; from fairlock.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


@dataclass(frozen=True)
class Sizes:
    #: Target duration of one timed loop of the uncontended benchmark.
    loop_seconds: float
    #: Duration of one contended run.
    contended_seconds: float
    contended_threads: int
    handlers: tuple[int, ...]
    #: How long a handler holds the lock (sleeping inside the critical section).
    hold: float
    #: How long the handlers churn before the migration asks.
    churn: float
    #: A migration still waiting after this long is reported as starved.
    cap: float


FULL = Sizes(0.1, 0.5, 16, (1, 4, 16), 0.005, 0.1, 2.0)
QUICK = Sizes(0.01, 0.1, 16, (1, 4, 16), 0.005, 0.05, 0.5)


def _optional(module: str) -> tuple[ModuleType | None, str]:
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


def _lockutils() -> ModuleType | None:
    lockutils, _ = _optional("oslo_concurrency.lockutils")
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


def _uncontended_loops(lockutils: ModuleType | None) -> tuple[list[_Loop], dict[str, str]]:
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
    else:
        skipped[OSLO_DEFAULT] = skipped[OSLO_FAIR] = "oslo.concurrency is not installed"
    shim, why = _optional("fairlock.lockutils")
    if shim is not None:
        loops.append(_Loop(FAIRLOCK_LOCKUTILS, THREADING_WITH, _named_loop(shim.lock, "bench-shim")))
    else:
        skipped[FAIRLOCK_LOCKUTILS] = why
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


def bench_uncontended(sizes: Sizes, reps: int, lockutils: ModuleType | None) -> dict[str, Any]:
    loops, skipped = _uncontended_loops(lockutils)
    rounds = {loop.label: _calibrate(loop.timed, sizes.loop_seconds) for loop in loops}
    samples: dict[str, list[float]] = {loop.label: [] for loop in loops}
    for rep in range(reps):
        for loop in _rotate(loops, rep):
            n = rounds[loop.label]
            samples[loop.label].append(_timed_without_gc(loop.timed, n) / n)
    medians = {label: median(values) for label, values in samples.items()}
    overhead = medians[EMPTY_LOOP]
    rows = []
    for loop in loops:
        ns, base = medians[loop.label], medians[loop.base]
        rows.append({
            "label": loop.label,
            "base": loop.base,
            "iterations": rounds[loop.label],
            "ns": samples[loop.label],
            "median_ns": ns,
            "ratio": ns / base,
            "ratio_net": (ns - overhead) / max(base - overhead, 1e-9),
        })
    return {"rows": rows, "skipped": skipped}


# -- 2. contended ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Contended:
    label: str
    #: name -> (what each acquisition enters, the fairlock.Lock to read statistics from or None).
    make: Callable[[str], tuple[Callable[[], AbstractContextManager[Any]], fairlock.Lock | None]]


def _object_lock(lock: Any) -> Callable[[], AbstractContextManager[Any]]:
    return lambda: lock


def _contended_variants(lockutils: ModuleType | None) -> list[_Contended]:
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
    return variants


_names = itertools.count()


def _contended_once(variant: _Contended, sizes: Sizes, yield_inside: bool) -> dict[str, Any]:
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
        for _ in range(sizes.contended_threads)
    ]
    for thread in threads:
        thread.start()
    go.set()
    start = time.perf_counter()
    time.sleep(sizes.contended_seconds)
    stop[0] = True
    count, elapsed = hits[0], time.perf_counter() - start
    for thread in threads:
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError(f"{variant.label}: a contended thread did not stop")
    result: dict[str, Any] = {"rate": count / elapsed}
    if stats_lock is not None:
        stats = stats_lock.statistics()
        result["handoff_share"] = stats.handoffs / max(stats.grants, 1)
    return result


def bench_contended(sizes: Sizes, reps: int, lockutils: ModuleType | None, mode: str) -> dict[str, Any]:
    variants = _contended_variants(lockutils)
    yield_inside = mode == "eventlet"
    samples: dict[str, list[dict[str, Any]]] = {v.label: [] for v in variants}
    for rep in range(reps):
        for variant in _rotate(variants, rep):
            samples[variant.label].append(_contended_once(variant, sizes, yield_inside))
    rows = []
    for variant in variants:
        runs = samples[variant.label]
        row: dict[str, Any] = {
            "label": variant.label,
            "rates": [run["rate"] for run in runs],
            "median_rate": median(run["rate"] for run in runs),
        }
        if "handoff_share" in runs[0]:
            row["handoff_shares"] = [run["handoff_share"] for run in runs]
            row["median_handoff_share"] = median(row["handoff_shares"])
        rows.append(row)
    by_label = {row["label"]: row for row in rows}
    ratio = None
    if OSLO_FAIR in by_label:
        ratio = by_label[FAIRLOCK]["median_rate"] / by_label[OSLO_FAIR]["median_rate"]
    return {
        "threads": sizes.contended_threads,
        "seconds": sizes.contended_seconds,
        "critical_section": "time.sleep(0)" if yield_inside else "empty",
        "rows": rows,
        "ratio_fairlock_to_oslo_fair": ratio,
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


def _starvation_variants(lockutils: ModuleType | None) -> list[_Contender]:
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


def bench_starvation(sizes: Sizes, reps: int, lockutils: ModuleType | None) -> dict[str, Any]:
    variants = _starvation_variants(lockutils)
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


# -- one mode --------------------------------------------------------------------------------------


def measure(mode: str, sizes: Sizes, reps: int) -> dict[str, Any]:
    """All three benchmarks in this process (already monkey patched for mode "eventlet")."""
    lockutils = _lockutils()
    progress(f"{mode}: uncontended acquire+release ({reps} reps)")
    uncontended = bench_uncontended(sizes, reps, lockutils)
    progress(f"{mode}: contended, {sizes.contended_threads} threads ({reps} reps)")
    contended = bench_contended(sizes, reps, lockutils, mode)
    progress(f"{mode}: starvation, handlers {list(sizes.handlers)} ({reps} reps)")
    starvation = bench_starvation(sizes, reps, lockutils)
    return {"mode": mode, "uncontended": uncontended, "contended": contended, "starvation": starvation}


def _child_command(args: argparse.Namespace) -> list[str]:
    command = [
        sys.executable, "-c", _CHILD_BOOTSTRAP,
        "bench", "local", "--mode", "eventlet", "--child", "--reps", str(args.reps),
    ]
    if args.quick:
        command.append("--quick")
    if args.cap is not None:
        command += ["--cap", str(args.cap)]
    return command


def _measure_in_child(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    # The child must import this very fairlock, installed or not.
    source = os.path.dirname(os.path.dirname(os.path.abspath(fairlock.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    done = subprocess.run(_child_command(args), stdout=subprocess.PIPE, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the eventlet benchmark exited with status {done.returncode}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# -- tables ----------------------------------------------------------------------------------------

_MODE_TITLES = {"native": "native threads", "eventlet": "eventlet green threads"}


def _rows_by(results: dict[str, Any], bench: str, *key: str) -> dict[Any, dict[str, Any]]:
    rows = results[bench]["rows"]
    return {tuple(row[k] for k in key) if len(key) > 1 else row[key[0]]: row for row in rows}


def _labels(all_results: dict[str, dict[str, Any]], bench: str) -> list[str]:
    labels: list[str] = []
    for results in all_results.values():
        for row in results[bench]["rows"]:
            if row["label"] not in labels:
                labels.append(row["label"])
    return labels


def _groups(modes: Sequence[str], first: int, span: int) -> list[tuple[int, int, str]]:
    return [(first + i * span, span, _MODE_TITLES[mode]) for i, mode in enumerate(modes)]


def uncontended_table(all_results: dict[str, dict[str, Any]], reps: int) -> Table:
    modes = list(all_results)
    table = Table(
        title=f"1. Uncontended acquire+release, ns per pair (median of {reps})",
        headers=["variant"] + ["ns/pair", "x threading", "x net"] * len(modes),
        align=["<"] + [">"] * 3 * len(modes),
        groups=_groups(modes, 1, 3),
        notes=[
            "x threading: ratio to threading.Lock in the same style (with, or acquire/release);",
            "x net: the same ratio after subtracting the empty loop. Under eventlet,",
            "threading.Lock is eventlet's green lock.",
        ],
    )
    rows = {mode: _rows_by(results, "uncontended", "label") for mode, results in all_results.items()}
    for label in _labels(all_results, "uncontended"):
        cells = [label]
        for mode in modes:
            row = rows[mode].get(label)
            if row is None:
                cells += ["n/a", "-", "-"]
            elif label == EMPTY_LOOP:
                cells += [fmt(row["median_ns"], 1), "-", "-"]
            else:
                cells += [fmt(row["median_ns"], 1), fmt(row["ratio"], 2), fmt(row["ratio_net"], 2)]
        table.rows.append(cells)
    skipped = {label: why for r in all_results.values() for label, why in r["uncontended"]["skipped"].items()}
    table.notes = list(table.notes) + [f"not run: {label}: {why}" for label, why in skipped.items()]
    return table


def contended_table(all_results: dict[str, dict[str, Any]], reps: int) -> Table:
    modes = list(all_results)
    first = next(iter(all_results.values()))["contended"]
    sections = ", ".join(f"{m}: {r['contended']['critical_section']}" for m, r in all_results.items())
    table = Table(
        title=(
            f"2. Contended: {first['threads']} threads, acquisitions per second "
            f"(median of {reps} runs of {first['seconds']:g} s)"
        ),
        headers=["variant"] + ["acq/s", "x oslo fair", "handoffs %"] * len(modes),
        align=["<"] + [">"] * 3 * len(modes),
        groups=_groups(modes, 1, 3),
        notes=[
            f"critical section: {sections}.",
            "handoffs %: share of fairlock grants made by direct handoff at release "
            "(lock.statistics()).",
        ],
    )
    rows = {mode: _rows_by(results, "contended", "label") for mode, results in all_results.items()}
    for label in _labels(all_results, "contended"):
        cells = [label]
        for mode in modes:
            row = rows[mode].get(label)
            fair = rows[mode].get(OSLO_FAIR)
            if row is None:
                cells += ["n/a", "-", "-"]
                continue
            cells.append(fmt(row["median_rate"]))
            cells.append(fmt(row["median_rate"] / fair["median_rate"], 2) if fair else "-")
            share = row.get("median_handoff_share")
            cells.append(fmt(100 * share, 1) if share is not None else "-")
        table.rows.append(cells)
    return table


def starvation_table(all_results: dict[str, dict[str, Any]], reps: int) -> Table:
    modes = list(all_results)
    first = next(iter(all_results.values()))["starvation"]
    cap_ms = 1000 * first["cap"]
    table = Table(
        title=(
            f"3. Starvation: one migration vs N handlers holding {1000 * first['hold']:g} ms "
            f"(median of {reps})"
        ),
        headers=["variant", "N"] + ["overtakes", "wait ms", "starved"] * len(modes),
        align=["<", ">"] + [">"] * 3 * len(modes),
        groups=_groups(modes, 2, 3),
        notes=[
            "overtakes: handler acquisitions requested after the migration and granted before it.",
            f"starved: runs (of {reps}) in which the migration still waited after the "
            f"{cap_ms:g} ms cap; then the figures are lower bounds (>=).",
        ],
    )
    rows = {mode: _rows_by(results, "starvation", "label", "handlers") for mode, results in all_results.items()}
    keys: list[tuple[str, int]] = []
    for results in all_results.values():
        for row in results["starvation"]["rows"]:
            if (row["label"], row["handlers"]) not in keys:
                keys.append((row["label"], row["handlers"]))
    for label, n in keys:
        cells = [label, str(n)]
        for mode in modes:
            row = rows[mode].get((label, n))
            if row is None:
                cells += ["n/a", "-", "-"]
                continue
            bound = ">=" if row["median_starved"] else ""
            cells.append(bound + fmt(row["median_overtakes"]))
            cells.append(bound + fmt(1000 * row["median_wait"], 1))
            cells.append(f"{sum(row['starved'])}/{len(row['starved'])}")
        table.rows.append(cells)
    return table


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def verdicts(all_results: dict[str, dict[str, Any]]) -> list[str]:
    """The goals of issue 2, section 5: each with the measured figure and met / MISSED."""
    lines = []
    for mode, results in all_results.items():
        unc = _rows_by(results, "uncontended", "label")
        for label in (FAIRLOCK_WITH, FAIRLOCK_CALLS):
            row = unc[label]
            lines.append(
                f"{mode}: {label}: {row['ratio']:.2f}x threading.Lock (net {row['ratio_net']:.2f}x); "
                f"goal <= 3x: {_met(row['ratio'] <= 3)}"
            )
        ratio = results["contended"]["ratio_fairlock_to_oslo_fair"]
        if ratio is not None:
            lines.append(f"{mode}: contended fairlock.Lock / oslo fair: {ratio:.2f}x; goal >= 2x: {_met(ratio >= 2)}")
        overtaken = [
            f"{row['label']} N={row['handlers']}"
            for row in results["starvation"]["rows"]
            if row["label"] in (FAIRLOCK_FIFO, FAIRLOCK_HIGH) and max(row["overtakes"]) > 0
        ]
        lines.append(
            f"{mode}: fairlock FIFO and lane=high overtakes: "
            + (f"non-zero in {', '.join(overtaken)}" if overtaken else "0 in every run")
            + f"; goal 0: {_met(not overtaken)}"
        )
    return lines


def render(all_results: dict[str, dict[str, Any]], reps: int) -> str:
    parts = [
        uncontended_table(all_results, reps).render(),
        contended_table(all_results, reps).render(),
        starvation_table(all_results, reps).render(),
        "Goals\n=====\n" + "\n".join(verdicts(all_results)),
    ]
    return "\n\n".join(parts)


# -- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=5, help="repetitions per case (default 5)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    parser.add_argument("--json", metavar="FILE", help="also write the results, every repetition, as JSON")
    parser.add_argument("--mode", choices=("native", "eventlet", "both"), default="both",
                        help="native threads, eventlet green threads (in a subprocess), or both")
    parser.add_argument("--cap", type=float, default=None,
                        help="seconds after which a waiting migration counts as starved "
                             f"(default {FULL.cap:g}, {QUICK.cap:g} with --quick)")
    # Internal: this process is the monkey-patched eventlet child; print JSON, no tables.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.reps < 1:
        print("fairlock bench local: --reps must be >= 1", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    if args.cap is not None:
        sizes = replace(sizes, cap=args.cap)
    if args.child:
        if not green_mode():
            print("fairlock bench local: --child runs only under eventlet.monkey_patch()", file=sys.stderr)
            return 2
        json.dump(measure("eventlet", sizes, args.reps), sys.stdout)
        return 0
    modes = list(MODES) if args.mode == "both" else [args.mode]
    if "eventlet" in modes and importlib.util.find_spec("eventlet") is None:
        if args.mode == "eventlet":
            print("fairlock bench local: eventlet is not installed", file=sys.stderr)
            return 2
        progress("eventlet is not installed: native mode only")
        modes.remove("eventlet")
    started = time.perf_counter()
    about = machine()
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        results[mode] = measure(mode, sizes, args.reps) if mode == "native" else _measure_in_child(args)
    about["load_average_after"] = machine()["load_average"]
    print(f"fairlock bench local --reps {args.reps}{' --quick' if args.quick else ''}: "
          f"{about['cpus']} CPUs, {about['python']}, load average {about['load_average']}, "
          f"took {time.perf_counter() - started:.0f} s")
    print()
    print(render(results, args.reps))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"machine": about, "reps": args.reps, "sizes": asdict(sizes), "results": results},
                      out, indent=2)
            out.write("\n")
    return 0
