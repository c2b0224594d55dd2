"""``fairlock inspect``: who holds which etcd lock, who waits, and who is next, as etcd says now.

Reads only: one range read of the locks' keys (:func:`fairlock.etcd.observe.read_locks`), one
LeaseTimeToLive per session seen; safe to run against production.

1. etcd is named as the bench commands name it (:mod:`fairlock.etcd.cli`): ``--url`` (an
   ``etcd3+http(s)://``, ``etcd3+grpc(s)://`` or tooz ``fairlock+etcd3+http(s)://`` URL),
   ``--endpoint``, or ``--config-file nova.conf``.
2. The lanes and K of the locks come from the source when it says them (a tooz URL's
   parameters, nova.conf's ``fairlock_lanes``...), else the locks' defaults; ``--lanes``,
   ``--default-lane`` and ``--max-bypass`` override them. Lanes are shown in priority order.
3. Who is next is the core's answer (:func:`fairlock._core.decide`) for the waiters read, as the
   releasing holder will compute it; nothing here decides.
4. A holder or waiter whose lease has less than one keepalive interval left is shown as
   "session not refreshing" (its process stopped refreshing: killed, paused, cut off), one whose
   lease is gone as "lease gone": a live session refreshes every interval, so its lease never
   runs that low.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

from .._core import Policy, check_max_bypass, decide
from ..errors import FairlockError
from .cli import Where, add_etcd_arguments, where_from_args
from .observe import LocksRead, Party, read_locks as read_lock_states
from .session import keepalive_interval
from .transport import LeaseTimeToLive, Transport

__all__ = ["LeaseView", "HolderView", "WaiterView", "NextView", "LockView", "InspectResult",
           "inspect_locks", "read_locks", "format_locks", "add_parser"]

ALIVE, NOT_REFRESHING, GONE = "alive", "not refreshing", "gone"

DESCRIPTION = """\
List fairlock's etcd locks, or show one lock: its holder, its queue lane by lane (highest
priority first), and who the grant rule picks next. It only reads.

Name etcd as the lock's users do: --url (etcd3+http(s)://, etcd3+grpc(s)://, or tooz's
fairlock+etcd3+http(s)://; the path is the key prefix), --endpoint http://HOST:PORT, or
--config-file /etc/nova/nova.conf ([oslo_concurrency] fairlock_backend_url, with the lanes and
K of fairlock_lanes, fairlock_default_lane and fairlock_max_bypass).

Each holder and waiter shows its session's lease: "session alive", "session not refreshing
(lease expires in Ns)" when less than one keepalive interval (a third of the lease TTL) is left
-- its process was killed, paused or cut off, and etcd frees its keys when the lease runs out --
or "lease gone".
"""


@dataclass(frozen=True)
class LeaseView:
    """A session's lease as etcd has it now."""

    id: str  # hex, as fairlock names sessions
    #: ``alive``, ``not refreshing`` (less than one keepalive interval left) or ``gone``.
    status: str
    #: Whole seconds left (None when gone) and the TTL it was granted with.
    ttl: int | None = None
    granted_ttl: int | None = None

    def describe(self) -> str:
        if self.status == GONE:
            return "lease gone"
        if self.status == NOT_REFRESHING:
            return f"session not refreshing (lease expires in {self.ttl}s)"
        return f"session alive (lease {self.ttl}s of {self.granted_ttl}s left)"


@dataclass(frozen=True)
class HolderView:
    host: str | None
    pid: int | None
    thread: str | None
    session: str | None
    lane: str | None
    fencing_token: int
    held_for: float | None
    lease: LeaseView | None = None


@dataclass(frozen=True)
class WaiterView:
    ticket: int
    host: str | None
    pid: int | None
    thread: str | None
    session: str | None
    #: The lane the grant rule places it in (for damaged or foreign state: the lowest, due).
    lane: str
    #: Times overtaken, as the rule counts them.
    overtaken: int
    waiting_for: float | None
    lease: LeaseView | None = None
    #: Its stored lane when the policy does not know it (or its state is unreadable): the rule
    #: then serves it as due (see fairlock._core.policy, rule 4).
    foreign_lane: str | None = None


