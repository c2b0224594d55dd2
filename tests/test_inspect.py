"""``fairlock inspect`` against a real etcd: holders, queues lane by lane, who is next, leases
(a SIGKILLed holder), every way of naming etcd (URLs of each kind, --endpoint, --config-file),
the empty-prefix message and --json."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fairlock._core import Policy
from fairlock.etcd import EtcdLock, Session
from fairlock.etcd.cli import (
    LOCKUTILS_DEFAULT_LANE,
    LOCKUTILS_LANES,
    _read_with_configparser,
    _read_with_oslo,
    read_config_files,
    resolve_url,
)
from fairlock.etcd.gateway import GatewayTransport
from fairlock.etcd.inspect import ALIVE, GONE, NOT_REFRESHING, format_locks, inspect_locks, read_locks
from fairlock.etcd.transport import ForwardingTransport, KeyValue

from .kinds import start, wait_for

ROOT = Path(__file__).resolve().parent.parent
NAME = "refresh_cache-8a4f"


def inspect_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fairlock", "inspect", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


class Queue:
    """A lock held in this process, and one waiter per (session, lane), each in its own thread."""

    def __init__(self, url: str, lanes: tuple[str, ...] | None = None, max_bypass: int | None = 4) -> None:
        self.url = url
        self.options: dict[str, Any] = {"max_bypass": max_bypass}
        if lanes is not None:
            self.options["lanes"] = lanes
        self.sessions: list[Session] = []
        self.threads: list[Any] = []
        self.transport = GatewayTransport.from_config(resolve_url(url).config)
        self.prefix = resolve_url(url).prefix.encode()
        self.holder: EtcdLock | None = None

    def lock(self) -> EtcdLock:
        session = Session(self.url)
        self.sessions.append(session)
        return EtcdLock(NAME, session, **self.options)

    def hold(self) -> EtcdLock:
        self.holder = self.lock()
        assert self.holder.acquire()
        return self.holder

    def queue(self, lane: str) -> None:
        lock = self.lock()
        self.threads.append(start(lambda: (lock.acquire(lane=lane), lock.release())))
        n = len(self.threads)
        wait_for(lambda: self.waiting() == n, what=f"{n} waiters in etcd")

    def waiting(self) -> int:
        views = read_locks(self.transport, self.prefix, NAME)
        return len(views[0].waiters) if views else 0

    def close(self) -> None:
        if self.holder is not None and self.holder.is_held():
            self.holder.release()
        for t in self.threads:
            t.join(30)
        for s in self.sessions:
            s.close()
        self.transport.close()


@pytest.fixture
def url(etcd_server: Any, etcd_prefix: bytes) -> str:
    return str(etcd_server.url(etcd_prefix.decode().rstrip("/")))


@pytest.fixture
def queue(url: str) -> Iterator[Queue]:
    q = Queue(url)
    yield q
    q.close()


def test_lanes_in_priority_order_and_the_core_says_who_is_next(queue: Queue, url: str) -> None:
    holder = queue.hold()
    queue.queue("low")
    queue.queue("normal")
    queue.queue("high")
    views = read_locks(queue.transport, queue.prefix)
    assert [v.name for v in views] == [NAME]
    view = views[0]
    assert view.holder is not None and view.holder.fencing_token == holder.fencing_token
    assert view.holder.lease is not None and view.holder.lease.status == ALIVE
    low, normal, high = view.waiters  # ticket (arrival) order
    assert [w.lane for w in view.waiters] == ["low", "normal", "high"]
    assert all(w.lease is not None and w.lease.status == ALIVE for w in view.waiters)
    # The core's grant: the high waiter, overtaking the two older ones.
    assert view.next is not None and (view.next.ticket, view.next.lane) == (high.ticket, "high")
    assert view.next.overtakes == [low.ticket, normal.ticket]

    out = inspect_cli("--url", url, NAME)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    lines = [line.strip() for line in text.splitlines()]
    assert lines.index("high: 1 waiting") < lines.index("normal: 1 waiting") < lines.index("low: 1 waiting")
    assert "session alive (lease" in text
    assert (f"next, at the holder's release: ticket {high.ticket}" in text
            and f"in lane high; it overtakes tickets {low.ticket}, {normal.ticket}" in text)

    summary = inspect_cli("--url", url)
    assert summary.returncode == 0, summary.stderr
    header, row = summary.stdout.splitlines()
    assert "waiting (high, normal, low)" in header and "next" in header
    assert row.startswith(NAME) and " 1 1 1 " in row and "(high)" in row

    out = inspect_cli("--url", url, "--json", NAME)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["prefix"] == queue.prefix.decode() and data["lanes"] == ["high", "normal", "low"]
    assert data["max_bypass"] == 4 and data["revision"] > 0
    (lock,) = data["locks"]
    assert lock["holder"]["fencing_token"] == holder.fencing_token
    assert lock["holder"]["lease"]["status"] == "alive" and lock["holder"]["lease"]["granted_ttl"] == 10
    assert [w["lane"] for w in lock["waiters"]] == ["low", "normal", "high"]
    assert lock["next"] == {"ticket": high.ticket, "lane": "high", "overtakes": [low.ticket, normal.ticket]}


def stable(locks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The locks without what moves between two reads (ages, lease seconds)."""
    out = json.loads(json.dumps(locks))
    for lock in out:
        for party in [lock["holder"], *lock["waiters"]]:
            party.pop("held_for", None), party.pop("waiting_for", None)
            party["lease"] = party["lease"]["status"]
    return out


