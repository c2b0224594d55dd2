"""The 16-vif live-migration wait, reproduced in nova's own code (nova 34, native threads).

``examples/nova_16vif_timeout.py`` simulates nova. This script runs nova: the compute manager,
the neutron network API and the ``refresh_cache-<uuid>`` lock of the nova release installed in
the interpreter that runs it (``tools/nova_venv.sh`` makes ``.venv-nova`` with ``nova==34.0.0``),
under a shorter form of the demo's "today" storm (96 "network-changed" messages, 8 a second,
one event each, for one instance with 16 ports; a neutron call takes 0.3 s): event handlers
queue on the instance's lock faster than refreshes finish, and ``pre_live_migration``, sent 7 s
in, arrives behind ~55 of them. Every time is scaled by ``--scale`` and reported back in nova
seconds.

    tools/nova_venv.sh                                   # once: .venv-nova with nova 34 and fairlock
    .venv-nova/bin/python examples/nova_real_code.py     # ~75 s: every variant, a table
    .venv-nova/bin/python examples/nova_real_code.py --variants oslo,fairlock --json

**nova's code, unmodified** (imported from the installed nova): ``ComputeManager`` built by
nova (with nova's fake virt driver, ``compute_driver=fake.SmallFakeDriver``, as nova's own tests
do), its ``external_instance_event`` (one call per RPC message, handling the message's events in
order, a ``network-changed`` event calling ``get_instance_nw_info(context, instance,
refresh_vif_id=port)``) and its ``pre_live_migration`` (which calls ``get_instance_nw_info``, a
full refresh, before the driver's and the network API's steps); ``nova.network.neutron.API``:
``get_instance_nw_info`` taking ``lockutils.lock('refresh_cache-<uuid>')``, the port-scoped and
full cache rebuilds (``_build_network_info_model``), ``update_instance_cache_with_nw_info``;
nova's objects (``Instance``, ``InstanceInfoCache``, ``InstanceExternalEvent``,
``LibvirtLiveMigrateData``) and database layer, on the sqlite database nova's test fixtures set
up; nova's notifications (to nova's test notifier).

**Stand-ins:**

* *neutron*: nova's own ``NeutronFixture`` (nova/tests/fixtures/neutron.py, the fake neutron
  client of nova's functional tests), holding the instance's 16 ports, with every client call
  delayed by ``--call-time`` (scaled) and counted: a neutron slowed by the storm.
* *the RPC layer*: no message bus. Each ``external_instance_event`` message and the
  ``pre_live_migration`` call are submitted to a ``futurist.ThreadPoolExecutor`` of 64 threads
  -- the executor class and size (``executor_thread_pool_size``) oslo.messaging's ``threading``
  executor dispatches nova's RPC messages on -- in arrival order, and each is handed its own
  copy of the instance object, as deserialising a message would. The migration's call is timed
  from submission to return and compared with ``rpc_response_timeout`` (scaled); no client
  raises ``MessagingTimeout`` (see below).
* *the database*: sqlite in memory (nova's test fixtures), not MySQL behind nova-conductor.
* *the change*: applied at run time, as ``doc/source/nova.rst`` writes it into nova's source:
  ``nova.network.neutron.lockutils`` becomes ``fairlock.lockutils`` (the import swap), and
  ``ComputeManager.pre_live_migration`` runs inside ``fairlock.lane('migration')`` (the doc puts
  the decorator innermost; the lane is set for the whole call, so the place makes no
  difference to which lane the lock sees). For coalescing, ``API.get_instance_nw_info`` is
  replaced by the doc's coalesced version: nova's three-line body without its ``with
  lockutils.lock(...)``, under ``coalesce.coalesced`` with the doc's key and covers functions.

Variants: ``oslo`` (nova as released), ``oslo-fair`` (nova with ``fair=True`` on the
``refresh_cache-<uuid>`` lock, what oslo offers today), ``fifo`` (the import swap alone),
``fairlock`` (the import swap and the lane: the change of doc/source/nova.rst), ``coalesce``
(that and the doc's coalescing of ``get_instance_nw_info``).

Observation only, no effect on the order: wrappers around ``API.get_instance_nw_info`` and
``API._get_instance_nw_info`` (which runs under the lock) record who asked and who refreshed
when, and the harness marks its pool threads "handler" or "migration".

What a wait past ``rpc_response_timeout`` means in nova 34: ``pre_live_migration`` is sent with
``long_rpc_timeout`` (1800 s) and a call monitor of ``rpc_response_timeout``; once a pool thread
runs it, the destination heartbeats, so the call is not cut at 60 s: the live migration stalls
for the time measured. In 2017 (Newton) it was a plain call and failed.
"""

