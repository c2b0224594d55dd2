"""The fault suite's engine: worker processes on one lock, etcd as the parent sees it, the verdict.

:class:`Run` starts ``benchmarks._fault_worker`` processes (the spec as JSON on stdin, commands
after it), reads what they say on stdout in one thread per worker (grants, ``holding``, ``lost``,
``stopped``...), signals them (SIGKILL, SIGSTOP, SIGCONT: each stamped on the shared monotonic
clock just before it is sent), polls etcd's state (the lock's keys, the leases alive), and at the
end (:meth:`Run.finish`) stops every live worker, counts what it left in etcd, and hands the
workers' logs to the fencing checker (:func:`judge`). Nothing here waits by sleeping: it waits
for a line from a worker or polls a condition on etcd's state.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairlock.testing import checker
from ._etcd_runs import _env
from ._etcd_worker import lease_ids

__all__ = ["FaultError", "Child", "Run", "Outcome", "judge", "LANES", "now_ns", "ns_to_s"]

LANES = ("high", "normal")
#: How often the parent polls etcd while waiting for a state (a poll, not a sleep-as-sync).
POLL = 0.01


class FaultError(RuntimeError):
    """A worker did not say what it had to in time (the message has its stderr tail)."""


def now_ns() -> int:
    return time.monotonic_ns()


def ns_to_s(ns: int) -> float:
    return ns / 1e9


# -- one worker process ---------------------------------------------------------------------------


class Child:
    """One worker process: its spec, its log, and the lines it said (read by a thread)."""

    def __init__(self, run: Run, name: str, spec: dict[str, Any]) -> None:
        self.run = run
        self.name = name
        self.spec = spec
        self.log = Path(spec["log"])
        self.err = self.log.with_suffix(".err")
        self._err = open(self.err, "wb")
        self.proc = subprocess.Popen(
            [run.python, "-m", "benchmarks._fault_worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._err, text=True, env=_env(), bufsize=1)
        self.lines: list[list[str]] = []
        self.leases: list[int] = []
        self.eof = False
        self.killed = False
        self.paused = False
        self.stopped: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self.send(json.dumps(spec))
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[0] in ("stopped", "result", "failed"):
                parts = line.rstrip("\n").split(" ", 1)  # the rest is JSON or a message
            if parts[0] == "g":
                self.run._grant(int(parts[2]), int(parts[1]), self)
                continue
            with self._cond:
                if parts[0] == "session":
                    self.leases.append(int(parts[1]))
                self.lines.append(parts)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    @property
    def lease(self) -> int | None:
        return self.leases[-1] if self.leases else None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def mark(self) -> int:
        """The index of the next line: ``expect(..., since=mark)`` ignores what came before."""
        with self._cond:
            return len(self.lines)

    def expect(self, word: str, timeout: float, since: int = 0) -> list[str]:
        """The first line from ``since`` on that starts with ``word``; FaultError after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for parts in self.lines[since:]:
                    if parts[0] == word:
                        return parts
                    if parts[0] == "failed":
                        raise FaultError(f"worker {self.name} failed: {' '.join(parts[1:])}")
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    why = "exited" if self.eof else f"said nothing like it within {timeout:g} s"
                    raise FaultError(f"worker {self.name} {why} (waiting for {word!r})\n"
                                     f"{self.stderr_tail()}")
                self._cond.wait(left)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it died: the next expect() says so

    def signal(self, sig: int) -> int:
        """Send a signal; returns the time it was sent (stamped just before)."""
        at = now_ns()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        return at

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.err.read_bytes()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def reap(self) -> None:
        if self.alive:
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self._err.close()


# -- the outcome of a run -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a run left: the checker's report, its records, keys and leases left over."""

    report: checker.Report
    records: list[checker.Grant]
    leaked_live: int  # keys on leases of sessions still open after every thread stopped
    leaked_keys: int  # keys under the prefix once every session closed or expired
    leaked_leases: int  # leases of the run still alive then
    tickets_unknown: int  # records judged for safety only (see judge())
    counts: dict[str, int]
    errors: list[str]
    hung: int
    seconds: float

    @property
    def clean(self) -> bool:
        return (self.report.ok and not self.leaked_live and not self.leaked_keys
                and not self.leaked_leases and not self.errors and not self.hung)

    def summary(self) -> str:
        return (f"{self.report.summary()}; leaked keys {self.leaked_live} (live sessions) + "
                f"{self.leaked_keys} (at the end), leaked leases {self.leaked_leases}, "
                f"{self.tickets_unknown} records without ticket, errors {self.errors[:3]}")


