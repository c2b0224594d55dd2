"""The Transport contract, run against the in-memory model and the HTTP gateway on a real etcd;
then what only a real etcd can show: failover, timeouts, TLS, users, URLs.

Waits are on conditions (an event arriving, a key disappearing) with generous deadlines, never
fixed sleeps; the only real-time waits are one lease expiry (ttl 2) and the hung-endpoint
timeouts, each about a second.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fairlock.errors import ArgumentTypeError, InvalidArgumentError
from fairlock.etcd.config import EtcdConfig, parse_url
from fairlock.etcd.gateway import GatewayTransport
from fairlock.testing.etcd_model import EtcdModel, ModelTransport
from fairlock.etcd.transport import (
    Compare,
    Delete,
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    LeaseNotFound,
    LeaseTimeToLive,
    Put,
    Range,
    Transport,
    TxnOutcomeUnknown,
    WatchCompacted,
    prefix_end,
)
from fairlock.testing import EtcdServer, enable_auth, free_port, make_ca

#: How long a contract test waits for an event that must come (far above the ~100 ms it takes).
EVENT_WAIT = 5.0


@pytest.fixture(params=["model", "gateway"])
def transport(request: Any) -> Iterator[Transport]:
    if request.param == "model":
        t = ModelTransport()
        yield t
        t.close()
    else:
        yield request.getfixturevalue("etcd_transport")


@pytest.fixture
def p(etcd_prefix: bytes) -> bytes:
    return etcd_prefix


def is_model(t: Transport) -> bool:
    return isinstance(t, ModelTransport)


def wait_gone(t: Transport, key: bytes, *, real_limit: float) -> float:
    """Until ``key`` is gone: the model's clock jumps, the real etcd is polled. Returns seconds."""
    t0 = time.monotonic()
    while t.get_range(key)[1]:
        assert time.monotonic() - t0 < real_limit, f"{key!r} still there after {real_limit} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def compact(t: Transport, revision: int, request: Any) -> None:
    if is_model(t):
        t.model.compact(revision)  # type: ignore[attr-defined]
    else:
        server = request.getfixturevalue("etcd_server")
        server.post("kv/compaction", {"revision": str(revision), "physical": True})


# --- the contract ---------------------------------------------------------------------------------


def test_txn_success_branch_writes_one_revision(transport: Transport, p: bytes) -> None:
    key = p + b"a"
    r = transport.txn([Compare(key, "create_revision", "=", 0)],
                      [Put(key, b"v1"), Put(p + b"b", b"v2"), Range(p, prefix_end(p))],
                      [Range(key)])
    assert r.succeeded
    assert r.responses[0] == () and r.responses[1] == ()
    kvs = r.responses[2]
    assert [kv.key for kv in kvs] == [p + b"a", p + b"b"]  # sorted by key, sees its own writes
    assert all(kv.create_revision == kv.mod_revision == r.revision and kv.version == 1 for kv in kvs)
    rev, got = transport.get_range(key)
    assert rev == r.revision and got == [kvs[0]]


def test_txn_failure_branch_and_no_write_keeps_revision(transport: Transport, p: bytes) -> None:
    key = p + b"a"
    first = transport.txn([], [Put(key, b"v1")])
    second = transport.txn([Compare(key, "create_revision", "=", 0)], [Put(key, b"v2")],
                           [Range(key), Range(p + b"missing")])
    assert not second.succeeded
    assert second.revision == first.revision  # nothing written
    assert [kv.value for kv in second.responses[0]] == [b"v1"] and second.responses[1] == ()
    third = transport.txn([Compare(key, "value", "=", b"v1"), Compare(key, "version", "=", 1)],
                          [Put(key, b"v3")])
    assert third.succeeded and third.revision == first.revision + 1
    kv = transport.get_range(key)[1][0]
    assert (kv.value, kv.version, kv.create_revision, kv.mod_revision) == (
        b"v3", 2, first.revision, third.revision)


