"""Versioned schema migrations: numbered SQL files with an up and a down section, applied in
order inside one transaction each and recorded in `schema_migrations`.

The platform's migrations (storage/migrations/) come first; a plug-in domain may bring its own
package of them (its DOMAIN's `migrations`, numbered 0001.. within it), applied after the
platform's in the catalog's order and recorded in the same table, at the versions that follow
(`chain`), named `<domain>.<name>`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import duckdb

from dropwire.functions.kit.errors import DatabaseUnusable, DropwireError

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_UP, _DOWN = "-- migrate:up", "-- migrate:down"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256((self.up + self.down).encode()).hexdigest()[:16]


def load_migrations(package: str = "dropwire.storage.migrations", *, first: int = 1, domain: str | None = None) -> list[Migration]:
    """The migrations of `package`, numbered 1..N there; recorded from version `first` on."""
    found = []
    for entry in resources.files(package).iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        text = entry.read_text()
        if _UP not in text or _DOWN not in text:
            raise DropwireError(f"migration {entry.name} needs both '{_UP}' and '{_DOWN}' sections")
        up, down = text.split(_UP, 1)[1].split(_DOWN, 1)
        found.append(Migration(int(match["version"]), match["name"], up.strip(), down.strip()))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise DropwireError(f"migrations must be numbered 1..N without gaps; found {migration.version} where {expected} was expected")
    if domain is None and first == 1:
        return found
    prefix = f"{domain}." if domain else ""
    return [Migration(m.version + first - 1, prefix + m.name, m.up, m.down) for m in found]


MIGRATIONS = load_migrations()
LATEST = MIGRATIONS[-1].version


def chain(domain_packages: Iterable[tuple[str, str]]) -> list[Migration]:
    """The platform's migrations, then each (domain, package)'s, numbered on from the platform's."""
    found = list(MIGRATIONS)
    for domain, package in domain_packages:
        found += load_migrations(package, first=len(found) + 1, domain=domain)
    return found


def _ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
    if "schema_migrations" not in tables:
        if tables:
            raise DatabaseUnusable(
                f"this DuckDB file is not a dropwire database: it has tables {sorted(tables)} but no "
                "schema_migrations table; it was left untouched"
            )
        con.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
            "checksum VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    _ensure_table(con)
    try:
        row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except duckdb.Error as exc:
        raise DatabaseUnusable(f"the schema_migrations table is unreadable: {exc}") from None
    return int(row[0] or 0)  # pyright: ignore[reportOptionalSubscript]  # an aggregate answers one row


def _refuse_future(version: int, latest: int) -> None:
    if version > latest:
        raise DatabaseUnusable(
            f"the database is at schema version {version}, newer than this dropwire knows "
            f"(up to {latest}); upgrade dropwire, or run `dropwire db downgrade {latest}` with "
            "the newer version first",
            version=version,
            latest=latest,
        )


def upgrade(con: duckdb.DuckDBPyConnection, target: int | None = None,
            migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every migration above the current version up to `target` (default: latest) of
    `migrations` (default: the platform's; `chain` adds the domains')."""
    migrations = MIGRATIONS if migrations is None else migrations
    latest = migrations[-1].version
    version = current_version(con)
    _refuse_future(version, latest)
    target = latest if target is None else target
    if not 0 <= target <= latest:
        raise DropwireError(f"there is no schema version {target}; versions run from 0 to {latest}")
    applied = []
    for migration in migrations:
        if version < migration.version <= target:
            _run(con, migration.up, "INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
                 (migration.version, migration.name, migration.checksum), migration, "upgrade")
            applied.append(migration)
    return applied


def downgrade(con: duckdb.DuckDBPyConnection, target: int, migrations: list[Migration] | None = None) -> list[Migration]:
    """Undo migrations above `target`, newest first."""
    migrations = MIGRATIONS if migrations is None else migrations
    version = current_version(con)
    _refuse_future(version, migrations[-1].version)
    if not 0 <= target <= version:
        raise DropwireError(f"cannot downgrade to {target}: the database is at version {version}; choose 0..{version}")
    undone = []
    for migration in reversed(migrations):
        if target < migration.version <= version:
            _run(con, migration.down, "DELETE FROM schema_migrations WHERE version = ?", (migration.version,), migration, "downgrade")
            undone.append(migration)
    return undone


def _run(con, script: str, record_sql: str, record_args: tuple, migration: Migration, direction: str) -> None:
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(script)
        con.execute(record_sql, record_args)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise DatabaseUnusable(
            f"{direction} of migration {migration.version:04d}_{migration.name} failed and was rolled back: {exc}"
        ) from None


def applied_migrations(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, str]]:
    current_version(con)
    return [(v, n, str(t)) for v, n, t in con.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()]