@dataclass(frozen=True)
class NextView:
    """The core's next grant for the waiters read: who, in which lane, and whom it overtakes."""

    ticket: int
    lane: str
    #: Tickets of the waiters this grant overtakes (each counted once more), oldest first.
    overtakes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class LockView:
    name: str
    holder: HolderView | None
    waiters: list[WaiterView] = field(default_factory=list)  # in ticket (arrival) order
    next: NextView | None = None

    def waiting_per_lane(self) -> dict[str, int]:
        """Waiters per lane, in the order the lanes were given (highest priority first)."""
        counts: dict[str, int] = {}
        for w in self.waiters:
            counts[w.lane] = counts.get(w.lane, 0) + 1
        return counts


@dataclass(frozen=True)
class InspectResult:
    """Everything one ``fairlock inspect`` read: where, at which revision, under which policy."""

    #: How etcd was named: "--url", "--endpoint" or "--config-file FILE".
    source: str
    prefix: str
    endpoint: str
    revision: int
    #: The key range read: [start, end).
    keys: tuple[str, str]
    lanes: list[str]
    default_lane: str
    max_bypass: int | None
    locks: list[LockView]


def _age(since: float | None, now: float) -> float | None:
    return max(0.0, now - since) if since is not None else None


def _lease_views(transport: Transport, leases: Iterable[int]) -> dict[int, LeaseView]:
    views = {}
    for lease in sorted(set(leases)):
        if lease <= 0:
            continue
        found: LeaseTimeToLive | None = transport.lease_time_to_live(lease)
        if found is None:
            views[lease] = LeaseView(f"{lease:x}", GONE)
        elif found.ttl < keepalive_interval(found.granted_ttl):
            views[lease] = LeaseView(f"{lease:x}", NOT_REFRESHING, found.ttl, found.granted_ttl)
        else:
            views[lease] = LeaseView(f"{lease:x}", ALIVE, found.ttl, found.granted_ttl)
    return views


def inspect_locks(transport: Transport, prefix: bytes, policy: Policy, name: str | None = None, *,
                  leases: bool = True, now: Callable[[], float] = time.time) -> tuple[LocksRead, list[LockView]]:
    """What etcd has (one read), with each party's lease and the core's next grant per lock."""
    found = read_lock_states(transport, prefix, name)
    at = now()
    parties: list[Party] = [p for lock in found.locks for p in ((lock.holder,) if lock.holder else ())]
    parties += [w for lock in found.locks for w in lock.waiters]
    lease_of = _lease_views(transport, (p.lease for p in parties)) if leases else {}
    views = []
    for lock in found.locks:
        holder = None
        if lock.holder is not None:
            h = lock.holder
            holder = HolderView(h.host, h.pid, h.thread, h.session, h.lane, h.fencing_token,
                                _age(h.since, at), lease_of.get(h.lease))
        snap = policy.snapshot((w.ticket, w.stored) for w in lock.waiters)
        rule = {ticket: (lane, count) for ticket, lane, count in snap.waiters()}
        waiters = []
        for w in lock.waiters:
            lane, count = rule[w.ticket]
            foreign = None
            if w.ticket in snap.damaged:
                stored = w.stored.get("lane")
                foreign = stored if isinstance(stored, str) else repr(stored)
            waiters.append(WaiterView(w.ticket, w.host, w.pid, w.thread, w.session, lane, count,
                                      _age(w.since, at), lease_of.get(w.lease), foreign))
        grant = decide(policy, snap.queue)
        nxt = None if grant is None else NextView(grant.ticket, grant.lane, sorted(t for t, _ in grant.overtaken))
        views.append(LockView(lock.name, holder, waiters, nxt))
    return found, views


