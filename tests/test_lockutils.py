"""fairlock.lockutils: oslo's contract (log lines, order, errors) and what fairlock adds.

Log lines are compared with oslo.concurrency's own output, produced in the same test with the same
injected clock, so "byte for byte" is checked against the real thing, not against a copy.
Waiters are started one at a time and each is known to be queued (``statistics().waiting``)
before the next starts; no test relies on a sleep for ordering.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from oslo_concurrency import lockutils as oslo_lockutils
from oslo_config import cfg
from oslo_config import fixture as config_fixture

import fairlock
from fairlock import lockutils
from fairlock.fixture import lockutils as lock_fixture

LOGGER = "oslo_concurrency.lockutils"
WAIT_LIMIT = 10.0  # seconds; only ever reached when a test is about to fail


# -- helpers --------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll a condition that another thread makes true (never a fixed sleep)."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.001)


def unique(prefix: str = "lock") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Waiters:
    """Threads that queue on one lock in a known order and record the order they get it in."""

    def __init__(self, name: str, *, semaphores: lockutils.Semaphores | None = None) -> None:
        self.name = name
        self.lock = (lockutils._semaphores if semaphores is None else semaphores).get(name)  # keeps it alive, for statistics
        self.semaphores = semaphores
        self.order: list[str] = []
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def add(self, label: str, body: Callable[[], Any]) -> None:
        """Start a thread running ``body`` and return once it is queued on the lock."""
        queued = self.lock.statistics().waiting

        def run() -> None:
            try:
                body()
            except BaseException as exc:  # reported by join()
                self.errors.append(exc)

        thread = threading.Thread(target=run, name=label, daemon=True)
        self.threads.append(thread)
        thread.start()
        wait_until(lambda: self.lock.statistics().waiting == queued + 1, f"{label} is queued")

    def add_locker(self, label: str, **lock_kwargs: Any) -> None:
        def body() -> None:
            with lockutils.lock(self.name, semaphores=self.semaphores, **lock_kwargs):
                self.order.append(label)

        self.add(label, body)

    def join(self) -> list[str]:
        for thread in self.threads:
            thread.join(WAIT_LIMIT)
            assert not thread.is_alive(), f"{thread.name} never finished"
        if self.errors:
            raise self.errors[0]
        return self.order


class FakeClock:
    """Returns the given instants in turn (then keeps returning the last one)."""

    def __init__(self, *instants: float) -> None:
        self.instants = list(instants)

    def __call__(self) -> float:
        return self.instants.pop(0) if len(self.instants) > 1 else self.instants[0]


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, str]]:
    return [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def raw(caplog: pytest.LogCaptureFixture) -> list[tuple[object, object]]:
    """The format string and arguments of each line, for structured log formatters."""
    return [(r.msg, r.args) for r in caplog.records if r.name == LOGGER]


@pytest.fixture
def conf() -> Iterator[config_fixture.Config]:
    with config_fixture.Config(lockutils.CONF) as fixture:
        yield fixture
    lockutils._register_opts(lockutils.CONF)  # drop cached values of the options changed above


@pytest.fixture
def lock_dir(tmp_path: Any, conf: config_fixture.Config) -> str:
    conf.config(lock_path=str(tmp_path), group="oslo_concurrency")
    return str(tmp_path)


@pytest.fixture
def restore_defaults() -> Iterator[None]:
    saved = [(opt, opt.default) for opt in lockutils._opts]
    yield
    for opt, default in saved:
        opt.default = default
    lockutils._register_opts(lockutils.CONF)


def _work() -> str:
    return "done"


# The generic lock suite runs on lockutils.lock() through the "lockutils" kind in tests/kinds.py.


def test_semaphores_with_own_lanes() -> None:
    mine = lockutils.Semaphores(lanes=("a", "b"), max_bypass=0)
    assert mine.get(unique()).lanes.names == ("a", "b")
    assert mine.get(unique()).max_bypass == 0
    with pytest.raises(fairlock.InvalidArgumentError):
        lockutils.Semaphores(lanes=("a",), default_lane="b")


# -- log lines, byte for byte ---------------------------------------------------------------------


def test_lock_logs_oslo_lines_byte_for_byte(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with lockutils.lock("instance-1"):
        pass
    ours, ours_raw = lines(caplog), raw(caplog)
    caplog.clear()
    with oslo_lockutils.lock("instance-1"):
        pass
    assert ours == lines(caplog)
    assert ours_raw == raw(caplog)
    assert ours == [
        (LOGGER, logging.DEBUG, 'Acquiring lock "instance-1"'),
        (LOGGER, logging.DEBUG, 'Acquired lock "instance-1"'),
        (LOGGER, logging.DEBUG, 'Releasing lock "instance-1"'),
    ]


def test_external_lock_logs_oslo_lines_byte_for_byte(caplog: pytest.LogCaptureFixture, lock_dir: str) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with lockutils.lock("vol-1", "nova-", external=True):
        pass
    ours = lines(caplog)
    caplog.clear()
    with oslo_lockutils.lock("vol-1", "nova-", external=True):
        pass
    assert ours == lines(caplog)
    assert [message for _, _, message in ours] == [
        'Acquiring lock "vol-1"',
        'Acquired lock "vol-1"',
        'Acquired external semaphore "vol-1"',
        'Releasing lock "vol-1"',
    ]
    assert os.path.exists(os.path.join(lock_dir, "nova-vol-1"))


def test_do_log_false_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with lockutils.lock(unique(), do_log=False):
        pass
    assert lines(caplog) == []


def test_synchronized_logs_oslo_lines_byte_for_byte(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    monkeypatch.setattr(lockutils, "_clock", FakeClock(100.0, 100.25, 101.5))
    assert lockutils.synchronized("compute_resources")(_work)() == "done"
    ours, ours_raw = lines(caplog), raw(caplog)
    caplog.clear()
    monkeypatch.setattr(oslo_lockutils.timeutils, "now", FakeClock(100.0, 100.25, 101.5))
    assert oslo_lockutils.synchronized("compute_resources")(_work)() == "done"
    assert ours == lines(caplog)
    assert ours_raw == raw(caplog)
    assert [message for _, _, message in ours] == [
        'Acquiring lock "compute_resources" by "tests.test_lockutils._work"',
        'Lock "compute_resources" acquired by "tests.test_lockutils._work" :: waited 0.250s',
        'Lock "compute_resources" "released" by "tests.test_lockutils._work" :: held 1.250s',
    ]


def test_synchronized_unacquired_lines_byte_for_byte(caplog: pytest.LogCaptureFixture) -> None:
    name = unique()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    outputs = []
    for module in (lockutils, oslo_lockutils):
        taken, leave = threading.Event(), threading.Event()

        def hold(module: Any = module, taken: threading.Event = taken, leave: threading.Event = leave) -> None:
            with module.lock(name, do_log=False):
                taken.set()
                leave.wait(WAIT_LIMIT)

        holder = threading.Thread(target=hold)
        holder.start()
        assert taken.wait(WAIT_LIMIT)
        caplog.clear()
        with pytest.raises(module.AcquireLockFailedException):
            module.synchronized(name, blocking=False)(_work)()
        outputs.append(lines(caplog))
        leave.set()
        holder.join(WAIT_LIMIT)
    assert outputs[0] == outputs[1]
    assert [message for _, _, message in outputs[0]] == [
        f'Acquiring lock "{name}" by "tests.test_lockutils._work"',
        f'Lock "{name}" "unacquired" by "tests.test_lockutils._work" :: held N/A',
    ]


def test_nonblocking_failure_logs_like_oslo(caplog: pytest.LogCaptureFixture) -> None:
    """A failed non-blocking lock() logs "Acquiring" only, like oslo's (no "Releasing")."""
    name = unique()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    taken, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with lockutils.lock(name, do_log=False):
            taken.set()
            leave.wait(WAIT_LIMIT)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(WAIT_LIMIT)
        with pytest.raises(lockutils.AcquireLockFailedException):
            with lockutils.lock(name, blocking=False):
                pytest.fail("acquired a held lock")
    finally:
        leave.set()
        holder.join(WAIT_LIMIT)
    assert [message for _, _, message in lines(caplog)] == [f'Acquiring lock "{name}"']


