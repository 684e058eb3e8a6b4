"""One group commit's worth of rows. Operations stage rows here; the writer flushes every
table with one Arrow-backed statement and commits once (DuckDB pays ~3 ms per commit, so
batching is what makes thousands of durable writes per second possible)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import duckdb
import pyarrow as pa


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[tuple[str, pa.DataType], ...]
    #: Key columns for INSERT OR REPLACE; empty means plain INSERT.
    key: tuple[str, ...] = ()
    #: Columns held as epoch seconds in Python and stored as TIMESTAMPTZ.
    timestamps: frozenset[str] = frozenset()

    def statement(self, source: str) -> str:
        names = ", ".join(f'"{c}"' for c, _ in self.columns)
        exprs = ", ".join(f'to_timestamp("{c}")' if c in self.timestamps else f'"{c}"' for c, _ in self.columns)
        verb = "INSERT OR REPLACE INTO" if self.key else "INSERT INTO"
        return f"{verb} {self.name} ({names}) SELECT {exprs} FROM {source}"


_S, _I, _B, _F = pa.string(), pa.int32(), pa.int64(), pa.float64()

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "entity_states",
            (("kind", _S), ("entity_id", _S), ("state", _S), ("version", _I), ("previous_state", _S), ("created_at", _F), ("updated_at", _F)),
            key=("kind", "entity_id"),
            timestamps=frozenset({"created_at", "updated_at"}),
        ),
        TableSpec(
            "state_history",
            (("kind", _S), ("entity_id", _S), ("seq", _I), ("from_state", _S), ("to_state", _S), ("trigger", _S),
             ("triggered_by", _S), ("reason", _S), ("metadata", _S), ("happened_at", _F)),
            timestamps=frozenset({"happened_at"}),
        ),
        TableSpec(
            "tasks",
            (("id", _B), ("name", _S), ("args", _S), ("priority", _I), ("status", _S), ("attempts", _I), ("max_attempts", _I),
             ("not_before", _F), ("claimed_at", _F), ("lease_expires", _F), ("token", _B), ("worker", _S),
             ("idempotency_key", _S), ("last_error", _S), ("result", _S), ("on_dead", _S), ("created_at", _F), ("updated_at", _F), ("finished_at", _F)),
            key=("id",),
            timestamps=frozenset({"not_before", "claimed_at", "lease_expires", "created_at", "updated_at", "finished_at"}),
        ),
        TableSpec(
            "task_attempts",
            (("task_id", _B), ("attempt", _I), ("token", _B), ("worker", _S), ("started_at", _F), ("finished_at", _F),
             ("outcome", _S), ("error", _S), ("traceback", _S)),
            timestamps=frozenset({"started_at", "finished_at"}),
        ),
        TableSpec(
            "dead_letters",
            (("task_id", _B), ("name", _S), ("args", _S), ("attempts", _I), ("last_error", _S), ("died_at", _F),
             ("replayed_task_id", _B), ("replayed_at", _F)),
            key=("task_id",),
            timestamps=frozenset({"died_at", "replayed_at"}),
        ),
    )
}


@dataclass
class Batch:
    """Rows to insert per table (upserts keep the last image per key), plus raw statements."""

    rows: dict[str, list[tuple]] = field(default_factory=dict)
    upserts: dict[str, dict[tuple, tuple]] = field(default_factory=dict)
    statements: list[tuple[str, tuple]] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def add(self, table: str, row: tuple) -> None:
        spec = TABLES[table]
        if spec.key:
            index = [i for i, (c, _) in enumerate(spec.columns) if c in spec.key]
            self.upserts.setdefault(table, {})[tuple(row[i] for i in index)] = row
        else:
            self.rows.setdefault(table, []).append(row)

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.statements.append((sql, params))

    def __bool__(self) -> bool:
        return bool(self.rows or self.upserts or self.statements)

    def flush(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write everything inside the caller's open transaction."""
        for table, rows in list(self.rows.items()) + [(t, list(u.values())) for t, u in self.upserts.items()]:
            if not rows:
                continue
            spec = TABLES[table]
            columns = list(zip(*rows))
            arrow = pa.table({name: pa.array(values, type=kind) for (name, kind), values in zip(spec.columns, columns)})
            con.register("_dropwire_batch", arrow)
            try:
                con.execute(spec.statement("_dropwire_batch"))
            finally:
                con.unregister("_dropwire_batch")
        for sql, params in self.statements:
            con.execute(sql, params)
