"""nova's own unit tests with fairlock's lockutils swapped in for oslo's (tools/nova_unit.py).

The short form CI runs: ``nova.tests.unit.test_utils`` (``FairLockGuard`` on
``NOVA_FAIR_LOCKS``, oslo's reader/writer API) and ``nova.tests.unit.compute.test_resource_tracker``
(17 methods under ``@synchronized(COMPUTE_RESOURCE_SEMAPHORE, fair=True)``, nested, with nova's
test base failing any unfair use), in the venv ``tools/nova_venv.sh`` makes (nova 34.0.0 from
PyPI). Slow: making the venv takes a minute or two the first time; the run about a minute.
The full command, with ``network.test_neutron`` and the oslo baseline, is in
doc/source/lockutils.rst.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["nova.tests.unit.test_utils", "nova.tests.unit.compute.test_resource_tracker"]


def nova_python() -> str:
    proc = subprocess.run(["bash", str(ROOT / "tools" / "nova_venv.sh")], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    python = proc.stdout.strip().splitlines()[-1]
    assert os.path.isfile(python), proc.stdout
    return python


def test_nova_unit_tests_pass_with_fairlock_lockutils(tmp_path: Path) -> None:
    out = tmp_path / "counts.json"
    proc = subprocess.run(
        [nova_python(), str(ROOT / "tools" / "nova_unit.py"), "--lockutils", "fairlock", "--json", str(out),
         *MODULES],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = json.loads(out.read_text())
    assert run["lockutils"] == "fairlock"
    counts = {m["module"]: m for m in run["modules"]}
    utils, tracker = counts[MODULES[0]], counts[MODULES[1]]
    assert utils["failed"] == 0 and utils["passed"] >= 100, utils
    assert tracker["failed"] == 0 and tracker["passed"] >= 100, tracker
    # The tests that need what issue 10 added really ran and passed: FairLockGuard (reader/writer
    # API on FairLocks) and the resource tracker's nested fair=True claims.
    guard = [t for t in utils["passed_tests"] if ".TestFairLockGuard." in t]
    assert len(guard) >= 10, guard
    assert f"{run['total']['passed']} passed, 0 failed" in proc.stdout
