"""Load oslo.concurrency's own lockutils unit tests with fairlock's lockutils in place of oslo's.

The tests are read from the installed oslo.concurrency package (nothing of theirs is copied into
this repository) and only their references to oslo's modules are redirected:

* ``from oslo_concurrency import lockutils``             -> ``from fairlock import lockutils``
* ``from oslo_concurrency.fixture import lockutils ...`` -> ``from fairlock.fixture import lockutils ...``
* ``'oslo_concurrency.lockutils...'`` (mock.patch targets, ``python -m``) -> ``'fairlock.lockutils...'``

Any other reference to an ``oslo_concurrency`` module left in the source stops the load, so a new kind of
reference in a future oslo release cannot silently test oslo instead of fairlock.

Used in-process by tests/test_oslo_parity.py and, for the eventlet tests, by
tests/oslo_eventlet_runner.py in a monkey-patched subprocess. Imports neither oslo's tests nor
eventlet itself.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import types
import unittest
from pathlib import Path

DISTRIBUTION = "oslo.concurrency"
TEST_DIR = "oslo_concurrency/tests/unit"
THREADS_MODULE = "test_lockutils.py"
EVENTLET_MODULE = "test_lockutils_eventlet.py"

#: (old, new, how often it must occur at least) applied in this order.
SUBSTITUTIONS: tuple[tuple[str, str, int], ...] = (
    ("from oslo_concurrency.fixture import lockutils", "from fairlock.fixture import lockutils", 0),
    ("from oslo_concurrency import lockutils", "from fairlock import lockutils", 1),
    ("oslo_concurrency.lockutils", "fairlock.lockutils", 0),
)


# A reference to oslo's package or one of its modules (the config group 'oslo_concurrency' is not).
_MODULE_REFERENCE = re.compile(r"\boslo_concurrency(\.|\s+import\b)")


def oslo_test_path(filename: str) -> Path:
    """Where the installed oslo.concurrency keeps one of its unit test modules."""
    path = Path(str(importlib.metadata.distribution(DISTRIBUTION).locate_file(f"{TEST_DIR}/{filename}")))
    if not path.is_file():
        raise FileNotFoundError(f"{DISTRIBUTION} does not ship {TEST_DIR}/{filename}")
    return path


def oslo_version() -> str:
    return importlib.metadata.version(DISTRIBUTION)


def redirected_source(filename: str) -> str:
    """The source of oslo's test module with every oslo_concurrency reference pointing at fairlock."""
    source = oslo_test_path(filename).read_text()
    for old, new, at_least in SUBSTITUTIONS:
        found = source.count(old)
        if found < at_least:
            raise RuntimeError(f"{filename}: expected {old!r} at least {at_least} time(s), found {found}")
        source = source.replace(old, new)
    leftover = [line.strip() for line in source.splitlines() if _MODULE_REFERENCE.search(line)]
    if leftover:
        raise RuntimeError(f"{filename}: references to oslo_concurrency not redirected: {leftover}")
    return source


def load(filename: str, module_name: str) -> types.ModuleType:
    """Execute the redirected test module as ``module_name`` (registered in sys.modules)."""
    path = oslo_test_path(filename)
    module = types.ModuleType(module_name)
    module.__file__ = str(path)  # tracebacks point at oslo's lines
    sys.modules[module_name] = module
    exec(compile(redirected_source(filename), str(path), "exec"), module.__dict__)
    return module


def test_cases(module: types.ModuleType) -> dict[str, type[unittest.TestCase]]:
    """The TestCase classes defined by the loaded module, by name."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase) and obj.__module__ == module.__name__
    }


def test_ids(module: types.ModuleType) -> list[str]:
    """``Class.test_method`` for every test the module defines, as unittest would run them."""
    loader = unittest.TestLoader()
    return [
        f"{name}.{method}"
        for name, cls in sorted(test_cases(module).items())
        for method in loader.getTestCaseNames(cls)
    ]


def declared_test_ids(filename: str) -> list[str]:
    """``Class.test_method`` read from the source without executing it (no eventlet import)."""
    tree = ast.parse(oslo_test_path(filename).read_text())
    return [
        f"{node.name}.{item.name}"
        for node in sorted((n for n in tree.body if isinstance(n, ast.ClassDef)), key=lambda n: n.name)
        for item in sorted(node.body, key=lambda n: getattr(n, "name", ""))
        if isinstance(item, ast.FunctionDef) and item.name.startswith("test")
    ]