# -- log lines vs acquire and release -------------------------------------------------------------


class _StateRecorder(logging.Handler):
    """Records each lockutils line with whether the internal (and external) lock was held."""

    def __init__(self, internal: fairlock.Lock, external: Callable[[], bool] = lambda: False) -> None:
        super().__init__(logging.DEBUG)
        self.internal = internal
        self.external = external
        self.seen: list[tuple[str, bool, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage().split(" ")[0], self.internal.locked(), self.external()))


@pytest.fixture
def recorder_for() -> Iterator[Callable[..., _StateRecorder]]:
    logger = logging.getLogger(LOGGER)
    installed: list[_StateRecorder] = []
    old_level = logger.level

    def install(internal: fairlock.Lock, external: Callable[[], bool] = lambda: False) -> _StateRecorder:
        handler = _StateRecorder(internal, external)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        installed.append(handler)
        return handler

    yield install
    for handler in installed:
        logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_lock_lines_in_order_with_acquire_and_release(recorder_for: Callable[..., _StateRecorder]) -> None:
    name = unique()
    internal = lockutils.internal_lock(name)
    seen = recorder_for(internal).seen
    with lockutils.lock(name):
        seen.append(("body", internal.locked(), False))
    seen.append(("after", internal.locked(), False))
    assert [(word, held) for word, held, _ in seen] == [
        ("Acquiring", False),  # before the acquire
        ("Acquired", True),
        ("body", True),
        ("Releasing", True),  # before the release, as oslo
        ("after", False),
    ]


def test_synchronized_lines_in_order_with_acquire_and_release(recorder_for: Callable[..., _StateRecorder]) -> None:
    name = unique()
    internal = lockutils.internal_lock(name)
    seen = recorder_for(internal).seen

    @lockutils.synchronized(name)
    def body() -> None:
        seen.append(("body", internal.locked(), False))

    body()
    assert [(word, held) for word, held, _ in seen] == [
        ("Acquiring", False),
        ("Lock", True),  # acquired ... waited
        ("body", True),
        ("Lock", False),  # "released" ... held: logged after the release, as oslo
    ]


class _RecordingBackend:
    """An external backend that records what lockutils asks of it."""

    def __init__(self, result: bool = True) -> None:
        self.result = result
        self.calls: list[tuple[Any, ...]] = []
        self.held = False
        self.internal: fairlock.Lock | None = None

    def lock(self, name: str, lock_file_prefix: str | None, lock_path: str | None) -> _RecordingBackend:
        self.calls.append(("lock", name, lock_file_prefix, lock_path))
        return self

    def remove(self, name: str, lock_file_prefix: str | None, lock_path: str | None) -> None:
        internal_held = self.internal is not None and self.internal.owned()
        self.calls.append(("remove", name, lock_file_prefix, lock_path, internal_held))

    def acquire(self, **kwargs: Any) -> bool:
        internal_held = self.internal is not None and self.internal.owned()
        self.calls.append(("acquire", kwargs, internal_held, fairlock.current_lane()))
        self.held = self.result
        return self.result

    def release(self) -> None:
        internal_held = self.internal is not None and self.internal.owned()
        self.calls.append(("release", internal_held))
        self.held = False


