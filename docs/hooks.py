"""mkdocs hook: the SDK reference reads `dropwire.*` from source. The packages sit at the repo's
top level and are mapped under `dropwire` by pyproject's package-dir, which griffe cannot read
statically; so a tree of links (build/docs-pkg/dropwire/<package> -> <package>) gives it the
import names. Made when mkdocs loads this hook, before any page is rendered."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / "build" / "docs-pkg" / "dropwire"

TREE.mkdir(parents=True, exist_ok=True)
for package in ("functions", "storage", "runtime", "local_emulator"):
    link = TREE / package
    if not link.is_symlink():
        link.symlink_to(REPO / package, target_is_directory=True)
