"""Parity: tooz's own coordination test suite, run against fairlock's tooz driver on a real etcd.

The tests are tooz's (``tooz/tests/test_coordination.py`` of the installed tooz; nothing of
theirs is copied here). tooz drives them through the ``TOOZ_TEST_URL`` environment variable:
each test calls ``tooz.coordination.get_coordinator(TOOZ_TEST_URL, member)``, and the URL here is
``fairlock+etcd3+http://127.0.0.1:<port>/<prefix>`` on the session's etcd, so tooz itself finds
``fairlock.tooz_driver.FairlockDriver`` through the ``tooz.backends`` entry point.

They run in subprocesses (this file run as a script, four shards at once, about 20 s), because
tooz's tests start coordinators they never stop and spawn process pools. tooz's test module
imports its ipc, memcached and redis drivers only for ``isinstance`` checks; when their client
libraries (sysv_ipc, pymemcache, redis) are not installed, the runner puts a module with an
empty class of the same name in their place, so those checks are simply False, as they are for
any driver that is not theirs.

Every test must pass except those in EXPECTED_SKIPS, which must be skipped with the reason
given (tooz skips a test when the driver raises ``tooz.NotImplemented``, or on its own
conditions). The counts per category are pinned in EXPECTED_COUNTS and stated in
doc/source/tooz.rst; at the end of the run pytest prints them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import traceback
import types
import unittest
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "doc" / "source" / "tooz.rst"
TOOZ_MODULE = "tooz.tests.test_coordination"
SCHEME = "fairlock+etcd3+http"
SHARDS = 4

#: tooz drivers that tooz's test module imports only for isinstance checks -> their class name.
STUBBABLE = {"ipc": "IPCDriver", "memcached": "MemcachedDriver", "redis": "RedisDriver"}

_SHARED = ("fairlock locks are exclusive", "shared (reader) locks: fairlock's core has no reader/writer "
           "mode; acquire(shared=True) raises tooz.NotImplemented, as the redis and zookeeper drivers do")
_MEMBER_INFO = ("not implemented", "get_member_info: etcd keeps no creation/update times for the "
                "created_at/updated_at fields; not implemented, as in tooz's etcd3gw driver")
_ELECTION = ("leader election is not offered", "leader election: not offered (tooz.NotImplemented), as in "
             "tooz's etcd3gw driver")

#: ``Class.test`` -> (text the skip reason must contain, why; the docs list the same).
EXPECTED_SKIPS: dict[str, tuple[str, str]] = {
    "TestAPI.test_get_shared_lock": _SHARED,
    "TestAPI.test_get_shared_lock_locking_same_lock_twice": _SHARED,
    "TestAPI.test_get_shared_lock_locking_two_lock": _SHARED,
    "TestAPI.test_get_lock_locking_shared_and_exclusive": _SHARED,
    "TestAPI.test_get_lock_locking_exclusive_and_shared": _SHARED,
    "TestAPI.test_get_member_info": _MEMBER_INFO,
    "TestAPI.test_get_member_info_complex": _MEMBER_INFO,
    "TestAPI.test_get_member_info_nonexistent_group": _MEMBER_INFO,
    "TestAPI.test_get_member_info_nonjoined_member": _MEMBER_INFO,
    "TestAPI.test_run_for_election": _ELECTION,
    "TestAPI.test_run_for_election_multiple_clients": _ELECTION,
    "TestAPI.test_run_for_election_multiple_clients_stand_down": _ELECTION,
    "TestAPI.test_get_leader": _ELECTION,
    "TestAPI.test_unwatch_elected_as_leader": _ELECTION,
    "TestAPI.test_unwatch_elected_as_leader_callback_not_found": _ELECTION,
    "TestAPI.test_timeout": (
        "not based on timeout",
        "tooz skips it for NON_TIMEOUT_BASED drivers: a live fairlock member never times out (its "
        "session refreshes the lease by itself), as with tooz's ZooKeeper driver"),
    "TestAPI.test_watch_join_group_disappear": (
        "ability to destroy groups",
        "tooz runs it only for its own etcd3gw, memcached and redis drivers (an isinstance check)"),
}

#: category -> (passed, skipped, failed). doc/source/tooz.rst states the same numbers.
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {
    "locks": (23, 5, 0),
    "groups": (36, 6, 0),
    "leader election": (0, 6, 0),
    "coordinator": (5, 0, 0),
    "hooks": (2, 0, 0),
}


def category(test_id: str) -> str:
    """Which part of the tooz API a test of test_coordination.py exercises."""
    cls, name = test_id.split(".", 1)
    if cls == "TestHook":
        return "hooks"
    if "elect" in name or "leader" in name:
        return "leader election"
    if "lock" in name or "acquire" in name:
        return "locks"
    if any(word in name for word in ("group", "member", "capabilit", "watch")) or name == "test_timeout":
        return "groups"
    return "coordinator"


def tooz_test_path() -> Path:
    with warnings.catch_warnings():
        # Finding it imports tooz.tests, hence tooz -> futurist -> eventlet (when installed),
        # whose deprecation notice is about the environment, not about this test.
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        spec = importlib.util.find_spec(TOOZ_MODULE)
    assert spec is not None and spec.origin is not None, f"tooz does not ship {TOOZ_MODULE}"
    return Path(spec.origin)


def declared_test_ids() -> list[str]:
    """``Class.test`` of every test method in tooz's module, read from its source (not imported)."""
    tree = ast.parse(tooz_test_path().read_text())
    ids = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test_"):
                    ids.append(f"{node.name}.{item.name}")
    return sorted(ids)


