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


#: Single tests (by function name, every parametrization) that wait on real time: a lease to
#: expire, a cluster to elect, a schedule search, a subprocess per way of naming etcd.
SLOW_TESTS = frozenset({
    "test_the_schedules_find_a_broken_lock",
    "test_lease_expiry_deletes_keys",
    "test_lease_time_to_live_of_an_expired_lease_is_none",
    "test_cluster_keeps_locking_when_the_leader_stops",
    "test_every_way_of_naming_etcd_reads_the_same",
    "test_a_tooz_url_gives_the_lanes_and_k",
    "test_inspect_with_etcd_users_and_tls",
    "test_bench_commands_name_etcd_the_same_way",
    "test_unreachable_etcd_is_a_clear_error_within_the_timeout",
    "test_unreachable_etcd_from_the_option_is_an_oserror",
    "test_on_lost_is_never_skipped_by_a_release_right_after_is_held",
    "test_write_not_retried_after_send_but_reads_fail_over",
    "test_failover_from_a_hung_member_breaks_its_watches",
    "test_failover_when_the_member_in_use_stops",
})
#: Bad-input cases that wait out a transport timeout by design (a closed port, a TLS mismatch).
SLOW_CASES = ("timeout=1", "https_server", "wrong_password", "unknown_user")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        function = getattr(item, "originalname", None) or item.name
        if (module is not None and module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES) \
                or function in SLOW_TESTS \
                or (function == "test_bad_input" and any(case in item.name for case in SLOW_CASES)):
            item.add_marker(pytest.mark.slow)
