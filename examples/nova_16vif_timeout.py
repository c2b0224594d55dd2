"""nova's 16-vif live-migration RPC timeout on ``refresh_cache-<uuid>``, in 2017 and today.

Chris Friesen, openstack-dev, 2017-05-19: live-migrating an instance with 16 vifs failed with an
RPC timeout "waiting for the 'refresh_cache-%s' lock in get_instance_nw_info()"; "the live
migration code path was waiting for the lock, but the code processing the incoming
'network-changed' events kept getting the lock instead even though they arrived while the live
migration code was already blocked waiting for the lock."

Two regimes are simulated, each with every lock variant (only the lock differs between rows):

* **2017** -- nova-compute on eventlet (a child process whose first action is
  ``eventlet.monkey_patch()``), a *full* refresh per "network-changed" event (nova before Queens
  did not know which port changed), 2 events per vif in 2 messages 2 s apart, 0.1 s a neutron
  call. oslo's default
  lock lets every queued event overtake the migration and times out; any FIFO lock (oslo
  ``fair=True`` included) fixes it.
* **today** -- nova 34: native threads, oslo.messaging's executor pool of 64 threads
  (``executor_thread_pool_size``), *port-scoped* refreshes (``refresh_vif_id``, 7 neutron calls),
  and a sustained storm: several instances with 16 ports migrating at once load neutron (0.3 s a
  call, against 0.1 s in 2017) and keep its notifiers busy: 8 "network-changed" messages a second
  for 40 s reach this compute for one instance (20 per port), against a lock that serves one
  2.1 s refresh at a time. Event handlers queue on that instance's lock faster than refreshes
  finish; with any FIFO lock (oslo ``fair=True``, fairlock's FIFO) the migration queues behind
  every one of them (about 50 when it asks, each a port refresh) and waits past
  ``rpc_response_timeout``; with fairlock's migration lane it goes next.

What is simulated, on the compute that receives the events (every time scaled by ``--scale``):

* neutron's notifier sends the events in ``--batches`` messages ``--batch-interval`` s apart
  (events in order: every vif once, then every vif again, ...). Each message is one
  ``external_instance_event`` RPC: the executor pool (``--handlers`` threads, FIFO work queue, as
  oslo.messaging's) runs it on one thread, which handles its events *sequentially*, calling
  ``get_instance_nw_info(context, instance, refresh_vif_id=...)`` for each -- as nova's
  ``ComputeManager.external_instance_event`` does. Between two events the handler does nothing
  that blocks or yields, so it releases the lock and asks for it again at once.
* ``get_instance_nw_info`` takes ``refresh_cache-<uuid>`` and refreshes the cache: a full
  refresh costs ``--full-base + --full-per-vif * vifs`` neutron calls, a port-scoped one
  ``--port-cost``; each call takes ``--call-time`` s and sleeps (I/O). The counts, 2 + 5 per vif
  and 7, are nova 34's, measured in its own code by ``examples/nova_real_code.py``; both regimes
  use them.
* ``--migration-at`` s after the first message, the source calls ``pre_live_migration`` on this
  host: one more RPC message in the *same* pool, whose handler calls ``get_instance_nw_info``
  (a full refresh). "TIMEOUT" when the pool wait, the lock wait and the refresh together exceed
  ``rpc_response_timeout`` (``--rpc-timeout``). In 2017 (Newton) the source then gave up: the
  migration failed. nova 34 sends ``pre_live_migration`` with ``long_rpc_timeout`` (1800 s) and a
  call monitor of ``rpc_response_timeout``: once a pool thread runs the message, the destination
  heartbeats, so the call survives and the migration stalls for that long instead; only the wait
  for a pool thread (no heartbeat yet) still fails at ``rpc_response_timeout``. (The simulation
  lets the migration finish anyway, to measure its wait.)
* The lane variants run ``pre_live_migration`` inside ``fairlock.lane("migration")`` (the
  decorator of doc/source/nova.rst); the coalescing variant also coalesces
  ``get_instance_nw_info`` (:mod:`fairlock.coalesce`: calls still queued when an equivalent
  refresh starts share its result; a full refresh serves port refreshes, not the reverse).

Not simulated: the other instances' locks (``refresh_cache-<uuid>`` is per instance; their
events would only take pool threads), the conductor round trips of a refresh, CPU time. Nothing
is rigged: every variant runs the same code and the same schedule.

Variants: ``oslo`` (``oslo_concurrency.lockutils.lock(name)``), ``oslo-fair`` (``fair=True``),
``fifo`` (``fairlock.lockutils.lock(name)``), ``lane`` (the same, the migration in the
``migration`` lane), ``coalesce`` (``lane`` plus :mod:`fairlock.coalesce`).

    python examples/nova_16vif_timeout.py                       # both regimes, ~20 s
    python examples/nova_16vif_timeout.py --plot timeline.png   # and today's timeline
    python examples/nova_16vif_timeout.py --regimes today --migration-at 5
"""

