"""The Sphinx documentation builds without a single warning."""

from __future__ import annotations

import pytest

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_docs_build_warning_free(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "doc" / "source"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "html" / "index.html").exists()
    # Wide tables and diffs scroll inside their box instead of overflowing the page.
    css = (tmp_path / "html" / "_static" / "fairlock.css").read_text()
    assert "overflow-x: auto" in css and "table.docutils" in css
    for page in ("lockutils.html", "errors.html", "operations.html", "api.html"):
        assert 'href="_static/fairlock.css' in (tmp_path / "html" / page).read_text(), page
    # reno's directive collects releasenotes/notes into the release notes page.
    assert "Prometheus collector" in (tmp_path / "html" / "releasenotes.html").read_text()
    # The API page documents these modules.
    api = (tmp_path / "html" / "api.html").read_text()
    for module in ("fairlock.lockutils", "fairlock.tooz_driver", "fairlock.testing", "fairlock.fixture.lockutils",
                   "fairlock.history", "fairlock.metrics"):
        assert f'id="module-{module}"' in api, module


def _plain(text: str) -> str:
    """Text without RST inline markup, comment marks and line breaks, for comparing sentences."""
    for mark in ("``", "**", "#", '"'):
        text = text.replace(mark, "")
    return " ".join(text.split()).lower()


def test_fairness_sentence_has_one_source_and_every_copy_matches_it() -> None:
    """GRANT_RULE is the source: the doc pages substitute it (|grant_rule|, conf.py); the copies
    that cannot (README on PyPI, docstrings read by help()) must say exactly the same."""
    from fairlock import GRANT_RULE

    rule = _plain(GRANT_RULE)
    opening = rule[: rule.index(" of the highest-priority")]
    copies = 0
    paths = [ROOT / "README.rst", *(ROOT / "doc" / "source").glob("*.rst"),
             *(ROOT / "fairlock").rglob("*.py"), *(ROOT / "examples").glob("*.py")]
    for path in paths:
        text = _plain(path.read_text())
        start = text.find(opening)
        while start != -1:
            assert text[start:start + len(rule)] == rule, f"{path}: {text[start:start + len(rule)]!r}"
            copies += 1
            start = text.find(opening, start + 1)
    assert copies >= 5  # the source, its module's header, README, the package and class docstrings
    for page in ("index.rst", "fairness.rst", "lockutils.rst", "nova.rst", "tooz.rst"):
        assert "|grant_rule|" in (ROOT / "doc" / "source" / page).read_text(), page
    conf = (ROOT / "doc" / "source" / "conf.py").read_text()
    assert "GRANT_RULE" in conf and "rst_prolog" in conf


# The modules of doc/source/api.rst: every public class, function, method and property has a
# docstring, so the API page shows no bare signature.
API_MODULES = [
    "fairlock", "fairlock.stats", "fairlock.history", "fairlock.metrics", "fairlock.coalesce", "fairlock.errors",
    "fairlock.lockutils", "fairlock.fixture.lockutils", "fairlock.tooz_driver", "fairlock.etcd",
    "fairlock.etcd.lock", "fairlock.etcd.session", "fairlock.etcd.backend", "fairlock.testing.etcd",
    "fairlock.testing.faultproxy", "fairlock.testing.etcd_model", "fairlock.testing.checker",
    "fairlock._core.queue", "fairlock._core.lanes", "fairlock.rwlock", "fairlock._core.rwqueue",
]


def _undocumented(module_name: str) -> list[str]:
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    missing = []
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.isclass(obj):
            if obj.__module__ != module_name and module_name != "fairlock":
                continue
            if not obj.__doc__:
                missing.append(f"{module_name}.{name}")
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if (inspect.isfunction(func) or isinstance(value, property)) and not inspect.getdoc(func):
                    missing.append(f"{module_name}.{name}.{attr}")
        elif inspect.isfunction(obj) and not obj.__doc__:
            missing.append(f"{module_name}.{name}")
    return missing


def test_every_public_api_has_a_docstring() -> None:
    missing = [name for module in API_MODULES for name in _undocumented(module)]
    assert missing == []
