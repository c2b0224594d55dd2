"""One case of the etcd benchmark, in a child process: ``python -m benchmarks._etcd_worker``.

The spec arrives as JSON on stdin; the result leaves as one JSON object on stdout. Cases:

``probe``        can this interpreter import the named client library; which release is it.
``uncontended``  one client, ``pairs`` timed acquire+release pairs.
``contended``    ``waiters`` clients (threads, each its own session/client: a separate "process"
                 to etcd) loop acquire, empty critical section, release, from ``start_at`` to
                 ``stop_at``; a waiter queued at ``stop_at`` takes the lock once more and stops
                 (no one is abandoned in a queue). One run may span several such children.
``fencing``      ``sessions`` clients append one grant record per critical section (random lane,
                 a random hold of up to ``hold_ms``) to the append-only log ``log``.

Around each measured stretch the worker reads etcd's counters itself (store revision, the
``/metrics`` counters, live leases), so client setup and teardown are not counted. Only the
standard library is imported here (the child may run under python-etcd3 0.12.0's own venv).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import urllib.request
from typing import Any

from ._etcd_clients import make_client

#: /metrics counters the parent turns into per-grant figures (sum over label sets).
_COUNTERS = (
    "etcd_debugging_lease_granted_total",
    "etcd_debugging_lease_revoked_total",
    "etcd_debugging_mvcc_events_total",
    "grpc_server_msg_received_total",
)


def _post(endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(endpoint + "/v3/" + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read() or b"{}")
        return answer


def lease_ids(endpoint: str) -> list[str]:
    return [lease["ID"] for lease in _post(endpoint, "lease/leases", {}).get("leases") or []]


def snapshot(endpoint: str) -> dict[str, Any]:
    """etcd's counters now: revision, live leases, and the /metrics counters (None if absent)."""
    revision = int(_post(endpoint, "kv/range", {"key": "AA=="})["header"]["revision"])
    leases = len(_post(endpoint, "lease/leases", {}).get("leases") or [])
    with urllib.request.urlopen(endpoint + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counters: dict[str, float | None] = dict.fromkeys(_COUNTERS)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in counters:
            counters[name] = (counters[name] or 0.0) + float(line.rsplit(" ", 1)[1])
    return {"revision": revision, "leases": leases, "counters": counters, "at": time.monotonic_ns()}


def _probe(spec: dict[str, Any]) -> dict[str, Any]:
    from importlib import metadata

    module = spec["module"]
    try:
        __import__(module)
    except Exception as exc:  # any import failure is a reason to report, not to crash
        return {"ok": False, "error": f"import {module}: {type(exc).__name__}: {exc}".splitlines()[0][:200]}
    dists = metadata.packages_distributions().get(module, [])
    versions = {}
    for name in [*dists, "protobuf", "grpcio", "tenacity"]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"ok": True, "dists": dists, "versions": versions,
            "python": sys.version.split()[0], "executable": sys.executable}


def _uncontended(spec: dict[str, Any]) -> dict[str, Any]:
    endpoint = spec["endpoint"]
    before_setup = snapshot(endpoint)
    client = make_client(spec["variant"], endpoint, spec["lock"], "bench-0")
    after_setup = snapshot(endpoint)
    try:
        for _ in range(spec.get("warmup_pairs", 5)):
            client.acquire(None)
            client.release()
        before = snapshot(endpoint)
        times = []
        for _ in range(spec["pairs"]):
            t0 = time.perf_counter_ns()
            while not client.acquire(None):
                pass
            client.release()
            times.append(time.perf_counter_ns() - t0)
        after = snapshot(endpoint)
    finally:
        client.close()
    return {"pair_ns": times, "setup": [before_setup, after_setup], "window": [before, after]}


def _sleep_until(ns: int) -> None:
    while (left := ns - time.monotonic_ns()) > 0:
        time.sleep(left / 1e9)


