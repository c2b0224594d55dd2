"""Shared by every benchmark: medians, plain-text tables, and a description of the machine.

Tables are plain text, columns separated by at least two spaces (so a test or a script can split
a row with ``re.split(r"\\s{2,}", row)``); a cell never contains two spaces in a row.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

__all__ = ["Table", "median", "machine", "fmt", "progress", "child_env"]


def child_env(warnings: str) -> dict[str, str]:
    """The environment of a benchmark's child process, under whichever interpreter runs it.

    The child imports this very fairlock and these very benchmarks (the checkout they came from
    goes first on ``PYTHONPATH``, installed or not); ``warnings`` becomes its ``PYTHONWARNINGS``
    (the clients' own deprecation notices, e.g. etcd3gw importing eventlet, are not results).
    """
    import fairlock

    env = dict(os.environ)
    roots = {
        os.path.dirname(os.path.dirname(os.path.abspath(fairlock.__file__))),
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*sorted(roots), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = warnings
    return env


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def fmt(value: float, digits: int = 0) -> str:
    """A number for a table cell: fixed digits, no thousands separator."""
    return f"{value:.{digits}f}"


def progress(message: str) -> None:
    """One line of progress on stderr (stdout stays for the tables or the child's JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Table:
    """Rows of strings; ``align`` per column ("<" or ">"); ``groups`` label spans of columns."""

    title: str
    headers: Sequence[str]
    align: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    groups: Sequence[tuple[int, int, str]] = ()  # (first column, number of columns, label)
    notes: Sequence[str] = ()

    def render(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        for first, span, label in self.groups:
            # Widen the group's last column if its label does not fit over the span.
            room = sum(widths[first:first + span]) + 2 * (span - 1)
            if len(label) + 4 > room:
                widths[first + span - 1] += len(label) + 4 - room

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                cell.ljust(w) if a == "<" else cell.rjust(w)
                for cell, w, a in zip(cells, widths, self.align)
            ).rstrip()

        out = [self.title, "=" * len(self.title)]
        if self.groups:
            parts: list[str] = []
            column = 0
            for first, span, label in sorted(self.groups):
                while column < first:
                    parts.append(" " * widths[column])
                    column += 1
                room = sum(widths[first:first + span]) + 2 * (span - 1)
                parts.append(f" {label} ".center(room, "-"))
                column = first + span
            out.append("  ".join(parts).rstrip())
        out.append(line(self.headers))
        out.append("  ".join("-" * w for w in widths))
        out.extend(line(row) for row in self.rows)
        out.extend(self.notes)
        return "\n".join(out)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, object]:
    """What the figures were measured on (load average included: the machine may be shared)."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_implementation() + " " + platform.python_version(),
        "load_average": load,
        "versions": {
            name: _version(name)
            for name in ("fairlock", "oslo.concurrency", "fasteners", "eventlet", "greenlet")
        },
    }