@pytest.fixture
def backend() -> Iterator[_RecordingBackend]:
    fake = _RecordingBackend()
    previous = lockutils.set_external_backend(fake)
    yield fake
    lockutils.set_external_backend(previous)


def test_external_lines_in_order_with_both_locks(
    recorder_for: Callable[..., _StateRecorder], backend: _RecordingBackend
) -> None:
    name = unique()
    internal = lockutils.internal_lock(name)
    seen = recorder_for(internal, lambda: backend.held).seen
    with lockutils.lock(name, external=True) as yielded:
        assert yielded is backend
    assert seen == [
        ("Acquiring", False, False),
        ("Acquired", True, False),  # internal first ...
        ("Acquired", True, True),  # ... then external ("Acquired external semaphore")
        ("Releasing", True, False),  # external released first, internal still held
    ]


# -- one fair lock per name -----------------------------------------------------------------------


def test_fair_and_non_fair_callers_share_one_lock() -> None:
    name = unique()
    assert lockutils.internal_lock(name) is lockutils.internal_fair_lock(name)
    with lockutils.lock(name, fair=True) as fair_lock:
        outcome: list[object] = []

        def try_unfair() -> None:
            try:
                with lockutils.lock(name, fair=False, blocking=False):
                    outcome.append("acquired")
            except lockutils.AcquireLockFailedException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=try_unfair)
        thread.start()
        thread.join(WAIT_LIMIT)
        assert len(outcome) == 1 and isinstance(outcome[0], lockutils.AcquireLockFailedException)
    with lockutils.lock(name) as unfair_lock:
        assert unfair_lock is fair_lock


def test_non_fair_callers_are_served_fifo() -> None:
    name = unique()
    waiters = Waiters(name)
    with lockutils.lock(name):
        for label in ("a", "b", "c", "d"):
            waiters.add_locker(label, fair=label in ("b", "d"))
    assert waiters.join() == ["a", "b", "c", "d"]


def test_internal_locks_are_fairlock_locks_and_semaphores() -> None:
    with lockutils.lock(unique()) as internal:
        assert isinstance(internal, fairlock.Lock)
        assert isinstance(internal, threading.Semaphore)  # oslo's documented type, kept
        assert internal.owned()


def test_nesting_the_same_name_is_an_error_not_a_hang() -> None:
    """Not reentrant, as oslo's default lock (a Semaphore, on which nesting hangs forever): a
    nested non-fair blocking acquire raises DeadlockError at once."""
    name = unique()
    with lockutils.lock(name, fair=True) as outer:
        with pytest.raises(fairlock.DeadlockError):
            with lockutils.lock(name):
                pass
        with pytest.raises(lockutils.AcquireLockFailedException):
            with lockutils.lock(name, blocking=False):
                pass
        assert outer.owned()
    assert not outer.locked()


def test_fair_true_is_reentrant_for_the_holder_as_in_oslo() -> None:
    """oslo's fair=True lock is fasteners' write lock, which its owner may re-enter; nova nests
    @synchronized(COMPUTE_RESOURCE_SEMAPHORE, fair=True) methods."""
    name = unique()

    @lockutils.synchronized(name, fair=True)
    def inner() -> bool:
        return lockutils.internal_lock(name).owned()

    @lockutils.synchronized(name, fair=True)
    def outer() -> list[bool]:
        with lockutils.lock(name, fair=True, blocking=False) as again:
            nested = again.owned()
        return [inner(), nested, lockutils.internal_lock(name).owned()]

    assert outer() == [True, True, True]
    assert not lockutils.internal_lock(name).locked()
    with lockutils.lock(name) as plain:  # a non-fair outer hold: a fair inner call re-enters too
        with lockutils.lock(name, fair=True):
            assert plain.owned()
        assert plain.owned()
    assert not plain.locked()


def test_fair_reentry_keeps_waiters_queued_and_hands_off_at_the_outermost_exit() -> None:
    name = unique()
    waiters = Waiters(name)
    with lockutils.lock(name, fair=True) as held:
        waiters.add_locker("queued-first", fair=True)
        with lockutils.lock(name, fair=True, lane="migration"):
            with lockutils.lock(name, fair=True):
                assert held.statistics().waiting == 1
        # The inner exits released nothing: the waiter is still queued behind us.
        assert held.owned() and held.statistics().waiting == 1
        waiters.add_locker("queued-second", fair=True)
    assert waiters.join() == ["queued-first", "queued-second"]
    assert held.statistics().handoffs >= 1


def test_fair_reentry_logs_oslos_lines(caplog: pytest.LogCaptureFixture) -> None:
    name = unique()
    with caplog.at_level(logging.DEBUG, logger="oslo_concurrency.lockutils"):
        with lockutils.lock(name, fair=True):
            caplog.clear()
            with lockutils.lock(name, fair=True):
                pass
    assert [r.getMessage() for r in caplog.records] == [
        f'Acquiring lock "{name}"', f'Acquired lock "{name}"', f'Releasing lock "{name}"',
        f'Releasing lock "{name}"',  # the outer block's
    ]


