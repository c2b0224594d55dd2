"""A drop-in for ``oslo_concurrency.lockutils`` whose internal locks are fair.

Adopt it with ``from fairlock import lockutils`` in place of ``from oslo_concurrency import
lockutils``. This module only translates oslo's API onto :class:`fairlock.Lock`; every decision
about who gets a lock next is made by fairlock's core. What it keeps from oslo, exactly:

1. The signatures (positional order included), the return values, the ``[oslo_concurrency]``
   options, :class:`AcquireLockFailedException`, and the log lines: the same format strings with
   the same arguments, emitted at the same moments relative to acquire and release, from the
   logger named ``oslo_concurrency.lockutils`` (so operators' log levels, filters and scrapers
   keep working; see doc/source/lockutils.rst).
2. ``external=True``: the internal lock first, then a file lock (fasteners' InterProcessLock), as
   oslo does. The file lock goes through :func:`set_external_backend`, the seam where a
   distributed backend replaces it.

What it changes, each a row of the compatibility table in doc/source/lockutils.rst:

3. Every internal lock is one non-reentrant :class:`fairlock.Lock` per name: FIFO with direct handoff
   whatever ``fair=`` says, so fair and non-fair callers of one name exclude each other.
   ``fair=True`` calls are re-entrant for the holder, as oslo's fair lock (fasteners' write lock)
   is. ``blocking=False`` and ``semaphores=`` work with ``fair=True``. ``ReaderWriterLock`` and
   ``FairLocks`` give fairlock's fair reader/writer lock (:mod:`fairlock.rwlock`) with fasteners'
   methods.
4. Extra keyword-only arguments ``timeout=`` (a timeout fails like a non-blocking acquire) and
   ``lane=`` (else the caller's :func:`fairlock.lane`, else the configured default lane).
5. Bad arguments raise at once: names are non-empty ``str``; lanes, timeouts and ``blocking`` are
   checked before anything is logged or locked.

oslo.concurrency stays installed and imported: its option objects and its exception class are
shared, so both modules can live in one process (os-brick still imports oslo's) and agree on
``lock_path`` and on what ``except AcquireLockFailedException`` catches.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, Protocol, TypeVar

import fasteners
from oslo_concurrency import lockutils as _oslo
from oslo_config import cfg
from oslo_utils import reflection

from ._core import DEFAULT_MAX_BYPASS, Lanes, check_max_bypass
from ._primitives import thread_name
from .context import lane as _lane_context
from .context import resolve_lane
from .errors import ArgumentTypeError, FairlockError, InvalidArgumentError
from . import history as _history
from .history import LOCKUTILS as _HISTORY
from .local import Lock, check_name
from .local import no_counters
from .registry import NameTable
from .rwlock import ReaderWriterLock
from .stats import LockStatistics, NameStatistics

__all__ = [
    "CONF",
    "DEFAULT_LANE",
    "DEFAULT_LANES",
    "AcquireLockFailedException",
    "ExternalLock",
    "ExternalLockBackend",
    "FairLocks",
    "FileLockBackend",
    "InterProcessLock",
    "InternalLock",
    "ReaderWriterLock",
    "Semaphores",
    "external_lock",
    "get_external_backend",
    "get_lock_path",
    "internal_fair_lock",
    "internal_lock",
    "list_opts",
    "live_locks",
    "lock",
    "lock_statistics",
    "lock_with_prefix",
    "main",
    "remove_external_lock_file",
    "remove_external_lock_file_with_prefix",
    "set_defaults",
    "set_external_backend",
    "synchronized",
    "synchronized_with_prefix",
]

P = ParamSpec("P")
T = TypeVar("T")

#: oslo's logger name, kept on purpose: ``default_log_levels``, logging config files, filters and
#: scrapers that name ``oslo_concurrency.lockutils`` keep applying to the same lines.
LOG = logging.getLogger("oslo_concurrency.lockutils")

#: The lanes of every lockutils lock unless configured otherwise, highest priority first.
DEFAULT_LANES: tuple[str, ...] = ("migration", "normal", "events")
DEFAULT_LANE = "normal"

#: Read at call time, so tests can replace it (oslo reads ``timeutils.now``, the same clock).
_clock: Callable[[], float] = time.monotonic

# -- options ---------------------------------------------------------------------------------------

_fairlock_opts = [
    cfg.ListOpt(
        "fairlock_lanes",
        default=list(DEFAULT_LANES),
        help="fairlock: the lanes (priority classes) of every lockutils lock, highest priority "
        "first. A waiter in a higher lane is served before waiters of lower lanes, within the "
        "fairlock_max_bypass bound.",
    ),
    cfg.StrOpt(
        "fairlock_default_lane",
        default=DEFAULT_LANE,
        help="fairlock: the lane of a lock request that names none, neither with lane= nor with "
        "fairlock.lane(...) around the caller. Must be one of fairlock_lanes.",
    ),
    cfg.StrOpt(
        "fairlock_backend_url",
        default=None,
        secret=True,
        help="fairlock: an etcd URL (etcd3+http://host:2379[,host2:2379]/prefix?lease_ttl=10, "
        "etcd3+https://... with ca_cert, cert_cert, cert_key, username, password). When set, "
        "external=True locks are fair distributed locks on etcd, shared by every host using the "
        "same etcd and prefix, instead of files under lock_path.",
    ),
    cfg.IntOpt(
        "fairlock_max_bypass",
        default=DEFAULT_MAX_BYPASS,
        min=0,
        help="fairlock: how many times a waiter may be overtaken by later waiters of higher "
        "lanes before it is served ahead of them. 0 means strict FIFO whatever the lanes.",
    ),
    cfg.FloatOpt(
        "fairlock_slow_wait",
        default=0.0,
        min=0.0,
        help="fairlock: seconds. A request for a lockutils lock still waiting after this long logs "
        "one WARNING (logger oslo_concurrency.lockutils) with the lock name, the waiter and its "
        "lane, the holder and how many wait ahead; logged while it still waits. 0 (the default) "
        "disables it. Applies to locks created afterwards.",
    ),
    cfg.FloatOpt(
        "fairlock_slow_hold",
        default=0.0,
        min=0.0,
        help="fairlock: seconds. A lockutils lock held longer than this logs one WARNING "
        "(logger oslo_concurrency.lockutils) at release with the lock name, the holder, its lane "
        "and the seconds held. 0 (the default) disables it. Applies to locks created afterwards.",
    ),
]

# oslo's own Opt objects: registering equal-but-distinct copies would make oslo.config raise
# DuplicateOptError as soon as one module's set_defaults() changed a default.
_opts: list[cfg.Opt] = list(_oslo._opts) + _fairlock_opts

CONF = cfg.CONF


def _register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(_opts, group="oslo_concurrency")


_register_opts(CONF)

_UNSET: Any = object()


def set_defaults(
    lock_path: str | None = _UNSET,
    *,
    fairlock_lanes: Sequence[str] = _UNSET,
    fairlock_default_lane: str | None = _UNSET,
    fairlock_max_bypass: int = _UNSET,
    fairlock_slow_wait: float = _UNSET,
    fairlock_slow_hold: float = _UNSET,
) -> None:
    """Set option defaults: ``lock_path`` as oslo does, plus fairlock's lane options and slow
    wait/hold thresholds (seconds, 0 = off).

    Tests use it to point ``lock_path`` at a temporary directory. Locks created afterwards use the
    new lane options; a lock already in use keeps the lanes it was created with.
    """
    given = {
        key: value
        for key, value in (
            ("lock_path", lock_path),
            ("fairlock_lanes", fairlock_lanes),
            ("fairlock_default_lane", fairlock_default_lane),
            ("fairlock_max_bypass", fairlock_max_bypass),
            ("fairlock_slow_wait", fairlock_slow_wait),
            ("fairlock_slow_hold", fairlock_slow_hold),
        )
        if value is not _UNSET
    }
    for key in ("fairlock_slow_wait", "fairlock_slow_hold"):
        if key in given:
            _check_seconds(key, given[key])
    defaults = {opt.dest: opt.default for opt in _fairlock_opts}
    defaults.update((key, value) for key, value in given.items() if key in defaults)
    # Refuse a bad combination of defaults now, not at the first lock.
    _build_lanes(defaults["fairlock_lanes"], defaults["fairlock_default_lane"], defaults["fairlock_max_bypass"])
    if "fairlock_lanes" in given:
        given["fairlock_lanes"] = list(given["fairlock_lanes"])
    cfg.set_defaults(_opts, **given)
    # oslo.config caches option values and cfg.set_defaults does not clear that cache; a
    # (repeated, otherwise idempotent) registration does.
    _register_opts(CONF)


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be >= 0 seconds (0 turns it off), got {value}")


def get_lock_path(conf: cfg.ConfigOpts) -> str | None:
    """The directory of external lock files configured in ``conf``."""
    _register_opts(conf)
    path: str | None = conf.oslo_concurrency.lock_path
    return path


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options of this module for oslo-config-generator: oslo's two plus fairlock's."""
    return [("oslo_concurrency", copy.deepcopy(_opts))]


