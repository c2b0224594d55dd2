"""The fencing checker: what a run's grant records must satisfy, decided from the records alone.

A *grant record* is what a worker writes after each critical section: the fencing token it was
given, who held the lock, the lane it asked in, when it asked, when its critical section started
and ended (one clock shared by every worker: ``time.monotonic_ns()`` on one host), and, when the
lock can tell, the *ticket* (etcd's revision at which the request was queued). Rules:

1. Mutual exclusion: no two critical sections overlap in time.
2. Fencing: tokens strictly increase in grant order (a token missing counts as a violation).
3. FIFO within a lane: a request is never overtaken by a later request of its own lane.
4. Bounded bypass: a request is overtaken (by later requests of any lane) at most K times.

"Later" is by ticket when every record has one (etcd's own order: exact), else by request time
(the moment the worker called acquire: close requests may reach the lock in either order, so a
FIFO lock can show a few inversions of requests made a network round trip apart).

Under faults a record may also carry ``writes`` (the times at which the holder acted on the
protected resource, each after checking that it still held the lock) and ``lost_at`` (when the
holder was told its lock was lost: a lost-lock callback, or ``is_held()`` turning False). Then:

5. A holder that was told its lock was lost wrote nothing after being told.
6. Rule 1 applies to the span in which a holder *used* its token: a section's whole
   ``[start, end]``, except for a lost section, which used its token only until its last write.
   A holder paused past its lease (SIGSTOP) wakes to find a newer holder in the lock: that
   overlap of mere presence is allowed, a write of the stale holder after the newer one started is
   not. (A resource that checks fencing tokens would reject such a write; this checker shows that
   the holder never even tried.)

This module is pure: no I/O besides :func:`load`, no clock, no threads. It only judges; it knows
nothing about etcd or the lock, so a fault-injection suite can feed it any run's records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Grant", "Violation", "Report", "check", "overtaken_counts", "load", "dump_line"]

Order = Literal["auto", "ticket", "request"]


@dataclass(frozen=True)
class Grant:
    """One critical section, as its worker recorded it (times in ns on one shared clock)."""

    fencing_token: int | None
    holder: str
    lane: str
    request: int
    start: int
    end: int
    ticket: int | None = None
    writes: tuple[int, ...] | None = None  # when the holder acted under its token (ns)
    lost_at: int | None = None  # when it was told the lock was lost (ns); None: never told

    def __post_init__(self) -> None:
        if self.writes is not None and not isinstance(self.writes, tuple):
            object.__setattr__(self, "writes", tuple(self.writes))  # JSON gives a list

    @property
    def used_until(self) -> int:
        """The end of the span in which this holder acted on its token (see rule 6)."""
        if self.lost_at is None:
            return self.end
        return max(self.writes or (), default=self.start)


@dataclass(frozen=True)
class Violation:
    kind: Literal["overlap", "token", "fifo", "bypass", "lost-write"]
    detail: str


@dataclass(frozen=True)
class Report:
    grants: int
    order: str  # "ticket" or "request": what "later request" meant
    overlaps: int
    token_regressions: int
    fifo_violations: int  # requests overtaken at least once by a later request of their lane
    max_overtaken: int  # the most times one request was overtaken (any lane)
    max_bypass: int | None
    violations: tuple[Violation, ...] = field(default_factory=tuple)  # the first few, for messages
    lost: int = 0  # sections whose holder was told the lock was lost
    writes_after_lost: int = 0  # rule 5

    @property
    def ok(self) -> bool:
        """True if no rule was broken."""
        return not (self.overlaps or self.token_regressions or self.fifo_violations
                    or self.writes_after_lost
                    or (self.max_bypass is not None and self.max_overtaken > self.max_bypass))

    def summary(self) -> str:
        """The verdict and every count in one line."""
        verdict = "clean" if self.ok else "VIOLATIONS"
        bound = "" if self.max_bypass is None else f" (K={self.max_bypass})"
        return (f"{verdict}: {self.grants} grants, {self.overlaps} overlaps, "
                f"{self.token_regressions} token regressions, {self.fifo_violations} FIFO "
                f"violations, max overtaken {self.max_overtaken}{bound}, {self.lost} lost, "
                f"{self.writes_after_lost} writes after lost, order by {self.order}")


class _Fenwick:
    """Counts of inserted ranks; ``above(r)`` = how many inserted ranks are > r."""

    def __init__(self, size: int) -> None:
        self._tree = [0] * (size + 1)
        self._total = 0

    def add(self, rank: int) -> None:
        self._total += 1
        i = rank + 1
        while i < len(self._tree):
            self._tree[i] += 1
            i += i & -i

    def above(self, rank: int) -> int:
        i, upto = rank + 1, 0
        while i > 0:
            upto += self._tree[i]
            i -= i & -i
        return self._total - upto


def _order_of(records: Sequence[Grant], order: Order) -> str:
    if order == "auto":
        return "ticket" if records and all(r.ticket is not None for r in records) else "request"
    if order == "ticket" and any(r.ticket is None for r in records):
        raise ValueError("order='ticket' but some records have no ticket")
    return order


def overtaken_counts(records: Sequence[Grant], order: Order = "auto",
                     same_lane: bool = False) -> list[int]:
    """For each record (in grant order): how many later requests were granted before it.

    ``same_lane``: count only later requests of the record's own lane (a FIFO violation each).
    O(n log n): records in grant order, a Fenwick tree over request ranks.
    """
    by = _order_of(records, order)
    granted = sorted(records, key=lambda r: r.start)
    keys = [(r.ticket if by == "ticket" else r.request, r.request, r.holder) for r in granted]
    rank = {k: i for i, k in enumerate(sorted(set(keys)))}
    # Overtaken(A) = later requests granted before A = records B with key(B) > key(A) and
    # start(B) < start(A): insert in grant order, ask how many inserted so far rank above A.
    trees: dict[str, _Fenwick] = {}
    counts = []
    for r, k in zip(granted, keys):
        tree = trees.setdefault(r.lane if same_lane else "", _Fenwick(len(rank)))
        counts.append(tree.above(rank[k]))
        tree.add(rank[k])
    return counts


def check(records: Iterable[Grant], *, max_bypass: int | None, order: Order = "auto",
          fencing: bool = True, keep: int = 5) -> Report:
    """Judge a run. ``fencing=False`` skips rule 2 (for locks that hand out no tokens)."""
    grants = sorted(records, key=lambda r: (r.start, r.end))
    violations: list[Violation] = []
    overlaps = regressions = late_writes = 0
    latest: Grant | None = None  # the section used until the latest, among those started so far
    previous: Grant | None = None
    for g in grants:
        if g.lost_at is not None:
            late = sum(1 for w in g.writes or () if w >= g.lost_at)
            late_writes += late
            if late and len(violations) < keep:
                violations.append(Violation("lost-write", f"{g.holder} (token {g.fencing_token}) "
                                            f"wrote {late} times after being told at {g.lost_at} "
                                            "that its lock was lost"))
        if latest is not None and g.start < latest.used_until:
            overlaps += 1
            if len(violations) < keep:
                violations.append(Violation("overlap", f"{g.holder} started at {g.start} before "
                                            f"{latest.holder} stopped using its token at "
                                            f"{latest.used_until}"))
        if fencing and previous is not None:
            if g.fencing_token is None or previous.fencing_token is None or \
                    g.fencing_token <= previous.fencing_token:
                regressions += 1
                if len(violations) < keep:
                    violations.append(Violation("token", f"{g.holder} got token {g.fencing_token} "
                                                f"after {previous.holder}'s {previous.fencing_token}"))
        if latest is None or g.used_until > latest.used_until:
            latest = g
        previous = g
    by = _order_of(grants, order)
    fifo = overtaken_counts(grants, by, same_lane=True)
    anyone = overtaken_counts(grants, by)
    for g, n in zip(grants, fifo):
        if n and len(violations) < keep:
            violations.append(Violation("fifo", f"{g.holder} (lane {g.lane}) was overtaken {n} "
                                        f"times by later requests of its own lane"))
    most = max(anyone, default=0)
    if max_bypass is not None and most > max_bypass and len(violations) < keep:
        violations.append(Violation("bypass", f"a request was overtaken {most} times (K={max_bypass})"))
    return Report(grants=len(grants), order=by, overlaps=overlaps, token_regressions=regressions,
                  fifo_violations=sum(1 for n in fifo if n), max_overtaken=most,
                  max_bypass=max_bypass, violations=tuple(violations),
                  lost=sum(1 for g in grants if g.lost_at is not None), writes_after_lost=late_writes)


def dump_line(grant: Grant) -> str:
    """One record as a JSON line (what a worker appends to its log); unset fault fields omitted."""
    raw = {k: v for k, v in asdict(grant).items()
           if v is not None or k not in ("writes", "lost_at")}
    return json.dumps(raw, separators=(",", ":")) + "\n"


def load(paths: Iterable[str | Path]) -> list[Grant]:
    """Every record of these logs; a torn last line (a worker killed mid-write) is skipped."""
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    raw: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                out.append(Grant(**raw))
    return out
