"""Packaging hygiene: one version source, the licence file, the changelog."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import textsr

ROOT = Path(__file__).resolve().parents[1]


def test_version_has_one_source():
    # the installed metadata is built from textsr.__version__ (pyproject: dynamic version, setuptools attr)
    assert textsr.__version__ == importlib.metadata.version("textsr")
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_license_file_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub
    assert importlib.metadata.metadata("textsr")["License"] == "Apache-2.0"


def test_changelog_has_a_section_for_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert re.search(rf"^## \[{re.escape(textsr.__version__)}\]", text, re.M), textsr.__version__
