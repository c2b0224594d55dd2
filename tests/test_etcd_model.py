"""Property tests of the distributed lock's algorithm over the in-memory etcd model.

In addition to (not instead of) the real-etcd tests in test_etcd_lock.py: hypothesis generates
schedules of 2-6 processes (each its own client, session and lease; one or two threads sharing
its EtcdLock) requesting in any lane with or without a deadline, releasing, timing out, losing
their lease (noticed at once or later), declaring their session lost, restarting, with watches
breaking, history compacted, a process's nth etcd call failing before or after being applied,
and races: a process stopped before its nth etcd call (a release between reading the queue and
granting, a timeout between its check and its cancel, ...) while another process acts. After
every step the world settles (polling state, no sleeps) and tests/etcd_model_world.py checks the
whole etcd history against the grant rule and what every process believes against etcd; at the
end every waiter must get through and no key may be left. ETCD_MODEL_EXAMPLES sets the number of
schedules (500 by default, about 30 s; 4000 for a longer hunt).

Shrunk failures are pinned below as named tests. The teeth: hand-written schedules and a
derandomized search both catch a lock whose grant skips its compare on the waiters, and one
whose release deletes the owner key without the fencing compare.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from fairlock.etcd import EtcdLock, LeaseNotFound, SessionLost
from fairlock.etcd.transport import Compare, Delete

from .etcd_model_world import FAULTS, LANES, World

LANE_CHOICES = st.sampled_from([None, *LANES])
MAX_PROCS = 6
#: Which etcd call of its step a process stops before, in a race; a release's 2nd call is its
#: grant, after reading the queue.
NTH = st.sampled_from([1, 2, 2, 3])
#: What may happen to the process taking a step: nothing; it stops before its nth etcd call (so
#: that other steps run in between, until a resume step); or its nth call of a method fails.
TROUBLE = st.sampled_from([None] * 12 + [("pause", n) for n in (1, 2, 3)]
                          + [(fault, n) for fault in sorted(FAULTS) for n in (1, 2)])


def _pick(data: st.DataObject, procs: list[Any], label: str) -> int:
    # Drawn independently of the candidates, so that a replay whose threads went slightly
    # differently draws the same data (hypothesis insists on that while shrinking).
    n = data.draw(st.integers(0, 2 * MAX_PROCS - 1), label=label)
    return int(procs[n % len(procs)].index) if procs else -1


class EtcdLockMachine(RuleBasedStateMachine):
    lock_class: type[EtcdLock] = EtcdLock

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None

    @initialize(procs=st.integers(2, MAX_PROCS), k=st.sampled_from([0, 1, 2]),
                threads=st.lists(st.sampled_from([1, 1, 2]), min_size=MAX_PROCS, max_size=MAX_PROCS),
                one_lane=st.booleans())
    def setup(self, procs: int, k: int, threads: list[int], one_lane: bool) -> None:
        """``procs`` processes of 1 or 2 threads (two threads share the process's EtcdLock), on a
        lock of three lanes or of one."""
        self.world = World(procs, k, self.lock_class, threads[:procs], lanes=("normal",) if one_lane else LANES)

    def teardown(self) -> None:
        if self.world is None:
            return
        try:
            if not self.world.failed:
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

    # -- rules --------------------------------------------------------------------------------
    # Requests and releases are several rules each, so that they are most of the steps (rules are
    # drawn uniformly, and swarm testing switches whole rules off per example); every disruption
    # is one rule, ``disrupt``, which draws its kind. No rule has a precondition and every rule
    # draws the same data whatever the state: the state depends a little on thread timing, and
    # hypothesis must be able to replay a schedule while shrinking it. A rule nobody can take
    # now does nothing.

    def _trouble(self, i: int, trouble: tuple[str, int] | None) -> None:
        assert self.world is not None
        if trouble is None:
            return
        what, nth = trouble
        if what != "pause":
            self.world.fault(i, what, nth)
        elif not self.world.procs[i].transport.armed:
            self.world.pause(i, nth)

    def _request(self, data: st.DataObject, lane: str | None, mode: str,
                 trouble: tuple[str, int] | None = None) -> None:
        assert self.world is not None
        i = _pick(data, self._procs("idle", armed=None), "proc")
        if i >= 0:
            self._trouble(i, trouble)
            self.world.request(i, lane, mode)

    @rule(data=st.data(), lane=LANE_CHOICES, mode=st.sampled_from(["wait", "timed", "try"]), trouble=TROUBLE)
    def request(self, data: st.DataObject, lane: str | None, mode: str, trouble: tuple[str, int] | None) -> None:
        self._request(data, lane, mode, trouble)

    @rule(data=st.data(), lane=st.sampled_from(LANES))
    def request_waiting(self, data: st.DataObject, lane: str) -> None:
        self._request(data, lane, "wait")

    @rule(data=st.data(), lane=st.sampled_from(LANES))
    def request_timed(self, data: st.DataObject, lane: str) -> None:
        self._request(data, lane, "timed")

    @rule(data=st.data(), trouble=TROUBLE)
    def release(self, data: st.DataObject, trouble: tuple[str, int] | None) -> None:
        assert self.world is not None
        i = _pick(data, self._procs("holding", alive=None, armed=None), "proc")
        if i >= 0:
            self._trouble(i, trouble)
            self.world.release(i)

    @rule(data=st.data())
    def release_again(self, data: st.DataObject) -> None:
        self.release(data, None)

    @rule(data=st.data(), trouble=TROUBLE)
    def timeout(self, data: st.DataObject, trouble: tuple[str, int] | None) -> None:
        assert self.world is not None
        i = _pick(data, [p for p in self._procs("acquiring", alive=None, armed=None) if p.timed], "proc")
        if i >= 0:
            self._trouble(i, trouble)
            self.world.timeout(i)

    @rule(data=st.data(), first=st.sampled_from(["release", "timeout", "request"]), nth=NTH,
          second=st.sampled_from(["request", "request", "release", "timeout", "expire", "silence",
                                  "break-watches"]),
          lane=LANE_CHOICES)
    def race(self, data: st.DataObject, first: str, nth: int, second: str, lane: str | None) -> None:
        """One process's step stops before its nth etcd call; another's runs; then the first goes on."""
        w = self.world
        assert w is not None
        candidates = {
            "release": lambda: self._procs("holding", alive=None, armed=False),
            "timeout": lambda: [p for p in self._procs("acquiring", alive=None, armed=False) if p.timed],
            "request": lambda: self._procs("idle", armed=False),
            "expire": lambda: self._procs(armed=None),
            "silence": lambda: self._procs(armed=None),
            "break-watches": lambda: self._procs(armed=None),
        }
        i = _pick(data, candidates[first](), "first")
        j_drawn = data.draw(st.integers(0, 2 * MAX_PROCS - 1), label="second")
        if i < 0:
            return
        w.pause(i, nth)
        self._step(first, i, lane)
        # The second is chosen now (the first may have changed who can take it), in another process.
        others = [p for p in candidates[second]() if p.process != w.procs[i].process]
        if others:
            self._step(second, others[j_drawn % len(others)].index, lane)
        if w.procs[i].transport.armed:
            w.resume(i)

    def _step(self, kind: str, k: int, lane: str | None) -> None:
        w = self.world
        assert w is not None
        if kind == "release":
            w.release(k)
        elif kind == "timeout":
            w.timeout(k)
        elif kind == "request":
            w.request(k, lane, "wait")
        elif kind == "expire":
            w.expire(k, notice=False)
        elif kind == "silence":
            w.silence(k)
        else:
            w.break_watches()

    @rule(data=st.data(), first=st.sampled_from(["release", "timeout"]), nth=NTH, lane=LANE_CHOICES)
    def race_a_request(self, data: st.DataObject, first: str, nth: int, lane: str | None) -> None:
        self.race(data, first, nth, "request", lane)

    @rule(data=st.data(), notice=st.booleans())
    def holder_expires(self, data: st.DataObject, notice: bool) -> None:
        """A holder's lease expires (its process hangs or is cut off), noticed at once or not yet."""
        assert self.world is not None
        i = _pick(data, self._procs("holding", armed=None), "proc")
        if i >= 0:
            self.world.expire(i, notice)

    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        assert self.world is not None
        i = _pick(data, self._procs(alive=None, armed=True), "proc")
        if i >= 0:
            self.world.resume(i)

    @rule(data=st.data())
    def resume_again(self, data: st.DataObject) -> None:
        self.resume(data)

    @rule(data=st.data())
    def restart_dead(self, data: st.DataObject) -> None:
        """A process whose lease or session is gone starts again (a new session)."""
        assert self.world is not None
        i = _pick(data, self._procs(alive=False, armed=False), "proc")
        if i >= 0:
            self.world.restart(i)

    @rule(data=st.data(), kind=st.sampled_from([
        "pause", "fault", "expire", "expire-noticed", "notice", "silence", "restart", "break-watches",
        "compact"]))
    def disrupt(self, data: st.DataObject, kind: str) -> None:
        w = self.world
        assert w is not None
        if kind in ("break-watches", "compact"):
            w.break_watches() if kind == "break-watches" else w.compact()
            return
        if kind == "notice":
            procs = [p for p in w.procs if not p.session.lost and p.lease not in w.model.leases()]
        elif kind in ("pause", "restart"):
            procs = self._procs(alive=None, armed=False)
        else:
            procs = self._procs(alive=None if kind == "fault" else True, armed=None)
        i = _pick(data, procs, "proc")
        nth = data.draw(st.integers(1, 3), label="nth call") if kind in ("pause", "fault") else 0
        fault = data.draw(st.sampled_from(sorted(FAULTS)), label="fault") if kind == "fault" else ""
        if i < 0:
            return
        if kind == "pause":
            w.pause(i, nth)
        elif kind == "fault":
            w.fault(i, fault, nth)
        elif kind.startswith("expire"):
            w.expire(i, notice=kind == "expire-noticed")
        elif kind == "notice":
            w.notice(i)
        elif kind == "silence":
            w.silence(i)
        else:
            w.restart(i)


#: Examples the search for a broken lock may take (it needs about 100 for each).
TEETH_EXAMPLES = 400

SETTINGS = settings(
    max_examples=int(os.environ.get("ETCD_MODEL_EXAMPLES", "500")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.mark.slow
def test_etcd_lock_schedules() -> None:
    run_state_machine_as_test(EtcdLockMachine, settings=SETTINGS)


# -- shrunk failures, pinned -------------------------------------------------------------------


@contextlib.contextmanager
def world(procs: int = 2, k: int = 0, lock_class: type[EtcdLock] = EtcdLock,
          threads: list[int] | None = None) -> Iterator[World]:
    """A schedule written out by hand: every step settles and checks; the end drains and checks."""
    w = World(procs, k, lock_class, threads)
    try:
        yield w
        if not w.failed:
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


def test_model_checks_leases_of_the_taken_branch_only() -> None:
    from fairlock.testing.etcd_model import ModelTransport
    from fairlock.etcd.transport import Put, Range

    t = ModelTransport()
    lease, _ = t.lease_grant(5)
    t.lease_revoke(lease)
    # Real etcd 3.4 takes the failure branch here (checked against etcd 3.4.23).
    result = t.txn([Compare(b"/x", "version", ">", 0)], [Put(b"/y", b"v", lease=lease)], [Range(b"/x")])
    assert not result.succeeded
    with pytest.raises(LeaseNotFound):  # the branch taken: refused, and nothing written
        t.txn([Compare(b"/x", "version", "=", 0)], [Put(b"/y", b"v", lease=lease)], [])
    assert not t.get_range(b"/y")[1]


# -- teeth: the same checks catch a deliberately broken lock ----------------------------------


class SkipsWaitersCompare(EtcdLock):
    """Broken on purpose: a grant does not check that the waiters are still as it read them."""

    def _try_txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        compare = [c for c in compare if not (c.key == self._wprefix and c.target == "mod_revision")]
        return super()._try_txn(compare, success, failure)


class ReleasesWithoutFencing(EtcdLock):
    """Broken on purpose: a release deletes the owner key without checking it is still ours."""

    def _try_txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        if list(success) == [Delete(self._owner_key)]:
            compare = [c for c in compare if c.key != self._owner_key]
        return super()._try_txn(compare, success, failure)


def grant_from_a_stale_read(lock_class: type[EtcdLock]) -> None:
    with world(3, k=2, lock_class=lock_class) as w:
        w.request(0)
        w.request(1, "low")
        w.pause(0, 2)  # p0's release read the queue (p1 only) and is about to grant
        w.release(0)
        w.request(2, "high")  # a newer, higher-lane waiter arrives
        w.resume(0)  # the rule now chooses p2
        assert w.procs[2].status == "holding"


def release_after_the_lease_expired(lock_class: type[EtcdLock]) -> None:
    with world(2, lock_class=lock_class) as w:
        w.request(0)
        w.expire(0, notice=False)  # p0 does not know yet
        w.request(1)  # the lock is free in etcd: p1 takes it
        w.release(0)  # must not touch p1's owner key
        assert w.procs[1].status == "holding"


@pytest.mark.parametrize(("schedule", "broken", "caught"), [
    (grant_from_a_stale_read, SkipsWaitersCompare, "the rule chooses"),
    (release_after_the_lease_expired, ReleasesWithoutFencing, "not by its owner"),
])
def test_the_checks_catch_a_broken_lock(schedule: Any, broken: type[EtcdLock], caught: str) -> None:
    schedule(EtcdLock)
    with pytest.raises(AssertionError, match=caught):
        schedule(broken)


def _failures(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in _failures(sub)]
    linked = exc.__cause__ or exc.__context__
    return [exc, *(_failures(linked) if linked else [])]


@pytest.mark.parametrize(("broken", "caught"), [
    (SkipsWaitersCompare, "the rule chooses"),
    (ReleasesWithoutFencing, "not by its owner"),
])
def test_the_schedules_find_a_broken_lock(broken: type[EtcdLock], caught: str) -> None:
    machine = type(f"{broken.__name__}Machine", (EtcdLockMachine,), {"lock_class": broken})
    # Derandomized, so the search is the same every run: it finds both after about 100 examples.
    search = settings(SETTINGS, max_examples=TEETH_EXAMPLES, phases=[Phase.generate], derandomize=True,
                      report_multiple_bugs=False)
    with pytest.raises(BaseException) as info:  # noqa: PT011 - which failure is checked below
        run_state_machine_as_test(machine, settings=search)
    messages = [str(e) for e in _failures(info.value)]
    assert any(caught in m for m in messages), messages


def test_two_levels_a_thread_queued_locally_raises_its_process_in_etcd() -> None:
    with world(3, k=2, threads=[1, 2, 1]) as w:  # threads p0 | p1 p2 | p3
        w.request(0)
        w.request(1, "low")  # process 1 queues in etcd, low
        w.request(3, "normal")
        w.request(2, "high")  # queued locally behind p1: process 1's etcd waiter becomes high
        w.release(0)
        assert w.procs[1].status == "holding"  # ahead of p3, by the raised lane
        w.release(1)  # p2 now queues in etcd, behind p3 (granted first)
        assert w.procs[3].status == "holding" and w.procs[2].status == "acquiring"
