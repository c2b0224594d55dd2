"""Operating the etcd lock: URLs (TLS, auth, several endpoints), a 3-member cluster losing its
leader, lockutils' external=True on etcd, and ``fairlock inspect``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fairlock.etcd import EtcdAuthError, EtcdLock, Session
from fairlock.etcd.gateway import GatewayTransport
from fairlock.etcd.transport import prefix_end

from .kinds import start, wait_for

ROOT = Path(__file__).resolve().parent.parent


def no_keys(transport: Any, prefix: str) -> bool:
    start_key = prefix.encode()
    _, kvs = transport.get_range(start_key, prefix_end(start_key))
    return not kvs


def test_session_from_tls_url(etcd_tls_server: Any, etcd_prefix: bytes) -> None:
    prefix = etcd_prefix.decode().rstrip("/")
    with Session(etcd_tls_server.url(prefix, lease_ttl=5)) as session:
        assert session.ttl == 5 and session.prefix == prefix.encode()
        lock = EtcdLock("tls", session)
        with lock:
            assert lock.is_held() and lock.fencing_token
        assert no_keys(session.transport, prefix)


def test_session_from_auth_url_and_wrong_password(etcd_auth_server: Any, etcd_prefix: bytes) -> None:
    prefix = etcd_prefix.decode().rstrip("/")
    creds = etcd_auth_server.credentials
    with Session(etcd_auth_server.url(prefix, username=creds.username, password=creds.password)) as session:
        with EtcdLock("auth", session):
            pass
    with pytest.raises(EtcdAuthError) as info:
        Session(etcd_auth_server.url(prefix, username=creds.username, password="wrong-" + creds.password))
    assert creds.password not in str(info.value)


def test_cluster_keeps_locking_when_the_leader_stops(etcd_cluster: Any, etcd_prefix: bytes) -> None:
    prefix = etcd_prefix.decode().rstrip("/")
    url = etcd_cluster.url(prefix, timeout=10)
    holder_session, waiter_session = Session(url), Session(url)
    try:
        holder = EtcdLock("cluster", holder_session)
        waiter = EtcdLock("cluster", waiter_session)
        assert holder.acquire()
        first_token = holder.fencing_token
        got = threading.Event()
        tokens: list[int] = []
        t = start(lambda: (waiter.acquire(timeout=60), tokens.append(waiter.fencing_token), got.set(),
                           waiter.release()))
        wait_for(lambda: len(holder_session.transport.get_range(
            f"{prefix}/locks/cluster/w/".encode(), prefix_end(f"{prefix}/locks/cluster/w/".encode()))[1]) == 1)
        leader = etcd_cluster.leader()
        etcd_cluster.stop_member(leader)
        holder.release()  # goes through another member
        assert got.wait(60)
        assert tokens[0] > first_token  # type: ignore[operator]
        t.join(30)
        with holder:
            assert holder.is_held()
        assert no_keys(holder_session.transport, prefix)
    finally:
        holder_session.close()
        waiter_session.close()
        etcd_cluster.heal()


@pytest.fixture
def lockutils_on_etcd(etcd_server: Any, etcd_prefix: bytes) -> Iterator[tuple[Any, str]]:
    from oslo_config import cfg

    from fairlock import lockutils

    url = etcd_server.url(etcd_prefix.decode().rstrip("/"))
    cfg.CONF.set_override("fairlock_backend_url", url, group="oslo_concurrency")
    try:
        yield lockutils, url
    finally:
        cfg.CONF.clear_override("fairlock_backend_url", group="oslo_concurrency")
        backend = lockutils._configured_backends.pop(url, None)
        if backend is not None:
            backend.close()


HOLD_EXTERNAL = textwrap.dedent("""
    import sys
    from oslo_config import cfg
    from fairlock import lockutils
    cfg.CONF.set_override("fairlock_backend_url", sys.argv[1], group="oslo_concurrency")
    with lockutils.lock("shared", external=True) as ext:
        print("held", ext.fencing_token, flush=True)
        sys.stdin.readline()
""")


def test_lockutils_external_locks_are_etcd_locks_across_processes(lockutils_on_etcd: tuple[Any, str]) -> None:
    lockutils, url = lockutils_on_etcd
    with lockutils.lock("mine", external=True) as ext:
        assert ext.fencing_token is not None
        assert ext.lock.is_held()
    proc = subprocess.Popen([sys.executable, "-c", HOLD_EXTERNAL, url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("held"), line
        other_token = int(line.split()[1])
        with pytest.raises(lockutils.AcquireLockFailedException):
            with lockutils.lock("shared", external=True, blocking=False):
                pass
        proc.stdin.write("\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        with lockutils.lock("shared", external=True, timeout=30) as ext:
            assert ext.fencing_token > other_token
    finally:
        proc.kill()
        proc.wait()


def test_inspect_bad_url_is_a_clear_error() -> None:
    out = subprocess.run([sys.executable, "-m", "fairlock", "inspect", "--url", "etcd3+ftp://x"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "fairlock inspect:" in out.stderr
