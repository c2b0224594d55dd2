"""The load benchmark's tables and goal verdicts, built from the results' data alone."""

from __future__ import annotations

from typing import Any

from ._load_handoff import FAIRLOCK, FAIRLOCK_LOCKUTILS
from ._load_memory import CHURNERS, PATTERNS
from ._report import Table, fmt, median

__all__ = ["FLAT", "MEMORY_BOUND", "handoff_table", "memory_table", "render", "verdicts"]

_MODE_TITLES = {"native": "native threads", "eventlet": "eventlet green threads"}
_MIB = 1024 * 1024

#: Per-handoff cost at the largest N over the smallest below this counts as flat.
FLAT = 2.0
#: Traced bytes left after a one-at-a-time churn below this count as back to baseline.
MEMORY_BOUND = _MIB
#: The churners whose registries are fairlock's.
_FAIRLOCK_CHURNERS = {c.label for c in CHURNERS.values() if c.module != "oslo_concurrency.lockutils"}


def _labels(handoff: dict[str, Any]) -> list[str]:
    labels: list[str] = []
    for results in handoff.values():
        for row in results["rows"]:
            if row["label"] not in labels:
                labels.append(row["label"])
    return labels


def handoff_table(handoff: dict[str, Any], reps: int) -> Table:
    modes = list(handoff)
    first = next(iter(handoff.values()))
    low = first["low"]
    table = Table(
        title=f"1. Per-handoff cost: N waiters parked on one lock, then N handoffs (median of {reps})",
        headers=["variant", "N"] + ["µs/handoff", f"x N={low}", "mean µs", "inversions"] * len(modes),
        align=["<", ">"] + [">"] * 4 * len(modes),
        groups=[(2 + 4 * i, 4, _MODE_TITLES[mode]) for i, mode in enumerate(modes)],
        notes=[
            "µs/handoff: the median time from one waiter's grant to the next waiter's; a repetition",
            f"runs chains of N until they make {first['high'] - 1} such handoffs (garbage collector off).",
            f"x N={low}: the same variant's µs/handoff at N over its µs/handoff at N={low} (flat = 1).",
            "mean µs: the mean of the same handoffs (a scheduling hiccup or a slow start weighs more",
            "at small N). The first handoff, from the main thread, is left out of both (JSON: first_us).",
            "inversions: the most, in any run, of waiter pairs granted against their arrival order.",
            "threading.Lock has no queue: its waiters announce themselves just before acquire, so with",
            "native threads their arrival order is approximate.",
        ],
    )
    rows = {
        mode: {(row["label"], row["waiters"]): row for row in results["rows"]}
        for mode, results in handoff.items()
    }
    for label in _labels(handoff):
        for n in first["waiters"]:
            cells = [label, str(n)]
            for mode in modes:
                row = rows[mode].get((label, n))
                base = rows[mode].get((label, low))
                if row is None or base is None:
                    cells += ["n/a", "-", "-", "-"]
                    continue
                cells.append(fmt(row["median_handoff_us"], 1))
                cells.append(fmt(row["median_handoff_us"] / base["median_handoff_us"], 2))
                cells.append(fmt(row["median_mean_us"], 1))
                cells.append(str(max(row["inversions"])))
            table.rows.append(cells)
    skipped = {label: why for results in handoff.values() for label, why in results["skipped"].items()}
    table.notes = list(table.notes) + [f"not run: {label}: {why}" for label, why in skipped.items()]
    return table


