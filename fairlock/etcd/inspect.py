"""``fairlock inspect --url URL [NAME]``: who holds which lock, and who waits, as etcd says now.

Reads only (one range read of the prefix); safe to run against production.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .lock import decode_value, lock_name_from_key
from .transport import KeyValue, Transport, prefix_end

__all__ = ["HolderView", "WaiterView", "LockView", "read_locks", "format_locks", "add_parser"]


@dataclass(frozen=True)
class HolderView:
    host: str | None
    pid: int | None
    thread: str | None
    session: str | None
    lane: str | None
    fencing_token: int
    held_for: float | None


@dataclass(frozen=True)
class WaiterView:
    ticket: int
    host: str | None
    pid: int | None
    thread: str | None
    session: str | None
    lane: str
    overtaken: int
    waiting_for: float | None


@dataclass(frozen=True)
class LockView:
    name: str
    holder: HolderView | None
    waiters: list[WaiterView] = field(default_factory=list)  # in ticket (arrival) order

    def waiting_per_lane(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for w in self.waiters:
            counts[w.lane] = counts.get(w.lane, 0) + 1
        return counts


def _age(value: dict[str, Any], now: float) -> float | None:
    since = value.get("since")
    return max(0.0, now - since) if isinstance(since, (int, float)) else None


def read_locks(transport: Transport, prefix: bytes, name: str | None = None,
               now: Callable[[], float] = time.time) -> list[LockView]:
    """Every lock under ``prefix`` (or just ``name``) with its holder and queue."""
    head = prefix + b"/locks/"
    if name is not None:
        from .lock import lock_keys

        owner_key, _, _ = lock_keys(prefix, name)
        start = owner_key.rsplit(b"/", 1)[0] + b"/"
        _, kvs = transport.get_range(start, prefix_end(start))
    else:
        _, kvs = transport.get_range(head, prefix_end(head))
    at = now()
    grouped: dict[str, list[KeyValue]] = {}
    for kv in kvs:
        lock_name = lock_name_from_key(prefix, kv.key)
        if lock_name is not None:
            grouped.setdefault(lock_name, []).append(kv)
    views = []
    for lock_name in sorted(grouped):
        holder = None
        waiters = []
        for kv in grouped[lock_name]:
            value = decode_value(kv)
            if kv.key.endswith(b"/owner"):
                holder = HolderView(value.get("host"), value.get("pid"), value.get("thread"),
                                    value.get("session"), value.get("lane"), kv.mod_revision, _age(value, at))
            elif b"/w/" in kv.key:
                waiters.append(WaiterView(kv.create_revision, value.get("host"), value.get("pid"),
                                          value.get("thread"), value.get("session"),
                                          str(value.get("lane")), int(value.get("overtaken", 0) or 0),
                                          _age(value, at)))
        waiters.sort(key=lambda w: w.ticket)
        views.append(LockView(lock_name, holder, waiters))
    return views


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}s"


def _who(host: str | None, pid: int | None, thread: str | None) -> str:
    return f"{host or '?'}:{pid or '?'} {thread or '?'}"


def format_locks(views: list[LockView], detail: bool) -> str:
    if not views:
        return "no locks held or waited on"
    lines = []
    if not detail:
        lines.append(f"{'lock':40} {'holder':40} {'token':>8} {'held':>8}  waiting per lane")
        for v in views:
            h = v.holder
            holder = _who(h.host, h.pid, h.thread) if h else "(free: grant pending)"
            lanes = ", ".join(f"{lane} {n}" for lane, n in v.waiting_per_lane().items()) or "-"
            lines.append(f"{v.name:40} {holder:40} {h.fencing_token if h else '-':>8} "
                         f"{_seconds(h.held_for) if h else '-':>8}  {lanes}")
        return "\n".join(lines)
    for v in views:
        lines.append(f"lock {v.name!r}")
        h = v.holder
        if h is None:
            lines.append("  holder: none (free, or a grant is pending after a holder's lease expired)")
        else:
            lines.append(f"  holder: {_who(h.host, h.pid, h.thread)}  session {h.session}  lane {h.lane}  "
                         f"fencing token {h.fencing_token}  held for {_seconds(h.held_for)}")
        if not v.waiters:
            lines.append("  queue: empty")
        lanes: dict[str, list[WaiterView]] = {}
        for w in v.waiters:
            lanes.setdefault(w.lane, []).append(w)
        for lane, waiters in lanes.items():
            lines.append(f"  lane {lane}: {len(waiters)} waiting")
            for w in waiters:
                lines.append(f"    ticket {w.ticket:>8}  {_who(w.host, w.pid, w.thread):40}  "
                             f"waiting {_seconds(w.waiting_for):>8}  overtaken {w.overtaken}")
    return "\n".join(lines)


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "inspect",
        help="show the holders and queues of etcd locks",
        description="List fairlock's etcd locks, or show one lock's holder and its queue per lane "
        "(read-only).",
    )
    parser.add_argument("--url", required=True,
                        help="etcd URL, e.g. etcd3+http://127.0.0.1:2379/fairlock (the path is the key prefix)")
    parser.add_argument("name", nargs="?", help="one lock name for details")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import FairlockError
    from .config import parse_url
    from .gateway import GatewayTransport
    from .session import DEFAULT_PREFIX

    try:
        config = parse_url(args.url)
        transport = GatewayTransport.from_config(config)
    except FairlockError as exc:
        print(f"fairlock inspect: {exc}", file=sys.stderr)
        return 2
    try:
        prefix = (config.prefix or DEFAULT_PREFIX).rstrip("/").encode()
        views = read_locks(transport, prefix, args.name)
    except FairlockError as exc:
        print(f"fairlock inspect: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()
    if args.json:
        print(json.dumps([asdict(v) for v in views], indent=2))
    else:
        print(format_locks(views, detail=args.name is not None))
    return 0
