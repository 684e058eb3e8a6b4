"""What every `dropwire` sub-command shares: the settings file named by --settings (read when
a command runs, after the root callback has set it), the console it prints to, and how records
are laid out on it."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

if TYPE_CHECKING:
    from dropwire.local_emulator.settings import Settings

# soft_wrap: rich never breaks a printed line (an id, a path or a command stays whole, to be
# copied); only tables and blocks lay themselves out to the terminal's width.
console = Console(soft_wrap=True)

# A table is used only if each free-text column can keep at least this many characters a line.
MIN_TEXT_WIDTH = 16


class CliState:
    settings_file: Path | None = None


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


def when(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def whole(header: str, **options: Any) -> Column:
    """A column whose values are never cut or wrapped: ids, paths, states, counts, times."""
    return Column(header, no_wrap=True, **options)


def prose(header: str, **options: Any) -> Column:
    """A column of free text (errors, reasons, subjects): folded to fit, never cut."""
    return Column(header, overflow="fold", **options)


def print_records(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, title: str | None = None,
                  out: Console | None = None) -> None:
    """A table when it fits the console with every `whole` column whole and each `prose`
    column wide enough for its longest word (and MIN_TEXT_WIDTH); otherwise one block per
    record: its first field as the heading, then its other fields as `name: value`, as many
    whole fields a line as fit, prose on a line of its own. Rich never breaks a field: one
    wider than the terminal runs past the edge (the terminal wraps it; a copy takes it whole)."""
    out = out or console
    naturals = [max([cell_len(str(column.header))] + [cell_len(row[i]) for row in rows]) for i, column in enumerate(columns)]
    narrowest = [n if column.no_wrap else max([min(n, MIN_TEXT_WIDTH)] + [cell_len(word) for row in rows for word in row[i].split()])
                 for i, (n, column) in enumerate(zip(naturals, columns, strict=False))]
    if 1 + sum(3 + n for n in narrowest) <= out.width:
        table = Table(*columns, title=title, title_justify="left")
        for column, least in zip(table.columns, narrowest, strict=False):
            column.min_width = least
        for row in rows:
            table.add_row(*row)
        out.print(table, soft_wrap=False)
        return
    if title:
        out.print(Text(title, style="italic"))
    if not rows:  # no record to head a block: the names still say what was asked
        out.print(Text.assemble(("columns: ", "dim"), ", ".join(str(column.header) for column in columns)))
    for row in rows:
        out.print(Text.assemble((f"{columns[0].header} ", "dim"), (row[0], "bold")))
        line = Text("  ")
        for column, value in zip(columns[1:], row[1:], strict=False):
            if not value:
                continue
            field = Text.assemble((f"{column.header}: ", "dim"), value)
            if line.plain.strip() and (not column.no_wrap or line.cell_len + 3 + field.cell_len > out.width):
                out.print(line)
                line = Text("  ")
            line.append_text(field if not line.plain.strip() else Text("   ") + field)
            if not column.no_wrap:  # prose stands alone
                out.print(line)
                line = Text("  ")
        if line.plain.strip():
            out.print(line)
        out.print()
