"""Packaged like an OpenStack library: LICENSE in the wheel and the sdist, no setuptools warning,
release notes that reno accepts, ``fairlock --version``, plain-text ``--help``."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import fairlock
from fairlock.__main__ import build_parser, main, plain_text

ROOT = Path(__file__).resolve().parent.parent

# The sections reno knows (reno.config's defaults), in the order it prints them.
RENO_SECTIONS = {"prelude", "features", "issues", "upgrade", "deprecations", "critical", "security",
                 "fixes", "other"}


def test_license_is_the_full_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX" in text
    assert "license_expression = Apache-2.0" in (ROOT / "setup.cfg").read_text()


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fairlock {fairlock.__version__}"


def _parsers(parser: object) -> list[object]:
    import argparse

    found = [parser]
    for action in parser._actions:  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


def test_help_texts_are_plain_text() -> None:
    for parser in _parsers(build_parser()):
        text = parser.format_help()  # type: ignore[attr-defined]
        for markup in ("``", ":class:`", ":func:`", ":meth:`", "**"):
            assert markup not in text, f"{parser.prog}: {markup!r} in --help"  # type: ignore[attr-defined]


@pytest.mark.parametrize("rst, plain", [
    ("run ``python -m fairlock``.", "run python -m fairlock."),
    ("a :class:`fairlock.Lock` and :class:`~fairlock.etcd.EtcdLock`", "a fairlock.Lock and EtcdLock"),
    (":ref:`the table <compat>` and `etcd <https://etcd.io>`_", "the table and etcd"),
    ("**not** *this*, but 2 * 3 * 4", "not this, but 2 * 3 * 4"),
    ("as follows::\n\n    code", "as follows:\n\n    code"),
    ("%(default)s stays", "%(default)s stays"),
])
def test_plain_text_strips_rst_markup(rst: str, plain: str) -> None:
    assert plain_text(rst) == plain


def test_release_notes_are_valid_reno_notes() -> None:
    notes = sorted((ROOT / "releasenotes" / "notes").glob("*.yaml"))
    assert notes, "no release notes"
    for note in notes:
        content = yaml.safe_load(note.read_text())
        assert isinstance(content, dict) and content, note.name
        assert set(content) <= RENO_SECTIONS, f"{note.name}: unknown sections {set(content) - RENO_SECTIONS}"
        for section, body in content.items():
            items = [body] if section == "prelude" else body
            assert isinstance(items, list) and all(isinstance(i, str) and i.strip() for i in items), note.name
    out = subprocess.run([sys.executable, "-c", "import sys; from reno.main import main; sys.exit(main(['lint']))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_wheel_and_sdist_carry_the_license_and_build_without_warnings(tmp_path: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    tree = tmp_path / "tree"
    for name in listed:
        source = ROOT / name
        if source.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(source.read_bytes())
    out = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(tmp_path / "dist"),
                          str(tree)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    for warning in ("DeprecationWarning", "BuildBackendWarning", "SetuptoolsWarning", "License classifiers"):
        assert warning not in log, log[-3000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
        # The library and its test kit only: the benchmarks stay in the source checkout.
        assert not [n for n in names if n.startswith(("benchmarks/", "fairlock/bench/"))], names
        assert "fairlock/testing/__init__.py" in names and "fairlock/testing/etcd_model.py" in names
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: License ::" not in metadata
    sdist = next((tmp_path / "dist").glob("*.tar.gz"))
    with tarfile.open(sdist) as tf:
        assert any(n.endswith("/LICENSE") for n in tf.getnames())
