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