def judge(records: Sequence[checker.Grant], max_bypass: int | None,
          fairness: bool = True) -> tuple[checker.Report, int]:
    """The checker's report, and how many records had no ticket.

    ``fairness=False`` (workers sharing one two-level lock per process): safety only; the FIFO
    and bypass fields are zero and ``max_bypass`` None.

    Safety (overlap, tokens, writes after a loss) is judged on every record; FIFO and the bypass
    bound by etcd's ticket order, on the records whose ticket the worker could tell (all of them
    unless a connection broke at the moment a request was queued). Leaving a record out of the
    order can hide an inversion, never invent one.
    """
    ticketed = [r for r in records if r.ticket is not None]
    if not fairness:
        safety = checker.check(records, max_bypass=None, order="request")
        return checker.Report(
            grants=safety.grants, order="-", overlaps=safety.overlaps,
            token_regressions=safety.token_regressions, fifo_violations=0, max_overtaken=0,
            max_bypass=None, lost=safety.lost, writes_after_lost=safety.writes_after_lost,
            violations=tuple(v for v in safety.violations if v.kind in ("overlap", "token", "lost-write")),
        ), len(records) - len(ticketed)
    if len(ticketed) == len(records):
        return checker.check(records, max_bypass=max_bypass), 0
    safety = checker.check(records, max_bypass=None, order="request")
    fair = checker.check(ticketed, max_bypass=max_bypass, order="ticket")
    keep = [v for v in safety.violations if v.kind in ("overlap", "token", "lost-write")]
    keep += [v for v in fair.violations if v.kind in ("fifo", "bypass")]
    return checker.Report(
        grants=safety.grants, order="ticket", overlaps=safety.overlaps,
        token_regressions=safety.token_regressions, fifo_violations=fair.fifo_violations,
        max_overtaken=fair.max_overtaken, max_bypass=max_bypass, violations=tuple(keep),
        lost=safety.lost, writes_after_lost=safety.writes_after_lost,
    ), len(records) - len(ticketed)


# -- a run: workers on one lock, and etcd as the parent sees it ------------------------------------


