"""GrpcTransport on a real etcd: the Transport contract of tests/test_etcd_transport.py (imported,
not copied), what is gRPC's own (refusal under eventlet, URLs, failover, TLS, users), and the
distributed lock over gRPC.

Waits are on conditions with generous deadlines; the real-time waits are the contract's lease
expiry (ttl 2) and the timeouts of the failover tests (about a second each).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fairlock.errors import InvalidArgumentError
from fairlock.etcd import EtcdLock, Session
from fairlock.etcd.config import parse_transport_url, parse_url
from fairlock.etcd.connect import transport_from_url
from fairlock.etcd.gateway import GatewayTransport
from fairlock.etcd.grpc import EventletNotSupported, GrpcTransport
from fairlock.etcd.transport import (
    Delete,
    EtcdAuthError,
    EtcdUnavailable,
    Put,
    Transport,
    TxnOutcomeUnknown,
    prefix_end,
)
from fairlock.testing import EtcdServer, enable_auth, free_port, make_ca

from . import test_etcd_lock as lock_tests
from . import test_etcd_transport as contract
from .kinds import start, wait_for

EVENT_WAIT = contract.EVENT_WAIT

# --- the contract --------------------------------------------------------------------------------

#: Every contract test (those taking the ``transport`` fixture), collected here again so that they
#: run with this module's ``transport`` fixture below: the GrpcTransport.
CONTRACT = {name: test for name, test in vars(contract).items()
            if name.startswith("test_") and callable(test)
            and "transport" in inspect.signature(test).parameters}
assert len(CONTRACT) >= 14, sorted(CONTRACT)
globals().update(CONTRACT)


@pytest.fixture
def p(etcd_prefix: bytes) -> bytes:
    """The key prefix the contract tests use (as in test_etcd_transport.py)."""
    return etcd_prefix


@pytest.fixture
def transport(etcd_server: EtcdServer) -> Iterator[Transport]:
    t = GrpcTransport([etcd_server.endpoint], timeout=5.0)
    yield t
    t.close()


def test_concurrent_watches_share_one_stream_and_each_gets_its_own_events(
        transport: GrpcTransport, p: bytes) -> None:
    rev, _ = transport.get_range(p)
    watches: dict[int, Any] = {}

    def create(i: int) -> None:
        watches[i] = transport.watch(p + b"%02d" % i, rev + 1, no_put=i % 2 == 1)

    threads = [start(lambda i=i: create(i)) for i in range(20)]
    for t in threads:
        t.join(EVENT_WAIT)
    assert sorted(watches) == list(range(20))
    assert len({w._stream for w in watches.values()}) == 1  # one multiplexed stream
    try:
        for i in range(20):
            transport.txn([], [Put(p + b"%02d" % i, b"v")])
            transport.txn([], [Delete(p + b"%02d" % i)])
        for i, watch in watches.items():
            got = [watch.get(EVENT_WAIT) for _ in range(1 if i % 2 else 2)]
            assert [(e.type, e.kv.key) for e in got if e] == (
                [("PUT", p + b"%02d" % i)] if i % 2 == 0 else []) + [("DELETE", p + b"%02d" % i)]
            assert watch.get(0) is None
    finally:
        for watch in watches.values():
            watch.cancel()


# --- eventlet ------------------------------------------------------------------------------------

GREEN_CHILD = r"""
import eventlet
eventlet.monkey_patch()
import os, sys
from fairlock.etcd.connect import transport_from_url
from fairlock.etcd.grpc import EventletNotSupported, GrpcTransport
endpoint = os.environ["FAIRLOCK_TEST_ENDPOINT"]
for make in (lambda: GrpcTransport([endpoint]),
             lambda: transport_from_url(endpoint.replace("http://", "etcd3+grpc://"))):
    try:
        make()
    except EventletNotSupported as exc:
        assert "gateway" in str(exc), exc
    else:
        sys.exit("GrpcTransport was built under eventlet")