def _contended(spec: dict[str, Any]) -> dict[str, Any]:
    """Waiters ``first`` .. ``first + waiters - 1`` of a run that may span several children.

    Once its clients are set up the child prints ``ready`` and reads the run's times from stdin:
    every child of one run gets the same absolute times (``time.monotonic_ns()`` is one clock
    for every process of the host): start at ``start_at``, stop asking at ``stop_at``; the
    client-side watch-event counts are sampled at the times in ``window``.
    """
    endpoint, n, first = spec["endpoint"], spec["waiters"], spec.get("first", 0)
    lanes = spec.get("lanes")
    clients = [make_client(spec["variant"], endpoint, spec["lock"], f"bench-{first + i}", lanes=lanes,
                           max_bypass=spec.get("max_bypass", 4)) for i in range(n)]
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    spec = {**spec, **json.loads(sys.stdin.readline())}
    stop_at = spec["stop_at"]

    def waiter(i: int, client: Any) -> None:
        lane = lanes[i % len(lanes)] if lanes else None
        _sleep_until(spec["start_at"])
        try:
            while time.monotonic_ns() < stop_at:
                request = time.monotonic_ns()
                if not client.acquire(lane):
                    continue  # the library's own timeout: ask again
                start = time.monotonic_ns()
                end = time.monotonic_ns()  # empty critical section
                client.release()
                records.append({"holder": f"w{i}", "lane": lane or "-", "request": request,
                                "start": start, "end": end, "fencing_token": client.token,
                                "ticket": client.ticket})
        except Exception as exc:  # reported in the result: a crashed waiter is a finding
            errors.append(f"w{i}: {type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=waiter, args=(first + i, c), daemon=True, name=f"w{first + i}")
               for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    events = []
    for at in spec["window"]:
        _sleep_until(at)
        events.append(sum(c.watch_events() or 0 for c in clients))
    deadline = time.monotonic() + spec.get("drain", 60.0)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    if not hung:
        for c in clients:
            try:
                c.close()
            except Exception as exc:
                errors.append(f"close: {type(exc).__name__}: {exc}"[:300])
    client_events = None if clients and clients[0].watch_events() is None else events
    return {"records": list(records), "client_events": client_events, "hung": hung,
            "errors": errors}


def _fencing(spec: dict[str, Any]) -> dict[str, Any]:
    """Sessions append grant records to this worker's log until the deadline or the quota."""
    endpoint, lanes = spec.get("endpoint", ""), spec["lanes"]
    deadline = time.monotonic() + spec["seconds"] if spec.get("seconds") else None
    quota = spec.get("grants")
    rng = random.Random(spec.get("seed", 0))
    hold = spec.get("hold_ms", 1.0) / 1000.0
    worker = spec["worker"]
    clients = [make_client(spec["variant"], endpoint, spec["lock"], f"{worker}-s{i}", lanes=lanes,
                           max_bypass=spec["max_bypass"]) for i in range(spec["sessions"])]
    write = threading.Lock()
    counted = [0]
    errors: list[str] = []

    def session(i: int, client: Any, log: Any, seed: int) -> None:
        pick = random.Random(seed)
        try:
            while deadline is None or time.monotonic() < deadline:
                with write:
                    if quota is not None and counted[0] >= quota:
                        return
                    counted[0] += 1
                lane = pick.choice(lanes)
                request = time.monotonic_ns()
                if not client.acquire(lane):
                    continue
                start = time.monotonic_ns()
                token, ticket = client.token, client.ticket
                time.sleep(pick.uniform(0, hold))
                end = time.monotonic_ns()
                client.release()
                line = json.dumps({"fencing_token": token, "holder": f"{worker}-s{i}", "lane": lane,
                                   "request": request, "start": start, "end": end,
                                   "ticket": ticket}, separators=(",", ":")) + "\n"
                with write:  # outside the lock: the log never relies on the lock it judges
                    log.write(line)
                    log.flush()
        except Exception as exc:
            errors.append(f"{worker}-s{i}: {type(exc).__name__}: {exc}"[:300])

    with open(spec["log"], "a", encoding="utf-8") as log:
        threads = [threading.Thread(target=session, args=(i, c, log, rng.randrange(1 << 30)), daemon=True)
                   for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for c in clients:
        c.close()
    return {"errors": errors, "requests": counted[0]}


CASES = {"probe": _probe, "uncontended": _uncontended, "contended": _contended, "fencing": _fencing}


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    result = CASES[spec["case"]](spec)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Hung waiters (a lock that lost a wake-up) must not keep the child alive; clients' own
    # threads (gRPC, keepalives) need no orderly exit once the result is out.
    os._exit(code)
