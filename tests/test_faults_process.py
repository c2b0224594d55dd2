"""Client-process faults against a real etcd on loopback (``benchmarks.faults``).

Worker processes (one lease each) loop on one lock and log every critical section; the parent
SIGKILLs or SIGSTOPs them exactly while they hold or wait (they say so on stdout; etcd's state is
polled, never slept on), and the fencing checker judges the logs afterwards. Bounds are the
issue's: the next grant within the lease TTL + 1 s, a killed waiter's keys gone within TTL + 1 s,
a paused holder told at once on waking, nothing left in etcd at the end. Each test prints its
figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import faults
from fairlock.etcd import EtcdLock, LockLost, Session, SessionLost
from fairlock.testing import EtcdServer

from .kinds import start, wait_for

ROOT = Path(__file__).resolve().parent.parent
TTL = 2
BOUND = TTL + 1.0


def _prefix(etcd_prefix: bytes) -> str:
    return etcd_prefix.decode().rstrip("/")


def _show(result: faults.ScenarioResult) -> None:
    print(f"\n{result.name}: " + ", ".join(f"{d.label}: {d.seconds:.3f} s" for d in result.delays
                                          if d.seconds is not None))
    print(f"  {result.outcome.summary()}; facts {result.facts}")


def _assert_clean(outcome: faults.Outcome) -> None:
    report = outcome.report
    assert report.ok, [f"{v.kind}: {v.detail}" for v in report.violations]
    assert report.overlaps == 0 and report.token_regressions == 0 and report.writes_after_lost == 0
    assert report.max_bypass is not None and report.max_overtaken <= report.max_bypass
    assert outcome.leaked_live == 0, "keys left on the lease of an open session after every thread stopped"
    assert outcome.leaked_keys == 0 and outcome.leaked_leases == 0
    assert outcome.errors == [] and outcome.hung == 0


def test_holder_sigkill_next_waiter_acquires_within_ttl(etcd_server: EtcdServer, etcd_prefix: bytes) -> None:
    result = faults.holder_kill(etcd_server.endpoint, ttl=TTL, prefix=_prefix(etcd_prefix))
    _show(result)
    delay = result.delay("SIGKILL of the holder")
    assert delay is not None and delay < BOUND, f"next grant {delay:.2f} s after the holder's SIGKILL"
    assert result.checks == {"next token larger": True, "grants after the kill": True}, result.facts
    _assert_clean(result.outcome)
    assert result.ok


def test_waiter_sigkill_its_keys_go_and_the_queue_moves_on(etcd_server: EtcdServer, etcd_prefix: bytes) -> None:
    """The killed waiter is the oldest in the high lane: the release hands it the lock, which
    its lease then takes away; the live waiters get it within TTL + 1 s of the release."""
    result = faults.waiter_kill(etcd_server.endpoint, ttl=TTL, prefix=_prefix(etcd_prefix))
    _show(result)
    gone = result.delay("SIGKILL of a waiter")
    stall = result.delay("release to the dead waiter")
    assert gone is not None and gone < BOUND, f"the killed waiter's keys lived {gone:.2f} s"
    assert stall is not None and stall < BOUND, f"the queue stalled {stall:.2f} s"
    assert all(result.checks.values()), result.checks
    _assert_clean(result.outcome)


def test_holder_sigstop_past_ttl_is_told_and_checker_is_clean(etcd_server: EtcdServer,
                                                              etcd_prefix: bytes) -> None:
    result = faults.holder_pause(etcd_server.endpoint, ttl=TTL, prefix=_prefix(etcd_prefix))
    _show(result)
    takeover = result.delay("SIGSTOP of the holder")
    notice = result.delay("SIGCONT -> lost notice")
    assert takeover is not None and takeover < BOUND
    assert notice is not None and notice < 1.0, f"told {notice:.2f} s after SIGCONT"
    assert result.checks == {"paused past the ttl": True, "next token larger": True,
                             "stale holder recorded as lost": True}, result.facts
    _assert_clean(result.outcome)
    assert result.outcome.report.lost == 1 and result.outcome.report.writes_after_lost == 0
    # The stale holder was present after the next grant, and silent: that is what rule 6 allows.
    stale = next(r for r in result.outcome.records if r.lost_at is not None)
    newer = [r for r in result.outcome.records if r.fencing_token and r.fencing_token > stale.fencing_token]
    assert newer and min(r.start for r in newer) < stale.end
    assert max(stale.writes or (0,)) < min(r.start for r in newer)


def test_checker_flags_a_paused_holder_that_writes_without_asking(etcd_server: EtcdServer,
                                                                   etcd_prefix: bytes) -> None:
    """The same fault with a broken worker (it never asks is_held() before a write): caught."""
    result = faults.holder_pause(etcd_server.endpoint, ttl=TTL, prefix=_prefix(etcd_prefix),
                                 check_held=False)
    _show(result)
    report = result.outcome.report
    assert not report.ok and result.ok  # ok: the checker flagged the broken run
    assert report.writes_after_lost >= 1 and report.overlaps >= 1, report.summary()
    assert {v.kind for v in report.violations} >= {"lost-write", "overlap"}
    assert report.token_regressions == 0 and report.fifo_violations == 0  # the lock itself was fine


def test_random_cancels_and_timeouts_under_load_leave_nothing(etcd_server: EtcdServer,
                                                              etcd_prefix: bytes) -> None:
    result = faults.cancels(etcd_server.endpoint, ttl=TTL, prefix=_prefix(etcd_prefix), seconds=4.0)
    _show(result)
    assert result.checks == {"timeouts happened": True, "tries failed": True}, result.facts
    assert result.outcome.report.grants >= 12
    _assert_clean(result.outcome)
    assert result.outcome.report.lost == 0


@pytest.fixture
def own_etcd(etcd_binary: str) -> Iterator[EtcdServer]:
    """An etcd this test may restart (never the shared one)."""
    with EtcdServer(binary=etcd_binary, name="faults-soak") as server:
        yield server


def test_short_soak_every_fault_kind_checker_clean(own_etcd: EtcdServer) -> None:
    result = faults.soak(own_etcd.endpoint, 15.0, server=own_etcd, processes=3, threads=4, ttl=TTL,
                         seed=7, gap=(0.2, 0.6))
    kinds = result.by_kind()
    print(f"\nsoak {result.seconds:.0f} s: " + "; ".join(
        f"{k} x{len(v)}: " + ", ".join(f"{f.delay:.2f}" for f in v if f.delay is not None)
        for k, v in kinds.items()) + f"; notices {[round(n, 3) for n in result.notices]}")
    print(f"  {result.outcome.summary()}")
    assert result.failures == []
    for kind in faults.FAULT_KINDS:
        assert kinds[kind] and all(f.delay is not None for f in kinds[kind]), kind
    for kind in ("kill-holder", "kill-waiter", "pause-holder"):
        assert max(f.delay for f in kinds[kind]) < BOUND, (kind, kinds[kind])  # type: ignore[type-var]
    assert result.notices and max(result.notices) < 1.0
    report = result.outcome.report
    assert report.ok, [f"{v.kind}: {v.detail}" for v in report.violations]
    assert report.lost >= len(kinds["pause-holder"]) and report.writes_after_lost == 0
    assert result.outcome.leaked_live == 0 and result.outcome.leaked_keys == 0
    assert result.outcome.leaked_leases == 0 and result.outcome.errors == []
    assert result.respawned == len(kinds["kill-holder"]) + len(kinds["kill-waiter"])
    assert result.ok


def test_command_prints_figures_and_writes_json(etcd_server: EtcdServer, tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    done = subprocess.run(
        [sys.executable, "-m", "fairlock", "bench", "faults", "--scenario", "holder-kill",
         "--endpoint", etcd_server.endpoint, "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "SIGKILL of the holder -> next grant" in done.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    (run,) = data["results"]["holder-kill"]
    assert run["ok"] and run["outcome"]["report"]["ok"]
    assert 0 < run["delays"][0]["seconds"] < run["delays"][0]["bound"] == BOUND


def test_short_soak_with_one_two_level_lock_per_process_is_safe(etcd_server: EtcdServer,
                                                                 etcd_prefix: bytes) -> None:
    """The shape a service uses: a worker's threads share one EtcdLock (local queue first). A
    paused or killed process's local waiters stop with it; safety is judged (not cross-process
    FIFO, which two levels do not promise per thread)."""
    result = faults.soak(etcd_server.endpoint, 1.0, processes=3, threads=4, ttl=TTL, seed=11,
                         gap=(0.1, 0.3), kinds=("pause-holder", "kill-holder", "kill-waiter"),
                         prefix=_prefix(etcd_prefix), shared_lock=True)
    print(f"\nshared-lock soak {result.seconds:.0f} s: {result.outcome.summary()}")
    assert result.failures == []
    assert {f.kind for f in result.faults} == {"pause-holder", "kill-holder", "kill-waiter"}
    for f in result.faults:
        assert f.delay is not None and f.delay < BOUND, f
    report = result.outcome.report
    assert report.ok and report.overlaps == 0 and report.token_regressions == 0
    assert report.lost >= 1 and report.writes_after_lost == 0
    assert result.outcome.leaked_live == 0 and result.outcome.leaked_keys == 0
    assert result.outcome.leaked_leases == 0 and result.outcome.errors == []


def test_local_waiter_of_a_lost_and_closed_session_stops_with_session_lost(etcd_server: EtcdServer,
                                                                           etcd_prefix: bytes) -> None:
    """Regression (found by the two-level soak): a thread queued locally behind the holder of a
    session that was lost, then closed (which closes a URL session's transport), got
    ``EtcdError: the transport is closed`` from acquire() instead of SessionLost."""
    session = Session(etcd_server.url(_prefix(etcd_prefix), lease_ttl=5))
    lock = EtcdLock("local-waiter", session)
    assert lock.acquire()
    raised: list[BaseException] = []

    def waiter() -> None:
        try:
            lock.acquire(timeout=30)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            raised.append(exc)

    thread = start(waiter)
    wait_for(lambda: lock._local.statistics().waiting == 1, what="the thread queued locally")
    session._mark_lost("test: the lease expired")  # as the keepalive does
    session.close()
    with pytest.raises(LockLost):
        lock.release()
    thread.join(30)
    assert len(raised) == 1 and isinstance(raised[0], SessionLost), raised
