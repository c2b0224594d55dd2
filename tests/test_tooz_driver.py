"""fairlock's tooz driver on a real etcd: what tooz's own suite (tests/test_tooz_parity.py) does not
check -- FIFO and lanes across coordinators, ``blocking=<seconds>``, lost and broken locks reported,
bad URLs and arguments, and nothing left in etcd after ``stop()``.

Every coordinator here is its own etcd session, as a separate process would be. Order is
asserted on recorded sequences, after waiting until every waiter's key is in etcd.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    # tooz imports futurist, which imports eventlet when installed: its deprecation notice is
    # about the environment, not about these tests.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import tooz
    from tooz import coordination

import fairlock
from fairlock.etcd.lock import lock_keys
from fairlock.etcd.transport import prefix_end
from fairlock.tooz_driver import FairlockDriver, FairlockToozLock, ToozURLError

WAIT = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def url(etcd_server: Any, etcd_prefix: bytes) -> str:
    return f"fairlock+etcd3+http://127.0.0.1:{etcd_server.client_port}{etcd_prefix.decode().rstrip('/')}"


@pytest.fixture
def coordinators(url: str) -> Iterator[Callable[..., FairlockDriver]]:
    """``make(member, **options)``: a started coordinator, stopped after the test if still started."""
    made: list[FairlockDriver] = []

    def make(member: str, **options: Any) -> FairlockDriver:
        coordinator = coordination.get_coordinator(url, member.encode(), **options)
        assert isinstance(coordinator, FairlockDriver)
        coordinator.start()
        made.append(coordinator)
        return coordinator

    yield make
    for coordinator in made:
        if coordinator.is_started:
            coordinator.stop()


@pytest.fixture
def keys(etcd_transport: Any, etcd_prefix: bytes) -> Callable[[bytes], list[bytes]]:
    """``keys(sub)``: the keys in etcd under the test's prefix + ``sub``."""
    root = etcd_prefix.rstrip(b"/")

    def read(sub: bytes = b"") -> list[bytes]:
        start = root + sub
        return [kv.key for kv in etcd_transport.get_range(start, prefix_end(start))[1]]

    return read


def waiters(keys: Callable[[bytes], list[bytes]], coordinator: FairlockDriver, name: str) -> int:
    _, waiter_prefix, _ = lock_keys(coordinator.prefix.encode(), name)
    return len(keys(waiter_prefix[len(coordinator.prefix):]))


def queue_in_order(keys: Callable[[bytes], list[bytes]], holder: FairlockDriver, name: str,
                   requests: list[tuple[str, Callable[[list[str]], None]]]) -> tuple[list[str], list[threading.Thread]]:
    """Start each request in its own thread, the next one only once the previous one's waiter key
    is in etcd; returns the list each request appends its label to once it holds the lock."""
    order: list[str] = []
    threads = []
    for i, (label, request) in enumerate(requests):
        thread = threading.Thread(target=request, args=(order,), name=f"tooz-{label}")
        thread.start()
        threads.append(thread)
        wait_until(lambda n=i + 1: waiters(keys, holder, name) == n)
    return order, threads


# -- the driver is found by tooz ------------------------------------------------------------------


def test_get_coordinator_finds_the_driver_for_both_schemes(url: str) -> None:
    for scheme in ("fairlock+etcd3+http", "fairlock+etcd3+https"):
        coordinator = coordination.get_coordinator(scheme + "://127.0.0.1:2379/x", b"m")
        assert type(coordinator) is FairlockDriver
    lock = coordination.get_coordinator(url, b"m").get_lock(b"name")
    assert isinstance(lock, FairlockToozLock) and lock.name == b"name"
    assert coordination.get_coordinator(url, b"m").get_lock("str-name").name == "str-name"