def _build_lanes(
    names: object, default: object, max_bypass: object, what: str = "invalid [oslo_concurrency] fairlock options"
) -> tuple[Lanes, int]:
    if not isinstance(names, (list, tuple)):
        raise InvalidArgumentError(f"{what}: the lanes must be a list of lane names, got {names!r}")
    try:
        lanes = Lanes(tuple(names), default)  # type: ignore[arg-type]
        checked = check_max_bypass(max_bypass)  # type: ignore[arg-type]
    except (ArgumentTypeError, InvalidArgumentError) as exc:
        raise InvalidArgumentError(f"{what}: {exc}") from exc
    if checked is None:
        raise InvalidArgumentError(f"{what}: max_bypass must be an int >= 0")
    return lanes, checked


_options_cache: tuple[tuple[Any, ...], bool, tuple[Any, ...], dict[str, Any]] | None = None

# The options _lock_options reads, as (group, name).
_OPTION_KEYS = tuple(
    ("oslo_concurrency", option)
    for option in ("fairlock_lanes", "fairlock_default_lane", "fairlock_max_bypass", "fairlock_slow_wait",
                   "fairlock_slow_hold")
)


def _lock_options() -> dict[str, Any]:
    """Keyword arguments for a new lock, from the options in force now (cached per value)."""
    global _options_cache
    cached = _options_cache
    record_holds = _history._record_holds
    # Reading the options through CONF costs microseconds: more than the rest of an uncontended
    # lock(name). oslo.config keeps every value it returned in a private cache, which it empties
    # on every change (set_override, set_default, reload, mutation, ...). We leave a mark of our
    # own in that cache when we read the options: while the mark is there, nothing changed. (Only
    # get, set and clear ever touch that dict; without it -- another oslo.config -- we simply
    # read CONF every time.)
    values = CONF.__dict__.get("_ConfigOpts__cache")
    if cached is not None and cached[1] is record_holds and values is not None and values.get(_MARK) is cached:
        return cached[3]
    group = CONF.oslo_concurrency
    read = tuple(getattr(group, option) for _, option in _OPTION_KEYS)
    key = (tuple(read[0]), *read[1:], record_holds)
    if cached is not None and cached[2] == key:
        options = cached[3]
    else:
        lanes, max_bypass = _build_lanes(*key[:3])
        options = {"lanes": lanes, "max_bypass": max_bypass, "reentrant": False, **_slow_options(*key[3:5]),
                   "record_holds": record_holds}
    _options_cache = cached = (read, record_holds, key, options)
    if isinstance(values, dict):
        values[_MARK] = cached
    return options


