"""``python -m fairlock bench etcd`` and the fencing checker.

The benchmark's smoke run asserts shapes and the properties no noise can change (fairlock's one
write each way, one watch event per release, FIFO by ticket, bypass <= K), never a timing. The
checker is shown to catch broken runs (synthetic records, and a real run of a lock that excludes
nobody and hands out unfenced tokens) and to pass a short real run of fairlock's etcd lock.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import etcd
from fairlock.testing import checker
from benchmarks._etcd_runs import fencing_run
from fairlock.testing.checker import Grant

ROOT = Path(__file__).resolve().parent.parent
TITLES = ("1. Uncontended", "2. Contended", "3. Watch events", "4. Leases", "5. Fairness")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, etcd_binary: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-etcd") / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "fairlock", "bench", "etcd", "--quick", "--reps", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def _table(text: str, title_start: str) -> tuple[dict[str, list[list[str]]], list[str]]:
    """Rows of one table keyed by variant (a variant may have several rows), and its note lines."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    dashes = next(i for i in range(start, len(lines)) if re.fullmatch(r"-+(  -+)*", lines[i]))
    rows: dict[str, list[list[str]]] = {}
    notes: list[str] = []
    for line in lines[dashes + 1:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in etcd.LABELS and not (len(cells) > 1 and cells[1].startswith("unavailable: ")):
            rows.setdefault(cells[0], []).append(cells[1:])
        else:
            notes.append(line)
    return rows, notes


@pytest.mark.parametrize("title", TITLES)
def test_every_variant_has_a_row_or_a_reason(run: tuple[str, dict[str, Any]], title: str) -> None:
    rows, notes = _table(run[0], title)
    for label in etcd.LABELS:
        reasons = [n for n in notes if n.startswith(f"{label}  unavailable: ") and len(n) > len(label) + 16]
        assert (label in rows) != bool(reasons), (label, rows.keys(), notes)
    assert etcd.FAIRLOCK in rows and etcd.V3LOCK in rows  # these two need nothing extra
    for label, variant_rows in rows.items():
        for cells in variant_rows:
            for cell in cells:
                if cell in ("n/a", "-") or not re.match(r"[\d.]+$", cell):
                    continue
                assert float(cell) >= 0, (label, cell)


def test_fairlock_writes_once_each_way(run: tuple[str, dict[str, Any]]) -> None:
    rows, _ = _table(run[0], "1. Uncontended")
    cells = rows[etcd.FAIRLOCK][0]
    assert float(cells[0]) > 0  # ms per pair
    assert float(cells[2]) == 2.0  # etcd writes per acquire+release
    assert float(cells[3]) == 0.0  # no lease per acquisition: one per session


def test_fairlock_one_watch_event_per_release(run: tuple[str, dict[str, Any]]) -> None:
    rows, _ = _table(run[0], "3. Watch events")
    received, sent = (float(c) for c in rows[etcd.FAIRLOCK][0][:2])
    assert 0 < received <= 1.1
    assert 0 < sent <= 1.1


def test_fairlock_is_fifo_and_bounded_in_the_benchmark(run: tuple[str, dict[str, Any]]) -> None:
    results = run[1]["results"]
    (rep,) = results["reps"]
    fifo = rep["contended"][etcd.FAIRLOCK]["fair_ticket"]
    assert fifo["grants"] > 0 and fifo["ok"] and fifo["fifo_violations"] == 0, fifo
    lanes = rep["lanes"]["fair_ticket"]
    assert lanes["ok"] and lanes["max_overtaken"] <= results["max_bypass"], lanes
    assert lanes["overlaps"] == 0 and lanes["token_regressions"] == 0


# -- the checker ----------------------------------------------------------------------------------


def _g(holder: str, token: int | None, request: int, start: int, end: int, lane: str = "normal",
       ticket: int | None = None) -> Grant:
    return Grant(fencing_token=token, holder=holder, lane=lane, request=request, start=start, end=end,
                 ticket=ticket)


CLEAN = [_g("a", 10, 0, 1, 2, ticket=5), _g("b", 12, 1, 3, 4, ticket=6), _g("c", 15, 2, 5, 6, ticket=7)]


def test_checker_passes_a_clean_run() -> None:
    report = checker.check(CLEAN, max_bypass=0)
    assert report.ok and report.order == "ticket" and report.grants == 3, report.summary()


def test_checker_flags_overlapping_sections() -> None:
    report = checker.check([CLEAN[0], _g("b", 12, 1, 1, 3, ticket=6)], max_bypass=4)  # b starts as a holds
    assert not report.ok and report.overlaps == 1
    assert report.violations[0].kind == "overlap"


def test_checker_flags_a_section_nested_in_a_long_one() -> None:
    long = [_g("a", 1, 0, 0, 100, ticket=1), _g("b", 2, 1, 10, 20, ticket=2), _g("c", 3, 2, 50, 60, ticket=3)]
    assert checker.check(long, max_bypass=4).overlaps == 2


@pytest.mark.parametrize("token", [None, 12, 11])
def test_checker_flags_tokens_that_do_not_increase(token: int | None) -> None:
    report = checker.check([CLEAN[0], CLEAN[1], _g("c", token, 2, 5, 6, ticket=7)], max_bypass=4)
    assert not report.ok and report.token_regressions == 1, report.summary()
    assert checker.check([CLEAN[0], CLEAN[1], _g("c", token, 2, 5, 6, ticket=7)], max_bypass=4,
                         fencing=False).ok


def test_checker_flags_fifo_violations_by_ticket() -> None:
    # c queued after b (ticket 7 > 6) in the same lane but was granted first.
    swapped = [CLEAN[0], _g("c", 12, 2, 3, 4, ticket=7), _g("b", 15, 1, 5, 6, ticket=6)]
    report = checker.check(swapped, max_bypass=4)
    assert not report.ok and report.fifo_violations == 1 and report.max_overtaken == 1


def test_checker_allows_other_lanes_to_overtake_up_to_k() -> None:
    # "old" (lane normal, ticket 1) is overtaken by three later "high" requests.
    run = [_g("old", 5, 0, 40, 41, ticket=1)] + [
        _g(f"h{i}", 1 + i, 1 + i, 10 * i, 10 * i + 1, lane="high", ticket=2 + i) for i in range(3)]
    assert checker.check(run, max_bypass=3).ok
    report = checker.check(run, max_bypass=2)
    assert not report.ok and report.max_overtaken == 3 and report.fifo_violations == 0
    assert [v.kind for v in report.violations] == ["bypass"]


def test_checker_orders_by_request_time_without_tickets() -> None:
    no_tickets = [_g("a", None, 0, 1, 2), _g("b", None, 5, 3, 4), _g("c", None, 4, 5, 6)]
    report = checker.check(no_tickets, max_bypass=None, fencing=False)
    assert report.order == "request" and report.fifo_violations == 1  # c asked before b, got it after


def _paused(writes: tuple[int, ...], lost_at: int) -> Grant:
    """A holder granted at 1 that was paused past its lease and told at ``lost_at``."""
    return Grant(fencing_token=10, holder="paused", lane="normal", request=0, start=1, end=lost_at + 1,
                 ticket=5, writes=writes, lost_at=lost_at)


def test_checker_allows_a_lost_holder_present_but_silent_after_the_next_grant() -> None:
    # paused wrote at 2, slept through its lease; next was granted at 10; paused woke, told at 30.
    run = [_paused((2,), 30), _g("next", 12, 3, 10, 20, ticket=6)]
    report = checker.check(run, max_bypass=4)
    assert report.ok and report.lost == 1 and report.overlaps == 0, report.summary()


def test_checker_flags_a_stale_write_after_the_next_grant() -> None:
    # paused wrote at 15, while next (granted at 10) held the lock: a write under a dead token.
    report = checker.check([_paused((2, 15), 30), _g("next", 12, 3, 10, 20, ticket=6)], max_bypass=4)
    assert not report.ok and report.overlaps == 1 and report.writes_after_lost == 0
    assert report.violations[0].kind == "overlap"


def test_checker_flags_writes_after_the_lost_notice() -> None:
    report = checker.check([_paused((2, 30, 31), 30)], max_bypass=4)
    assert not report.ok and report.writes_after_lost == 2 and report.lost == 1
    assert [v.kind for v in report.violations] == ["lost-write"]


def test_checker_round_trips_fault_fields_through_the_log(tmp_path: Path) -> None:
    log = tmp_path / "w.jsonl"
    run = [_paused((2, 3), 30), *CLEAN]
    log.write_text("".join(checker.dump_line(g) for g in run))
    assert checker.load([log]) == run
    assert '"lost_at"' not in checker.dump_line(CLEAN[0])  # unset fault fields stay out of the log


def test_checker_loads_logs_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    log = tmp_path / "w.jsonl"
    log.write_text("".join(checker.dump_line(g) for g in CLEAN) + '{"fencing_token": 1')
    assert checker.load([log]) == CLEAN


def test_checker_catches_a_real_broken_lock(tmp_path: Path) -> None:
    """Workers of a lock that excludes nobody and hands out unfenced tokens: the checker says so."""
    report, logs, info = fencing_run("", variant="broken", processes=2, sessions=3, grants=120,
                                     hold_ms=3.0, log_dir=str(tmp_path))
    assert report.grants == 120 and len(logs) == 2 and not info["errors"]
    assert not report.ok
    assert report.overlaps > 0 and report.token_regressions > 0, report.summary()


def test_fencing_checker_short_run_is_clean(etcd_server: Any) -> None:
    """Issue 6's distributed load, short form: 64 waiters (4 worker processes x 16 sessions, each
    its own lease), 2 lanes, K=4, 640 grants; the long form is the same command with --grants 5000."""
    done = subprocess.run(
        [sys.executable, "-m", "fairlock", "bench", "etcd", "--endpoint", etcd_server.endpoint,
         "--grants", "640", "--processes", "4", "--sessions", "16", "--max-bypass", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.rstrip().endswith("clean"))
    grants, _rate, overlaps, tokens, fifo, overtaken, verdict = re.split(r"\s{2,}", line.strip())
    assert (grants, overlaps, tokens, fifo, verdict) == ("640", "0", "0", "0", "clean")
    assert int(overtaken) <= 4
    assert "order by ticket" in done.stdout
