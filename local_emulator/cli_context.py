"""What every `dropwire` sub-command shares: the settings file named by --settings (read when
a command runs, after the root callback has set it) and the console it prints to."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

from dropwire.local_emulator.settings import Settings, load_settings

console = Console()


class CliState:
    settings_file: Optional[Path] = None


state = CliState()


def current_settings() -> Settings:
    return load_settings(state.settings_file)
