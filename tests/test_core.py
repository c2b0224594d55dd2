"""Named, deterministic tests of the fairness core (pinned scenarios and bad input)."""

from __future__ import annotations

import math

import pytest

from fairlock._core import DEFAULT_MAX_BYPASS, GRANT_RULE, FairQueue, Lanes, QueueState, grant_bound
from fairlock.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    NotHeldError,
    NotOwnerError,
    TicketOrderError,
    UnknownLaneError,
    UnknownTicketError,
)


def drain(queue: FairQueue) -> list[tuple[int, str]]:
    order = []
    while queue.owner is not None:
        order.append((queue.owner, queue.owner_lane))
        queue.release()
    return order


def test_free_lock_grants_at_once_and_release_frees() -> None:
    q = FairQueue()
    t = q.request()
    assert q.owner == t and len(q) == 0
    assert q.release(t) is None
    assert q.owner is None


def test_one_lane_is_fifo() -> None:
    q = FairQueue(["only"])
    tickets = [q.request() for _ in range(6)]
    assert [t for t, _ in drain(q)] == tickets


def test_high_lane_overtakes_until_k_then_the_old_waiter_goes() -> None:
    q = FairQueue(("high", "normal", "low"), max_bypass=2)
    holder = q.request("normal")
    low = q.request("low")
    highs = [q.request("high") for _ in range(4)]
    order = [t for t, _ in drain(q)]
    # low is overtaken by two highs, then served before the newer highs.
    assert order == [holder, highs[0], highs[1], low, highs[2], highs[3]]
    assert q.max_overtaken == 2


def test_k_zero_is_fifo_with_lanes() -> None:
    q = FairQueue(("high", "low"), max_bypass=0)
    a = q.request("low")
    b = q.request("low")
    c = q.request("high")
    assert [t for t, _ in drain(q)] == [a, b, c]


def test_strict_priority_never_serves_low_while_high_queued() -> None:
    q = FairQueue(("high", "low"), max_bypass=None)
    q.request("high")
    low = q.request("low")
    for _ in range(20):
        q.request("high")
        q.release()
        assert q.owner != low
    assert q.overtaken(low) == 20


def test_cancel_of_chosen_ticket_passes_the_lock_on() -> None:
    """The classic bug between "chosen" and "running": the lock must not be stranded."""
    q = FairQueue()
    a = q.request()
    b = q.request()
    c = q.request()
    assert q.release(a) == b  # b is chosen (owner) but its thread has not run yet
    assert q.cancel(b) == c  # b gives up: c owns it now
    assert q.owner == c
    assert q.cancel(c) is None and q.owner is None


def test_cancel_queued_keeps_order_and_counts() -> None:
    q = FairQueue(("high", "low"), max_bypass=4)
    q.request("low")
    a = q.request("low")
    b = q.request("low")
    h = q.request("high")
    q.cancel(a)
    order = [t for t, _ in drain(q)][1:]
    assert order == [h, b]


def test_change_lane_keeps_arrival_order() -> None:
    q = FairQueue(("high", "low"))
    q.request("low")
    old = q.request("low")
    h1 = q.request("high")
    h2 = q.request("high")
    q.change_lane(old, "high")
    assert [t for t, _ in drain(q)][1:] == [old, h1, h2]


def test_supplied_tickets_must_increase() -> None:
    q = FairQueue()
    q.request(ticket=10)
    with pytest.raises(TicketOrderError):
        q.request(ticket=10)
    with pytest.raises(ArgumentTypeError):
        q.request(ticket="11")  # type: ignore[arg-type]
    assert q.request(ticket=12) == 12
    assert q.request() == 13