#: Our mark in oslo.config's value cache (see _lock_options); no option has such a key.
_MARK = ("fairlock.lockutils", "options read")


def _slow_options(slow_wait: float | None, slow_hold: float | None) -> dict[str, Any]:
    """Lock keyword arguments for the slow wait/hold thresholds (0 or None: off, costs nothing)."""
    options: dict[str, Any] = {"slow_wait": slow_wait or None, "slow_hold": slow_hold or None}
    if slow_wait or slow_hold:
        options["logger"] = LOG
    return options


# -- internal locks --------------------------------------------------------------------------------


class InternalLock(Lock, threading.Semaphore):
    """The internal lock of one name: a non-reentrant :class:`fairlock.Lock`, as oslo's default.

    It also passes ``isinstance(lock, threading.Semaphore)``, because oslo's ``lock()`` documents
    that it yields a semaphore and callers check that. It is not a counting semaphore: ``release``
    by a thread that does not hold it raises :class:`fairlock.NotOwnerError`. A blocking
    re-entry by the holder raises :class:`fairlock.DeadlockError` (oslo's default semaphore
    hangs), except through ``lock(name, fair=True)``, which re-enters as oslo's fair lock
    (fasteners' write lock) does.
    """

    __slots__ = ()

    def __del__(self) -> None:
        # The name left its container: this lock's counts join the name's history (one tuple
        # appended; see fairlock.history). Nobody else can touch the counters any more.
        try:
            if self._lane_counters is not None or self._timed:  # someone queued, or holds were timed
                _history_dropped(self.name, self._fast_grants + self._handoffs, self._handoffs, self._lane_typos,
                                 self.lanes.names, self._lane_counters or no_counters(self.lanes))
            else:  # the common case, a lock that nobody waited for: its name and grants
                _granted_append((self.name, self._fast_grants))  # History.granted, inlined
                if len(_granted) >= _FOLD_EVERY:
                    _HISTORY.fold_if_free()
        except (AttributeError, TypeError):
            pass  # a lock whose __init__ failed, or interpreter shutdown


_history_dropped = _HISTORY.dropped
_granted = _HISTORY.uncontended
_granted_append = _granted.append
_FOLD_EVERY = _history.FOLD_EVERY
# Every container, for live_locks() and lock_statistics(); weak, as the containers' locks.
_containers: weakref.WeakSet[Semaphores] = weakref.WeakSet()


class Semaphores:
    """A container of named internal locks, garbage collected when no longer used.

    Like oslo's, it holds its locks weakly: a lock lives while someone references it (every
    ``with lock(name):`` block does) and leaves the container afterwards. Unlike oslo's, the
    locks are fair; :func:`lock` accepts one for ``semaphores=`` whatever ``fair=`` says.

    Its locks get the lanes and ``max_bypass`` configured in ``[oslo_concurrency]`` when they are
    created, unless the container was built with its own (``Semaphores(lanes=("a", "b"))``).
    """

    def __init__(
        self,
        *,
        lanes: Sequence[str] | None = None,
        default_lane: str | None = None,
        max_bypass: int = _UNSET,
    ) -> None:
        self._options: dict[str, Any] | None = None
        if lanes is not None or default_lane is not None or max_bypass is not _UNSET:
            defaults = {opt.dest: opt.default for opt in _fairlock_opts}
            built, checked = _build_lanes(
                defaults["fairlock_lanes"] if lanes is None else lanes,
                default_lane,
                defaults["fairlock_max_bypass"] if max_bypass is _UNSET else max_bypass,
                "invalid Semaphores() options",
            )
            self._options = {"lanes": built, "max_bypass": checked, "reentrant": False}
        self._locks: NameTable[InternalLock] = NameTable()
        _containers.add(self)

    def get(self, name: str) -> InternalLock:
        """The lock called ``name``, created with the options in force on first use."""
        found = self._locks.get(name)  # the hot path: a live name costs a dict lookup
        if found is None:
            check_name(name, allow_none=False)
            # Built outside the table's mutex: reading the options may raise (a bad config value).
            options = _lock_options()
            if self._options is not None:
                # The container's own lanes; the operator's slow wait/hold thresholds still apply.
                options = {**options, **self._options}
            found = self._locks.insert(name, InternalLock(name, **options))
        return found

    def __len__(self) -> int:
        """How many locks exist at the moment."""
        return len(self._locks)

    def live(self) -> list[InternalLock]:
        """The locks alive now (held, waited for, or referenced by someone)."""
        return self._locks.live()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {len(self)} lock(s)>"


