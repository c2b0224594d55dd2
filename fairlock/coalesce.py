"""Coalesced refreshes: calls still queued for a lock share the run that starts next.

nova refreshes an instance's network-info cache under ``refresh_cache-<uuid>`` once per
"network-changed" event, O(vifs) neutron calls each, and every queued refresh repeats the work
of the one before it. With coalescing, the calls for the same lock and the same key that are
still waiting when one of them starts share that run's result instead of running again.

The rules, in order:

1. **Freshness.** A call is only ever served by a run that *started after the call arrived*: a
   call can join a run only while that run is pending (not started), and "started" is recorded
   under the coalescer's mutex before the function runs. No caller ever receives a result
   computed before it asked.
2. **Representatives.** Every pending run has, for each lane among its members, exactly one
   *representative* queued on the lock in that lane (or a follower promoted to become one, about
   to queue). The other members are *followers*: they do not queue on the lock, they wait on a
   private event. The first representative granted the lock starts the run; so a run starts no
   later than its oldest member of each lane would have been granted on its own, and a
   ``fairlock.lane("migration")`` caller that joins a run of "normal" callers keeps its lane.
3. **Wake-up.** When the run ends, the runner publishes the outcome *before* it releases the
   lock, then opens each follower's event: followers stop waiting at once. A representative that
   did not get to run (another lane's representative ran first) still waits for its own grant,
   finds the outcome published and passes the lock on at once: one empty grant, no work.
4. **Keys and covers.** Calls coalesce only for the same function, the same lock object and an
   equal key; ``covers(run_key, call_key)`` widens this: a call may join a pending run whose key
   covers its own, and a run that starts takes over every pending run whose key it covers (their
   members arrived before it started, so rule 1 holds). A key function may return :data:`ALONE`
   for a call that must not be shared (it then simply runs under the lock).
5. **Errors.** An ``Exception`` raised by the run is raised in every member (as
   ``concurrent.futures`` does): a neutron that fails for the runner fails for the followers
   too, and is not hammered once per queued caller. ``errors="retry"`` instead lets each
   follower of a failed run join one more run before it gets that run's exception. A
   ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``, ``GreenletExit``)
   *abandons* the run: it propagates in the runner only, and the other members start over.
6. **Leaving.** A representative that leaves without running (timeout, or an exception such as
   a greenlet kill while queued) hands its duty to the oldest follower of its lane, so the
   invariant of rule 2 is restored where it is broken. A follower that leaves (timeout, kill)
   is taken out of the run first, so only a live follower is ever promoted; one killed just
   after its promotion passes the duty on in turn.

Not guaranteed: that the runner's arguments other than the key (e.g. nova's ``context``) are the
ones a follower passed; the result object is shared unless ``copy`` is given. Works with native
threads and eventlet green threads: threading primitives are created at call time from the
``threading`` module; fairlock never imports eventlet.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .context import current_lane
from .errors import AcquireTimeout, ArgumentTypeError, InvalidArgumentError
from .local import check_timeout
from .protocol import LockLike
from ._core import Lanes, successor

__all__ = ["ALONE", "Coalescer", "CoalesceStatistics", "coalesced"]

F = TypeVar("F", bound=Callable[..., Any])


class _Alone:
    """The key of a call that must run on its own (never shared, never served by another)."""

    _instance: _Alone | None = None

    def __new__(cls) -> _Alone:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "fairlock.coalesce.ALONE"


#: Return this from a key function for a call that must not be coalesced.
ALONE = _Alone()

_PENDING, _RUNNING, _DONE, _ABANDONED = "pending", "running", "done", "abandoned"
_ERROR_MODES = ("share", "retry")


@dataclass(frozen=True)
class CoalesceStatistics:
    """Counters of one :class:`Coalescer` (a snapshot)."""

    calls: int  #: calls made (a retried call counts once)
    runs: int  #: times the function actually ran
    shared: int  #: calls served by a run that another call started
    retries: int  #: times a member started over (abandoned run, ``errors="retry"``, promotion)
    empty_grants: int  #: representatives granted the lock after their run had ended
    pending: int  #: runs waiting to start, now
    following: int  #: followers waiting for a run, now


class _Outcome:
    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error


class _Follower:
    __slots__ = ("lane", "event", "promoted")

    def __init__(self, lane: str | None, event: Any) -> None:
        self.lane = lane
        self.event = event
        self.promoted = False


class _Run:
    __slots__ = ("fn", "lock", "key", "args", "kwargs", "state", "outcome", "reps", "followers", "absorbed")

    def __init__(
        self, fn: Callable[..., Any], lock: LockLike, key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.fn = fn
        self.lock = lock  # strong reference: the pending table is keyed by id(lock)
        self.key = key
        # The call that opened the run: what a runner whose own key is only covered executes.
        self.args = args
        self.kwargs = kwargs
        self.state = _PENDING
        self.outcome: _Outcome | None = None
        self.reps: set[str | None] = set()  # lanes with a representative queued (rule 2)
        self.followers: list[_Follower] = []
        self.absorbed: list[_Run] = []  # pending runs this one took over when it started

    def __repr__(self) -> str:
        return f"<_Run key={self.key!r} {self.state}, reps={sorted(map(str, self.reps))}, followers={len(self.followers)}>"


_RETRY = object()


def _lanes_of(lock: LockLike) -> Lanes | None:
    lanes = getattr(lock, "lanes", None)
    return lanes if isinstance(lanes, Lanes) else None


def _effective_lane(lock: LockLike, lane: str | None) -> str | None:
    """The lane ``lock`` will queue this caller in (None for a lock without lanes)."""
    lanes = _lanes_of(lock)
    if lanes is None:
        return None
    if lane is not None:
        lanes.rank(lane)  # an explicit lane the lock does not know is an error, as in acquire
        return lane
    context_lane = current_lane()
    return context_lane if lanes.knows(context_lane) else lanes.default


def _acquire(lock: LockLike, lane: str | None, timeout: float | None) -> bool:
    if _lanes_of(lock) is not None:
        return bool(lock.acquire(True, timeout, lane))
    if timeout is None:
        return bool(lock.acquire())
    return bool(lock.acquire(True, timeout))


class Coalescer:
    """Runs functions under a lock, sharing one run among the calls queued for it.

    >>> import fairlock
    >>> from fairlock.coalesce import Coalescer
    >>> lock = fairlock.Lock("refresh_cache-1")
    >>> co = Coalescer()
    >>> co.call(lock, "instance-1", lambda: "nw_info")
    'nw_info'
    >>> co.statistics().runs
    1

    ``covers(run_key, call_key)`` -- True when a run for ``run_key`` also serves a call for
    ``call_key`` (equal keys always do). It runs under the coalescer's mutex, as do the keys'
    ``==``: keep both cheap, and never block or yield in them. ``errors`` -- ``"share"`` (default: members of a failed
    run get its exception) or ``"retry"`` (a follower of a failed run joins one more run).
    ``copy`` -- applied to the result for every member but the runner (e.g. ``copy.deepcopy``
    when callers mutate it).
    """

    def __init__(
        self,
        *,
        covers: Callable[[Hashable, Hashable], bool] | None = None,
        errors: str = "share",
        copy: Callable[[Any], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if covers is not None and not callable(covers):
            raise ArgumentTypeError("covers must be callable or None")
        if errors not in _ERROR_MODES:
            raise InvalidArgumentError(f"errors must be one of {_ERROR_MODES}, got {errors!r}")
        if copy is not None and not callable(copy):
            raise ArgumentTypeError("copy must be callable or None")
        if not callable(clock):
            raise ArgumentTypeError("clock must be callable")
        self._covers = covers
        self._retry_errors = errors == "retry"
        self._copy = copy
        self._clock = clock
        # Guards a few lines at a time and is never held across a wait or a yield, so a lock
        # created before monkey patching stays harmless (as in fairlock.local).
        self._mutex = threading.Lock()
        self._pending: dict[int, list[_Run]] = {}  # id(lock) -> pending runs, oldest first
        self._calls = 0
        self._runs = 0
        self._shared = 0
        self._retries = 0
        self._empty_grants = 0

    # -- the call ---------------------------------------------------------------------------------

    def call(
        self,
        lock: LockLike,
        key: Hashable,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        lane: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``fn(*args, **kwargs)`` under ``lock``, or the result of a run that started after now.

        ``lane`` (else the context's :func:`fairlock.lane`) is the lane this call queues in.
        ``timeout`` bounds the whole wait (lock or run); :class:`~fairlock.AcquireTimeout` if it
        passes before this call is served.
        """
        _check_call(lock, fn, args, kwargs)
        kwargs = {} if kwargs is None else kwargs
        seconds = check_timeout(True, timeout)
        my_lane = _effective_lane(lock, lane)
        with self._mutex:
            self._calls += 1
        if key is ALONE or _owned(lock):
            # The owner calling again would wait for a run that needs the lock it holds: take
            # the plain path, so a non-reentrant fairlock raises DeadlockError as it would.
            return self._run_alone(lock, my_lane, seconds, fn, args, kwargs)
        deadline = None if seconds is None else self._clock() + seconds
        retried_error = False
        while True:
            run, follower = self._join(lock, key, fn, my_lane, args, kwargs)
            if follower is None:
                result = self._represent(run, lock, my_lane, deadline, key, args, kwargs)
            else:
                result = self._follow(run, follower, lock, my_lane, deadline, key, args, kwargs)
            if result is _RETRY:
                with self._mutex:
                    self._retries += 1
                continue
            outcome, ran = result
            if outcome.error is not None:
                if not ran and self._retry_errors and not retried_error:
                    retried_error = True
                    with self._mutex:
                        self._retries += 1
                    continue
                raise outcome.error
            if ran or self._copy is None:
                return outcome.value
            return self._copy(outcome.value)

    def _run_alone(
        self, lock: LockLike, lane: str | None, seconds: float | None, fn: Callable[..., Any],
        args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        if not _acquire(lock, lane, seconds):
            raise AcquireTimeout(f"{lock!r}: not acquired within {seconds}s")
        try:
            with self._mutex:
                self._runs += 1
            return fn(*args, **kwargs)
        finally:
            lock.release()

    def _join(
        self, lock: LockLike, key: Hashable, fn: Callable[..., Any], lane: str | None,
        args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> tuple[_Run, _Follower | None]:
        """Join (or open) the pending run for this call: as its lane's representative or a follower."""
        event = threading.Event()  # looked up now: green under monkey patching
        with self._mutex:
            runs = self._pending.setdefault(id(lock), [])
            run = self._find(runs, fn, key)
            if run is None:
                run = _Run(fn, lock, key, args, kwargs)
                runs.append(run)
            if lane not in run.reps:
                run.reps.add(lane)
                return run, None
            follower = _Follower(lane, event)
            run.followers.append(follower)
            return run, follower

    def _find(self, runs: list[_Run], fn: Callable[..., Any], key: Hashable) -> _Run | None:
        covering = None
        for run in runs:
            if run.fn != fn:  # == so that bound methods of one object match
                continue
            if run.key == key:
                return run
            if covering is None and self._covers is not None and self._covers(run.key, key):
                covering = run
        return covering

    # -- representatives --------------------------------------------------------------------------

    def _represent(
        self, run: _Run, lock: LockLike, lane: str | None, deadline: float | None,
        key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        remaining = None if deadline is None else max(0.0, deadline - self._clock())
        try:
            granted = _acquire(lock, lane, remaining)
        except BaseException:
            self._leave(run, lane)
            raise
        if not granted:
            finished = self._leave(run, lane)
            if finished is not None:
                return finished  # served while we gave up: the run ended just now
            raise AcquireTimeout(f"{lock!r}: not acquired within the timeout")
        with self._mutex:
            run.reps.discard(lane)
            state = run.state
            if state == _PENDING:
                self._start(run)
            elif state == _DONE:
                self._empty_grants += 1
                self._shared += 1
        if state == _RUNNING:  # pragma: no cover - the runner holds the lock while RUNNING
            lock.release()
            raise AssertionError(f"{run!r} granted to a second representative while running")
        if state != _PENDING:
            # Invariant (rule 3): a run ends before its runner releases, so a representative
            # granted later finds it done (or abandoned) and passes the lock straight on.
            lock.release()
            return _RETRY if state == _ABANDONED else (run.outcome, False)
        if key != run.key:
            # We joined through covers: run the wider call that the run stands for, not ours.
            args, kwargs = run.args, run.kwargs
        return self._execute(run, lock, args, kwargs)

    def _start(self, run: _Run) -> None:
        """Mark ``run`` started and take over the pending runs it covers. Caller holds _mutex."""
        run.state = _RUNNING
        runs = self._pending[id(run.lock)]
        runs.remove(run)
        if self._covers is not None:
            for other in list(runs):
                if other.fn == run.fn and (other.key == run.key or self._covers(run.key, other.key)):
                    # Its members arrived before this start: serving them keeps rule 1.
                    other.state = _RUNNING
                    runs.remove(other)
                    run.absorbed.append(other)
        if not runs:
            del self._pending[id(run.lock)]
        self._runs += 1

    def _execute(self, run: _Run, lock: LockLike, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            value = run.fn(*args, **kwargs)
        except Exception as exc:
            outcome = _Outcome(error=exc)
        except BaseException:
            # Killed or interrupted: nobody else should see this; the members start over.
            followers = self._end(run, None)
            lock.release()
            _wake(followers)
            raise
        else:
            outcome = _Outcome(value=value)
        followers = self._end(run, outcome)
        lock.release()
        _wake(followers)
        return outcome, True

    def _end(self, run: _Run, outcome: _Outcome | None) -> list[_Follower]:
        """Publish the outcome (None: abandoned) of ``run`` and the runs it absorbed."""
        followers: list[_Follower] = []
        with self._mutex:
            for each in [run, *run.absorbed]:
                each.state = _ABANDONED if outcome is None else _DONE
                each.outcome = outcome
                followers.extend(each.followers)
                each.followers = []
            if outcome is not None:
                self._shared += len(followers)
        return followers

    def _leave(self, run: _Run, lane: str | None) -> Any:
        """A representative gives up without running; returns the outcome if the run ended."""
        promoted = None
        with self._mutex:
            if run.state == _DONE:
                run.reps.discard(lane)
                self._shared += 1
                return run.outcome, False
            run.reps.discard(lane)
            if run.state == _PENDING:
                # Restore rule 2 for this lane: the core names who takes over (the oldest
                # follower of the lane).
                heir = successor([f.lane for f in run.followers], lane)
                if heir is not None:
                    promoted = run.followers[heir]
                    run.followers.remove(promoted)
                    promoted.promoted = True
                    run.reps.add(lane)
                elif not run.reps and not run.followers:
                    runs = self._pending.get(id(run.lock), [])
                    if run in runs:
                        runs.remove(run)
                        if not runs:
                            del self._pending[id(run.lock)]
        if promoted is not None:
            promoted.event.set()
        return None

    # -- followers --------------------------------------------------------------------------------

    def _follow(
        self, run: _Run, follower: _Follower, lock: LockLike, lane: str | None, deadline: float | None,
        key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        remaining = None if deadline is None else max(0.0, deadline - self._clock())
        try:
            follower.event.wait(remaining)
        except BaseException:
            # Killed while waiting (greenthread.kill, eventlet.Timeout, KeyboardInterrupt).
            self._drop(run, follower, lane)
            raise
        with self._mutex:
            if follower.promoted:
                promoted = True
            else:
                promoted = False
                if run.state == _DONE:
                    return run.outcome, False
                if run.state == _ABANDONED:
                    return _RETRY
                # Timed out while the run is still pending or running: leave it.
                run.followers.remove(follower)
        if promoted:
            return self._represent(run, lock, lane, deadline, key, args, kwargs)
        raise AcquireTimeout(f"{lock!r}: no run served this call within the timeout")

    def _drop(self, run: _Run, follower: _Follower, lane: str | None) -> None:
        """A follower leaves by an exception. It must not stay in the run, where a leaving
        representative would promote it and the run would stay pending with nobody queued for
        it; if it was promoted already, it passes the duty on as a representative that leaves
        does (rule 6)."""
        with self._mutex:
            promoted = follower.promoted
            if not promoted and follower in run.followers:
                run.followers.remove(follower)
        if promoted:
            self._leave(run, lane)

    # -- queries ----------------------------------------------------------------------------------

    def statistics(self) -> CoalesceStatistics:
        """A consistent snapshot of runs, followers and pending requests."""
        with self._mutex:
            pending = [run for runs in self._pending.values() for run in runs]
            return CoalesceStatistics(
                calls=self._calls,
                runs=self._runs,
                shared=self._shared,
                retries=self._retries,
                empty_grants=self._empty_grants,
                pending=len(pending),
                following=sum(len(run.followers) for run in pending),
            )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<fairlock.coalesce.Coalescer {s.calls} call(s), {s.runs} run(s), {s.pending} pending>"


def _is_lock(lock: LockLike) -> bool:
    return callable(getattr(lock, "acquire", None)) and callable(getattr(lock, "release", None))


def _check_call(lock: LockLike, fn: Any, args: Any, kwargs: Any) -> None:
    """Bad arguments fail before the call counts or queues (else deep inside, under the lock)."""
    if not _is_lock(lock):
        raise ArgumentTypeError(f"lock must have acquire() and release(), got {type(lock).__name__}")
    if not callable(fn):
        raise ArgumentTypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(args, (tuple, list)):
        raise ArgumentTypeError(f"args must be a tuple, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ArgumentTypeError(f"kwargs must be a mapping or None, got {type(kwargs).__name__}")


def _owned(lock: LockLike) -> bool:
    owned = getattr(lock, "owned", None)
    return bool(owned()) if callable(owned) else False


def _wake(followers: list[_Follower]) -> None:
    for follower in followers:
        follower.event.set()


def coalesced(
    lock: LockLike,
    *,
    key: Callable[..., Hashable] | None = None,
    covers: Callable[[Hashable, Hashable], bool] | None = None,
    lane: str | None = None,
    timeout: float | None = None,
    errors: str = "share",
    copy: Callable[[Any], Any] | None = None,
    registry: Any = None,
) -> Callable[[F], F]:
    """Decorator: coalesce the queued calls of a function that runs under a lock.

    ``lock`` is a lock object (a :class:`fairlock.Lock`, or anything with ``acquire`` and
    ``release``), or a callable taking the function's arguments and returning a lock or a lock
    name (a name is looked up in ``registry``, default the process-wide fairlock registry).
    ``key`` takes the function's arguments and returns what must be equal for two calls to share
    a run (default: every call for the same lock coalesces); it may return :data:`ALONE`.
    ``lane`` overrides the context's lane. ``covers``, ``errors``, ``copy``: see
    :class:`Coalescer`. The wrapper's ``coalescer`` attribute gives the statistics.

    nova's cache refresh, port-scoped refreshes served by a later full one::

        def _nw_info_key(self, context, instance, refresh_vif_id=None, **kwargs):
            return coalesce.ALONE if kwargs else refresh_vif_id   # None: a full refresh

        @coalesce.coalesced(
            lambda self, context, instance, **kw: lockutils.internal_lock("refresh_cache-%s" % instance.uuid),
            key=_nw_info_key,
            covers=lambda run, call: run is None or run == call)
        def get_instance_nw_info(self, context, instance, **kwargs): ...

    (``fairlock.lockutils.internal_lock(name)`` is the lock ``fairlock.lockutils.lock(name)``
    takes, so both keep excluding each other; see doc/source/nova.rst.)
    """
    if errors not in _ERROR_MODES:
        raise InvalidArgumentError(f"errors must be one of {_ERROR_MODES}, got {errors!r}")
    if key is not None and not callable(key):
        raise ArgumentTypeError("key must be a callable taking the function's arguments")
    fixed = _is_lock(lock)
    if not fixed and not callable(lock):
        raise ArgumentTypeError("lock must be a lock object or a callable returning a lock or a name")
    check_timeout(True, timeout)
    if lane is not None:
        if fixed:
            _effective_lane(lock, lane)  # a lane the lock does not know fails now, not at each call
        elif not isinstance(lane, str):
            raise ArgumentTypeError(f"lane must be a str, got {type(lane).__name__}")
    Coalescer(covers=covers, errors=errors, copy=copy)  # the coalescer's own checks, now

    def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if fixed:
            return lock
        found = lock(*args, **kwargs)
        if isinstance(found, str):
            if registry is None:
                from .registry import default_registry

                return default_registry.get(found)
            return registry.get(found)
        if not _is_lock(found):
            raise ArgumentTypeError(
                f"coalesced(): the lock callable returned {type(found).__name__}, not a lock or a lock name")
        return found

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise ArgumentTypeError(f"coalesced() decorates a callable, got {type(fn).__name__}")
        coalescer = Coalescer(covers=covers, errors=errors, copy=copy)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            the_lock = resolve(args, kwargs)
            the_key = key(*args, **kwargs) if key is not None else None
            return coalescer.call(the_lock, the_key, fn, args, kwargs, lane=lane, timeout=timeout)

        wrapper.coalescer = coalescer  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