gateway = transport_from_url(endpoint.replace("http://", "etcd3+http://"))
assert gateway.get_range(b"/")[0] >= 1  # the advice given works
gateway.close()
print("refused ok")
"""


def test_refused_under_eventlet_monkey_patching(etcd_server: EtcdServer) -> None:
    env = dict(os.environ, FAIRLOCK_TEST_ENDPOINT=etcd_server.endpoint, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", GREEN_CHILD], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0 and "refused ok" in out.stdout, out.stderr[-3000:]


def test_importing_the_grpc_module_does_not_import_eventlet() -> None:
    code = ("import sys, fairlock.etcd.grpc; "
            "assert 'eventlet' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


def test_eventlet_not_supported_is_an_etcd_error() -> None:
    from fairlock.etcd.transport import EtcdError

    assert issubclass(EventletNotSupported, EtcdError)


# --- URLs ----------------------------------------------------------------------------------------


def test_grpc_urls_select_the_grpc_transport(etcd_server: EtcdServer, p: bytes) -> None:
    kind, config = parse_transport_url("etcd3+grpcs://u:sekrit@h1,h2:1/nova?ca_cert=/ca.pem")
    assert kind == "grpc" and config.protocol == "https" and config.prefix == "/nova"
    assert config.endpoints == ("https://h1:2379", "https://h2:1") and config.password == "sekrit"
    assert parse_transport_url("etcd3+http://h")[0] == "gateway"
    assert parse_transport_url("etcd3+grpc://h")[1] == parse_url("etcd3+http://h")
    url = etcd_server.url("/fairlock-grpc", lease_ttl=7).replace("etcd3+http://", "etcd3+grpc://")
    grpc_t = transport_from_url(url)
    gateway_t = transport_from_url(etcd_server.url())
    try:
        assert isinstance(grpc_t, GrpcTransport) and isinstance(gateway_t, GatewayTransport)
        assert (grpc_t.config.prefix, grpc_t.config.lease_ttl) == ("/fairlock-grpc", 7)
        rev = grpc_t.txn([], [Put(p + b"k", b"v")]).revision
        assert gateway_t.get_range(p + b"k")[1][0].mod_revision == rev  # the same etcd
    finally:
        grpc_t.close()
        gateway_t.close()


@pytest.mark.parametrize("url", [
    "etcd3+grpc://", "etcd3+grpc://h?ca_cert=/ca.pem", "etcd3+grpc://h?protocol=https",
    "etcd3+grpcs://h?protocol=http", "etcd3+grpc://u:sekrit@h?bogus=1", "etcd3+grpc://h,h",
])
def test_malformed_grpc_urls(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        transport_from_url(url)
    assert "sekrit" not in str(info.value) and "bad etcd URL" in str(info.value)


def test_parse_url_refuses_grpc_urls_instead_of_ignoring_the_choice() -> None:
    with pytest.raises(InvalidArgumentError, match="transport_from_url"):
        parse_url("etcd3+grpc://127.0.0.1:2379")


def test_session_from_a_grpc_url(etcd_server: EtcdServer, etcd_prefix: bytes) -> None:
    prefix = etcd_prefix.decode().rstrip("/")
    url = etcd_server.url(prefix, lease_ttl=7).replace("etcd3+http://", "etcd3+grpc://")
    with Session(url) as session:
        assert isinstance(session.transport, GrpcTransport)
        assert (session.prefix, session.ttl) == (prefix.encode(), 7)
        lock = EtcdLock("from-url", session)
        with lock:
            assert lock.is_held()


def test_constructor_checks(tmp_path: Any) -> None:
    for bad in ([], ["127.0.0.1:2379"], ["http://u:p@h:1"], ["http://h:1/path"], ["http://h"],
                ["http://h:1", "https://h:2"], ["http://h:1", "http://h:1/"]):
        with pytest.raises(InvalidArgumentError):
            GrpcTransport(bad)
    with pytest.raises(InvalidArgumentError):
        GrpcTransport(["https://h:1"], ca_cert=str(tmp_path / "missing.pem"))
    with pytest.raises(InvalidArgumentError):
        GrpcTransport(["http://h:1"], timeout=0)
    t = GrpcTransport.from_url("etcd3+grpc://127.0.0.1:1,127.0.0.1:2?username=u&password=sekrit")
    assert "sekrit" not in repr(t) and "sekrit" not in repr(t.config)
    assert t.endpoints == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    t.close()
    t.close()  # idempotent


# --- failover and timeouts ----------------------------------------------------------------------


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """Accepts TCP connections (kernel backlog) and never speaks: a hung member."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.slow
def test_all_endpoints_down_raises_unavailable_within_the_timeout(hung_endpoint: str) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    t = GrpcTransport([refused, hung_endpoint], timeout=1.5)
    try:
        for call in (lambda: t.get_range(b"k"), lambda: t.watch(b"k", 1),
                     lambda: t.lease_keepalive(1), lambda: t.txn([], [Put(b"k", b"v")])):
            t0 = time.monotonic()
            with pytest.raises(EtcdUnavailable) as info:
                call()
            assert not isinstance(info.value, TxnOutcomeUnknown)  # nothing was ever sent
            elapsed = time.monotonic() - t0
            assert 1.0 < elapsed < 3.0, elapsed
            message = str(info.value)
            assert refused in message and hung_endpoint in message
            assert f"{refused}: connection refused" in message
            assert (f"{hung_endpoint}: not connected within" in message
                    or f"{hung_endpoint}: cannot connect" in message)
    finally:
        t.close()