def test_range_compare_on_empty_prefix(transport: Transport, p: bytes) -> None:
    end = prefix_end(p)
    empty = Compare(p, "version", "=", 0, range_end=end)
    assert transport.txn([empty], []).succeeded
    assert transport.txn([Compare(p, "create_revision", "<", 1, range_end=end)], []).succeeded
    # A value compare on no key is always false, even "!=".
    assert not transport.txn([Compare(p, "value", "!=", b"x", range_end=end)], []).succeeded
    transport.txn([], [Put(p + b"1", b"a")])
    w2 = transport.txn([], [Put(p + b"2", b"b")])
    assert not transport.txn([empty], []).succeeded
    # Over a range every key must satisfy the compare.
    assert transport.txn([Compare(p, "version", ">", 0, range_end=end)], []).succeeded
    assert not transport.txn([Compare(p, "mod_revision", "<", w2.revision, range_end=end)],
                             []).succeeded
    assert transport.txn([Compare(p, "mod_revision", "<", w2.revision + 1, range_end=end)],
                         []).succeeded
    # Keys beside the range do not count.
    assert transport.txn([Compare(p + b"3", "version", "=", 0, range_end=p + b"4")], []).succeeded


def test_delete_range_is_one_revision(transport: Transport, p: bytes) -> None:
    transport.txn([], [Put(p + b"a", b"1"), Put(p + b"b", b"2"), Put(p + b"c", b"3")])
    r = transport.txn([], [Delete(p + b"a", p + b"c")])
    assert [kv.key for kv in transport.get_range(p, prefix_end(p))[1]] == [p + b"c"]
    nothing = transport.txn([], [Delete(p + b"zz")])
    assert nothing.revision == r.revision  # deleting nothing writes nothing


def test_duplicate_key_in_one_txn_is_refused(transport: Transport, p: bytes) -> None:
    with pytest.raises(EtcdError):
        transport.txn([], [Put(p + b"a", b"1"), Put(p + b"a", b"2")])
    assert transport.get_range(p + b"a")[1] == []


def test_lease_put_and_revoke_deletes_keys_in_one_revision(transport: Transport, p: bytes) -> None:
    lease, ttl = transport.lease_grant(30)
    assert lease > 0 and ttl == 30
    put = transport.txn([], [Put(p + b"a", b"1", lease=lease), Put(p + b"b", b"2", lease=lease)])
    assert [kv.lease for kv in transport.get_range(p, prefix_end(p))[1]] == [lease, lease]
    watch = transport.watch(p, put.revision + 1, prefix_end(p))
    try:
        transport.lease_revoke(lease)
        assert transport.get_range(p, prefix_end(p))[1] == []
        events = [watch.get(EVENT_WAIT), watch.get(EVENT_WAIT)]
        assert [(e.type, e.kv.key) for e in events if e] == [("DELETE", p + b"a"), ("DELETE", p + b"b")]
        assert {e.kv.mod_revision for e in events if e} == {put.revision + 1}
    finally:
        watch.cancel()
    transport.lease_revoke(lease)  # gone already: not an error


def test_put_with_missing_lease_raises_and_writes_nothing(transport: Transport, p: bytes) -> None:
    lease, _ = transport.lease_grant(30)
    transport.lease_revoke(lease)
    with pytest.raises(LeaseNotFound):
        transport.txn([], [Put(p + b"plain", b"x"), Put(p + b"leased", b"y", lease=lease)])
    assert transport.get_range(p, prefix_end(p))[1] == []


def test_keepalive_of_revoked_lease_raises(transport: Transport) -> None:
    lease, ttl = transport.lease_grant(10)
    assert transport.lease_keepalive(lease) == ttl
    transport.lease_revoke(lease)
    with pytest.raises(LeaseNotFound):
        transport.lease_keepalive(lease)


@pytest.mark.slow
def test_lease_time_to_live(transport: Transport, p: bytes) -> None:
    lease, granted = transport.lease_grant(30)
    left = transport.lease_time_to_live(lease)
    assert left is not None and left.id == lease and left.granted_ttl == granted == 30
    assert 25 <= left.ttl <= 30  # whole seconds, rounded down; a few may pass on a busy machine
    if is_model(transport):
        transport.advance(20.5)  # type: ignore[attr-defined]
        assert transport.lease_time_to_live(lease) == LeaseTimeToLive(lease, 9, 30)
    # Reading it refreshes nothing: a keepalive does (back to the granted TTL).
    transport.txn([], [Put(p + b"k", b"v", lease=lease)])
    assert transport.lease_keepalive(lease) == 30
    again = transport.lease_time_to_live(lease)
    assert again is not None and 25 <= again.ttl <= 30
    transport.lease_revoke(lease)
    assert transport.lease_time_to_live(lease) is None
    assert transport.lease_time_to_live(lease + 12345) is None  # never existed: None as well
    for bad, error in ((0, InvalidArgumentError), (-1, InvalidArgumentError), ("1", ArgumentTypeError),
                       (True, ArgumentTypeError), (2**63, InvalidArgumentError)):
        with pytest.raises(error):
            transport.lease_time_to_live(bad)  # type: ignore[arg-type]


