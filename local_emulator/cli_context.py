"""What every `dropwire` sub-command shares: the settings file named by --settings (read when
a command runs, after the root callback has set it) and the console it prints to."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console

if TYPE_CHECKING:
    from dropwire.local_emulator.settings import Settings

console = Console()


class CliState:
    settings_file: Optional[Path] = None


state = CliState()


class Lazy:
    """A module, or one name in it, imported when first used: the sub-commands' modules name
    what they use at the top, and `dropwire --help` loads none of it (the store, polars,
    DuckDB, the gateway). Not for `except` or isinstance: those need the real class."""

    def __init__(self, module: str, name: str = "") -> None:
        self._module, self._name = module, name

    def _target(self) -> Any:
        found = importlib.import_module(self._module)
        return getattr(found, self._name) if self._name else found

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target(), attr)

    def __getitem__(self, key: Any) -> Any:
        return self._target()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._target()

    def __iter__(self):
        return iter(self._target())


def current_settings() -> Settings:
    # Imported when a command runs: the settings bring the store's modules (polars, DuckDB),
    # which `dropwire --help` has no use for.
    from dropwire.local_emulator.settings import load_settings

    return load_settings(state.settings_file)