def test_release_by_another_thread_raises() -> None:
    name = unique()
    internal = lockutils.internal_lock(name)
    internal.acquire()
    try:
        errors: list[BaseException] = []

        def release() -> None:
            try:
                internal.release()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=release)
        thread.start()
        thread.join(WAIT_LIMIT)
        assert len(errors) == 1 and isinstance(errors[0], fairlock.NotOwnerError)
    finally:
        internal.release()


def test_unused_locks_leave_the_container() -> None:
    gc.collect()  # locks of earlier tests that only a reference cycle keeps alive go first
    before = len(lockutils._semaphores)
    for _ in range(50):
        with lockutils.lock(unique()):
            pass
    assert len(lockutils._semaphores) == before


# -- blocking=False, semaphores=, timeout= with fairness ------------------------------------------


def _held_elsewhere(name: str, **lock_kwargs: Any) -> tuple[threading.Thread, threading.Event]:
    taken, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with lockutils.lock(name, do_log=False, **lock_kwargs):
            taken.set()
            leave.wait(WAIT_LIMIT)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(WAIT_LIMIT)
    return thread, leave


def test_fair_nonblocking_fails_when_held_and_succeeds_when_free() -> None:
    name = unique()
    thread, leave = _held_elsewhere(name)
    try:
        with pytest.raises(lockutils.AcquireLockFailedException) as info:
            with lockutils.lock(name, fair=True, blocking=False):
                pytest.fail("acquired a held lock")
    finally:
        leave.set()
        thread.join(WAIT_LIMIT)
    exc = info.value
    assert str(exc) == f"Failed to acquire the lock {name}"
    assert isinstance(exc, oslo_lockutils.AcquireLockFailedException)  # oslo's except clauses work
    assert isinstance(exc, fairlock.FairlockError)
    assert pickle.loads(pickle.dumps(exc)).lock_name == name
    with lockutils.lock(name, fair=True, blocking=False) as held:
        assert held.owned()


def test_fair_nonblocking_does_not_barge_past_queued_waiters() -> None:
    """Release hands the lock to the queued waiter at once: an immediate try by the releaser
    fails even if the waiter has not run yet (with oslo's semaphore it usually succeeds)."""
    name = unique()
    waiters = Waiters(name)
    leave = threading.Event()

    def body() -> None:
        with lockutils.lock(name):
            waiters.order.append("queued")
            leave.wait(WAIT_LIMIT)

    try:
        with lockutils.lock(name):
            waiters.add("queued", body)
        with pytest.raises(lockutils.AcquireLockFailedException):
            with lockutils.lock(name, fair=True, blocking=False):
                pytest.fail("barged past a queued waiter")
    finally:
        leave.set()
    assert waiters.join() == ["queued"]
    assert waiters.lock.statistics().handoffs == 1


def test_internal_lock_nonblocking_raises_when_held() -> None:
    name = unique()
    thread, leave = _held_elsewhere(name)
    try:
        with pytest.raises(lockutils.AcquireLockFailedException):
            with lockutils.internal_lock(name, blocking=False):
                pytest.fail("acquired a held lock")
    finally:
        leave.set()
        thread.join(WAIT_LIMIT)


def test_semaphores_container_is_fair_and_separate() -> None:
    name = unique()
    mine = lockutils.Semaphores()
    waiters = Waiters(name, semaphores=mine)
    with lockutils.lock(name, semaphores=mine, fair=True):
        # The default container's lock of the same name is another lock, as in oslo.
        with lockutils.lock(name, blocking=False):
            pass
        for label in ("first", "second", "third"):
            waiters.add_locker(label, fair=True)
    assert waiters.join() == ["first", "second", "third"]


def test_timeout_fails_like_nonblocking(caplog: pytest.LogCaptureFixture) -> None:
    name = unique()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    thread, leave = _held_elsewhere(name)
    try:
        with pytest.raises(lockutils.AcquireLockFailedException):
            with lockutils.lock(name, timeout=0.05):
                pytest.fail("acquired a held lock")
        with pytest.raises(lockutils.AcquireLockFailedException):
            lockutils.synchronized(name, timeout=0)(_work)()
        stats = lockutils.internal_lock(name).statistics()
        assert stats.lanes["normal"].timeouts >= 1  # the 0.05 s wait queued, then left
        assert stats.waiting == 0
    finally:
        leave.set()
        thread.join(WAIT_LIMIT)
    assert lines(caplog)[-1][2] == f'Lock "{name}" "unacquired" by "tests.test_lockutils._work" :: held N/A'
    with lockutils.lock(name, timeout=WAIT_LIMIT) as held:
        assert held.owned()


def test_timeout_waits_then_succeeds_when_released_in_time() -> None:
    name = unique()
    waiters = Waiters(name)
    with lockutils.lock(name):
        waiters.add_locker("patient", timeout=WAIT_LIMIT)
    assert waiters.join() == ["patient"]


def test_timeout_covers_the_external_lock(backend: _RecordingBackend) -> None:
    with lockutils.lock(unique(), external=True, timeout=5, delay=0.02):
        pass
    (_, kwargs, internal_held, _), = [call for call in backend.calls if call[0] == "acquire"]
    assert kwargs["blocking"] is True and kwargs["delay"] == 0.02
    assert 0 < kwargs["timeout"] <= 5


def test_without_timeout_the_external_call_is_oslos(backend: _RecordingBackend) -> None:
    name = unique()
    backend.internal = lockutils.internal_lock(name)
    with lockutils.lock(name, "pfx", True, "/some/dir", blocking=False):
        pass
    assert backend.calls == [
        ("lock", name, "pfx", "/some/dir"),
        ("acquire", {"delay": 0.01, "blocking": False}, True, None),
        ("release", True),
    ]


