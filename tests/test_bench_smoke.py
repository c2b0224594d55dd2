"""Smoke test of ``python -m fairlock bench local``: it runs, prints every table, and the lock keeps
its order under load.

Nothing here asserts a timing. What is asserted besides the shape of the output are properties
of the lock that no amount of noise can change: a fairlock migration is never overtaken by a
handler that asked after it, in FIFO (one lane) or in lane "high", native or green.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fairlock.__main__ import main
from benchmarks import local

ROOT = Path(__file__).resolve().parent.parent
MODES = ("native", "eventlet")

UNCONTENDED = [
    local.THREADING_WITH,
    local.THREADING_CALLS,
    local.FAIRLOCK_WITH,
    local.FAIRLOCK_CALLS,
    local.FAIRLOCK_REGISTRY,
    local.OSLO_DEFAULT,
    local.OSLO_FAIR,
    local.EMPTY_LOOP,
    local.OSLO_SYNCHRONIZED,
    local.FAIRLOCK_SYNCHRONIZED,
]
CONTENDED = [local.THREADING, local.OSLO_DEFAULT, local.OSLO_FAIR, local.FAIRLOCK]
STARVATION = [local.OSLO_DEFAULT, local.OSLO_FAIR, local.FAIRLOCK_FIFO, local.FAIRLOCK_HIGH]
HANDLERS = ["1", "4", "16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One quick run of both modes (native here, eventlet in the CLI's own child process)."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "fairlock", "bench", "local", "--quick", "--reps", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.read_text())


def _section(text: str, title_start: str) -> list[list[str]]:
    """The data rows of the table whose title starts with ``title_start``, split into cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    dashes = next(i for i in range(start, len(lines)) if re.fullmatch(r"-+(  -+)*", lines[i]))
    rows = []
    for line in lines[dashes + 1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if not line.strip() or len(cells) < 3:  # the notes under a table are prose
            break
        rows.append(cells)
    return rows


def _number(cell: str) -> float:
    return float(cell.removeprefix(">="))


def _check_numbers(cells: list[str], allow_dash: bool = True) -> None:
    for cell in cells:
        if allow_dash and cell == "-":
            continue
        if re.fullmatch(r"\d+/\d+", cell):  # starved runs, "k/reps"
            continue
        assert _number(cell) >= 0, cell


def test_uncontended_table(run: tuple[str, dict[str, Any]]) -> None:
    rows = {cells[0]: cells[1:] for cells in _section(run[0], "1. Uncontended")}
    for label in UNCONTENDED:
        assert label in rows, label
        assert len(rows[label]) == 3 * len(MODES)
        _check_numbers(rows[label])
        assert _number(rows[label][0]) > 0  # ns per pair, native
        assert _number(rows[label][3]) > 0  # ns per pair, eventlet


def test_contended_table(run: tuple[str, dict[str, Any]]) -> None:
    rows = {cells[0]: cells[1:] for cells in _section(run[0], "2. Contended")}
    for label in CONTENDED:
        assert label in rows, label
        assert len(rows[label]) == 3 * len(MODES)
        _check_numbers(rows[label])
    # fairlock reports its handoff share (from lock.statistics()) in both modes.
    assert rows[local.FAIRLOCK][2] != "-" and rows[local.FAIRLOCK][5] != "-"


def test_starvation_table(run: tuple[str, dict[str, Any]]) -> None:
    rows = {(cells[0], cells[1]): cells[2:] for cells in _section(run[0], "3. Starvation")}
    for label in STARVATION:
        for n in HANDLERS:
            assert (label, n) in rows, (label, n)
            assert len(rows[label, n]) == 3 * len(MODES)
            _check_numbers(rows[label, n], allow_dash=False)


@pytest.mark.parametrize("label", [local.FAIRLOCK_FIFO, local.FAIRLOCK_HIGH])
@pytest.mark.parametrize("mode", MODES)
def test_fairlock_migration_is_never_overtaken(run: tuple[str, dict[str, Any]], mode: str, label: str) -> None:
    text, results = run
    table = {(cells[0], cells[1]): cells[2:] for cells in _section(text, "3. Starvation")}
    column = 3 * MODES.index(mode)
    for n in HANDLERS:
        assert table[label, n][column] == "0", (mode, label, n, table[label, n])
    runs = [row for row in results["results"][mode]["starvation"]["rows"] if row["label"] == label]
    assert [str(row["handlers"]) for row in runs] == HANDLERS
    for row in runs:
        assert row["overtakes"] == [0], (mode, row)


def test_results_json_has_both_modes(run: tuple[str, dict[str, Any]]) -> None:
    results = run[1]
    assert set(results["results"]) == set(MODES)
    assert results["machine"]["cpus"] >= 1
    assert results["results"]["eventlet"]["contended"]["critical_section"] == "time.sleep(0)"


def test_child_refuses_to_run_unpatched() -> None:
    assert main(["bench", "local", "--child", "--quick", "--reps", "1"]) == 2


def test_fairlock_and_the_cli_never_import_eventlet() -> None:
    code = (
        "import sys, fairlock, fairlock.__main__, benchmarks.local; "
        "fairlock.__main__.build_parser(); "
        "assert 'eventlet' not in sys.modules, 'eventlet imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_goals_say_whose_goal_and_cover_the_drop_in(run: tuple[str, dict[str, Any]]) -> None:
    goals = [line for line in run[0].split("Goals\n=====\n", 1)[1].splitlines() if line.strip()]
    assert goals and all("fairlock's goal" in line for line in goals), goals
    for mode in MODES:
        assert any(line.startswith(f"{mode}: uncontended {local.FAIRLOCK_LOCKUTILS}: ") and "vs oslo <= 0.5x" in line
                   for line in goals), goals
        assert any(line.startswith(f"{mode}: uncontended {local.FAIRLOCK_SYNCHRONIZED}: ") for line in goals), goals
        assert any(line.startswith(f"{mode}: contended, 16 threads, {local.FAIRLOCK_LOCKUTILS} / {local.OSLO_FAIR}")
                   and "in every repetition" in line for line in goals), goals