import os
import sys

# nova 34's default: native threads. nova refuses eventlet once this is set, and must patch (or
# not) before anything imports eventlet (futurist would): so this comes first.
os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")
from nova import monkey_patch  # noqa: E402

monkey_patch.patch()

import argparse  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import unittest  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # fairlock from this checkout

import futurist  # noqa: E402
from nova.compute import instance_actions  # noqa: E402
from nova.compute import manager as compute_manager  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova.network import neutron as neutron_api  # noqa: E402
from nova import objects  # noqa: E402
from nova import test  # noqa: E402
from nova.tests import fixtures as nova_fixtures  # noqa: E402
from oslo_concurrency import lockutils as oslo_lockutils  # noqa: E402
from sqlalchemy import exc as sqlalchemy_exc  # noqa: E402

import fairlock  # noqa: E402
from fairlock import coalesce  # noqa: E402
from fairlock import lockutils as fair_lockutils  # noqa: E402

VARIANTS = ("oslo", "oslo-fair", "fifo", "fairlock", "coalesce")
VARIANT_LABELS = {
    "oslo": "nova as released (oslo lock)",
    "oslo-fair": "oslo lock, fair=True",
    "fifo": "fairlock import only (FIFO)",
    "fairlock": "fairlock import + migration lane",
    "coalesce": "fairlock + lane + coalescing",
}
FAIRLOCK_VARIANTS = ("fifo", "fairlock", "coalesce")
LANE_VARIANTS = ("fairlock", "coalesce")
NEUTRON_CALLS = (
    "list_ports", "show_port", "list_networks", "show_network", "list_subnets", "show_subnet",
    "list_floatingips", "list_security_groups", "list_extensions", "update_port",
    "show_port_binding", "create_port_binding", "activate_port_binding", "delete_port_binding",
)


WHO = threading.local()  # "handler" or "migration": who the current pool thread works for


class SlowNeutron(nova_fixtures.NeutronFixture):
    """nova's NeutronFixture, every client call delayed by ``delay`` s (a loaded neutron)."""

    delay = 0.0

    def __init__(self, test_case, delay):
        super().__init__(test_case)
        self.delay = delay
        self.calls = 0
        self.migration_calls = 0
        self._count = threading.Lock()
        for name in NEUTRON_CALLS:
            original = getattr(self, name)
            setattr(self, name, self._slow(original))

    def _slow(self, original):
        @functools.wraps(original)
        def call(*args, **kwargs):
            with self._count:
                self.calls += 1
                if getattr(WHO, "who", None) == "migration":
                    self.migration_calls += 1
            time.sleep(self.delay)
            return original(*args, **kwargs)

        return call


class _FairOslo:
    """``oslo_concurrency.lockutils`` as nova would use it with ``fair=True`` on this lock."""

    def __getattr__(self, name):
        return getattr(oslo_lockutils, name)

    @staticmethod
    def lock(name, *args, **kwargs):
        return oslo_lockutils.lock(name, *args, fair=True, **kwargs)


# -- the coalescing change of doc/source/nova.rst, as written there -------------------------------


def _refresh_cache_lock(self, context, instance, **kwargs):
    return fair_lockutils.internal_lock("refresh_cache-%s" % instance.uuid)


def _nw_info_key(self, context, instance, refresh_vif_id=None, force_refresh=False, **kwargs):
    # networks=, port_ids=, admin_client=, preexisting_port_ids= make a
    # call unlike any other: it runs on its own, as before.
    if kwargs:
        return coalesce.ALONE
    return "force" if force_refresh else refresh_vif_id  # None: full


def _nw_info_covers(run_key, call_key):
    # A forced refresh serves everyone, a full one every port refresh.
    return run_key == "force" or run_key == call_key or (run_key is None and call_key != "force")


def _coalesced_get_instance_nw_info():
    @coalesce.coalesced(_refresh_cache_lock, key=_nw_info_key, covers=_nw_info_covers)
    def get_instance_nw_info(self, context, instance, **kwargs):
        """Returns all network info related to an instance."""
        # Runs holding refresh_cache-<uuid>, taken by the decorator.
        result = self._get_instance_nw_info(context, instance, **kwargs)
        neutron_api.update_instance_cache_with_nw_info(self, context, instance, nw_info=result)
        return result

    return get_instance_nw_info


