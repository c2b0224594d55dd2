"""Shared fixtures: a real etcd on loopback (see fairlock.testing for what each one gives).

The ``slow`` marker: ``./run_tests.sh -m "not slow"`` is the inner loop (well under a minute);
the full command, which CI runs, includes everything. Whole modules are slow when every test in
them starts processes, injects faults or runs a benchmark (:data:`SLOW_MODULES`); a single slow
test elsewhere carries ``@pytest.mark.slow`` itself.
"""

from __future__ import annotations

import pytest

from fairlock.testing import (  # noqa: F401 - pytest finds fixtures by their name here
    _etcd_cluster_session,
    etcd_auth_server,
    etcd_binary,
    etcd_cluster,
    etcd_prefix,
    etcd_server,
    etcd_tls_server,
    etcd_transport,
)

#: Modules whose every test is slow: fault injection, benchmarks run as commands, load, the
#: upstream projects' own suites, the eventlet child process, the demo, nova's own code in its venv.
SLOW_MODULES = frozenset({
    "test_faults_etcd",
    "test_faults_network",
    "test_faults_process",
    "test_bench_etcd",
    "test_bench_smoke",
    "test_load_local",
    "test_tooz_parity",
    "test_oslo_parity",
    "test_eventlet",
    "test_example_nova",
    "test_nova_real_code",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
