"""One worker process of the fault-injection suite: ``python -m benchmarks._fault_worker``.

The spec arrives as one JSON line on stdin (see :data:`DEFAULTS`); further stdin lines are
commands. The worker opens one :class:`~fairlock.etcd.Session` (one lease for the whole process)
and runs ``threads`` loop threads. Each loop thread has its own :class:`~fairlock.etcd.EtcdLock`
on that session, so every request queues in etcd itself and its *ticket* (the revision that
queued it) is its exact place in etcd's order: the checker then judges FIFO and the bypass bound
across all processes. (With one shared ``EtcdLock`` per process, threads would first queue
locally and the etcd waiter's lane would follow the local head: a different, two-level
guarantee.) A process killed or paused past its lease takes every key of all its threads with it.

A loop thread: pick a lane; ask with a long timeout, a short random one (a cancel when it
expires) or not at all (a non-blocking try); in the critical section make ``writes`` writes over
a random hold; release; append one :class:`~fairlock.testing.checker.Grant` line to this worker's
append-only log (flushed per line, outside the lock it judges).

A *write* stamps ``time.monotonic_ns()`` (one clock for every process of the host) and then asks
``lock.is_held()``; if that says False the holder stops writing and the write is not recorded.
The stamp comes first: a True answer at instant c means the session's validity deadline was
still ahead at c, so the write at t <= c was covered by a live lease. Stamped after the check, a
pause between the check and the clock read would date a write checked before the pause to after
it. ``lost_at`` is the earlier of the lost-lock callback and the first False answer (or the
release that raised :class:`~fairlock.etcd.LockLost`). ``check_held: false`` makes a *broken*
worker that never asks (the checker must catch it).

``shared_lock: true`` gives the threads one ``EtcdLock`` per process instead, the shape a service
uses: threads queue locally first and only the local head queues in etcd. Its requests' tickets
then order processes, not threads, and a thread's wait spans both levels, so the parent judges
such a run for safety only (overlaps, tokens, writes after a loss), not for FIFO or the bound.

A lost session (paused past its lease, etcd unreachable for a ttl) is replaced by a new one; the
threads carry on with new locks on it.

Lines on stdout (the parent synchronises on them; times in ns on the shared clock)::

    session <lease id>                      a session was opened (decimal lease id)
    ready <pid>                             the first session is open, threads are starting
    g <token> <start> <thread>              a grant (printed when the critical section starts)
    holding <token> <lease> <start>         the hold thread holds the lock
    lost <token> <lost_at>                  the hold thread was told its lock was lost
    released <token> <end> <held|lost>      the hold thread left its critical section
    hold-failed <reason>                    the hold thread gave up (timeout, error)
    stopped <json>                          after ``stop``: every thread has finished; counts
    result <json>                           after ``close``: the session is closed; leases used

Commands on stdin: ``hold [lane]`` (a dedicated thread acquires, holds and writes every
``write_every_ms`` until ``release``), ``wait [lane]`` (a dedicated thread acquires once, holds
briefly, releases), ``release``, ``stop``, ``close``. End of input means stop and close.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fairlock.testing import checker
from fairlock.etcd import EtcdLock, LockLost, Session, SessionLost
from fairlock.etcd.gateway import GatewayTransport
from fairlock.etcd.transport import (
    Compare,
    Delete,
    EtcdError,
    EtcdUnavailable,
    ForwardingTransport,
    Put,
    Range,
    Transport,
    TxnResult,
)

#: Every spec key and its default.
DEFAULTS: dict[str, Any] = {
    "endpoint": None,  # http://HOST:PORT
    "ttl": 2,
    "prefix": "/fairlock-faults",
    "lock": "faults",
    "worker": "p0",  # holder names are "<worker>-t<i>", "<worker>-hold", "<worker>-wait"
    "threads": 0,
    "lanes": ["high", "normal"],
    "thread_lanes": None,  # the lanes loop threads pick from (default: all of them)
    "max_bypass": 4,
    "log": None,  # the append-only grant log
    "seed": 0,
    "hold_ms": [0.0, 4.0],  # a loop section's random hold
    "writes": 3,  # writes per loop section
    "p_try": 0.0,  # share of non-blocking tries
    "p_short": 0.0,  # share of requests with a short random timeout
    "short_ms": 40.0,  # the short timeout is uniform in [0, short_ms]
    "long_s": 20.0,  # every other request's timeout
    "write_every_ms": 10.0,  # the hold thread's writes
    "check_held": True,  # False: a broken worker that writes without asking is_held()
    "request_timeout": 5.0,  # the gateway transport's timeout per call
    "shared_lock": False,  # True: one EtcdLock per process for all threads (two levels)
}

_now = time.monotonic_ns


class Out:
    """Protocol lines on stdout, one writer at a time."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()

    def say(self, *parts: object) -> None:
        line = " ".join(str(p) for p in parts) + "\n"
        with self._mutex:
            sys.stdout.write(line)
            sys.stdout.flush()


