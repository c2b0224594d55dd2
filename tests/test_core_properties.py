"""Property tests of the fairness core: starvation freedom, FIFO within a lane, bounded bypass.

The core is checked against tests/core_model.py (a naive, separately written model of the rule)
after every step of arbitrary request / release / cancel / change_lane sequences, and against the
documented wait bound: a waiter that finds A waiters queued ahead of it is granted after at most
A + K grants to others.

The teeth: the same properties run against strict priority (K = infinity) must fail, and
hypothesis must find the starving schedule by itself.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fairlock._core import FairQueue, Lanes, Policy, decide, grant_bound
from fairlock.errors import FairlockError, NotHeldError, UnknownLaneError, UnknownTicketError

from .core_model import Model

LANE_SETS = [("only",), ("high", "low"), ("high", "normal", "low")]


class CoreMachine(RuleBasedStateMachine):
    """Drives FairQueue and the model side by side.

    ``policy_max_bypass`` is what the core runs with; ``promised_max_bypass`` is what the
    invariants hold it to. They are equal for the real suite; the teeth test runs strict priority
    (None) against the promise of the default K.
    """

    policy_max_bypass: int | None | str = "draw"
    promised_max_bypass: int | None | str = "same"

    tickets = Bundle("tickets")

    @initialize(lanes=st.sampled_from(LANE_SETS), k=st.sampled_from([0, 1, 2, 4]), data=st.data())
    def setup(self, lanes: tuple[str, ...], k: int, data: st.DataObject) -> None:
        policy = k if self.policy_max_bypass == "draw" else self.policy_max_bypass
        self.promise = policy if self.promised_max_bypass == "same" else self.promised_max_bypass
        default = data.draw(st.sampled_from(lanes), label="default lane")
        self.queue = FairQueue(Lanes(lanes, default), max_bypass=policy)  # type: ignore[arg-type]
        self.model = Model(lanes, lanes.index(default), policy)  # type: ignore[arg-type]
        self.lane_names = lanes

    # -- rules --------------------------------------------------------------------------------

    @rule(target=tickets, data=st.data())
    def request(self, data: st.DataObject) -> int:
        lane = data.draw(st.one_of(st.none(), st.sampled_from(self.lane_names)), label="lane")
        ticket = self.queue.request(lane)
        assert ticket == self.model.request(lane)
        return ticket

    @precondition(lambda self: self.queue.owner is not None)
    @rule()
    def release(self) -> None:
        expected = self.model.choose()
        got = self.queue.release()
        assert got == self.model.handoff()
        self._check_grant(got, expected)

    @rule(ticket=consumes(tickets))
    def cancel(self, ticket: int) -> None:
        live = ticket == self.model.owner or any(w.ticket == ticket for w in self.model.waiters)
        if not live:
            before = self.queue.snapshot()
            with pytest.raises(UnknownTicketError):
                self.queue.cancel(ticket)
            assert self.queue.snapshot() == before
            return
        was_owner = ticket == self.model.owner
        had_waiters = len(self.queue) > 0
        expected = self.model.choose() if was_owner else None
        got = self.queue.cancel(ticket)
        assert got == self.model.cancel(ticket)
        if was_owner:
            # A chosen ticket that gives up passes the lock on: never stranded.
            assert (self.queue.owner is not None) == had_waiters
            self._check_grant(got, expected)

    @rule(ticket=tickets, data=st.data())
    def change_lane(self, ticket: int, data: st.DataObject) -> None:
        if not any(w.ticket == ticket for w in self.model.waiters):
            return
        lane = data.draw(st.sampled_from(self.lane_names), label="new lane")
        self.queue.change_lane(ticket, lane)
        self.model.change_lane(ticket, lane)

    @rule(bad=st.sampled_from(["release-free", "unknown-lane", "bad-lane-type", "cancel-unknown"]))
    def illegal(self, bad: str) -> None:
        before = self.queue.snapshot()
        if bad == "release-free":
            if self.queue.owner is not None:
                return
            with pytest.raises(NotHeldError):
                self.queue.release()
        elif bad == "unknown-lane":
            with pytest.raises(UnknownLaneError):
                self.queue.request("no-such-lane")
        elif bad == "bad-lane-type":
            with pytest.raises(FairlockError):
                self.queue.request(3)  # type: ignore[arg-type]
        else:
            with pytest.raises(UnknownTicketError):
                self.queue.cancel(10**9)
        assert self.queue.snapshot() == before

    def _check_grant(self, got: int | None, expected_waiter: object) -> None:
        if got is None:
            return
        rank = self.model.owner_rank
        # FIFO within a lane: the granted ticket is older than every waiter left in its lane.
        assert all(w.ticket > got for w in self.model.waiters if w.rank == rank)

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def agrees_with_model(self) -> None:
        snap = self.queue.snapshot()
        assert snap.owner == self.model.owner
        assert [w.ticket for w in snap.waiters] == [w.ticket for w in self.model.waiters]
        assert {w.ticket: w.overtaken for w in snap.waiters} == self.model.overtaken_by_ticket()
        assert {w.ticket: w.lane for w in snap.waiters} == {
            w.ticket: self.lane_names[w.rank] for w in self.model.waiters
        }

    @invariant()
    def decide_on_stored_state_agrees(self) -> None:
        """The etcd lock's path (encode each waiter's state, read it back into a snapshot, decide)
        makes the decision FairQueue's release makes, with the same overtaken counts."""
        policy = self.queue.policy
        snap = self.queue.snapshot()
        stored = policy.snapshot((w.ticket, policy.encode(w.lane, w.overtaken)) for w in snap.waiters)
        assert stored.damaged == ()
        assert stored.waiters() == [(w.ticket, w.lane, w.overtaken) for w in snap.waiters]
        grant = decide(policy, stored.queue)
        assert (grant.ticket if grant else None) == self.queue.peek_next()
        if grant is None or snap.owner is None:
            return
        copy = FairQueue.restore(snap)
        assert copy.release() == grant.ticket and copy.owner_lane == grant.lane
        before = {w.ticket: w.overtaken for w in snap.waiters}
        after = {w.ticket: w.overtaken for w in copy.snapshot().waiters}
        assert dict(grant.overtaken) == {t: n for t, n in after.items() if n != before[t]}
        if policy.max_bypass is not None:
            assert all(n <= policy.max_bypass for _, n in grant.overtaken)

    @invariant()
    def never_free_while_queued(self) -> None:
        if self.queue.owner is None:
            assert len(self.queue) == 0

    @invariant()
    def bypass_bounded(self) -> None:
        if self.promise is None:
            return
        worst = max((w.overtaken for w in self.model.waiters), default=0)
        assert worst <= self.promise, f"a waiter was overtaken {worst} times, promise is {self.promise}"

    @invariant()
    def wait_bounded(self) -> None:
        for w in self.model.waiters:
            assert w.grants_since_arrival <= grant_bound(w.ahead_at_arrival, self.promise), (
                f"ticket {w.ticket} saw {w.grants_since_arrival} grants, bound "
                f"{w.ahead_at_arrival} + {self.promise}"
            )

    @invariant()
    def older_overtaken_at_least_as_often(self) -> None:
        counts = [w.overtaken for w in self.model.waiters]
        assert counts == sorted(counts, reverse=True)


CoreMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCore = CoreMachine.TestCase


# -- @given: arbitrary arrival schedules ---------------------------------------------------------

schedules = st.lists(
    st.one_of(
        st.tuples(st.just("req"), st.integers(0, 2)),
        st.tuples(st.just("rel"), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
    ),
    max_size=80,
)


def replay(schedule: list[tuple[str, int]], policy: int | None, lanes: int = 3) -> list[tuple[int, int, int, int]]:
    """Run a schedule, then drain the queue. Returns (ticket, lane rank, ahead, grants_waited)."""
    names = ("high", "normal", "low")[:lanes]
    queue = FairQueue(Lanes(names, names[-1]), max_bypass=policy)
    info: dict[int, list[int]] = {}  # ticket -> [rank, ahead at arrival, grants to others seen]
    served: list[tuple[int, int, int, int]] = []
    issued: list[int] = []

    def granted(ticket: int | None) -> None:
        if ticket is None:
            return
        rank, ahead, seen = info.pop(ticket)
        served.append((ticket, rank, ahead, seen))
        for other in info.values():
            other[2] += 1

    for op, arg in schedule:
        if op == "req":
            ahead = len(queue)
            lane = names[min(arg, lanes - 1)]
            ticket = queue.request(lane)
            issued.append(ticket)
            info[ticket] = [names.index(lane), ahead, 0]
            if queue.owner == ticket:
                granted(ticket)
        elif op == "rel" and queue.owner is not None:
            granted(queue.release())
        elif op == "cancel" and issued:
            ticket = issued[arg % len(issued)]
            if ticket in queue:
                queue.cancel(ticket)
                info.pop(ticket)
    while queue.owner is not None:
        granted(queue.release())
    assert not info, "every waiter that did not cancel is eventually granted"
    return served


@settings(max_examples=400, deadline=None)
@given(schedule=schedules, k=st.integers(0, 6))
def test_every_waiter_granted_within_bound(schedule: list[tuple[str, int]], k: int) -> None:
    for ticket, rank, ahead, waited in replay(schedule, k):
        assert waited <= ahead + k, f"ticket {ticket} (lane {rank}) waited {waited} grants, bound {ahead}+{k}"


@settings(max_examples=200, deadline=None)
@given(schedule=schedules)
def test_one_lane_is_fifo(schedule: list[tuple[str, int]]) -> None:
    served = replay(schedule, 4, lanes=1)
    tickets = [t for t, *_ in served]
    assert tickets == sorted(tickets)


@settings(max_examples=200, deadline=None)
@given(schedule=schedules)
def test_k_zero_is_fifo_whatever_the_lanes(schedule: list[tuple[str, int]]) -> None:
    served = replay(schedule, 0)
    tickets = [t for t, *_ in served]
    assert tickets == sorted(tickets)


# -- teeth: strict priority must fail these properties -----------------------------------------


@pytest.mark.slow
def test_strict_priority_starves_and_hypothesis_finds_it() -> None:
    """With K = infinity a low-lane waiter can be overtaken without bound; hypothesis finds it."""
    promise = 4

    def starves(schedule: list[tuple[str, int]]) -> bool:
        return any(waited > ahead + promise for _, _, ahead, waited in replay(schedule, None))

    found = find(schedules, starves, settings=settings(max_examples=5000, deadline=None, database=None))
    starving = [(t, rank, ahead, waited) for t, rank, ahead, waited in replay(found, None) if waited > ahead + promise]
    assert starving, found
    ticket, rank, ahead, waited = starving[0]
    assert rank > 0, "the starved waiter is in a lower lane"
    # The same schedule is harmless under the bounded policy.
    assert all(w <= a + promise for _, _, a, w in replay(found, promise))


class StrictPriorityMachine(CoreMachine):
    policy_max_bypass = None
    promised_max_bypass = 4


@pytest.mark.slow
def test_state_machine_catches_strict_priority() -> None:
    with pytest.raises(AssertionError, match="overtaken|grants, bound"):
        run_state_machine_as_test(
            StrictPriorityMachine,
            # Finding is the point here (the minimal schedule is shown by the test above), so skip
            # shrinking, which is slow for state machines.
            settings=settings(
                max_examples=2000, stateful_step_count=60, deadline=None, database=None,
                phases=[Phase.generate],
            ),
        )


# -- damaged stored state (what an etcd reader may find) never weakens the K bound ---------------

stored_states = st.one_of(
    st.just("valid"), st.just("valid"), st.just("valid"),
    st.sampled_from([None, "junk", {}, {"lane": "nope", "overtaken": 0}, {"lane": "high", "overtaken": -3},
                     {"lane": "low", "overtaken": "1"}, {"lane": "normal", "overtaken": 99}]),
)


@settings(max_examples=300, deadline=None)
@given(arrivals=st.lists(st.tuples(st.sampled_from(["high", "normal", "low"]), stored_states), max_size=30),
       k=st.integers(0, 4), releases_between=st.integers(0, 3))
def test_decide_over_damaged_snapshots_keeps_the_bound(arrivals: list[tuple[str, object]], k: int,
                                                       releases_between: int) -> None:
    """Waiters stored as an etcd lock stores them, some with damaged state; every grant is
    ``decide`` on the snapshot read back and its changes are written back, as the etcd lock does.
    Counted independently here: no waiter is overtaken more than K times."""
    policy = Policy.of(("high", "normal", "low"), max_bypass=k)
    store: dict[int, object] = {}
    overtaken: dict[int, int] = {}

    def grant_one() -> None:
        grant = decide(policy, policy.snapshot(store.items()).queue)
        if grant is None:
            return
        del store[grant.ticket]
        for t in store:
            if t < grant.ticket:
                overtaken[t] += 1
        for t, n in grant.overtaken:
            assert t < grant.ticket and t in store
            store[t] = policy.encode(policy.decode(store[t]).lane if not policy.decode(store[t]).damaged
                                     else policy.lanes.names[-1], n)
        assert all(overtaken[t] <= k for t in store), overtaken

    for ticket, (lane, state) in enumerate(arrivals, start=1):
        store[ticket] = policy.encode(lane) if state == "valid" else state
        overtaken[ticket] = 0
        if ticket % (releases_between + 1) == 0:
            grant_one()
    while store:
        grant_one()


# -- Policy.fifo: when a later arrival cannot change a decision ------------------------------------

queues = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 6)), max_size=12)


