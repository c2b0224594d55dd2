"""A world of simulated processes sharing one in-memory etcd, for property tests of EtcdLock.

A process has its own ``ModelTransport`` (one client), ``Session`` (one lease) and ``EtcdLock``,
and one or two threads (:class:`Proc`, each a worker thread: the local lock is owned by a thread,
so acquire and release run on the same one; two threads exercise the lock's two levels). The test
thread is the driver: it submits commands, then *settles*: it waits, by polling etcd and local
state (never a fixed sleep), until every busy thread is done, parked (its process queued in etcd
behind an owner, or queued locally behind its sibling), or paused at a gate the schedule set
(:meth:`RecordingTransport.pause_at`: stopped before its nth etcd call while other steps run).
Then it checks.

What is checked, and from where:

1. **The etcd history** (every revision under the prefix, read from a watch, each revision
   attributed to its writer): every grant is exactly ``decide`` on the waiters present just
   before it (so FIFO within a lane, the K rule, the overtaken counts written); a handoff is
   written only by the current owner, an uncontended grant only on a free lock with no waiter, a
   free only with no waiter queued; nobody deletes or rewrites another process's waiter key
   except a grant; stored overtaken counts equal the true counts; no waiter is overtaken more than
   K times; a waiter that found A waiters queued is granted after at most A + K grants to others.
2. **What processes believe**: an acquire that returns True holds a grant etcd made to its lease
   (each grant claimed once), is ``is_held()`` or was told ``on_lost``; among processes with a live
   lease at most one ``is_held()``, and it is the owner key's, and one thread of it holds; the
   owner key always belongs to a process that holds the lock or is still inside acquire/release
   (or whose session declared itself lost: its lease is about to expire); waiters are never
   stranded (waiter keys and no owner key once everything settled), and a grant is noticed
   within the settle time, which is below the lock's 5 s re-check (a missed wake-up fails);
   exceptions other than the lost-session ones, or an injected fault's, fail.
3. **The end**: every waiter is eventually granted (drain), then no key is left under the prefix
   while the sessions are still open, and none after they close.

Lease expiry runs on the model's clock: the other leases are refreshed (as their keepalive threads
would) and the clock moves just far enough to expire the victim's. Sessions use a ttl of 30 s so
their real keepalive threads (every 10 s) never run during an example; the driver plays them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fairlock._core import Lanes, Policy, decide
from fairlock.etcd import EtcdLock, LockLost, Session, SessionLost
from fairlock.etcd.lock import decode_value, lock_keys
from fairlock.testing.etcd_model import EtcdModel, ModelTransport
from fairlock.etcd.transport import (
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    TxnOutcomeUnknown,
    WatchEvent,
    prefix_end,
)

PREFIX = "/fl"
NAME = "m"
LANES = ("high", "normal", "low")
TTL = 30
#: Real seconds a settle may take before the schedule is declared stuck. Below the lock's 5 s
#: RECHECK_INTERVAL, so a missed wake-up (a waiter saved only by its periodic re-check) fails.
SETTLE_TIMEOUT = 4.0

OWNER_KEY, WPREFIX, WEND = lock_keys(PREFIX.encode(), NAME)
ALL_START = PREFIX.encode() + b"/"
ALL_END = prefix_end(ALL_START)

FAULTS: dict[str, Callable[[], tuple[str, EtcdError, bool]]] = {
    # name -> (method, error, applied before raising)
    "txn-unknown-not-applied": lambda: ("txn", TxnOutcomeUnknown("model: answer lost"), False),
    "txn-unknown-applied": lambda: ("txn", TxnOutcomeUnknown("model: answer lost"), True),
    "txn-unavailable": lambda: ("txn", EtcdUnavailable("model: connection refused"), False),
    "get_range-unavailable": lambda: ("get_range", EtcdUnavailable("model: connection refused"), False),
    "watch-unavailable": lambda: ("watch", EtcdUnavailable("model: connection refused"), False),
}


class RecordingTransport(ModelTransport):
    """A ModelTransport that names the writer of every revision it commits, counts the faults it
    fires, and can pause its caller before its n-th call (so the driver can interleave steps)."""

    def __init__(self, model: EtcdModel, writers: dict[int, tuple[str, int]]) -> None:
        super().__init__(model)
        self.writers = writers
        self.lease = 0
        self.faults_fired = 0
        self._gate_mutex = threading.Lock()
        self._countdown: int | None = None
        self.paused = threading.Event()
        self._open = threading.Event()
        self._delayed: list[list[Any]] = []  # [calls to let through, method, error, applied]

    # -- the gate --

    def pause_at(self, nth: int) -> None:
        with self._gate_mutex:
            self._countdown = nth
            self._open.clear()

    @property
    def armed(self) -> bool:
        return self._countdown is not None or self.paused.is_set()

    def resume(self) -> None:
        with self._gate_mutex:
            self._countdown = None
        self._open.set()
        deadline = time.monotonic() + 10
        while self.paused.is_set():  # until the paused thread has left the gate
            assert time.monotonic() < deadline, "a resumed process did not leave its gate"
            time.sleep(0.0005)

    def fail_later(self, method: str, error: EtcdError, applied: bool, nth: int) -> None:
        """Like fail_next, for the nth next call of ``method``."""
        with self._gate_mutex:
            self._delayed.append([nth, method, error, applied])

    def clear_faults(self) -> None:
        with self.model._mutex, self._gate_mutex:  # _enter consumes faults under the model's mutex
            self._delayed.clear()
            self._faults.clear()

    def _gate(self, method: str) -> None:
        with self._gate_mutex:
            for delayed in list(self._delayed):
                if delayed[1] == method:
                    delayed[0] -= 1
                    if delayed[0] <= 0:
                        self._delayed.remove(delayed)
                        self.fail_next(method, delayed[2], after_apply=delayed[3])
            if self._countdown is None:
                return
            self._countdown -= 1
            if self._countdown > 0:
                return
            self._countdown = None
        self.paused.set()
        try:
            if not self._open.wait(60):
                raise AssertionError("a paused process was never resumed")
        finally:
            self.paused.clear()

    # -- recording --

    def _recorded(self, kind: str, call: Callable[[], Any]) -> Any:
        with self.model._mutex:  # so the writer is known before anyone can see the revision
            before, faults = self.model.revision, len(self._faults)
            try:
                return call()
            finally:
                if len(self._faults) < faults:
                    self.faults_fired += 1
                for revision in range(before + 1, self.model.revision + 1):
                    self.writers[revision] = (kind, self.lease)

    def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        self._gate("txn")

        return self._recorded("txn", lambda: super(RecordingTransport, self).txn(compare, success, failure))

    def get_range(self, key: bytes, range_end: bytes | None = None) -> Any:
        self._gate("get_range")
        return self._recorded("read", lambda: super(RecordingTransport, self).get_range(key, range_end))

    def watch(self, key: bytes, start_revision: int, range_end: bytes | None = None, **kw: Any) -> Any:
        self._gate("watch")
        return self._recorded("watch", lambda: super(RecordingTransport, self).watch(
            key, start_revision, range_end, **kw))

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        lease, granted = super().lease_grant(ttl)
        self.lease = lease
        return lease, granted

    def lease_revoke(self, lease_id: int) -> None:
        self._recorded("revoke", lambda: super(RecordingTransport, self).lease_revoke(lease_id))


class Worker:
    """One thread running one process's commands, one at a time."""

    def __init__(self, name: str) -> None:
        self._commands: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self.done = threading.Event()
        self.done.set()
        self.outcome: tuple[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, command: Callable[[], Any]) -> None:
        assert self.done.is_set(), "a process runs one command at a time"
        self.outcome = None
        self.done.clear()
        self._commands.put(command)

    def _run(self) -> None:
        while (command := self._commands.get()) is not None:
            try:
                self.outcome = ("ok", command())
            except BaseException as exc:  # noqa: BLE001 - judged by the driver
                self.outcome = ("raised", exc)
            self.done.set()

    def stop(self) -> None:
        self._commands.put(None)
        self.thread.join(10)
        assert not self.thread.is_alive(), "a worker thread did not stop"