def test_characteristics_are_checked_by_tooz(url: str) -> None:
    wanted = [coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
              coordination.Characteristics.LINEARIZABLE, coordination.Characteristics.NON_TIMEOUT_BASED]
    assert isinstance(coordination.get_coordinator(url, b"m", characteristics=wanted), FairlockDriver)
    with pytest.raises(coordination.ToozDriverChosenPoorly):
        coordination.get_coordinator(
            url, b"m", characteristics=[coordination.Characteristics.SAME_VIEW_UNDER_PARTITIONS])


def test_https_and_users(etcd_tls_server: Any, etcd_auth_server: Any, etcd_prefix: bytes) -> None:
    creds = etcd_auth_server.credentials
    urls = [
        "fairlock+" + etcd_tls_server.url(etcd_prefix.decode()),
        "fairlock+" + etcd_auth_server.url(etcd_prefix.decode(), username=creds.username,
                                           password=creds.password),
    ]
    for tooz_url in urls:
        coordinator = coordination.get_coordinator(tooz_url, b"m")
        coordinator.start()
        try:
            lock = coordinator.get_lock(b"over-tls-or-auth")
            assert lock.acquire(blocking=False)
            assert lock.fencing_token is not None and lock.is_still_owner()
            assert lock.release()
        finally:
            coordinator.stop()


# -- fairness (FIFO, mutual exclusion, timeouts, cancels: the generic suite, kind "tooz") ---------


def test_lanes_by_keyword_context_and_context_manager(coordinators: Any, keys: Any) -> None:
    holder = coordinators("holder")
    first = holder.get_lock(b"lanes")
    assert first.acquire()

    def low(order: list[str]) -> None:
        lock = coordinators("low").get_lock(b"lanes")
        assert lock.acquire(lane="low")
        order.append("low")
        lock.release()

    def normal(order: list[str]) -> None:
        with coordinators("normal").get_lock(b"lanes"):
            order.append("normal")

    def high_from_context(order: list[str]) -> None:
        lock = coordinators("high-context").get_lock(b"lanes")
        with fairlock.lane("high"):
            assert lock.acquire()
        order.append("high-context")
        lock.release()

    def high_from_proxy(order: list[str]) -> None:
        with coordinators("high-proxy").get_lock(b"lanes")(WAIT, lane="high"):
            order.append("high-proxy")

    order, threads = queue_in_order(keys, holder, "lanes", [
        ("low", low), ("normal", normal), ("high-context", high_from_context), ("high-proxy", high_from_proxy)])
    assert first.release()
    for thread in threads:
        thread.join(WAIT)
    assert order == ["high-context", "high-proxy", "normal", "low"]


def test_lanes_from_the_url(coordinators: Any) -> None:
    coordinator = coordinators("m", lanes="migration,events", default_lane="events")
    lock = coordinator.get_lock(b"custom")
    assert lock.acquire(lane="migration")
    assert lock.release()
    with pytest.raises(fairlock.UnknownLaneError):
        lock.acquire(lane="high")
    assert not lock.acquired


def test_fencing_tokens_increase_across_coordinators(coordinators: Any) -> None:
    tokens = []
    for member in ("a", "b", "a2"):
        lock = coordinators(member).get_lock(b"fenced")
        assert lock.fencing_token is None
        assert lock.acquire()
        tokens.append(lock.fencing_token)
        assert lock.release()
        assert lock.fencing_token is None
    assert tokens == sorted(set(tokens)) and None not in tokens
    assert lock.statistics().acquisitions == 1 and lock.statistics().name == "fenced"


# -- tooz's acquire and release contract ----------------------------------------------------------


def test_blocking_seconds_and_timeout(coordinators: Any, keys: Any) -> None:
    holder = coordinators("holder")
    held = holder.get_lock(b"slow")
    assert held.acquire()
    other = coordinators("other").get_lock(b"slow")
    for kwargs in ({"blocking": 0.3}, {"blocking": True, "timeout": 0.3}):
        started = time.monotonic()
        assert other.acquire(**kwargs) is False
        assert 0.3 <= time.monotonic() - started < 5.0
    assert other.acquire(blocking=False) is False
    assert waiters(keys, holder, "slow") == 0  # no waiter key left behind by the timeouts

    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(other.acquire(blocking=WAIT)))
    thread.start()
    wait_until(lambda: waiters(keys, holder, "slow") == 1)
    assert held.release()
    thread.join(WAIT)
    assert got == [True]
    assert other.fencing_token is not None


