"""The docs site builds: `mkdocs build --strict` (mkdocs.yml's validation makes a broken link or
anchor a warning, and strict makes every warning an error; the SDK reference pages are rendered
from the docstrings by mkdocstrings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_docs_build_strict_without_broken_links(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    built = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    for page in ("index.html", "getting-started/index.html", "architecture/index.html", "reference/registry/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    fetched = re.compile(r'<(?:script|link|img)[^>]*(?:src|href)="(?:https?:)?//')
    for page in (tmp_path / "site").rglob("*.html"):
        assert not fetched.search(page.read_text()), f"{page} loads something from the network"
    assert "FunctionRegistry" in (tmp_path / "site" / "reference" / "registry" / "index.html").read_text()


def test_the_docs_fetch_nothing_from_the_network():
    """No web fonts (theme.font: false) and no script or stylesheet from elsewhere."""
    import yaml

    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    assert config["theme"]["font"] == "false"
    assert not config.get("extra_javascript") and not config.get("extra_css")