def test_every_way_of_naming_etcd_reads_the_same(queue: Queue, url: str, etcd_server: Any) -> None:
    queue.hold()
    queue.queue("high")
    expected = inspect_cli("--url", url, "--json", NAME)
    assert expected.returncode == 0, expected.stderr
    want = json.loads(expected.stdout)["locks"]
    grpc_url = url.replace("etcd3+http://", "etcd3+grpc://")
    tooz_url = url.replace("etcd3+http://", "fairlock+etcd3+http://")
    for args in (["--url", grpc_url], ["--url", tooz_url],
                 ["--endpoint", etcd_server.endpoint, "--prefix", queue.prefix.decode()]):
        out = inspect_cli(*args, "--json", NAME)
        assert out.returncode == 0, (args, out.stderr)
        assert stable(json.loads(out.stdout)["locks"]) == stable(want), args


def test_a_tooz_url_gives_the_lanes_and_k(etcd_server: Any, etcd_prefix: bytes) -> None:
    prefix = etcd_prefix.decode().rstrip("/")
    q = Queue(etcd_server.url(prefix), lanes=("a", "b"), max_bypass=2)
    try:
        q.hold()
        q.queue("b")
        q.queue("a")
        tooz = f"fairlock+etcd3+http://127.0.0.1:{etcd_server.client_port}{prefix}?lanes=a,b&default_lane=b&max_bypass=2"
        out = inspect_cli("--url", tooz, NAME)
        assert out.returncode == 0, out.stderr
        assert "(max_bypass K = 2)" in out.stdout
        lines = [line.strip() for line in out.stdout.splitlines()]
        assert lines.index("a: 1 waiting") < lines.index("b: 1 waiting")
        assert "in lane a; it overtakes ticket" in out.stdout and "unknown here" not in out.stdout
        # Without the lanes, inspect says the stored lanes are foreign to what it was told.
        plain = inspect_cli("--url", etcd_server.url(prefix), NAME)
        assert plain.returncode == 0, plain.stderr
        assert "stored lane 'a' unknown here: due" in plain.stdout and "--lanes" in plain.stdout
        # --lanes on the command line fixes that.
        fixed = inspect_cli("--url", etcd_server.url(prefix), "--lanes", "a,b", "--max-bypass", "2", NAME)
        assert fixed.returncode == 0 and "unknown here" not in fixed.stdout and "K = 2" in fixed.stdout
    finally:
        q.close()


NOVA_CONF = """\
[DEFAULT]
# [DEFAULT] values are not inherited by other sections (oslo.config's INI dialect)
fairlock_backend_url = etcd3+http://127.0.0.1:1/wrong
debug = true

[oslo_concurrency]
lock_path = /var/lib/nova/tmp
fairlock_backend_url = {url}
fairlock_lanes = migration, normal, events
fairlock_max_bypass = 3
"""


def test_config_file_gives_the_url_and_the_lockutils_lanes(etcd_server: Any, etcd_prefix: bytes,
                                                           tmp_path: Path) -> None:
    prefix = etcd_prefix.decode().rstrip("/")
    url = etcd_server.url(prefix)
    conf = tmp_path / "nova.conf"
    conf.write_text(NOVA_CONF.format(url=url))
    where = read_config_files([str(conf)])
    assert where.prefix == prefix and where.config.endpoints == (etcd_server.endpoint,)
    assert where.policy == Policy.of(("migration", "normal", "events"), "normal", 3)
    # oslo.config and the configparser fallback read the same values
    assert _read_with_oslo([str(conf)]) == _read_with_configparser([str(conf)])
    q = Queue(url, lanes=("migration", "normal", "events"), max_bypass=3)
    try:
        q.hold()
        q.queue("events")
        q.queue("migration")
        out = inspect_cli("--config-file", str(conf), NAME)
        assert out.returncode == 0, out.stderr
        lines = [line.strip() for line in out.stdout.splitlines()]
        assert lines.index("migration: 1 waiting") < lines.index("normal: 0 waiting") < lines.index("events: 1 waiting")
        assert "(max_bypass K = 3)" in out.stdout and "in lane migration" in out.stdout
    finally:
        q.close()


