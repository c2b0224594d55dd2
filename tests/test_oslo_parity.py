"""Parity: oslo.concurrency's own lockutils unit tests, run against fairlock.lockutils.

The tests come from the installed oslo.concurrency (``oslo_concurrency/tests/unit/``), loaded by
tests/oslo_parity_loader.py with their ``oslo_concurrency.lockutils`` (and fixture) references
redirected to fairlock's. Nothing of theirs is copied here.

* ``test_lockutils.py`` runs in this process: its TestCase classes are bound below, so pytest
  collects every oslo test as its own item (``tests/test_oslo_parity.py::LockTestCase::...``).
* ``test_lockutils_eventlet.py`` runs once in a fresh interpreter under
  ``eventlet.monkey_patch()`` (tests/oslo_eventlet_runner.py); each of its tests is one
  parametrized item here that checks the recorded outcome.

Tests that cannot pass are listed in EXPECTED_FAILURES with the reason; they are strict xfails, so
one that starts passing fails the run, and so does any other test that fails. The totals are
pinned in PARITY and must match doc/source/lockutils.rst, which lists the same exceptions. At the
end of the run pytest prints ``oslo.concurrency parity: N passed of M``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fairlock import lockutils
from tests import oslo_parity_loader as loader

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "doc" / "source" / "lockutils.rst"

#: ``Class.test`` of oslo's test_lockutils.py -> why it cannot pass against fairlock.
EXPECTED_FAILURES: dict[str, str] = {
    "LockTestCase.test_fair_lock_with_semaphore": (
        "expects NotImplementedError for fair=True with semaphores=; fairlock supports it "
        "(every lock in a Semaphores container is fair)"
    ),
    "LockTestCase.test_fair_lock_with_nonblocking": (
        "expects NotImplementedError for fair=True with blocking=False; fairlock supports it"
    ),
}

#: ``Class.test`` of oslo's test_lockutils_eventlet.py -> why it cannot pass against fairlock.
EXPECTED_EVENTLET_FAILURES: dict[str, str] = {}

#: Tests whose helper thread ends by raising AcquireLockFailedException on purpose (that is how
#: they check that a non-blocking call did not wait); pytest would warn about each.
RAISING_THREADS = (
    "FileBasedLockingTestCase.test_interthread_nonblocking_external_lock",
    "FileBasedLockingTestCase.test_interthread_nonblocking_internal_lock",
)

#: (passed, total) over both oslo modules; doc/source/lockutils.rst states the same numbers.
PARITY = (40, 42)

# oslo's thread tests fork. When another test module has imported eventlet into this process
# (without monkey patching it), eventlet warns at every fork; that is about the test run, not
# about lockutils.
pytestmark = pytest.mark.filterwarnings("ignore:Using fork\\(\\) is a bad idea:DeprecationWarning")

EVENTLET_RUNNER = Path(__file__).resolve().parent / "oslo_eventlet_runner.py"
EVENTLET_IDS = loader.declared_test_ids(loader.EVENTLET_MODULE)

# -- oslo's test_lockutils.py, collected by pytest ------------------------------------------------

_threads_module = loader.load(loader.THREADS_MODULE, "tests.oslo_parity_test_lockutils")
THREAD_IDS = loader.test_ids(_threads_module)

for _test_id in THREAD_IDS:
    _name, _method = _test_id.split(".", 1)
    if _test_id in EXPECTED_FAILURES:
        # The function objects are this load's own, so marking them touches nothing of oslo's.
        pytest.mark.xfail(strict=True, reason=EXPECTED_FAILURES[_test_id])(
            getattr(getattr(_threads_module, _name), _method)
        )
    if _test_id in RAISING_THREADS:
        pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")(
            getattr(getattr(_threads_module, _name), _method)
        )
for _name, _case in loader.test_cases(_threads_module).items():
    globals()[_name] = _case  # pytest collects unittest.TestCase subclasses whatever their name
del _test_id, _name, _method, _case


@pytest.fixture(autouse=True)
def _restore_oslo_config_defaults():
    """oslo's TestGetLockPath calls set_defaults(lock_path='/the/path') and never undoes it."""
    saved = [(opt, opt.default) for opt in lockutils._opts]
    yield
    for opt, default in saved:
        opt.default = default
    lockutils._register_opts(lockutils.CONF)  # clears oslo.config's cached values


# -- oslo's test_lockutils_eventlet.py, in a monkey-patched subprocess ----------------------------