def test_external_failure_raises_and_frees_the_internal_lock(backend: _RecordingBackend) -> None:
    backend.result = False
    name = unique()
    with pytest.raises(lockutils.AcquireLockFailedException):
        with lockutils.lock(name, external=True):
            pytest.fail("the external lock was refused")
    assert not lockutils.internal_lock(name).locked()


def test_remove_external_lock_file_goes_through_the_backend_under_the_internal_lock(
    backend: _RecordingBackend,
) -> None:
    name = unique()
    backend.internal = lockutils.internal_lock(name)
    lockutils.remove_external_lock_file_with_prefix("nova-")(name, lock_path="/d")
    assert backend.calls == [("remove", name, "nova-", "/d", True)]


def test_disable_process_locking_skips_the_backend(backend: _RecordingBackend, conf: Any) -> None:
    conf.config(disable_process_locking=True, group="oslo_concurrency")
    with lockutils.lock(unique(), external=True) as yielded:
        assert isinstance(yielded, lockutils.InternalLock)
    assert backend.calls == []


def test_file_backend_removes_lock_files(lock_dir: str) -> None:
    name = unique()
    with lockutils.lock(name, external=True):
        assert os.path.exists(os.path.join(lock_dir, name))
    lockutils.remove_external_lock_file(name)
    assert not os.path.exists(os.path.join(lock_dir, name))
    lockutils.remove_external_lock_file(name)  # already gone: no error


