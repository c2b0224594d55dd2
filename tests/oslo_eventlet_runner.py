"""Run oslo.concurrency's eventlet lockutils tests against fairlock.lockutils, monkey patched.

Usage: ``python tests/oslo_eventlet_runner.py RESULTS.json`` (started by tests/test_oslo_parity.py
in a fresh interpreter, so the monkey patching never leaks into the pytest process).

Writes ``{"monkey_patched": bool, "lockutils": module name, "results": {"Class.test":
{"outcome": "passed" | "failed" | "error" | "skipped", "detail": str}}}``.
"""

import eventlet

eventlet.monkey_patch()  # first, before anything imports threading-based code

import json  # noqa: E402
import sys  # noqa: E402
import unittest  # noqa: E402

import oslo_parity_loader  # noqa: E402  (sys.path[0] is tests/)


class _Recorder(unittest.TestResult):
    def __init__(self) -> None:
        super().__init__()
        self.outcomes: dict[str, dict[str, str]] = {}

    @staticmethod
    def _id(test: unittest.TestCase) -> str:
        cls = type(test).__name__
        return f"{cls}.{test.id().rsplit('.', 1)[-1]}"

    def addSuccess(self, test):  # noqa: N802 - unittest's name
        super().addSuccess(test)
        self.outcomes[self._id(test)] = {"outcome": "passed", "detail": ""}

    def addFailure(self, test, err):  # noqa: N802
        super().addFailure(test, err)
        self.outcomes[self._id(test)] = {"outcome": "failed", "detail": self._exc_info_to_string(err, test)}

    def addError(self, test, err):  # noqa: N802
        super().addError(test, err)
        self.outcomes[self._id(test)] = {"outcome": "error", "detail": self._exc_info_to_string(err, test)}

    def addSkip(self, test, reason):  # noqa: N802
        super().addSkip(test, reason)
        self.outcomes[self._id(test)] = {"outcome": "skipped", "detail": reason}


def main(out_path: str) -> int:
    from eventlet import patcher

    from fairlock import lockutils

    module = oslo_parity_loader.load(oslo_parity_loader.EVENTLET_MODULE, "oslo_parity_test_lockutils_eventlet")
    suite = unittest.TestSuite(
        unittest.defaultTestLoader.loadTestsFromTestCase(cls)
        for _, cls in sorted(oslo_parity_loader.test_cases(module).items())
    )
    recorder = _Recorder()
    suite.run(recorder)
    with open(out_path, "w") as out:
        json.dump(
            {
                "monkey_patched": bool(patcher.is_monkey_patched("thread")),
                "lockutils": module.lockutils.__name__,
                "same_lockutils": module.lockutils is lockutils,
                "results": recorder.outcomes,
            },
            out,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
