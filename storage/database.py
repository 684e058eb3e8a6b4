"""Opening the one DuckDB file: a clear error for a held lock or a file that is not ours."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from dropwire.functions.kit.errors import DatabaseLocked, DatabaseUnusable

_HOLDER = re.compile(r"Conflicting lock is held in (?P<cmd>.+?) \(PID (?P<pid>\d+)\)")


def _holder_command(pid: int, fallback: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip() or fallback
    except OSError:
        return fallback


def connect(path: Path, *, read_only: bool = False, config: dict[str, str] | None = None) -> duckdb.DuckDBPyConnection:
    """Open the database file, or raise an error that says who holds it or what is wrong;
    `config`: DuckDB settings (storage.settings.DatabaseSettings.duckdb_config)."""
    if read_only and not path.exists():
        raise DatabaseUnusable(f"database {path} does not exist yet; `dropwire db upgrade` creates it "
                               "(so does `dropwire demo` or `dropwire emulate`), or set DROPWIRE_DATA_DIR", path=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config or {})
    except duckdb.IOException as exc:
        text = str(exc)
        held = _HOLDER.search(text)
        if held:
            pid = int(held["pid"])
            holder = _holder_command(pid, held["cmd"])
            raise DatabaseLocked(
                f"database {path} is in use by process {pid} ({holder}); only one dropwire "
                "control plane may own it. Stop that process, or ask it for a snapshot "
                "with `dropwire db export DIR`.",
                path=str(path),
                pid=pid,
                holder=holder,
            ) from None
        if "not a valid DuckDB database file" in text or "older/newer" in text or "version" in text.lower():
            raise DatabaseUnusable(
                f"{path} is not a dropwire database (DuckDB says: {text.removeprefix('IO Error: ')}); "
                "it was left untouched. Point DROPWIRE_DB_PATH elsewhere or move the file away.",
                path=str(path),
            ) from None
        raise DatabaseUnusable(f"cannot open database {path}: {text}", path=str(path)) from None
    except duckdb.Error as exc:
        raise DatabaseUnusable(
            f"cannot open database {path}: {exc}; it was left untouched", path=str(path)
        ) from None