def read_locks(transport: Transport, prefix: bytes, name: str | None = None,
               policy: Policy | None = None) -> list[LockView]:
    """Every lock under ``prefix`` (or just ``name``) with its holder, queue and next grant."""
    return inspect_locks(transport, prefix, policy or Policy.of(), name)[1]


# -- text -------------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}s"


def _who(host: str | None, pid: int | None, thread: str | None) -> str:
    return f"{host or '?'}:{pid or '?'} {thread or '?'}"


def _lease(lease: LeaseView | None) -> str:
    return "-" if lease is None else lease.describe()


def _short_lease(lease: LeaseView | None) -> str:
    if lease is None:
        return "-"
    if lease.status == ALIVE:
        return "alive"
    return "lease gone" if lease.status == GONE else f"NOT REFRESHING ({lease.ttl}s)"


def _next(v: LockView) -> str:
    if v.next is None:
        return "-"
    w = next(w for w in v.waiters if w.ticket == v.next.ticket)
    return f"{_who(w.host, w.pid, w.thread)} ({w.lane})"


def format_locks(views: list[LockView], detail: bool, policy: Policy | None = None,
                 where: str = "") -> str:
    """The text ``fairlock inspect`` prints: a table of locks, or one lock in ``detail``."""
    policy = policy or Policy.of()
    lanes = policy.lanes.names
    if not views:
        return f"no locks held or waited on{where}"
    lines = []
    if not detail:
        rows = [["lock", "holder", "token", "held", "holder session", f"waiting ({', '.join(lanes)})", "next"]]
        for v in views:
            h = v.holder
            per_lane = v.waiting_per_lane()
            rows.append([
                v.name, _who(h.host, h.pid, h.thread) if h else "(none: grant pending)",
                str(h.fencing_token) if h else "-", _seconds(h.held_for) if h else "-",
                _short_lease(h.lease) if h else "-",
                " ".join(str(per_lane.get(lane, 0)) for lane in lanes) if v.waiters else "-", _next(v),
            ])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [cell.rjust(w) if i in (2, 3) else cell.ljust(w)
                     for i, (cell, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)
    for v in views:
        lines.append(f"lock {v.name!r}")
        h = v.holder
        if h is None:
            lines.append("  holder: none (free, or a grant is pending after a holder's lease expired)")
        else:
            lines.append(f"  holder: {_who(h.host, h.pid, h.thread)}  lane {h.lane}  session {h.session}  "
                         f"fencing token {h.fencing_token}  held for {_seconds(h.held_for)}")
            lines.append(f"          {_lease(h.lease)}")
        k = "none (strict priority)" if policy.max_bypass is None else policy.max_bypass
        lines.append(f"  lanes, highest priority first (max_bypass K = {k}):")
        by_lane: dict[str, list[WaiterView]] = {lane: [] for lane in lanes}
        for w in v.waiters:
            by_lane.setdefault(w.lane, []).append(w)
        who_width = max((len(_who(w.host, w.pid, w.thread)) for w in v.waiters), default=0)
        ticket_width = max((len(str(w.ticket)) for w in v.waiters), default=0)
        for lane, waiters in by_lane.items():
            lines.append(f"    {lane}: {len(waiters)} waiting")
            for w in waiters:
                foreign = f"  stored lane {w.foreign_lane!r} unknown here: due" if w.foreign_lane else ""
                lines.append(f"      ticket {w.ticket:>{ticket_width}}  {_who(w.host, w.pid, w.thread):{who_width}}  waiting "
                             f"{_seconds(w.waiting_for):>7}  overtaken {w.overtaken}  {_lease(w.lease)}{foreign}")
        if v.next is None:
            lines.append("  next: nobody waits")
        else:
            w = next(w for w in v.waiters if w.ticket == v.next.ticket)
            overtakes = (f"; it overtakes ticket{'s' if len(v.next.overtakes) > 1 else ''} "
                         f"{', '.join(map(str, v.next.overtakes))}") if v.next.overtakes else ""
            when = "at the holder's release" if h is not None else "now (the lock has no holder)"
            dead = f" -- its {_lease(w.lease)}" if w.lease is not None and w.lease.status != ALIVE else ""
            lines.append(f"  next, {when}: ticket {w.ticket} {_who(w.host, w.pid, w.thread)} "
                         f"in lane {v.next.lane}{overtakes}{dead}")
        if any(w.foreign_lane for w in v.waiters):
            lines.append(f"  note: a waiter's lane is not one of {', '.join(lanes)}: give the lanes its "
                         "users configure (--lanes, or --config-file), else 'next' may be wrong")
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------------


def _max_bypass(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return check_max_bypass(int(text))
    except (ValueError, FairlockError) as exc:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 or none, got {text!r}") from exc


def _lanes(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be lane names separated by commas, highest priority "
                                         f"first, got {text!r}")
    return names


def _prefix(text: str) -> str:
    if not text.startswith("/") or "\0" in text:
        raise argparse.ArgumentTypeError(f"must start with '/', got {text!r}")
    return text.rstrip("/") or "/"


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "inspect",
        help="show the holders and queues of etcd locks, and who is next",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_etcd_arguments(parser, config_file=True, required=True)
    parser.add_argument("name", nargs="?", help="one lock name for details")
    parser.add_argument("--prefix", type=_prefix, help="the key prefix (default: the URL's path, else /fairlock)")
    policy = parser.add_argument_group("the locks' policy (default: what the URL or file says, else the defaults)")
    policy.add_argument("--lanes", type=_lanes, help="the locks' lanes, highest priority first: a,b,c")
    policy.add_argument("--default-lane", help="the lane of a request that names none")
    policy.add_argument("--max-bypass", type=_max_bypass, default=argparse.SUPPRESS, metavar="K",
                        help="how often a waiter may be overtaken (a whole number, or none)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def _policy(where: Where, args: argparse.Namespace) -> Policy:
    if args.lanes is None and args.default_lane is None and not hasattr(args, "max_bypass"):
        return where.policy
    lanes = args.lanes if args.lanes is not None else where.policy.lanes.names
    default = args.default_lane
    if default is None and args.lanes is None:
        default = where.policy.lanes.default
    k = args.max_bypass if hasattr(args, "max_bypass") else where.policy.max_bypass
    return Policy.of(lanes, default, k)


def run(args: argparse.Namespace) -> int:
    try:
        where = where_from_args(args)
        assert where is not None  # the parser requires one source
        if args.prefix:
            where = replace(where, prefix=args.prefix)
        policy = _policy(where, args)
        transport = where.transport()
    except FairlockError as exc:
        print(f"fairlock inspect: error: {exc}", file=sys.stderr)
        return 2
    prefix = where.prefix.rstrip("/").encode()
    try:
        found, views = inspect_locks(transport, prefix, policy, args.name)
        endpoint = str(getattr(transport, "current_endpoint", where.config.endpoints[0]))
    except FairlockError as exc:
        print(f"fairlock inspect: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()
    if args.json:
        result = InspectResult(where.source, where.prefix, endpoint, found.revision,
                               (found.start.decode(errors="replace"), found.end.decode(errors="replace")),
                               list(policy.lanes.names), policy.lanes.default, policy.max_bypass, views)
        print(json.dumps(asdict(result), indent=2))
        return 0
    what = f"lock {args.name!r}" if args.name else "locks"
    where_text = (f" under prefix {where.prefix!r} (read keys {found.start.decode(errors='replace')!r}.."
                  f"{found.end.decode(errors='replace')!r} at {endpoint}, revision {found.revision})")
    if not views:
        print(f"no {what} held or waited on{where_text}")
        return 0
    print(format_locks(views, detail=args.name is not None, policy=policy))
    return 0