def test_a_write_fails_over_from_a_member_it_never_reached(etcd_server: EtcdServer,
                                                           hung_endpoint: str,
                                                           p: bytes) -> None:
    t = GrpcTransport([hung_endpoint, etcd_server.endpoint], timeout=4, connect_timeout=0.3)
    try:
        assert t.txn([], [Put(p + b"w", b"1")]).succeeded  # gRPC never connected: not sent
        assert t.current_endpoint == etcd_server.endpoint
    finally:
        t.close()


@pytest.mark.slow
def test_cluster_member_stops_and_hangs(etcd_cluster: Any, etcd_prefix: bytes) -> None:
    p = etcd_prefix
    t = GrpcTransport(etcd_cluster.endpoints, timeout=6, request_timeout=1)
    paused = None
    try:
        lease, _ = t.lease_grant(20)
        first = t.current_endpoint
        stopped = etcd_cluster.endpoints.index(first)
        rev = t.txn([], [Put(p + b"a", b"1", lease=lease)]).revision
        wakeup = threading.Event()
        watch = t.watch(p, rev + 1, prefix_end(p), wakeup=wakeup)
        etcd_cluster.stop_member(stopped)
        assert wakeup.wait(EVENT_WAIT)
        with pytest.raises(EtcdUnavailable):
            watch.get(0)  # its stream ended with the member
        r = t.txn([], [Put(p + b"b", b"2", lease=lease)])
        assert r.succeeded and t.current_endpoint != first
        assert t.lease_keepalive(lease) > 0
        watch = t.watch(p, r.revision, prefix_end(p))
        event = watch.get(EVENT_WAIT)
        assert event is not None and event.kv.key == p + b"b"
        # Now the member in use hangs after the request went out: a write's outcome is
        # unknown (not repeated), a read fails over, and the hung member's watch is abandoned.
        etcd_cluster.start_member(stopped)  # two members must stay up for a quorum
        paused = etcd_cluster.endpoints.index(t.current_endpoint)
        etcd_cluster.pause_member(paused)
        with pytest.raises(TxnOutcomeUnknown):
            t.txn([], [Put(p + b"c", b"3")])
        with pytest.raises(EtcdUnavailable, match="abandoned"):
            watch.get(0)
        assert [kv.key for kv in t.get_range(p, prefix_end(p))[1]][:2] == [p + b"a", p + b"b"]
        assert t.current_endpoint != etcd_cluster.endpoints[paused]
    finally:
        t.close()
        if paused is not None:
            etcd_cluster.resume_member(paused)


# --- TLS and users --------------------------------------------------------------------------------


def test_tls_with_client_certificate(etcd_tls_server: EtcdServer, etcd_prefix: bytes,
                                     tmp_path: Any) -> None:
    p = etcd_prefix
    good = GrpcTransport.from_url(etcd_tls_server.url(timeout=3).replace("etcd3+https://",
                                                                         "etcd3+grpcs://"))
    try:
        rev = good.txn([], [Put(p + b"k", b"v")]).revision
        watch = good.watch(p + b"k", rev)
        event = watch.get(EVENT_WAIT)
        assert event is not None and event.kv.value == b"v"
        watch.cancel()
    finally:
        good.close()
    tls = etcd_tls_server.tls
    assert tls is not None
    wrong_ca, _, _ = make_ca(tmp_path, "another-ca")
    for kwargs in (dict(ca_cert=wrong_ca, cert_cert=tls.client_cert, cert_key=tls.client_key),
                   dict(ca_cert=tls.ca_cert)):  # no client certificate
        bad = GrpcTransport([etcd_tls_server.endpoint], timeout=3, **kwargs)  # type: ignore[arg-type]
        try:
            t0 = time.monotonic()
            with pytest.raises(EtcdAuthError, match="TLS"):
                bad.get_range(p)
            with pytest.raises(EtcdAuthError, match="TLS"):
                bad.watch(p, 1)
            assert time.monotonic() - t0 < 2  # told at once, not after the timeout
        finally:
            bad.close()


