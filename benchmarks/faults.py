"""Fault injection against a real etcd: ``python -m fairlock bench faults``.

Worker processes (``benchmarks._fault_worker``, one lease each, one lock per thread) loop on
one lock name and append a grant record per critical section to their own append-only logs; this
module starts them, injects faults, and judges the run afterwards with the fencing checker
(``fairlock.testing.checker``): no two sections overlap in the span each used its token, tokens
strictly increase in grant order, a holder told of a loss writes nothing after being told, FIFO
within a lane (by etcd's ticket order) and bypass <= K. After every worker has stopped it counts
the keys left under the run's prefix (first while the workers' sessions are still open: a key
there is a leak, not a lease still running out) and the leases of the run still alive in etcd.

Scenarios (``--scenario NAME`` or ``all``), each once per repetition:

``holder-kill``   the holder process gets SIGKILL: the next waiter (another process) acquires
                  within the lease TTL + 1 s. Figure: SIGKILL -> next grant.
``waiter-kill``   the oldest waiter process (high lane) gets SIGKILL and the holder releases at
                  once, handing the lock to the dead waiter: the queue stalls only until its lease
                  expires, and every key of its lease disappears. Figures: SIGKILL -> its keys
                  gone; release -> next grant to a live process.
``holder-pause``  the holder process gets SIGSTOP until another process holds the lock (longer
                  than the TTL), then SIGCONT: it is told the lock is lost, the next holder's token
                  is larger, and the checker finds no overlap of the spans the holders used their
                  tokens in. Figures: SIGSTOP -> next grant; SIGCONT -> lost notice.
``cancels``       worker processes under load with random short timeouts and non-blocking tries:
                  0 keys and 0 leases left at the end.

``--soak SECONDS`` is the long form: ``--processes`` workers x ``--threads`` threads (2 lanes,
K = ``--max-bypass``, random timeouts and tries) under faults drawn one after another --
SIGKILL of a holder, SIGKILL of a waiter, SIGSTOP of a holder past its lease then SIGCONT, and
(on the etcd this command started itself) a restart of etcd on the same data dir -- with killed
workers respawned. At the end: faults by kind, recovery delays, grants, lost sections, the
checker's verdict and leaked keys and leases. Exit status 1 if anything is not as it must be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from fairlock.testing import checker
from ._fault_run import LANES, FaultError, Outcome, Run, judge
from ._fault_scenarios import (
    FAULT_KINDS,
    GRACE,
    SCENARIOS,
    Delay,
    ScenarioResult,
    SoakResult,
    cancels,
    holder_kill,
    holder_pause,
    soak,
    waiter_kill,
)
from fairlock.etcd.cli import ENDPOINT_HELP, URL_HELP, add_etcd_arguments, where_from_args
from ._args import json_file, positive_int, seconds
from ._report import Table, machine, median, progress

__all__ = ["HELP", "add_arguments", "run", "SCENARIOS", "FAULT_KINDS", "Run", "Outcome", "Delay",
           "ScenarioResult", "SoakResult", "FaultError", "judge", "holder_kill", "waiter_kill",
           "holder_pause", "cancels", "soak"]

HELP = "fault injection on a real etcd: holder/waiter SIGKILL, holder SIGSTOP, cancels, etcd restarts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--scenario", choices=[*SCENARIOS, "all"],
                      help="run one scenario (or all) --reps times; print figures and verdicts")
    what.add_argument("--soak", type=seconds, metavar="SECONDS", help="the long form: random faults for SECONDS")
    parser.add_argument("--reps", type=positive_int, default=1, help="repetitions of each scenario (default 1)")
    parser.add_argument("--ttl", type=int, default=None, help="lease TTL in seconds (default 2; soak 3)")
    parser.add_argument("--processes", type=positive_int, default=4, help="soak: worker processes (default 4)")
    parser.add_argument("--threads", type=positive_int, default=8, help="soak: threads per worker (default 8)")
    parser.add_argument("--max-bypass", type=int, default=4, help="K (default 4)")
    parser.add_argument("--kinds", help=f"soak: comma-separated fault kinds (default all: {','.join(FAULT_KINDS)})")
    parser.add_argument("--shared-lock", action="store_true",
                        help="soak: a worker's threads share one two-level lock (judged for safety only)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", metavar="FILE", type=json_file, help="also write the figures as JSON")
    add_etcd_arguments(parser, url_help="use this etcd instead of starting one (then no etcd restarts): "
                       + URL_HELP, endpoint_help="use this etcd instead of starting one (then no etcd "
                       "restarts): " + ENDPOINT_HELP)
    parser.add_argument("--log-dir", help="keep the workers' grant logs here")


@contextlib.contextmanager
def _etcd(args: argparse.Namespace) -> Iterator[tuple[str, Any]]:
    where = where_from_args(args)
    if where is not None:
        yield where.config.endpoints[0], None
        return
    from fairlock.testing import EtcdServer

    with EtcdServer(name="faults") as server:
        yield server.endpoint, server


def _report_row(label: str, outcome: Outcome, verdict: str) -> list[str]:
    r = outcome.report
    judged = r.order != "-"  # "-": safety only (a two-level lock per worker)
    return [label, str(r.grants), str(r.lost), str(r.overlaps), str(r.token_regressions),
            str(r.fifo_violations) if judged else "-", str(r.max_overtaken) if judged else "-",
            str(r.writes_after_lost),
            str(outcome.leaked_live + outcome.leaked_keys), str(outcome.leaked_leases), verdict]


_REPORT_HEADERS = ["", "grants", "lost", "overlaps", "token regressions", "FIFO violations",
                   "max overtaken", "writes after lost", "leaked keys", "leaked leases", "verdict"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _scenarios(args: argparse.Namespace, endpoint: str) -> int:
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    ttl = args.ttl or 2
    results: dict[str, list[ScenarioResult]] = {}
    for rep in range(args.reps):
        for name in names:
            progress(f"rep {rep + 1}/{args.reps}: {name}")
            seed = args.seed * 100 + rep
            log_dir = os.path.join(args.log_dir, f"{name}-r{rep}") if args.log_dir else None
            try:
                result = SCENARIOS[name](endpoint, ttl=ttl, seed=seed, max_bypass=args.max_bypass,
                                         log_dir=log_dir)
            except FaultError as exc:
                progress(f"{name}: FAILED: {exc}")
                results.setdefault(name, [])
                continue
            results.setdefault(name, []).append(result)
            progress(f"{name}: {'ok' if result.ok else 'NOT OK'}: "
                     + ", ".join(f"{d.label} {_fmt(d.seconds)} s" for d in result.delays))
    delays = Table(
        title=f"Fault scenarios: delays (ttl {ttl} s, K={args.max_bypass}, median and max of {args.reps} rep(s))",
        headers=["scenario", "measured", "median s", "max s", "bound s", "within"],
        align=["<", "<", ">", ">", ">", ">"])
    verdicts = Table(title="Fault scenarios: the checker and what was left (summed over reps)",
                     headers=["scenario", *_REPORT_HEADERS[1:]], align=["<"] + [">"] * 9 + ["<"])
    failed = 0
    for name in names:
        runs = results.get(name, [])
        if len(runs) < args.reps:
            failed += 1
            verdicts.rows.append([name] + ["-"] * 9 + [f"FAILED {args.reps - len(runs)} rep(s)"])
        if not runs:
            continue
        for i, d in enumerate(runs[0].delays):
            values = [r.delays[i].seconds for r in runs]
            if any(v is None for v in values):
                delays.rows.append([name, d.label, "-", "-", _fmt(d.bound), "no"])
                continue
            within = sum(r.delays[i].ok for r in runs)
            delays.rows.append([name, d.label, _fmt(median(values)), _fmt(max(values)),  # type: ignore[arg-type]
                                _fmt(d.bound), f"{within}/{len(runs)}"])
        failed += sum(not r.ok for r in runs)
        total = _sum_outcomes([r.outcome for r in runs])
        verdicts.rows.append(_report_row(name, total, "clean" if all(r.ok for r in runs) else "NOT OK"))
        for r in runs:
            verdicts.notes = [*verdicts.notes, *(f"{name}: {k}: failed" for k, v in r.checks.items() if not v)]
            verdicts.notes = [*verdicts.notes, *(f"{name}: violation: {v.kind}: {v.detail}"
                                                 for v in r.outcome.report.violations)]
            verdicts.notes = [*verdicts.notes, *(f"{name}: worker error: {e}" for e in r.outcome.errors[:3])]
    command = (f"python -m fairlock bench faults --scenario {args.scenario} --reps {args.reps} --ttl {ttl} "
               f"--max-bypass {args.max_bypass} --seed {args.seed}")
    about = machine()
    print(f"{command}: {about['cpus']} CPUs, {about['python']}, etcd on 127.0.0.1, "
          f"load average {about['load_average']}")
    print()
    print(delays.render())
    print()
    print(verdicts.render())
    if args.json:
        _write_json(args.json, {"command": command, "machine": about, "ttl": ttl, "results": {
            name: [_scenario_dict(r) for r in runs] for name, runs in results.items()}})
    return 1 if failed else 0


def _sum_outcomes(outcomes: Sequence[Outcome]) -> Outcome:
    first = outcomes[0]
    r = first.report
    report = checker.Report(
        grants=sum(o.report.grants for o in outcomes), order=r.order,
        overlaps=sum(o.report.overlaps for o in outcomes),
        token_regressions=sum(o.report.token_regressions for o in outcomes),
        fifo_violations=sum(o.report.fifo_violations for o in outcomes),
        max_overtaken=max(o.report.max_overtaken for o in outcomes), max_bypass=r.max_bypass,
        lost=sum(o.report.lost for o in outcomes),
        writes_after_lost=sum(o.report.writes_after_lost for o in outcomes))
    return Outcome(report=report, records=[], leaked_live=sum(o.leaked_live for o in outcomes),
                   leaked_keys=sum(o.leaked_keys for o in outcomes),
                   leaked_leases=sum(o.leaked_leases for o in outcomes),
                   tickets_unknown=sum(o.tickets_unknown for o in outcomes), counts={},
                   errors=[e for o in outcomes for e in o.errors],
                   hung=sum(o.hung for o in outcomes), seconds=sum(o.seconds for o in outcomes))


def _outcome_dict(o: Outcome) -> dict[str, Any]:
    report = {k: v for k, v in asdict(o.report).items() if k != "violations"}
    report["violations"] = [f"{v.kind}: {v.detail}" for v in o.report.violations]
    report["ok"] = o.report.ok
    return {"report": report, "leaked_live": o.leaked_live, "leaked_keys": o.leaked_keys,
            "leaked_leases": o.leaked_leases, "tickets_unknown": o.tickets_unknown,
            "counts": o.counts, "errors": o.errors, "hung": o.hung, "seconds": o.seconds}


def _scenario_dict(r: ScenarioResult) -> dict[str, Any]:
    return {"name": r.name, "ok": r.ok, "delays": [asdict(d) for d in r.delays], "checks": r.checks,
            "facts": r.facts, "outcome": _outcome_dict(r.outcome)}


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")


def _soak(args: argparse.Namespace, endpoint: str, server: Any) -> int:
    ttl = args.ttl or 3
    kinds = args.kinds.split(",") if args.kinds else None
    unknown = [k for k in kinds or () if k not in FAULT_KINDS]
    if unknown:
        print(f"fairlock bench faults: unknown fault kinds {unknown}", file=sys.stderr)
        return 2
    progress(f"soak {args.soak:g} s: {args.processes} workers x {args.threads} threads, lanes "
             f"{list(LANES)}, K={args.max_bypass}, ttl {ttl} s"
             + ("" if server is not None else " (given etcd: no restarts)"))
    result = soak(endpoint, args.soak, server=server, processes=args.processes, threads=args.threads,
                  ttl=ttl, max_bypass=args.max_bypass, seed=args.seed, kinds=kinds,
                  log_dir=args.log_dir, shared_lock=args.shared_lock, say=progress)
    faults = Table(
        title=f"Soak: faults and recovery ({result.processes} workers x {result.threads} threads, "
              f"ttl {ttl} s, {result.seconds:.0f} s)",
        headers=["fault", "injected", "failed", "recovery measured", "median s", "max s", "bound s"],
        align=["<", ">", ">", "<", ">", ">", ">"])
    measured = {"kill-holder": "SIGKILL -> next grant", "kill-waiter": "SIGKILL -> its keys gone",
                "pause-holder": "SIGSTOP -> next grant", "restart-etcd": "restart begun -> next grant"}
    for kind, items in result.by_kind().items():
        if kind == "restart-etcd" and server is None:
            continue
        done = [f.delay for f in items if f.delay is not None]
        faults.rows.append([kind, str(len(items)), str(len(items) - len(done)), measured[kind],
                            _fmt(median(done)) if done else "-", _fmt(max(done)) if done else "-",
                            "-" if kind == "restart-etcd" else _fmt(ttl + GRACE)])
    if result.notices:
        faults.rows.append(["pause-holder", "", "", "SIGCONT -> lost notice",
                            _fmt(median(result.notices)), _fmt(max(result.notices)), _fmt(GRACE)])
    o = result.outcome
    verdict = Table(title="Soak: the checker and what was left", headers=["run", *_REPORT_HEADERS[1:]],
                    align=["<"] + [">"] * 9 + ["<"],
                    rows=[_report_row("soak", o, "clean" if result.ok else "NOT OK")])
    verdict.notes = [f"{o.report.grants / max(o.seconds, 1e-9):.1f} grants/s; workers respawned: "
                     f"{result.respawned}; counts of the workers alive at the end: "
                     + ", ".join(f"{k} {v}" for k, v in o.counts.items())
                     + (f"; records without ticket: {o.tickets_unknown}; order by {o.report.order}"
                        if not args.shared_lock else "; one two-level lock per worker: FIFO and "
                        "bypass across processes not judged")]
    verdict.notes += [f"violation: {v.kind}: {v.detail}" for v in o.report.violations]
    verdict.notes += [f"worker error: {e}" for e in o.errors[:5]]
    verdict.notes += [f"fault failed: {f}" for f in result.failures[:5]]
    command = (f"python -m fairlock bench faults --soak {args.soak:g} --processes {args.processes} "
               f"--threads {args.threads} --ttl {ttl} --max-bypass {args.max_bypass} --seed {args.seed}"
               + (" --shared-lock" if args.shared_lock else ""))
    about = machine()
    print(f"{command}: {about['cpus']} CPUs, {about['python']}, load average {about['load_average']}")
    print()
    print(faults.render())
    print()
    print(verdict.render())
    if args.json:
        _write_json(args.json, {"command": command, "machine": about, "ttl": ttl,
                                "seconds": result.seconds, "respawned": result.respawned,
                                "faults": [asdict(f) for f in result.faults], "notices": result.notices,
                                "failures": result.failures, "outcome": _outcome_dict(o)})
    return 0 if result.ok else 1


def run(args: argparse.Namespace) -> int:
    if args.max_bypass < 0:
        print("fairlock bench faults: --max-bypass must be >= 0", file=sys.stderr)
        return 2
    if args.ttl is not None and args.ttl < 2:
        print("fairlock bench faults: --ttl must be >= 2", file=sys.stderr)
        return 2
    with _etcd(args) as (endpoint, server):
        if args.soak:
            return _soak(args, endpoint, server)
        return _scenarios(args, endpoint)
