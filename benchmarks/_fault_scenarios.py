"""The fault scenarios and the soak (see ``benchmarks.faults`` for what each one shows)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._fault_run import Child, FaultError, Outcome, Run, now_ns, ns_to_s

__all__ = ["GRACE", "SCENARIOS", "FAULT_KINDS", "Delay", "ScenarioResult", "Fault", "SoakResult",
           "holder_kill", "waiter_kill", "holder_pause", "cancels", "soak"]

#: Slack over the lease TTL for "the next waiter acquires" (the issue's bound: TTL + 1 s).
GRACE = 1.0


@dataclass(frozen=True)
class Delay:
    label: str
    seconds: float | None  # None: it did not happen within the wait
    bound: float | None = None

    @property
    def ok(self) -> bool:
        return self.seconds is not None and (self.bound is None or self.seconds <= self.bound)


@dataclass
class ScenarioResult:
    name: str
    delays: list[Delay]
    outcome: Outcome
    checks: dict[str, bool] = field(default_factory=dict)  # facts the scenario must show
    facts: dict[str, Any] = field(default_factory=dict)
    broken: bool = False  # a deliberately broken worker: the checker must flag the run

    @property
    def ok(self) -> bool:
        if self.broken:
            return not self.outcome.report.ok
        return self.outcome.clean and all(d.ok for d in self.delays) and all(self.checks.values())

    def delay(self, label_start: str) -> float | None:
        return next(d.seconds for d in self.delays if d.label.startswith(label_start))


def holder_kill(endpoint: str, *, ttl: int = 2, waiters: int = 2, seed: int = 0,
                max_bypass: int | None = 4, prefix: str | None = None,
                log_dir: str | None = None) -> ScenarioResult:
    """SIGKILL the holder while another process waits: the next grant comes within TTL + 1 s."""
    with Run(endpoint, ttl=ttl, max_bypass=max_bypass, prefix=prefix, log_dir=log_dir,
             seed=seed) as run:
        survivor = run.spawn("survivor", threads=waiters)
        holder = run.spawn("holder")
        run.ready(survivor, holder)
        token, _ = run.hold(holder)
        run.queued(survivor)
        killed = run.kill(holder)
        (start, next_token, _), = run.wait_grants(killed, exclude=holder, timeout=ttl + 15)
        run.wait_grants(start + 1, n=3, exclude=holder, timeout=30)  # the queue keeps moving
        outcome = run.finish()
    after = [r for r in outcome.records if r.start >= killed]
    return ScenarioResult(
        "holder-kill",
        [Delay("SIGKILL of the holder -> next grant", ns_to_s(start - killed), ttl + GRACE)],
        outcome,
        checks={"next token larger": next_token > token, "grants after the kill": len(after) >= 4},
        facts={"killed token": token, "next token": next_token, "grants after": len(after)})


def waiter_kill(endpoint: str, *, ttl: int = 2, waiters: int = 2, seed: int = 0,
                max_bypass: int | None = 4, prefix: str | None = None,
                log_dir: str | None = None) -> ScenarioResult:
    """SIGKILL the oldest (high-lane) waiter, then release at once: the lock is handed to the
    dead waiter; its keys go with its lease and the queue moves on within TTL + 1 s."""
    with Run(endpoint, ttl=ttl, max_bypass=max_bypass, prefix=prefix, log_dir=log_dir,
             seed=seed) as run:
        holder = run.spawn("holder")
        victim = run.spawn("victim")
        others = run.spawn("others", threads=waiters, thread_lanes=[run.lanes[-1]])
        run.ready(holder, victim, others)
        token, _ = run.hold(holder)
        victim.send(f"wait {run.lanes[0]}")
        run.queued(victim)
        run.queued(others)
        lease = victim.lease
        killed = run.kill(victim)
        released = int(run.release(holder)[2])
        (start, _, child), = run.wait_grants(released, exclude=victim, timeout=ttl + 15)
        gone = run.poll(lambda: not any(kv.lease == lease for kv in run.keys()), ttl + 15,
                        "the killed waiter's keys to go")
        run.wait_grants(start + 1, n=3, exclude=victim, timeout=30)
        outcome = run.finish()
    return ScenarioResult(
        "waiter-kill",
        [Delay("SIGKILL of a waiter -> its keys gone", ns_to_s(gone - killed), ttl + GRACE),
         Delay("release to the dead waiter -> next grant", ns_to_s(start - released), ttl + GRACE)],
        outcome,
        checks={"victim never granted": not any(r.holder.startswith("victim") for r in outcome.records),
                "next grant to a live waiter": child is others},
        facts={"holder token": token})


def _sleep_past(stopped: int, ttl: int) -> None:
    """Keep a paused holder stopped for longer than the ttl (the fault's definition): its lease
    may expire up to ttl/3 before that, when its last refresh came just before the SIGSTOP."""
    left = ns_to_s(stopped - now_ns()) + ttl + 0.25
    if left > 0:
        time.sleep(left)


def holder_pause(endpoint: str, *, ttl: int = 2, waiters: int = 2, seed: int = 0,
                 check_held: bool = True, max_bypass: int | None = 4, prefix: str | None = None,
                 log_dir: str | None = None) -> ScenarioResult:
    """SIGSTOP the holder until another process holds the lock (> TTL), then SIGCONT.

    ``check_held=False``: the paused holder is a broken worker that writes without asking
    ``is_held()`` (and writes once more when it releases): the checker must flag the run.
    """
    with Run(endpoint, ttl=ttl, max_bypass=max_bypass, prefix=prefix, log_dir=log_dir,
             seed=seed) as run:
        survivor = run.spawn("survivor", threads=waiters)
        holder = run.spawn("holder", check_held=check_held)
        run.ready(survivor, holder)
        token, _ = run.hold(holder)
        run.queued(survivor)
        since = holder.mark()
        stopped = run.pause(holder)
        (start, next_token, _), = run.wait_grants(stopped, exclude=holder, timeout=ttl + 15)
        _sleep_past(stopped, ttl)
        resumed = run.resume(holder)
        lost_at = int(holder.expect("lost", 15, since)[2])
        holder.send("release")  # a correct holder has let go already; a broken one writes once more
        holder.expect("released", 30, since)
        run.wait_grants(start + 1, n=3, exclude=holder, timeout=30)
        outcome = run.finish()
    stale = [r for r in outcome.records if r.holder.startswith("holder") and r.fencing_token == token]
    return ScenarioResult(
        "holder-pause" if check_held else "holder-pause (broken worker)",
        [Delay("SIGSTOP of the holder -> next grant", ns_to_s(start - stopped), ttl + GRACE),
         Delay("SIGCONT -> lost notice", ns_to_s(lost_at - resumed), GRACE)],
        outcome,
        checks={"paused past the ttl": ns_to_s(resumed - stopped) > ttl,
                "next token larger": next_token > token,
                "stale holder recorded as lost": len(stale) == 1 and stale[0].lost_at is not None},
        facts={"paused s": ns_to_s(resumed - stopped), "stale token": token, "next token": next_token},
        broken=not check_held)


def cancels(endpoint: str, *, ttl: int = 2, processes: int = 3, threads: int = 4,
            seconds: float = 5.0, seed: int = 0, max_bypass: int | None = 4,
            prefix: str | None = None, log_dir: str | None = None) -> ScenarioResult:
    """Random short timeouts and non-blocking tries under load: nothing left behind."""
    with Run(endpoint, ttl=ttl, max_bypass=max_bypass, prefix=prefix, log_dir=log_dir,
             seed=seed) as run:
        workers = [run.spawn(f"p{i}", threads=threads, p_try=0.25, p_short=0.5, short_ms=30.0,
                             hold_ms=[0.0, 8.0]) for i in range(processes)]
        run.ready(*workers)
        begun = now_ns()
        time.sleep(seconds)  # the load runs this long (the duration of the test, not a sync)
        run.wait_grants(begun, n=processes * threads, timeout=60)
        outcome = run.finish()
    counts = outcome.counts
    return ScenarioResult(
        "cancels", [], outcome,
        checks={"timeouts happened": counts.get("timeouts", 0) > 0,
                "tries failed": counts.get("busy", 0) > 0},
        facts={"timeouts": counts.get("timeouts", 0), "failed tries": counts.get("busy", 0)})


SCENARIOS: dict[str, Callable[..., ScenarioResult]] = {
    "holder-kill": holder_kill,
    "waiter-kill": waiter_kill,
    "holder-pause": holder_pause,
    "cancels": cancels,
}


# -- the soak -------------------------------------------------------------------------------------

FAULT_KINDS = ("kill-holder", "kill-waiter", "pause-holder", "restart-etcd")


@dataclass
class Fault:
    kind: str
    at: float  # seconds into the run
    delay: float | None  # the kind's recovery figure (see SoakResult)
    detail: str = ""


@dataclass
class SoakResult:
    """``delay`` per kind: kill-holder: SIGKILL -> next grant; kill-waiter: SIGKILL -> its keys
    gone; pause-holder: SIGSTOP -> next grant (and ``notice``: SIGCONT -> lost notice);
    restart-etcd: restart begun -> next grant."""

    seconds: float
    processes: int
    threads: int
    ttl: int
    faults: list[Fault]
    outcome: Outcome
    respawned: int
    notices: list[float]
    failures: list[str]

    def by_kind(self) -> dict[str, list[Fault]]:
        out: dict[str, list[Fault]] = {k: [] for k in FAULT_KINDS}
        for f in self.faults:
            out.setdefault(f.kind, []).append(f)
        return out

    @property
    def ok(self) -> bool:
        return self.outcome.clean and not self.failures


class _Soak:
    def __init__(self, run: Run, server: Any, rng: random.Random, processes: int, threads: int,
                 options: dict[str, Any]) -> None:
        self.run = run
        self.server = server
        self.rng = rng
        self.options = options
        self.threads = threads
        self.slots: list[Child] = []
        self.generation = [0] * processes
        self.respawned = 0
        self.notices: list[float] = []
        for i in range(processes):
            self.slots.append(run.spawn(f"p{i}g0", threads=threads, **options))
        run.ready(*self.slots)

    def _respawn(self, i: int) -> None:
        self.generation[i] += 1
        self.respawned += 1
        child = self.run.spawn(f"p{i}g{self.generation[i]}", threads=self.threads, **self.options)
        self.slots[i] = child
        self.run.ready(child)

    def kill_holder(self) -> tuple[float, str]:
        i = self.rng.randrange(len(self.slots))
        victim = self.slots[i]
        token, _ = self.run.hold(victim)
        killed = self.run.kill(victim)
        (start, _, _), = self.run.wait_grants(killed, exclude=victim, timeout=self.run.ttl + 30)
        self._respawn(i)
        return ns_to_s(start - killed), f"{victim.name} token {token}"

    def kill_waiter(self) -> tuple[float, str]:
        order = list(range(len(self.slots)))
        self.rng.shuffle(order)
        picked: list[int] = []

        def pick() -> bool:
            owner = self.run.owner()
            queued = {kv.lease for kv in self.run.waiter_keys()}
            picked[:] = [i for i in order if self.slots[i].lease in queued
                         and (owner is None or owner.lease != self.slots[i].lease)][:1]
            return bool(picked)

        self.run.poll(pick, 30, "a worker with a waiter key that does not hold")
        i = picked[0]
        victim = self.slots[i]
        lease = victim.lease
        killed = self.run.kill(victim)
        gone = self.run.poll(lambda: not any(kv.lease == lease for kv in self.run.keys()),
                             self.run.ttl + 30, "the killed waiter's keys to go")
        self._respawn(i)
        return ns_to_s(gone - killed), victim.name

    def pause_holder(self) -> tuple[float, str]:
        victim = self.rng.choice(self.slots)
        token, _ = self.run.hold(victim)
        since = victim.mark()
        stopped = self.run.pause(victim)
        try:
            (start, _, _), = self.run.wait_grants(stopped, exclude=victim, timeout=self.run.ttl + 30)
            _sleep_past(stopped, self.run.ttl)
        finally:
            resumed = self.run.resume(victim)
        lost_at = int(victim.expect("lost", 30, since)[2])
        self.notices.append(ns_to_s(lost_at - resumed))
        victim.send("release")  # it has let go already (it checks is_held() before each write)
        victim.expect("released", 30, since)
        return ns_to_s(start - stopped), f"{victim.name} token {token}, paused {ns_to_s(resumed - stopped):.2f} s"

    def restart_etcd(self) -> tuple[float, str]:
        began = now_ns()
        self.server.restart()
        up = now_ns()
        (start, _, _), = self.run.wait_grants(up, timeout=self.run.ttl + 60)
        return ns_to_s(start - began), f"etcd down {ns_to_s(up - began):.2f} s"


def soak(endpoint: str, seconds: float, *, server: Any = None, processes: int = 4, threads: int = 8,
         ttl: int = 3, max_bypass: int | None = 4, seed: int = 0, gap: tuple[float, float] = (0.5, 2.0),
         kinds: Sequence[str] | None = None, prefix: str | None = None, log_dir: str | None = None,
         p_try: float = 0.1, p_short: float = 0.2, shared_lock: bool = False,
         say: Callable[[str], None] | None = None) -> SoakResult:
    """Workers under faults drawn one after another for ``seconds`` (every kind once first).

    ``server``: the :class:`~fairlock.testing.EtcdServer` behind ``endpoint``, for the
    restart-etcd kind (left out without it). ``shared_lock``: the threads of a worker share one
    two-level lock (judged for safety only, see ``benchmarks._fault_worker``).
    """
    chosen = [k for k in (kinds or FAULT_KINDS) if k != "restart-etcd" or server is not None]
    rng = random.Random(seed)
    faults: list[Fault] = []
    failures: list[str] = []
    options = {"p_try": p_try, "p_short": p_short, "short_ms": 40.0, "hold_ms": [0.0, 6.0]}
    with Run(endpoint, ttl=ttl, max_bypass=max_bypass, prefix=prefix, log_dir=log_dir,
             seed=seed, shared_lock=shared_lock) as run:
        state = _Soak(run, server, rng, processes, threads, options)
        end = time.monotonic() + seconds
        first = list(chosen)
        rng.shuffle(first)
        while first or time.monotonic() < end:  # every kind once, however short the run
            kind = first.pop() if first else rng.choice(chosen)
            at = ns_to_s(now_ns() - run.started)
            try:
                delay, detail = getattr(state, kind.replace("-", "_"))()
            except FaultError as exc:
                failures.append(f"{kind} at {at:.1f} s: {exc}"[:500])
                faults.append(Fault(kind, at, None, "failed"))
                if say:
                    say(f"{kind}: FAILED: {str(exc).splitlines()[0]}")
                continue
            faults.append(Fault(kind, at, delay, detail))
            if say:
                say(f"{kind} at {at:.0f} s: {delay:.2f} s ({detail})")
            time.sleep(rng.uniform(*gap))  # the pace of the faults, not a synchronisation
        outcome = run.finish()
        return SoakResult(seconds=outcome.seconds, processes=processes, threads=threads, ttl=ttl,
                          faults=faults, outcome=outcome, respawned=state.respawned,
                          notices=state.notices, failures=failures)