class Storm(test.TestCase):
    """One variant: built and run by :func:`run_variant` (a nova TestCase: nova's fixtures)."""

    params = None  # set by run_variant
    result = None

    def test_storm(self):
        p = self.params
        scale = p.scale
        # nova's WarningsFixture makes warnings errors; a newer SQLAlchemy than nova 34's CI used
        # deprecates an option nova still passes. Not what this run is about.
        warnings.filterwarnings("ignore", category=sqlalchemy_exc.SADeprecationWarning)
        neutron = self.useFixture(SlowNeutron(self, p.call_time * scale))
        self.flags(host="dest")
        ctxt = nova_context.get_admin_context()
        instance, ports = self._instance_with_ports(ctxt, neutron, p.vifs)
        # What nova-api records when the live migration is requested (wrap_instance_event needs it).
        objects.InstanceAction.action_start(ctxt, instance.uuid, instance_actions.LIVE_MIGRATION, want_result=False)
        compute = compute_manager.ComputeManager()
        compute.host = "dest"

        if p.variant == "oslo-fair":
            self.stub_out("nova.network.neutron.lockutils", _FairOslo())
        elif p.variant in FAIRLOCK_VARIANTS:
            self.stub_out("nova.network.neutron.lockutils", fair_lockutils)  # the import swap
        if p.variant == "coalesce":
            self.stub_out("nova.network.neutron.API.get_instance_nw_info", _coalesced_get_instance_nw_info())
        if p.variant in LANE_VARIANTS:
            # @fairlock.lane('migration') on ComputeManager.pre_live_migration
            self.stub_out(
                "nova.compute.manager.ComputeManager.pre_live_migration",
                fairlock.lane("migration")(compute_manager.ComputeManager.pre_live_migration),
            )

        # Observation only: when each refresh ran under the lock, and who asked.
        refreshes = []  # [who, kind, start, end, neutron calls]
        waits = []  # event handlers: (asked, refresh started or shared result returned)
        calls = []  # one entry per get_instance_nw_info call
        asks = {}
        local = WHO
        original_refresh = neutron_api.API._get_instance_nw_info
        original_get = neutron_api.API.get_instance_nw_info
        t0_box = []

        def now():
            return time.monotonic() - t0_box[0]

        def observed_refresh(api, context, inst, *args, **kwargs):
            entry = [getattr(local, "who", "?"), "port" if kwargs.get("refresh_vif_id") else "full", now(), None,
                     neutron.calls]
            refreshes.append(entry)
            if entry[0] == "handler":
                waits.append((local.asked, entry[2]))
                local.ran = True
            try:
                return original_refresh(api, context, inst, *args, **kwargs)
            finally:
                entry[3] = now()
                entry[4] = neutron.calls - entry[4]  # only the lock's holder calls neutron here

        def observed_get(api, context, inst, **kwargs):
            asked_at = now()
            ran_before = len(refreshes)
            if getattr(local, "who", None) == "migration":
                asks["migration"] = asked_at
            else:
                local.asked = asked_at
                local.ran = False
            try:
                return original_get(api, context, inst, **kwargs)
            finally:
                calls.append(ran_before)
                if getattr(local, "who", None) == "handler" and not local.ran:
                    waits.append((asked_at, now()))  # served by a shared refresh: waited until now

        self.stub_out("nova.network.neutron.API._get_instance_nw_info", observed_refresh)
        self.stub_out("nova.network.neutron.API.get_instance_nw_info", observed_get)

        # The storm: every vif once, then every vif again, ...; one event per message.
        events = [ports[i % p.vifs] for i in range(p.vifs * p.events_per_vif)]
        copies = [instance.obj_clone() for _ in range(len(events) + 1)]
        migration_done = threading.Event()
        picked = []
        handled = []

        def handle_event_message(index, port_id):
            local.who = "handler"
            event = objects.InstanceExternalEvent(
                name="network-changed", tag=port_id, instance_uuid=instance.uuid, status="completed")
            compute.external_instance_event(ctxt, [copies[index]], [event])
            handled.append(index)

        def handle_pre_live_migration():
            local.who = "migration"
            picked.append(now())
            migrate_data = objects.LibvirtLiveMigrateData(
                is_shared_instance_path=True, is_shared_block_storage=True, block_migration=False)
            try:
                return compute.pre_live_migration(ctxt, copies[-1], None, migrate_data)
            finally:
                migration_done.set()

        executor = futurist.ThreadPoolExecutor(max_workers=p.handlers)
        # Warm up: the executor's threads, the lock's module, one refresh (imports, caches).
        list(executor.map(lambda _: time.sleep(0.01), range(p.handlers)))
        t0_box.append(time.monotonic())
        refreshes.clear()
        waits.clear()
        calls.clear()
        neutron_calls_before = neutron.calls
        schedule = sorted(
            [(i * p.batch_interval, 0, i) for i in range(len(events))] + [(p.migration_at, 1, None)]
        )
        futures = []
        migration = None
        sent = None
        for at, is_migration, index in schedule:
            delay = t0_box[0] + at * scale - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if is_migration:
                sent = now()
                migration = executor.submit(handle_pre_live_migration)
            else:
                futures.append(executor.submit(handle_event_message, index, events[index]))
        migration.result()
        returned = now()
        for future in futures:
            future.result()
        executor.shutdown()

        served = [r for r in refreshes if r[0] == "migration"]
        asked = asks["migration"]
        start = served[0][2]
        overtaken = sum(1 for r in refreshes if r[0] == "handler" and asked < r[2] < start)
        queued = sum(1 for a, s_ in waits if a < asked and s_ > asked)
        self.__class__.result = {
            "variant": p.variant,
            "queued": queued,
            "wait": (start - asked) / scale,
            "call": (returned - sent) / scale,
            "pool_wait": (picked[0] - sent) / scale,
            "timeout": (returned - sent) / scale > p.rpc_timeout,
            "overtaken": overtaken,
            "refreshes_before": sum(1 for r in refreshes if r[2] < asked),
            "events_handled": len(handled),
            "refreshes": len(refreshes),
            "calls": len(calls),
            "neutron_calls": neutron.calls - neutron_calls_before,
            "migration_refresh": (served[0][3] - start) / scale,
            "migration_refresh_calls": served[0][4],
            "migration_neutron_calls": neutron.migration_calls,
            "port_refresh": _median([(r[3] - r[2]) / scale for r in refreshes if r[1] == "port" and r[3]]),
            "port_refresh_calls": _median([r[4] for r in refreshes if r[1] == "port" and r[3]]),
        }

    def _instance_with_ports(self, ctxt, neutron, vifs):
        """An active instance with ``vifs`` neutron ports, its network info cache filled."""
        instance_uuid = str(uuid.uuid4())
        ports = []
        for n in range(vifs):
            port = copy.deepcopy(neutron.port_1)
            port.update(
                id=str(uuid.uuid4()), device_id=instance_uuid, mac_address="fa:16:3e:00:00:%02x" % n,
                fixed_ips=[{"ip_address": "192.168.1.%d" % (10 + n), "subnet_id": neutron.subnet_1["id"]}],
            )
            neutron._ports[port["id"]] = port
            ports.append(port["id"])
        instance = objects.Instance(
            context=ctxt, uuid=instance_uuid, project_id=neutron.tenant_id, user_id="demo",
            host="src", vm_state="active", power_state=1, task_state="migrating",
            flavor=objects.Flavor.get_by_name(ctxt, "m1.small"), instance_type_id=1,
            system_metadata={}, metadata={},
            info_cache=objects.InstanceInfoCache(network_info=network_model.NetworkInfo()),
        )
        instance.create()
        api = neutron_api.API()
        nw_info = api._build_network_info_model(ctxt, instance, force_refresh=True)
        neutron_api.update_instance_cache_with_nw_info(api, ctxt, instance, nw_info=nw_info)
        instance = objects.Instance.get_by_uuid(ctxt, instance_uuid, expected_attrs=["info_cache", "flavor"])
        assert len(instance.info_cache.network_info) == vifs, instance.info_cache.network_info
        return instance, ports


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def run_variant(p):
    Storm.params = p
    Storm.result = None
    suite = unittest.TestSuite([Storm("test_storm")])
    outcome = unittest.TestResult()
    suite.run(outcome)
    for _, trace in outcome.errors + outcome.failures:
        sys.stderr.write(trace)
    if Storm.result is None:
        sys.exit(f"variant {p.variant} failed")
    return Storm.result


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


