"""The etcd benchmark's tables, built from the results' data alone (medians over repetitions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._etcd_runs import Target
from ._report import Table, fmt, median

FAIRLOCK = "fairlock EtcdLock"


def _values(results: dict[str, Any], section: str, label: str, key: str | Callable[[dict[str, Any]], Any]) -> list[Any]:
    out = []
    for rep in results["reps"]:
        row = rep[section].get(label) if section != "lanes" else rep["lanes"]
        if row is None:
            continue
        value = key(row) if callable(key) else row.get(key)
        if value is not None:
            out.append(value)
    return out


def _med(results: dict[str, Any], section: str, label: str, key: str | Callable[[dict[str, Any]], Any]) -> float | None:
    values = _values(results, section, label, key)
    return median(values) if values else None


def _cell(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else fmt(value, digits)


def _ratio(value: float | None, base: float | None, digits: int = 2) -> str:
    if value is None or not base:
        return "-"
    return fmt(value / base, digits)


def _unavailable(missing: dict[str, str]) -> list[str]:
    return [f"{label}  unavailable: {why}" for label, why in missing.items()]


def uncontended_table(results: dict[str, Any], labels: Sequence[str], missing: dict[str, str]) -> Table:
    reps = len(results["reps"])
    table = Table(
        title=f"1. Uncontended acquire+release, one client (median of {reps} reps, "
              f"each the median of {results['pairs']} pairs)",
        headers=["variant", "ms/pair", "x fairlock", "etcd writes/pair", "leases/acquire",
                 "etcd RPCs/pair", "leases per client"],
        align=["<"] + [">"] * 6,
        notes=_unavailable(missing) + [
            "etcd writes: store revision after minus before; leases: etcd's lease-granted counter;",
            "RPCs: etcd's gRPC messages received (HTTP gateway calls included); leases per client:",
            "granted while the client was set up (fairlock: its Session; tooz: membership lease).",
        ],
    )
    base = _med(results, "uncontended", FAIRLOCK, "median_ms")
    for label in labels:
        ms = _med(results, "uncontended", label, "median_ms")
        table.rows.append([
            label, _cell(ms, 2), _ratio(ms, base),
            _cell(_med(results, "uncontended", label, "writes_per_pair"), 2),
            _cell(_med(results, "uncontended", label, "leases_per_acquire"), 2),
            _cell(_med(results, "uncontended", label, "rpcs_per_pair"), 2),
            _cell(_med(results, "uncontended", label, "leases_at_setup"), 0),
        ])
    return table


def contended_table(results: dict[str, Any], labels: Sequence[str], missing: dict[str, str]) -> Table:
    n, small, reps = results["waiters"], results["small"], len(results["reps"])
    table = Table(
        title=f"2. Contended, empty critical section: {n} waiters in {results['processes']} processes, "
              f"and {small} waiters (median of {reps} reps of {results['seconds']:g} s)",
        headers=["variant", "grants/s", "handoffs/s", "x fairlock", "same holder %", "handoff ms",
                 "p90 ms", "writes/grant", "RPCs/grant", "handoffs/s", "handoff ms", "p90 ms"],
        align=["<"] + [">"] * 11,
        groups=[(1, 8, f"{n} waiters"), (9, 3, f"{small} waiters")],
        notes=_unavailable(missing) + [
            "handoff: the lock goes to a different holder; handoff ms: from the releaser calling",
            "release to the next holder running (median, p90); same holder %: grants that went to",
            "the waiter that had just released it (barging).",
        ],
    )
    base = _med(results, "contended", FAIRLOCK, "holder_changes_per_s")
    for label in labels:
        rate = _med(results, "contended", label, "holder_changes_per_s")
        same = _med(results, "contended", label, "same_holder_share")
        table.rows.append([
            label,
            _cell(_med(results, "contended", label, "grants_per_s")),
            _cell(rate), _ratio(rate, base),
            _cell(None if same is None else 100 * same, 0),
            _cell(_med(results, "contended", label, "handoff_median_ms")),
            _cell(_med(results, "contended", label, "handoff_p90_ms")),
            _cell(_med(results, "contended", label, "writes_per_grant"), 2),
            _cell(_med(results, "contended", label, "rpcs_per_grant")),
            _cell(_med(results, "contended_small", label, "holder_changes_per_s")),
            _cell(_med(results, "contended_small", label, "handoff_median_ms")),
            _cell(_med(results, "contended_small", label, "handoff_p90_ms")),
        ])
    return table


def watch_table(results: dict[str, Any], labels: Sequence[str], missing: dict[str, str]) -> Table:
    n, small = results["waiters"], results["small"]
    table = Table(
        title=f"3. Watch events per release ({n} waiters; median of {len(results['reps'])} reps)",
        headers=["variant", "received by clients", "sent by etcd", f"sent by etcd, {small} waiters"],
        align=["<"] + [">"] * 3,
        notes=_unavailable(missing) + [
            "received by clients: fairlock: lock.statistics().watch_events summed over waiters;",
            "python-etcd3: events passed to its watch callbacks; tooz polls (no watch); v3lock's",
            "watches run inside etcd (n/a). sent by etcd: etcd_debugging_mvcc_events_total.",
        ],
    )
    for label in labels:
        table.rows.append([
            label,
            _cell(_med(results, "contended", label, "client_events_per_release"), 2),
            _cell(_med(results, "contended", label, "server_events_per_release"), 2),
            _cell(_med(results, "contended_small", label, "server_events_per_release"), 2),
        ])
    return table


def lease_table(results: dict[str, Any], labels: Sequence[str], missing: dict[str, str]) -> Table:
    n = results["waiters"]
    table = Table(
        title=f"4. Leases (median of {len(results['reps'])} reps)",
        headers=["variant", "per acquisition, uncontended", f"per grant, {n} waiters",
                 "left alive per run"],
        align=["<"] + [">"] * 3,
        notes=_unavailable(missing) + [
            "granted: etcd's lease-granted counter; left alive: leases that appeared during a",
            f"contended run ({n} clients) and were still alive after every client had closed",
            "(/v3/lease/leases): leaked until their TTL runs out.",
        ],
    )
    for label in labels:
        table.rows.append([
            label,
            _cell(_med(results, "uncontended", label, "leases_per_acquire"), 2),
            _cell(_med(results, "contended", label, "leases_per_grant"), 2),
            _cell(_med(results, "contended", label, "leases_left"), 0),
        ])
    return table


def _fair_row(results: dict[str, Any], section: str, label: str, fair: str, lanes: str,
              k: str, name: str) -> list[str] | None:
    reports = _values(results, section, label, fair)
    if not reports:
        return None
    shares = [100 * r["fifo_violations"] / r["grants"] for r in reports if r["grants"]]
    worst = max(r["max_overtaken"] for r in reports)
    overlaps = sum(r["overlaps"] for r in reports)
    tokens = sum(r["token_regressions"] for r in reports)
    verdict = f"{overlaps} overlaps, {tokens} token regressions"
    return [name, lanes, k, reports[0]["order"], fmt(median(r["grants"] for r in reports)),
            _cell(median(shares) if shares else None, 1), str(worst), verdict]


def fairness_table(results: dict[str, Any], labels: Sequence[str], missing: dict[str, str],
                   fencing: dict[str, bool]) -> Table:
    n, k = results["waiters"], results["max_bypass"]
    table = Table(
        title=f"5. Fairness across processes ({n} waiters; median of {len(results['reps'])} reps, "
              "max overtaken: the worst rep)",
        headers=["variant", "lanes", "K", "order by", "grants", "overtaken in lane %",
                 "max overtaken", "checker"],
        align=["<", ">", ">", "<", ">", ">", ">", "<"],
        notes=_unavailable(missing) + [
            "overtaken in lane %: requests granted after a later request of their own lane (a FIFO",
            "violation each); max overtaken: most later requests (any lane) served before one request.",
            "order by ticket: etcd's revision of the queueing txn (exact); by request time: when",
            "acquire was called (requests a round trip apart may reach etcd in either order).",
            "checker: fencing tokens judged only where the lock hands them out (fairlock, the fork).",
        ],
    )
    rows = [
        _fair_row(results, "contended", FAIRLOCK, "fair_ticket", "1", "-", FAIRLOCK),
        _fair_row(results, "contended", FAIRLOCK, "fair_request", "1", "-", FAIRLOCK),
        _fair_row(results, "lanes", FAIRLOCK, "fair_ticket", str(len(results["lanes"])), str(k), FAIRLOCK),
    ]
    for label in labels:
        if label != FAIRLOCK:
            rows.append(_fair_row(results, "contended", label, "fair_request", "1", "-", label))
    for row in rows:
        if row is not None:
            if not fencing.get(row[0], False):
                row[-1] = row[-1].split(",")[0] + ", no tokens"
            table.rows.append(row)
    return table


def render(results: dict[str, Any], runnable: Sequence[Target], missing: dict[str, str]) -> str:
    labels = [t.label for t in runnable]
    fencing = {t.label: t.fencing for t in runnable}
    tables = [uncontended_table(results, labels, missing), contended_table(results, labels, missing),
              watch_table(results, labels, missing), lease_table(results, labels, missing),
              fairness_table(results, labels, missing, fencing)]
    notes = [f"{t.label}: {t.detail}" for t in runnable if t.detail]
    return "\n\n".join(t.render() for t in tables) + ("\n\nVersions: " + "; ".join(notes) if notes else "")
