"""The fair reader/writer lock: its core (RWQueue) against a naive model, and the threaded lock.

The model states the rule as plainly as possible: the owners are the leading run of the live
tickets in arrival order (the first ticket if it is a write, else every read up to the first
write). Everything else (admission, batching, handoff on cancel and downgrade) follows from it,
and the core must agree with it after every step of arbitrary schedules.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from fairlock import DeadlockError, NotHeldError, NotOwnerError
from fairlock._core import READ, WRITE, RWQueue
from fairlock.errors import ArgumentTypeError, InvalidArgumentError, UnknownTicketError
from fairlock.rwlock import ReaderWriterLock

from .kinds import start, wait_for

# -- the core against the model --------------------------------------------------------------------


def model_owners(live: list[tuple[int, str]]) -> set[int]:
    """The owners the rule implies for these live tickets (arrival order)."""
    if not live:
        return set()
    if live[0][1] == WRITE:
        return {live[0][0]}
    owners = set()
    for ticket, mode in live:
        if mode == WRITE:
            break
        owners.add(ticket)
    return owners


class RWMachine(RuleBasedStateMachine):
    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.queue = RWQueue()
        self.live: list[tuple[int, str]] = []
        self.granted_order: list[int] = []

    def _after(self, before: set[int], granted: tuple[int, ...]) -> None:
        owners = model_owners(self.live)
        assert set(self.queue.owners) == owners
        # Exactly the new owners are reported as granted, each once.
        assert sorted(granted) == sorted(owners - before)
        self.granted_order.extend(sorted(granted))

    @rule(target=tickets, mode=st.sampled_from([READ, WRITE]))
    def request(self, mode: str) -> int:
        before = set(self.queue.owners)
        ticket = self.queue.request(mode)  # type: ignore[arg-type]
        self.live.append((ticket, mode))
        self._after(before, (ticket,) if self.queue.owns(ticket) else ())
        return ticket

    @rule(ticket=consumes(tickets))
    def release_or_cancel(self, ticket: int) -> None:
        before = set(self.queue.owners)
        if self.queue.owns(ticket):
            granted = self.queue.release(ticket)
        else:
            granted = self.queue.cancel(ticket)
        self.live = [(t, m) for t, m in self.live if t != ticket]
        self._after(before - {ticket}, granted)

    @rule(ticket=tickets)
    def downgrade(self, ticket: int) -> None:
        before = set(self.queue.owners)
        if self.queue.mode == WRITE and self.queue.owns(ticket):
            granted = self.queue.downgrade(ticket)
            self.live = [(t, READ if t == ticket else m) for t, m in self.live]
            self._after(before, granted)
        else:
            with pytest.raises(NotOwnerError):
                self.queue.downgrade(ticket)
            assert set(self.queue.owners) == before

    @invariant()
    def owners_are_one_writer_or_readers(self) -> None:
        modes = dict(self.live)
        owners = self.queue.owners
        if self.queue.mode == WRITE:
            assert len(owners) == 1 and modes[next(iter(owners))] == WRITE
        elif self.queue.mode == READ:
            assert owners and all(modes[t] == READ for t in owners)
        else:
            assert not owners

    @invariant()
    def never_free_while_queued_and_head_must_wait(self) -> None:
        queued = [(t, m) for t, m in self.live if not self.queue.owns(t)]
        assert len(self.queue) == len(queued)
        assert self.queue.queued_writers == sum(1 for _, m in queued if m == WRITE)
        if queued:
            assert self.queue.mode is not None
            head_mode = queued[0][1]
            assert head_mode == WRITE or self.queue.mode == WRITE
            assert not self.queue.grantable(READ) and not self.queue.grantable(WRITE)

    @invariant()
    def grants_follow_arrival_order(self) -> None:
        assert self.granted_order == sorted(self.granted_order)


RWMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestRWQueueAgainstModel = RWMachine.TestCase


def test_core_reader_batch_is_granted_together_after_a_writer() -> None:
    queue = RWQueue()
    w1 = queue.request(WRITE)
    r2, r3 = queue.request(READ), queue.request(READ)
    w4 = queue.request(WRITE)
    r5 = queue.request(READ)
    assert queue.release(w1) == (r2, r3)
    assert queue.mode == READ and w4 in queue and r5 in queue
    assert queue.release(r2) == ()
    assert queue.release(r3) == (w4,)
    assert queue.release(w4) == (r5,)


def test_core_cancelled_writer_admits_the_readers_behind_it() -> None:
    queue = RWQueue()
    r1 = queue.request(READ)
    w2 = queue.request(WRITE)
    r3 = queue.request(READ)
    assert queue.owners == {r1} and r3 in queue
    assert queue.cancel(w2) == (r3,)
    assert queue.owners == {r1, r3}


def test_core_illegal_operations_raise_and_change_nothing() -> None:
    queue = RWQueue()
    r1 = queue.request(READ)
    w2 = queue.request(WRITE)
    with pytest.raises(NotOwnerError):
        queue.release(w2)
    with pytest.raises(UnknownTicketError):
        queue.release(99)
    with pytest.raises(UnknownTicketError):
        queue.cancel(99)
    with pytest.raises(NotOwnerError):
        queue.downgrade(r1)
    with pytest.raises(InvalidArgumentError):
        queue.request("x")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        queue.request(None)  # type: ignore[arg-type]
    assert queue.owners == {r1} and w2 in queue and len(queue) == 1


# -- the threaded lock --------------------------------------------------------------------------------


def _waiter(rw: ReaderWriterLock, mode: str, order: list[object], label: object,
            hold: threading.Event | None = None) -> threading.Thread:
    base = rw.waiting()

    def run() -> None:
        if mode == WRITE:
            assert rw.acquire_write_lock()
        else:
            assert rw.acquire_read_lock()
        order.append(label)
        if hold is not None:
            hold.wait(10)
        if mode == WRITE:
            rw.release_write_lock()
        else:
            rw.release_read_lock()

    thread = start(run)
    wait_for(lambda: rw.waiting() == base + 1, what=f"{label} parked")
    return thread


def test_writers_and_reader_batches_in_arrival_order() -> None:
    rw = ReaderWriterLock()
    order: list[object] = []
    rw.acquire_write_lock()
    hold = threading.Event()
    threads = [
        _waiter(rw, READ, order, "r1", hold),
        _waiter(rw, READ, order, "r2", hold),
        _waiter(rw, WRITE, order, "w3"),
        _waiter(rw, READ, order, "r4"),
    ]
    rw.release_write_lock()
    # r1 and r2 hold together (a batch); w3 waits for both, r4 waits for w3.
    wait_for(lambda: len(order) == 2, what="the reader batch")
    assert sorted(order) == ["r1", "r2"] and rw.owner == "r" and rw.has_pending_writers
    hold.set()
    for thread in threads:
        thread.join(10)
    assert order[2:] == ["w3", "r4"]
    assert rw.owner is None and not rw.has_pending_writers


def test_a_reader_does_not_overtake_a_waiting_writer() -> None:
    rw = ReaderWriterLock()
    rw.acquire_read_lock()
    order: list[object] = []
    writer = _waiter(rw, WRITE, order, "w")
    assert rw.has_pending_writers
    # A reader arriving now would starve the writer if it joined: it must queue.
    got = []
    start(lambda: got.append(rw.acquire_read_lock(blocking=False))).join(10)
    assert got == [False]
    reader = _waiter(rw, READ, order, "r")
    rw.release_read_lock()
    writer.join(10)
    reader.join(10)
    assert order == ["w", "r"]


def test_readers_join_readers_while_no_writer_waits() -> None:
    rw = ReaderWriterLock()
    rw.acquire_read_lock()
    got = []
    other = start(lambda: got.append((rw.acquire_read_lock(timeout=5), rw.release_read_lock())))
    other.join(10)
    assert got == [(True, None)]
    rw.release_read_lock()


def test_writer_reenters_and_reads_inside_as_fasteners() -> None:
    rw = ReaderWriterLock()
    with rw.write_lock():
        assert rw.is_writer() and not rw.is_reader()
        with rw.write_lock():
            rw.acquire_write_lock()
            rw.release_write_lock()
            assert rw.is_writer()
        with rw.read_lock():
            assert rw.is_reader() and rw.owner == "w"
        assert rw.is_writer()
    assert not rw.is_writer() and rw.owner is None


def test_a_read_that_outlives_the_write_keeps_a_read_lock() -> None:
    rw = ReaderWriterLock()
    rw.acquire_write_lock()
    rw.acquire_read_lock()
    rw.release_write_lock()
    assert rw.owner == "r" and rw.is_reader() and not rw.is_writer()
    got = []
    start(lambda: got.append((rw.acquire_read_lock(blocking=False), rw.release_read_lock()))).join(10)
    assert got == [(True, None)]
    order: list[object] = []
    writer = _waiter(rw, WRITE, order, "w")
    rw.release_read_lock()
    writer.join(10)
    assert order == ["w"]


def test_reader_reenters_even_while_a_writer_waits() -> None:
    rw = ReaderWriterLock()
    rw.acquire_read_lock()
    order: list[object] = []
    writer = _waiter(rw, WRITE, order, "w")
    assert rw.acquire_read_lock(blocking=False)  # it already holds: no deadlock
    rw.release_read_lock()
    rw.release_read_lock()
    writer.join(10)
    assert order == ["w"]


def test_reader_to_writer_escalation_is_refused() -> None:
    rw = ReaderWriterLock()
    with rw.read_lock():
        with pytest.raises(RuntimeError, match="escalation"):
            rw.acquire_write_lock()
        with pytest.raises(DeadlockError):
            with rw.write_lock():
                pass
        assert rw.is_reader()
    assert rw.owner is None


def test_release_of_what_is_not_held_raises_runtime_error() -> None:
    rw = ReaderWriterLock()
    with pytest.raises(NotHeldError):
        rw.release_write_lock()
    with pytest.raises(NotHeldError):
        rw.release_read_lock()
    rw.acquire_read_lock()
    with pytest.raises(NotOwnerError):
        rw.release_write_lock()
    errors: list[BaseException] = []

    def intruder() -> None:
        try:
            rw.release_read_lock()
        except RuntimeError as exc:
            errors.append(exc)

    start(intruder).join(10)
    assert len(errors) == 1 and isinstance(errors[0], NotOwnerError)
    rw.release_read_lock()
    assert rw.owner is None


def test_timed_out_writer_at_the_head_lets_the_readers_behind_it_in() -> None:
    rw = ReaderWriterLock()
    rw.acquire_read_lock()
    writer_gave_up = threading.Event()
    results: list[bool] = []

    # The writer gives up by its timeout; the test waits on the outcome, never on a sleep.
    def short_writer() -> None:
        results.append(rw.acquire_write_lock(timeout=0.2))
        writer_gave_up.set()

    start(short_writer)
    wait_for(lambda: rw.has_pending_writers, what="writer parked")
    order: list[object] = []
    reader = _waiter(rw, READ, order, "r")
    assert writer_gave_up.wait(10)
    reader.join(10)
    assert results == [False] and order == ["r"]
    assert not rw.has_pending_writers
    rw.release_read_lock()
    assert rw.owner is None


def test_a_waiter_killed_while_queued_or_just_granted_passes_the_lock_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from fairlock import _primitives

    class KilledParker:
        """Parks like a real one, then raises as greenthread.kill or KeyboardInterrupt would."""

        def __init__(self) -> None:
            self.real = real_new_parker()

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            self.real.acquire(blocking, timeout)
            raise KeyboardInterrupt("killed while parked")

        def release(self) -> None:
            self.real.release()

    real_new_parker = _primitives.new_parker
    rw = ReaderWriterLock()
    rw.acquire_write_lock()
    monkeypatch.setattr(_primitives, "new_parker", KilledParker)
    died: list[BaseException] = []

    def victim() -> None:
        try:
            rw.acquire_write_lock()
        except KeyboardInterrupt as exc:
            died.append(exc)

    thread = start(victim)
    wait_for(lambda: rw.waiting() == 1, what="victim parked")
    monkeypatch.setattr(_primitives, "new_parker", real_new_parker)
    order: list[object] = []
    reader = _waiter(rw, READ, order, "r")
    rw.release_write_lock()  # grants the victim, which dies before it runs
    thread.join(10)
    reader.join(10)
    assert len(died) == 1 and order == ["r"]
    assert rw.owner is None and rw.waiting() == 0


def test_non_blocking_and_timeout_arguments_are_checked() -> None:
    rw = ReaderWriterLock()
    with pytest.raises(InvalidArgumentError):
        rw.acquire_write_lock(blocking=False, timeout=1)
    with pytest.raises(ArgumentTypeError):
        rw.acquire_read_lock(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        ReaderWriterLock(current_thread_functor=5)  # type: ignore[arg-type]
    assert rw.owner is None


def test_fasteners_constructor_arguments_are_accepted() -> None:
    identity = threading.current_thread
    rw = ReaderWriterLock(threading.Condition, identity)
    with rw.write_lock():
        assert rw.is_writer()
    assert "free" in repr(rw)


def test_readers_and_writers_exclude_each_other_under_load() -> None:
    """Many threads mixing reads, writes, nested reads and timeouts: a writer is always alone,
    readers may share, and nothing is left held or queued at the end."""
    rw = ReaderWriterLock()
    state = {"readers": 0, "writers": 0, "max_readers": 0}
    guard = threading.Lock()
    violations: list[str] = []
    rounds = 150

    def check(entering: str) -> None:
        with guard:
            if entering == "w-still":
                pass
            elif entering == "w":
                state["writers"] += 1
            else:
                state["readers"] += 1
                state["max_readers"] = max(state["max_readers"], state["readers"])
            if state["writers"] > 1 or (state["writers"] and state["readers"]):
                violations.append(f"{state}")

    def leave(kind: str) -> None:
        with guard:
            state["writers" if kind == "w" else "readers"] -= 1

    def worker(seed: int) -> None:
        for i in range(rounds):
            choice = (seed * 31 + i * 7) % 5
            if choice == 0:
                with rw.write_lock():
                    check("w")
                    with rw.read_lock():  # a writer reads inside
                        threading.Event().wait(0.0005)  # others arrive while it writes
                    check("w-still")
                    leave("w")
            elif choice == 1:
                if rw.acquire_write_lock(timeout=0.001):
                    check("w")
                    leave("w")
                    rw.release_write_lock()
            else:
                with rw.read_lock():
                    check("r")
                    if i % 10 == 0:
                        threading.Event().wait(0.0005)  # let others in while reading
                    leave("r")

    threads = [start(lambda s=s: worker(s)) for s in range(8)]
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert violations == []
    assert rw.owner is None and rw.waiting() == 0 and not rw.has_pending_writers