def _variants(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in VARIANTS for v in values):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(VARIANTS)}; got {text!r}")
    return values


def build_parser():
    ap = argparse.ArgumentParser(
        description="The 'today' storm of examples/nova_16vif_timeout.py, run on nova's own compute "
        "manager and neutron API (the installed nova, native threads). Times in nova seconds "
        "(measured / scale).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--variants", type=_variants, default=list(VARIANTS), help=",".join(VARIANTS))
    ap.add_argument("--vifs", type=_positive(int), default=16, help="ports of the instance")
    ap.add_argument("--events-per-vif", type=_positive(int), default=6, help="network-changed events per port")
    ap.add_argument("--batch-interval", type=_positive(float), default=0.125, help="s between event messages")
    ap.add_argument("--call-time", type=_positive(float), default=0.3, help="s per neutron call")
    ap.add_argument("--migration-at", type=_positive(float), default=7.0, help="pre_live_migration sent at (s)")
    ap.add_argument("--rpc-timeout", type=_positive(float), default=60.0, help="rpc_response_timeout (s)")
    ap.add_argument("--handlers", type=_positive(int), default=64, help="executor_thread_pool_size")
    ap.add_argument("--scale", type=_positive(float), default=0.05, help="real seconds per nova second")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    rows = []
    for variant in args.variants:
        p = argparse.Namespace(**vars(args), variant=variant)
        rows.append(run_variant(p))
    if args.json:
        json.dump(rows, sys.stdout)
        print()
        return 0
    print_table(rows, args)
    return 0


