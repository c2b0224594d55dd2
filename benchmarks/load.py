"""Load on the in-process lock: ``python -m fairlock bench load``.

1. Per-handoff cost against queue length: N waiters (10, 100 and 1,000 by default) parked on one
   lock, then N handoffs in a row; microseconds per handoff, and the ratio of that cost at the
   largest N to the smallest (flat = 1). Native threads, and green threads in a child process
   under ``eventlet.monkey_patch()``. Rows: fairlock.Lock, fairlock.lockutils.lock(name), oslo's
   ``lockutils.lock(name, fair=True)`` and ``threading.Lock`` (no queue order; for reference).
   The grant order is recorded against the arrival order: inversions must be 0 for a FIFO lock.
2. Memory after 100,000 distinct names: each name created, acquired, released and dropped,
   one at a time and all held at once, through ``fairlock.lock(name)``,
   ``fairlock.get_lock(name)``, ``fairlock.lockutils.lock(name)`` and oslo's ``lockutils.lock``
   (default and ``fair=True``), each in a fresh interpreter: registry size after, RSS (baseline,
   peak, after) and, in a second run, bytes allocated by Python (tracemalloc).

Handoff figures are medians over ``--reps`` repetitions, the variants running one after another in
a rotating order within each. Memory figures are byte counts that repeat from run to run: they
are measured ``--memory-reps`` times (default once) and the median shown.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

import fairlock
from fairlock._primitives import green_mode

from ._load_handoff import FAIRLOCK_LOCKUTILS, OSLO_FAIR, bench_handoff
from ._load_memory import CHURNERS, PATTERNS
from ._load_tables import render
from ._local_cases import lockutils_or_none, optional_module
from ._args import at_least, chosen_modes, json_file
from ._report import child_env, machine, progress

__all__ = ["FULL_NAMES", "FULL_WAITERS", "HELP", "QUICK_NAMES", "QUICK_WAITERS", "add_arguments", "run"]

HELP = "1,000 waiters on one lock (per-handoff cost vs N) and 100,000 names churned (memory)"

FULL_WAITERS = (10, 100, 1000)
QUICK_WAITERS = (10, 100)
FULL_NAMES = 100_000
QUICK_NAMES = 1_000
MODES = ("native", "eventlet")

# The eventlet child: monkey patching first, before anything imports threading or fairlock (only
# the warning filters for eventlet's and oslo's deprecation notices precede it).
_EVENTLET_CHILD = (
    "import warnings; "
    "warnings.filterwarnings('ignore', message=r'\\s*Eventlet is deprecated'); "
    "warnings.filterwarnings('ignore', category=DeprecationWarning); "
    "import eventlet; eventlet.monkey_patch(); "
    "import sys; from fairlock.__main__ import main; sys.exit(main(sys.argv[1:]))"
)
# The memory child: nothing but the churn module before the baseline (no command line parser).
_MEMORY_CHILD = (
    "import sys; from benchmarks._load_memory import child_main; sys.exit(child_main(sys.argv[1:]))"
)


def _child_env() -> dict[str, str]:
    return child_env("ignore::DeprecationWarning")


def _run_child(command: list[str], what: str) -> Any:
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_child_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited with status {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


# -- 1. handoffs -----------------------------------------------------------------------------------


def measure_handoff(mode: str, waiters: tuple[int, ...], reps: int) -> dict[str, Any]:
    """The handoff benchmark in this process (already monkey patched for mode "eventlet")."""
    lockutils = lockutils_or_none()  # also makes oslo's first eventlet import in this thread
    shim, shim_missing = optional_module("fairlock.lockutils")
    result = bench_handoff(waiters, reps, lockutils, shim, progress=lambda m: progress(f"{mode}: {m}"))
    skipped = {}
    if lockutils is None:
        skipped[OSLO_FAIR] = "oslo.concurrency is not installed"
    if shim is None:
        skipped[FAIRLOCK_LOCKUTILS] = shim_missing
    return {"mode": mode, **result, "skipped": skipped}


def _handoff_in_child(args: argparse.Namespace, waiters: tuple[int, ...]) -> dict[str, Any]:
    command = [
        sys.executable, "-c", _EVENTLET_CHILD, "bench", "load", "--child", "handoff",
        "--reps", str(args.reps), "--waiters", ",".join(map(str, waiters)),
    ]
    # The child's progress lines go straight to our stderr.
    done = subprocess.run(command, stdout=subprocess.PIPE, env=_child_env(), text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the eventlet handoff benchmark exited with status {done.returncode}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# -- 2. memory -------------------------------------------------------------------------------------


def _churners() -> tuple[list[str], dict[str, str]]:
    keys, skipped = [], {}
    for key, churner in CHURNERS.items():
        if churner.module is not None and importlib.util.find_spec("oslo_concurrency") is None:
            skipped[churner.label] = "oslo.concurrency is not installed"
        else:
            keys.append(key)
    return keys, skipped


def measure_memory(names: int, reps: int) -> dict[str, Any]:
    """Every churner and pattern, untraced and traced: one fresh interpreter per churner and
    repetition, one forked copy of it per run (see benchmarks._load_memory)."""
    keys, skipped = _churners()
    jobs = ",".join(f"{pattern}:{kind}" for kind in ("untraced", "traced") for pattern in PATTERNS)
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(reps):
        for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
            progress(f"memory: rep {rep + 1}/{reps}: {CHURNERS[key].label}, {names} names")
            command = [sys.executable, "-c", _MEMORY_CHILD, key, str(names), jobs]
            for result in _run_child(command, f"the churn of {CHURNERS[key].label}"):
                kind = "traced" if result["traced"] else "untraced"
                runs.setdefault(f"{key}|{result['pattern']}|{kind}", []).append(result)
    return {"names": names, "reps": reps, "runs": runs, "skipped": skipped}


# -- command line ----------------------------------------------------------------------------------


def _waiters(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of numbers, got {text!r}") from None
    if len(values) < 2 or min(values) < 2 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"at least two different numbers >= 2, got {text!r}")
    return tuple(sorted(values))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=at_least(1), default=5,
                        help="repetitions of the handoff benchmark (default 5)")
    parser.add_argument("--memory-reps", type=at_least(1), default=1,
                        help="repetitions of each memory run (default 1: byte counts repeat)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: waiters {','.join(map(str, QUICK_WAITERS))}, {QUICK_NAMES} names")
    parser.add_argument("--json", metavar="FILE", type=json_file, help="also write the results, every repetition, as JSON")
    parser.add_argument("--mode", choices=("native", "eventlet", "both"), default="both",
                        help="handoffs with native threads, eventlet green threads (in a subprocess), "
                             "or both")
    parser.add_argument("--waiters", type=_waiters, default=None,
                        help=f"queue lengths, comma-separated (default {','.join(map(str, FULL_WAITERS))})")
    parser.add_argument("--names", type=at_least(1), default=None,
                        help=f"distinct names churned (default {FULL_NAMES})")
    parser.add_argument("--part", choices=("handoff", "memory", "both"), default="both",
                        help="which benchmark to run (default both)")
    # Internal: this process is the monkey-patched eventlet child; print JSON, no tables.
    parser.add_argument("--child", choices=("handoff",), help=argparse.SUPPRESS)


def _sizes(args: argparse.Namespace) -> tuple[tuple[int, ...], int]:
    waiters = args.waiters or (QUICK_WAITERS if args.quick else FULL_WAITERS)
    names = args.names or (QUICK_NAMES if args.quick else FULL_NAMES)
    return waiters, names


def _command_line(args: argparse.Namespace) -> str:
    options = ["python -m fairlock bench load", f"--reps {args.reps}"]
    if args.memory_reps != 1:
        options.append(f"--memory-reps {args.memory_reps}")
    if args.quick:
        options.append("--quick")
    if args.mode != "both":
        options.append(f"--mode {args.mode}")
    if args.part != "both":
        options.append(f"--part {args.part}")
    if args.waiters:
        options.append(f"--waiters {','.join(map(str, args.waiters))}")
    if args.names:
        options.append(f"--names {args.names}")
    return " ".join(options)


def run(args: argparse.Namespace) -> int:
    waiters, names = _sizes(args)
    if args.child == "handoff":
        if not green_mode():
            print("fairlock bench load: --child runs only under eventlet.monkey_patch()", file=sys.stderr)
            return 2
        json.dump(measure_handoff("eventlet", waiters, args.reps), sys.stdout)
        return 0
    modes = chosen_modes(args.mode, MODES) if args.part != "memory" else []
    if args.part != "memory" and not modes:
        return 2
    started = time.perf_counter()
    about = machine()
    handoff = {
        mode: measure_handoff(mode, waiters, args.reps) if mode == "native"
        else _handoff_in_child(args, waiters)
        for mode in modes
    }
    memory = measure_memory(names, args.memory_reps) if args.part != "handoff" else None
    about["load_average_after"] = machine()["load_average"]
    took = time.perf_counter() - started
    print(f"{_command_line(args)}: {about['cpus']} CPUs, {about['python']}, "
          f"load average {about['load_average']} -> {about['load_average_after']}, took {took:.0f} s")
    print()
    print(render(handoff, memory, args.reps))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"command": _command_line(args), "machine": about, "reps": args.reps,
                       "waiters": list(waiters), "names": names, "seconds": took,
                       "handoff": handoff, "memory": memory}, out, indent=2)
            out.write("\n")
    return 0
