"""``lockutils.lock(name, external=True)`` on etcd fails the way oslo's file lock fails.

oslo's external lock is fasteners' ``InterProcessLock``: a lock file it cannot open raises
``OSError``, a lock it cannot take or give back raises ``threading.ThreadError`` (which is
``RuntimeError``). oslo callers that handle external-lock failures catch those, so the etcd
backend's failures are those classes too: ``EtcdUnavailable`` is a ``ConnectionError`` (an
``OSError``), ``EtcdAuthError`` a ``PermissionError``, and ``SessionLost`` / ``LockLost`` are
``RuntimeError``. Real etcd, as every etcd test.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from oslo_concurrency import lockutils as oslo_lockutils
from oslo_config import cfg

from fairlock import FairlockError, lockutils
from fairlock.etcd import EtcdAuthError, EtcdLock, EtcdUnavailable, LockLost, Session, SessionLost
from fairlock.etcd.backend import EtcdBackend
from fairlock.etcd.gateway import GatewayTransport
from fairlock.testing import free_port

from .kinds import start, wait_for


def test_the_classes_are_what_oslo_callers_catch() -> None:
    assert issubclass(EtcdUnavailable, OSError) and issubclass(EtcdUnavailable, ConnectionError)
    assert issubclass(EtcdAuthError, PermissionError)
    for lost in (SessionLost, LockLost):
        assert issubclass(lost, threading.ThreadError) and issubclass(lost, FairlockError)


def test_oslo_file_lock_that_cannot_be_opened_raises_oserror(tmp_path: Path) -> None:
    """The baseline: what oslo itself raises when its external lock cannot be had."""
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(OSError):
        with oslo_lockutils.lock(f"base-{uuid.uuid4().hex[:6]}", external=True, lock_path=str(not_a_directory)):
            pass


def test_unreachable_etcd_from_the_option_is_an_oserror() -> None:
    name = f"unreachable-{uuid.uuid4().hex[:6]}"
    url = f"etcd3+http://127.0.0.1:{free_port()}/fairlock-errors?timeout=1"
    cfg.CONF.set_override("fairlock_backend_url", url, group="oslo_concurrency")
    try:
        assert isinstance(lockutils.get_external_backend(), EtcdBackend)
        with pytest.raises(OSError) as caught:
            with lockutils.lock(name, external=True):
                pytest.fail("entered without etcd")
        assert isinstance(caught.value, EtcdUnavailable)
    finally:
        cfg.CONF.clear_override("fairlock_backend_url", group="oslo_concurrency")
        lockutils._configured_backends.pop(url).close()
    internal = lockutils.internal_lock(name)
    assert not internal.locked()  # the internal lock was given back


@pytest.fixture
def etcd_backend(etcd_server: Any, etcd_prefix: bytes) -> Iterator[tuple[Session, GatewayTransport]]:
    transport = GatewayTransport([etcd_server.endpoint], timeout=5.0)
    session = Session(transport, ttl=10, prefix=etcd_prefix.decode().rstrip("/"))
    previous = lockutils.set_external_backend(EtcdBackend(session))
    try:
        yield session, transport
    finally:
        lockutils.set_external_backend(None if isinstance(previous, lockutils.FileLockBackend) else previous)
        session.close()
        transport.close()


def test_lease_lost_while_held_is_a_thread_error(etcd_backend: tuple[Session, GatewayTransport]) -> None:
    session, transport = etcd_backend
    name = f"lost-held-{uuid.uuid4().hex[:6]}"
    with pytest.raises(threading.ThreadError) as caught:
        with lockutils.lock(name, external=True):
            transport.lease_revoke(session.lease_id)  # etcd drops the lease and our owner key
    assert isinstance(caught.value, (LockLost, SessionLost))
    assert not lockutils.internal_lock(name).locked()


def test_lease_lost_while_waiting_is_a_thread_error(etcd_backend: tuple[Session, GatewayTransport],
                                                    etcd_server: Any, etcd_prefix: bytes) -> None:
    session, transport = etcd_backend
    name = f"lost-waiting-{uuid.uuid4().hex[:6]}"
    holder_transport = GatewayTransport([etcd_server.endpoint], timeout=5.0)
    holder_session = Session(holder_transport, ttl=10, prefix=etcd_prefix.decode().rstrip("/"))
    try:
        holder = EtcdLock(name, holder_session)  # another "process" holds it
        assert holder.acquire(timeout=10)
        outcome: list[BaseException] = []

        def waiter() -> None:
            try:
                with lockutils.lock(name, external=True, timeout=30):
                    pass
            except threading.ThreadError as exc:  # what an oslo caller would catch
                outcome.append(exc)

        thread = start(waiter)
        wait_for(lambda: lockutils.internal_lock(name).locked() and _etcd_waiters(transport, session, name) == 1,
                 what="the lockutils waiter queued in etcd")
        transport.lease_revoke(session.lease_id)
        thread.join(20)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], (LockLost, SessionLost))
        assert not lockutils.internal_lock(name).locked()
        holder.release()
    finally:
        holder_session.close()
        holder_transport.close()


def _etcd_waiters(transport: GatewayTransport, session: Session, name: str) -> int:
    from fairlock.etcd.lock import lock_keys

    _, prefix, end = lock_keys(session.prefix, name)
    return len(transport.get_range(prefix, end)[1])
