"""Property tests of the distributed lock's algorithm over the in-memory etcd model.

In addition to (not instead of) the real-etcd tests in test_etcd_lock.py: hypothesis generates
schedules of 2-5 processes (each its own client, session and lease, one worker thread) requesting
in any lane with or without a deadline, releasing, timing out, losing their lease (noticed at once
or later), declaring their session lost, restarting, with watches breaking, history compacted,
transactions failing before or after being applied, and any process paused before its next etcd
call while the others go on. After every step the world settles (polling etcd state, no sleeps)
and tests/etcd_model_world.py checks the whole etcd history against the grant rule and what every
process believes against etcd; at the end every waiter must get through and no key may be left.

The teeth: the same machine finds the failure when the lock's grant skips its compare on the
waiters, or its release deletes the owner key without the fencing compare.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from fairlock.etcd import EtcdLock, SessionLost
from fairlock.etcd.transport import Compare, Delete

from .etcd_model_world import FAULTS, LANES, OWNER_KEY, World

LANE_CHOICES = st.sampled_from([None, *LANES])


def _pick(data: st.DataObject, procs: list[Any], label: str) -> int:
    return int(data.draw(st.sampled_from([p.index for p in procs]), label=label))


class EtcdLockMachine(RuleBasedStateMachine):
    lock_class: type[EtcdLock] = EtcdLock

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None

    @initialize(procs=st.integers(2, 5), k=st.sampled_from([0, 1, 2]))
    def setup(self, procs: int, k: int) -> None:
        self.world = World(procs, k, self.lock_class)

    def teardown(self) -> None:
        if self.world is None:
            return
        try:
            self.world.drain()
        finally:
            self.world.close()

    # -- which processes can take which step --

    def _procs(self, *statuses: str, alive: bool | None = True, armed: bool | None = False) -> list[Any]:
        w = self.world
        assert w is not None
        return [p for p in w.procs if (not statuses or p.status in statuses)
                and (alive is None or w.alive(p) == alive)
                and (armed is None or p.transport.armed == armed)]

    def _can(self, *statuses: str, **kw: Any) -> bool:
        return self.world is not None and bool(self._procs(*statuses, **kw))

    # -- rules --

    @precondition(lambda self: self._can("idle", armed=None))
    @rule(data=st.data(), lane=LANE_CHOICES, mode=st.sampled_from(["wait", "wait", "timed", "try"]))
    def request(self, data: st.DataObject, lane: str | None, mode: str) -> None:
        assert self.world is not None
        self.world.request(_pick(data, self._procs("idle", armed=None), "proc"), lane, mode)

    @precondition(lambda self: self._can("holding", alive=None, armed=None))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        assert self.world is not None
        self.world.release(_pick(data, self._procs("holding", alive=None, armed=None), "proc"))

    @precondition(lambda self: self.world is not None and any(
        p.timed for p in self._procs("acquiring", alive=None)))
    @rule(data=st.data())
    def timeout(self, data: st.DataObject) -> None:
        assert self.world is not None
        self.world.timeout(_pick(data, [p for p in self._procs("acquiring", alive=None) if p.timed], "proc"))

    @precondition(lambda self: self._can(armed=None))
    @rule(data=st.data(), notice=st.booleans())
    def expire(self, data: st.DataObject, notice: bool) -> None:
        assert self.world is not None
        self.world.expire(_pick(data, self._procs(armed=None), "proc"), notice)

    @precondition(lambda self: self.world is not None and any(
        not p.session.lost and p.lease not in self.world.model.leases() for p in self.world.procs))
    @rule(data=st.data())
    def notice(self, data: st.DataObject) -> None:
        w = self.world
        assert w is not None
        w.notice(_pick(data, [p for p in w.procs if not p.session.lost and p.lease not in w.model.leases()],
                       "proc"))

    @precondition(lambda self: self._can(armed=None))
    @rule(data=st.data())
    def silence(self, data: st.DataObject) -> None:
        assert self.world is not None
        self.world.silence(_pick(data, self._procs(armed=None), "proc"))

    @precondition(lambda self: self._can(alive=None, armed=False))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        assert self.world is not None
        self.world.restart(_pick(data, self._procs(alive=None, armed=False), "proc"))

    @precondition(lambda self: self.world is not None)
    @rule()
    def break_watches(self) -> None:
        assert self.world is not None
        self.world.break_watches()

    @precondition(lambda self: self.world is not None)
    @rule()
    def compact(self) -> None:
        assert self.world is not None
        self.world.compact()

    @precondition(lambda self: self._can(alive=None, armed=None))
    @rule(data=st.data(), fault=st.sampled_from(sorted(FAULTS)))
    def fault(self, data: st.DataObject, fault: str) -> None:
        assert self.world is not None
        self.world.fault(_pick(data, self._procs(alive=None, armed=None), "proc"), fault)

    @precondition(lambda self: self._can(alive=None, armed=False))
    @rule(data=st.data(), nth=st.integers(1, 3))
    def pause(self, data: st.DataObject, nth: int) -> None:
        assert self.world is not None
        self.world.pause(_pick(data, self._procs(alive=None, armed=False), "proc"), nth)

    @precondition(lambda self: self._can(alive=None, armed=True))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        assert self.world is not None
        self.world.resume(_pick(data, self._procs(alive=None, armed=True), "proc"))


SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("ETCD_MODEL_EXAMPLES", "60")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def test_etcd_lock_schedules() -> None:
    run_state_machine_as_test(EtcdLockMachine, settings=SETTINGS)


# -- shrunk failures, pinned -------------------------------------------------------------------


@contextlib.contextmanager
def world(procs: int = 2, k: int = 0, lock_class: type[EtcdLock] = EtcdLock) -> Iterator[World]:
    """A schedule written out by hand: every step settles and checks; the end drains and checks."""
    w = World(procs, k, lock_class)
    try:
        yield w
        w.drain()
    finally:
        w.close()


def outcome(w: World, i: int) -> Any:
    done = w.procs[i].worker.outcome
    assert done is not None
    return done[1]


def test_release_during_an_etcd_outage_does_not_strand_the_lock() -> None:
    # Shrunk: request(p0), fault(p0, txn-unavailable), release(p0). release() raised and left the
    # owner key on p0's live lease: every later waiter hung until p0's process exited.
    with world() as w:
        w.request(0)
        w.request(1)
        w.fault(0, "txn-unavailable")
        w.release(0)
        assert w.procs[1].status == "holding"


def test_grant_racing_the_session_being_declared_lost_raises_session_lost() -> None:
    # Shrunk: pause(p1, 1), request(p1), silence(p1), resume(p1). The session's notice found no
    # holder to tell; acquire() then returned True with is_held() False and no on_lost call.
    with world() as w:
        w.pause(1, 1)
        w.request(1)
        w.silence(1)
        w.resume(1)
        assert isinstance(outcome(w, 1), SessionLost)
        assert not w.procs[1].lock.is_held() and not w.model.keys()


def test_waiter_granted_while_its_session_is_declared_lost_passes_the_lock_on() -> None:
    with world(3) as w:
        w.request(0)
        w.request(1)
        w.request(2)
        w.pause(1, 1)  # p1 is granted, then stops before reading that it was
        w.release(0)
        w.silence(1)
        w.resume(1)
        assert isinstance(outcome(w, 1), SessionLost)
        assert w.procs[2].status == "holding"  # handed on at once, not when p1's lease expires


def test_acquire_whose_answer_is_lost_and_whose_read_back_fails_leaves_no_ghost_owner() -> None:
    with world() as w:
        w.fault(0, "txn-unknown-applied")  # the uncontended grant is applied, the answer lost
        w.fault(0, "txn-unavailable")  # and the read that would tell fails
        w.request(0)
        assert w.procs[0].status == "holding"


def test_acquire_whose_answer_is_lost_and_whose_read_back_fails_leaves_no_ghost_waiter() -> None:
    with world() as w:
        w.request(0)
        w.fault(1, "txn-unknown-applied")  # queued, the answer lost
        w.fault(1, "txn-unavailable")
        w.request(1)
        w.release(0)
        assert w.procs[1].status == "holding"


def test_timeout_during_an_etcd_outage_leaves_no_ghost_waiter() -> None:
    with world() as w:
        w.request(0)
        w.request(1, mode="timed")
        w.fault(1, "txn-unavailable")  # the check at the deadline
        w.fault(1, "txn-unavailable")  # and the withdrawal after it
        w.timeout(1)
        w.release(0)
        assert w.procs[0].status == "idle" and not w.model.keys()


def test_watch_broken_while_a_waiter_sets_up_its_watches_does_not_go_unnoticed() -> None:
    # The break's wake-up came before the waiter cleared its wake-up event, so it slept on a dead
    # watch: granted, it only found out at the 5 s re-check (the settle fails at 4 s).
    with world() as w:
        w.request(0)
        w.pause(1, 3)  # after queuing and watching its own key, before watching the owner key
        w.request(1)
        w.break_watches()
        w.resume(1)
        w.release(0)
        assert w.procs[1].status == "holding"


# -- the model itself --------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="model bug: EtcdModel.txn checks the leases of both branches; "
                   "etcd only those of the branch it takes (the harness works around it)")
def test_model_checks_leases_of_the_branch_not_taken() -> None:
    from fairlock.etcd.model import ModelTransport
    from fairlock.etcd.transport import Put, Range

    t = ModelTransport()
    lease, _ = t.lease_grant(5)
    t.lease_revoke(lease)
    # Real etcd 3.4 takes the failure branch here (checked against etcd 3.4.23).
    result = t.txn([Compare(b"/x", "version", ">", 0)], [Put(b"/y", b"v", lease=lease)], [Range(b"/x")])
    assert not result.succeeded
