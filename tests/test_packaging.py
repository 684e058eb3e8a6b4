"""The card's folders install under one import name: pyproject lists every package of the tree
as dropwire.<folder>..., so a wheel (not only the editable install) carries all of them."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("functions", "runtime", "storage", "local_emulator")


def test_every_package_of_the_tree_is_listed_under_the_dropwire_name() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {"dropwire." + ".".join(init.parent.relative_to(REPO).parts)
               for top in TOP_LEVEL for init in (REPO / top).rglob("__init__.py")}
    assert set(config["packages"]) == in_tree
    assert config["package-dir"] == {f"dropwire.{top}": top for top in TOP_LEVEL}


def test_no_module_imports_the_bare_top_level_names() -> None:
    offenders = []
    for path in [*REPO.glob("functions/**/*.py"), *REPO.glob("runtime/**/*.py"), *REPO.glob("storage/**/*.py"),
                 *REPO.glob("local_emulator/**/*.py"), *REPO.glob("tests/**/*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(tuple(f"{kw} {top}" for kw in ("from", "import") for top in TOP_LEVEL)):
                word = stripped.split()[1]
                if word.split(".")[0] in TOP_LEVEL:
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {stripped}")
    assert offenders == []
