"""examples/nova_16vif_timeout.py: the demo's two regimes and their verdicts.

The example runs as ``./run_demo.sh`` runs it (a subprocess; the 2017 regime in a child process
whose first action is ``eventlet.monkey_patch()``, today's with native threads in the example's
process, side by side), with the demo's own parameters: the verdicts asserted are the table's.
Assertions are on verdicts, counts and orders, and on times only with wide margins: the machine
is noisy and a stall of a few milliseconds is a second once scaled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "nova_16vif_timeout.py")
PORT_REFRESH = 7 * 0.3  # today: a port-scoped refresh, 7 neutron calls of 0.3 s


def run_example(*args, timeout=180):
    proc = subprocess.run(
        [sys.executable, EXAMPLE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def rows():
    pytest.importorskip("eventlet")
    proc = run_example("--json")
    found = json.loads(proc.stdout)
    assert proc.stderr == ""  # no eventlet deprecation noise from the child either
    return {(r["regime"], r["variant"]): r for r in found}


def test_both_regimes_in_their_modes(rows):
    assert {regime for regime, _ in rows} == {"2017", "today"}
    assert {r["mode"] for (regime, _), r in rows.items() if regime == "2017"} == {"eventlet"}
    assert {r["mode"] for (regime, _), r in rows.items() if regime == "today"} == {"native"}
    assert {r["handlers"] for r in rows.values()} == {64}


def test_2017_oslo_default_times_out_and_any_fifo_lock_fixes_it(rows):
    oslo = rows["2017", "oslo"]
    assert oslo["timeout"] is True
    assert oslo["overtaken"] >= 20, oslo  # the handler takes the lock back: later events go first
    for variant in ("oslo-fair", "fifo", "lane", "coalesce"):
        row = rows["2017", variant]
        assert row["timeout"] is False, row
        assert row["overtaken"] == 0, row


def test_today_fifo_locks_time_out_behind_the_queued_handlers(rows):
    for variant in ("oslo", "oslo-fair", "fifo"):
        row = rows["today", variant]
        assert row["timeout"] is True, row
        assert row["pool_wait"] < 5, row  # the pool had a thread: the wait is the lock's
        assert row["queued"] >= 35, row  # handlers queued ahead when the migration asked
        assert row["overtaken"] >= 35, row
    # FIFO: exactly the handlers queued ahead go first, each a port refresh.
    fifo = rows["today", "fifo"]
    assert fifo["overtaken"] == fifo["queued"], fifo


def test_today_the_migration_lane_goes_next(rows):
    for variant in ("lane", "coalesce"):
        row = rows["today", variant]
        assert row["timeout"] is False, row
        assert row["overtaken"] == 0, row
        assert row["queued"] >= 35, row  # as many handlers queued as in the FIFO rows
        # It waits for the refresh already running (at most one port refresh; the margin is noise).
        assert row["wait"] < 2 * PORT_REFRESH, row


def test_today_coalescing_cuts_neutron_calls_at_least_5x(rows):
    lane, merged = rows["today", "lane"], rows["today", "coalesce"]
    assert lane["calls"] == merged["calls"] == 16 * 20 + 1  # every event and the migration
    assert lane["refreshes"] == lane["calls"]
    assert lane["neutron_calls"] == 16 * 20 * 7 + (2 + 5 * 16)
    assert lane["neutron_calls"] >= 5 * merged["neutron_calls"], (lane["neutron_calls"], merged["neutron_calls"])


def test_the_clock_starts_after_the_lazy_imports(rows):
    # The plot bug: oslo's first fair lock imported eventlet after t0, and the oslo fair=True
    # panel started ~19 s late. Every variant's first refresh starts with the first message.
    for key, row in rows.items():
        scale = 0.01 if key[0] == "2017" else 0.004
        first = min(run[2] for run in row["timeline"]["runs"]) / scale
        assert first < 2.0, (key, first)


def test_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "timeline.png"
    proc = run_example(
        "--regimes", "today", "--vifs", "4", "--events-per-vif", "4", "--batches", "16",
        "--migration-at", "1", "--variants", "oslo-fair,fifo,lane,coalesce", "--plot", str(png),
    )
    out = proc.stdout
    assert "== today (nova 34): native threads, 64-thread RPC pool" in out
    for label in ("oslo fair=True", "fairlock FIFO", "fairlock + migration lane", "fairlock + lane + coalescing"):
        assert label in out
    assert "lock wait" in out and "neutron calls" in out and "today: " in out and "coalescing: " in out
    assert "long_rpc_timeout" in out  # what a timeout means in nova 34, said under the table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_so(tmp_path):
    code = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = [{EXAMPLE!r}, '--regimes', 'today', '--vifs', '1', '--events-per-vif', '1', "
        f"'--batches', '1', '--migration-at', '0', '--variants', 'lane', "
        f"'--plot', {str(tmp_path / 'x.png')!r}]; "
        f"runpy.run_path({EXAMPLE!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert "--plot needs matplotlib" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--handlers", "0"], "must be > 0"),
        (["--handlers", "x"], "expected a number"),
        (["--variants", "nope"], "choose from"),
        (["--regimes", "2018"], "choose from"),
        (["--batch-interval", "-1"], "must be >= 0"),
        (["--event-refresh", "vif"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(args, message):
    proc = subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