import sys

if __name__ == "__main__" and "--eventlet-child" in sys.argv:
    import warnings

    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from oslo_concurrency import lockutils as oslo_lockutils  # noqa: E402

import fairlock  # noqa: E402
from fairlock import coalesce  # noqa: E402
from fairlock import lockutils  # noqa: E402

VARIANTS = ("oslo", "oslo-fair", "fifo", "lane", "coalesce")
VARIANT_LABELS = {
    "oslo": "oslo default",
    "oslo-fair": "oslo fair=True",
    "fifo": "fairlock FIFO",
    "lane": "fairlock + migration lane",
    "coalesce": "fairlock + lane + coalescing",
}
MODES = ("native", "eventlet")
LANE_VARIANTS = ("lane", "coalesce")

# The scenario parameters; every regime sets all of them, and a command-line flag overrides it.
REGIMES = {
    "2017": {
        "title": "2017: eventlet, a full refresh per event",
        "mode": "eventlet", "handlers": 64, "vifs": 16, "events_per_vif": 2, "batches": 2,
        "batch_interval": 2.0, "event_refresh": "full", "full_base": 2, "full_per_vif": 5,
        "port_cost": 7, "call_time": 0.1, "migration_at": 0.3, "rpc_timeout": 60.0, "scale": 0.01,
        "note": "(Newton's pre_live_migration was a plain RPC call: past rpc_response_timeout it failed.)",
    },
    "today": {
        "title": "today (nova 34): native threads, 64-thread RPC pool, port-scoped refreshes, a sustained storm",
        "mode": "native", "handlers": 64, "vifs": 16, "events_per_vif": 20, "batches": 320,
        "batch_interval": 0.125, "event_refresh": "port", "full_base": 2, "full_per_vif": 5,
        "port_cost": 7, "call_time": 0.3, "migration_at": 7.0, "rpc_timeout": 60.0, "scale": 0.004,
        "note": (
            "(nova 34 sends pre_live_migration with long_rpc_timeout, 1800 s, and a call monitor of "
            "rpc_response_timeout: once a pool thread runs it, the destination's heartbeats keep the "
            "call alive, so a TIMEOUT row is a migration stalled that long rather than failed at 60 s; "
            "a wait for a pool thread has no heartbeat and fails at 60 s.)"
        ),
    },
}
PARAMS = tuple(k for k in REGIMES["2017"] if k not in ("title", "note"))


# -- the simulated nova ------------------------------------------------------------------------------


class Neutron:
    """Counts the calls; each one takes ``call_time`` and yields (sleeps), like an HTTP request."""

    def __init__(self, call_time):
        self.call_time = call_time
        self.calls = 0
        self._mutex = threading.Lock()

    def calls_of(self, count):
        start = time.monotonic()
        for i in range(1, count + 1):
            with self._mutex:
                self.calls += 1
            # Sleep to a deadline, not for a duration: sleep overshoot must not add up over the
            # 50 calls of a refresh (it would stretch every hold, whatever the lock).
            delay = start + i * self.call_time - time.monotonic()
            time.sleep(delay if delay > 0 else 0)