def test_config_file_read_without_oslo(tmp_path: Path) -> None:
    """The fallback: last value wins, quotes dropped, later files override, defaults as lockutils'."""
    first, second = tmp_path / "a.conf", tmp_path / "b.conf"
    first.write_text("[oslo_concurrency]\nfairlock_backend_url = etcd3+http://h:1/x\n"
                     "fairlock_backend_url = \"etcd3+grpc://h:2/y\"\n")
    second.write_text("[oslo_concurrency]\nfairlock_max_bypass = 0\n")
    values = _read_with_configparser([str(first), str(second)])
    assert values == {"fairlock_backend_url": "etcd3+grpc://h:2/y", "fairlock_lanes": list(LOCKUTILS_LANES),
                      "fairlock_default_lane": LOCKUTILS_DEFAULT_LANE, "fairlock_max_bypass": 0}
    assert _read_with_oslo([str(first), str(second)]) == values


def test_lockutils_defaults_are_the_ones_inspect_assumes() -> None:
    from fairlock import lockutils

    assert (LOCKUTILS_LANES, LOCKUTILS_DEFAULT_LANE) == (lockutils.DEFAULT_LANES, lockutils.DEFAULT_LANE)


HOLDER = textwrap.dedent("""
    import sys
    from fairlock.etcd import EtcdLock, Session
    session = Session(sys.argv[1])
    lock = EtcdLock(sys.argv[2], session)
    assert lock.acquire()
    print("held", lock.fencing_token, flush=True)
    sys.stdin.read()
""")


@pytest.mark.slow  # waits for a real lease to run low and expire (about 6 s)
def test_a_sigkilled_holder_shows_its_session_not_refreshing(url: str, queue: Queue) -> None:
    ttl = 6  # keepalive every 2 s: "not refreshing" from about 4 s after the kill until 6 s
    child = subprocess.Popen([sys.executable, "-c", HOLDER, url + f"?lease_ttl={ttl}", NAME],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("held"), line
        token = int(line.split()[1])
        queue.queue("normal")
        (view,) = read_locks(queue.transport, queue.prefix, NAME)
        assert view.holder is not None and view.holder.pid == child.pid and view.holder.fencing_token == token
        assert view.holder.lease is not None and view.holder.lease.status == ALIVE
        assert view.holder.lease.granted_ttl == ttl
        child.kill()
        child.wait()
        killed = time.monotonic()
        seen: list[str] = []

        def not_refreshing() -> bool:
            views = read_locks(queue.transport, queue.prefix, NAME)
            holder = views[0].holder if views else None
            if holder is None or holder.pid != child.pid:
                raise AssertionError(f"the holder went away first; statuses seen: {seen}")
            assert holder.lease is not None
            seen.append(holder.lease.status)
            return holder.lease.status == NOT_REFRESHING

        wait_for(not_refreshing, timeout=ttl + 2, what="the killed holder's lease running low")
        assert time.monotonic() - killed >= ttl / 3  # never while a refresh could still be due
        # The command says so too, unless the lease ran out meanwhile: then the holder is gone,
        # or, when it ran out between the key read and the lease read, its lease is.
        text = inspect_cli("--url", url, NAME).stdout
        assert (f":{child.pid} " not in text or "session not refreshing (lease expires in" in text
                or "lease gone" in text), text
        summary = inspect_cli("--url", url).stdout
        assert (f":{child.pid} " not in summary or "NOT REFRESHING (" in summary
                or "lease gone" in summary), summary
        # Then etcd expires the lease; the waiter is granted the lock.
        wait_for(lambda: queue.waiting() == 0 and read_locks(queue.transport, queue.prefix, NAME) == [],
                 timeout=ttl + 10, what="the waiter granted after the lease expired, and done")
    finally:
        child.kill()
        child.wait()


class LeaseEndsAfterRead(ForwardingTransport):
    """The race an observer can lose: the holder's lease expires between the range read and the
    lease read (here: revoked just after the read, deterministically)."""

    def get_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KeyValue]]:
        revision, kvs = self.inner.get_range(key, range_end)
        for kv in kvs:
            if kv.key.endswith(b"/owner"):
                self.inner.lease_revoke(kv.lease)
        return revision, kvs


def test_a_lease_gone_between_the_reads_is_shown_as_gone(url: str, queue: Queue) -> None:
    queue.hold()
    queue.queue("low")
    racing = LeaseEndsAfterRead(GatewayTransport.from_config(resolve_url(url).config))
    try:
        _, views = inspect_locks(racing, queue.prefix, Policy.of(), NAME)
    finally:
        racing.close()
    holder = views[0].holder
    assert holder is not None and holder.lease is not None and holder.lease.status == GONE
    text = format_locks(views, detail=True)
    assert "lease gone" in text
    queue.holder = None  # its session's lease is gone: nothing to release