class TicketingTransport(ForwardingTransport):
    """Passes every call on; remembers per thread the ticket of the acquire begun last.

    The ticket is the revision of the transaction that first wrote the request: the one that
    took the free lock (the owner key names our waiter key) or queued our waiter key. When that
    transaction's outcome was unknown (the connection broke), the lock reads back; the read tells
    the ticket too (our waiter key's create revision, or the owner key we created). A request
    whose ticket cannot be told this way (granted before the read-back) keeps None, and the
    parent judges fairness without it.
    """

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self._local = threading.local()

    def begin(self) -> None:
        self._local.key = None
        self._local.ticket = None
        self._local.open = True

    @property
    def ticket(self) -> int | None:
        return getattr(self._local, "ticket", None)

    def _request_key(self, success: Sequence[Any]) -> bytes | None:
        for op in success:
            if isinstance(op, Put) and op.key.endswith(b"/owner"):
                waiter = json.loads(op.value).get("waiter")
                return waiter.encode() if isinstance(waiter, str) else None
        return None

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete | Range],
            failure: Sequence[Put | Delete | Range] = ()) -> TxnResult:
        local = self._local
        if not getattr(local, "open", False):
            return self.inner.txn(compare, success, failure)
        key = self._request_key(success) if compare else None
        if key is not None and local.key in (None, key):
            local.key = key  # the acquire transaction (first try, or a retry after no effect)
            result = self.inner.txn(compare, success, failure)
            local.ticket, local.open = result.revision, False
            return result
        result = self.inner.txn(compare, success, failure)
        if local.key is not None and not compare:
            self._read_back(success, result, local.key)
        return result

    def _read_back(self, ops: Sequence[Any], result: TxnResult, key: bytes) -> None:
        for op, kvs in zip(ops, result.responses):
            if isinstance(op, Range) and op.range_end is None and op.key == key and kvs:
                self._local.ticket, self._local.open = kvs[0].create_revision, False
                return
        # Not queued: either nothing was written (the lock retries the same transaction, which
        # sets the ticket) or we took the lock, or were granted through the queue already. The
        # owner key cannot tell those two apart, so the ticket stays unknown.



class Sessions:
    """The process's one live session; a lost one is replaced (closed outside the mutex)."""

    def __init__(self, spec: dict[str, Any], out: Out) -> None:
        self.spec = spec
        self.out = out
        self._mutex = threading.Lock()
        self.current: Session | None = None
        self.leases: list[int] = []
        self._retired: list[Transport] = []

    def get(self) -> Session:
        retired = None
        with self._mutex:
            session = self.current
            if session is not None and not session.lost and not session.closed:
                return session
            retired, self.current = session, None
            transport = TicketingTransport(GatewayTransport([self.spec["endpoint"]],
                                                            timeout=self.spec["request_timeout"]))
            try:
                session = Session(transport, ttl=self.spec["ttl"], prefix=self.spec["prefix"])
            except BaseException:
                transport.close()
                raise
            self.current = session
            self.leases.append(session.lease_id)
            self.out.say("session", session.lease_id)
        if retired is not None:
            # Its transport stays open until the end: another thread may still be inside a call
            # on a lock of the old session (it learns of the loss from the lock, not from a
            # closed transport).
            _close(retired)
            with self._mutex:
                self._retired.append(retired.transport)
        return session

    def close(self) -> None:
        with self._mutex:
            session, self.current = self.current, None
            transports, self._retired = self._retired, []
        if session is not None:
            _close(session)
            transports.append(session.transport)
        for transport in transports:
            transport.close()


