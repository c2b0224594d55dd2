"""Benchmarks of the distributed lock: ``python -m fairlock bench etcd``.

fairlock's EtcdLock side by side with tooz's etcd3gw driver, python-etcd3's ``Etcd3Client.lock()``
(PyPI's 0.12.0 from its own venv given by ``--etcd3-python``, and a maintained fork installed
here) and etcd's own lock service (v3lock through the HTTP gateway), on one etcd (started here
with ``--metrics extensive`` unless ``--endpoint``/``--url`` names one):

1. Uncontended acquire+release: latency, etcd writes (store revision before/after), leases
   granted (etcd's lease counter) and etcd RPCs per pair.
2. Contended: N waiters (each its own client and lease, spread over worker processes), one lock,
   empty critical section: grants/s, handoffs/s (grants to a different holder) and handoff
   latency (release called -> next holder running), also with 2 waiters.
3. Watch events per release: counted by the clients where possible, and etcd's own count of
   events sent (``etcd_debugging_mvcc_events_total``) for every variant.
4. Leases granted per acquisition, and leases alive after the run (leaked ones included).
5. Fairness: requests overtaken by later ones (fairlock: by etcd's ticket order, exact; the
   others: by request time), and fairlock with 2 lanes and K, judged by the fencing checker.

Within each repetition the variants run one after another in a rotating order; each figure is
the median over ``--reps`` repetitions. Counts of writes, leases and events are properties of the
algorithms; timings on a noisy 2-core machine are not: read the ratios.

``--soak SECONDS`` (or ``--grants N``) runs the fencing checker instead: ``--processes`` worker
processes with ``--sessions`` sessions each append a record per critical section (2 lanes,
random holds) to per-worker logs; ``fairlock.testing.checker`` then judges mutual exclusion,
token order, FIFO within a lane and bypass <= K. Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

from ._etcd_runs import Target, contended, fencing_run, probe, uncontended
from ._etcd_tables import render
from ._args import json_file, positive_int, seconds
from fairlock.etcd.cli import ENDPOINT_HELP, URL_HELP, add_etcd_arguments, where_from_args
from ._report import Table, machine, progress

__all__ = ["HELP", "add_arguments", "run", "FAIRLOCK", "FAIRLOCK_GRPC", "TOOZ", "TOOZ_FAIRLOCK", "ETCD3", "ETCD3_FORK", "V3LOCK", "LABELS"]

HELP = "fairlock's EtcdLock vs tooz, python-etcd3 and etcd's lock service; the fencing checker"

FAIRLOCK = "fairlock EtcdLock"
FAIRLOCK_GRPC = "fairlock EtcdLock gRPC"
TOOZ = "tooz etcd3gw"
TOOZ_FAIRLOCK = "tooz fairlock+etcd3+http"
ETCD3 = "python-etcd3 0.12.0"
ETCD3_FORK = "python-etcd3 fork"
V3LOCK = "etcd v3lock"
LABELS = (FAIRLOCK, FAIRLOCK_GRPC, TOOZ, TOOZ_FAIRLOCK, ETCD3, ETCD3_FORK, V3LOCK)

#: The forks of python-etcd3 that install the same ``etcd3`` module and run on current protobuf.
_FORKS = ("cslab-etcd3", "python3-etcd3", "etcd3-fc", "etcd3-fork", "etcd3-rs")
LANES = ["high", "normal"]


#: ``--only`` names -> row labels.
_SHORT = {"fairlock": FAIRLOCK, "fairlock-grpc": FAIRLOCK_GRPC, "tooz": TOOZ, "tooz-fairlock": TOOZ_FAIRLOCK,
          "etcd3": ETCD3, "etcd3-fork": ETCD3_FORK, "v3lock": V3LOCK}


def _variant_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in _SHORT]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown or text!r}; choose from {', '.join(_SHORT)}")
    return [_SHORT[n] for n in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=positive_int, default=5, help="repetitions (default 5)")
    parser.add_argument("--quick", action="store_true", help="short windows and few pairs: a smoke run")
    parser.add_argument("--json", metavar="FILE", type=json_file, help="also write every repetition's figures as JSON")
    parser.add_argument("--waiters", type=positive_int, default=32, help="waiters in the contended runs (default 32)")
    parser.add_argument("--processes", type=positive_int, default=None,
                        help="worker processes the waiters are spread over (default: one per waiter; "
                             "4 with --quick); with --soak/--grants: workers (default 4)")
    parser.add_argument("--seconds", type=seconds, default=None,
                        help="measured window of each contended run (default 5, 1.5 with --quick)")
    add_etcd_arguments(parser, url_help="use this etcd instead of starting one: " + URL_HELP,
                       endpoint_help="use this etcd instead of starting one: " + ENDPOINT_HELP)
    parser.add_argument("--only", type=_variant_list, metavar="VARIANTS",
                        help="run only these variants, comma-separated, of: " + ", ".join(_SHORT))
    parser.add_argument("--etcd3-python", metavar="PYTHON",
                        help="an interpreter whose venv has python-etcd3 0.12.0 (with protobuf<4, "
                             "tenacity<7) for the python-etcd3 0.12.0 row")
    soak = parser.add_argument_group("fencing checker")
    soak.add_argument("--soak", type=seconds, metavar="SECONDS", help="run the fencing checker for SECONDS")
    soak.add_argument("--grants", type=positive_int, help="run the fencing checker for N requests in total")
    soak.add_argument("--sessions", type=positive_int, default=1, help="sessions per worker (default 1)")
    soak.add_argument("--max-bypass", type=int, default=4, help="K for the checker's lanes (default 4)")
    soak.add_argument("--log-dir", help="keep the workers' grant logs here")


def _endpoint_of(args: argparse.Namespace) -> str | None:
    where = where_from_args(args)
    return None if where is None else where.config.endpoints[0]


@contextlib.contextmanager
def _etcd(args: argparse.Namespace) -> Iterator[str]:
    given = _endpoint_of(args)
    if given is not None:
        yield given
        return
    from fairlock.testing import EtcdServer

    # --metrics extensive: the gRPC counters give RPCs per grant for every client alike.
    with EtcdServer(name="bench", extra_args=["--metrics", "extensive"]) as server:
        yield server.endpoint


def targets(args: argparse.Namespace) -> tuple[list[Target], dict[str, str]]:
    """The variants that can run here, and why the others cannot."""
    runnable: list[Target] = []
    missing: dict[str, str] = {}
    here = sys.executable
    if probe(here, "requests").get("ok"):
        runnable.append(Target(FAIRLOCK, "fairlock", here, "", fencing=True))
    else:
        missing[FAIRLOCK] = "requests is not installed (pip install fairlock[etcd])"
    if probe(here, "pyetcd").get("ok"):
        runnable.append(Target(FAIRLOCK_GRPC, "fairlock-grpc", here, "fairlock's GrpcTransport", fencing=True))
    else:
        missing[FAIRLOCK_GRPC] = "the grpc extra is not installed (pip install fairlock[grpc])"
    tooz = probe(here, "tooz")
    if tooz.get("ok") and probe(here, "etcd3gw").get("ok"):
        runnable.append(Target(TOOZ, "tooz", here, f"tooz {tooz['versions'].get('tooz', '?')}"))
    else:
        missing[TOOZ] = "tooz/etcd3gw not importable (pip install fairlock[bench])"
    if tooz.get("ok"):
        runnable.append(Target(TOOZ_FAIRLOCK, "tooz-fairlock", here,
                               f"tooz {tooz['versions'].get('tooz', '?')} + fairlock driver", fencing=True))
    else:
        missing[TOOZ_FAIRLOCK] = "tooz not importable (pip install fairlock[bench])"
    if args.etcd3_python:
        old = probe(args.etcd3_python, "etcd3")
        version = old.get("versions", {}).get("etcd3") if old.get("ok") else None
        if version:
            runnable.append(Target(ETCD3, "etcd3", args.etcd3_python, _versions(old)))
        elif old.get("ok"):
            missing[ETCD3] = f"{args.etcd3_python} imports etcd3 from {old.get('dists')}, not PyPI's etcd3"
        else:
            missing[ETCD3] = str(old.get("error"))
    else:
        missing[ETCD3] = ("needs protobuf<4 and tenacity<7, which conflict with this venv: "
                          "give --etcd3-python of a venv with etcd3==0.12.0")
    fork = probe(here, "etcd3")
    dists = fork.get("dists") or []
    if fork.get("ok") and any(d in _FORKS for d in dists):
        runnable.append(Target(ETCD3_FORK, "etcd3", here, _versions(fork), fencing=True))
    elif fork.get("ok"):
        missing[ETCD3_FORK] = f"this venv's etcd3 module comes from {dists}, not a maintained fork"
    else:
        missing[ETCD3_FORK] = f"no python-etcd3 fork here (pip install fairlock[bench]): {fork.get('error')}"
    runnable.append(Target(V3LOCK, "v3lock", here, "etcd's v3lock service via the HTTP gateway"))
    order = {label: i for i, label in enumerate(LABELS)}
    runnable.sort(key=lambda t: order[t.label])
    only = getattr(args, "only", None)
    if only:
        runnable = [t for t in runnable if t.label in only]
        missing = {label: why for label, why in missing.items() if label in only}
    return runnable, missing


def _versions(probed: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in probed.get("versions", {}).items())


def _rotate(items: list[Target], k: int) -> list[Target]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


def measure(args: argparse.Namespace, endpoint: str, runnable: list[Target]) -> dict[str, Any]:
    quick = args.quick
    pairs = 30 if quick else 200
    seconds = args.seconds or (1.5 if quick else 5.0)
    warmup = 0.3 if quick else 1.0
    processes = args.processes or (4 if quick else args.waiters)
    small = 2
    reps: list[dict[str, Any]] = []
    fair_target = next((t for t in runnable if t.label == FAIRLOCK), None)
    for rep in range(args.reps):
        order = _rotate(runnable, rep)
        one: dict[str, Any] = {"uncontended": {}, "contended": {}, "contended_small": {}, "lanes": None}
        tag = f"r{rep}-{time.monotonic_ns()}"
        progress(f"rep {rep + 1}/{args.reps}: uncontended, {pairs} pairs each")
        for t in order:
            one["uncontended"][t.label] = uncontended(t, endpoint, pairs, f"u-{t.variant}-{tag}")
        progress(f"rep {rep + 1}/{args.reps}: contended, {args.waiters} waiters in {processes} processes")
        for t in order:
            one["contended"][t.label] = contended(t, endpoint, waiters=args.waiters, processes=processes,
                                                  warmup=warmup, seconds=seconds, lock=f"c-{t.variant}-{tag}")
        progress(f"rep {rep + 1}/{args.reps}: contended, {small} waiters")
        for t in order:
            one["contended_small"][t.label] = contended(t, endpoint, waiters=small, processes=small,
                                                        warmup=warmup, seconds=seconds,
                                                        lock=f"s-{t.variant}-{tag}")
        if fair_target is not None:
            progress(f"rep {rep + 1}/{args.reps}: fairlock, {args.waiters} waiters in 2 lanes")
            one["lanes"] = contended(fair_target, endpoint, waiters=args.waiters, processes=processes,
                                     warmup=warmup, seconds=seconds, lock=f"l-{tag}", lanes=LANES,
                                     max_bypass=args.max_bypass)
        reps.append(one)
    return {"pairs": pairs, "seconds": seconds, "warmup": warmup, "processes": processes,
            "waiters": args.waiters, "small": small, "max_bypass": args.max_bypass, "lanes": LANES,
            "reps": reps}


def _command_line(args: argparse.Namespace) -> str:
    parts = ["python -m fairlock bench etcd", f"--reps {args.reps}", f"--waiters {args.waiters}"]
    for flag, value in (("--quick", args.quick), ("--processes", args.processes), ("--seconds", args.seconds),
                        ("--endpoint", args.endpoint), ("--url", args.url),
                        ("--only", ",".join(k for k, v in _SHORT.items() if v in (args.only or ()))),
                        ("--etcd3-python", args.etcd3_python)):
        if value is True:
            parts.append(flag)
        elif value:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _soak(args: argparse.Namespace, endpoint: str) -> int:
    processes = args.processes or 4
    what = f"{args.soak:g} s" if args.soak else f"{args.grants} requests"
    progress(f"fencing checker: {processes} workers x {args.sessions} sessions, lanes {LANES}, "
             f"K={args.max_bypass}, {what}")
    report, logs, info = fencing_run(endpoint, processes=processes, sessions=args.sessions,
                                     seconds=args.soak, grants=None if args.soak else args.grants,
                                     lanes=tuple(LANES), max_bypass=args.max_bypass, log_dir=args.log_dir)
    table = Table(
        title=f"Fencing checker: {processes} worker processes x {args.sessions} sessions, "
              f"2 lanes, K={args.max_bypass}",
        headers=["grants", "grants/s", "overlaps", "token regressions", "FIFO violations",
                 "max overtaken", "verdict"],
        align=[">"] * 6 + ["<"],
        rows=[[str(report.grants), f"{report.grants / max(info['seconds'], 1e-9):.1f}",
               str(report.overlaps), str(report.token_regressions), str(report.fifo_violations),
               str(report.max_overtaken), "clean" if report.ok else "VIOLATIONS"]],
        notes=[f"order by {report.order}; logs: "
               + (", ".join(str(p) for p in logs) if args.log_dir else "deleted (keep them with --log-dir)")]
              + [f"violation: {v.kind}: {v.detail}" for v in report.violations]
              + [f"worker error: {e}" for e in info["errors"]],
    )
    command = ["python -m fairlock bench etcd", f"--soak {args.soak:g}" if args.soak else f"--grants {args.grants}",
               f"--processes {processes}", f"--sessions {args.sessions}", f"--max-bypass {args.max_bypass}"]
    print(" ".join(command) + f": took {info['seconds']:.0f} s")
    print()
    print(table.render())
    if args.log_dir is None:
        shutil.rmtree(logs[0].parent, ignore_errors=True)
    return 0 if report.ok and not info["errors"] else 1


def run(args: argparse.Namespace) -> int:
    if args.max_bypass < 0:
        print("fairlock bench etcd: --max-bypass must be >= 0", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with _etcd(args) as endpoint:
        if args.soak or args.grants:
            return _soak(args, endpoint)
        about = machine()
        runnable, missing = targets(args)
        for label, why in missing.items():
            progress(f"{label}: unavailable: {why}")
        results = measure(args, endpoint, runnable)
    about["load_average_after"] = machine()["load_average"]
    print(f"{_command_line(args)}: {about['cpus']} CPUs, {about['python']}, etcd on 127.0.0.1, "
          f"load average {about['load_average']} -> {about['load_average_after']}, "
          f"took {time.perf_counter() - started:.0f} s")
    print()
    print(render(results, runnable, missing))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"command": _command_line(args), "machine": about,
                       "variants": {t.label: {"variant": t.variant, "python": t.python, "detail": t.detail}
                                    for t in runnable},
                       "unavailable": missing, "results": results}, out, indent=2)
            out.write("\n")
    return 0

