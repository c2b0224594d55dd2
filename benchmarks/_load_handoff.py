"""The handoff chain: N waiters parked on one lock, then N handoffs in a row.

One run of :func:`handoff_chain`:

1. The main thread takes the lock; N threads are started one at a time, and the next one starts
   only once the lock reports one more queued waiter, so the start order is the arrival order.
2. The main thread releases; each waiter, once granted, records the time and its arrival index
   and releases, which hands the lock to the next. The garbage collector is off meanwhile (with
   N threads alive, a collection costs more the more threads there are: not the lock's cost).
   The duration of a handoff is the time from one grant to the next. The first one, from the
   main thread's release, is kept apart: the main thread then goes to sleep, and the first
   waiter's wake-up often has to wake an idle CPU, up to a few milliseconds on a virtual
   machine: a fixed cost per run that would make small N look dearer per handoff than it is.
   Per handoff = (last grant - first grant) / (N - 1).
3. A granted waiter then blocks on an event until the run is over, so thread exits do not run
   between handoffs. All threads are joined before the run returns.

A single run of 10 waiters lasts about half a millisecond, so one scheduling hiccup can double
it. :func:`sample` therefore runs chains of N waiters until they have made as many handoffs as
one run at the largest N (111 runs of 10 waiters, 11 of 100, 1 of 1,000): every N is measured
over about the same number of handoffs. The figure is their median (:func:`median_handoff_us`),
which a hiccup does not move; their mean (:func:`us_per_handoff`) is reported beside it.

Locks that cannot count their waiters (``threading.Lock``) are synchronised on the waiter's
own announcement, made just before it calls ``acquire``: with native threads it may not have
blocked yet when the next one starts, so their arrival order is approximate. Under eventlet a
green thread runs until it blocks, so the announcement is exact there.

Threads, locks and events are looked up in ``threading`` at call time: under
``eventlet.monkey_patch()`` the same code runs green threads.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import fairlock

from ._local_cases import FAIRLOCK, FAIRLOCK_LOCKUTILS, OSLO_FAIR, THREADING
from ._report import median

__all__ = [
    "FAIRLOCK",
    "FAIRLOCK_LOCKUTILS",
    "OSLO_FAIR",
    "THREADING",
    "Chain",
    "DropinSubject",
    "FairlockSubject",
    "Subject",
    "bench_handoff",
    "handoff_chain",
    "inversions",
    "median_handoff_us",
    "sample",
    "subjects",
    "us_per_handoff",
    "wait_until",
]

#: A run that does not finish within this long is reported as an error, not measured.
CHAIN_TIMEOUT = 600.0


class Subject(Protocol):
    """One lock under test, as the chain drives it."""

    def hold(self) -> None: ...

    def let_go(self) -> None: ...

    def section(self) -> AbstractContextManager[Any]: ...

    def parked(self) -> int | None:
        """Waiters queued on the lock, or None if the lock cannot tell."""

    def handoffs(self) -> int | None:
        """Grants made by handoff so far, or None if the lock does not count them."""


class FairlockSubject:
    """A :class:`fairlock.Lock` of its own (``lock``), taken with ``with lock:``."""

    def __init__(self, name: str) -> None:
        self.lock = fairlock.Lock(name)

    def hold(self) -> None:
        self.lock.acquire()

    def let_go(self) -> None:
        self.lock.release()

    def section(self) -> AbstractContextManager[Any]:
        return self.lock

    def parked(self) -> int | None:
        return self.lock.statistics().waiting

    def handoffs(self) -> int | None:
        return self.lock.statistics().handoffs


class _Named:
    """A lock taken by name through ``lockutils.lock(name, **options)`` (oslo's or the drop-in)."""

    def __init__(self, lockutils: ModuleType, name: str, **options: Any) -> None:
        self._lockutils = lockutils
        self._name = name
        self._options = options
        self._held: AbstractContextManager[Any] | None = None

    def hold(self) -> None:
        self._held = self.section()
        self._held.__enter__()

    def let_go(self) -> None:
        assert self._held is not None
        held, self._held = self._held, None
        held.__exit__(None, None, None)

    def section(self) -> AbstractContextManager[Any]:
        return self._lockutils.lock(self._name, **self._options)  # type: ignore[no-any-return]

    def parked(self) -> int | None:
        return None

    def handoffs(self) -> int | None:
        return None


class DropinSubject(_Named):
    """``with shim.lock(name):`` through fairlock's oslo drop-in; ``lock`` is its named lock."""

    def __init__(self, shim: ModuleType, name: str) -> None:
        super().__init__(shim, name)
        # Keeps the named lock alive between the waiters' uses (the registry holds it weakly).
        self.lock: fairlock.Lock = shim.internal_lock(name)

    def parked(self) -> int | None:
        return self.lock.statistics().waiting

    def handoffs(self) -> int | None:
        return self.lock.statistics().handoffs


class _OsloFair(_Named):
    def __init__(self, lockutils: ModuleType, name: str) -> None:
        super().__init__(lockutils, name, fair=True)
        # fasteners' ReaderWriterLock behind the name; kept alive, and its queue is the barrier.
        self.rwlock = lockutils.internal_fair_lock(name)

    def parked(self) -> int | None:
        # A writer appends itself under the condition and then waits on it, releasing it; the
        # main thread's release needs the condition too, so a listed writer is as good as parked.
        return len(self.rwlock._pending_writers)


class _Threading:
    def __init__(self, name: str) -> None:
        self.lock = threading.Lock()

    def hold(self) -> None:
        self.lock.acquire()

    def let_go(self) -> None:
        self.lock.release()

    def section(self) -> AbstractContextManager[Any]:
        return self.lock

    def parked(self) -> int | None:
        return None

    def handoffs(self) -> int | None:
        return None


@dataclass(frozen=True)
class Chain:
    """What one run measured."""

    waiters: int
    #: Arrival indices in grant order.
    order: tuple[int, ...]
    #: Nanoseconds of each handoff: the holder's release to the first grant, then each grant to
    #: the next.
    intervals: tuple[int, ...]
    #: Grants made by handoff during the run (None if the lock does not count them).
    handoffs: int | None
    #: Waiter threads still alive after the run (joined with a timeout): always 0 unless broken.
    left: int

    @property
    def us_per_handoff(self) -> float:
        """Mean microseconds of the N - 1 handoffs from one waiter to the next."""
        return sum(self.intervals[1:]) / max(len(self.intervals) - 1, 1) / 1000

    @property
    def first_us(self) -> float:
        """Microseconds from the holder's release to the first grant."""
        return self.intervals[0] / 1000

    @property
    def us_total_per_handoff(self) -> float:
        """Microseconds from the holder's release to the last grant, over N."""
        return sum(self.intervals) / len(self.intervals) / 1000


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll (never a fixed sleep): yield at once a few times, then in 0.1 ms naps."""
    deadline = time.monotonic() + timeout
    for spins in itertools.count():
        if condition():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0 if spins < 100 else 0.0001)


def inversions(order: Sequence[int]) -> int:
    """Pairs granted in the opposite order of their arrival (0 for FIFO)."""
    seen: list[int] = []
    count = 0
    for index in order:
        count += len(seen) - bisect.bisect_right(seen, index)
        bisect.insort(seen, index)
    return count


def handoff_chain(subject: Subject, n: int, timeout: float = CHAIN_TIMEOUT) -> Chain:
    """One run: N waiters parked on ``subject``, then N handoffs (see the module docstring)."""
    order: list[int] = []
    stamps: list[int] = []
    announced = [0]
    done = threading.Event()
    finish = threading.Event()

    def waiter(index: int) -> None:
        announced[0] += 1
        with subject.section():
            stamps.append(time.perf_counter_ns())
            order.append(index)
            if len(order) == n:
                done.set()
        finish.wait()

    subject.hold()
    counts = subject.parked() is not None
    threads = []
    try:
        for index in range(n):
            thread = threading.Thread(target=waiter, args=(index,), daemon=True)
            thread.start()
            threads.append(thread)
            ready = index + 1
            if not counts:
                wait_until(lambda: announced[0] == ready, what=f"waiter {index} to arrive")
            else:
                wait_until(lambda: subject.parked() == ready, what=f"waiter {index} to park")
        before = subject.handoffs()
        enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            subject.let_go()
            if not done.wait(timeout):
                raise RuntimeError(f"{n} handoffs did not finish within {timeout:g} s")
        finally:
            if enabled:
                gc.enable()
        after = subject.handoffs()
    finally:
        finish.set()
        for thread in threads:
            thread.join(30)
    times = [start] + stamps
    return Chain(
        waiters=n,
        order=tuple(order),
        intervals=tuple(b - a for a, b in zip(times, times[1:])),
        handoffs=None if before is None or after is None else after - before,
        left=sum(1 for thread in threads if thread.is_alive()),
    )


def sample(make: Callable[[], Subject], n: int, high: int) -> list[Chain]:
    """Chains of N waiters, each on a new lock, until they have made at least as many handoffs
    from waiter to waiter as one chain of ``high`` waiters makes."""
    return [handoff_chain(make(), n) for _ in range(max(1, math.ceil((high - 1) / (n - 1))))]


def us_per_handoff(chains: Sequence[Chain]) -> float:
    """Mean microseconds of the chains' handoffs from waiter to waiter."""
    steady = [interval for chain in chains for interval in chain.intervals[1:]]
    return sum(steady) / len(steady) / 1000


def median_handoff_us(chains: Sequence[Chain]) -> float:
    """The median duration of the chains' handoffs from waiter to waiter, in microseconds: the
    odd scheduling hiccup, which the mean spreads over all handoffs, does not move it."""
    return median(interval for chain in chains for interval in chain.intervals[1:]) / 1000


def us_total_per_handoff(chains: Sequence[Chain]) -> float:
    """Microseconds from release to last grant over N, first handoffs included, over the chains."""
    return sum(sum(chain.intervals) for chain in chains) / sum(chain.waiters for chain in chains) / 1000


# -- the benchmark ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Variant:
    label: str
    make: Callable[[str], Subject]
    #: Whether the lock promises FIFO (then an inversion is a broken promise, not noise).
    fifo: bool


def subjects(lockutils: ModuleType | None, shim: ModuleType | None) -> list[_Variant]:
    variants = [_Variant(FAIRLOCK, FairlockSubject, True)]
    if shim is not None:
        variants.append(_Variant(FAIRLOCK_LOCKUTILS, lambda name: DropinSubject(shim, name), True))
    if lockutils is not None:
        variants.append(_Variant(OSLO_FAIR, lambda name: _OsloFair(lockutils, name), True))
    variants.append(_Variant(THREADING, _Threading, False))
    return variants


def _rotate(items: Sequence[Any], k: int) -> list[Any]:
    k %= len(items)
    return list(items[k:]) + list(items[:k])


_names = itertools.count()


def bench_handoff(
    waiters: Sequence[int], reps: int, lockutils: ModuleType | None, shim: ModuleType | None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Per-handoff cost at each N, every variant; medians over ``reps`` and the flatness ratio.

    Within a repetition, for each N the variants run one after another in a rotating order; each
    takes a :func:`sample` of as many handoffs as one run at the largest N.
    """
    variants = subjects(lockutils, shim)
    high = max(waiters)
    # (label, N) -> one sample of chains per repetition
    runs: dict[tuple[str, int], list[list[Chain]]] = {(v.label, n): [] for v in variants for n in waiters}
    for rep in range(reps):
        for step, n in enumerate(waiters):
            for variant in _rotate(variants, rep + step):
                progress(f"rep {rep + 1}/{reps}: {variant.label}, {n} waiters")
                chains = sample(lambda: variant.make(f"bench-load-{next(_names)}"), n, high)
                left = sum(chain.left for chain in chains)
                if left:
                    raise RuntimeError(f"{variant.label}: {left} waiter threads did not stop")
                runs[variant.label, n].append(chains)
    rows = []
    for variant in variants:
        for n in waiters:
            samples = runs[variant.label, n]
            chains = [chain for taken in samples for chain in taken]
            handoffs = [chain.handoffs for chain in chains]
            rows.append({
                "label": variant.label,
                "waiters": n,
                "runs_per_rep": len(samples[0]),
                "fifo_promised": variant.fifo,
                # Per repetition, then the median over repetitions:
                "handoff_us": [median_handoff_us(taken) for taken in samples],
                "median_handoff_us": median(median_handoff_us(taken) for taken in samples),
                "mean_us": [us_per_handoff(taken) for taken in samples],
                "median_mean_us": median(us_per_handoff(taken) for taken in samples),
                # The first handoff, from the main thread, and the mean with it included:
                "first_us": [median(chain.first_us for chain in taken) for taken in samples],
                "total_us": [us_total_per_handoff(taken) for taken in samples],
                # Per run, every run of every repetition:
                "inversions": [inversions(chain.order) for chain in chains],
                "in_order": [list(chain.order) == list(range(n)) for chain in chains],
                "handoffs": None if None in handoffs else handoffs,
            })
    by_key = {(row["label"], row["waiters"]): row for row in rows}
    low, high = min(waiters), max(waiters)
    ratios = {}
    for variant in variants:
        lo, hi = by_key[variant.label, low], by_key[variant.label, high]
        ratios[variant.label] = {
            "ratio": hi["median_handoff_us"] / lo["median_handoff_us"],
            # Per repetition: the two sizes of one repetition ran within seconds of each other.
            "per_rep": [h / l for h, l in zip(hi["handoff_us"], lo["handoff_us"])],
            "mean_ratio": hi["median_mean_us"] / lo["median_mean_us"],
        }
    return {"waiters": list(waiters), "low": low, "high": high, "rows": rows, "ratios": ratios}
