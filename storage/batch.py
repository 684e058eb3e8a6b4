"""One group commit's worth of rows. Operations stage rows here; the writer flushes every
table with one Arrow-backed statement and commits once (DuckDB pays ~3 ms per commit, so
batching is what makes thousands of durable writes per second possible)."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import pyarrow as pa


@dataclass(frozen=True)
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


_S, _I, _B, _F = pa.string(), pa.int32(), pa.int64(), pa.float64()
_TIMESTAMP = pa.timestamp("us", tz="UTC")

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "entity_states",
            (("kind", _S), ("entity_id", _S), ("state", _S), ("version", _I), ("previous_state", _S), ("created_at", _F), ("updated_at", _F)),
            key=("kind", "entity_id"),
            timestamps=frozenset({"created_at", "updated_at"}),
            immutable=frozenset({"created_at"}),
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
             ("idempotency_key", _S), ("last_error", _S), ("result", _S), ("on_dead", _S), ("on_retry", _S), ("created_at", _F), ("updated_at", _F), ("finished_at", _F)),
            key=("id",),
            timestamps=frozenset({"not_before", "claimed_at", "lease_expires", "created_at", "updated_at", "finished_at"}),
            immutable=frozenset({"name", "args", "priority", "max_attempts", "idempotency_key", "on_dead", "on_retry", "created_at"}),
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
            immutable=frozenset({"name", "args", "attempts", "last_error", "died_at"}),
        ),
        TableSpec(
            "invocations",
            (("task_id", _B), ("attempt", _I), ("function", _S), ("source", _S), ("event", _S), ("worker", _S),
             ("started_at", _F), ("duration_ms", _F), ("outcome", _S), ("error", _S)),
            timestamps=frozenset({"started_at"}),
        ),
        TableSpec(
            "object_receipts",
            (("function", _S), ("bucket", _S), ("key", _S), ("version", _S), ("sequencer", _S), ("event_name", _S),
             ("task_id", _B), ("received_at", _F)),
            timestamps=frozenset({"received_at"}),
        ),
        TableSpec(
            "schedule_runs",
            (("schedule", _S), ("last_fire", _F), ("task_id", _B), ("updated_at", _F)),
            key=("schedule",),
            timestamps=frozenset({"last_fire", "updated_at"}),
        ),
        # Rows are inserted here with the change that causes them; delivery updates them
        # with plain UPDATE statements (Store.mark_notification).
        TableSpec(
            "notifications",
            (("id", _B), ("kind", _S), ("recipients", _S), ("subject", _S), ("body", _S), ("attachments", _S),
             ("entity_kind", _S), ("entity_id", _S), ("metadata", _S), ("status", _S), ("attempts", _I),
             ("next_attempt_at", _F), ("created_at", _F), ("updated_at", _F)),
            key=("id",),
            timestamps=frozenset({"next_attempt_at", "created_at", "updated_at"}),
        ),
    )
}


@dataclass
class Batch:
    """Rows to append per table, the latest image of changed rows per key, and raw statements."""

    rows: dict[str, list[tuple]] = field(default_factory=dict)
    #: table -> key -> (row, whether the row is new in this batch)
    images: dict[str, dict[tuple, tuple[tuple, bool]]] = field(default_factory=dict)
    statements: list[tuple[str, tuple]] = field(default_factory=list)

    def add(self, table: str, row: tuple, *, new: bool = False) -> None:
        """Append a row; for a keyed table, record the row's latest image (`new` for a row
        that does not exist yet)."""
        spec = TABLES[table]
        if not spec.key:
            self.rows.setdefault(table, []).append(row)
            return
        key = tuple(row[i] for i, (c, _) in enumerate(spec.columns) if c in spec.key)
        images = self.images.setdefault(table, {})
        previous = images.get(key)
        images[key] = (row, new or (previous is not None and previous[1]))

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.statements.append((sql, params))

    def __bool__(self) -> bool:
        return bool(self.rows or self.images or self.statements)

    def flush(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write everything inside the caller's open transaction."""
        for table, rows in self.rows.items():
            self._write(con, TABLES[table], rows, TABLES[table].insert_statement)
        for table, images in self.images.items():
            spec = TABLES[table]
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