class Recorder:
    """What happened, in order: every refresh run (who, when), every call (asked, served)."""

    def __init__(self, t0):
        self.t0 = t0
        self.runs = []  # [who, kind, start, end]
        self.calls = []  # [who, asked, runs started before, served by run, returned]
        self._mutex = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def run_started(self, who, kind):
        with self._mutex:
            self.runs.append([who, kind, self.now(), None])
            return len(self.runs) - 1

    def run_ended(self, index):
        with self._mutex:
            self.runs[index][3] = self.now()

    def asked(self, who):
        with self._mutex:
            self.calls.append([who, self.now(), len(self.runs), None, None])
            return len(self.calls) - 1

    def returned(self, call, run):
        with self._mutex:
            self.calls[call][3] = run
            self.calls[call][4] = self.now()


class NetworkAPI:
    """nova.network.neutron.API.get_instance_nw_info, with the lock of one variant."""

    def __init__(self, variant, params, neutron, recorder):
        self.variant = variant
        self.params = params
        self.neutron = neutron
        self.recorder = recorder
        self.coalescer = coalesce.Coalescer(covers=_covers)

    def get_instance_nw_info(self, who, instance, refresh_vif_id=None):
        call = self.recorder.asked(who)
        name = "refresh_cache-%s" % instance
        if self.variant == "oslo":
            with oslo_lockutils.lock(name):
                run = self._get_instance_nw_info(who, refresh_vif_id)
        elif self.variant == "oslo-fair":
            with oslo_lockutils.lock(name, fair=True):
                run = self._get_instance_nw_info(who, refresh_vif_id)
        elif self.variant == "coalesce":
            run = self.coalescer.call(
                lockutils.internal_lock(name), refresh_vif_id, self._get_instance_nw_info,
                (who, refresh_vif_id),
            )
        else:
            with lockutils.lock(name):
                run = self._get_instance_nw_info(who, refresh_vif_id)
        self.recorder.returned(call, run)
        return run

    def _get_instance_nw_info(self, who, refresh_vif_id):
        """The refresh itself (and update_instance_cache_with_nw_info): runs under the lock."""
        p = self.params
        port = refresh_vif_id is not None
        run = self.recorder.run_started(who, "port" if port else "full")
        self.neutron.calls_of(p.port_cost if port else p.full_base + p.full_per_vif * p.vifs)
        self.recorder.run_ended(run)
        return run


def _covers(run_key, call_key):
    """A full refresh (key None) also refreshes every port; a port refresh only its own port."""
    return run_key is None or run_key == call_key


def warm_up():
    """Import and create, once, what the variants import lazily, before any clock starts.

    oslo's first fair lock imports eventlet (0.1 s or more, i.e. many seconds once scaled):
    measured from a ``t0`` taken before it, the ``oslo fair=True`` row started late. And a first
    eventlet import in a worker thread makes that thread unjoinable, so it happens here, in the
    main thread.
    """
    name = "warm-up-%s" % uuid.uuid4().hex
    with oslo_lockutils.lock(name, fair=True):
        pass
    with oslo_lockutils.lock(name):
        pass
    with lockutils.lock(name):
        pass
    coalesce.Coalescer().call(lockutils.internal_lock(name), None, lambda: None)


MIGRATION = object()  # the pre_live_migration RPC message