def test_context_manager_raises_lock_acquire_failed(coordinators: Any) -> None:
    held = coordinators("holder").get_lock(b"cm")
    other = coordinators("other").get_lock(b"cm")
    with held as returned:
        assert returned is held
        with pytest.raises(coordination.LockAcquireFailed, match="Acquiring lock cm failed"):
            with other(False):
                pass
        with pytest.raises(coordination.LockAcquireFailed):
            with other(0.2):
                pass
        with pytest.raises(coordination.LockAcquireFailed):
            with other(blocking=0.2, lane="high"):
                pass
    with other:
        assert other.acquired


def test_release_returns_false_when_not_held(coordinators: Any) -> None:
    coordinator = coordinators("m")
    lock = coordinator.get_lock(b"rel")
    twin = coordinator.get_lock(b"rel")
    assert lock.release() is False
    assert lock.acquire()
    assert twin.acquire(blocking=False) is False  # same process, same thread: not reentrant
    assert twin.acquire(blocking=0.1) is False  # the holder's own thread: False at once, no wait
    assert twin.release() is False  # another object of the same name does not release ours
    assert lock.is_still_owner()
    assert lock.release() is True
    assert lock.release() is False


def test_holder_thread_blocking_forever_raises_instead_of_hanging(coordinators: Any) -> None:
    coordinator = coordinators("m")
    lock = coordinator.get_lock(b"self")
    assert lock.acquire()
    with pytest.raises(fairlock.DeadlockError):
        coordinator.get_lock(b"self").acquire()
    assert lock.release()


def test_release_by_another_thread_is_an_error(coordinators: Any) -> None:
    lock = coordinators("m").get_lock(b"thread")
    assert lock.acquire()
    errors: list[BaseException] = []

    def release() -> None:
        try:
            lock.release()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=release)
    thread.start()
    thread.join(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], tooz.ToozError)
    assert lock.release() is True


def test_shared_is_not_implemented(coordinators: Any) -> None:
    lock = coordinators("m").get_lock(b"shared")
    with pytest.raises(tooz.NotImplemented):
        lock.acquire(shared=True)
    with pytest.raises(tooz.NotImplemented):
        with lock(shared=True):
            pass


def test_lock_heartbeat(coordinators: Any) -> None:
    lock = coordinators("m").get_lock(b"beat")
    assert lock.heartbeat() is False
    assert lock.acquire()
    assert lock.heartbeat() is True
    assert lock.release()
    assert lock.heartbeat() is False


# -- lost and broken locks ------------------------------------------------------------------------


