"""Name churn: 100,000 distinct lock names created, acquired, released and dropped.

``fairlock bench load`` starts one fresh interpreter per churner (:func:`child_main`). It imports
what the churner needs, churns 1,000 warm-up names in each pattern and collects garbage; then
every run is made in a forked copy of that state (:func:`_in_fork`), so no run is disturbed by
another: each takes its baseline, churns, collects garbage again and measures.

Two patterns:

* ``one``: each name is used once and dropped before the next (nova's ``refresh_cache-<uuid>``
  for instances that come and go): the registry never holds more than one lock.
* ``all``: all names are held at once, then all released and dropped: the peak shows what a
  live lock costs, and "after" whether that memory comes back.

Two kinds of run: untraced (RSS from ``/proc/self/statm``, sampled every 1,000 names for the
peak; after the churn, and again after glibc's ``malloc_trim(0)``; and the time per name), and
traced (``tracemalloc``: bytes allocated by Python, exact, but
tracing slows the churn several times over, so its times are not reported).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import fairlock
from fairlock.registry import default_registry

from ._local_cases import FAIRLOCK_LOCKUTILS, FAIRLOCK_REGISTRY, OSLO_DEFAULT, OSLO_FAIR

__all__ = [
    "CHURNERS",
    "FAIRLOCK_GET_LOCK",
    "PATTERNS",
    "Churner",
    "child_main",
    "malloc_trim",
    "measure_churner",
    "measure_once",
    "rss",
]

FAIRLOCK_GET_LOCK = "fairlock.get_lock(name)"

#: Pattern key -> its label in the tables.
PATTERNS = {"one": "one at a time", "all": "all held at once"}

WARM_UP = 1000
#: RSS is sampled every this many names during a churn (the peak of pattern "one").
SAMPLE_EVERY = 1000


@dataclass(frozen=True)
class Churner:
    #: For the command line of the child that runs it.
    key: str
    label: str
    #: The module the churner uses, imported before the baseline (None: fairlock itself).
    module: str | None
    #: (module, name) -> the context manager that holds the lock called name.
    use: Callable[[Any, str], AbstractContextManager[Any]]
    #: module -> how many locks its registry holds now.
    registry: Callable[[Any], int]


def _fairlock_registry(_: Any) -> int:
    return len(default_registry)


CHURNERS = {
    churner.key: churner
    for churner in (
        Churner("lock", FAIRLOCK_REGISTRY, None, lambda _, name: fairlock.lock(name), _fairlock_registry),
        Churner(
            "get-lock", FAIRLOCK_GET_LOCK, None,
            lambda _, name: fairlock.get_lock(name), _fairlock_registry,
        ),
        Churner(
            "lockutils", FAIRLOCK_LOCKUTILS, "fairlock.lockutils",
            lambda shim, name: shim.lock(name), lambda shim: len(shim._semaphores),
        ),
        Churner(
            "oslo", OSLO_DEFAULT, "oslo_concurrency.lockutils",
            lambda oslo, name: oslo.lock(name), lambda oslo: len(oslo._semaphores),
        ),
        Churner(
            "oslo-fair", OSLO_FAIR, "oslo_concurrency.lockutils",
            # fasteners' ReaderWriterLock per name, in oslo's FairLocks (no __len__ of its own).
            lambda oslo, name: oslo.lock(name, fair=True), lambda oslo: len(oslo._fair_locks._locks),
        ),
    )
}


def rss() -> int | None:
    """Resident set size in bytes, or None where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def malloc_trim() -> bool:
    """Ask glibc to give its free heap memory back to the system; False if there is no glibc.

    Objects over 512 bytes come from malloc, not from Python's own allocator, and glibc keeps the
    chunks they free in its heap: RSS then stays up although nothing is allocated there."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True


class _Peak:
    """The largest RSS seen (untraced runs) or nothing (traced runs: tracemalloc has its peak)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.value = rss() if enabled else None

    def sample(self) -> None:
        if self.enabled:
            now = rss()
            if now is not None and (self.value is None or now > self.value):
                self.value = now


_Use = Callable[[str], AbstractContextManager[Any]]