def test_file_backend_warns_only_when_removal_fails_for_another_reason(
    lock_dir: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oslo's remove tests, with a real name: the path's arguments, os.remove of it, the warning."""
    import errno

    paths: list[tuple[Any, ...]] = []
    real_path = lockutils._get_lock_path
    monkeypatch.setattr(lockutils, "_get_lock_path", lambda *args: paths.append(args) or real_path(*args))
    removed: list[str] = []
    failure = [OSError(errno.ENOENT, "gone")]

    def remove(path: str) -> None:
        removed.append(path)
        raise failure[0]

    monkeypatch.setattr(os, "remove", remove)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    lockutils.remove_external_lock_file("vol-9", "pfx", lock_dir)
    assert paths == [("vol-9", "pfx", lock_dir)]
    assert removed == [os.path.join(lock_dir, "pfx-vol-9")]
    assert lines(caplog) == []
    failure[0] = OSError(errno.EPERM, "denied")
    lockutils.remove_external_lock_file("vol-9")
    assert paths[-1] == ("vol-9", None, None)
    assert lines(caplog) == [(LOGGER, logging.WARNING, f"Failed to remove file {os.path.join(lock_dir, 'vol-9')}")]


def test_external_lock_needs_a_lock_path(conf: Any) -> None:
    conf.config(lock_path=None, group="oslo_concurrency")
    with pytest.raises(cfg.RequiredOptError):
        with lockutils.lock(unique(), external=True):
            pass


# -- lanes ----------------------------------------------------------------------------------------


def test_default_lanes_are_nova_lanes() -> None:
    internal = lockutils.internal_lock(unique())
    assert internal.lanes.names == ("migration", "normal", "events")
    assert internal.lanes.default == "normal"


def test_migration_lane_overtakes_queued_normal_waiters() -> None:
    name = unique()
    waiters = Waiters(name)
    with lockutils.lock(name):
        waiters.add_locker("normal-1")
        waiters.add_locker("normal-2")
        waiters.add_locker("events-1", lane="events")
        waiters.add_locker("migration-1", lane="migration")
    assert waiters.join() == ["migration-1", "normal-1", "normal-2", "events-1"]


def test_context_lane_applies_to_lock_and_synchronized() -> None:
    name = unique()
    waiters = Waiters(name)

    @lockutils.synchronized(name)
    def migrate() -> None:
        waiters.order.append("migration-sync")

    def in_migration_context() -> None:
        with fairlock.lane("migration"):
            migrate()

    with lockutils.lock(name):
        waiters.add_locker("normal-1")
        waiters.add("migration-sync", in_migration_context)
        waiters.add_locker("normal-2")
    assert waiters.join() == ["migration-sync", "normal-1", "normal-2"]


def test_explicit_lane_beats_the_context_lane() -> None:
    name = unique()
    waiters = Waiters(name)

    def events_despite_context() -> None:
        with fairlock.lane("migration"):
            with lockutils.lock(name, lane="events"):
                waiters.order.append("events")

    with lockutils.lock(name):
        waiters.add("events", events_despite_context)
        waiters.add_locker("normal")
    assert waiters.join() == ["normal", "events"]


def test_context_lane_unknown_to_the_locks_falls_back_to_default() -> None:
    with fairlock.lane("high"):  # a lane of other locks, not of lockutils'
        with lockutils.lock(unique()) as held:
            assert held.owned()


def test_lane_is_visible_to_the_external_backend(backend: _RecordingBackend) -> None:
    with lockutils.lock(unique(), external=True, lane="migration"):
        pass
    with fairlock.lane("events"):
        with lockutils.lock(unique(), external=True):
            pass
    lanes = [call[3] for call in backend.calls if call[0] == "acquire"]
    assert lanes == ["migration", "events"]


def test_configured_lanes_and_max_bypass(conf: Any) -> None:
    conf.config(fairlock_lanes=["urgent", "bulk"], fairlock_default_lane="bulk", fairlock_max_bypass=0,
                group="oslo_concurrency")
    name = unique()
    internal = lockutils.internal_lock(name)
    assert internal.lanes.names == ("urgent", "bulk")
    assert internal.max_bypass == 0
    waiters = Waiters(name)
    with lockutils.lock(name):
        waiters.add_locker("bulk-1")
        waiters.add_locker("urgent-1", lane="urgent")
    # max_bypass=0: strict FIFO whatever the lanes.
    assert waiters.join() == ["bulk-1", "urgent-1"]


def test_set_defaults_sets_lane_options(restore_defaults: None) -> None:
    lockutils.set_defaults(fairlock_lanes=("a", "b", "c"), fairlock_default_lane="c", fairlock_max_bypass=2)
    internal = lockutils.internal_lock(unique())
    assert internal.lanes.names == ("a", "b", "c")
    assert internal.lanes.default == "c"
    assert internal.max_bypass == 2


def slow_warnings(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING and getattr(r, "fairlock_lock", None) == name]


def test_slow_wait_and_hold_are_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    assert lockutils.CONF.oslo_concurrency.fairlock_slow_wait == 0
    assert lockutils.CONF.oslo_concurrency.fairlock_slow_hold == 0
    name = unique()
    internal = lockutils.internal_lock(name)
    # Off means the plain lock: no clock read on acquire, the unchecked release path.
    assert internal._slow_wait is None and internal._slow_hold is None and internal._plain
    with lockutils.lock(name):
        pass
    assert slow_warnings(caplog, name) == []


def test_slow_wait_option_logs_one_warning_with_name_lane_holder_and_seconds(
        conf: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    conf.config(fairlock_slow_wait=0.05, group="oslo_concurrency")
    name = unique()
    waiters = Waiters(name)
    with lockutils.lock(name):
        waiters.add_locker("slow-waiter", lane="migration")
        wait_until(lambda: slow_warnings(caplog, name), "the slow wait is logged while it waits")
    assert waiters.join() == ["slow-waiter"]
    (record,) = slow_warnings(caplog, name)  # once, not once per check
    message = record.getMessage()
    assert f'Lock "{name}" waited on for more than 0.050s by slow-waiter' in message
    assert "in lane migration" in message and f"held by {threading.current_thread().name}" in message
    assert (record.fairlock_lane, record.fairlock_seconds, record.fairlock_event) == (  # type: ignore[attr-defined]
        "migration", 0.05, "slow_wait")
    assert threading.current_thread().name in record.fairlock_holder  # type: ignore[attr-defined]


def test_slow_hold_option_logs_one_warning_at_release(conf: Any, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    conf.config(fairlock_slow_hold=1.0, group="oslo_concurrency")
    now = [100.0]
    monkeypatch.setattr(lockutils.InternalLock, "__init__",
                        _with_clock(lockutils.InternalLock.__init__, lambda: now[0]))
    name = unique()
    with lockutils.lock(name):
        now[0] += 0.5  # under the threshold
    assert slow_warnings(caplog, name) == []
    with fairlock.lane("events"):
        with lockutils.lock(name):
            now[0] += 2.25
    (record,) = slow_warnings(caplog, name)
    assert record.getMessage() == (
        f'Lock "{name}" was held for 2.250s by {record.fairlock_holder} in lane events '  # type: ignore[attr-defined]
        "(slow_hold threshold 1.000s)")
    assert threading.current_thread().name in record.fairlock_holder  # type: ignore[attr-defined]
    assert (record.fairlock_lane, record.fairlock_seconds) == ("events", 2.25)  # type: ignore[attr-defined]


def _with_clock(init: Callable[..., None], clock: Callable[[], float]) -> Callable[..., None]:
    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "clock": clock})
    return patched


def test_slow_thresholds_apply_to_containers_with_their_own_lanes(conf: Any) -> None:
    conf.config(fairlock_slow_wait=2.0, fairlock_slow_hold=3.0, group="oslo_concurrency")
    own = lockutils.Semaphores(lanes=("a", "b")).get(unique())
    assert own.lanes.names == ("a", "b")
    assert (own._slow_wait, own._slow_hold) == (2.0, 3.0)


def test_set_defaults_sets_slow_thresholds(restore_defaults: None) -> None:
    lockutils.set_defaults(fairlock_slow_wait=4, fairlock_slow_hold=0)
    internal = lockutils.internal_lock(unique())
    assert (internal._slow_wait, internal._slow_hold) == (4.0, None)


def test_set_defaults_lock_path_as_oslo(restore_defaults: None, conf: Any) -> None:
    lockutils.set_defaults("/the/path")
    assert lockutils.get_lock_path(lockutils.CONF) == "/the/path"


def test_options_are_shared_with_oslo(restore_defaults: None, conf: Any) -> None:
    """Both modules in one process (os-brick imports oslo's) see one lock_path."""
    oslo_lockutils.set_defaults(lock_path="/from/oslo")
    assert lockutils.get_lock_path(lockutils.CONF) == "/from/oslo"
    conf.config(lock_path="/overridden", group="oslo_concurrency")
    assert oslo_lockutils.get_lock_path(lockutils.CONF) == "/overridden"


def test_list_opts() -> None:
    ((group, opts),) = lockutils.list_opts()
    assert group == "oslo_concurrency"
    assert [opt.name for opt in opts] == [
        "disable_process_locking",
        "lock_path",
        "fairlock_lanes",
        "fairlock_default_lane",
        "fairlock_backend_url",
        "fairlock_max_bypass",
        "fairlock_slow_wait",
        "fairlock_slow_hold",
    ]
    assert next(opt for opt in opts if opt.name == "fairlock_backend_url").secret
    oslo_names = [opt.name for _, group_opts in oslo_lockutils_opts() for opt in group_opts]
    assert [opt.name for opt in opts][:2] == oslo_names


def oslo_lockutils_opts() -> list[tuple[str, list[cfg.Opt]]]:
    from oslo_concurrency import opts

    return opts.list_opts()


# -- positional calls, partials, fixtures ---------------------------------------------------------


def test_positional_arguments_in_oslos_order(lock_dir: str) -> None:
    mine = lockutils.Semaphores()
    name = unique()
    # name, lock_file_prefix, external, lock_path, do_log, semaphores, delay, fair, blocking
    with lockutils.lock(name, "pfx", True, lock_dir, False, mine, 0.02, True, False) as ext:
        assert os.fsdecode(ext.path) == os.path.join(lock_dir, f"pfx-{name}")
        assert mine.get(name).owned()

    # name, lock_file_prefix, external, lock_path, semaphores, delay, fair, blocking
    @lockutils.synchronized(name, "pfx", True, lock_dir, mine, 0.02, True, False)
    def work() -> bool:
        return mine.get(name).owned()

    assert work() is True
    assert work.__name__ == "work"


def test_prefix_partials(lock_dir: str) -> None:
    name = unique()
    with lockutils.lock_with_prefix("nova")(name, external=True) as ext:
        assert os.fsdecode(ext.path) == os.path.join(lock_dir, f"nova-{name}")

    @lockutils.synchronized_with_prefix("nova-")(name, external=True, lane="migration")
    def work() -> str:
        return "ok"

    assert work() == "ok"


def test_lock_fixture_holds_the_lock_through_cleanups(lock_dir: str) -> None:
    name = unique()
    fixture = lock_fixture.LockFixture(name)
    fixture.setUp()
    try:
        assert fixture.lock.exists()
        assert lockutils.internal_lock(name).locked()
    finally:
        fixture.cleanUp()
    assert not lockutils.internal_lock(name).locked()


def test_external_lock_fixture_sets_a_temporary_lock_path() -> None:
    before = lockutils.CONF.oslo_concurrency.lock_path
    with lock_fixture.ExternalLockFixture():
        path = lockutils.CONF.oslo_concurrency.lock_path
        assert path and os.path.isdir(path)
        with lockutils.lock(unique(), external=True):
            pass
    assert lockutils.CONF.oslo_concurrency.lock_path == before
    assert not os.path.exists(path)


# -- bad input: a clear exception, before anything is logged or locked ----------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": 42}, fairlock.ArgumentTypeError),
        ({"name": None}, fairlock.ArgumentTypeError),
        ({"name": ""}, fairlock.InvalidArgumentError),
        ({"lane": "fast"}, fairlock.UnknownLaneError),
        ({"lane": ""}, fairlock.InvalidArgumentError),
        ({"lane": 1}, fairlock.ArgumentTypeError),
        ({"timeout": math.nan}, fairlock.InvalidArgumentError),
        ({"timeout": -1}, fairlock.InvalidArgumentError),
        ({"timeout": -0.5}, fairlock.InvalidArgumentError),
        ({"timeout": "5"}, fairlock.ArgumentTypeError),
        ({"timeout": True}, fairlock.ArgumentTypeError),
        ({"timeout": 1, "blocking": False}, fairlock.InvalidArgumentError),
        ({"blocking": "no"}, fairlock.ArgumentTypeError),
        ({"semaphores": oslo_lockutils.Semaphores()}, fairlock.ArgumentTypeError),
    ],
)
def test_bad_lock_arguments(kwargs: dict[str, Any], error: type[Exception], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    kwargs = {"name": unique(), **kwargs}
    with pytest.raises(error):
        with lockutils.lock(**kwargs):
            pytest.fail("locked despite a bad argument")
    assert lines(caplog) == []
    assert issubclass(error, fairlock.FairlockError)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": b"bytes"}, TypeError),
        ({"name": ""}, ValueError),
        ({"lane": 3}, TypeError),
        ({"timeout": math.nan}, ValueError),
        ({"timeout": -2}, ValueError),
    ],
)
def test_bad_synchronized_arguments_raise_at_decoration(kwargs: dict[str, Any], error: type[Exception]) -> None:
    kwargs = {"name": unique(), **kwargs}
    with pytest.raises(error):
        lockutils.synchronized(**kwargs)