# -- the runner (this file as a script, in a subprocess) ------------------------------------------


class _Recorder(unittest.TestResult):
    def __init__(self) -> None:
        super().__init__()
        self.results: dict[str, dict[str, Any]] = {}
        self._started = 0.0

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._started = time.monotonic()

    def _record(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        test_id = ".".join(test.id().split(".")[-2:])
        previous = self.results.get(test_id)
        if previous is not None and previous["outcome"] != "passed":
            return  # a failure in tearDown after a failure in the test: keep the first
        self.results[test_id] = {"outcome": outcome, "detail": detail[-4000:],
                                 "seconds": round(time.monotonic() - self._started, 2)}

    def addSuccess(self, test: unittest.TestCase) -> None:
        self._record(test, "passed")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self._record(test, "skipped", reason)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "failed", "".join(traceback.format_exception(*err)))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "failed", "".join(traceback.format_exception(*err)))

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "failed", "an expected failure counts as a failure here")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        self._record(test, "failed", "unexpected success")


def _stub_missing_drivers() -> list[str]:
    import tooz.drivers

    stubbed = []
    for module, cls in STUBBABLE.items():
        name = f"tooz.drivers.{module}"
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            setattr(stub, cls, type(cls, (), {}))
            sys.modules[name] = stub
            setattr(tooz.drivers, module, stub)
            stubbed.append(module)
    return stubbed


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    tests: list[unittest.TestCase] = []
    for item in suite:
        tests.extend(_flatten(item) if isinstance(item, unittest.TestSuite) else [item])
    return tests


def run_shard(out: str, shard: int, shards: int) -> None:
    stubbed = _stub_missing_drivers()
    import tooz
    from tooz import coordination

    probe = coordination.get_coordinator(os.environ["TOOZ_TEST_URL"], b"parity-probe")
    tests = sorted(_flatten(unittest.defaultTestLoader.loadTestsFromName(TOOZ_MODULE)), key=lambda t: t.id())
    recorder = _Recorder()
    for test in tests[shard::shards]:
        test.run(recorder)
    Path(out).write_text(json.dumps({
        "driver": f"{type(probe).__module__}.{type(probe).__qualname__}",
        "tooz": importlib.metadata.version("tooz"),
        "tooz_path": str(Path(tooz.__file__).parent),
        "stubbed": stubbed,
        "results": recorder.results,
    }))


if __name__ == "__mp_main__":
    # A process-pool child of tooz's tests: it unpickles tooz's try_to_lock_job, which imports
    # tooz's test module, which imports those drivers.
    _stub_missing_drivers()