def test_username_and_password(etcd_auth_server: EtcdServer, etcd_prefix: bytes,
                               caplog: Any) -> None:
    p = etcd_prefix
    creds = etcd_auth_server.credentials
    assert creds is not None and creds.password
    caplog.set_level(logging.DEBUG)
    good = GrpcTransport([etcd_auth_server.endpoint], timeout=5,
                         **etcd_auth_server.transport_kwargs())
    try:
        lease, _ = good.lease_grant(10)
        rev = good.txn([], [Put(p + b"k", b"v", lease=lease)]).revision
        watch = good.watch(p + b"k", rev)
        assert watch.get(EVENT_WAIT) is not None
        token = good._token
        assert token
        good._token = "bogus-token.1"  # as if expired: renewed once, transparently
        assert good.get_range(p + b"k")[1][0].value == b"v"
        assert good._token not in (None, "bogus-token.1")
        good._token = "bogus-token.2"  # a watch on a new stream, opened with the stale token
        assert good.watch(p + b"k", rev).get(EVENT_WAIT) is not None
        assert good._token not in (None, "bogus-token.2")
        watch.cancel()
        good.lease_revoke(lease)
    finally:
        good.close()
    errors = contract.rejected_credentials(GrpcTransport, etcd_auth_server.endpoint, creds, p)
    text = caplog.text + " ".join(errors) + repr(good)
    for secret in (creds.password, token, good._token):
        assert secret and secret not in text
    assert "authenticated as" in caplog.text  # the log was really captured


def test_watch_outside_the_users_permissions(etcd_binary: str) -> None:
    with EtcdServer(binary=etcd_binary, name="grpc-perm") as server:
        enable_auth(server, username="nova", password="pw", key=b"/nova/",
                    range_end=prefix_end(b"/nova/"))
        t = GrpcTransport([server.endpoint], timeout=3, username="nova", password="pw")
        try:
            assert t.watch(b"/nova/", 1, prefix_end(b"/nova/")) is not None
            with pytest.raises(EtcdAuthError, match="permission denied"):
                t.watch(b"/glance/", 1, prefix_end(b"/glance/"))
            with pytest.raises(EtcdAuthError, match="permission denied"):
                t.txn([], [Put(b"/glance/k", b"v")])
        finally:
            t.close()


# --- the lock over gRPC ---------------------------------------------------------------------------


class GrpcSessions(lock_tests.Sessions):
    """The lock tests' sessions, each on its own GrpcTransport (checks read via the gateway)."""

    def new(self, ttl: int = 10, **kwargs: Any) -> Session:
        session = Session(GrpcTransport([self.server.endpoint], timeout=10.0), ttl=ttl,
                          prefix=self.prefix, **kwargs)
        self.made.append(session)
        return session


@pytest.fixture
def sessions(etcd_server: EtcdServer, etcd_prefix: bytes) -> Iterator[GrpcSessions]:
    made = GrpcSessions(etcd_server, etcd_prefix.decode().rstrip("/"))
    yield made
    made.close()


def test_lock_uncontended_is_one_write_each_way(sessions: GrpcSessions) -> None:
    lock = EtcdLock("one-write", sessions.new())
    for _ in range(3):
        before = sessions.revision()
        assert lock.acquire()
        assert sessions.revision() == before + 1 and lock.fencing_token == before + 1
        lock.release()
        assert sessions.revision() == before + 2
    assert sessions.keys() == []


def test_lock_fifo_across_8_sessions(sessions: GrpcSessions) -> None:
    holder = EtcdLock("fifo", sessions.new())
    assert holder.acquire()
    waiters = [EtcdLock("fifo", sessions.new()) for _ in range(8)]
    order: list[int] = []
    threads = []
    for i, lock in enumerate(waiters):
        threads.append(start(lambda i=i, lock=lock: (lock.acquire(), order.append(i),
                                                     lock.release())))
        wait_for(lambda n=i + 1: lock_tests.etcd_waiters(holder) == n, what=f"{i + 1} waiters")
    holder.release()
    for t in threads:
        t.join(60)
    assert order == list(range(8))
    assert sum(lock.statistics().watch_events for lock in waiters) <= 8
    assert sessions.keys() == []


def test_lock_lanes_across_sessions(sessions: GrpcSessions) -> None:
    holder = EtcdLock("lanes", sessions.new(), max_bypass=2)
    assert holder.acquire()
    order: list[str] = []
    threads = []
    plan = [("low-0", "low"), ("low-1", "low"), ("high-0", "high"), ("high-1", "high"),
            ("high-2", "high")]
    for i, (tag, lane) in enumerate(plan):
        lock = EtcdLock("lanes", sessions.new(), max_bypass=2)
        threads.append(start(lambda tag=tag, lane=lane, lock=lock: (
            lock.acquire(lane=lane), order.append(tag), lock.release())))
        wait_for(lambda n=i + 1: lock_tests.etcd_waiters(holder) == n)
    holder.release()
    for t in threads:
        t.join(60)
    assert order == ["high-0", "high-1", "low-0", "low-1", "high-2"]
