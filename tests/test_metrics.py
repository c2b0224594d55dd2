"""fairlock.metrics: the Prometheus collector, read through prometheus_client's own registry."""

from __future__ import annotations

import gc
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import fairlock
from fairlock import history, lockutils, metrics
from fairlock.etcd import EtcdLock, Session
from fairlock.etcd.gateway import GatewayTransport

from .test_lockutils import Waiters, unique, wait_until


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    gc.collect()
    history.LOCKUTILS.clear()
    registry = CollectorRegistry()
    yield registry
    history.record_hold_times(False)
    history.LOCKUTILS.clear()


def value(registry: CollectorRegistry, metric: str, lock: str, kind: str = "local", **labels: str) -> float | None:
    return registry.get_sample_value(metric, {"kind": kind, "lock": lock, **labels})


def test_grants_waits_holds_timeouts_and_waiting_per_lane(registry: CollectorRegistry) -> None:
    metrics.register(registry)
    assert history.recording_hold_times()
    name = unique("refresh_cache")
    for _ in range(3):
        with lockutils.lock(name):
            pass
    assert value(registry, "fairlock_lock_grants_total", name) == 3
    assert value(registry, "fairlock_lock_hold_seconds_count", name, lane="normal") == 3

    waiters = Waiters(name)
    with lockutils.lock(name):
        waiters.add_locker("migration-1", lane="migration")
        waiters.add_locker("events-1", lane="events")
        assert value(registry, "fairlock_lock_waiting", name, lane="migration") == 1
        assert value(registry, "fairlock_lock_waiting", name, lane="events") == 1
        timed_out = []
        other = threading.Thread(target=lambda: timed_out.append(
            lockutils.internal_lock(name).acquire(timeout=0.01, lane="events")))
        other.start()
        other.join()
        assert timed_out == [False]
    waiters.join()
    del waiters
    gc.collect()
    assert value(registry, "fairlock_lock_grants_total", name) == 6
    assert value(registry, "fairlock_lock_handoffs_total", name) == 2
    assert value(registry, "fairlock_lock_wait_seconds_count", name, lane="migration") == 1
    assert value(registry, "fairlock_lock_wait_seconds_count", name, lane="events") == 1
    assert value(registry, "fairlock_lock_wait_seconds_count", name, lane="normal") == 0
    assert value(registry, "fairlock_lock_wait_seconds_bucket", name, lane="migration", le="+Inf") == 1
    assert value(registry, "fairlock_lock_wait_seconds_sum", name, lane="migration") > 0  # type: ignore[operator]
    assert value(registry, "fairlock_lock_timeouts_total", name, lane="events") == 1
    assert value(registry, "fairlock_lock_hold_seconds_count", name, lane="migration") == 1
    assert value(registry, "fairlock_lock_waiting", name, lane="migration") is None  # nobody queued now
    assert value(registry, "fairlock_lock_live", name) == 0


def test_buckets_are_cumulative_and_end_at_inf(registry: CollectorRegistry) -> None:
    metrics.register(registry)
    name = unique()
    with lockutils.lock(name):
        pass
    text = generate_latest(registry).decode()
    assert "# TYPE fairlock_lock_wait_seconds histogram" in text
    assert "# TYPE fairlock_lock_grants_total counter" in text
    buckets = [line for line in text.splitlines()
               if line.startswith("fairlock_lock_hold_seconds_bucket") and 'lane="normal"' in line
               and f'lock="{name}"' in line]
    counts = [float(line.rsplit(" ", 1)[1]) for line in buckets]
    assert counts == sorted(counts) and counts[-1] >= 1 and 'le="+Inf"' in buckets[-1]


def test_uuid_names_are_one_series(registry: CollectorRegistry) -> None:
    import uuid

    metrics.register(registry, hold_times=False)
    for _ in range(50):
        with lockutils.lock(f"refresh_cache-{uuid.uuid4()}"):
            pass
    assert value(registry, "fairlock_lock_grants_total", "refresh_cache-*") == 50
    assert not history.recording_hold_times()


def test_hold_times_off_keeps_the_plain_lock(registry: CollectorRegistry) -> None:
    metrics.register(registry, hold_times=False)
    assert lockutils.internal_lock(unique())._plain
    history.record_hold_times(True)
    assert not lockutils.internal_lock(unique())._plain
    with pytest.raises(fairlock.ArgumentTypeError):
        metrics.register(registry, hold_times="yes")  # type: ignore[arg-type]
    with pytest.raises(fairlock.ArgumentTypeError):
        metrics.FairlockCollector([object()])  # type: ignore[list-item]


def test_etcd_locks_in_the_same_shape(registry: CollectorRegistry, etcd_server: Any, etcd_prefix: bytes) -> None:
    metrics.register(registry)
    session = Session(GatewayTransport([etcd_server.endpoint], timeout=10.0), ttl=10,
                      prefix=etcd_prefix.decode().rstrip("/"))
    try:
        name = unique("etcd-metrics")
        holder = EtcdLock(name, session)
        other_session = Session(GatewayTransport([etcd_server.endpoint], timeout=10.0), ttl=10,
                                prefix=etcd_prefix.decode().rstrip("/"))
        waiter = EtcdLock(name, other_session)
        assert holder.acquire()
        done = threading.Thread(target=lambda: (waiter.acquire(lane="high"), waiter.release()))
        done.start()
        wait_until(lambda: waiter._wakeup is not None, "the waiter queued in etcd")
        holder.release()
        done.join(30)
        assert value(registry, "fairlock_lock_grants_total", name, kind="etcd") == 2
        assert value(registry, "fairlock_lock_handoffs_total", name, kind="etcd") == 1
        assert value(registry, "fairlock_lock_wait_seconds_count", name, kind="etcd", lane="high") == 1
        assert value(registry, "fairlock_lock_hold_seconds_count", name, kind="etcd", lane="normal") == 1
        assert value(registry, "fairlock_lock_live", name, kind="etcd") == 2
        other_session.close()
        other_session.transport.close()
    finally:
        transport = session.transport
        session.close()
        transport.close()


def test_start_http_server_serves_the_metrics(registry: CollectorRegistry) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.start_http_server(port, "127.0.0.1", registry=registry)
    name = unique()
    with lockutils.lock(name):
        pass
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert f'fairlock_lock_grants_total{{kind="local",lock="{name}"}} 1.0' in text
