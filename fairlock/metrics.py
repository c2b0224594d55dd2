"""Prometheus metrics for fairlock's locks: ``pip install fairlock[metrics]``.

:class:`FairlockCollector` is a ``prometheus_client`` collector. At each scrape it reads the
histories of :mod:`fairlock.history` (every ``fairlock.lockutils`` internal lock and every
``fairlock.etcd.EtcdLock`` of the process, past and present) and the locks alive now; it keeps
no state of its own and costs the locks nothing between scrapes. Metric names, with the labels
``kind`` (``local`` or ``etcd``), ``lock`` (the name, or its key such as ``refresh_cache-*``: see
:mod:`fairlock.history`; bounded) and, where it applies, ``lane``:

========================================= =========== =======================================
metric                                    type        what
========================================= =========== =======================================
``fairlock_lock_grants_total``            counter     every grant (uncontended ones too)
``fairlock_lock_handoffs_total``          counter     grants handed over at release
``fairlock_lock_timeouts_total``          counter     requests that gave up waiting, per lane
``fairlock_lock_cancels_total``           counter     waiters that left by an exception
``fairlock_lock_lane_typos_total``        counter     context lanes the lock does not have
``fairlock_lock_wait_seconds``            histogram   waits of the grants that queued, per lane
``fairlock_lock_hold_seconds``            histogram   holds, per lane of the holder
``fairlock_lock_waiting``                 gauge       requests queued now, per lane
``fairlock_lock_live``                    gauge       lock objects alive now
========================================= =========== =======================================

Use::

    import fairlock.metrics
    fairlock.metrics.start_http_server(9464)   # or register(your_registry)

Hold times of lockutils locks are measured once :func:`register` (or :func:`start_http_server`)
has been called with ``hold_times=True`` (the default): two clock reads per use of a lock.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

from . import history
from .errors import ArgumentTypeError
from .stats import Histogram, NameStatistics

try:
    from prometheus_client import REGISTRY
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("fairlock.metrics needs prometheus_client: pip install 'fairlock[metrics]'") from exc

__all__ = ["FairlockCollector", "register", "start_http_server"]

PREFIX = "fairlock_lock"


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(_bucket_label(bound), float(count)) for bound, count in histogram.cumulative()]


class FairlockCollector(Collector):
    """A ``prometheus_client`` collector of fairlock's lock statistics (see the module doc)."""

    def __init__(self, histories: Iterable[history.History] | None = None) -> None:
        chosen = (history.LOCKUTILS, history.ETCD) if histories is None else tuple(histories)
        for h in chosen:
            if not isinstance(h, history.History):
                raise ArgumentTypeError(f"histories must be fairlock.history.History objects, got {type(h).__name__}")
        self._histories = chosen

    def _tables(self) -> Iterator[tuple[history.History, dict[str, NameStatistics], list[Any]]]:
        for h in self._histories:
            live: list[Any] = []
            if h is history.LOCKUTILS:
                lockutils = sys.modules.get("fairlock.lockutils")  # never imported here (oslo)
                if lockutils is not None:
                    live = lockutils._live_internal_locks()
            live = [*live, *h.live()]
            yield h, h.statistics(live), live

    def describe(self) -> list[Any]:
        """The metric families, without samples (so registering reads no lock)."""
        return list(self._families())

    def collect(self) -> Iterator[Any]:
        """One scrape: the figures of every lock name now."""
        families = self._families()
        grants, handoffs, timeouts, cancels, typos, waits, holds, waiting, live_gauge = families
        for h, table, live in self._tables():
            for key, stats in table.items():
                grants.add_metric([h.kind, key], stats.grants)
                handoffs.add_metric([h.kind, key], stats.handoffs)
                typos.add_metric([h.kind, key], stats.lane_typos)
                live_gauge.add_metric([h.kind, key], stats.live)
                for lane, lane_stats in stats.lanes.items():
                    labels = [h.kind, key, lane]
                    timeouts.add_metric(labels, lane_stats.timeouts)
                    cancels.add_metric(labels, lane_stats.cancels)
                    waits.add_metric(labels, _buckets(lane_stats.wait_histogram), lane_stats.wait_histogram.total)
                    holds.add_metric(labels, _buckets(lane_stats.hold_histogram), lane_stats.hold_histogram.total)
            queued: dict[tuple[str, str], int] = {}
            for lock in live:
                if lock.name is None:
                    continue
                key = h.key_of(lock.name)
                for lane, n in lock.statistics().waiting_per_lane.items():
                    queued[(key, lane)] = queued.get((key, lane), 0) + n
            for (key, lane), n in sorted(queued.items()):
                waiting.add_metric([h.kind, key, lane], n)
        yield from families

    @staticmethod
    def _families() -> list[Any]:
        per_lock, per_lane = ["kind", "lock"], ["kind", "lock", "lane"]
        return [
            CounterMetricFamily(f"{PREFIX}_grants", "Grants of the lock, uncontended ones included.",
                                labels=per_lock),
            CounterMetricFamily(f"{PREFIX}_handoffs", "Grants handed to a queued waiter at release.",
                                labels=per_lock),
            CounterMetricFamily(f"{PREFIX}_timeouts", "Requests that gave up waiting.", labels=per_lane),
            CounterMetricFamily(f"{PREFIX}_cancels", "Waiters that left the queue by an exception.",
                                labels=per_lane),
            CounterMetricFamily(f"{PREFIX}_lane_typos", "Requests whose context lane the lock does not have "
                                "(queued in the default lane).", labels=per_lock),
            HistogramMetricFamily(f"{PREFIX}_wait_seconds", "Waits of the grants that had to queue, by the "
                                  "lane they queued in.", labels=per_lane, unit=""),
            HistogramMetricFamily(f"{PREFIX}_hold_seconds", "How long the lock was held, by the holder's lane.",
                                  labels=per_lane, unit=""),
            GaugeMetricFamily(f"{PREFIX}_waiting", "Requests queued now.", labels=per_lane),
            GaugeMetricFamily(f"{PREFIX}_live", "Lock objects alive now.", labels=per_lock),
        ]


def register(registry: Any = None, *, hold_times: bool = True) -> FairlockCollector:
    """Register a :class:`FairlockCollector` with ``registry`` (prometheus_client's default one
    if None) and return it. ``hold_times=True`` makes lockutils locks built from now on measure
    their holds."""
    if not isinstance(hold_times, bool):
        raise ArgumentTypeError("hold_times must be a bool")
    collector = FairlockCollector()
    (REGISTRY if registry is None else registry).register(collector)
    if hold_times:
        history.record_hold_times(True)
    return collector


def start_http_server(port: int, addr: str = "0.0.0.0", *, registry: Any = None,
                      hold_times: bool = True) -> FairlockCollector:
    """:func:`register`, then serve ``/metrics`` on ``addr:port`` from a daemon thread
    (prometheus_client's ``start_http_server``)."""
    collector = register(registry, hold_times=hold_times)
    _start_http_server(port, addr, registry=REGISTRY if registry is None else registry)
    return collector
