"""Sphinx configuration for fairlock's documentation (built warning-free by tests/test_docs.py)."""

import os
import sys

sys.path.insert(0, os.path.abspath("../.."))

project = "fairlock"
author = "fairlock developers"
copyright = "2026, fairlock developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.doctest", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
html_theme = "alabaster"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
