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


def test_fairness_sentence_is_the_same_everywhere() -> None:
    from fairlock import GRANT_RULE

    sentence = " ".join(GRANT_RULE.replace("max_bypass (K)", "``max_bypass`` (K)").split())
    for path in ["README.rst", "doc/source/fairness.rst", "doc/source/index.rst"]:
        text = " ".join((ROOT / path).read_text().split())
        assert sentence.lower() in text.lower(), path
