"""fairlock's test kit, for fairlock's own tests and for a downstream project's.

What a project that adopts fairlock wants in its tests, and nothing that a production install
runs:

* :mod:`fairlock.testing.etcd` -- real etcd servers on loopback (one member, a cluster,
  TLS, auth) and pytest fixtures (``etcd_server``, ``etcd_prefix``, ``etcd_transport``,
  ``etcd_cluster``, ``etcd_tls_server``, ``etcd_auth_server``), all re-exported here: import
  the fixtures by name from ``fairlock.testing`` into a ``conftest.py`` (see ours);
* :mod:`fairlock.testing.faultproxy` -- :class:`FaultProxy`, a TCP proxy on 127.0.0.1 that adds
  latency, stalls, resets and partitions between a client and etcd;
* :mod:`fairlock.testing.etcd_model` -- an in-memory, deterministic model of etcd's revisions,
  leases and watches, speaking the transport interface, for property tests of a lock protocol;
* :mod:`fairlock.testing.checker` -- the fencing checker: judges recorded critical sections for
  overlap, token order, writes after a lost-lock notice, FIFO within a lane and the bypass bound.

The benchmarks are not part of the installed package: they live in ``benchmarks/`` of a source
checkout (``python -m fairlock bench ...`` from the checkout's root).
"""

from __future__ import annotations

from . import checker  # noqa: F401 - a submodule users reach as fairlock.testing.checker
from .etcd import *  # noqa: F401,F403 - the servers and fixtures, as before the split
from .etcd import __all__ as _server_all
from .etcd import _etcd_cluster_session  # noqa: F401 - the fixture etcd_cluster depends on
from .faultproxy import FaultProxy, FaultStats

__all__ = [*_server_all, "FaultProxy", "FaultStats", "checker"]