if __name__ == "__main__":
    run_shard(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    sys.stdout.flush()
    # tooz's tests leave coordinators running (sessions, executors): do not wait for them.
    os._exit(0)


# -- the pytest side ------------------------------------------------------------------------------

TEST_IDS = declared_test_ids()


@pytest.fixture(scope="module")
def tooz_run(etcd_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tooz's suite in SHARDS subprocesses at once against the session's etcd; the merged results."""
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="tooz.backends")}
    assert entry_points.get(SCHEME) == "fairlock.tooz_driver:FairlockDriver", (
        f"the tooz.backends entry point {SCHEME!r} is not registered: pip install -e . (setup.cfg)")
    out_dir = tmp_path_factory.mktemp("tooz-parity")
    env = dict(os.environ)
    env["TOOZ_TEST_URL"] = f"{SCHEME}://127.0.0.1:{etcd_server.client_port}/tooz-parity-{uuid.uuid4().hex[:8]}"
    env.pop("TOOZ_TEST_ETCD3GW", None)
    env.pop("TOOZ_TEST_SENTINEL", None)
    env["PYTHONWARNINGS"] = "ignore"
    procs = []
    for shard in range(SHARDS):
        out = out_dir / f"shard-{shard}.json"
        proc = subprocess.Popen([sys.executable, __file__, str(out), str(shard), str(SHARDS)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        procs.append((proc, out))
    merged: dict[str, Any] = {"results": {}}
    try:
        for proc, out in procs:
            _, stderr = proc.communicate(timeout=150)
            assert proc.returncode == 0, stderr[-4000:]
            shard = json.loads(out.read_text())
            merged["results"].update(shard.pop("results"))
            merged.update(shard)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    _REPORT.results = merged["results"]
    _REPORT.version = merged.get("tooz", "?")
    return merged


def test_tooz_ran_fairlock_driver(tooz_run: dict[str, Any]) -> None:
    assert tooz_run["driver"] == "fairlock.tooz_driver.FairlockDriver"
    assert tooz_run["tooz"] == importlib.metadata.version("tooz")
    assert set(tooz_run["stubbed"]) <= set(STUBBABLE)
    assert sorted(tooz_run["results"]) == TEST_IDS


@pytest.mark.parametrize("test_id", TEST_IDS)
def test_tooz(test_id: str, tooz_run: dict[str, Any]) -> None:
    result = tooz_run["results"].get(test_id)
    assert result is not None, f"tooz's {test_id} did not run"
    expected = EXPECTED_SKIPS.get(test_id)
    if expected is None:
        assert result["outcome"] == "passed", result["detail"]
    else:
        assert result["outcome"] == "skipped", f"{test_id}: expected a skip ({expected[1]}); got {result}"
        assert expected[0] in result["detail"], f"{test_id} skipped for another reason: {result['detail']!r}"


def test_expected_skips_name_real_tests() -> None:
    assert set(EXPECTED_SKIPS) <= set(TEST_IDS)


def counts(outcomes: dict[str, str]) -> dict[str, tuple[int, int, int]]:
    table: dict[str, list[int]] = {name: [0, 0, 0] for name in EXPECTED_COUNTS}
    for test_id, outcome in outcomes.items():
        row = table.setdefault(category(test_id), [0, 0, 0])
        row[("passed", "skipped", "failed").index(outcome)] += 1
    return {name: (row[0], row[1], row[2]) for name, row in table.items()}


def test_expected_counts_match_the_expected_list_and_the_docs() -> None:
    """The pinned counts follow from EXPECTED_SKIPS over tooz's declared tests, and the docs say them."""
    expected = {t: ("skipped" if t in EXPECTED_SKIPS else "passed") for t in TEST_IDS}
    assert counts(expected) == EXPECTED_COUNTS, f"update EXPECTED_COUNTS and doc/source/tooz.rst: {counts(expected)}"
    doc = DOC.read_text()
    passed = sum(p for p, _, _ in EXPECTED_COUNTS.values())
    skipped = sum(s for _, s, _ in EXPECTED_COUNTS.values())
    assert f"{passed} passed, {skipped} skipped, 0 failed of {len(TEST_IDS)}" in doc
    assert f"tooz {importlib.metadata.version('tooz')}" in doc
    for name, (p, s, f) in EXPECTED_COUNTS.items():
        row = rf"^{re.escape(name)}\s+{p}\s+{s}\s+{f}\s*$"
        assert re.search(row, doc, re.MULTILINE), f"doc/source/tooz.rst: no table row {name} {p} {s} {f}"
    for test_id in EXPECTED_SKIPS:
        assert test_id.split(".", 1)[1] in doc, f"{test_id} is skipped but doc/source/tooz.rst does not list it"


def test_counts_as_run(tooz_run: dict[str, Any]) -> None:
    outcomes = {t: r["outcome"] for t, r in tooz_run["results"].items()}
    assert counts(outcomes) == EXPECTED_COUNTS


# -- counts per category at the end of the run ----------------------------------------------------


class _ParityReport:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.version = "?"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        table = counts({t: r["outcome"] for t, r in self.results.items()})
        parts = [f"{name} {p} passed/{s} skipped/{f} failed" for name, (p, s, f) in table.items()]
        total = [sum(row[i] for row in table.values()) for i in range(3)]
        terminalreporter.write_line(
            f"tooz {self.version} parity ({SCHEME}): {total[0]} passed, {total[1]} skipped, "
            f"{total[2]} failed of {sum(total)} -- " + "; ".join(parts))


_REPORT = _ParityReport()


@pytest.fixture(scope="module", autouse=True)
def _parity_report(request: pytest.FixtureRequest) -> Any:
    if not request.config.pluginmanager.has_plugin("fairlock-tooz-parity-report"):
        request.config.pluginmanager.register(_REPORT, "fairlock-tooz-parity-report")
    yield