def test_unknown_lane_in_synchronized_raises_at_call() -> None:
    work = lockutils.synchronized(unique(), lane="fast")(_work)  # lanes come from config: call time
    with pytest.raises(fairlock.UnknownLaneError):
        work()


def test_internal_lock_bad_name() -> None:
    with pytest.raises(TypeError):
        lockutils.internal_lock(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lockutils.internal_lock("")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fairlock_default_lane": "fast"},
        {"fairlock_lanes": []},
        {"fairlock_lanes": ["a", "a"]},
        {"fairlock_lanes": "migration,normal"},
        {"fairlock_max_bypass": -1},
    ],
)
def test_bad_set_defaults(kwargs: dict[str, Any], restore_defaults: None) -> None:
    with pytest.raises(fairlock.InvalidArgumentError):
        lockutils.set_defaults(**kwargs)
    assert lockutils.internal_lock(unique()).lanes.names == lockutils.DEFAULT_LANES


def test_bad_configured_lanes_raise_at_first_lock(conf: Any) -> None:
    conf.config(fairlock_default_lane="nope", group="oslo_concurrency")
    with pytest.raises(fairlock.InvalidArgumentError, match="fairlock"):
        with lockutils.lock(unique()):
            pass


def test_bad_external_backend() -> None:
    with pytest.raises(TypeError):
        lockutils.set_external_backend(object())  # type: ignore[arg-type]
    assert isinstance(lockutils.get_external_backend(), lockutils.FileLockBackend)


