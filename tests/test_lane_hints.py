"""A context lane that a lock does not have: a hint, but counted and warned about once.

``with fairlock.lane("migraton"):`` (a typo) must not silently run in the default lane: the lock
counts the request in ``statistics().lane_typos`` and logs one WARNING per (lane, lock's lane
set). Also: the table of each entry point's lanes in doc/source/fairness.rst matches the code.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

import fairlock
from fairlock import context, lockutils

from .kinds import start, wait_for

DOC = Path(__file__).resolve().parent.parent / "doc" / "source" / "fairness.rst"


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "_warned", set())


def _queue_behind_holder(lock: Any, lane_name: str, count: int) -> None:
    """``count`` waiters, each under ``fairlock.lane(lane_name)``, queue behind this thread."""
    threads = []
    for i in range(count):
        def run() -> None:
            with fairlock.lane(lane_name):
                assert lock.acquire(timeout=10)
            lock.release()

        threads.append(start(run))
        wait_for(lambda n=i + 1: lock.statistics().waiting == n, what=f"{i + 1} queued")
    lock.release()
    for thread in threads:
        thread.join(10)


def _typo_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fairlock.lanes" and r.levelno == logging.WARNING]


def test_a_context_lane_the_lock_lacks_is_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    lock = fairlock.Lock("typo-local")
    with caplog.at_level(logging.WARNING, logger="fairlock.lanes"):
        assert lock.acquire()
        _queue_behind_holder(lock, "migraton", 3)
    stats = lock.statistics()
    assert stats.lane_typos == 3
    assert stats.lanes["normal"].queued_grants == 3  # the hint was not followed
    records = _typo_records(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "fairlock.lane('migraton')" in message and '"typo-local"' in message
    assert "high, normal, low" in message and "'normal'" in message


def test_once_per_lane_and_lane_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fairlock.lanes"):
        for lanes in (None, None, ("a", "b")):
            for name in ("migraton", "evnets"):
                lock = fairlock.Lock(f"typo-{uuid.uuid4().hex[:6]}", lanes=lanes)
                assert lock.acquire()
                _queue_behind_holder(lock, name, 1)
                assert lock.statistics().lane_typos == 1
    warned = sorted((r.args[0], r.args[2]) for r in _typo_records(caplog))  # type: ignore[index]
    assert warned == [("evnets", "a, b"), ("evnets", "high, normal, low"),
                      ("migraton", "a, b"), ("migraton", "high, normal, low")]


def test_known_lanes_and_explicit_lanes_are_not_typos(caplog: pytest.LogCaptureFixture) -> None:
    lock = fairlock.Lock("typo-none", lanes=("migration", "normal", "events"))
    with caplog.at_level(logging.WARNING, logger="fairlock.lanes"):
        assert lock.acquire()
        _queue_behind_holder(lock, "migration", 2)
        assert lock.acquire()
        waiter = start(lambda: (lock.acquire(timeout=10, lane="events"), lock.release()))
        wait_for(lambda: lock.statistics().waiting == 1, what="explicit-lane waiter")
        lock.release()
        waiter.join(10)
    assert lock.statistics().lane_typos == 0
    assert _typo_records(caplog) == []


def test_lockutils_lock_under_a_typo_lane(caplog: pytest.LogCaptureFixture) -> None:
    name = f"typo-lockutils-{uuid.uuid4().hex[:6]}"
    got = threading.Event()
    with caplog.at_level(logging.WARNING, logger="fairlock.lanes"):
        with lockutils.lock(name) as internal:
            def waiter() -> None:
                with fairlock.lane("migraton"):
                    with lockutils.lock(name):
                        got.set()

            thread = start(waiter)
            wait_for(lambda: internal.statistics().waiting == 1, what="lockutils waiter")
            assert internal.statistics().lane_typos == 1
        thread.join(10)
    assert got.is_set()
    (record,) = _typo_records(caplog)
    assert "migration, normal, events" in record.getMessage()


def test_the_warning_set_is_bounded(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(context, "_WARNED_MAX", 2)
    lanes = fairlock.Lanes()
    with caplog.at_level(logging.WARNING, logger="fairlock.lanes"):
        for i in range(5):
            with fairlock.lane(f"made-up-{i}"):
                context.note_unknown_lane(lanes, "x")
    assert len(_typo_records(caplog)) == 2 and len(context._warned) == 2


def test_etcd_lock_counts_and_warns(etcd_server: Any, etcd_prefix: bytes, caplog: pytest.LogCaptureFixture) -> None:
    from fairlock.etcd import EtcdLock, Session
    from fairlock.etcd.gateway import GatewayTransport

    transport = GatewayTransport([etcd_server.endpoint], timeout=10.0)
    session = Session(transport, ttl=10, prefix=etcd_prefix.decode().rstrip("/"))
    try:
        lock = EtcdLock("typo-etcd", session)
        with caplog.at_level(logging.WARNING, logger="fairlock.lanes"):
            for _ in range(2):
                with fairlock.lane("migraton"):
                    assert lock.acquire(timeout=10)
                lock.release()
        assert lock.statistics().lane_typos == 2
        (record,) = _typo_records(caplog)
        assert '"typo-etcd"' in record.getMessage()
    finally:
        session.close()
        transport.close()


# -- the one table of lanes per entry point -----------------------------------------------------------


def _doc_rows() -> dict[str, tuple[str, str]]:
    text = DOC.read_text()
    table = text.split(".. _lanes-of-each-entry-point:", 1)[1].split("So ``fairlock.lane", 1)[0]
    rows = {}
    for row in re.split(r"\n   \* - ", table)[2:]:
        cells = [c.strip() for c in re.split(r"\n     - ", row)]
        rows[cells[0].split("``")[1]] = (cells[1], cells[2])
    return rows


def _lanes_cell(lanes: fairlock.Lanes) -> tuple[str, str]:
    return ", ".join(f"``{n}``" for n in lanes.names), f"``{lanes.default}``"


def test_the_lanes_table_matches_the_code(etcd_server: Any, etcd_prefix: bytes) -> None:
    from fairlock.etcd import EtcdLock, Session
    from fairlock.etcd.gateway import GatewayTransport
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")  # tooz -> futurist
        from tooz import coordination

    rows = _doc_rows()
    assert rows["fairlock.Lock"] == _lanes_cell(fairlock.Lock().lanes)
    assert fairlock.get_lock("lanes-table").lanes == fairlock.Lock().lanes
    assert rows["fairlock.lockutils"] == _lanes_cell(lockutils.internal_lock("lanes-table").lanes)
    transport = GatewayTransport([etcd_server.endpoint], timeout=10.0)
    session = Session(transport, ttl=10, prefix=etcd_prefix.decode().rstrip("/"))
    try:
        assert rows["fairlock.etcd.EtcdLock"] == _lanes_cell(EtcdLock("lanes-table", session).lanes)
    finally:
        session.close()
        transport.close()
    assert rows["fairlock.lockutils.ReaderWriterLock"][0] == "none: arrival order alone"
    assert not hasattr(lockutils.ReaderWriterLock(), "lanes")
    url = f"fairlock+etcd3+http://127.0.0.1:{etcd_server.client_port}{etcd_prefix.decode().rstrip('/')}"
    coordinator = coordination.get_coordinator(url, b"lanes-table")
    coordinator.start()
    try:
        tooz_lanes = coordinator._etcd_lock("lanes-table").lanes
    finally:
        coordinator.stop()
    assert rows["fairlock+etcd3+http://..."] == _lanes_cell(tooz_lanes)
