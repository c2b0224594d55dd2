"""Run the generic, local and green-only suites under real eventlet.monkey_patch(), in a fresh
subprocess so the patching never leaks into this process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys
import tests.eventlet_early  # creates a fairlock.Lock before patching, on purpose
import eventlet
eventlet.monkey_patch()
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""

#: Reasons a generic test gives for not applying to a lock kind (tests/test_generic_lock.py).
KIND_SKIPS = ("no lanes", "a foreign protocol")

SUITES = ["tests/test_generic_lock.py", "tests/test_local.py", "tests/test_green.py", "tests/test_history.py",
          "tests/test_metrics.py", "tests/test_rwlock.py"]


@pytest.mark.skipif(os.environ.get("FAIRLOCK_EVENTLET_CHILD") == "1", reason="already the child")
def test_suites_pass_under_monkey_patching() -> None:
    env = dict(os.environ, FAIRLOCK_EVENTLET_CHILD="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "-q", "-rs", "-p", "no:cacheprovider", *SUITES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = out.stdout[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", out.stdout).group(1))  # type: ignore[union-attr]
    # The green-only tests must really have run (not been skipped) in the child.
    # Only the "process without eventlet" check may skip, besides generic tests that do not apply
    # to a kind (a lock without lanes, a foreign protocol); the green-only tests must really run.
    skips = [(int(n), reason) for n, reason in re.findall(r"SKIPPED \[(\d+)\] [^:]+:\d+: (.*)", out.stdout)]
    unexpected = sum(n for n, reason in skips if not reason.startswith(KIND_SKIPS))
    assert passed >= 60 and unexpected <= 1, tail
