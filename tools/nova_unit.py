"""Run nova's own unit test modules with fairlock's lockutils (or oslo's, as the baseline).

Run it with the python of the venv that ``tools/nova_venv.sh`` makes (nova 34.0.0 from PyPI, its
test requirements, fairlock installed editable)::

    PY=$(tools/nova_venv.sh)
    $PY tools/nova_unit.py --lockutils fairlock nova.tests.unit.test_utils
    $PY tools/nova_unit.py --lockutils oslo nova.tests.unit.test_utils      # the baseline

The swap happens as nova's deployment would do it, before any nova module imports lockutils:
``fairlock.lockutils`` becomes ``sys.modules["oslo_concurrency.lockutils"]`` and the
``lockutils`` attribute of the ``oslo_concurrency`` package, so ``from oslo_concurrency import
lockutils`` in nova (``nova.utils``, ``nova.test``, nova's fixtures) and in oslo's own fixture
modules gets fairlock's. Eventlet monkey patching is nova's own (``nova.monkey_patch``, the
first thing ``nova.tests.unit`` does), applied first, exactly as under stestr; set
``OS_NOVA_DISABLE_EVENTLET_PATCHING=1`` for nova's native-threading mode.

Nova's tests are testtools/unittest tests (nova runs them with stestr, not pytest); this runs
each named module with unittest and prints one count line per module and a total line, e.g.::

    nova.tests.unit.test_utils: 121 passed, 0 failed, 2 skipped (fairlock)
    121 passed, 0 failed, 2 skipped

``--json FILE`` also writes the counts and the ids of the failed tests. The exit status is 0
when nothing failed (errors count as failures), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import unittest
from typing import Any


def install_fairlock_lockutils() -> Any:
    """Make ``from oslo_concurrency import lockutils`` give fairlock's drop-in."""
    import oslo_concurrency

    import fairlock.lockutils as fair_lockutils

    sys.modules["oslo_concurrency.lockutils"] = fair_lockutils
    oslo_concurrency.lockutils = fair_lockutils  # type: ignore[attr-defined]
    return fair_lockutils


class _CountingResult(unittest.TextTestResult):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passed: list[str] = []

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802 - unittest's name
        super().addSuccess(test)
        self.passed.append(test.id())


def run_module(name: str, verbosity: int) -> dict[str, Any]:
    """Run every test of one module; return its counts and failed test ids."""
    suite = unittest.defaultTestLoader.loadTestsFromName(name)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=verbosity, resultclass=_CountingResult)
    started = time.monotonic()
    result = runner.run(suite)
    failed = [test.id() for test, _ in result.failures + result.errors]
    failed += [test.id() for test in result.unexpectedSuccesses]
    return {
        "module": name,
        "passed": len(result.passed) + len(result.expectedFailures),  # type: ignore[attr-defined]
        "failed": len(failed),
        "skipped": len(result.skipped),
        "failed_tests": sorted(failed),
        "passed_tests": sorted(result.passed),
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="+", help="nova test modules, e.g. nova.tests.unit.test_utils")
    parser.add_argument("--lockutils", choices=("fairlock", "oslo"), default="fairlock",
                        help="whose lockutils nova gets (default: fairlock)")
    parser.add_argument("--json", metavar="FILE", help="also write the counts as JSON to FILE")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="unittest verbosity")
    args = parser.parse_args(argv)

    # As nova's tox.ini: a hung test fails after 160 s instead of hanging the run.
    for key, value in (("NOVA_RAISE_ON_GREENLET_LEAK", "True"), ("OS_TEST_TIMEOUT", "160"),
                       ("OS_STDOUT_CAPTURE", "1"), ("OS_STDERR_CAPTURE", "1")):
        os.environ.setdefault(key, value)
    from nova import monkey_patch

    monkey_patch.patch()
    if args.lockutils == "fairlock":
        install_fairlock_lockutils()

    import nova.utils
    from oslo_concurrency import lockutils

    # The swap must have reached nova itself, or the counts would be the baseline's.
    expected = "fairlock.lockutils" if args.lockutils == "fairlock" else "oslo_concurrency.lockutils"
    if lockutils.__name__ != expected or nova.utils.lockutils is not lockutils:
        print(f"nova_unit: nova got {nova.utils.lockutils.__name__}, not {expected}", file=sys.stderr)
        return 2

    results = [run_module(name, args.verbose) for name in args.modules]
    for counts in results:
        print(f"{counts['module']}: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped ({args.lockutils}, {counts['seconds']}s)")
        for test_id in counts["failed_tests"]:
            print(f"    FAILED {test_id}")
    total = {key: sum(counts[key] for counts in results) for key in ("passed", "failed", "skipped")}
    print(f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"lockutils": args.lockutils, "modules": results, "total": total}, out, indent=2)
    return 0 if total["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