def _close(session: Session) -> None:
    try:
        session.close()  # a lost session's lease was revoked already, or goes by itself
    except EtcdError:
        pass


def ticketing(lock: EtcdLock) -> TicketingTransport:
    transport = lock.session.transport
    assert isinstance(transport, TicketingTransport)
    return transport


class Notices:
    """When the lost-lock callback told us, per fencing token (ns)."""

    def __init__(self) -> None:
        self._told: dict[int, int] = {}

    def lost(self, lock: EtcdLock, token: int | None, reason: str) -> None:
        at = _now()
        if token is not None:
            self._told.setdefault(token, at)

    def told_at(self, token: int) -> int | None:
        return self._told.get(token)


class Slot:
    """One thread's lock on the current session (its own, or the process's shared one)."""

    def __init__(self, worker: Worker, holder: str) -> None:
        self.worker = worker
        self.holder = holder
        self.lock: EtcdLock | None = None
        self.notices = worker.notices if worker.spec["shared_lock"] else Notices()

    def current(self) -> EtcdLock:
        session = self.worker.sessions.get()
        if self.worker.spec["shared_lock"]:
            return self.worker.shared_lock(session)
        if self.lock is None or self.lock.session is not session:
            self.lock = self.worker.new_lock(session, self.notices)
        return self.lock

    def told_at(self, token: int) -> int | None:
        return self.notices.told_at(token)


class Section:
    """One critical section being recorded: writes, and when the holder learned of a loss."""

    def __init__(self, slot: Slot, lock: EtcdLock, lane: str, request: int, check: bool) -> None:
        self.slot = slot
        self.lock = lock
        self.lane = lane
        self.request = request
        self.check = check
        self.start = _now()
        self.ticket = ticketing(lock).ticket
        token = lock.fencing_token
        if token is None:  # lost between the grant and this line (a pause): told at once
            token = lock._token  # the grant's token, kept by the lock until release
            self.lost_check: int | None = _now()
        else:
            self.lost_check = None
        self.token = token
        self.writes: list[int] = []
        self.end: int | None = None
        self.released_lost_at: int | None = None

    def write(self) -> bool:
        """One write: stamp, then check (see the module doc). False once the lock is lost."""
        if self.lost_check is not None:
            return False
        stamp = _now()
        if self.check and not self.lock.is_held():
            self.lost_check = _now()
            return False
        self.writes.append(stamp)
        return True

    def lost_at(self) -> int | None:
        told = None if self.token is None else self.slot.told_at(self.token)
        found = [t for t in (told, self.lost_check, self.released_lost_at) if t is not None]
        return min(found, default=None)

    def release(self) -> bool:
        """End the section; True if the lock was still ours at release."""
        self.end = _now()
        try:
            self.lock.release()
            return True
        except (LockLost, SessionLost):
            self.released_lost_at = _now()
            return False
        except EtcdError as exc:
            self.slot.worker.error(f"{self.slot.holder}: release: {type(exc).__name__}: {exc}")
            return True

    def record(self) -> None:
        assert self.end is not None
        self.slot.worker.append(checker.Grant(
            fencing_token=self.token, holder=self.slot.holder, lane=self.lane, request=self.request,
            start=self.start, end=self.end, ticket=self.ticket, writes=tuple(self.writes),
            lost_at=self.lost_at()))