@pytest.mark.parametrize(
    "operation, error",
    [
        (lambda q: FairQueue().release(), NotHeldError),
        (lambda q: q.release(999), NotOwnerError),
        (lambda q: q.cancel(999), UnknownTicketError),
        (lambda q: q.cancel("x"), UnknownTicketError),
        (lambda q: q.request("nope"), UnknownLaneError),
        (lambda q: q.request(1), ArgumentTypeError),
        (lambda q: q.change_lane(2, "nope"), UnknownLaneError),
        (lambda q: q.change_lane(1, "high"), InvalidArgumentError),  # the owner
        (lambda q: q.change_lane(77, "high"), UnknownTicketError),
        (lambda q: q.overtaken(77), UnknownTicketError),
    ],
)
def test_illegal_operations_raise_and_leave_state_unchanged(operation, error) -> None:  # type: ignore[no-untyped-def]
    q = FairQueue()
    q.request()
    q.request("low")
    before = q.snapshot()
    with pytest.raises(error):
        operation(q)
    assert q.snapshot() == before


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"lanes": []}, InvalidArgumentError),
        ({"lanes": "high"}, ArgumentTypeError),
        ({"lanes": ["a", "a"]}, InvalidArgumentError),
        ({"lanes": ["a", ""]}, InvalidArgumentError),
        ({"lanes": ["a", 3]}, ArgumentTypeError),
        ({"max_bypass": -1}, InvalidArgumentError),
        ({"max_bypass": 1.5}, ArgumentTypeError),
        ({"max_bypass": True}, ArgumentTypeError),
    ],
)
def test_bad_configuration(kwargs, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        FairQueue(**kwargs)


def test_lanes_default_and_ranks() -> None:
    lanes = Lanes(("migration", "normal", "events"))
    assert lanes.default == "normal" and lanes.rank("migration") == 0
    assert Lanes(("a", "b", "c")).default == "b"
    with pytest.raises(UnknownLaneError):
        Lanes(("a", "b"), default="z")


def test_snapshot_restore_round_trip_continues_identically() -> None:
    q = FairQueue(("high", "normal", "low"), max_bypass=2)
    q.request()
    for lane in ("low", "normal", "high", "high", "low", "high"):
        q.request(lane)
    q.release()
    copy = FairQueue.restore(q.snapshot())
    assert copy.snapshot() == q.snapshot()
    assert drain(copy) == drain(q)


def test_restore_rejects_inconsistent_state() -> None:
    state = QueueState(("a",), "a", 4, None, None, (), 0, 0, 0)
    FairQueue.restore(state)
    from fairlock._core import WaiterState

    with pytest.raises(InvalidArgumentError):
        FairQueue.restore(QueueState(("a",), "a", 4, None, None, (WaiterState(3, "a", 0),), 3, 0, 0))


def test_documented_rule_and_bound() -> None:
    assert "oldest waiter of the highest-priority non-empty lane" in GRANT_RULE
    assert grant_bound(3, 4) == 7
    assert grant_bound(3, None) == math.inf
    assert DEFAULT_MAX_BYPASS == 4


def test_decide_on_stored_state_matches_queue_release() -> None:
    from fairlock._core import Policy, decide

    policy = Policy.of(("high", "normal", "low"), max_bypass=1)
    q = FairQueue(policy)
    q.request()
    for lane in ("low", "low", "high", "normal", "high"):
        q.request(lane)
    snap = q.snapshot()
    stored = policy.snapshot((w.ticket, policy.encode(w.lane, w.overtaken)) for w in snap.waiters)
    assert stored.damaged == ()
    assert stored.waiters() == [(w.ticket, w.lane, w.overtaken) for w in snap.waiters]
    grant = decide(policy, stored.queue)
    assert grant is not None
    got = q.release()
    assert grant.ticket == got and grant.lane == q.owner_lane
    after = {w.ticket: w.overtaken for w in q.snapshot().waiters}
    before = {w.ticket: w.overtaken for w in snap.waiters}
    assert dict(grant.overtaken) == {t: n for t, n in after.items() if n != before[t]}
    assert decide(policy, policy.snapshot([]).queue) is None


def test_snapshot_refuses_transport_bugs() -> None:
    from fairlock._core import Policy

    policy = Policy.of(("high", "low"))
    ok = policy.encode("low")
    with pytest.raises(InvalidArgumentError):
        policy.snapshot([(3, ok), (3, ok)])
    for ticket in (0, -1, True, "3", 2.0):
        with pytest.raises(InvalidArgumentError):
            policy.snapshot([(ticket, ok)])
    with pytest.raises(UnknownLaneError):
        policy.encode("nope")
    with pytest.raises(InvalidArgumentError):
        policy.encode("low", -1)


@pytest.mark.parametrize("stored", [
    None, "garbage", {}, {"lane": "nope", "overtaken": 0}, {"lane": "high", "overtaken": -1},
    {"lane": "high", "overtaken": True}, {"lane": "high", "overtaken": "2"}, {"lane": 3, "overtaken": 0},
    {"overtaken": 0},
])
def test_damaged_state_makes_a_waiter_due_and_never_lowers_a_count(stored: object) -> None:
    from fairlock._core import Policy, decide

    policy = Policy.of(("high", "low"), max_bypass=2)
    snap = policy.snapshot([(5, policy.encode("low", 1)), (7, stored), (9, policy.encode("high"))])
    assert snap.damaged == (7,)
    # The damaged waiter is due (count K, lowest lane); the older waiter is raised to match it
    # (older waiters count at least as often as younger ones), never the other way round.
    assert snap.waiters() == [(5, "low", 2), (7, "low", 2), (9, "high", 0)]
    grant = decide(policy, snap.queue)
    assert grant is not None and grant.ticket == 5 and grant.overtaken == ()


def test_carried_lane_is_the_highest_queued_behind() -> None:
    from fairlock._core import Policy

    policy = Policy.of(("high", "normal", "low"))
    q = FairQueue(policy)
    q.request("low")
    assert q.carried_lane("low") == "low"
    q.request("normal")
    assert q.carried_lane("low") == "normal" == policy.carried_lane("low", ["normal"])
    assert q.carried_lane("high") == "high" == policy.carried_lane("high", ["normal", "low"])
    with pytest.raises(UnknownLaneError):
        q.carried_lane("nope")


def test_policy_is_checked_once_and_is_a_value() -> None:
    from fairlock._core import Policy

    assert Policy.of() == Policy.of(None, "normal", 4) == Policy(Lanes(), 4)
    assert hash(Policy.of(("a", "b"), "b", 0)) == hash(Policy(Lanes(("a", "b"), "b"), 0))
    with pytest.raises(InvalidArgumentError):
        Policy.of(max_bypass=-1)
    with pytest.raises(ArgumentTypeError):
        Policy(("a",), 1)  # type: ignore[arg-type]
    assert FairQueue(Policy.of(("a", "b"), "a", 2)).policy.max_bypass == 2