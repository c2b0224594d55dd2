"""The distributed fair lock on etcd (same grant rule as the local lock, decided from etcd state).

.. code-block:: python

    from fairlock.etcd import EtcdLock, Session

    with Session("etcd3+http://127.0.0.1:2379/fairlock") as session:   # one lease per process
        lock = EtcdLock("refresh_cache-8a4f", session)
        with lock:
            write_somewhere(fencing_token=lock.fencing_token)
"""

from .lock import EtcdLock, EtcdLockStatistics
from .session import LockLost, Session, SessionLost
from .transport import EtcdAuthError, EtcdError, EtcdUnavailable, LeaseNotFound

__all__ = [
    "EtcdAuthError",
    "EtcdError",
    "EtcdLock",
    "EtcdLockStatistics",
    "EtcdUnavailable",
    "LeaseNotFound",
    "LockLost",
    "Session",
    "SessionLost",
]
