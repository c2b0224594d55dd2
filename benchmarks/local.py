"""Benchmarks of the in-process lock: ``python -m fairlock bench local``.

Three benchmarks, each run with native threads and with eventlet green threads:

1. Uncontended acquire+release, ns per pair, against threading.Lock and oslo.concurrency.
2. Contended acquisitions per second: 16 and 64 threads on one lock, after a warm-up; the critical
   section is empty (native) or one ``time.sleep(0)`` (eventlet: a green thread that never
   blocks never lets another run). A two-thread ping-pong gives the machine's switch rate.
3. Starvation: one "migration" asks for a lock that N "handlers" keep re-taking (5 ms holds).
   An overtake is a handler acquisition requested after the migration's request (by a global
   sequence number taken just before calling acquire) and granted before the migration.

Every figure is the median over ``--reps`` repetitions, and within each repetition the variants
run one after another (in a rotating order), so a noisy machine disturbs them alike: read the
ratios, not the absolute figures. Overtake counts are properties of the lock, not timings.

Eventlet mode runs in a fresh interpreter that calls ``eventlet.monkey_patch()`` before anything
imports threading or fairlock. fairlock never imports eventlet (in native mode oslo.concurrency's
fair lock does, without patching).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from typing import Any

import fairlock
from fairlock._primitives import green_mode

from ._local_cases import (
    EMPTY_LOOP,
    FAIRLOCK,
    FAIRLOCK_CALLS,
    FAIRLOCK_FIFO,
    FAIRLOCK_HIGH,
    FAIRLOCK_LOCKUTILS,
    FAIRLOCK_SYNCHRONIZED,
    FAIRLOCK_REGISTRY,
    FAIRLOCK_WITH,
    FULL,
    OSLO_DEFAULT,
    OSLO_FAIR,
    OSLO_SYNCHRONIZED,
    PING_PONG,
    QUICK,
    THREADING,
    THREADING_CALLS,
    THREADING_WITH,
    Sizes,
    bench_contended,
    bench_starvation,
    bench_uncontended,
    lockutils_or_none,
    optional_module,
)
from ._local_tables import render
from ._args import at_least, chosen_modes, json_file, seconds
from ._report import machine, progress

__all__ = [
    "FULL",
    "HELP",
    "QUICK",
    "Sizes",
    "add_arguments",
    "measure",
    "run",
    # Row labels of the tables and the JSON.
    "EMPTY_LOOP",
    "FAIRLOCK",
    "FAIRLOCK_CALLS",
    "FAIRLOCK_FIFO",
    "FAIRLOCK_HIGH",
    "FAIRLOCK_LOCKUTILS",
    "FAIRLOCK_SYNCHRONIZED",
    "FAIRLOCK_REGISTRY",
    "FAIRLOCK_WITH",
    "OSLO_DEFAULT",
    "OSLO_FAIR",
    "OSLO_SYNCHRONIZED",
    "PING_PONG",
    "THREADING",
    "THREADING_CALLS",
    "THREADING_WITH",
]

HELP = "fairlock.Lock vs threading.Lock and oslo.concurrency: uncontended, contended, starvation"

MODES = ("native", "eventlet")

# The eventlet child: monkey patching comes first, before threading users such as fairlock are
# imported (only the warning filters for eventlet's and oslo's deprecation notices precede it).
_CHILD_BOOTSTRAP = (
    "import warnings; "
    "warnings.filterwarnings('ignore', message=r'\\s*Eventlet is deprecated'); "
    "warnings.filterwarnings('ignore', category=DeprecationWarning); "
    "import eventlet; eventlet.monkey_patch(); "
    "import sys; from fairlock.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


# -- one mode --------------------------------------------------------------------------------------


def measure(mode: str, sizes: Sizes, reps: int) -> dict[str, Any]:
    """All three benchmarks in this process (already monkey patched for mode "eventlet")."""
    lockutils = lockutils_or_none()
    # fairlock's oslo drop-in, where present: measured beside oslo's, never required.
    shim, shim_missing = optional_module("fairlock.lockutils")
    progress(f"{mode}: uncontended acquire+release ({reps} reps)")
    uncontended = bench_uncontended(sizes, reps, lockutils, shim, shim_missing)
    contended = []
    for threads in sizes.contended_threads:
        progress(f"{mode}: contended, {threads} threads ({reps} reps)")
        contended.append(bench_contended(sizes, reps, lockutils, shim, mode, threads))
    progress(f"{mode}: starvation, handlers {list(sizes.handlers)} ({reps} reps)")
    starvation = bench_starvation(sizes, reps, lockutils, shim)
    # "contended": the first number of threads; "contended_more": the others (one table each).
    return {"mode": mode, "uncontended": uncontended, "contended": contended[0],
            "contended_more": contended[1:], "starvation": starvation}


def _child_command(args: argparse.Namespace) -> list[str]:
    command = [
        sys.executable, "-c", _CHILD_BOOTSTRAP,
        "bench", "local", "--mode", "eventlet", "--child", "--reps", str(args.reps),
    ]
    if args.quick:
        command.append("--quick")
    if args.cap is not None:
        command += ["--cap", str(args.cap)]
    for threads in args.threads or ():
        command += ["--threads", str(threads)]
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


# -- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=at_least(1), default=None,
                        help="repetitions per case (default 5, 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one repetition, 16 threads only: a smoke run of about 15 s")
    parser.add_argument("--json", metavar="FILE", type=json_file, help="also write the results, every repetition, as JSON")
    parser.add_argument("--mode", choices=("native", "eventlet", "both"), default="both",
                        help="native threads, eventlet green threads (in a subprocess), or both")
    parser.add_argument("--threads", type=at_least(2), action="append", default=None,
                        help="threads in the contended benchmark; repeat for several tables "
                             f"(default {' and '.join(map(str, FULL.contended_threads))})")
    parser.add_argument("--cap", type=seconds, default=None,
                        help="seconds after which a waiting migration counts as starved "
                             f"(default {FULL.cap:g}, {QUICK.cap:g} with --quick)")
    # Internal: this process is the monkey-patched eventlet child; print JSON, no tables.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    if args.cap is not None:
        sizes = replace(sizes, cap=args.cap)
    if args.threads is not None:
        sizes = replace(sizes, contended_threads=tuple(args.threads))
    return sizes


def _command_line(args: argparse.Namespace) -> str:
    options = ["python -m fairlock bench local", f"--reps {args.reps}", f"--mode {args.mode}"]
    if args.quick:
        options.append("--quick")
    for threads in args.threads or ():
        options.append(f"--threads {threads}")
    if args.cap is not None:
        options.append(f"--cap {args.cap:g}")
    return " ".join(options)


def run(args: argparse.Namespace) -> int:
    if args.reps is None:
        args.reps = 1 if args.quick else 5
    sizes = _sizes(args)
    if args.child:
        if not green_mode():
            print("fairlock bench local: --child runs only under eventlet.monkey_patch()", file=sys.stderr)
            return 2
        json.dump(measure("eventlet", sizes, args.reps), sys.stdout)
        return 0
    modes = chosen_modes(args.mode, MODES)
    if not modes:
        return 2
    started = time.perf_counter()
    about = machine()
    results = {
        mode: measure(mode, sizes, args.reps) if mode == "native" else _measure_in_child(args)
        for mode in modes
    }
    about["load_average_after"] = machine()["load_average"]
    print(f"{_command_line(args)}: {about['cpus']} CPUs, {about['python']}, "
          f"load average {about['load_average']} -> {about['load_average_after']}, "
          f"took {time.perf_counter() - started:.0f} s")
    print()
    print(render(results, args.reps))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"command": _command_line(args), "machine": about, "reps": args.reps,
                       "sizes": asdict(sizes), "results": results}, out, indent=2)
            out.write("\n")
    return 0
