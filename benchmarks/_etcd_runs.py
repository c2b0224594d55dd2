"""Running the etcd benchmark's cases in child processes and turning their results into figures.

Each case runs in fresh children (``benchmarks._etcd_worker``) under the interpreter that has
the variant's client library; the figures here come from the children's records and from etcd's
own counters read around each measured stretch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fairlock

from fairlock.testing import checker
from ._etcd_worker import lease_ids, snapshot
from ._report import child_env, median

__all__ = ["Target", "probe", "uncontended", "contended", "fencing_run"]

#: RPCs that one snapshot() itself makes (kv/range and lease/leases) before reading /metrics.
_SNAPSHOT_RPCS = 2
_GRANTED = "etcd_debugging_lease_granted_total"
_EVENTS = "etcd_debugging_mvcc_events_total"
_RPCS = "grpc_server_msg_received_total"


@dataclass(frozen=True)
class Target:
    """A variant that can run: its row label, adapter name and interpreter."""

    label: str
    variant: str
    python: str
    detail: str = ""
    fencing: bool = False  # does it hand out fencing tokens the checker can judge


def _env() -> dict[str, str]:
    return child_env("ignore")


def _spawn(python: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    child = subprocess.Popen([python, "-m", "benchmarks._etcd_worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=_env())
    assert child.stdin is not None
    child.stdin.write(json.dumps(spec) + "\n")
    child.stdin.flush()
    return child


def _finish(child: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise RuntimeError(f"benchmark child {child.args!r} did not finish within {timeout:g} s") from None
    if child.returncode != 0:
        raise RuntimeError(f"benchmark child exited with status {child.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def probe(python: str, module: str) -> dict[str, Any]:
    """Whether ``python`` can import ``module``, and the versions it would use."""
    try:
        return _finish(_spawn(python, {"case": "probe", "module": module}), 60)
    except (OSError, RuntimeError, ValueError) as exc:
        return {"ok": False, "error": f"{python}: {type(exc).__name__}: {exc}"[:200]}


def _delta(after: dict[str, Any], before: dict[str, Any], name: str) -> float | None:
    a, b = after["counters"].get(name), before["counters"].get(name)
    return None if a is None or b is None else a - b


def _per(value: float | None, n: int) -> float | None:
    return None if value is None or n <= 0 else value / n


def uncontended(target: Target, endpoint: str, pairs: int, lock: str) -> dict[str, Any]:
    r = _finish(_spawn(target.python, {"case": "uncontended", "variant": target.variant,
                                       "endpoint": endpoint, "lock": lock, "pairs": pairs}), 600)
    before, after = r["window"]
    setup0, setup1 = r["setup"]
    rpcs = _delta(after, before, _RPCS)
    return {
        "pairs": pairs,
        "median_ms": median(r["pair_ns"]) / 1e6,
        "writes_per_pair": (after["revision"] - before["revision"]) / pairs,
        "leases_per_acquire": _per(_delta(after, before, _GRANTED), pairs),
        "rpcs_per_pair": _per(None if rpcs is None else rpcs - _SNAPSHOT_RPCS, pairs),
        "leases_at_setup": _delta(setup1, setup0, _GRANTED),
    }


def _split(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def contended(target: Target, endpoint: str, *, waiters: int, processes: int, warmup: float,
              seconds: float, lock: str, lanes: list[str] | None = None,
              max_bypass: int | None = 4) -> dict[str, Any]:
    """``waiters`` clients spread over ``processes`` children, all on one lock."""
    leases_before = set(lease_ids(endpoint))
    children, first = [], 0
    for n in _split(waiters, processes):
        children.append(_spawn(target.python, {
            "case": "contended", "variant": target.variant, "endpoint": endpoint, "lock": lock,
            "waiters": n, "first": first, "lanes": lanes, "max_bypass": max_bypass}))
        first += n
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            for c in children:
                c.kill()
            raise RuntimeError(f"{target.label}: a benchmark child failed while setting up")
    start_at = time.monotonic_ns() + 50_000_000
    window = [start_at + int(warmup * 1e9), start_at + int((warmup + seconds) * 1e9)]
    times = json.dumps({"start_at": start_at, "stop_at": window[1], "window": window}) + "\n"
    for child in children:
        assert child.stdin is not None
        child.stdin.write(times)
        child.stdin.flush()
    snaps = []
    for at in window:
        while (left := at - time.monotonic_ns()) > 0:
            time.sleep(left / 1e9)
        snaps.append(snapshot(endpoint))
    results = [_finish(child, 120) for child in children]
    figures = _contended_figures(target, results, snaps, lanes, max_bypass)
    # Leases of this run still alive once every client has closed: leaked until their TTL.
    figures["leases_left"] = len(set(lease_ids(endpoint)) - leases_before)
    return figures


def _contended_figures(target: Target, results: list[dict[str, Any]], snaps: list[dict[str, Any]],
                       lanes: list[str] | None, max_bypass: int | None) -> dict[str, Any]:
    before, after = snaps
    w0, w1 = before["at"], after["at"]
    span = (w1 - w0) / 1e9
    records = sorted((r for res in results for r in res["records"]), key=lambda r: r["start"])
    inside = [r for r in records if w0 <= r["start"] < w1]
    released = sum(1 for r in records if w0 <= r["end"] < w1)
    grants = len(inside)
    handoffs = [(b["start"] - a["end"]) / 1e6 for a, b in zip(inside, inside[1:])
                if a["holder"] != b["holder"]]
    rpcs = _delta(after, before, _RPCS)
    client_events = None
    if all(res["client_events"] is not None for res in results):
        client_events = sum(res["client_events"][1] - res["client_events"][0] for res in results)
    grants_records = [checker.Grant(**r) for r in inside]
    fair_ticket = None
    if grants_records and all(g.ticket is not None for g in grants_records):
        fair_ticket = checker.check(grants_records, max_bypass=max_bypass if lanes else None,
                                    order="ticket", fencing=target.fencing)
    fair_request = checker.check(grants_records, max_bypass=None, order="request", fencing=target.fencing)
    return {
        "grants": grants,
        "seconds": span,
        "grants_per_s": grants / span,
        "holder_changes_per_s": len(handoffs) / span,
        "same_holder_share": (1 - len(handoffs) / max(1, grants - 1)) if grants > 1 else 0.0,
        "handoff_median_ms": median(handoffs) if handoffs else None,
        "handoff_p90_ms": sorted(handoffs)[int(0.9 * (len(handoffs) - 1))] if handoffs else None,
        "writes_per_grant": _per(after["revision"] - before["revision"], grants),
        "rpcs_per_grant": _per(None if rpcs is None else rpcs - _SNAPSHOT_RPCS, grants),
        "leases_per_grant": _per(_delta(after, before, _GRANTED), grants),
        "server_events_per_release": _per(_delta(after, before, _EVENTS), released),
        "client_events_per_release": _per(client_events, released),
        "fair_ticket": None if fair_ticket is None else _report_dict(fair_ticket),
        "fair_request": _report_dict(fair_request),
        "hung": sum(res["hung"] for res in results),
        "errors": [e for res in results for e in res["errors"]][:5],
    }


def _report_dict(report: checker.Report) -> dict[str, Any]:
    return {"grants": report.grants, "order": report.order, "overlaps": report.overlaps,
            "token_regressions": report.token_regressions, "fifo_violations": report.fifo_violations,
            "max_overtaken": report.max_overtaken, "max_bypass": report.max_bypass, "ok": report.ok,
            "violations": [f"{v.kind}: {v.detail}" for v in report.violations]}


def fencing_run(endpoint: str, *, variant: str = "fairlock", processes: int = 4, sessions: int = 1,
                seconds: float | None = None, grants: int | None = None,
                lanes: tuple[str, ...] = ("high", "normal"), max_bypass: int | None = 4,
                hold_ms: float = 1.0, log_dir: str | None = None, python: str | None = None,
                fencing: bool = True) -> tuple[checker.Report, list[Path], dict[str, Any]]:
    """``processes`` workers x ``sessions`` sessions append grant records; then the checker judges.

    Stops after ``seconds`` or when ``grants`` requests in total have been made (split evenly).
    """
    if seconds is None and grants is None:
        raise ValueError("fencing_run needs seconds or grants")
    directory = Path(log_dir or tempfile.mkdtemp(prefix="fairlock-fencing-"))
    directory.mkdir(parents=True, exist_ok=True)
    lock = f"fencing-{os.getpid()}-{time.monotonic_ns()}"
    quotas = _split(grants, processes) if grants is not None else [None] * processes
    logs, children = [], []
    started = time.monotonic()
    for i, quota in enumerate(quotas):
        log = directory / f"worker-{i}.jsonl"
        logs.append(log)
        children.append(_spawn(python or sys.executable, {
            "case": "fencing", "variant": variant, "endpoint": endpoint, "lock": lock,
            "worker": f"p{i}", "sessions": sessions, "lanes": list(lanes), "max_bypass": max_bypass,
            "seconds": seconds, "grants": quota, "hold_ms": hold_ms, "log": str(log), "seed": i}))
    results = [_finish(child, (seconds or 600) + 120) for child in children]
    took = time.monotonic() - started
    report = checker.check(checker.load(logs), max_bypass=max_bypass, fencing=fencing)
    return report, logs, {"seconds": took, "errors": [e for r in results for e in r["errors"]][:5]}