def test_heartbeat_reports_a_lock_lost_with_the_lease(coordinators: Any, etcd_transport: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    coordinator = coordinators("m")
    lock = coordinator.get_lock(b"victim")
    assert lock.acquire()
    token = lock.fencing_token
    old_lease = coordinator._session.lease_id
    etcd_transport.lease_revoke(old_lease)  # behind the coordinator's back
    other = coordinators("other").get_lock(b"victim")
    assert other.acquire(blocking=False)  # the owner key went with the lease

    caplog.set_level(logging.ERROR, logger="fairlock")
    assert coordinator.heartbeat() > 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("'victim'" in m and str(token) in m and "lost" in m for m in errors), errors
    assert any("locks lost with it: ['victim']" in m for m in errors), errors

    assert not lock.acquired and not lock.is_still_owner()
    assert lock.fencing_token is None
    assert lock.lost_reason is not None and "expired" in lock.lost_reason
    assert lock.release() is False
    assert other.release() is True

    # The coordinator goes on with a new session.
    assert coordinator._session.lease_id != old_lease
    again = coordinator.get_lock(b"victim")
    assert again.acquire(blocking=False)
    assert again.is_still_owner() and again.fencing_token > token
    assert again.release()


def test_heartbeat_reports_a_broken_lock(coordinators: Any, caplog: pytest.LogCaptureFixture) -> None:
    coordinator = coordinators("m")
    lock = coordinator.get_lock(b"broken")
    assert lock.acquire()
    other = coordinators("breaker").get_lock(b"broken")
    assert other.break_() is True
    assert other.break_() is False  # nothing left to break
    assert other.acquire(blocking=False)

    caplog.set_level(logging.ERROR, logger="fairlock")
    coordinator.heartbeat()
    assert lock.lost_reason is not None and "break_()" in lock.lost_reason
    assert any("'broken'" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)
    assert lock.release() is False
    assert other.is_still_owner()  # the lost holder's release did not touch the new owner
    assert other.release()


def test_waiter_whose_lease_expires_waits_on_a_new_session(coordinators: Any, keys: Any,
                                                           etcd_transport: Any) -> None:
    holder = coordinators("holder")
    held = holder.get_lock(b"renew")
    assert held.acquire()
    coordinator = coordinators("waiter")
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(coordinator.get_lock(b"renew").acquire(blocking=WAIT)))
    thread.start()
    wait_until(lambda: waiters(keys, holder, "renew") == 1)
    etcd_transport.lease_revoke(coordinator._session.lease_id)
    wait_until(lambda: waiters(keys, holder, "renew") == 1 and not coordinator._session.lost)
    assert held.release()
    thread.join(WAIT)
    assert got == [True]


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tail", "message"), [
    (":99999/x", "out of range"),
    ("/x?frobnicate=1", "unknown parameter 'frobnicate'"),
    ("/x?timeout=1&timeout=2", "'timeout' given 2 times"),
    ("/x?timeout=soon", "timeout must be a number"),
    ("/x?lease_ttl=1", "lease_ttl must be a whole number of seconds >= 2"),
    ("/x?lock_timeout=half", "lock_timeout must be a whole number"),
    ("/x?api_version=v3alpha", "api_version"),
    ("/x?lanes=high,high", "distinct"),
    ("/x?lanes=a,b&default_lane=c", "unknown lane 'c'"),
    ("/x?max_bypass=many", "max_bypass"),
    ("/x?ca_cert=/etc/ca.pem", "needs an https URL"),
])
def test_bad_urls_fail_at_get_coordinator(tail: str, message: str) -> None:
    with pytest.raises(ToozURLError, match=message) as info:
        coordination.get_coordinator("fairlock+etcd3+http://user:s3cret@127.0.0.1" + tail, b"m")
    assert isinstance(info.value, ValueError) and isinstance(info.value, tooz.ToozError)
    assert "s3cret" not in str(info.value)


def test_url_options(url: str) -> None:
    coordinator = coordination.get_coordinator(url + "?lock_timeout=30&membership_timeout=20&timeout=4"
                                               "&api_version=v3&executor=synchronous", b"m")
    assert coordinator.lease_ttl == 20  # one lease for locks and members: the shorter
    assert coordinator.config.timeout == 4.0
    assert coordination.get_coordinator(url + "?lease_ttl=7&lock_timeout=30", b"m").lease_ttl == 7
    assert coordination.get_coordinator(url, b"m", lease_ttl="5").lease_ttl == 5  # tooz kwargs
    bare = coordination.get_coordinator("fairlock+etcd3+http://", b"m")
    assert bare.config.endpoints == ("http://localhost:2379",) and bare.prefix == "/fairlock"
    with pytest.raises(tooz.ToozError, match="executor"):
        coordination.get_coordinator(url + "?executor=bogus", b"m")