def simulate(variant, p):
    """One run of the scenario; returns the measurements and the timeline (times in real s)."""
    scale = p.scale
    neutron = Neutron(p.call_time * scale)
    instance = uuid.uuid4().hex  # a fresh lock name: no state shared between runs
    name = "refresh_cache-%s" % instance
    messages = queue.Queue()  # oslo.messaging's executor: a FIFO work queue and a thread pool
    events = [vif for _ in range(p.events_per_vif) for vif in range(p.vifs)]
    size, extra = divmod(len(events), p.batches)  # as even as can be: sizes differ by one at most
    cuts = [i * size + min(i, extra) for i in range(p.batches + 1)]
    batches = [events[cuts[i]:cuts[i + 1]] for i in range(p.batches) if cuts[i + 1] > cuts[i]]
    schedule = sorted(
        [(i * p.batch_interval, i, batch) for i, batch in enumerate(batches)]
        + [(p.migration_at, len(batches), MIGRATION)],
        key=lambda item: item[:2],
    )
    if variant == "oslo-fair":
        # Kept alive for the whole run: oslo's fair locks live in a weak-value dictionary.
        keep_alive = oslo_lockutils.internal_fair_lock(name)  # noqa: F841
    migration = {}
    started = threading.Barrier(p.handlers + 1)

    def handler(index):
        started.wait()
        who = "handler-%d" % index
        while True:
            message = messages.get()
            if message is None:
                return
            if message is MIGRATION:
                pre_live_migration()
                continue
            # ComputeManager.external_instance_event: the events of one message, in order.
            for vif in message:
                tag = "port-%d" % vif if p.event_refresh == "port" else None
                api.get_instance_nw_info(who, instance, refresh_vif_id=tag)

    def pre_live_migration():
        if variant in LANE_VARIANTS:
            with fairlock.lane("migration"):  # @fairlock.lane('migration') on the RPC handler
                api.get_instance_nw_info("migration", instance)
        else:
            api.get_instance_nw_info("migration", instance)

    pool = [threading.Thread(target=handler, args=(i + 1,), name="handler-%d" % (i + 1))
            for i in range(p.handlers)]
    for thread in pool:
        thread.start()
    started.wait()  # every pool thread is up before the clock starts
    t0 = time.monotonic()
    recorder = Recorder(t0)
    api = NetworkAPI(variant, p, neutron, recorder)
    for at, _, message in schedule:
        _sleep_until(t0 + at * scale)
        if message is MIGRATION:
            migration["sent"] = recorder.now()
        messages.put(message)
    for _ in pool:
        messages.put(None)
    for thread in pool:
        thread.join()

    (_, asked, runs_before, served_by, returned), = [c for c in recorder.calls if c[0] == "migration"]
    migration.update(asked=asked, run=served_by, returned=returned)
    pool_wait = (asked - migration["sent"]) / scale
    wait = (recorder.runs[served_by][2] - asked) / scale
    rpc = (returned - migration["sent"]) / scale
    # Refreshes that started after the migration asked and before the one that served it.
    overtaken = sum(1 for r in recorder.runs[runs_before:served_by] if r[0] != "migration")
    # Event handlers queued on the lock when the migration asked.
    queued = sum(
        1 for who, a, _, run, ret in recorder.calls
        if who != "migration" and a < asked and recorder.runs[run][2] > asked
    )
    return {
        "variant": variant,
        "mode": p.mode,
        "handlers": p.handlers,
        "queued": queued,
        "pool_wait": pool_wait,
        "wait": wait,
        "rpc": rpc,
        "timeout": rpc > p.rpc_timeout,
        "overtaken": overtaken,
        "neutron_calls": neutron.calls,
        "refreshes": len(recorder.runs),
        "calls": len(recorder.calls),
        "timeline": {"runs": recorder.runs, "calls": recorder.calls, "migration": migration},
    }


def _sleep_until(deadline):
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def run_regime(regime, p):
    warm_up()
    rows = []
    for variant in p.variants:
        row = simulate(variant, p)
        row["regime"] = regime
        rows.append(row)
    return rows


# -- the command line --------------------------------------------------------------------------------