class FairLocks:
    """oslo's container of fair reader/writer locks: ``get(name)`` gives a
    :class:`ReaderWriterLock`, the same one for the same name while anyone uses it.

    nova keeps one (``nova.utils.NOVA_FAIR_LOCKS``) and calls ``acquire_write_lock()``,
    ``release_write_lock()`` and ``is_writer()`` on its locks. Like oslo's, the container holds its
    locks weakly and is independent of :func:`lock`'s internal locks. Unlike oslo's (fasteners'
    locks, which wake every waiter to race on release), readers and writers are served in
    arrival order with direct handoff.
    """

    def __init__(self) -> None:
        self._locks: NameTable[ReaderWriterLock] = NameTable(lambda name: ReaderWriterLock(name=name))

    def get(self, name: str) -> ReaderWriterLock:
        """The reader/writer lock called ``name``, created on first use."""
        check_name(name, allow_none=False)
        return self._locks.obtain(name)

    def __len__(self) -> int:
        """How many locks exist at the moment."""
        return len(self._locks)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {len(self)} lock(s)>"


_semaphores = Semaphores()
# One namespace for fair and non-fair callers: in oslo these were two containers, so
# lock(name, fair=True) and lock(name) silently did not exclude each other.
_fair_locks = _semaphores


def internal_fair_lock(name: str) -> InternalLock:
    """The internal lock of ``name`` (the same one :func:`internal_lock` returns)."""
    return _semaphores.get(name)


def _live_internal_locks() -> list[InternalLock]:
    return [lock for container in list(_containers) for lock in container.live()]


def live_locks() -> list[LockStatistics]:
    """A snapshot of every internal lock alive now (in every :class:`Semaphores` container):
    name, holder and its lane, the queue in grant order, and per-lane figures, busiest first.

    A lock is alive while it is held, waited for, or referenced; a name nobody uses has none.
    """
    found = [lock.statistics() for lock in _live_internal_locks()]
    found.sort(key=lambda s: (-s.waiting, s.owner is None, s.name or ""))
    return found


def lock_statistics(name: str | None = None) -> Any:
    """Counts that outlive lock objects: grants, handoffs, lane typos, and per lane queued grants,
    waits (total, max, histogram), timeouts, cancels, of every internal lock there ever was.

    Counted per key (see :mod:`fairlock.history`): a name, or the name with each UUID replaced by
    ``*`` (``refresh_cache-*``), or a pattern set with
    ``fairlock.history.LOCKUTILS.set_patterns([...])``; bounded at ``max_keys`` keys.

    Without ``name``: a dict of key -> :class:`fairlock.NameStatistics`. With ``name``: the
    statistics of the key that ``name`` is counted under (all zero if it was never used).
    """
    table: dict[str, NameStatistics] = _HISTORY.statistics(_live_internal_locks())
    if name is None:
        return table
    check_name(name, allow_none=False)
    key = _HISTORY.key_of(name)
    return table.get(key) or NameStatistics(key=key, kind=_HISTORY.kind, grants=0, handoffs=0, lane_typos=0,
                                            locks=0, live=0)


def _container_lock(name: str, semaphores: Semaphores | None) -> Lock:
    if semaphores is not None and not callable(getattr(semaphores, "get", None)):
        raise ArgumentTypeError(
            "semaphores= must be a container of fairlock locks such as "
            f"fairlock.lockutils.Semaphores(), got {type(semaphores).__name__}")
    found = (_semaphores if semaphores is None else semaphores).get(name)
    if not isinstance(found, Lock):
        raise ArgumentTypeError(
            "semaphores= must be a container of fairlock locks such as "
            f"fairlock.lockutils.Semaphores(); its get() returned {type(found).__name__}"
        )
    return found


def internal_lock(
    name: str, semaphores: Semaphores | None = None, blocking: bool = True
) -> AbstractContextManager[Any]:
    """The internal lock of ``name``; with ``blocking=False`` a context manager that raises
    :class:`AcquireLockFailedException` instead of waiting."""
    _check_blocking(blocking)
    found = _container_lock(name, semaphores)
    if blocking:
        return found

    @contextlib.contextmanager
    def nonblocking() -> Generator[Lock, None, None]:
        if not found.acquire(False):
            raise AcquireLockFailedException(name)
        try:
            yield found
        finally:
            found.release()

    return nonblocking()


# -- argument checks ------------------------------------------------------------------------------


def _check_blocking(blocking: object) -> None:
    if not isinstance(blocking, (bool, int)):
        raise ArgumentTypeError(f"blocking must be a bool, got {type(blocking).__name__}")