def test_bad_lock_names_and_arguments(coordinators: Any) -> None:
    coordinator = coordinators("m")
    with pytest.raises(ValueError):
        coordinator.get_lock(b"")
    with pytest.raises(TypeError):
        coordinator.get_lock(42)
    with pytest.raises(ValueError, match="UTF-8"):
        coordinator.get_lock(b"\xff\xfe")
    lock = coordinator.get_lock(b"args")
    with pytest.raises(fairlock.UnknownLaneError):
        lock.acquire(lane="urgent")
    with pytest.raises(ValueError):
        lock.acquire(blocking=float("nan"))
    assert not lock.acquired and lock.acquire(blocking=False) and lock.release()


def test_unreachable_etcd_and_stopped_coordinator(url: str) -> None:
    coordinator = coordination.get_coordinator(
        "fairlock+etcd3+http://127.0.0.1:1/x?timeout=0.5", b"m")
    with pytest.raises(coordination.ToozConnectionError):
        coordinator.start()
    stopped = coordination.get_coordinator(url, b"m")
    lock = stopped.get_lock(b"never")
    with pytest.raises(tooz.ToozError, match="not started"):
        lock.acquire()
    stopped.start()
    stopped.stop()
    with pytest.raises(tooz.ToozError, match="not started"):
        lock.acquire(blocking=False)


# -- stop() ---------------------------------------------------------------------------------------


def test_stop_leaves_no_keys_and_hands_held_locks_on(coordinators: Any, keys: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    coordinator = coordinators("m")
    mine = coordinator.get_lock(b"a")
    assert mine.acquire()
    coordinator.create_group(b"g").get()
    coordinator.join_group(b"g", {"role": "worker"}).get()

    # Another thread of the same coordinator holds "b" across the stop.
    held_b, stop_done, released = threading.Event(), threading.Event(), []

    def hold_b() -> None:
        lock_b = coordinator.get_lock(b"b")
        assert lock_b.acquire()
        held_b.set()
        stop_done.wait(WAIT)
        released.append(lock_b.release())

    thread_b = threading.Thread(target=hold_b)
    thread_b.start()
    assert held_b.wait(WAIT)

    other = coordinators("other")
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(other.get_lock(b"a").acquire(blocking=WAIT)))
    waiter.start()
    wait_until(lambda: waiters(keys, coordinator, "a") == 1)
    assert len(keys(b"/locks/")) == 3  # a's owner and waiter, b's owner

    caplog.set_level(logging.ERROR, logger="fairlock")
    lease = coordinator._session.lease_id
    coordinator.stop()
    stop_done.set()
    thread_b.join(WAIT)
    waiter.join(WAIT)
    assert got == [True]  # "a" was handed over by stop(), not left to the lease
    assert released == [False]  # "b" went with the revoked lease; reported lost, at ERROR
    assert any("'b'" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)
    assert mine.release() is False
    assert not [t for t in threading.enumerate() if t.name == f"fairlock-keepalive-{lease:x}"]

    other.stop()
    assert keys(b"") == [keys(b"/groups/")[0]] and keys(b"/groups/")[0].endswith(b"/groups/g/")


def test_groups_live_on_the_session_lease(coordinators: Any, keys: Any) -> None:
    first, second = coordinators("first"), coordinators("second")
    first.create_group(b"workers").get()
    first.join_group(b"workers", {"weight": 2}).get()
    second.join_group(b"workers").get()
    assert first.get_members(b"workers").get() == {b"first", b"second"}
    assert first.get_members_with_capabilities(b"workers").get() == {b"first": {"weight": 2}, b"second": None}
    with pytest.raises(coordination.GroupNotEmpty):
        first.delete_group(b"workers").get()
    second.stop()  # leaves its groups (and its lease, with any key left, is revoked)
    assert first.get_members(b"workers").get() == {b"first"}
    first.leave_group(b"workers").get()
    first.delete_group(b"workers").get()
    assert first.get_groups().get() == []
    assert keys(b"") == []


def test_heart_thread(coordinators: Any) -> None:
    coordinator = coordinators("m")
    assert coordinator.requires_beating
    coordinator.heart.start()
    try:
        wait_until(lambda: coordinator.heart.beats > 0)
    finally:
        coordinator.heart.stop()
        coordinator.heart.wait(WAIT)
