"""One group commit's worth of rows. Operations stage rows here; the writer flushes every
table with one statement over a polars frame and commits once (DuckDB pays ~3 ms per commit, so
batching is what makes thousands of durable writes per second possible).

A table that operations stage rows into is described by a `TableSpec`, declared in the facet
module that owns the table (beside its migration); rows are staged against the spec itself,
so a new table needs no central list."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter

import duckdb
import polars as pl


# eq=False: a spec is hashed on every staged row, so by identity (each table has one spec).
@dataclass(frozen=True, eq=False)
class TableSpec:
    name: str
    columns: tuple[tuple[str, pl.DataType], ...]
    #: Key columns of a table whose rows change (added as new, then updated); empty: append-only.
    key: tuple[str, ...] = ()
    #: Columns held as epoch seconds in Python and stored as TIMESTAMPTZ. They travel as
    #: timestamps: converting with to_timestamp() in SQL made each update ~3x slower.
    timestamps: frozenset[str] = frozenset()
    #: Columns an update never changes (DuckDB pays per updated column, strings the most).
    immutable: frozenset[str] = frozenset()

    @cached_property
    def key_of(self) -> Callable[[tuple], tuple]:
        """The key of a row, as a tuple."""
        getter = itemgetter(*(i for i, (c, _) in enumerate(self.columns) if c in self.key))
        return getter if len(self.key) > 1 else lambda row: (getter(row),)

    def insert_statement(self, source: str) -> str:
        names = ", ".join(f'"{c}"' for c, _ in self.columns)
        values = ", ".join(f'{source}."{c}"' for c, _ in self.columns)
        return f"INSERT INTO {self.name} ({names}) SELECT {values} FROM {source}"

    def update_statement(self, source: str) -> str:
        # DuckDB's INSERT OR REPLACE costs ~3x a plain UPDATE here, so changed rows are updated.
        assignments = ", ".join(f'"{c}" = {source}."{c}"' for c, _ in self.columns
                                if c not in self.key and c not in self.immutable)
        match = " AND ".join(f'{self.name}."{c}" = {source}."{c}"' for c in self.key)
        return f"UPDATE {self.name} SET {assignments} FROM {source} WHERE {match}"


#: Column types of a TableSpec: each facet module declares its own tables.
STRING, INT32, INT64, EPOCH = pl.String(), pl.Int32(), pl.Int64(), pl.Float64()
_TIMESTAMP = pl.Datetime("us", "UTC")


@dataclass
class CommitGroup:
    """Rows to append per table, the latest image of changed rows per key, and raw statements."""

    rows: dict[TableSpec, list[tuple]] = field(default_factory=dict)
    #: table -> key -> (row, whether the row is new in this batch)
    images: dict[TableSpec, dict[tuple, tuple[tuple, bool]]] = field(default_factory=dict)
    statements: list[tuple[str, tuple]] = field(default_factory=list)

    def add(self, spec: TableSpec, row: tuple, *, new: bool = False) -> None:
        """Append a row (in the spec's column order); for a keyed table, record the row's
        latest image (`new` for a row that does not exist yet)."""
        if not spec.key:
            self.rows.setdefault(spec, []).append(row)
            return
        key = spec.key_of(row)
        images = self.images.setdefault(spec, {})
        previous = images.get(key)
        images[key] = (row, new or (previous is not None and previous[1]))

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.statements.append((sql, params))

    def __bool__(self) -> bool:
        return bool(self.rows or self.images or self.statements)

    def commit(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write everything in one transaction. The staged rows go in one script (BEGIN, one
        statement per table and kind, COMMIT), one call into DuckDB per group commit: each call
        releases the GIL, and the writer, the one serial thread, may then wait a switch interval
        for it while other threads run."""
        writes = [(spec, rows, spec.insert_statement) for spec, rows in self.rows.items()]
        for spec, images in self.images.items():
            writes.append((spec, [row for row, new in images.values() if new], spec.insert_statement))
            writes.append((spec, [row for row, new in images.values() if not new], spec.update_statement))
        script, views = ["BEGIN TRANSACTION"], []
        _finish_reads(con)
        try:
            for spec, rows, statement in writes:
                if rows:
                    view = f"_dropwire_batch_{len(views)}"
                    con.register(view, _frame(spec, rows))
                    views.append(view)
                    script.append(statement(view))
            if not self.statements:
                script.append("COMMIT")
            con.execute(";\n".join(script))
            if self.statements:
                for sql, params in self.statements:
                    con.execute(sql, params)
                con.execute("COMMIT")
        except BaseException:
            # Roll back first: in an aborted transaction unregister() fails too, and its
            # "Current transaction is aborted" would replace the error that names the row.
            _roll_back(con)
            raise
        finally:
            for view in views:
                con.unregister(view)


def _roll_back(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # the failure came before BEGIN: no transaction to end
        con.execute("ROLLBACK")


def _finish_reads(con: duckdb.DuckDBPyConnection) -> None:
    """An operation's read on the writer's connection may leave its result unfetched (a
    `fetchone()` never sees the end); DuckDB 2 then refuses `register()` on that connection
    with "unfinished result from execute()", which failed the whole group commit."""
    con.complete()


def prepare_scans(con: duckdb.DuckDBPyConnection) -> None:
    """Scan one tiny frame, writing nothing: DuckDB's first scan of a frame in a process
    imports pyarrow and sets up its Arrow scan (~0.5 s), a cost for opening the store to pay
    rather than the first write that waits for a commit."""
    _finish_reads(con)
    con.register("_dropwire_warm_up", _frame(TableSpec("warm_up", (("at", EPOCH),), timestamps=frozenset({"at"})), [(0.0,)]))
    try:
        con.execute("SELECT count(*) FROM _dropwire_warm_up").fetchall()
    finally:
        con.unregister("_dropwire_warm_up")


def _frame(spec: TableSpec, rows: list[tuple]) -> pl.DataFrame:
    """The rows as a polars frame, built column by column in native code (pyarrow's own list
    conversion imports pandas, ~0.3-1 s on a process's first write; polars' row-wise
    construction and lazy casts cost ~2x this). DuckDB scans it through Arrow, no copy."""
    columns = {}
    for (name, kind), values in zip(spec.columns, zip(*rows, strict=False), strict=False):
        if name in spec.timestamps:
            columns[name] = (pl.Series(name, values, dtype=EPOCH) * 1_000_000).cast(pl.Int64).cast(_TIMESTAMP)
        else:
            columns[name] = pl.Series(name, values, dtype=kind)
    return pl.DataFrame(columns)
