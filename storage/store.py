"""The state store: the one owner of the DuckDB file, as a writer and its facets.

Every write is an operation handed to one writer thread (`storage.writer`), which validates it
against the in-memory views, stages the rows of many operations into one batch, commits the
batch in one DuckDB transaction and only then answers the callers (group commit). Each concern
is a facet built on that writer, with its own promises (see each module's docstring):

- `store.states`   entities, transitions, history, and `apply` (a change and what it causes
                   commit together: the outbox rule)          storage/states.py
- `store.queue`    enqueue, claim, heartbeat, complete, fail, release, dead letters, cleanup,
                   task status and stats                      storage/queue.py
- `store.receipts` object-event receipts, output lineage, schedule runs  storage/receipts.py
- `store.outbox`   notifications: listing and recording delivery          storage/outbox.py
- `store.batches`  batch inference: files, batches, line results, heartbeats, figures
                                                              storage/batches.py
- `store.curation` curation exports to Label Studio and pulls of reviews  storage/curation.py
- `store.records`  the one records port handlers get: `record("<domain>.<op>", payload)`
                   goes to that domain's facet
- `store.quota`    metered services: admission against limits, usage per minute, what the
                   upstream said about its limits              storage/quota.py
- `store.query(sql)`, `store.export(dir)`: read-only SQL and Parquet snapshots of it all.

A new domain table arrives as a migration (storage/migrations/NNNN_*.sql) plus a module with
its `TableSpec`s and a `Facet` subclass, built here beside the others: its writes are
operations `op(batch, now)` passed to `writer.submit` / `writer.call` (stage rows with
`batch.add(SPEC, row)`, refuse by raising a DropwireError before staging anything), its reads
go through `writer.cursor()`, and it queues work through `store.tasks` (LiveTasks).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb

from dropwire.functions.kit.errors import Conflict, DropwireError
from dropwire.storage import migrate
from dropwire.storage.batches import Batches
from dropwire.storage.curation import Curation
from dropwire.storage.database import connect
from dropwire.storage.outbox import Outbox
from dropwire.storage.queue import Queue
from dropwire.storage.quota import Quota
from dropwire.storage.read_only_query import run_read_only_query, run_read_only_table
from dropwire.storage.receipts import Receipts
from dropwire.storage.settings import DatabaseSettings, QueueSettings
from dropwire.storage.state_machine import StateMachine
from dropwire.storage.states import States
from dropwire.storage.task_planning import LiveTasks
from dropwire.storage.writer import Writer


class UnknownDomain(DropwireError):
    code = "unknown_record"


class Records:
    """The records port of every domain facet: an op `<domain>.<name>` goes to that facet."""

    def __init__(self, facets: dict) -> None:
        self._facets = facets

    def record(self, op: str, payload: object) -> None:
        facet = self._facets.get(op.partition(".")[0])
        if facet is None:
            raise UnknownDomain(f"no records port for {op!r}; domains: {sorted(self._facets)}")
        facet.record(op, payload)


class Store:
    """Open with `Store.open(path, machines)`; close with `close()` (or use as a context manager)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, machines: Iterable[StateMachine],
                 settings: QueueSettings, known_tasks: Iterable[str] | None) -> None:
        self.path = path
        self.settings = settings
        self.writer = Writer(con, path, max_batch=settings.max_batch, idle_seconds=settings.reap_interval_seconds)
        self.tasks = LiveTasks(self.writer, settings, known_tasks)
        self.outbox = Outbox(self.writer)
        self.states = States(self.writer, machines, self.tasks, self.outbox)
        self.queue = Queue(self.writer, settings, self.tasks, self.states)
        self.receipts = Receipts(self.writer, self.tasks)
        self.batches = Batches(self.writer)
        self.curation = Curation(self.writer)
        self.records = Records({"batches": self.batches, "curation": self.curation})
        self.quota = Quota(self.writer)
        self.writer.start()

    @classmethod
    def open(cls, path: Path | str, machines: Iterable[StateMachine] = (), *, settings: QueueSettings | None = None,
             known_tasks: Iterable[str] | None = None, database: DatabaseSettings | None = None,
             migrations: list[migrate.Migration] | None = None) -> Store:
        """Open (creating and migrating) the database file: the platform's migrations, or
        `migrations` (`migrate.chain`: the platform's, then the domains')."""
        path = Path(path)
        con = connect(path, config=(database or DatabaseSettings()).duckdb_config())
        try:
            migrate.upgrade(con, migrations=migrations)
        except BaseException:
            con.close()
            raise
        return cls(con, path, machines, settings or QueueSettings(), known_tasks)

    def close(self) -> None:
        """Finish every submitted operation, stop the writer, close the file."""
        self.writer.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ inspection (committed data only)

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        """One SELECT over the committed state, for inspection, that cannot write (see
        read_only_query): writes must go through the writer thread, whose views would
        otherwise silently go out of step."""
        return run_read_only_query(self.writer.cursor(), sql, params)

    def query_table(self, sql: str, params: list | tuple = ()) -> tuple[list[str], list[tuple]]:
        """query's column names and rows, for a person to read (`dropwire db query`)."""
        return run_read_only_table(self.writer.cursor(), sql, params)

    def export(self, directory: Path | str) -> Path:
        """Write a consistent snapshot of every table as Parquet (readable by DuckDB and polars)."""
        target = Path(directory)
        if target.exists() and any(target.iterdir()):
            raise Conflict(f"export directory {target} is not empty; choose a new one")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.writer.cursor().execute(f"EXPORT DATABASE '{target.as_posix()}' (FORMAT parquet)")
        return target
