"""The etcd backend of ``fairlock.lockutils``' ``external=True`` locks (translation only).

oslo.concurrency makes ``external=True`` a file lock: one host only, and unfair. With
``[oslo_concurrency] fairlock_backend_url = etcd3+http://...`` (or
``lockutils.set_external_backend(EtcdBackend(url))``) the same calls take a fair
:class:`~fairlock.etcd.EtcdLock` shared by every host using that etcd and prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from .._core import DEFAULT_MAX_BYPASS
from .._nametable import NameTable
from ..errors import ArgumentTypeError
from ..local import check_name
from .lock import EtcdLock
from .session import Session

__all__ = ["EtcdBackend"]


class _ExternalEtcdLock:
    """oslo's external-lock shape (``acquire(blocking, delay, timeout)``, ``release()``)."""

    def __init__(self, lock: EtcdLock) -> None:
        self.lock = lock

    def acquire(self, blocking: bool = True, delay: float = 0.01, timeout: float | None = None) -> bool:
        # ``delay`` is the file lock's polling interval; etcd watches, it never polls.
        return self.lock.acquire(blocking, timeout if blocking else None)

    def release(self) -> None:
        self.lock.release()

    @property
    def fencing_token(self) -> int | None:
        return self.lock.fencing_token

    def __enter__(self) -> _ExternalEtcdLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<fairlock external lock on etcd {self.lock!r}>"


class EtcdBackend:
    """One :class:`Session` (made on first use) and one :class:`EtcdLock` per lock name."""

    def __init__(self, session: Session | str, *, lanes: Iterable[str] | None = None,
                 default_lane: str | None = None, max_bypass: int | None = DEFAULT_MAX_BYPASS) -> None:
        if not isinstance(session, (Session, str)):
            raise ArgumentTypeError("session must be a fairlock.etcd.Session or an etcd URL")
        self._session_or_url = session
        self._session: Session | None = session if isinstance(session, Session) else None
        self._options: dict[str, Any] = {"lanes": lanes, "default_lane": default_lane, "max_bypass": max_bypass}
        self._locks: NameTable[EtcdLock] | None = None
        self._mutex = threading.Lock()

    @property
    def session(self) -> Session:
        """The etcd session of this process, opened on first use and again after it was lost."""
        return self._current()[0]

    def _current(self) -> tuple[Session, NameTable[EtcdLock]]:
        """The live session and its locks, as one pair (a new session, a new table: the locks of
        a lost session are dead)."""
        with self._mutex:
            if self._session is None or not self._session.alive():
                if isinstance(self._session_or_url, Session):
                    self._session_or_url.check()  # a caller's own session: never replaced
                # A lost session cannot hold locks again; a new one (a new lease) can.
                self._session = Session(self._session_or_url)  # type: ignore[arg-type]
                self._locks = None
            session = self._session
            if self._locks is None:
                self._locks = NameTable(lambda name: EtcdLock(name, session, **self._options))
            return session, self._locks

    @staticmethod
    def lock_name(name: str, lock_file_prefix: str | None) -> str:
        """oslo's file name for the lock (prefix + '-' + name), used as the etcd lock name."""
        if lock_file_prefix:
            sep = "" if lock_file_prefix.endswith("-") else "-"
            return f"{lock_file_prefix}{sep}{name}"
        return name

    def lock(self, name: str, lock_file_prefix: str | None, lock_path: str | None) -> _ExternalEtcdLock:
        """The external lock of ``name`` for :func:`fairlock.lockutils.lock` (``lock_file_prefix`` prefixes the name; ``lock_path`` is ignored)."""
        full = self.lock_name(name, lock_file_prefix)
        _, locks = self._current()
        return _ExternalEtcdLock(locks.obtain(full))

    def remove(self, name: str, lock_file_prefix: str | None, lock_path: str | None) -> None:
        """Nothing to remove: an etcd lock leaves no key behind once released. The arguments are
        checked as :meth:`lock` would check them, so a bad one fails here too."""
        check_name(name, allow_none=False)
        if lock_file_prefix is not None and not isinstance(lock_file_prefix, str):
            raise ArgumentTypeError(f"lock_file_prefix must be a str or None, got {type(lock_file_prefix).__name__}")

    def close(self) -> None:
        """Close the session this backend opened (a session given by the caller stays open)."""
        with self._mutex:
            session, self._session = self._session, None
        if session is not None and not isinstance(self._session_or_url, Session):
            session.close()

    def __repr__(self) -> str:
        return f"<fairlock.etcd.EtcdBackend {self._session!r}>"