def test_lease_time_to_live_of_an_expired_lease_is_none(transport: Transport, p: bytes) -> None:
    lease, _ = transport.lease_grant(2)
    transport.txn([], [Put(p + b"k", b"v", lease=lease)])
    if is_model(transport):
        transport.advance(2.1)  # type: ignore[attr-defined]
    else:
        wait_gone(transport, p + b"k", real_limit=6.0)
    assert transport.lease_time_to_live(lease) is None


def test_lease_expiry_deletes_keys(transport: Transport, p: bytes) -> None:
    lease, ttl = transport.lease_grant(2)
    assert ttl == 2
    transport.txn([], [Put(p + b"k", b"v", lease=lease)])
    if is_model(transport):
        transport.advance(1.9)  # type: ignore[attr-defined]
        assert transport.get_range(p + b"k")[1]
        transport.advance(0.2)  # type: ignore[attr-defined]
        assert transport.get_range(p + b"k")[1] == []
    else:
        waited = wait_gone(transport, p + b"k", real_limit=6.0)
        assert 1.0 < waited < 6.0, waited
    with pytest.raises(LeaseNotFound):
        transport.lease_keepalive(lease)


def test_watch_replays_from_a_past_revision(transport: Transport, p: bytes) -> None:
    first = transport.txn([], [Put(p + b"a", b"1")])
    transport.txn([], [Put(p + b"a", b"2")])
    transport.txn([], [Delete(p + b"a")])
    transport.txn([], [Put(p + b"other-prefix-is-" + b"inside", b"x")])
    transport.txn([], [Put(p[:-1] + b"~outside", b"x")])
    watch = transport.watch(p + b"a", first.revision)
    try:
        events = [watch.get(EVENT_WAIT) for _ in range(3)]
        assert [(e.type, e.kv.value, e.kv.mod_revision) for e in events if e] == [
            ("PUT", b"1", first.revision), ("PUT", b"2", first.revision + 1),
            ("DELETE", b"", first.revision + 2)]
        assert events[1] is not None and events[1].kv.version == 2
        assert watch.get(0.2) is None  # only that key
    finally:
        watch.cancel()


def test_watch_from_read_revision_plus_one_sees_the_next_write(transport: Transport, p: bytes) -> None:
    transport.txn([], [Put(p + b"before", b"0")])
    for i in range(3):  # created-confirmation: a write right after watch() is never missed
        rev, _ = transport.get_range(p, prefix_end(p))
        watch = transport.watch(p, rev + 1, prefix_end(p))
        try:
            assert watch.get(0) is None
            w = transport.txn([], [Put(p + b"k%d" % i, b"v")])
            event = watch.get(EVENT_WAIT)
            assert event is not None and event.type == "PUT"
            assert (event.kv.key, event.kv.mod_revision) == (p + b"k%d" % i, w.revision)
        finally:
            watch.cancel()


def test_watch_no_put_filter_and_wakeup(transport: Transport, p: bytes) -> None:
    rev, _ = transport.get_range(p)
    wakeup = threading.Event()
    watch = transport.watch(p + b"k", rev + 1, no_put=True, wakeup=wakeup)
    try:
        transport.txn([], [Put(p + b"k", b"1")])
        transport.txn([], [Put(p + b"k", b"2")])
        deleted = transport.txn([], [Delete(p + b"k")])
        assert wakeup.wait(EVENT_WAIT)
        event = watch.get(EVENT_WAIT)
        assert event is not None
        assert (event.type, event.kv.key, event.kv.mod_revision) == ("DELETE", p + b"k", deleted.revision)
        assert watch.get(0.2) is None  # the two PUTs were filtered out
    finally:
        watch.cancel()


