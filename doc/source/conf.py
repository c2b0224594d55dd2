"""Sphinx configuration for fairlock's documentation (built warning-free by tests/test_docs.py)."""

import os
import sys

sys.path.insert(0, os.path.abspath("../.."))

from fairlock import GRANT_RULE  # noqa: E402 - after the path is set

# The fairness sentence has one source, fairlock._core.GRANT_RULE; every page says |grant_rule|.
rst_prolog = ".. |grant_rule| replace:: %s\n" % GRANT_RULE.replace("max_bypass", "``max_bypass``")

project = "fairlock"
author = "fairlock developers"
copyright = "2026, fairlock developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.doctest", "sphinx.ext.viewcode", "reno.sphinxext"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
html_theme = "alabaster"
html_static_path = ["_static"]
# Wide tables and code blocks scroll inside their box (tests/test_docs.py checks it is linked).
html_css_files = ["fairlock.css"]
exclude_patterns = ["_build"]