def _check_timeout(blocking: object, timeout: object) -> float | None:
    """Seconds to wait at most, or None for no limit. ``timeout`` is None or a number >= 0."""
    _check_blocking(blocking)
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if math.isnan(timeout):
        raise InvalidArgumentError("timeout must not be NaN")
    if timeout < 0:
        raise InvalidArgumentError(f"timeout must be >= 0 seconds (None waits forever), got {timeout}")
    if not blocking:
        raise InvalidArgumentError("timeout= needs blocking=True (blocking=False never waits)")
    return None if math.isinf(timeout) else float(timeout)


def _check_prefix(lock_file_prefix: object) -> None:
    if lock_file_prefix is not None and not isinstance(lock_file_prefix, str):
        raise ArgumentTypeError(f"lock_file_prefix must be a str or None, got {type(lock_file_prefix).__name__}")


def _check_lane(lane: object) -> None:
    """Type and emptiness; whether the lock knows the lane is checked against the lock itself."""
    if lane is None:
        return
    if not isinstance(lane, str):
        raise ArgumentTypeError(f"lane must be a str or None, got {type(lane).__name__}")
    if not lane:
        raise InvalidArgumentError("lane must not be empty")


# -- external locks: the seam ---------------------------------------------------------------------

InterProcessLock = fasteners.InterProcessLock


class ExternalLock(Protocol):
    """What :func:`lock` needs from an external lock (fasteners' InterProcessLock has it)."""

    def acquire(self, blocking: bool = ..., delay: float = ..., timeout: float | None = ...) -> bool:
        """Take the external lock; True if taken. ``delay`` is the retry interval of a polling lock."""

    def release(self) -> None:
        """Release the external lock."""


class ExternalLockBackend(Protocol):
    """Where ``external=True`` locks come from.

    :func:`lock` takes the internal lock first, then ``backend.lock(...).acquire(...)``; the lane
    of the request is visible to the backend as :func:`fairlock.current_lane` during that call.
    """

    def lock(self, name: str, lock_file_prefix: str | None, lock_path: str | None) -> ExternalLock:
        """A new, not yet acquired external lock for ``name``."""

    def remove(self, name: str, lock_file_prefix: str | None, lock_path: str | None) -> None:
        """Remove what the external lock of ``name`` leaves behind (its file)."""


def _get_lock_path(name: str, lock_file_prefix: str | None, lock_path: str | None = None) -> str:
    """The lock file of ``name``: separators in the name become ``_``, the prefix gets a ``-``."""
    check_name(name, allow_none=False)
    _check_prefix(lock_file_prefix)
    name = name.replace(os.sep, "_")
    if lock_file_prefix:
        name = lock_file_prefix + ("" if lock_file_prefix.endswith("-") else "-") + name
    directory = lock_path or CONF.oslo_concurrency.lock_path
    if not directory:
        raise cfg.RequiredOptError("lock_path", cfg.OptGroup("oslo_concurrency"))
    return os.path.join(directory, name)