class Worker:
    def __init__(self, spec: dict[str, Any], out: Out) -> None:
        self.spec = spec
        self.out = out
        self.sessions = Sessions(spec, out)
        self.stopping = threading.Event()
        self._log = open(spec["log"], "a", encoding="utf-8")
        self._log_mutex = threading.Lock()
        self._count_mutex = threading.Lock()
        self.counts = {"grants": 0, "timeouts": 0, "busy": 0, "lost_sections": 0,
                       "lost_waits": 0, "unavailable": 0, "errors": 0}
        self.errors: list[str] = []
        self._release_hold = threading.Event()
        self.threads: list[threading.Thread] = []
        self.notices = Notices()  # the shared lock's
        self._shared: EtcdLock | None = None
        self._shared_mutex = threading.Lock()

    def new_lock(self, session: Session, notices: Notices) -> EtcdLock:
        spec = self.spec
        return EtcdLock(spec["lock"], session, lanes=tuple(spec["lanes"]),
                        max_bypass=spec["max_bypass"], on_lost=notices.lost)

    def shared_lock(self, session: Session) -> EtcdLock:
        """``shared_lock``: one EtcdLock per session for every thread (the two-level lock)."""
        with self._shared_mutex:
            if self._shared is None or self._shared.session is not session:
                self._shared = self.new_lock(session, self.notices)
            return self._shared

    # -- bookkeeping --

    def count(self, name: str) -> None:
        with self._count_mutex:
            self.counts[name] += 1

    def error(self, text: str) -> None:
        with self._count_mutex:
            self.counts["errors"] += 1
            if len(self.errors) < 10:
                self.errors.append(text[:300])

    def append(self, grant: checker.Grant) -> None:
        line = checker.dump_line(grant)
        with self._log_mutex:  # outside the lock: the log never relies on the lock it judges
            self._log.write(line)
            self._log.flush()

    def _backoff(self) -> None:
        self.stopping.wait(0.1)

    # -- acquiring --

    def _acquire(self, slot: Slot, lane: str, blocking: bool, timeout: float) -> tuple[EtcdLock, int] | None:
        """(lock, request time) when granted; None when not (timeout, busy, loss, error)."""
        try:
            lock = slot.current()
            ticketing(lock).begin()
            request = _now()
            got = lock.acquire(blocking, timeout if blocking else -1, lane)
        except (SessionLost, LockLost):
            self.count("lost_waits")  # our lease or key went while we waited: ask again
            return None
        except EtcdUnavailable:
            self.count("unavailable")  # etcd restarting: wait a little and ask again
            self._backoff()
            return None
        except EtcdError as exc:
            self.error(f"{slot.holder}: acquire: {type(exc).__name__}: {exc}")
            self._backoff()
            return None
        if not got:
            self.count("timeouts" if blocking else "busy")
            return None
        self.count("grants")
        return lock, request

    def _granted(self, section: Section) -> None:
        self.out.say("g", section.token, section.start, section.slot.holder)

    def loop(self, i: int, seed: int) -> None:
        spec = self.spec
        pick = random.Random(seed)
        slot = Slot(self, f"{spec['worker']}-t{i}")
        lanes = spec["thread_lanes"] or spec["lanes"]
        low, high = spec["hold_ms"]
        while not self.stopping.is_set():
            lane = pick.choice(lanes)
            draw = pick.random()
            if draw < spec["p_try"]:
                blocking, timeout = False, -1.0
            elif draw < spec["p_try"] + spec["p_short"]:
                blocking, timeout = True, pick.uniform(0, spec["short_ms"]) / 1000.0
            else:
                blocking, timeout = True, spec["long_s"]
            hold = pick.uniform(low, high) / 1000.0
            try:
                granted = self._acquire(slot, lane, blocking, timeout)
                if granted is None:
                    continue
                lock, request = granted
                section = Section(slot, lock, lane, request, spec["check_held"])
                self._granted(section)
                n = max(1, spec["writes"])
                for _ in range(n):
                    if not section.write():
                        break
                    time.sleep(hold / n)
                self._finish(section)
            except Exception as exc:  # a worker thread must not die silently: it is a finding
                self.error(f"{slot.holder}: {type(exc).__name__}: {exc}")
                self._backoff()

    def _finish(self, section: Section) -> bool:
        held = section.release()
        section.record()
        if section.lost_at() is not None:
            self.count("lost_sections")
        return held

    # -- the hold and wait threads --

    def hold(self, lane: str) -> None:
        """Acquire, say ``holding``, write every write_every_ms until ``release`` (or a loss)."""
        spec = self.spec
        slot = Slot(self, f"{spec['worker']}-hold")
        deadline = time.monotonic() + spec["long_s"]
        granted = None
        while granted is None:
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.is_set():
                self.out.say("hold-failed", "timeout")
                return
            granted = self._acquire(slot, lane, True, left)
        lock, request = granted
        section = Section(slot, lock, lane, request, spec["check_held"])
        self._granted(section)
        self.out.say("holding", section.token, lock.session.lease_id, section.start)
        every = spec["write_every_ms"] / 1000.0
        said_lost = False
        while True:
            if not section.write() and section.check:
                break  # told: stop writing
            if section.lost_at() is not None and not said_lost:
                said_lost = True  # a broken worker hears the callback, and writes on
                self.out.say("lost", section.token, section.lost_at())
            if self._release_hold.wait(every) or self.stopping.is_set():
                section.write()  # the last write, just before release
                break
        lost = not self._finish(section)
        lost_at = section.lost_at()
        if lost_at is not None and not said_lost:
            self.out.say("lost", section.token, lost_at)
        self.out.say("released", section.token, section.end, "lost" if lost or lost_at else "held")

    def wait(self, lane: str) -> None:
        spec = self.spec
        slot = Slot(self, f"{spec['worker']}-wait")
        granted = self._acquire(slot, lane, True, spec["long_s"])
        if granted is None:
            return
        lock, request = granted
        section = Section(slot, lock, lane, request, spec["check_held"])
        self._granted(section)
        section.write()
        self._finish(section)

    def start_thread(self, target: Callable[..., None], *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self) -> int:
        deadline = time.monotonic() + self.spec["long_s"] + 30
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.threads)

    # -- the command loop --

    def run(self) -> None:
        rng = random.Random(self.spec["seed"])
        for i in range(self.spec["threads"]):
            self.start_thread(self.loop, i, rng.randrange(1 << 30), name=f"loop-{i}")
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            command, lane = words[0], (words[1] if len(words) > 1 else self.spec["lanes"][0])
            if command == "hold":
                self._release_hold.clear()
                self.start_thread(self.hold, lane, name="hold")
            elif command == "wait":
                self.start_thread(self.wait, lane, name="wait")
            elif command == "release":
                self._release_hold.set()
            elif command == "stop":
                self.stop()
            elif command == "close":
                break
        self.stop()
        self.close()

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._release_hold.set()
        hung = self.join()
        session = self.sessions.current
        alive = session is not None and session.alive()
        self.out.say("stopped", json.dumps({
            **self.counts, "hung": hung, "lease": session.lease_id if session else None,
            "lease_alive": alive}, separators=(",", ":")))

    def close(self) -> None:
        self.sessions.close()
        with self._log_mutex:
            self._log.close()
        self.out.say("result", json.dumps({**self.counts, "errors": self.errors,
                                           "leases": self.sessions.leases}, separators=(",", ":")))


def main() -> int:
    spec = {**DEFAULTS, **json.loads(sys.stdin.readline())}
    out = Out()
    worker = Worker(spec, out)
    deadline = time.monotonic() + 30
    while True:  # etcd may be restarting right now (the soak respawns workers at any time)
        try:
            session = worker.sessions.get()
            break
        except EtcdError as exc:
            if time.monotonic() > deadline:
                out.say("failed", f"{type(exc).__name__}: {exc}"[:300])
                return 1
            time.sleep(0.2)
    out.say("ready", os.getpid(), session.lease_id)
    worker.run()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Watch and keepalive threads need no orderly exit once the result is out.
    os._exit(code)