def _choice_list(choices):
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return values

    return parse


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _non_negative(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def build_parser():
    ap = argparse.ArgumentParser(
        description="nova's 16-vif live-migration RPC timeout on refresh_cache-<uuid>, simulated "
        "(scaled) in two regimes: 2017 and today (nova 34). Scenario flags override the value of "
        "every regime run; unset, each regime uses its own (shown in the table's heading).",
    )
    ap.add_argument("--regimes", type=_choice_list(tuple(REGIMES)), default=list(REGIMES),
                    help="regimes to run (default: 2017,today)")
    ap.add_argument("--mode", choices=MODES, help="threads or eventlet (2017: eventlet, today: native)")
    ap.add_argument("--handlers", type=_positive(int), help="RPC executor pool threads (64)")
    ap.add_argument("--vifs", type=_positive(int), help="vifs of the instance (16)")
    ap.add_argument("--events-per-vif", type=_positive(int), help="network-changed events per vif")
    ap.add_argument("--batches", type=_positive(int), help="messages the events come in")
    ap.add_argument("--batch-interval", type=_non_negative(float), help="seconds between messages")
    ap.add_argument("--full-base", type=_non_negative(int), help="neutron calls of a full refresh: base ...")
    ap.add_argument("--full-per-vif", type=_non_negative(int), help="... plus this many per vif")
    ap.add_argument("--port-cost", type=_positive(int), help="neutron calls of a port-scoped refresh")
    ap.add_argument(
        "--event-refresh", choices=("full", "port"),
        help="what a network-changed event refreshes: full (nova 2017) or port (refresh_vif_id)",
    )
    ap.add_argument("--call-time", type=_positive(float), help="seconds per neutron call")
    ap.add_argument("--migration-at", type=_non_negative(float), help="pre_live_migration sent, s after the first message")
    ap.add_argument("--rpc-timeout", type=_positive(float), help="rpc_response_timeout (s)")
    ap.add_argument("--scale", type=_positive(float), help="real seconds per simulated second")
    ap.add_argument("--variants", type=_choice_list(VARIANTS), default=list(VARIANTS),
                    help="lock variants: " + ",".join(VARIANTS))
    ap.add_argument("--plot", metavar="FILE.png", help="draw the timeline of the last regime (matplotlib)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--eventlet-child", metavar="REGIME", help=argparse.SUPPRESS)
    return ap


def regime_params(regime, args):
    """The parameters of one regime: its own, overridden by every flag given."""
    values = dict(REGIMES[regime])
    for key in PARAMS:
        given = getattr(args, key)
        if given is not None:
            values[key] = given
    values["variants"] = args.variants
    return argparse.Namespace(**values)


def child_argv(regime, args):
    argv = ["--eventlet-child", regime, "--variants", ",".join(args.variants)]
    for key in PARAMS:
        given = getattr(args, key)
        if given is not None:
            argv += ["--" + key.replace("_", "-"), str(given)]
    return [sys.executable, os.path.abspath(__file__)] + argv


def describe(p):
    full = p.full_base + p.full_per_vif * p.vifs
    events = p.vifs * p.events_per_vif
    return (
        f"{'eventlet green' if p.mode == 'eventlet' else 'native'} threads, pool of {p.handlers}; {p.vifs} vifs, {events} network-changed events "
        f"({p.events_per_vif} per vif) in {p.batches} messages {p.batch_interval:g} s apart, a "
        f"{p.event_refresh} refresh each ({full if p.event_refresh == 'full' else p.port_cost} "
        f"neutron calls of {p.call_time:g} s); the migration's pre_live_migration sent at "
        f"{p.migration_at:g} s, a full refresh ({full} calls); rpc_response_timeout "
        f"{p.rpc_timeout:g} s; scale {p.scale:g}."
    )


def verdict(rows):
    """One line, computed: who timed out, who did not, what coalescing saved."""
    out = [VARIANT_LABELS[r["variant"]] for r in rows if r["timeout"]]
    ok = [VARIANT_LABELS[r["variant"]] for r in rows if not r["timeout"]]
    parts = []
    if out:
        parts.append("past rpc_response_timeout with " + ", ".join(out))
    if ok:
        parts.append("ok with " + ", ".join(ok))
    by = {r["variant"]: r for r in rows}
    if "lane" in by and "coalesce" in by:
        parts.append(f"coalescing: {coalescing_factor(by):.1f}x fewer neutron calls")
    return "; ".join(parts) + "."


def coalescing_factor(by):
    return by["lane"]["neutron_calls"] / max(1, by["coalesce"]["neutron_calls"])


def print_table(results, params):
    header = ("variant", "pool wait", "queued", "lock wait", "overtaken", "call", "> rpc timeout",
              "neutron calls", "refreshes")
    lines = {
        regime: [
            (
                VARIANT_LABELS[r["variant"]], f"{r['pool_wait']:.1f} s", str(r["queued"]),
                f"{r['wait']:.1f} s", str(r["overtaken"]), f"{r['rpc']:.1f} s",
                "TIMEOUT" if r["timeout"] else "ok", str(r["neutron_calls"]),
                f"{r['refreshes']}/{r['calls']}",
            )
            for r in rows
        ]
        for regime, rows in results.items()
    }
    every = [line for group in lines.values() for line in group]
    widths = [max(len(h), *(len(line[i]) for line in every)) for i, h in enumerate(header)]
    fmt = "  ".join("{:<%d}" % w if i in (0, 6) else "{:>%d}" % w for i, w in enumerate(widths))
    for n, (regime, group) in enumerate(lines.items()):
        p = params[regime]
        if n:
            print()
        print(f"== {REGIMES[regime]['title']} ==")
        print(describe(p))
        print(fmt.format(*header).rstrip())
        print(fmt.format(*("-" * w for w in widths)).rstrip())
        for line in group:
            print(fmt.format(*line).rstrip())
        print(f"{regime}: {verdict(results[regime])}")
        if REGIMES[regime].get("note"):
            print(REGIMES[regime]["note"])
    print(
        "\nTimes are real-time equivalents (measured / scale). pool wait: the migration's message"
        " waiting for a free pool thread. queued: event handlers queued on the lock when the"
        " migration asked. lock wait: from the migration's call to the start of the refresh that"
        " served it. overtaken: event refreshes that started after it asked and before that one."
        " call: from the pre_live_migration message sent to its reply (pool wait + lock wait + its"
        " refresh); > rpc timeout: TIMEOUT when that exceeds rpc_response_timeout."
        " refreshes: refresh runs / get_instance_nw_info calls."
    )


# -- the picture -------------------------------------------------------------------------------------


def plot(rows, p, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib (or fairlock[plot])")
    scale = p.scale
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.4 + 1.6 * len(rows)), sharex=True, squeeze=False)
    colors = {"migration": "#d62728", "full": "#1f77b4", "port": "#9467bd"}
    end = max(max(r[3] for r in row["timeline"]["runs"]) for row in rows) / scale
    for ax, row in zip(axes[:, 0], rows):
        timeline = row["timeline"]
        runs, m = timeline["runs"], timeline["migration"]
        # Row 1: who holds the lock. Row 0: the migration (sent, picked by a pool thread, asks,
        # holds). The line: event handlers waiting for the lock (or for a shared refresh).
        for who, kind, start, stop in runs:
            color = colors["migration"] if who == "migration" else colors[kind]
            ax.barh(1, (stop - start) / scale, left=start / scale, height=0.6, color=color,
                    edgecolor="white", linewidth=0.3)
        served = runs[m["run"]]
        ax.barh(0, (m["asked"] - m["sent"]) / scale, left=m["sent"] / scale, height=0.6, color="none",
                edgecolor="grey", hatch="....", linewidth=1)
        ax.barh(0, (served[2] - m["asked"]) / scale, left=m["asked"] / scale, height=0.6, color="none",
                edgecolor=colors["migration"], hatch="////", linewidth=1)
        ax.barh(0, (m["returned"] - served[2]) / scale, left=served[2] / scale, height=0.6,
                color=colors["migration"])
        ax.axvline(m["sent"] / scale + p.rpc_timeout, color="black", linestyle="--", linewidth=1)
        changes = []
        for who, asked, _, run, returned in timeline["calls"]:
            if who == "migration":
                continue
            own = runs[run][0] == who and runs[run][2] >= asked
            changes.append((asked, 1))
            changes.append((runs[run][2] if own else returned, -1))
        changes.sort()
        xs, ys, level = [0.0], [0], 0
        for at, delta in changes:
            level += delta
            xs.append(at / scale)
            ys.append(level)
        twin = ax.twinx()
        twin.step(xs, ys, where="post", color="#2ca02c", linewidth=1)
        twin.set_ylim(0, max(8, max(ys) * 1.15))
        twin.tick_params(axis="y", labelsize=7, colors="#2ca02c")
        verdict_text = "past rpc_response_timeout" if row["timeout"] else "ok"
        ax.set_title(
            f"{VARIANT_LABELS[row['variant']]}: call {row['rpc']:.1f} s ({verdict_text}), "
            f"migration waited {row['wait']:.1f} s for the lock behind {row['queued']} queued "
            f"handlers, {row['neutron_calls']} neutron calls",
            loc="left", fontsize=9,
        )
        ax.set_yticks([0, 1], ["migration", "lock holder"], fontsize=8)
        ax.set_ylim(-0.6, 1.6)
        ax.set_xlim(0, max(end, p.rpc_timeout + p.migration_at) * 1.02)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds (real-time equivalent)")
    kinds = {r[1] for row in rows for r in row["timeline"]["runs"] if r[0] != "migration"}
    handles = [
        Patch(color=colors[kind], label=f"event handler's {kind} refresh") for kind in ("port", "full") if kind in kinds
    ] + [
        Patch(color=colors["migration"], label="migration's refresh"),
        Patch(facecolor="none", edgecolor=colors["migration"], hatch="////", label="migration waits for the lock"),
        plt.Line2D([], [], color="black", linestyle="--", label="rpc_response_timeout"),
        plt.Line2D([], [], color="#2ca02c", label="event handlers waiting (right axis)"),
    ]
    if any(row["pool_wait"] > 0.5 for row in rows):
        handles.insert(-2, Patch(facecolor="none", edgecolor="grey", hatch="....",
                                 label="migration waits for a pool thread"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(
        f"refresh_cache-<uuid> during a {p.vifs}-vif live migration: {p.mode} threads, pool of "
        f"{p.handlers}, {p.vifs * p.events_per_vif} {p.event_refresh}-scoped events", fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"timeline written to {path}")


# -- main --------------------------------------------------------------------------------------------


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.eventlet_child:
        p = regime_params(args.eventlet_child, args)
        p.mode = "eventlet"
        json.dump(run_regime(args.eventlet_child, p), sys.stdout)
        return 0
    params = {regime: regime_params(regime, args) for regime in args.regimes}
    children = {}
    for regime, p in params.items():
        if p.mode == "eventlet":
            # Started first, so they run side by side with the native regimes (which mostly sleep).
            children[regime] = subprocess.Popen(child_argv(regime, args), stdout=subprocess.PIPE, text=True)
    results = {}
    for regime, p in params.items():
        if p.mode == "native":
            results[regime] = run_regime(regime, p)
    for regime, child in children.items():
        out, _ = child.communicate()
        if child.returncode != 0:
            sys.exit(f"the eventlet child ({regime}) failed (exit {child.returncode})")
        results[regime] = json.loads(out)
    results = {regime: results[regime] for regime in args.regimes}
    if args.json:
        json.dump([row for rows in results.values() for row in rows], sys.stdout)
        print()
    else:
        print_table(results, params)
    if args.plot:
        last = args.regimes[-1]
        plot(results[last], params[last], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