# -- eventlet -------------------------------------------------------------------------------------

_GREEN_SCRIPT = r"""
import eventlet
eventlet.monkey_patch()
import fairlock
from fairlock import lockutils

order = []
name = "green-lanes"
lock = lockutils.internal_lock(name)

def locker(label, lane=None):
    with lockutils.lock(name, lane=lane, do_log=False):
        order.append(label)

def in_context(label):
    with fairlock.lane("migration"):
        locker(label)

threads = []
with lockutils.lock(name, do_log=False):
    for label, start in (("n1", lambda: eventlet.spawn(locker, "n1")),
                         ("n2", lambda: eventlet.spawn(locker, "n2")),
                         ("m1", lambda: eventlet.spawn(in_context, "m1")),
                         ("e1", lambda: eventlet.spawn(locker, "e1", "events"))):
        expected = lock.statistics().waiting + 1
        threads.append(start())
        while lock.statistics().waiting != expected:
            eventlet.sleep(0)
for thread in threads:
    thread.wait()
try:
    with lockutils.lock(name, timeout=0):
        pass
except lockutils.AcquireLockFailedException:
    raise SystemExit("a free lock refused a timeout=0 acquire")
print(",".join(order))
"""


def test_lanes_and_fifo_under_eventlet() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _GREEN_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "m1,n1,n2,e1"


# -- oslo's reader/writer API: ReaderWriterLock, FairLocks ----------------------------------------


def test_fair_locks_give_fair_reader_writer_locks_with_fasteners_methods() -> None:
    """What nova.utils.FairLockGuard calls on NOVA_FAIR_LOCKS.get(name)."""
    from fairlock.rwlock import ReaderWriterLock

    container = lockutils.FairLocks()
    name = unique()
    rw = container.get(name)
    assert isinstance(rw, lockutils.ReaderWriterLock) and lockutils.ReaderWriterLock is ReaderWriterLock
    assert container.get(name) is rw and len(container) == 1
    assert not rw.is_writer()
    rw.acquire_write_lock()
    assert rw.is_writer() and rw.owner == "w"
    got = []
    thread = threading.Thread(target=lambda: got.append(container.get(name).acquire_write_lock(blocking=False)))
    thread.start()
    thread.join(WAIT_LIMIT)
    assert got == [False]
    rw.release_write_lock()
    assert rw.owner is None
    with lockutils.ReaderWriterLock().write_lock() as writer:
        assert writer.is_writer()
    del rw
    assert len(container) == 0  # held weakly, as oslo's
    # Independent of lock()'s internal locks, as oslo's separate container is.
    with lockutils.lock(name):
        again = container.get(name)
        assert again.acquire_write_lock(blocking=False)
        again.release_write_lock()


def test_fair_locks_refuse_a_bad_name() -> None:
    with pytest.raises(fairlock.ArgumentTypeError):
        lockutils.FairLocks().get(None)  # type: ignore[arg-type]


def test_slow_thresholds_follow_every_kind_of_config_change(conf: Any, restore_defaults: None) -> None:
    """The thresholds are read through oslo.config's value cache: every way of changing them
    (override, clearing it, set_defaults) is seen by the next lock."""
    def thresholds() -> tuple[object, object]:
        internal = lockutils.internal_lock(unique())
        return internal._slow_wait, internal._slow_hold

    assert thresholds() == (None, None)
    assert thresholds() == (None, None)  # now from the cache
    conf.config(fairlock_slow_wait=7.0, group="oslo_concurrency")
    assert thresholds() == (7.0, None)
    lockutils.set_defaults(fairlock_slow_hold=9)
    assert thresholds() == (7.0, 9.0)
    lockutils.CONF.clear_override("fairlock_slow_wait", group="oslo_concurrency")
    assert thresholds() == (None, 9.0)
    lockutils.set_defaults(fairlock_slow_hold=0)
    assert thresholds() == (None, None)


def test_slow_wait_for_the_external_lock_is_warned_once_it_ends(
        conf: Any, caplog: pytest.LogCaptureFixture, backend: _RecordingBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    conf.config(fairlock_slow_wait=5.0, group="oslo_concurrency")
    now = [1000.0]
    monkeypatch.setattr(lockutils, "_clock", lambda: now[0])
    real_acquire = backend.acquire

    def slow_acquire(**kwargs: Any) -> bool:
        now[0] += 7.5  # the holder is on another host
        return real_acquire(**kwargs)

    monkeypatch.setattr(backend, "acquire", slow_acquire)
    name = unique()
    with lockutils.lock(name, external=True, lane="migration"):
        pass
    (record,) = slow_warnings(caplog, name)
    message = record.getMessage()
    assert message.startswith(f'External lock "{name}" waited on for 7.500s by {threading.current_thread().name}')
    assert "in lane migration (then acquired; slow_wait threshold 5.000s)" in message
    assert (record.fairlock_event, record.fairlock_lane, record.fairlock_seconds) == (  # type: ignore[attr-defined]
        "slow_wait_external", "migration", 7.5)
    # Under the threshold, or with the option off: nothing.
    monkeypatch.setattr(backend, "acquire", real_acquire)
    with lockutils.lock(name, external=True):
        pass
    assert len(slow_warnings(caplog, name)) == 1