def test_watch_cancel_unblocks_a_waiting_get(transport: Transport, p: bytes) -> None:
    rev, _ = transport.get_range(p)
    watch = transport.watch(p, rev + 1, prefix_end(p))
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(watch.get(None)))
    reader.start()
    time.sleep(0.05)  # let it block (if it has not, get() still must return None after cancel)
    watch.cancel()
    reader.join(EVENT_WAIT)
    assert not reader.is_alive() and result == [None]
    watch.cancel()  # idempotent
    assert watch.get(0) is None


def test_watch_from_compacted_revision_raises(transport: Transport, p: bytes, request: Any) -> None:
    first = transport.txn([], [Put(p + b"a", b"1")])
    last = transport.txn([], [Put(p + b"a", b"2")])
    compact(transport, last.revision, request)
    watch = transport.watch(p + b"a", first.revision)
    try:
        with pytest.raises(WatchCompacted):
            watch.get(EVENT_WAIT)
    finally:
        watch.cancel()


def test_bad_argument_types(transport: Transport) -> None:
    with pytest.raises(ArgumentTypeError):
        transport.txn([Compare(b"k", "version", "=", b"1")], [])
    with pytest.raises(ArgumentTypeError):
        transport.txn([], [Put("k", b"v")])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        transport.lease_grant(0)


# --- the model only ------------------------------------------------------------------------------


def test_model_clients_share_one_store_and_faults_are_per_client() -> None:
    model = EtcdModel()
    a, b = ModelTransport(model), ModelTransport(model)
    lease, _ = a.lease_grant(5)
    a.txn([], [Put(b"/k", b"v", lease=lease)])
    assert b.get_range(b"/k")[1][0].lease == lease
    b.fail_next("txn", TxnOutcomeUnknown("lost"), after_apply=True)
    with pytest.raises(TxnOutcomeUnknown):
        b.txn([], [Put(b"/j", b"1")])
    assert a.get_range(b"/j")[1]  # applied although b saw an error
    b.fail_next("get_range", EtcdUnavailable("down"))
    with pytest.raises(EtcdUnavailable):
        b.get_range(b"/k")
    assert b.get_range(b"/k")[1]
    wakeup = threading.Event()
    w = a.watch(b"/", 0, b"\0", wakeup=wakeup)
    model.break_watches()
    assert wakeup.is_set()
    with pytest.raises(EtcdUnavailable):
        w.get(0)
    model.advance(5)
    assert model.keys().keys() == {b"/j"}


# --- the real etcd only: URLs --------------------------------------------------------------------


@pytest.mark.parametrize("url, endpoints, prefix", [
    ("etcd3+http://127.0.0.1:2379", ("http://127.0.0.1:2379",), None),
    ("etcd3+http://127.0.0.1:2379,127.0.0.1:22379/prefix", ("http://127.0.0.1:2379",
                                                             "http://127.0.0.1:22379"), "/prefix"),
    ("http://localhost", ("http://localhost:2379",), None),
    ("https://[::1]:4000/a/b/", ("https://[::1]:4000",), "/a/b"),
    ("etcd3+https://h1,h2:1/", ("https://h1:2379", "https://h2:1"), None),
])
def test_parse_url_endpoints_and_prefix(url: str, endpoints: tuple[str, ...],
                                        prefix: str | None) -> None:
    config = parse_url(url)
    assert config.endpoints == endpoints and config.prefix == prefix
    assert config.protocol == endpoints[0].split(":")[0]


def test_parse_url_options() -> None:
    c = parse_url("etcd3+https://127.0.0.1:2379,127.0.0.1:22379/nova?timeout=5&ca_cert=/ca.pem"
                  "&cert_cert=/c.pem&cert_key=/k.pem&username=u&password=s%20cret&lease_ttl=7"
                  "&connect_timeout=0.5")
    assert (c.timeout, c.connect_timeout, c.effective_request_timeout) == (5.0, 0.5, 2.5)
    assert (c.ca_cert, c.cert_cert, c.cert_key) == ("/ca.pem", "/c.pem", "/k.pem")
    assert (c.username, c.password, c.lease_ttl) == ("u", "s cret", 7)
    assert "s cret" not in repr(c)
    c = parse_url("etcd3+http://al%40ice:pa%3Ass@127.0.0.1:2379?request_timeout=9")
    assert (c.username, c.password, c.request_timeout, c.effective_request_timeout) == (
        "al@ice", "pa:ss", 9.0, 9.0)
    assert isinstance(c, EtcdConfig) and c.lease_ttl is None and c.timeout == 10.0