def _churn(use: _Use, prefix: str, names: int, pattern: str, peak: _Peak) -> None:
    if pattern == "one":
        for i in range(names):
            with use(f"{prefix}-{i}"):
                pass
            if i % SAMPLE_EVERY == 0:
                peak.sample()
        return
    held = [use(f"{prefix}-{i}") for i in range(names)]
    for i, section in enumerate(held):
        section.__enter__()
        if i % SAMPLE_EVERY == 0:
            peak.sample()
    peak.sample()
    for section in held:
        section.__exit__(None, None, None)
    del held, section


def _user(churner: Churner, module: Any) -> _Use:
    def use(name: str) -> AbstractContextManager[Any]:
        return churner.use(module, name)

    return use


def _prepare(churner: Churner) -> Any:
    """Import what the churner needs (returned) and warm it up with both patterns."""
    module: ModuleType | None = importlib.import_module(churner.module) if churner.module else None
    for pattern in PATTERNS:
        _churn(_user(churner, module), f"warm-up-{pattern}", WARM_UP, pattern, _Peak(False))
    gc.collect()
    return module


def measure_once(churner: Churner, module: Any, pattern: str, names: int, traced: bool) -> dict[str, Any]:
    """One churn in this process, from a baseline taken now; ``module`` is what the churner uses.

    Besides the registry, RSS or traced bytes, it counts Python's allocated memory blocks
    (``sys.getallocatedblocks()``: exact and free of cost) before and after.
    """
    use = _user(churner, module)
    if traced:
        tracemalloc.start()
    gc.collect()
    registry_before = churner.registry(module)
    blocks_base = sys.getallocatedblocks()
    traced_base = tracemalloc.get_traced_memory()[0] if traced else None
    if traced:
        tracemalloc.reset_peak()
    peak = _Peak(not traced)
    rss_base = peak.value
    started = time.perf_counter()
    _churn(use, "churn", names, pattern, peak)
    elapsed = time.perf_counter() - started
    gc.collect()
    result: dict[str, Any] = {
        "key": churner.key,
        "label": churner.label,
        "pattern": pattern,
        "names": names,
        "traced": traced,
        "registry_before": registry_before,
        "registry_after": churner.registry(module),
        "blocks_base": blocks_base,
        "blocks_after": sys.getallocatedblocks(),
    }
    if traced:
        current, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert traced_base is not None
        result.update(traced_base=traced_base, traced_peak=top, traced_after=current)
    else:
        rss_after = rss()
        result.update(seconds=elapsed, rss_base=rss_base, rss_peak=peak.value, rss_after=rss_after,
                      rss_trimmed=rss() if malloc_trim() else None)
    return result


def _in_fork(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked copy of this process, so every run starts from the same state."""
    if not hasattr(os, "fork"):
        return work()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the copy: never returns
        code = 0
        try:
            data = json.dumps(work())
        except BaseException as exc:  # reported by the parent, with the run that failed
            data, code = json.dumps({"error": f"{type(exc).__name__}: {exc}"}), 1
        try:
            with os.fdopen(write, "w", encoding="utf-8") as out:
                out.write(data)
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, encoding="utf-8") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data) if data else {"error": f"no result (wait status {status})"}
    if "error" in result:
        raise RuntimeError(f"{result['error']} (in the forked run)")
    return result


def measure_churner(key: str, names: int, jobs: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Each (pattern, traced) job of one churner; see the module docstring. Returns plain data."""
    churner = CHURNERS[key]
    for pattern, _ in jobs:
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r}")
    module = _prepare(churner)
    return [
        _in_fork(lambda: measure_once(churner, module, pattern, names, traced))
        for pattern, traced in jobs
    ]


def child_main(argv: list[str]) -> int:
    """``KEY NAMES PATTERN:traced|untraced,...``: the churner's runs as a JSON list on stdout."""
    key, names, spec = argv
    jobs = [(pattern, kind == "traced") for pattern, kind in (job.split(":") for job in spec.split(","))]
    json.dump(measure_churner(key, int(names), jobs), sys.stdout)
    return 0