class Run:
    """Worker processes on one lock under one prefix, and the parent's view of etcd."""

    def __init__(self, endpoint: str, *, ttl: int = 2, lanes: Sequence[str] = LANES,
                 max_bypass: int | None = 4, prefix: str | None = None, log_dir: str | None = None,
                 python: str | None = None, seed: int = 0, shared_lock: bool = False) -> None:
        from fairlock.etcd.gateway import GatewayTransport
        from fairlock.etcd.lock import lock_keys

        self.endpoint = endpoint
        self.ttl = ttl
        self.lanes = tuple(lanes)
        self.max_bypass = max_bypass
        self.prefix = (prefix or f"/fairlock-faults/{os.getpid()}-{uuid.uuid4().hex[:8]}").rstrip("/")
        self.lock = "faults"
        self.python = python or sys.executable
        self.seed = seed
        self.shared_lock = shared_lock
        self._own_dir = log_dir is None
        self.dir = Path(log_dir or tempfile.mkdtemp(prefix="fairlock-faults-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.probe = GatewayTransport([endpoint], timeout=5.0)
        self.owner_key, self.wprefix, self.wend = lock_keys(self.prefix.encode(), self.lock)
        self.children: list[Child] = []
        self.grants: list[tuple[int, int, Child]] = []  # (start ns, token, child), as said
        self._cond = threading.Condition()
        self._spawned = 0
        self.started = now_ns()

    # -- workers --

    def spawn(self, name: str, threads: int = 0, **options: Any) -> Child:
        """Start a worker (it says ``ready`` once its session is open: see :meth:`ready`)."""
        self._spawned += 1
        spec = {"endpoint": self.endpoint, "ttl": self.ttl, "prefix": self.prefix,
                "lock": self.lock, "worker": name, "threads": threads, "lanes": list(self.lanes),
                "max_bypass": self.max_bypass, "log": str(self.dir / f"{name}.jsonl"),
                "seed": self.seed * 1000 + self._spawned, "shared_lock": self.shared_lock, **options}
        child = Child(self, name, spec)
        self.children.append(child)
        return child

    def ready(self, *children: Child, timeout: float = 60.0) -> None:
        for child in children:
            child.expect("ready", timeout)

    def hold(self, child: Child, lane: str | None = None, timeout: float = 60.0) -> tuple[int, int]:
        """Make ``child``'s hold thread take the lock; (fencing token, start ns) once it holds."""
        since = child.mark()
        child.send(f"hold {lane or self.lanes[0]}")
        deadline = time.monotonic() + timeout
        while True:
            with child._cond:
                for parts in child.lines[since:]:
                    if parts[0] == "holding":
                        return int(parts[1]), int(parts[3])
                    if parts[0] == "hold-failed":
                        raise FaultError(f"worker {child.name} could not take the lock: {parts[1:]}")
                if child.eof or time.monotonic() > deadline:
                    raise FaultError(f"worker {child.name} did not hold the lock within {timeout:g} s"
                                     f"\n{child.stderr_tail()}")
                child._cond.wait(max(0.0, deadline - time.monotonic()))

    def release(self, child: Child, timeout: float = 30.0) -> list[str]:
        """Tell the hold thread to release; its ``released <token> <end> <held|lost>`` line."""
        since = child.mark()
        child.send("release")
        return child.expect("released", timeout, since)

    def kill(self, child: Child) -> int:
        child.killed = True
        at = child.signal(signal.SIGKILL)
        child.proc.wait()
        return at

    def pause(self, child: Child) -> int:
        child.paused = True
        return child.signal(signal.SIGSTOP)

    def resume(self, child: Child) -> int:
        child.paused = False
        return child.signal(signal.SIGCONT)

    # -- grants, as the workers said them --

    def _grant(self, start: int, token: int, child: Child) -> None:
        with self._cond:
            self.grants.append((start, token, child))
            self._cond.notify_all()

    def wait_grants(self, after: int, n: int = 1, exclude: Child | None = None,
                    timeout: float = 30.0) -> list[tuple[int, int, Child]]:
        """The first ``n`` grants that started at or after ``after`` (ns), not to ``exclude``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = sorted(g for g in self.grants if g[0] >= after and g[2] is not exclude)
                if len(found) >= n:
                    return found[:n]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FaultError(f"{len(found)} of {n} grants within {timeout:g} s")
                self._cond.wait(left)

    # -- etcd, as the parent sees it --

    def keys(self) -> list[Any]:
        from fairlock.etcd.transport import prefix_end

        start = self.prefix.encode() + b"/"
        _, kvs = self.probe.get_range(start, prefix_end(start))
        return kvs

    def waiter_keys(self) -> list[Any]:
        _, kvs = self.probe.get_range(self.wprefix, self.wend)
        return kvs

    def owner(self) -> Any:
        _, kvs = self.probe.get_range(self.owner_key)
        return kvs[0] if kvs else None

    def leases_alive(self) -> set[int]:
        return {int(i) for i in lease_ids(self.endpoint)}

    def poll(self, condition: Callable[[], bool], timeout: float, what: str) -> int:
        """Poll etcd until ``condition()`` holds; returns when (ns). Errors of etcd are retried."""
        from fairlock.etcd.transport import EtcdError

        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return now_ns()
            except (EtcdError, OSError):
                pass  # etcd restarting: look again
            if time.monotonic() > deadline:
                raise FaultError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(POLL)

    def queued(self, child: Child, n: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``child`` has ``n`` waiter keys in etcd (on its current lease)."""
        self.poll(lambda: sum(kv.lease == child.lease for kv in self.waiter_keys()) >= n,
                  timeout, f"{n} waiter key(s) of {child.name}")

    # -- the end --

    def finish(self, stop_timeout: float = 90.0) -> Outcome:
        """Stop every live worker, count what was left, close them, judge the logs."""
        live = [c for c in self.children if c.alive and not c.killed]
        marks = {}
        for c in live:
            if c.paused:
                self.resume(c)
            marks[c.name] = c.mark()
            c.send("stop")
        for c in live:
            c.stopped = json.loads(c.expect("stopped", stop_timeout, marks[c.name])[1])
        open_leases = {c.stopped["lease"] for c in live if c.stopped and c.stopped["lease_alive"]}
        leaked_live = sum(kv.lease in open_leases for kv in self.keys())
        for c in live:
            c.send("close")
        for c in live:
            c.result = json.loads(c.expect("result", 60)[1])
            c.reap()
        ours = {lease for c in self.children for lease in c.leases}
        # Killed or lost sessions' keys go when their leases expire (within the ttl).
        with contextlib.suppress(FaultError):
            self.poll(lambda: not self.keys() and not ours & self.leases_alive(),
                      self.ttl + 10.0, "the run's keys and leases to go")
        leaked_keys = len(self.keys())
        leaked_leases = len(ours & self.leases_alive())
        records = checker.load([c.log for c in self.children if c.log.exists()])
        report, unknown = judge(records, self.max_bypass, fairness=not self.shared_lock)
        counts: dict[str, int] = {}
        errors: list[str] = []
        for c in live:
            for k, v in (c.stopped or {}).items():
                if isinstance(v, int) and not isinstance(v, bool) and k not in ("lease", "hung"):
                    counts[k] = counts.get(k, 0) + v
            errors += [f"{c.name}: {e}" for e in (c.result or {}).get("errors", [])]
        return Outcome(report=report, records=records, leaked_live=leaked_live,
                       leaked_keys=leaked_keys, leaked_leases=leaked_leases,
                       tickets_unknown=unknown, counts=counts, errors=errors,
                       hung=sum((c.stopped or {}).get("hung", 0) for c in live),
                       seconds=ns_to_s(now_ns() - self.started))

    def close(self, keep_logs: bool = False) -> None:
        for c in self.children:
            c.reap()
        self.probe.close()
        if self._own_dir and not keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