@pytest.mark.parametrize("url", [
    "", "127.0.0.1:2379", "etcd3://127.0.0.1:2379", "redis://h", "etcd3+http://",
    "etcd3+http://h:0", "etcd3+http://h:99999", "etcd3+http://h:port", "etcd3+http://h,,g",
    "etcd3+http://h,h", "etcd3+http://h?timeout=-1", "etcd3+http://h?timeout=nan",
    "etcd3+http://h?timeout=abc", "etcd3+http://h?timeout=1&timeout=2", "etcd3+http://h?bogus=1",
    "etcd3+http://h?ca_cert=/ca.pem", "etcd3+https://h?cert_cert=/c.pem",
    "etcd3+https://h?ca_cert=", "etcd3+http://h?lease_ttl=0", "etcd3+http://h?lease_ttl=1.5",
    "etcd3+http://h?password=sekrit", "etcd3+http://u:sekrit@h?username=v",
    "etcd3+http://h?protocol=https", "etcd3+http://h#frag", "etcd3+http://h x",
    "etcd3+http://[::1/", "etcd3+http://h?username=&password=sekrit",
])
def test_malformed_urls_are_invalid_argument_errors(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_url(url)
    assert "sekrit" not in str(info.value)
    assert "bad etcd URL" in str(info.value)


def test_parse_url_wants_a_str() -> None:
    with pytest.raises(ArgumentTypeError):
        parse_url(b"etcd3+http://h")  # type: ignore[arg-type]


def test_gateway_constructor_checks(tmp_path: Any) -> None:
    for bad in ([], ["127.0.0.1:2379"], ["http://u:p@h:1"], ["http://h:1/path"],
                ["http://h:1", "https://h:2"]):
        with pytest.raises(InvalidArgumentError):
            GatewayTransport(bad)
    with pytest.raises(InvalidArgumentError):
        GatewayTransport(["https://h:1"], ca_cert=str(tmp_path / "missing.pem"))
    with pytest.raises(InvalidArgumentError):
        GatewayTransport(["http://h:1"], timeout=0)
    with pytest.raises(ArgumentTypeError):
        GatewayTransport(["http://h:1"], timeout="5")  # type: ignore[arg-type]
    t = GatewayTransport.from_url("etcd3+http://127.0.0.1:1,127.0.0.1:2?username=u&password=sekrit")
    assert "sekrit" not in repr(t) and "sekrit" not in repr(t.config)
    t.close()


def test_importing_the_etcd_modules_does_not_import_eventlet() -> None:
    code = ("import sys, fairlock.etcd.gateway, fairlock.testing.etcd_model, fairlock.etcd.config, "
            "fairlock.testing; assert 'eventlet' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


# --- the real etcd only: failover and timeouts ----------------------------------------------------


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections (kernel backlog) and never answers: a hung member."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.slow
def test_all_endpoints_down_raises_unavailable_within_the_timeout(hung_endpoint: str) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    t = GatewayTransport([refused, hung_endpoint], timeout=1.5)
    try:
        for call in (lambda: t.get_range(b"k"), lambda: t.watch(b"k", 1),
                     lambda: t.lease_keepalive(1)):
            t0 = time.monotonic()
            with pytest.raises(EtcdUnavailable) as info:
                call()
            elapsed = time.monotonic() - t0
            assert 1.0 < elapsed < 3.0, elapsed
            message = str(info.value)
            assert refused in message and hung_endpoint in message
            assert "connection refused" in message and "no answer" in message
    finally:
        t.close()


def test_write_not_retried_after_send_but_reads_fail_over(etcd_server: EtcdServer,
                                                          hung_endpoint: str, p: bytes) -> None:
    t = GatewayTransport([hung_endpoint, etcd_server.endpoint], timeout=4, request_timeout=0.5)
    try:
        with pytest.raises(TxnOutcomeUnknown) as info:
            t.txn([], [Put(p + b"w", b"1")])
        assert hung_endpoint in str(info.value)
        assert t.get_range(p + b"w")[1] == []  # read-only: failed over to the live member
        assert t.current_endpoint == etcd_server.endpoint
        assert t.txn([], [Put(p + b"w", b"1")]).succeeded  # now sent to the live member
    finally:
        t.close()


def test_failover_when_the_member_in_use_stops(etcd_cluster: Any, etcd_prefix: bytes) -> None:
    p = etcd_prefix
    t = GatewayTransport(etcd_cluster.endpoints, timeout=8, request_timeout=2)
    try:
        lease, _ = t.lease_grant(20)
        first = t.current_endpoint
        index = etcd_cluster.endpoints.index(first)
        rev = t.txn([], [Put(p + b"a", b"1", lease=lease)]).revision
        watch = t.watch(p, rev + 1, prefix_end(p))
        etcd_cluster.stop_member(index)
        with pytest.raises(EtcdUnavailable):
            watch.get(EVENT_WAIT)  # its stream ended with the member
        r = t.txn([Compare(p + b"a", "version", "=", 1)], [Put(p + b"b", b"2", lease=lease)])
        assert r.succeeded and t.current_endpoint != first
        assert t.lease_keepalive(lease) > 0
        watch = t.watch(p, r.revision, prefix_end(p))
        event = watch.get(EVENT_WAIT)
        assert event is not None and event.kv.key == p + b"b"
        watch.cancel()
        assert [kv.key for kv in t.get_range(p, prefix_end(p))[1]] == [p + b"a", p + b"b"]
    finally:
        t.close()


def test_failover_from_a_hung_member_breaks_its_watches(etcd_cluster: Any,
                                                        etcd_prefix: bytes) -> None:
    p = etcd_prefix
    t = GatewayTransport(etcd_cluster.endpoints, timeout=6, request_timeout=1)
    try:
        rev, _ = t.get_range(p)
        index = etcd_cluster.endpoints.index(t.current_endpoint)
        wakeup = threading.Event()
        watch = t.watch(p, rev + 1, prefix_end(p), wakeup=wakeup)
        etcd_cluster.pause_member(index)
        t0 = time.monotonic()
        assert t.get_range(p)[0] >= rev  # answered by another member after ~request_timeout
        assert time.monotonic() - t0 < 5
        assert wakeup.is_set()
        with pytest.raises(EtcdUnavailable, match="abandoned"):
            watch.get(0)
    finally:
        t.close()
        etcd_cluster.resume_member(index)


def test_cluster_leader_is_found(etcd_cluster: Any) -> None:
    leader = etcd_cluster.leader()
    assert 0 <= leader < 3
    etcd_cluster.stop_member(leader)
    assert etcd_cluster.leader() != leader


# --- the real etcd only: TLS and users ------------------------------------------------------------


def test_tls_with_client_certificate(etcd_tls_server: EtcdServer, etcd_prefix: bytes,
                                     tmp_path: Any) -> None:
    p = etcd_prefix
    good = GatewayTransport([etcd_tls_server.endpoint], timeout=5,
                            **etcd_tls_server.transport_kwargs())
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
        bad = GatewayTransport([etcd_tls_server.endpoint], timeout=3, **kwargs)  # type: ignore[arg-type]
        try:
            with pytest.raises(EtcdAuthError, match="TLS"):
                bad.get_range(p)
            with pytest.raises(EtcdAuthError, match="TLS"):
                bad.watch(p, 1)
        finally:
            bad.close()
    url = etcd_tls_server.url("/x", timeout=3)
    via_url = GatewayTransport.from_url(url)
    try:
        assert via_url.get_range(p + b"k")[1][0].value == b"v"
    finally:
        via_url.close()


def rejected_credentials(transport_class: Any, endpoint: str, creds: Any, prefix: bytes) -> list[str]:
    """Wrong password, unknown user, no user: each an EtcdAuthError for reads and watches alike.

    Returns the error texts (message, repr, cause) for the caller's no-secret-leaks check.
    """
    errors: list[str] = []
    for kwargs in (dict(username=creds.username, password=creds.password + "-wrong"),
                   dict(username="nobody", password=creds.password), {}):
        bad = transport_class([endpoint], timeout=3, **kwargs)
        try:
            with pytest.raises(EtcdAuthError) as info:
                bad.get_range(prefix)
            errors.append(f"{info.value} {info.value!r} {info.value.__cause__!r}")
            with pytest.raises(EtcdAuthError):
                bad.watch(prefix, 1)
        finally:
            bad.close()
    assert "rejected the credentials" in errors[0]
    return errors


def test_username_and_password(etcd_auth_server: EtcdServer, etcd_prefix: bytes,
                               caplog: Any) -> None:
    p = etcd_prefix
    creds = etcd_auth_server.credentials
    assert creds is not None and creds.password
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    good = GatewayTransport([etcd_auth_server.endpoint], timeout=5,
                            **etcd_auth_server.transport_kwargs())
    try:
        lease, _ = good.lease_grant(10)
        rev = good.txn([], [Put(p + b"k", b"v", lease=lease)]).revision
        watch = good.watch(p + b"k", rev)
        assert watch.get(EVENT_WAIT) is not None
        watch.cancel()
        token = good._token
        assert token
        good._token = "bogus-token.1"  # as if expired: renewed once, transparently
        assert good.get_range(p + b"k")[1][0].value == b"v"
        assert good._token not in (None, "bogus-token.1")
        good.lease_revoke(lease)
    finally:
        good.close()
    errors = rejected_credentials(GatewayTransport, etcd_auth_server.endpoint, creds, p)
    secrets = [creds.password, token, good._token]
    text = caplog.text + " ".join(errors) + repr(good)
    for secret in secrets:
        assert secret and secret not in text
    assert "/v3/auth/authenticate" in caplog.text  # the log was really captured


@pytest.mark.slow
def test_enable_auth_on_a_fresh_server(etcd_binary: str) -> None:
    with EtcdServer(binary=etcd_binary, name="auth-own") as server:
        creds = enable_auth(server, username="nova", password="pw", key=b"/nova/",
                            range_end=prefix_end(b"/nova/"))
        t = GatewayTransport([server.endpoint], timeout=3, username="nova", password="pw")
        try:
            assert t.txn([], [Put(b"/nova/k", b"v")]).succeeded
            with pytest.raises(EtcdAuthError, match="permission denied"):
                t.txn([], [Put(b"/glance/k", b"v")])
        finally:
            t.close()
        server.restart()  # same data dir: auth and keys survive
        assert server.healthy()
        t = GatewayTransport.from_url(server.url(username=creds.username, password="pw"))
        try:
            assert t.get_range(b"/nova/k")[1][0].value == b"v"
        finally:
            t.close()


@pytest.mark.slow
def test_server_stop_kill_pause_leave_nothing_behind(etcd_binary: str) -> None:
    import os

    server = EtcdServer(binary=etcd_binary, name="lifecycle").start()
    pid, base = server.pid, server.base_dir
    try:
        server.pause()
        t = GatewayTransport([server.endpoint], timeout=0.5)
        with pytest.raises(EtcdUnavailable):
            t.get_range(b"k")
        server.resume()
        assert t.get_range(b"k")[0] >= 1
        server.kill()
        assert not server.running
        server.start()  # recovers from the WAL on the same port
        assert t.get_range(b"k")[0] >= 1
        t.close()
    finally:
        server.close()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
    assert not os.path.exists(base)


GREEN_CHILD = r"""
import eventlet
eventlet.monkey_patch()
import os, time
from fairlock.etcd.gateway import GatewayTransport
from fairlock.etcd.transport import Put, prefix_end
p = os.environ["FAIRLOCK_TEST_PREFIX"].encode()
t = GatewayTransport([os.environ["FAIRLOCK_TEST_ENDPOINT"]], timeout=5)
rev, _ = t.get_range(p)
w = t.watch(p, rev + 1, prefix_end(p))
ticks = []
def ticker():
    for _ in range(10):
        ticks.append(1)
        eventlet.sleep(0.01)
tick = eventlet.spawn(ticker)
waiter = eventlet.spawn(w.get, 5)
eventlet.sleep(0.15)  # the waiter is parked in get() and the ticker keeps running
t.txn([], [Put(p + b"a", b"1")])
event = waiter.wait()
tick.wait()
assert event is not None and event.kv.key == p + b"a", event
assert len(ticks) == 10
blocked = eventlet.spawn(w.get, None)
eventlet.sleep(0.05)
w.cancel()
assert blocked.wait() is None
t.close()
print("green ok")
"""


def test_gateway_under_eventlet_monkey_patching(etcd_server: EtcdServer, etcd_prefix: bytes) -> None:
    import os

    env = dict(os.environ, FAIRLOCK_TEST_ENDPOINT=etcd_server.endpoint,
               FAIRLOCK_TEST_PREFIX=etcd_prefix.decode(), PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", GREEN_CHILD], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0 and "green ok" in out.stdout, out.stderr[-3000:]