class FakeClock:
    """A process's monotonic clock for acquire timeouts: moved only by the driver."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Proc:
    """One thread of a process (a process's threads share its transport, session, lock, clock)."""

    index: int
    process: int
    transport: RecordingTransport
    session: Session
    lock: EtcdLock
    clock: FakeClock
    worker: Worker
    status: str = "idle"  # idle | acquiring | holding | releasing
    command: str = ""
    timed: bool = False  # the running acquire has a deadline (only the timeout step reaches it)
    timed_out: bool = False
    nonblocking: bool = False
    token: int | None = None  # what this process believes it holds
    told_lost: list[int] = field(default_factory=list)  # on_lost tokens
    faults_at_start: int = 0
    watches_broken: bool = False  # while the running command waited

    @property
    def lease(self) -> int:
        return self.session.lease_id

    def __repr__(self) -> str:
        return f"p{self.index}({self.lease:x}{'' if self.index == self.process else f' t{self.process}'} {self.status})"


@dataclass
class WaiterInfo:
    ticket: int
    lease: int
    ahead: int  # waiters queued when it arrived
    grants_to_others: int = 0
    overtaken: int = 0


class HistoryCheck:
    """Replays the etcd history revision by revision and checks every write against the rule."""

    def __init__(self, lanes: Lanes, max_bypass: int | None, writers: dict[int, tuple[str, int]]) -> None:
        self.lanes = lanes
        self.max_bypass = max_bypass
        self.writers = writers
        self.kvs: dict[bytes, KeyValue] = {}
        self.waiters: dict[bytes, WaiterInfo] = {}
        self.grants: dict[int, tuple[int, int | None]] = {}  # token -> (lease, ticket or None)
        self.lease_died: dict[int, int] = {}  # lease -> revision at which its keys went
        self.last_revision = 0
        self.log: list[str] = []  # one line per revision, for failure messages

    def feed(self, events: list[WatchEvent]) -> None:
        by_revision: dict[int, list[WatchEvent]] = {}
        for ev in events:
            by_revision.setdefault(ev.kv.mod_revision, []).append(ev)
        for revision in sorted(by_revision):
            assert revision > self.last_revision, f"revision {revision} seen twice or out of order"
            self._revision(revision, by_revision[revision])
            self.last_revision = revision

    def _waiter_kvs(self) -> list[KeyValue]:
        return [kv for k, kv in sorted(self.kvs.items()) if WPREFIX <= k < WEND]

    def _revision(self, r: int, evs: list[WatchEvent]) -> None:
        where = f"revision {r}"
        kind, lease = self.writers.get(r, ("?", 0))
        self.log.append(f"r{r} {kind} by {lease:x}: " + ", ".join(
            f"{ev.type} {ev.kv.key.decode().rsplit('/', 1)[-1][:16]}" for ev in evs))
        for ev in evs:
            assert ev.kv.key == OWNER_KEY or WPREFIX <= ev.kv.key < WEND, f"{where}: stray key {ev.kv.key!r}"
        if kind in ("expire", "revoke"):
            for ev in evs:
                assert ev.type == "DELETE" and self.kvs[ev.kv.key].lease == lease, \
                    f"{where}: the death of lease {lease:x} touched {ev.kv.key!r}"
            self._apply(evs)
            assert not [k for k, kv in self.kvs.items() if kv.lease == lease], f"{where}: lease {lease:x} left keys"
            self.lease_died[lease] = r
            return
        assert kind == "txn", f"{where}: written by {kind} (not a transaction)"
        owner = [ev for ev in evs if ev.kv.key == OWNER_KEY]
        before_owner = self.kvs.get(OWNER_KEY)
        waiters = self._waiter_kvs()
        if owner and owner[0].type == "PUT":
            self._grant(where, r, lease, owner[0].kv, before_owner, waiters, evs)
        elif owner:
            assert before_owner is not None and before_owner.lease == lease, \
                f"{where}: the owner key was deleted by {lease:x}, not by its owner"
            assert not waiters, f"{where}: the lock was freed while {len(waiters)} waiter(s) were queued"
            assert len(evs) == 1, f"{where}: a release wrote more than the owner key"
        else:
            assert len(evs) == 1, f"{where}: {len(evs)} waiter writes in one transaction without a grant"
            self._waiter_write(where, r, lease, evs[0], before_owner, waiters)
        self._apply(evs)
        for k, kv in self.kvs.items():
            if k in self.waiters:
                stored = decode_value(kv).get("overtaken")
                assert stored == self.waiters[k].overtaken, \
                    f"{where}: waiter {k!r} says overtaken={stored}, truly {self.waiters[k].overtaken}"

    def _grant(self, where: str, r: int, lease: int, new: KeyValue, before_owner: KeyValue | None,
               waiters: list[KeyValue], evs: list[WatchEvent]) -> None:
        value = decode_value(new)
        if not waiters:
            assert before_owner is None, f"{where}: the owner key was rewritten with nobody queued"
            assert new.lease == lease and len(evs) == 1, f"{where}: bad uncontended grant"
            self.grants[r] = (new.lease, None)
            return
        if before_owner is not None:
            assert before_owner.lease == lease, \
                f"{where}: handoff written by {lease:x}, but the owner was {before_owner.lease:x}"
        states = []
        for kv in waiters:
            v = decode_value(kv)
            states.append((kv.create_revision, v["lane"], v["overtaken"]))  # well-formed, or KeyError
        policy = Policy(self.lanes, self.max_bypass)
        snap = policy.snapshot((kv.create_revision, decode_value(kv)) for kv in waiters)
        assert snap.damaged == () and snap.waiters() == sorted(states), f"{where}: stored state {states}"
        plan = decide(policy, snap.queue)
        assert plan is not None
        overtaken = dict(plan.overtaken)
        chosen = next(kv for kv in waiters if kv.create_revision == plan.ticket)
        assert value.get("waiter") == chosen.key.decode(), \
            f"{where}: granted {value.get('waiter')}, the rule chooses {chosen.key.decode()} (waiters {states})"
        assert new.lease == chosen.lease, f"{where}: the owner key is not on the chosen waiter's lease"
        assert value.get("lane") == plan.lane, f"{where}: owner lane {value.get('lane')}, plan {plan.lane}"
        for ticket, lane, _ in states:  # FIFO within the lane (implied by the plan; said separately)
            assert not (lane == plan.lane and ticket < plan.ticket), \
                f"{where}: {plan.ticket} granted before the older {ticket} of lane {plan.lane}"
        expected = {(chosen.key, "DELETE")}
        by_ticket = {kv.create_revision: kv for kv in waiters}
        expected |= {(by_ticket[t].key, "PUT") for t in overtaken}
        got = {(ev.kv.key, ev.type) for ev in evs if ev.kv.key != OWNER_KEY}
        assert got == expected, f"{where}: grant wrote {sorted(got)}, the plan writes {sorted(expected)}"
        for ev in evs:
            if ev.type == "PUT" and ev.kv.key != OWNER_KEY:
                assert decode_value(ev.kv)["overtaken"] == overtaken[ev.kv.create_revision]
        chosen_info = self.waiters.pop(chosen.key)
        k = self.max_bypass
        for key, info in self.waiters.items():
            info.grants_to_others += 1
            if plan.ticket > info.ticket:
                info.overtaken += 1
            if k is not None:
                assert info.overtaken <= k, f"{where}: waiter {info.ticket} overtaken {info.overtaken} > K={k}"
                assert info.grants_to_others <= info.ahead + k, (
                    f"{where}: waiter {info.ticket} found {info.ahead} ahead and has waited "
                    f"{info.grants_to_others} grants > A + K")
        assert chosen_info.ticket == plan.ticket
        self.grants[r] = (new.lease, plan.ticket)

    def _waiter_write(self, where: str, r: int, lease: int, ev: WatchEvent, before_owner: KeyValue | None,
                      waiters: list[KeyValue]) -> None:
        key = ev.kv.key
        old = self.kvs.get(key)
        if ev.type == "DELETE":
            assert old is not None and old.lease == lease, \
                f"{where}: waiter key {key!r} deleted by {lease:x}, not its own process"
            self.waiters.pop(key, None)
            return
        if old is None:
            assert ev.kv.lease == lease and ev.kv.create_revision == r, f"{where}: queued under a foreign lease"
            assert before_owner is not None or waiters, f"{where}: queued on a free lock with nobody queued"
            assert not [kv for kv in waiters if kv.lease == lease], f"{where}: two waiter keys of one process"
            assert decode_value(ev.kv).get("overtaken") == 0
            self.waiters[key] = WaiterInfo(r, lease, ahead=len(waiters))
            return
        assert old.lease == lease, f"{where}: waiter key {key!r} rewritten by another process"
        new_v, old_v = decode_value(ev.kv), decode_value(old)
        assert new_v.get("overtaken") == old_v.get("overtaken"), f"{where}: a waiter changed its own count"
        # (The same lane again is a raise re-done after its answer was lost: harmless.)
        assert self.lanes.rank(new_v["lane"]) <= self.lanes.rank(old_v["lane"]), f"{where}: lane lowered"

    def _apply(self, evs: list[WatchEvent]) -> None:
        for ev in evs:
            if ev.type == "PUT":
                self.kvs[ev.kv.key] = ev.kv
            else:
                self.kvs.pop(ev.kv.key, None)
                self.waiters.pop(ev.kv.key, None)


class World:
    """N processes, one model etcd, one lock name. Steps are methods; each ends settled and checked."""

    def __init__(self, procs: int, max_bypass: int | None, lock_class: type[EtcdLock] = EtcdLock,
                 threads: list[int] | None = None, lanes: tuple[str, ...] = LANES) -> None:
        """``procs`` processes; ``threads[n]`` threads in process n (1 each by default): the threads
        of a process share one session and one EtcdLock (its two levels: local queue, one etcd
        waiter). ``procs`` (the list of every thread) is what steps index."""
        self.model = EtcdModel()
        # One lane exercises the FIFO shortcut of a handoff from the holder's view (a newcomer
        # cannot change the decision); several lanes the full guard.
        self.lanes = Lanes(lanes)
        self.max_bypass = max_bypass
        self.lock_class = lock_class
        self.writers: dict[int, tuple[str, int]] = {}
        self.history = HistoryCheck(self.lanes, max_bypass, self.writers)
        self.observer = ModelTransport(self.model)
        self._watch = self.observer.watch(ALL_START, 1, ALL_END)
        self.claims: dict[int, int] = {}  # token -> lease that claimed it
        self.procs: list[Proc] = []
        self.log: list[str] = []
        self.failed = False
        for n in range(procs):
            count = threads[n] if threads else 1
            first = len(self.procs)
            self.procs.extend(self._new_process(list(range(first, first + count))))

    # -- processes --

    def _new_process(self, indices: list[int], workers: list[Worker] | None = None) -> list[Proc]:
        transport = RecordingTransport(self.model, self.writers)
        session = Session(transport, ttl=TTL, prefix=PREFIX)
        clock = FakeClock()
        told: list[int] = []
        lock = self.lock_class(NAME, session, lanes=self.lanes.names, max_bypass=self.max_bypass, clock=clock,
                               on_lost=lambda lock, token, reason: told.append(token))  # type: ignore[misc]
        return [Proc(i, indices[0], transport, session, lock, clock,
                     workers[k] if workers else Worker(f"proc-{i}"), told_lost=told)
                for k, i in enumerate(indices)]

    def threads(self, p: Proc) -> list[Proc]:
        """The threads of p's process (p included)."""
        return [q for q in self.procs if q.process == p.process]

    def alive(self, proc: Proc) -> bool:
        """The process can still take the lock: lease in etcd, session neither lost nor closed."""
        return proc.lease in self.model.leases() and not proc.session.lost and not proc.session.closed

    # -- steps --

    def request(self, i: int, lane: str | None = None, mode: str = "wait") -> None:
        """mode: 'wait' (no timeout), 'timed' (a deadline only the timeout step reaches), 'try'."""
        p = self.procs[i]
        assert p.status == "idle"
        lock = p.lock
        if lane is not None and not self.lanes.knows(lane):
            lane = None  # a schedule drawn for three lanes, run on one
        if mode == "timed" and len(self.threads(p)) > 1:
            mode = "wait"  # a thread queued behind its sibling waits in real time, not on p.clock

        def acquire() -> tuple[bool, int | None, bool]:
            if mode == "try":
                got = lock.acquire(blocking=False, lane=lane)
            else:
                got = lock.acquire(timeout=1000.0 if mode == "timed" else -1, lane=lane)
            return got, lock.fencing_token, lock.is_held()

        p.status, p.command, p.timed, p.timed_out, p.nonblocking = "acquiring", f"acquire({lane}, {mode})", \
            mode == "timed", False, mode == "try"
        self._start(p, acquire)
        self.settle()

    def release(self, i: int) -> None:
        p = self.procs[i]
        assert p.status == "holding"
        p.status, p.command = "releasing", "release()"
        self._start(p, p.lock.release)
        self.settle()

    def timeout(self, i: int) -> None:
        """A timed waiter's deadline passes."""
        p = self.procs[i]
        assert p.status == "acquiring" and p.timed
        p.timed_out = True
        p.clock.now += 2000.0
        wakeup = p.lock._wakeup
        if wakeup is not None:
            wakeup.set()
        self.settle(wait_for=p)

    def expire(self, i: int, notice: bool) -> None:
        """Process i's lease expires (its keepalive stopped reaching etcd); every other process's
        keepalive refreshed in time. ``notice``: its keepalive thread finds out at once."""
        p = self.procs[i]
        model = self.model
        with model._mutex:
            live = model.leases()
            if p.lease in live:
                for lease in live:
                    model.lease_keepalive(lease)
                model.advance(1.0)
                for lease in live:
                    if lease != p.lease:
                        model.lease_keepalive(lease)
                before = model.revision
                model.advance(TTL - 1.0)
                assert p.lease not in model.leases() and set(model.leases()) == set(live) - {p.lease}
                for revision in range(before + 1, model.revision + 1):
                    self.writers[revision] = ("expire", p.lease)
        if notice:
            self.notice(i)
        else:
            self.settle()

    def notice(self, i: int) -> None:
        """Process i's keepalive runs once (finding its lease gone, if it is)."""
        p = self.procs[i]
        try:
            p.session.keepalive_once()
        except LeaseNotFound:
            pass
        self.settle()  # (settled: waiters of a lost session have stopped, see _settled)

    def silence(self, i: int) -> None:
        """Process i's keepalive has failed for a whole ttl: the session declares itself lost, as
        its keepalive thread does; etcd may not have expired the lease yet."""
        p = self.procs[i]
        p.session._mark_lost(f"no keepalive succeeded for {TTL}s (simulated)")
        self.settle()  # (settled: waiters of a lost session have stopped, see _settled)

    def restart(self, i: int) -> None:
        """Process i closes its session (revoking its lease) and starts a new one."""
        p = self.procs[i]
        threads = self.threads(p)
        assert not p.transport.armed
        p.session.close()
        for _ in range(len(threads) + 1):  # a thread queued behind a holder goes on when it releases
            self.settle()
            for q in threads:
                if q.status == "holding":
                    q.status, q.command = "releasing", "release() after close"
                    self._start(q, q.lock.release)
        self.settle(wait_for=threads)
        assert all(q.status == "idle" for q in threads), threads
        p.transport.close()
        for q in self._new_process([q.index for q in threads], [q.worker for q in threads]):
            self.procs[q.index] = q
        self.settle()

    def break_watches(self) -> None:
        for p in self.procs:
            p.watches_broken |= p.status == "acquiring"
        with self.model._mutex:
            self._drain_history()
            self.model.break_watches()
            # Everything up to the current revision was drained above (under the same mutex).
            self._watch = self.observer.watch(ALL_START, self.model.revision + 1, ALL_END)
        self.settle()

    def compact(self) -> None:
        for p in self.procs:  # a waiter that (re)watches from before the compaction is refused
            p.watches_broken |= p.status == "acquiring"
        with self.model._mutex:
            self._drain_history()
            if self.model.revision > self.model.compact_revision:
                self.model.compact()
        self.settle()

    def fault(self, i: int, name: str, nth: int = 1) -> None:
        """Process i's nth next call of the fault's method fails (see FAULTS)."""
        method, error, applied = FAULTS[name]()
        self.procs[i].transport.fail_later(method, error, applied, nth)
        self.settle()

    def pause(self, i: int, nth: int) -> None:
        """Process i stops before its nth next call to etcd, until resumed."""
        self.procs[i].transport.pause_at(nth)
        self.settle()

    def resume(self, i: int) -> None:
        self.procs[i].transport.resume()
        self.settle()

    # -- settling and checking --

    def _start(self, p: Proc, command: Callable[[], Any]) -> None:
        p.faults_at_start = p.transport.faults_fired
        p.watches_broken = False
        self.log.append(f"p{p.index} {p.command}")
        p.worker.submit(command)

    def _settled(self) -> bool:
        kvs = self.model.keys()
        owner = kvs.get(OWNER_KEY)
        waiters = {kv.lease: kv for k, kv in kvs.items() if WPREFIX <= k < WEND}
        # A session that declared itself lost stopped refreshing its lease: its keys go when etcd
        # expires it (the expire step), and until then they may hold the lock up. Nobody else's may.
        dying = {p.lease for p in self.procs if p.session.lost or p.session.closed}
        live_waiters = [lease for lease in waiters if lease not in dying]
        any_paused = any(p.transport.paused.is_set() for p in self.procs)
        for n in sorted({p.process for p in self.procs}):
            threads = [p for p in self.procs if p.process == n]
            busy = [p for p in threads if not p.worker.done.is_set()]
            first = threads[0]
            if not busy or first.transport.paused.is_set():
                continue
            if any(p.status != "acquiring" for p in busy):
                return False  # a release must finish
            queued_locally = first.lock._local.statistics().waiting
            if any(p.status == "holding" for p in threads):
                if queued_locally != len(busy):
                    return False
                continue  # all queued behind their sibling, until it releases
            if first.session.lost or first.session.closed or any(p.timed_out for p in busy):
                return False  # must stop
            if queued_locally != len(busy) - 1 or first.lease not in waiters:
                return False  # one thread queues in etcd for the process, the others behind it
            if owner is None and not any_paused:
                return False  # the crashed owner's key is gone: someone must recover
            if owner is not None and decode_value(owner).get("waiter") == waiters[first.lease].key.decode():
                return False  # granted: it must notice
        return any_paused or owner is not None or not live_waiters

    def settle(self, wait_for: Proc | list[Proc] | None = None) -> None:
        """Wait until every busy thread is done, parked or paused (and those of ``wait_for``
        done or paused); then check."""
        try:
            self._settle([] if wait_for is None else [wait_for] if isinstance(wait_for, Proc) else wait_for)
        except BaseException:
            self.failed = True  # the end (drain) would only fail again, hiding this failure
            raise

    def _settle(self, wait_for: list[Proc]) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            self._collect()
            if self._settled() and all(p.worker.done.is_set() or p.transport.paused.is_set() for p in wait_for):
                self._collect()
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"stuck: did not settle within {SETTLE_TIMEOUT}s: {self.describe()}")
            time.sleep(0.0005)
        self.check()

    def _collect(self) -> None:
        for p in self.procs:
            if p.status in ("acquiring", "releasing") and p.worker.done.is_set():
                outcome = p.worker.outcome
                assert outcome is not None
                self._judge(p, *outcome)

    def _fault_fired(self, p: Proc) -> bool:
        return p.transport.faults_fired > p.faults_at_start

    def _judge(self, p: Proc, how: str, what: Any) -> None:
        where = f"p{p.index} {p.command}"
        lost = p.session.lost or p.session.closed or p.lease not in self.model.leases()
        if how == "raised":
            if isinstance(what, AssertionError):
                raise what
            # LeaseNotFound: the lease died before the session noticed; it says so too.
            # An etcd error still there at the deadline is raised (documented: waiters ride errors
            # out only until their deadline), even a broken or compacted watch that a re-watch
            # would have mended, and even if the grant came in time (it is then passed on).
            expected = (isinstance(what, (LockLost, SessionLost, LeaseNotFound)) and lost) or (
                isinstance(what, EtcdError) and self._fault_fired(p)) or (
                isinstance(what, EtcdError) and p.timed_out and p.watches_broken)
            assert expected, f"{where} raised {what!r} (lease alive: {not lost}, fault fired: {self._fault_fired(p)})"
            p.status, p.token = "idle", None
            self.log.append(f"  p{p.index} raised {type(what).__name__}")
            return
        if p.status == "releasing":
            p.status, p.token = "idle", None
            self.log.append(f"  p{p.index} released")
            return
        got, token, held = what
        self.log.append(f"  p{p.index} acquire -> {got} token {token}")
        if not got:
            assert p.nonblocking or p.timed_out, f"{where} returned False without a timeout"
            p.status = "idle"
            return
        assert token is not None, f"{where} returned True without a fencing token"
        if not held:
            p.session.wait_notices(SETTLE_TIMEOUT)  # on_lost runs on the session's notice thread
        assert held or token in p.told_lost, f"{where} returned True, but is_held() is False and on_lost was not called"
        assert token not in self.claims, f"{where}: token {token} claimed twice"
        self.claims[token] = p.lease
        p.status, p.token = "holding", token

    def _drain_history(self) -> None:
        events = []
        with self.model._mutex:
            while True:
                try:
                    ev = self._watch.get(0)
                except EtcdError:
                    break  # broken by break_watches; reopened there
                if ev is None:
                    break
                events.append(ev)
        self.history.feed(events)

    def check(self) -> None:
        self._drain_history()
        h = self.history
        for token, lease in self.claims.items():
            assert token in h.grants and h.grants[token][0] == lease, \
                f"token {token} claimed by {lease:x}, but etcd granted it to {h.grants.get(token)}"
        kvs = self.model.keys()
        owner = kvs.get(OWNER_KEY)
        live = self.model.leases()
        holding = [p for p in self.procs if p.status == "holding"]
        for p in holding:
            assert len([q for q in self.threads(p) if q.status == "holding"]) == 1, \
                f"two threads of one process hold the lock: {self.threads(p)}"
        believers = [self.threads(p)[0] for p in self.procs if p.index == p.process and p.lock.is_held()]
        live_believers = [p for p in believers if p.lease in live]
        assert len(live_believers) <= 1, f"two live holders: {live_believers}"
        for p in live_believers:
            assert owner is not None and owner.mod_revision == p.lock.fencing_token and owner.lease == p.lease, \
                f"{p} believes it holds token {p.lock.fencing_token}, etcd owner is {owner}: {self.describe()}"
        for p in believers:
            assert p.lease in live or not p.session.lost, f"{p} is_held() after its session was lost"
        if owner is not None and not any(p.transport.paused.is_set() for p in self.procs):
            threads = [p for p in self.procs if p.lease == owner.lease]
            assert threads, f"the owner key belongs to an old incarnation {owner.lease:x}"
            ok = any(p.status in ("holding", "releasing", "acquiring") for p in threads) or threads[0].session.lost
            assert ok, f"stranded: the owner key is {threads}'s, which do not hold the lock ({self.describe()})"
            for p in threads:
                if p.status == "holding" and not p.session.lost:
                    assert owner.mod_revision == p.token, f"{p} holds token {p.token}, etcd says {owner.mod_revision}"

    def describe(self) -> str:
        kvs = self.model.keys()
        lines = [f"revision {self.model.revision}"]
        for k, kv in sorted(kvs.items()):
            lines.append(f"  {k.decode()} lease={kv.lease:x} create={kv.create_revision} {kv.value.decode()}")
        for p in self.procs:
            lines.append(f"  {p!r} cmd={p.command} done={p.worker.done.is_set()} paused={p.transport.paused.is_set()} "
                         f"lost={p.session.lost} outcome={p.worker.outcome!r}")
        lines.append("  log: " + "; ".join(self.log[-30:]))
        lines.append("  etcd: " + "; ".join(self.history.log[-30:]))
        return "\n".join(lines)

    # -- the end --

    def drain(self) -> None:
        """Undo every pause and fault, let every queued waiter through, then check nothing is left."""
        try:
            self._drain()
        except BaseException:
            self.failed = True
            raise

    def _drain(self) -> None:
        for p in self.procs:
            p.transport.clear_faults()
            p.transport.resume()
        self.settle()
        for p in self.procs:  # a session that declared itself lost stopped refreshing: its lease expires
            if p.session.lost and p.lease in self.model.leases():
                self.expire(p.index, notice=False)
        for _ in range(10 * len(self.procs) + 10):
            holders = [p for p in self.procs if p.status == "holding"]
            for p in holders:
                self.release(p.index)
            if all(p.status == "idle" for p in self.procs):
                break
            if not holders:
                self.settle()
        assert all(p.status == "idle" for p in self.procs), f"drain did not finish: {self.describe()}"
        left = self.model.get_range(ALL_START, ALL_END)[1]
        assert not left, f"keys left behind with every session still open: {[kv.key for kv in left]}"

    def close(self) -> None:
        """Close every session and stop every thread (also after a failure)."""
        for p in self.procs:
            p.transport.clear_faults()
            p.transport.resume()
        for p in self.procs:
            p.session.close()
        for _ in range(3):  # a holder that never released keeps its siblings queued locally
            for p in self.procs:
                if not p.worker.done.wait(2):
                    continue
                acquired = p.status == "acquiring" and p.worker.outcome is not None and \
                    p.worker.outcome[0] == "ok" and p.worker.outcome[1][0]
                if p.status == "holding" or acquired:
                    p.status = "idle"
                    p.worker.submit(p.lock.release)
                elif p.status != "holding":
                    p.status = "idle"
        for p in self.procs:
            p.worker.done.wait(5)
            p.worker.stop()
            p.transport.close()
        self.observer.close()
        if not self.failed:
            assert not self.model.get_range(ALL_START, ALL_END)[1], "keys left after every session closed"
            assert not self.model.leases(), "leases left after every session closed"