def _queue(waiters: list[tuple[int, int]], lanes: int) -> list[dict[int, int]]:
    """Waiters (lane rank, overtaken) in arrival order -> decide's input (tickets from 1)."""
    queue: list[dict[int, int]] = [{} for _ in range(lanes)]
    for ticket, (rank, overtaken) in enumerate(waiters, start=1):
        queue[rank % lanes][ticket] = overtaken
    return queue


@given(waiters=queues, newcomer=st.integers(0, 2), lanes=st.integers(1, 3), k=st.integers(0, 4))
def test_a_fifo_policy_is_not_changed_by_a_later_arrival(waiters: list[tuple[int, int]], newcomer: int,
                                                         lanes: int, k: int) -> None:
    """What lets the etcd lock hand over on an older view of its queue (_grant_txn)."""
    policy = Policy.of(LANE_SETS[lanes - 1], max_bypass=k)
    before = _queue(waiters, lanes)
    after = _queue([*waiters, (newcomer, 0)], lanes)
    if policy.fifo:
        assert decide(policy, before) == decide(policy, after) or not waiters


def test_fifo_is_exactly_when_a_newcomer_cannot_change_the_grant() -> None:
    # Teeth: with several lanes and K > 0 a newer high-lane waiter changes the grant.
    policy = Policy.of(("high", "low"), max_bypass=4)
    assert not policy.fifo
    assert decide(policy, [{}, {1: 0}]).ticket == 1
    assert decide(policy, [{2: 0}, {1: 0}]).ticket == 2
    assert Policy.of(("only",)).fifo and Policy.of(("high", "low"), max_bypass=0).fifo
