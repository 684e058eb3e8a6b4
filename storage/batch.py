"""One group commit's worth of rows. Operations stage rows here; the writer flushes every
table with one Arrow-backed statement and commits once (DuckDB pays ~3 ms per commit, so
batching is what makes thousands of durable writes per second possible).

A table that operations stage rows into is described by a `TableSpec`, declared in the facet
module that owns the table (beside its migration); rows are staged against the spec itself,
so a new table needs no central list."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import duckdb
import pyarrow as pa


# eq=False: a spec is hashed on every staged row, so by identity (each table has one spec).
@dataclass(frozen=True, eq=False)
class TableSpec:
    name: str
    columns: tuple[tuple[str, pa.DataType], ...]
    #: Key columns of a table whose rows change (added as new, then updated); empty: append-only.
    key: tuple[str, ...] = ()
    #: Columns held as epoch seconds in Python and stored as TIMESTAMPTZ. They travel as Arrow
    #: timestamps: converting with to_timestamp() in SQL made each update ~3x slower.
    timestamps: frozenset[str] = frozenset()
    #: Columns an update never changes (DuckDB pays per updated column, strings the most).
    immutable: frozenset[str] = frozenset()

    @cached_property
    def key_positions(self) -> tuple[int, ...]:
        return tuple(i for i, (c, _) in enumerate(self.columns) if c in self.key)

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


#: Arrow types for the columns of a TableSpec: each facet module declares its own tables.
STRING, INT32, INT64, EPOCH = pa.string(), pa.int32(), pa.int64(), pa.float64()
_TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass
class Batch:
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
        key = tuple(row[i] for i in spec.key_positions)
        images = self.images.setdefault(spec, {})
        previous = images.get(key)
        images[key] = (row, new or (previous is not None and previous[1]))

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.statements.append((sql, params))

    def __bool__(self) -> bool:
        return bool(self.rows or self.images or self.statements)

    def flush(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write everything inside the caller's open transaction."""
        for spec, rows in self.rows.items():
            self._write(con, spec, rows, spec.insert_statement)
        for spec, images in self.images.items():
            self._write(con, spec, [row for row, new in images.values() if new], spec.insert_statement)
            self._write(con, spec, [row for row, new in images.values() if not new], spec.update_statement)
        for sql, params in self.statements:
            con.execute(sql, params)

    @staticmethod
    def _write(con: duckdb.DuckDBPyConnection, spec: TableSpec, rows: list[tuple], statement) -> None:
        if not rows:
            return
        columns = list(zip(*rows))
        arrow = pa.table({
            name: (pa.array([None if v is None else int(v * 1_000_000) for v in values], type=_TIMESTAMP)
                   if name in spec.timestamps else pa.array(values, type=kind))
            for (name, kind), values in zip(spec.columns, columns)
        })
        con.register("_dropwire_batch", arrow)
        try:
            con.execute(statement("_dropwire_batch"))
        finally:
            con.unregister("_dropwire_batch")