def print_table(rows, p):
    events = p.vifs * p.events_per_vif
    print(
        f"nova {nova_version()} (native threads), its ComputeManager and neutron API; a pool of "
        f"{p.handlers} threads; {p.vifs} ports, {events} network-changed messages "
        f"{p.batch_interval:g} s apart (one event each); neutron (NeutronFixture) {p.call_time:g} s a "
        f"call; pre_live_migration sent at {p.migration_at:g} s; rpc_response_timeout "
        f"{p.rpc_timeout:g} s; scale {p.scale:g} (times below in nova seconds)."
    )
    header = ("variant", "pool wait", "queued", "lock wait", "overtaken", "call", "> rpc timeout",
              "neutron calls", "refreshes", "port refresh", "full refresh")
    lines = [
        (
            VARIANT_LABELS[r["variant"]], f"{r['pool_wait']:.1f} s", str(r["queued"]), f"{r['wait']:.1f} s",
            str(r["overtaken"]),
            f"{r['call']:.1f} s", "TIMEOUT" if r["timeout"] else "ok", str(r["neutron_calls"]),
            f"{r['refreshes']}/{r['calls']}",
            f"{r['port_refresh']:.1f} s, {r['port_refresh_calls']} calls",
            f"{r['migration_refresh']:.1f} s, {r['migration_refresh_calls']} calls",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join("{:<%d}" % w if i in (0, 6) else "{:>%d}" % w for i, w in enumerate(widths))
    print(fmt.format(*header).rstrip())
    print(fmt.format(*("-" * w for w in widths)).rstrip())
    for line in lines:
        print(fmt.format(*line).rstrip())
    out = [VARIANT_LABELS[r["variant"]] for r in rows if r["timeout"]]
    ok = [VARIANT_LABELS[r["variant"]] for r in rows if not r["timeout"]]
    verdict = "; ".join(
        part for part in (
            "past rpc_response_timeout with " + ", ".join(out) if out else "",
            "ok with " + ", ".join(ok) if ok else "",
        ) if part
    )
    by = {r["variant"]: r for r in rows}
    if "fairlock" in by and "coalesce" in by:
        verdict += (f"; coalescing: {by['fairlock']['neutron_calls'] / max(1, by['coalesce']['neutron_calls']):.1f}x"
                    " fewer neutron calls")
    print(f"nova's code: {verdict}.")
    print(
        "pool wait: pre_live_migration waiting for a pool thread. queued: event handlers waiting for the lock when pre_live_migration asked for it. lock wait:"
        " from its get_instance_nw_info call to the start of its refresh. overtaken: event refreshes"
        " that started in between. call: pre_live_migration, from submission to return. neutron calls:"
        " the whole storm's. refreshes: refresh runs / get_instance_nw_info calls. port/full refresh:"
        " median hold of an event's refresh, and the migration's, with their neutron calls."
    )


def nova_version():
    from importlib import metadata

    return metadata.version("nova")


if __name__ == "__main__":
    sys.exit(main())
