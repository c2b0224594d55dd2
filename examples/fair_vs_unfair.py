"""Fair vs unfair waiting, in ten seconds.

An event-handler thread processes a stream of events, taking the lock for each one and coming
straight back for the next (as nova's ``external_instance_event`` does with ``refresh_cache``).
A "migration" thread asks for the same lock shortly after the stream starts. How many events
does the handler process before the migration gets in?

    python examples/fair_vs_unfair.py [--events 200] [--hold 0.002]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import fairlock


def run(make_lock: Callable[[], Callable[[], AbstractContextManager[object]]], events: int, hold: float,
        migration_cm: Callable[[Callable[[], AbstractContextManager[object]]], AbstractContextManager[object]] | None = None
        ) -> tuple[int, float]:
    lock_cm = make_lock()
    processed = 0
    migration_done = threading.Event()
    started = threading.Event()
    ahead_of_migration = [0]
    migration_wait = [0.0]
    asked = threading.Event()

    def handler() -> None:
        nonlocal processed
        for _ in range(events):
            with lock_cm():
                started.set()
                if asked.is_set() and not migration_done.is_set():
                    ahead_of_migration[0] += 1
                time.sleep(hold)
                processed += 1

    def migration() -> None:
        started.wait()
        time.sleep(hold * 3)
        t0 = time.monotonic()
        asked.set()
        with (migration_cm(lock_cm) if migration_cm else lock_cm()):
            migration_wait[0] = time.monotonic() - t0
            migration_done.set()

    threads = [threading.Thread(target=handler), threading.Thread(target=migration)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ahead_of_migration[0], migration_wait[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--hold", type=float, default=0.002, help="seconds per event inside the lock")
    args = parser.parse_args()

    variants: list[tuple[str, Callable[[], Callable[[], AbstractContextManager[object]]]]] = []
    tl = threading.Lock()
    variants.append(("threading.Lock", lambda: (lambda: tl)))
    try:
        from oslo_concurrency import lockutils as oslo

        # oslo's fair lock imports eventlet when it is first created; if that happens in a worker
        # thread, the thread can never be joined. Create it here, in the main thread, first.
        with oslo.lock("demo-oslo-fair", fair=True):
            pass
        variants.append(("oslo lockutils.lock (default)", lambda: (lambda: oslo.lock("demo-oslo"))))
        variants.append(("oslo lockutils.lock (fair=True)", lambda: (lambda: oslo.lock("demo-oslo-fair", fair=True))))
    except ImportError:
        print("(oslo.concurrency not installed: skipping its rows)")
    flock = fairlock.Lock("demo-fair")
    variants.append(("fairlock.Lock", lambda: (lambda: flock)))

    print(f"{args.events} events, {args.hold * 1000:.1f} ms each; the migration asks after ~3 events\n")
    print(f"{'lock':34} {'events ahead of migration':>26} {'migration wait':>16}")
    for name, make in variants:
        ahead, wait = run(make, args.events, args.hold)
        print(f"{name:34} {ahead:>26} {wait * 1000:>13.1f} ms")
    print("\noslo's default lock (a threading.Semaphore) lets the releasing handler take it straight back;"
          "\nfairlock hands it at release to the waiter that has waited longest.")


if __name__ == "__main__":
    main()