def test_nothing_found_says_which_prefix_keys_and_endpoint(etcd_server: Any, etcd_prefix: bytes) -> None:
    prefix = etcd_prefix.decode().rstrip("/")
    out = inspect_cli("--url", etcd_server.url(prefix))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"no locks held or waited on under prefix {prefix!r} "
                                 f"(read keys '{prefix}/locks/'..'{prefix}/locks0' at {etcd_server.endpoint}, "
                                 "revision "), out.stdout
    one = inspect_cli("--url", etcd_server.url(prefix), "some/lock")
    assert one.stdout.startswith(f"no lock 'some/lock' held or waited on under prefix {prefix!r} "
                                 f"(read keys '{prefix}/locks/some%2Flock/'"), one.stdout
    data = json.loads(inspect_cli("--url", etcd_server.url(prefix), "--json").stdout)
    assert data["locks"] == [] and data["prefix"] == prefix and data["endpoint"] == etcd_server.endpoint
    assert data["source"] == "--url"


def test_bench_commands_name_etcd_the_same_way() -> None:
    for command in (["bench", "etcd"], ["bench", "faults"], ["inspect"]):
        out = subprocess.run([sys.executable, "-m", "fairlock", *command, "--help"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert "--url URL" in out.stdout and "--endpoint ENDPOINT" in out.stdout, command
        assert "fairlock+etcd3+http(s)://" in " ".join(out.stdout.split()), command


def test_inspect_with_etcd_users_and_tls(etcd_auth_server: Any, etcd_tls_server: Any, etcd_prefix: bytes) -> None:
    """LeaseTimeToLive and the range read go with the user's token, and over TLS."""
    prefix = etcd_prefix.decode().rstrip("/")
    creds = etcd_auth_server.credentials
    for url in (etcd_auth_server.url(prefix, username=creds.username, password=creds.password),
                etcd_tls_server.url(prefix)):
        q = Queue(url)
        try:
            q.hold()
            q.queue("high")
            out = inspect_cli("--url", url, "--json", NAME)
            assert out.returncode == 0, out.stderr
            (lock,) = json.loads(out.stdout)["locks"]
            assert lock["holder"]["lease"]["status"] == "alive"
            assert [w["lease"]["status"] for w in lock["waiters"]] == ["alive"]
            assert creds.password not in out.stdout + out.stderr
        finally:
            q.close()


def _doc_example_views() -> list[Any]:
    from fairlock.etcd.inspect import HolderView, LeaseView, LockView, NextView, WaiterView

    alive = LeaseView("x", ALIVE, 7, 9)
    waiter = lambda ticket, thread, lane, age: WaiterView(  # noqa: E731
        ticket, "compute-1", 17121, thread, "s", lane, 0, age, alive)
    return [
        LockView("compute_resources", HolderView("compute-1", 17121, "MainThread", "s", "normal", 3, 2.5,
                                                 LeaseView("a", ALIVE, 8, 9))),
        LockView("refresh_cache-8a4f3c",
                 HolderView("compute-2", 17144, "ThreadPoolExecutor-0_12", "5016a2464e706007", "events", 2, 7.1,
                            LeaseView("5016a2464e706007", NOT_REFRESHING, 1, 9)),
                 [waiter(4, "ThreadPoolExecutor-0_3", "events", 7.0), waiter(5, "ThreadPoolExecutor-0_40", "events", 6.3),
                  waiter(6, "ThreadPoolExecutor-0_7", "migration", 5.6)],
                 NextView(6, "migration", [4, 5])),
    ]


def test_the_docs_example_is_what_inspect_prints() -> None:
    """doc/source/etcd.rst shows format_locks' output for these views, character for character."""
    policy = Policy.of(("migration", "normal", "events"))
    views = _doc_example_views()
    doc = (ROOT / "doc" / "source" / "etcd.rst").read_text()
    for command, text in (("", format_locks(views, False, policy)),
                          (" refresh_cache-8a4f3c", format_locks(views[1:], True, policy))):
        block = f"    $ fairlock inspect --config-file /etc/nova/nova.conf{command}\n" + "".join(
            f"    {line}\n" for line in text.splitlines())
        assert block in doc, block


def test_a_lock_without_holder_says_the_grant_is_due_now() -> None:
    views = _doc_example_views()[1:]
    orphaned = [type(views[0])(views[0].name, None, views[0].waiters, views[0].next)]
    text = format_locks(orphaned, True, Policy.of(("migration", "normal", "events")))
    assert "holder: none (free, or a grant is pending after a holder's lease expired)" in text
    assert "next, now (the lock has no holder): ticket 6" in text
    summary = format_locks(orphaned, False, Policy.of(("migration", "normal", "events")))
    assert "(none: grant pending)" in summary
