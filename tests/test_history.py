"""Statistics that outlive lock objects (fairlock.history, lockutils.lock_statistics/live_locks)."""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Iterator

import pytest

import fairlock
from fairlock import history, lockutils
from fairlock.history import OVERFLOW, History, name_key
from fairlock.stats import LaneCounters

from .test_lockutils import Waiters, unique, wait_until


@pytest.fixture
def fresh() -> Iterator[History]:
    """lockutils' history, emptied before and after (other tests' locks are counted in it too)."""
    gc.collect()
    history.LOCKUTILS.clear()
    yield history.LOCKUTILS
    history.LOCKUTILS.set_patterns(())
    history.LOCKUTILS.clear()


def test_statistics_survive_the_lock_being_rebuilt_per_use(fresh: History) -> None:
    name = f"refresh_cache-{unique()}"
    for _ in range(3):
        with lockutils.lock(name):
            pass
    # The symptom, unchanged by design: each use gets a new lock object...
    assert lockutils.internal_lock(name).statistics().grants == 0
    # ...and the name's history has all three grants.
    stats = lockutils.lock_statistics(name)
    assert (stats.key, stats.kind, stats.grants) == (name, "local", 3)
    assert stats.locks >= 3 and stats.live == 0


def test_live_and_dropped_locks_add_up_without_counting_twice(fresh: History) -> None:
    name = unique()
    with lockutils.lock(name):
        pass
    keep = lockutils.internal_lock(name)  # alive: counted from the lock, on read
    with lockutils.lock(name):
        pass
    assert lockutils.lock_statistics(name).grants == 2
    assert lockutils.lock_statistics(name).live == 1
    del keep
    gc.collect()
    assert lockutils.lock_statistics(name).grants == 2
    assert lockutils.lock_statistics(name).live == 0


def test_uuids_collapse_into_one_key_and_the_table_is_bounded(fresh: History) -> None:
    for _ in range(3000):
        with lockutils.lock(f"refresh_cache-{uuid.uuid4()}"):
            pass
    table = lockutils.lock_statistics()
    assert table["refresh_cache-*"].grants == 3000
    assert len(fresh) < 10
    assert name_key(f"interface-{uuid.uuid4()}-{uuid.uuid4().hex}") == "interface-*-*"
    assert name_key("compute_resources") == "compute_resources"

    small = History("local", max_keys=3)
    for i in range(10):
        small.dropped(f"name-{i}", 1, 0, 0, ("normal",), [LaneCounters()])
    table = small.statistics()
    assert len(table) == 4 and table[OVERFLOW].grants == 7  # max_keys names, then the overflow key
    assert sum(s.grants for s in table.values()) == 10


def test_patterns_group_names(fresh: History) -> None:
    fresh.set_patterns(["instance-*-events", "refresh_cache-*"])
    for name in ("instance-a-events", "instance-b-events", "refresh_cache-x"):
        with lockutils.lock(name):
            pass
    table = lockutils.lock_statistics()
    assert table["instance-*-events"].grants == 2 and table["refresh_cache-*"].grants == 1
    assert lockutils.lock_statistics("instance-zzz-events").key == "instance-*-events"
    with pytest.raises(fairlock.InvalidArgumentError):
        fresh.set_patterns([""])
    with pytest.raises(fairlock.ArgumentTypeError):
        fresh.set_patterns("refresh_cache-*")


def test_waits_by_lane_max_wait_timeouts_and_lane_typos_outlive_the_lock(fresh: History) -> None:
    name = unique()
    waiters = Waiters(name)
    with lockutils.lock(name):
        waiters.add_locker("migration-1", lane="migration")
        waiters.add_locker("events-1", lane="events")
        failed = []

        def time_out() -> None:
            try:
                with lockutils.lock(name, timeout=0.01, lane="events"):
                    pass
            except lockutils.AcquireLockFailedException as exc:
                failed.append(exc)

        other = threading.Thread(target=time_out)
        other.start()
        other.join()
        assert len(failed) == 1
        failed.clear()  # its traceback holds the lock

        def typo() -> None:
            with fairlock.lane("migraton"), lockutils.lock(name):  # sic: queues in "normal"
                pass

        waiters.add("typo", typo)
    waiters.join()
    del waiters
    gc.collect()
    stats = lockutils.lock_statistics(name)
    assert stats.live == 0
    assert stats.grants == 4 and stats.handoffs == 3 and stats.queued_grants == 3
    assert stats.lanes["migration"].queued_grants == 1 and stats.lanes["normal"].queued_grants == 1
    assert stats.lanes["events"].queued_grants == 1 and stats.lanes["events"].timeouts == 1
    assert stats.lane_typos == 1 and stats.timeouts == 1
    assert stats.max_wait == max(lane.wait_max for lane in stats.lanes.values()) > 0
    assert stats.lanes["migration"].wait_histogram.count == 1


def test_live_locks_shows_holder_queue_in_grant_order_and_lanes() -> None:
    name = unique()
    waiters = Waiters(name)
    with lockutils.lock(name):
        waiters.add_locker("events-1", lane="events")
        waiters.add_locker("normal-1")
        waiters.add_locker("migration-1", lane="migration")
        (mine,) = [s for s in lockutils.live_locks() if s.name == name]
        assert mine.holder is not None and threading.current_thread().name in mine.holder
        assert [(waiter.split(" ")[0], lane) for waiter, lane in mine.queue] == [
            ("migration-1", "migration"), ("normal-1", "normal"), ("events-1", "events")]
        assert mine.waiting_per_lane == {"migration": 1, "normal": 1, "events": 1}
        # Busiest first.
        assert lockutils.live_locks()[0].name == name
    assert waiters.join() == ["migration-1", "normal-1", "events-1"]


def test_dropped_from_many_threads_loses_nothing() -> None:
    table = History("local")
    barrier = threading.Barrier(4)

    def drop() -> None:
        barrier.wait()
        for _ in range(5000):
            table.dropped("x", 1, 0, 0, ("normal",), [LaneCounters()])

    threads = [threading.Thread(target=drop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert table.statistics()["x"].grants == 20000


def test_recording_adds_nothing_to_the_lock() -> None:
    """The uncontended lock does what it did: no clock read, no per-lock registration."""
    reads = []
    lock = lockutils.InternalLock("plain", clock=lambda: reads.append(1) or 0.0)
    with lock:
        pass
    assert reads == [] and lock._plain
