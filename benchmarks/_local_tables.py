"""The local benchmarks' tables and goal verdicts, built from the results' data alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._local_cases import (
    EMPTY_LOOP,
    FAIRLOCK_CALLS,
    FAIRLOCK_FIFO,
    FAIRLOCK_HIGH,
    FAIRLOCK_LOCKUTILS,
    FAIRLOCK_SYNCHRONIZED,
    FAIRLOCK_WITH,
    OSLO_DEFAULT,
    OSLO_FAIR,
    OSLO_SYNCHRONIZED,
    PING_PONG,
)
from ._report import Table, fmt, median

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
    slices = next(iter(all_results.values()))["uncontended"]["slices"]
    table = Table(
        title=f"1. Uncontended acquire+release, ns per pair "
        f"(median of {reps}, each the best of {slices} slices)",
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


def _contended_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One mode's contended results, one per number of threads."""
    return [results["contended"], *results.get("contended_more", [])]


def contended_table(all_results: dict[str, dict[str, Any]], reps: int, index: int = 0) -> Table:
    """The contended table of the ``index``-th number of threads."""
    modes = list(all_results)
    picked = {mode: _contended_runs(results)[index] for mode, results in all_results.items()}
    first = next(iter(picked.values()))
    sections = ", ".join(f"{m}: {r['critical_section']}" for m, r in picked.items())
    table = Table(
        title=(
            f"2. Contended: {first['threads']} threads, acquisitions per second "
            f"(median of {reps}, each the median of {first['slices']} runs of {first['seconds']:g} s)"
        ),
        headers=["variant"] + ["acq/s", "x oslo fair", "handoffs %"] * len(modes),
        align=["<"] + [">"] * 3 * len(modes),
        groups=_groups(modes, 1, 3),
        notes=[
            f"critical section: {sections}.",
            "handoffs %: share of fairlock grants made by direct handoff at release "
            "(lock.statistics()).",
            f"{PING_PONG}: thread switches per second through two plain locks, the ceiling "
            "for a lock that hands over at every release.",
        ],
    )
    rows = {mode: {row["label"]: row for row in run["rows"]} for mode, run in picked.items()}
    labels: list[str] = []
    for run in picked.values():
        labels += [row["label"] for row in run["rows"] if row["label"] not in labels]
    for label in labels:
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


def _paired(results: dict[str, Any], label: str, base: str) -> list[float]:
    """Per repetition: ns of ``label`` / ns of ``base`` (both ran in the same slices)."""
    rows = _rows_by(results, "uncontended", "label")
    return [a / b for a, b in zip(rows[label]["ns"], rows[base]["ns"])]


def verdicts(all_results: dict[str, dict[str, Any]]) -> list[str]:
    """fairlock's goals, each with the measured figure, and met / MISSED. A goal about a ratio is
    met only when every repetition meets it, not just the median."""
    lines = []
    for mode, results in all_results.items():
        unc = _rows_by(results, "uncontended", "label")
        for label in (FAIRLOCK_WITH, FAIRLOCK_CALLS):
            row = unc[label]
            lines.append(
                f"{mode}: {label}: {row['ratio']:.2f}x threading.Lock (net {row['ratio_net']:.2f}x); "
                f"fairlock's goal vs threading.Lock <= 3x: {_met(row['ratio'] <= 3)}"
            )
        for label, base in ((FAIRLOCK_LOCKUTILS, OSLO_DEFAULT), (FAIRLOCK_SYNCHRONIZED, OSLO_SYNCHRONIZED)):
            if label not in unc or base not in unc:
                continue
            paired = _paired(results, label, base)
            ratio = unc[label]["median_ns"] / unc[base]["median_ns"]
            lines.append(
                f"{mode}: uncontended {label}: {ratio:.2f}x the time of {base} (per repetition "
                f"{min(paired):.2f}x to {max(paired):.2f}x); fairlock's goal vs oslo <= 0.5x "
                f"(stretch 0.25x): {_met(max(paired) <= 0.5)}"
                + (", stretch met" if max(paired) <= 0.25 else "")
            )
        for run in _contended_runs(results):
            threads = run["threads"]
            for label, key in ((FAIRLOCK_LOCKUTILS, "lockutils"), ("fairlock.Lock", "fairlock")):
                ratio = run.get(f"ratio_{key}_to_oslo_fair")
                paired = run.get(f"paired_ratios_{key}_to_oslo_fair")
                if ratio is None or not paired:
                    continue
                lines.append(
                    f"{mode}: contended, {threads} threads, {label} / {OSLO_FAIR}: {ratio:.2f}x "
                    f"(per repetition {min(paired):.2f}x to {max(paired):.2f}x); "
                    f"fairlock's goal vs oslo fair >= 2x in every repetition: {_met(min(paired) >= 2)}"
                )
        overtaken = [
            f"{row['label']} N={row['handlers']}"
            for row in results["starvation"]["rows"]
            if row["label"] in (FAIRLOCK_FIFO, FAIRLOCK_HIGH) and max(row["overtakes"]) > 0
        ]
        lines.append(
            f"{mode}: fairlock FIFO and lane=high overtakes: "
            + (f"non-zero in {', '.join(overtaken)}" if overtaken else "0 in every run")
            + f"; fairlock's goal 0: {_met(not overtaken)}"
        )
    return lines


def render(all_results: dict[str, dict[str, Any]], reps: int) -> str:
    parts = [
        uncontended_table(all_results, reps).render(),
        *(contended_table(all_results, reps, index).render()
          for index in range(len(_contended_runs(next(iter(all_results.values())))))),
        starvation_table(all_results, reps).render(),
        "Goals\n=====\n" + "\n".join(verdicts(all_results)),
    ]
    return "\n\n".join(parts)
