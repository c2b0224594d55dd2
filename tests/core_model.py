"""A reference model of the grant rule, written separately from fairlock._core on purpose.

It follows the rule's sentence literally and naively (O(n) scans everywhere), so agreement with
the optimised core is evidence that the core's shortcuts (looking only at the oldest waiter,
touching only lane prefixes) are sound.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelWaiter:
    ticket: int
    rank: int
    overtaken: int = 0
    ahead_at_arrival: int = 0
    grants_since_arrival: int = 0


@dataclass
class Model:
    lanes: tuple[str, ...]
    default_rank: int
    max_bypass: int | None
    owner: int | None = None
    owner_rank: int | None = None
    waiters: list[ModelWaiter] = field(default_factory=list)  # arrival order
    last: int = 0
    grants: list[tuple[int, int]] = field(default_factory=list)  # (ticket, rank) in grant order

    def request(self, lane: str | None) -> int:
        rank = self.default_rank if lane is None else self.lanes.index(lane)
        self.last += 1
        if self.owner is None:
            self.owner, self.owner_rank = self.last, rank
            self.grants.append((self.last, rank))
        else:
            self.waiters.append(ModelWaiter(self.last, rank, ahead_at_arrival=len(self.waiters)))
        return self.last

    def choose(self) -> ModelWaiter | None:
        if not self.waiters:
            return None
        best_rank = min(w.rank for w in self.waiters)
        head = min((w for w in self.waiters if w.rank == best_rank), key=lambda w: w.ticket)
        if self.max_bypass is None:
            return head
        saturated = [w for w in self.waiters if w.overtaken >= self.max_bypass and w.ticket < head.ticket]
        if saturated:
            return min(saturated, key=lambda w: w.ticket)
        return head

    def handoff(self) -> int | None:
        chosen = self.choose()
        if chosen is None:
            self.owner = self.owner_rank = None
            return None
        self.waiters.remove(chosen)
        for w in self.waiters:
            w.grants_since_arrival += 1
            if w.ticket < chosen.ticket:
                w.overtaken += 1
        self.owner, self.owner_rank = chosen.ticket, chosen.rank
        self.grants.append((chosen.ticket, chosen.rank))
        return chosen.ticket

    def cancel(self, ticket: int) -> int | None:
        if ticket == self.owner:
            return self.handoff()
        self.waiters = [w for w in self.waiters if w.ticket != ticket]
        return None

    def change_lane(self, ticket: int, lane: str) -> None:
        for w in self.waiters:
            if w.ticket == ticket:
                w.rank = self.lanes.index(lane)

    def overtaken_by_ticket(self) -> dict[int, int]:
        return {w.ticket: w.overtaken for w in self.waiters}