class FileLockBackend:
    """oslo's behaviour: one fasteners file lock per name under ``lock_path`` (one host only)."""

    def lock(self, name: str, lock_file_prefix: str | None, lock_path: str | None) -> ExternalLock:
        """A fasteners ``InterProcessLock`` on the lock file of ``name`` under ``lock_path``."""
        return InterProcessLock(_get_lock_path(name, lock_file_prefix, lock_path))  # type: ignore[no-any-return]

    def remove(self, name: str, lock_file_prefix: str | None, lock_path: str | None) -> None:
        """Remove the lock file of ``name``; a missing file is fine, another error is logged."""
        path = _get_lock_path(name, lock_file_prefix, lock_path)
        try:
            os.remove(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                LOG.warning("Failed to remove file %(file)s", {"file": path})

    def __repr__(self) -> str:
        return "FileLockBackend()"


_external_backend: ExternalLockBackend = FileLockBackend()


def set_external_backend(backend: ExternalLockBackend | None) -> ExternalLockBackend:
    """Install the backend of ``external=True`` locks (None: the file locks); returns the old one.

    This is the seam for a distributed backend: nothing else in this module knows what an
    external lock is.
    """
    global _external_backend
    if backend is not None and not (callable(getattr(backend, "lock", None)) and callable(getattr(backend, "remove", None))):
        raise ArgumentTypeError("an external lock backend needs lock() and remove() methods")
    previous, _external_backend = _external_backend, backend or FileLockBackend()
    return previous


_configured_backends: dict[str, ExternalLockBackend] = {}
_configured_mutex = threading.Lock()


def get_external_backend() -> ExternalLockBackend:
    """The backend of ``external=True`` locks now.

    One installed with :func:`set_external_backend` wins; otherwise, when
    ``[oslo_concurrency] fairlock_backend_url`` is set, the etcd backend for that URL (made once
    per URL); otherwise oslo's file locks.
    """
    url = CONF.oslo_concurrency.fairlock_backend_url
    if not url or not isinstance(_external_backend, FileLockBackend):
        return _external_backend
    with _configured_mutex:
        backend = _configured_backends.get(url)
        if backend is None:
            from .etcd.backend import EtcdBackend

            options = _lock_options()
            backend = EtcdBackend(url, lanes=options["lanes"].names, default_lane=options["lanes"].default,
                                  max_bypass=options["max_bypass"])
            _configured_backends[url] = backend
        return backend


def external_lock(
    name: str, lock_file_prefix: str | None = None, lock_path: str | None = None
) -> ExternalLock:
    """A new, not yet acquired external lock for ``name`` from the installed backend."""
    check_name(name, allow_none=False)
    _check_prefix(lock_file_prefix)
    return get_external_backend().lock(name, lock_file_prefix, lock_path)


def remove_external_lock_file(
    name: str,
    lock_file_prefix: str | None = None,
    lock_path: str | None = None,
    semaphores: Semaphores | None = None,
) -> None:
    """Remove the external lock of ``name`` (its file) under the internal lock.

    Duck-typed as oslo's: the arguments reach the backend as given, and the backend checks them
    (the file backend refuses a name that is not a non-empty ``str`` or a prefix that is not a
    ``str``, when it builds the path). The internal lock is taken for a name :func:`lock` accepts;
    no internal lock can exist under any other name, so then there is nobody to exclude.
    """
    if isinstance(name, str) and name:
        with internal_lock(name, semaphores=semaphores):
            get_external_backend().remove(name, lock_file_prefix, lock_path)
    else:
        get_external_backend().remove(name, lock_file_prefix, lock_path)


def _acquire_external(ext_lock: ExternalLock, blocking: bool, delay: float, deadline: float | None) -> bool:
    if deadline is None:
        return ext_lock.acquire(delay=delay, blocking=blocking)  # oslo's call, unchanged
    return ext_lock.acquire(delay=delay, blocking=True, timeout=max(0.0, deadline - _clock()))


# -- lock, synchronized ---------------------------------------------------------------------------


class AcquireLockFailedException(_oslo.AcquireLockFailedException, FairlockError):
    """The lock was not taken: ``blocking=False`` and busy, or ``timeout=`` expired.

    A subclass of oslo's class, so ``except oslo_concurrency.lockutils.AcquireLockFailedException``
    catches it too. ``str()`` is oslo's message.
    """

    def __init__(self, lock_name: str) -> None:
        # args = (lock_name,), as oslo's: the exception survives pickling (RPC, multiprocessing).
        Exception.__init__(self, lock_name)
        self.lock_name = lock_name
        self.message = f"Failed to acquire the lock {lock_name}"


def _reentered(name: str, int_lock: Lock, do_log: bool) -> Generator[Any, None, None]:
    """A ``fair=True`` call by the thread that holds the lock already: it re-enters.

    oslo's fair lock is fasteners' write lock, which lets its owner in again; nova nests
    ``@synchronized(COMPUTE_RESOURCE_SEMAPHORE, fair=True)`` methods and relies on it. Nothing is
    acquired or released here: the outer hold keeps the internal lock (and the external one, which
    a nested file lock in oslo would have released early), so waiters stay queued in their lanes
    and get the lock by handoff when the outermost block ends. oslo's log lines are kept.
    """
    if do_log:
        LOG.debug('Acquiring lock "%s"', name)
        LOG.debug('Acquired lock "%(lock)s"', {"lock": name})
    try:
        yield int_lock
    finally:
        if do_log:
            LOG.debug('Releasing lock "%(lock)s"', {"lock": name})


def lock(
    name: str,
    lock_file_prefix: str | None = None,
    external: bool = False,
    lock_path: str | None = None,
    do_log: bool = True,
    semaphores: Semaphores | None = None,
    delay: float = 0.01,
    fair: bool = False,
    blocking: bool = True,
    *,
    timeout: float | None = None,
    lane: str | None = None,
) -> AbstractContextManager[Any]:
    """Context manager: hold the lock called ``name``.

    Yields the internal lock (an :class:`InternalLock`), or with ``external=True`` the external
    lock. Arguments as oslo's, plus:

    :param fair: every lock is fair (FIFO with direct handoff) whatever it says; ``fair=True``
        also makes the call re-entrant for the thread (or green thread) that holds the lock, as
        oslo's fair lock is. A nested non-fair call by the holder raises
        :class:`fairlock.DeadlockError` (oslo's default lock would hang).
    :param blocking: False: raise :class:`AcquireLockFailedException` at once if busy.
    :param timeout: seconds to wait at most (internal and external lock together); on expiry
        raise :class:`AcquireLockFailedException`. None waits forever.
    :param lane: the lane to queue in; None uses the caller's :func:`fairlock.lane`, else the
        configured default lane. A lane the lock does not have is an error.
    """
    if external or blocking is not True or timeout is not None or lane is not None or lock_file_prefix is not None:
        return _lock_generic(  # type: ignore[no-any-return]
            name, lock_file_prefix, external, lock_path, do_log, semaphores, delay, fair, blocking,
            timeout=timeout, lane=lane,
        )
    return _InternalHold(name, semaphores, do_log, fair)


class _InternalHold:
    """``with lock(name):`` for the common case: the internal lock only, blocking, no lane.

    A small class rather than a generator (a third of the cost of an uncontended lock), with the
    same behaviour as :func:`_lock_generic`: arguments are checked and the lock is looked up on
    entry, oslo's three log lines at the same moments, ``fair=True`` re-enters for the holder
    (see :func:`_reentered`), usable as a decorator.
    """

    __slots__ = ("_name", "_semaphores", "_do_log", "_fair", "_lock")

    def __init__(self, name: str, semaphores: Semaphores | None, do_log: bool, fair: bool) -> None:
        self._name = name
        self._semaphores = semaphores
        self._do_log = do_log
        self._fair = fair
        self._lock: Lock | None = None  # what __exit__ releases; None after a re-entry

    def __call__(self, func: Callable[P, T]) -> Callable[P, T]:
        """Used as a decorator (as oslo's generator-based ``lock()`` can be): every call of
        ``func`` runs under a fresh hold, as ``contextlib.ContextDecorator`` does."""
        name, semaphores, do_log, fair = self._name, self._semaphores, self._do_log, self._fair

        @functools.wraps(func)
        def locked(*args: P.args, **kwargs: P.kwargs) -> T:
            with _InternalHold(name, semaphores, do_log, fair):
                return func(*args, **kwargs)

        return locked

    def __enter__(self) -> Lock:
        name = self._name
        int_lock = _semaphores.get(name) if self._semaphores is None else _container_lock(name, self._semaphores)
        log = self._do_log and LOG.isEnabledFor(logging.DEBUG)
        if log:
            LOG.debug('Acquiring lock "%s"', name)
        if self._fair and int_lock.owned():
            self._lock = None  # re-entered: the outer hold keeps the lock
        else:
            int_lock.__enter__()
            self._lock = int_lock
        if log:
            try:
                LOG.debug('Acquired lock "%(lock)s"', {"lock": name})
            except BaseException:
                if self._lock is not None:
                    self._lock = None
                    int_lock.release()
                raise
        return int_lock

    def __exit__(self, *exc: object) -> None:
        int_lock = self._lock
        self._lock = None
        try:
            if self._do_log and LOG.isEnabledFor(logging.DEBUG):
                # Logged before the internal lock is released, as oslo does.
                LOG.debug('Releasing lock "%(lock)s"', {"lock": self._name})
        finally:
            if int_lock is not None:
                int_lock.__exit__(None, None, None)


@contextlib.contextmanager
def _lock_generic(
    name: str,
    lock_file_prefix: str | None = None,
    external: bool = False,
    lock_path: str | None = None,
    do_log: bool = True,
    semaphores: Semaphores | None = None,
    delay: float = 0.01,
    fair: bool = False,
    blocking: bool = True,
    *,
    timeout: float | None = None,
    lane: str | None = None,
) -> Generator[Any, None, None]:
    """:func:`lock` with an external lock, a timeout, a lane or ``blocking=False``."""
    wait = _check_timeout(blocking, timeout)
    _check_lane(lane)
    _check_prefix(lock_file_prefix)
    int_lock = _container_lock(name, semaphores)
    if lane is not None:
        int_lock.lanes.rank(lane)  # an unknown lane fails here, before anything is logged
    if fair and int_lock.owned():
        yield from _reentered(name, int_lock, do_log)
        return
    deadline = None if wait is None else _clock() + wait
    if do_log:
        LOG.debug('Acquiring lock "%s"', name)
    if not int_lock.acquire(blocking, wait, lane):
        raise AcquireLockFailedException(name)
    try:
        if do_log:
            LOG.debug('Acquired lock "%(lock)s"', {"lock": name})
        try:
            if external and not CONF.oslo_concurrency.disable_process_locking:
                ext_lock = external_lock(name, lock_file_prefix, lock_path)
                started = _clock()
                with _lane_context(lane) if lane is not None else contextlib.nullcontext():
                    gotten = _acquire_external(ext_lock, blocking, delay, deadline)
                if int_lock._slow_wait is not None:
                    _warn_slow_external(name, int_lock, lane, _clock() - started, gotten)
                if not gotten:
                    raise AcquireLockFailedException(name)
                if do_log:
                    LOG.debug('Acquired external semaphore "%(lock)s"', {"lock": name})
                try:
                    yield ext_lock
                finally:
                    ext_lock.release()
            else:
                yield int_lock
        finally:
            # Logged before the internal lock is released, as oslo does.
            if do_log:
                LOG.debug('Releasing lock "%(lock)s"', {"lock": name})
    finally:
        int_lock.release()


def _warn_slow_external(name: str, int_lock: Lock, lane: str | None, waited: float, gotten: bool) -> None:
    """The slow-wait WARNING for the external lock (its holder is in another process, maybe on
    another host: the backend's own tools name it, e.g. ``fairlock inspect``). Logged once the
    wait is over, granted or not."""
    threshold = int_lock._slow_wait
    if threshold is None or waited <= threshold:
        return
    lane = lane if lane is not None else resolve_lane(int_lock.lanes, None)
    waiter = thread_name(threading.get_ident())  # the thread's (or green thread's) own ident
    LOG.warning(
        'External lock "%s" waited on for %.3fs by %s in lane %s (%s; slow_wait threshold %.3fs)',
        name, waited, waiter, lane, "then acquired" if gotten else "not acquired", threshold,
        extra={"fairlock_lock": name, "fairlock_lane": lane, "fairlock_holder": None,
               "fairlock_seconds": waited, "fairlock_event": "slow_wait_external"},
    )


def synchronized(
    name: str,
    lock_file_prefix: str | None = None,
    external: bool = False,
    lock_path: str | None = None,
    semaphores: Semaphores | None = None,
    delay: float = 0.01,
    fair: bool = False,
    blocking: bool = True,
    *,
    timeout: float | None = None,
    lane: str | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: the function runs holding the lock called ``name`` (arguments as :func:`lock`).

    Logs oslo's three lines per call: acquiring, acquired (with the wait), and released or
    unacquired (with the hold time).
    """
    check_name(name, allow_none=False)
    _check_timeout(blocking, timeout)
    _check_lane(lane)
    _check_prefix(lock_file_prefix)

    # Only the internal lock, blocking, no lane: the call needs no arguments of lock() but the
    # name, and nothing of its logging when DEBUG is off.
    plain = not external and blocking is True and timeout is None and lane is None

    def wrap(f: Callable[P, T]) -> Callable[P, T]:
        f_name = reflection.get_callable_name(f)

        @functools.wraps(f)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            if plain and not LOG.isEnabledFor(logging.DEBUG):
                int_lock = _semaphores.get(name) if semaphores is None else _container_lock(name, semaphores)
                if fair and int_lock.owned():
                    return f(*args, **kwargs)  # re-entered, as lock(fair=True) does
                with int_lock:
                    return f(*args, **kwargs)
            t1 = _clock()
            t2 = None
            gotten = True
            try:
                LOG.debug('Acquiring lock "%s" by "%s"', name, f_name)
                with lock(
                    name,
                    lock_file_prefix,
                    external,
                    lock_path,
                    do_log=False,
                    semaphores=semaphores,
                    delay=delay,
                    fair=fair,
                    blocking=blocking,
                    timeout=timeout,
                    lane=lane,
                ):
                    t2 = _clock()
                    LOG.debug(
                        'Lock "%(name)s" acquired by "%(function)s" :: waited %(wait_secs)0.3fs',
                        {"name": name, "function": f_name, "wait_secs": t2 - t1},
                    )
                    return f(*args, **kwargs)
            except AcquireLockFailedException:
                # Also when f itself raised it (a nested non-blocking lock): oslo's quirk, kept.
                gotten = False
                raise
            finally:
                held_secs = "N/A" if t2 is None else "%0.3fs" % (_clock() - t2)
                LOG.debug(
                    'Lock "%(name)s" "%(gotten)s" by "%(function)s" :: held %(held_secs)s',
                    {
                        "name": name,
                        "gotten": "released" if gotten else "unacquired",
                        "function": f_name,
                        "held_secs": held_secs,
                    },
                )

        return inner

    return wrap


class LockPartialProtocol(Protocol):
    def __call__(
        self,
        name: str,
        *,
        external: bool = False,
        lock_path: str | None = None,
        do_log: bool = True,
        semaphores: Semaphores | None = None,
        delay: float = 0.01,
        fair: bool = False,
        blocking: bool = True,
        timeout: float | None = None,
        lane: str | None = None,
    ) -> AbstractContextManager[Any]: ...


class SyncPartialProtocol(Protocol):
    def __call__(
        self,
        name: str,
        *,
        external: bool = False,
        lock_path: str | None = None,
        semaphores: Semaphores | None = None,
        delay: float = 0.01,
        fair: bool = False,
        blocking: bool = True,
        timeout: float | None = None,
        lane: str | None = None,
    ) -> Callable[[Callable[P, T]], Callable[P, T]]: ...


class RemovePartialProtocol(Protocol):
    def __call__(self, name: str, *, lock_path: str | None = None, semaphores: Semaphores | None = None) -> None: ...


def lock_with_prefix(lock_file_prefix: str) -> LockPartialProtocol:
    """:func:`lock` with ``lock_file_prefix`` bound (``'nova'`` and ``'nova-'`` are the same)."""
    return functools.partial(lock, lock_file_prefix=lock_file_prefix)


def synchronized_with_prefix(lock_file_prefix: str) -> SyncPartialProtocol:
    """:func:`synchronized` with ``lock_file_prefix`` bound: ``synchronized = ...('nova-')``."""
    return functools.partial(synchronized, lock_file_prefix=lock_file_prefix)  # type: ignore[return-value]


def remove_external_lock_file_with_prefix(lock_file_prefix: str) -> RemovePartialProtocol:
    """:func:`remove_external_lock_file` with ``lock_file_prefix`` bound."""
    return functools.partial(remove_external_lock_file, lock_file_prefix=lock_file_prefix)


# -- lockutils-wrapper ----------------------------------------------------------------------------


def _lock_wrapper(argv: Sequence[str]) -> int:
    """Run ``argv[1:]`` with ``OSLO_LOCK_PATH`` set to a fresh directory, removed afterwards;
    returns the command's exit status (oslo's ``lockutils-wrapper``)."""
    lock_dir = tempfile.mkdtemp()
    os.environ["OSLO_LOCK_PATH"] = lock_dir
    try:
        return subprocess.call(argv[1:])  # noqa: S603 - the caller's own command line
    finally:
        shutil.rmtree(lock_dir, ignore_errors=True)


def main() -> None:
    """The ``fairlock-lockutils-wrapper`` console script: run a command with ``OSLO_LOCK_PATH`` set to a temporary directory."""
    sys.exit(_lock_wrapper(sys.argv))


if __name__ == "__main__":
    raise NotImplementedError(
        "Calling lockutils directly is no longer supported. "
        "Please use the lockutils-wrapper console script instead."
    )
