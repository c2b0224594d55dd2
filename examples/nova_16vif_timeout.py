"""The 2017 report, reproduced: a 16-vif live migration times out on ``refresh_cache-<uuid>``.

Chris Friesen, openstack-dev, 2017-05-19: live-migrating an instance with 16 vifs failed with an
RPC timeout "waiting for the 'refresh_cache-%s' lock in get_instance_nw_info()"; "the live
migration code path was waiting for the lock, but the code processing the incoming
'network-changed' events kept getting the lock instead even though they arrived while the live
migration code was already blocked waiting for the lock."

What is simulated (on the destination compute, every time scaled by ``--scale``):

* neutron sends ``--events-per-vif`` "network-changed" events per vif, in ``--batches`` batches
  ``--batch-interval`` s apart (neutron's nova notifier batches its events). Each batch is one
  ``external_instance_event`` RPC message; the compute's RPC handler pool (``--handlers``
  threads; eventlet's GreenPool in 2017, a thread pool in nova 34) runs each message on one
  handler thread, which handles its events *sequentially*, calling
  ``get_instance_nw_info(context, instance)`` for each one -- as nova's
  ``ComputeManager.external_instance_event`` does. Between two events the handler does nothing
  that blocks or yields (a log line), so it releases the lock and asks for it again at once.
* ``get_instance_nw_info`` takes ``refresh_cache-<uuid>`` and refreshes the cache: a full refresh
  costs ``--full-base + --full-per-vif * vifs`` neutron calls, a port-scoped one (``--event-refresh
  port``: nova >= Queens passes ``refresh_vif_id``) ``--port-cost``; each call takes
  ``--call-time`` s and yields (I/O).
* ``--migration-at`` s into the first batch, the source calls ``pre_live_migration`` on this
  host, which calls ``get_instance_nw_info`` (a full refresh). The source gives up after
  ``rpc_response_timeout`` (``--rpc-timeout``) s: "RPC TIMEOUT" when the lock wait plus the
  refresh exceed it. (The simulation lets the migration finish anyway, to measure its wait.)

Nothing is rigged: every variant runs the same code and the same schedule; only the lock differs.
oslo.concurrency's default lock is a ``threading.Semaphore``: its ``release`` notifies a waiter
but leaves the count free, and the releasing handler takes it straight back -- under eventlet the
releasing green thread keeps running until its next I/O, with native threads it keeps the GIL --
while the notified waiter, when it finally runs, finds the count taken and waits again at the end
of the queue. fairlock hands the lock to the chosen waiter at release, and with
``fairlock.lane("migration")`` around the migration's call that waiter is the migration.

Variants: ``oslo`` (``oslo_concurrency.lockutils.lock(name)``), ``oslo-fair``
(``fair=True``), ``fifo`` (``fairlock.lockutils.lock(name)``), ``lane`` (the same, the migration's
call inside ``fairlock.lane("migration")``), ``coalesce`` (``lane`` plus
:mod:`fairlock.coalesce` on ``get_instance_nw_info``: refreshes still queued when an equivalent
refresh starts share its result).

Modes: ``native`` (threads, in this process) and ``eventlet`` (a child process whose first
action is ``eventlet.monkey_patch()``), run side by side.

    python examples/nova_16vif_timeout.py                       # the table, both modes
    python examples/nova_16vif_timeout.py --plot timeline.png   # and a timeline (matplotlib)
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
        self.runs = []  # [thread, kind, start, end]
        self.calls = []  # [thread, asked, runs started before, served by run, returned]
        self._mutex = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def run_started(self, kind):
        with self._mutex:
            self.runs.append([threading.current_thread().name, kind, self.now(), None])
            return len(self.runs) - 1

    def run_ended(self, index):
        with self._mutex:
            self.runs[index][3] = self.now()

    def asked(self):
        with self._mutex:
            self.calls.append([threading.current_thread().name, self.now(), len(self.runs), None, None])
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

    def get_instance_nw_info(self, context, instance, refresh_vif_id=None):
        call = self.recorder.asked()
        name = "refresh_cache-%s" % instance
        if self.variant == "oslo":
            with oslo_lockutils.lock(name):
                run = self._get_instance_nw_info(refresh_vif_id)
        elif self.variant == "oslo-fair":
            with oslo_lockutils.lock(name, fair=True):
                run = self._get_instance_nw_info(refresh_vif_id)
        elif self.variant == "coalesce":
            run = self.coalescer.call(
                lockutils.internal_lock(name), refresh_vif_id, self._get_instance_nw_info, (refresh_vif_id,)
            )
        else:
            with lockutils.lock(name):
                run = self._get_instance_nw_info(refresh_vif_id)
        self.recorder.returned(call, run)
        return run

    def _get_instance_nw_info(self, refresh_vif_id):
        """The refresh itself (and update_instance_cache_with_nw_info): runs under the lock."""
        p = self.params
        port = refresh_vif_id is not None
        run = self.recorder.run_started("port" if port else "full")
        self.neutron.calls_of(p.port_cost if port else p.full_base + p.full_per_vif * p.vifs)
        self.recorder.run_ended(run)
        return run


def _covers(run_key, call_key):
    """A full refresh (key None) also refreshes every port; a port refresh only its own port."""
    return run_key is None or run_key == call_key


def simulate(variant, handlers, p):
    """One run of the scenario; returns the measurements and the timeline (times in real s)."""
    scale = p.scale
    neutron = Neutron(p.call_time * scale)
    instance = uuid.uuid4().hex  # a fresh lock name: no state shared between runs
    messages = queue.Queue()
    events = [(vif, n) for n in range(p.events_per_vif) for vif in range(p.vifs)]
    per_batch = -(-len(events) // p.batches)
    batches = [events[i:i + per_batch] for i in range(0, len(events), per_batch)]
    t0 = time.monotonic()
    recorder = Recorder(t0)
    api = NetworkAPI(variant, p, neutron, recorder)
    first_batch = threading.Event()
    first_batch_at = []

    def handler():
        # oslo.messaging's executor: one message at a time per pool thread.
        while True:
            message = messages.get()
            if message is None:
                return
            if not first_batch.is_set():
                first_batch_at.append(time.monotonic())
                first_batch.set()
            # ComputeManager.external_instance_event: the events of one message, in order.
            for vif, _ in message:
                tag = "port-%d" % vif if p.event_refresh == "port" else None
                api.get_instance_nw_info("admin-context", instance, refresh_vif_id=tag)

    def pre_live_migration():
        # "0.3 s into the first batch": counted from the moment a handler took it, so that
        # thread start-up (milliseconds, i.e. seconds once scaled) cannot reorder the two.
        first_batch.wait()
        _sleep_until(first_batch_at[0] + p.migration_at * scale)
        if variant in ("lane", "coalesce"):
            with fairlock.lane("migration"):  # the one-line change at nova's entry point
                api.get_instance_nw_info("request-context", instance)
        else:
            api.get_instance_nw_info("request-context", instance)

    pool = [threading.Thread(target=handler, name="handler-%d" % (i + 1)) for i in range(handlers)]
    for thread in pool:
        thread.start()
    if variant == "oslo-fair":
        # oslo's ReaderWriterLock imports eventlet when it is created; a first eventlet import in
        # a worker thread makes that thread unjoinable. Create it here, in the main thread.
        keep_alive = oslo_lockutils.internal_fair_lock("refresh_cache-%s" % instance)  # noqa: F841
    migrator = threading.Thread(target=pre_live_migration, name="migration")
    migrator.start()
    for i, batch in enumerate(batches):
        _sleep_until(t0 + i * p.batch_interval * scale)
        messages.put(batch)
    for _ in pool:
        messages.put(None)
    for thread in pool + [migrator]:
        thread.join()

    (_, asked, runs_before, served_by, returned), = [c for c in recorder.calls if c[0] == "migration"]
    migration = {"asked": asked, "run": served_by, "returned": returned}
    wait = (recorder.runs[served_by][2] - asked) / scale
    rpc = (returned - asked) / scale
    # Refreshes that started after the migration asked and before the one that served it.
    overtaken = sum(1 for r in recorder.runs[runs_before:served_by] if r[0] != "migration")
    return {
        "variant": variant,
        "handlers": handlers,
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


def run_mode(mode, p):
    rows = []
    for handlers in p.handlers:
        for variant in p.variants:
            row = simulate(variant, handlers, p)
            row["mode"] = mode
            rows.append(row)
    return rows


# -- the command line --------------------------------------------------------------------------------


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected integers >= 1")
    return values


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
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser():
    ap = argparse.ArgumentParser(
        description="Reproduce the 2017 nova 16-vif live-migration RPC timeout (scaled).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--vifs", type=_positive(int), default=16, help="vifs of the instance")
    ap.add_argument("--events-per-vif", type=_positive(int), default=2, help="network-changed events per vif")
    ap.add_argument("--batches", type=_positive(int), default=2, help="neutron notifier batches")
    ap.add_argument("--batch-interval", type=float, default=2.0, help="seconds between batches")
    ap.add_argument("--handlers", type=_int_list, default=[1, 4], help="RPC handler pool sizes, e.g. 1,4")
    ap.add_argument("--full-base", type=int, default=2, help="neutron calls of a full refresh: base ...")
    ap.add_argument("--full-per-vif", type=int, default=3, help="... plus this many per vif")
    ap.add_argument("--port-cost", type=int, default=5, help="neutron calls of a port-scoped refresh")
    ap.add_argument(
        "--event-refresh", choices=("full", "port"), default="full",
        help="what a network-changed event refreshes: full (nova 2017) or port (refresh_vif_id)",
    )
    ap.add_argument("--call-time", type=_positive(float), default=0.1, help="seconds per neutron call")
    ap.add_argument("--migration-at", type=float, default=0.3, help="migration's call, s into batch 1")
    ap.add_argument("--rpc-timeout", type=_positive(float), default=60.0, help="rpc_response_timeout (s)")
    ap.add_argument("--scale", type=_positive(float), default=0.01, help="real seconds per simulated second")
    ap.add_argument("--modes", type=_choice_list(MODES), default=list(MODES), help="native,eventlet")
    ap.add_argument("--variants", type=_choice_list(VARIANTS), default=list(VARIANTS), help=",".join(VARIANTS))
    ap.add_argument("--plot", metavar="FILE.png", help="draw the timeline of the first mode and handler count")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--eventlet-child", action="store_true", help=argparse.SUPPRESS)
    return ap


def child_argv(p):
    argv = [
        "--vifs", p.vifs, "--events-per-vif", p.events_per_vif, "--batches", p.batches,
        "--batch-interval", p.batch_interval, "--handlers", ",".join(map(str, p.handlers)),
        "--full-base", p.full_base, "--full-per-vif", p.full_per_vif, "--port-cost", p.port_cost,
        "--event-refresh", p.event_refresh, "--call-time", p.call_time, "--migration-at", p.migration_at,
        "--rpc-timeout", p.rpc_timeout, "--scale", p.scale, "--variants", ",".join(p.variants),
    ]
    return [sys.executable, os.path.abspath(__file__), "--eventlet-child"] + [str(a) for a in argv]


def refresh_seconds(p):
    return (p.full_base + p.full_per_vif * p.vifs) * p.call_time


def print_table(rows, p):
    full = p.full_base + p.full_per_vif * p.vifs
    print(
        f"{p.vifs} vifs, {p.events_per_vif} network-changed events per vif in {p.batches} batches "
        f"{p.batch_interval:g} s apart ({p.event_refresh} refresh per event); full refresh {full} neutron "
        f"calls = {refresh_seconds(p):g} s, port refresh {p.port_cost}; migration asks at "
        f"{p.migration_at:g} s; rpc_response_timeout {p.rpc_timeout:g} s; scale {p.scale:g}."
    )
    print("Times are real-time equivalents (measured / scale).\n")
    header = ("mode", "handlers", "variant", "migration wait", "overtaken", "RPC", "neutron calls", "refreshes")
    lines = [
        (
            r["mode"], str(r["handlers"]), VARIANT_LABELS[r["variant"]], f"{r['wait']:8.1f} s",
            str(r["overtaken"]), "RPC TIMEOUT" if r["timeout"] else "ok", str(r["neutron_calls"]),
            f"{r['refreshes']}/{r['calls']}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join("{:<%d}" % w if i < 3 or i == 5 else "{:>%d}" % w for i, w in enumerate(widths))
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    previous = None
    for line in lines:
        if previous is not None and line[:2] != previous:
            print()
        previous = line[:2]
        print(fmt.format(*line))
    print(
        "\nmigration wait: from the migration's call to the start of the refresh that served it."
        "\novertaken: refreshes by event handlers that started after the migration asked and before"
        " that one.\nrefreshes: refresh runs / get_instance_nw_info calls."
    )
    for (mode, handlers), group in _groups(rows):
        by = {r["variant"]: r for r in group}
        if "coalesce" in by and "lane" in by:
            before, after = by["lane"]["neutron_calls"], by["coalesce"]["neutron_calls"]
            print(
                f"coalescing, {mode}, {handlers} handler(s): {before} -> {after} neutron calls "
                f"({before / after:.2f}x fewer)"
            )


def _groups(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["mode"], r["handlers"]), []).append(r)
    return list(groups.items())


# -- the picture -------------------------------------------------------------------------------------


def plot(rows, p, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib (or fairlock[plot])")
    (mode, handlers), group = _groups(rows)[0]
    scale = p.scale
    fig, axes = plt.subplots(len(group), 1, figsize=(12, 1.2 + 1.05 * len(group) * (1 + handlers) ** 0.5),
                             sharex=True, squeeze=False)
    colors = {"migration": "#d62728", "full": "#1f77b4", "port": "#9467bd"}
    end = max(max(r[3] for r in row["timeline"]["runs"]) for row in group) / scale
    for ax, row in zip(axes[:, 0], group):
        timeline = row["timeline"]
        threads = sorted({r[0] for r in timeline["runs"]} | {c[0] for c in timeline["calls"]},
                         key=lambda n: (n != "migration", n))
        ypos = {name: i for i, name in enumerate(reversed(threads))}
        for name, kind, start, stop in timeline["runs"]:
            color = colors["migration"] if name == "migration" else colors[kind]
            ax.barh(ypos[name], (stop - start) / scale, left=start / scale, height=0.6, color=color,
                    edgecolor="white", linewidth=0.5)
        m = timeline["migration"]
        served = timeline["runs"][m["run"]][2]
        y = ypos["migration"]
        ax.barh(y, (served - m["asked"]) / scale, left=m["asked"] / scale, height=0.6, color="none",
                edgecolor=colors["migration"], hatch="////", linewidth=1)
        ax.axvline((m["asked"]) / scale + p.rpc_timeout, color="black", linestyle="--", linewidth=1)
        for name, asked, _, run, returned in timeline["calls"]:
            if timeline["runs"][run][0] != name:  # served by someone else's run: coalesced
                ax.plot(returned / scale, ypos[name], marker="v", color="#2ca02c", markersize=5)
        verdict = "RPC TIMEOUT" if row["timeout"] else "ok"
        ax.set_title(
            f"{VARIANT_LABELS[row['variant']]}: migration waited {row['wait']:.1f} s ({verdict}), "
            f"{row['neutron_calls']} neutron calls",
            loc="left", fontsize=10,
        )
        ax.set_yticks(list(ypos.values()), list(ypos.keys()), fontsize=8)
        ax.set_ylim(-0.6, len(threads) - 0.4)
        ax.set_xlim(0, max(end, p.rpc_timeout + p.migration_at) * 1.02)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds (real-time equivalent)")
    handles = [
        Patch(color=colors["full"], label="event handler holds the lock (full refresh)"),
        Patch(color=colors["migration"], label="migration holds the lock"),
        Patch(facecolor="none", edgecolor=colors["migration"], hatch="////", label="migration waits"),
        plt.Line2D([], [], color="black", linestyle="--", label="rpc_response_timeout"),
        plt.Line2D([], [], color="#2ca02c", marker="v", linestyle="none", label="served by a shared refresh"),
    ]
    if any(r[1] == "port" for row in group for r in row["timeline"]["runs"]):
        handles.insert(1, Patch(color=colors["port"], label="port-scoped refresh"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        f"refresh_cache-<uuid> during a {p.vifs}-vif live migration ({mode}, {handlers} RPC handler "
        f"thread{'s' if handlers > 1 else ''})", fontsize=12,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"timeline written to {path}")


# -- main --------------------------------------------------------------------------------------------


def main(argv=None):
    p = build_parser().parse_args(argv)
    if p.eventlet_child:
        json.dump(run_mode("eventlet", p), sys.stdout)
        return 0
    child = None
    if "eventlet" in p.modes:
        # Started first, so both modes run side by side (the simulation mostly sleeps).
        child = subprocess.Popen(child_argv(p), stdout=subprocess.PIPE, text=True)
    results = {}
    if "native" in p.modes:
        results["native"] = run_mode("native", p)
    if child is not None:
        out, _ = child.communicate()
        if child.returncode != 0:
            sys.exit(f"the eventlet child failed (exit {child.returncode})")
        results["eventlet"] = json.loads(out)
    rows = [row for mode in p.modes for row in results[mode]]
    if p.json:
        json.dump(rows, sys.stdout)
        print()
    else:
        print_table(rows, p)
    if p.plot:
        plot(rows, p, p.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