@pytest.fixture(scope="module", autouse=True)
def _eventlet_subprocess(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Started with the first test of this module, so it runs while oslo's thread tests run."""
    if not any(item.name.startswith(_EVENTLET_ITEMS) for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("oslo-eventlet") / "results.json"
    proc = subprocess.Popen(
        [sys.executable, str(EVENTLET_RUNNER), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


_EVENTLET_ITEMS = ("test_oslo_eventlet", "test_eventlet_runner")


@pytest.fixture(scope="module")
def eventlet_run(_eventlet_subprocess: tuple[subprocess.Popen[str], Path]) -> dict[str, Any]:
    proc, out = _eventlet_subprocess
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-4000:]
    run: dict[str, Any] = json.loads(out.read_text())
    return run


def test_eventlet_runner_really_ran_fairlock_monkey_patched(eventlet_run: dict[str, Any]) -> None:
    assert eventlet_run["monkey_patched"] is True
    assert eventlet_run["lockutils"] == "fairlock.lockutils"
    assert eventlet_run["same_lockutils"] is True
    assert sorted(eventlet_run["results"]) == sorted(EVENTLET_IDS)


@pytest.mark.parametrize("test_id", EVENTLET_IDS)
def test_oslo_eventlet(test_id: str, eventlet_run: dict[str, Any]) -> None:
    result = eventlet_run["results"].get(test_id)
    assert result is not None, f"{test_id} did not run"
    reason = EXPECTED_EVENTLET_FAILURES.get(test_id)
    if reason is None:
        assert result["outcome"] == "passed", result["detail"]
    else:
        assert result["outcome"] != "passed", f"{test_id} passes now; remove it from the expected failures"
        pytest.xfail(reason)


# -- the bookkeeping ------------------------------------------------------------------------------


def test_loaded_tests_use_fairlock() -> None:
    from fairlock.fixture import lockutils as fixture_lockutils

    assert _threads_module.lockutils is lockutils
    assert _threads_module.fixtures is fixture_lockutils
    source = loader.redirected_source(loader.THREADS_MODULE)
    assert "'fairlock.lockutils._get_lock_path'" in source
    assert "'-m', 'fairlock.lockutils'" in source


def test_expected_failures_name_real_tests() -> None:
    assert set(EXPECTED_FAILURES) <= set(THREAD_IDS)
    assert set(RAISING_THREADS) <= set(THREAD_IDS)
    assert set(EXPECTED_EVENTLET_FAILURES) <= set(EVENTLET_IDS)


def test_parity_count_matches_the_docs() -> None:
    total = len(THREAD_IDS) + len(EVENTLET_IDS)
    passed = total - len(EXPECTED_FAILURES) - len(EXPECTED_EVENTLET_FAILURES)
    assert (passed, total) == PARITY, f"update PARITY and doc/source/lockutils.rst: {passed} passed of {total}"
    doc = DOC.read_text()
    assert f"{passed} passed of {total}" in doc
    assert f"oslo.concurrency {loader.oslo_version()}" in doc
    for test_id in (*EXPECTED_FAILURES, *EXPECTED_EVENTLET_FAILURES):
        assert test_id in doc, f"{test_id} is an expected failure but doc/source/lockutils.rst does not list it"


# -- "N passed of M" at the end of the run --------------------------------------------------------


class _ParityReport:
    """Counts the outcomes of the oslo items of this module and prints them in the summary."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        parts = nodeid.split("::")
        is_oslo = (len(parts) == 3 and parts[1] in loader.test_cases(_threads_module)) or (
            len(parts) == 2 and parts[1].startswith("test_oslo_eventlet[")
        )
        if not is_oslo or not parts[0].endswith("test_oslo_parity.py"):
            return
        if report.failed:
            self.outcomes[nodeid] = "failed"
        elif hasattr(report, "wasxfail"):
            self.outcomes[nodeid] = "xfailed"
        elif report.when == "call" and report.passed:
            self.outcomes.setdefault(nodeid, "passed")
        elif report.skipped:
            self.outcomes[nodeid] = "skipped"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.outcomes:
            return
        values = list(self.outcomes.values())
        terminalreporter.write_line(
            f"oslo.concurrency {loader.oslo_version()} parity: {values.count('passed')} passed of "
            f"{len(values)} ({values.count('xfailed')} expected failures, {values.count('failed')} "
            f"unexpected failures, {values.count('skipped')} skipped)"
        )


@pytest.fixture(scope="module", autouse=True)
def _parity_report(request: pytest.FixtureRequest):
    plugin = _ParityReport()
    request.config.pluginmanager.register(plugin, "fairlock-oslo-parity-report")
    yield