def _memory_rows(memory: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per churner and pattern: medians over the runs of each kind."""
    rows = []
    for pattern in PATTERNS:
        for key, churner in CHURNERS.items():
            untraced = memory["runs"].get(f"{key}|{pattern}|untraced")
            traced = memory["runs"].get(f"{key}|{pattern}|traced")
            if not untraced or not traced:
                continue
            rss_base = median(run["rss_base"] for run in untraced) if untraced[0]["rss_base"] else None
            row: dict[str, Any] = {
                "label": churner.label,
                "pattern": pattern,
                "registry_after": max(
                    run["registry_after"] - run["registry_before"] for run in untraced + traced
                ),
                "us_per_name": median(1e6 * run["seconds"] / run["names"] for run in untraced),
                "rss_base": rss_base,
                "traced_peak": median(run["traced_peak"] - run["traced_base"] for run in traced),
                "traced_after": median(run["traced_after"] - run["traced_base"] for run in traced),
            }
            if rss_base is not None:
                row["rss_peak"] = median(run["rss_peak"] - run["rss_base"] for run in untraced)
                row["rss_after"] = median(run["rss_after"] - run["rss_base"] for run in untraced)
                trimmed = [run["rss_trimmed"] - run["rss_base"] for run in untraced if run["rss_trimmed"]]
                row["rss_trimmed"] = median(trimmed) if trimmed else None
            rows.append(row)
    return rows


def memory_table(memory: dict[str, Any]) -> Table:
    names = memory["names"]
    reps = memory["reps"]
    table = Table(
        title=(
            f"2. {names} distinct names created, acquired, released and dropped "
            f"(a fresh interpreter per run{'' if reps == 1 else f', median of {reps}'})"
        ),
        headers=[
            "variant", "pattern", "registry after", "µs/name",
            "RSS MiB", "peak +MiB", "after +MiB", "trimmed +MiB",
            "traced peak +MiB", "B/lock", "traced after +KiB",
        ],
        align=["<", "<"] + [">"] * 9,
        groups=[(4, 4, "RSS"), (8, 3, "tracemalloc")],
        notes=[
            "registry after: locks left in the churner's registry by the churn (the lock registry of",
            "fairlock, its lockutils' Semaphores, oslo's Semaphores or FairLocks).",
            "RSS: the baseline (after imports and a 1,000-name warm-up), then above it the peak, the",
            "after-churn (after gc.collect()) and the same after glibc's malloc_trim(0) (trimmed);",
            "tracemalloc: bytes allocated by Python, in a second, traced run.",
            "B/lock: traced peak per name while all are held.",
        ],
    )
    for row in _memory_rows(memory):
        rss = row["rss_base"] is not None
        table.rows.append([
            row["label"],
            PATTERNS[row["pattern"]],
            str(row["registry_after"]),
            fmt(row["us_per_name"], 1),
            fmt(row["rss_base"] / _MIB, 1) if rss else "n/a",
            fmt(row["rss_peak"] / _MIB, 1) if rss else "-",
            fmt(row["rss_after"] / _MIB, 1) if rss else "-",
            fmt(row["rss_trimmed"] / _MIB, 1) if rss and row["rss_trimmed"] is not None else "-",
            fmt(row["traced_peak"] / _MIB, 2),
            fmt(row["traced_peak"] / names) if row["pattern"] == "all" else "-",
            fmt(row["traced_after"] / 1024, 1),
        ])
    table.notes = list(table.notes) + [f"not run: {label}: {why}" for label, why in memory["skipped"].items()]
    return table


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def verdicts(handoff: dict[str, Any], memory: dict[str, Any] | None) -> list[str]:
    """The load goals of issue 6: each with the measured figure and met / MISSED."""
    lines = []
    for mode, results in handoff.items():
        low, high = results["low"], results["high"]
        for label, ratio in results["ratios"].items():
            per_rep = ratio["per_rep"]
            spread = f"per repetition {min(per_rep):.2f}x to {max(per_rep):.2f}x"
            line = (
                f"{mode}: {label}: per handoff at N={high} / N={low}: {ratio['ratio']:.2f}x ({spread}; "
                f"mean {ratio['mean_ratio']:.2f}x)"
            )
            if label in (FAIRLOCK, FAIRLOCK_LOCKUTILS):
                line += f"; goal flat (< {FLAT:g}x): {_met(ratio['ratio'] < FLAT)}"
            lines.append(line)
        fifo_rows = [row for row in results["rows"] if row["label"] in (FAIRLOCK, FAIRLOCK_LOCKUTILS)]
        broken = [
            f"{row['label']} N={row['waiters']}"
            for row in fifo_rows
            if max(row["inversions"]) > 0 or row["handoffs"] != [row["waiters"]] * len(row["handoffs"])
        ]
        lines.append(
            f"{mode}: fairlock grant order and handoffs: "
            + (f"wrong in {', '.join(broken)}" if broken
               else "0 inversions and N handoffs for N waiters in every run")
            + f"; goal: {_met(not broken)}"
        )
    if memory is not None:
        rows = _memory_rows(memory)
        ours = [row for row in rows if row["label"] in _FAIRLOCK_CHURNERS]
        left = [
            f"{row['label']} ({PATTERNS[row['pattern']]}): {row['registry_after']}"
            for row in ours if row["registry_after"]
        ]
        lines.append(
            f"memory: fairlock registries after {memory['names']} names: "
            + (f"not empty: {', '.join(left)}" if left else "empty in every run")
            + f"; goal: {_met(not left)}"
        )
        for row in ours:
            if row["pattern"] == "one":
                lines.append(
                    f"memory: {row['label']}, one at a time: traced after - baseline "
                    f"{row['traced_after'] / 1024:.1f} KiB; goal < {MEMORY_BOUND // 1024} KiB: "
                    f"{_met(row['traced_after'] < MEMORY_BOUND)}"
                )
    return lines


def render(handoff: dict[str, Any], memory: dict[str, Any] | None, reps: int) -> str:
    parts = []
    if handoff:
        parts.append(handoff_table(handoff, reps).render())
    if memory is not None:
        parts.append(memory_table(memory).render())
    parts.append("Goals\n=====\n" + "\n".join(verdicts(handoff, memory)))
    return "\n\n".join(parts)
