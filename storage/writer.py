"""The group-commit writer: the one thread that writes the DuckDB file.

Promises:
- An operation `op(batch, now)` submitted with `submit` (or `call`) runs on the writer thread,
  in submission order, against the facets' in-memory views, and stages its rows into `batch`.
- The rows of all operations of one cycle commit in one DuckDB transaction; each operation's
  future resolves only after that commit (with its result), or with its own refusal (a
  `DropwireError` it raised). An operation must check everything before it stages or changes
  a view, so a refused one leaves no trace.
- A commit that fails writes nothing of its cycle, and every facet reloads its view from what
  is committed. One operation cannot fail the others grouped with it: when a commit of several
  operations fails (a row that cannot be written), or one raises unexpectedly (a bug), the
  others run again, each in a commit of its own, so only the one at fault fails. A failure of
  the file itself (I/O, out of memory) fails every operation of the cycle at once.
- `cursor()` reads committed data only (one cursor per thread).

A facet (`Facet`) is one concern's operations and reads over this writer; it registers itself,
and the writer calls its hooks: `load` (rebuild the view from committed rows, at start and
after a failed cycle), `begin_cycle`/`end_cycle` (before and after a cycle's operations, e.g.
to promote delayed tasks or reap expired leases), `committed` (after a successful commit),
`next_deadline` (the earliest time the facet needs a cycle without any operation).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from dropwire.functions.kit.errors import DropwireError, StoreClosed
from dropwire.storage.commit_group import CommitGroup, prepare_scans

log = logging.getLogger("dropwire.store")

T = TypeVar("T")
#: An operation: stage rows into the batch at time `now` (epoch seconds), return the answer.
Operation = Callable[[CommitGroup, float], T]
_STOP = object()


class StoreWriteFailed(DropwireError):
    http_status = 503
    code = "store_write_failed"


#: Failures of the file or the engine, not of any operation's rows: running the operations
#: again one by one would only fail each of them once more (and reload the views each time).
_NOT_A_ROW = (duckdb.IOException, duckdb.FatalException, duckdb.OutOfMemoryException, duckdb.InternalException)


class Facet:
    """Base of a store facet: holds the writer and registers with it. Override the hooks the
    facet needs; each runs on the writer thread."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        writer.attach(self)

    def load(self, con: duckdb.DuckDBPyConnection, *, restart_grace: bool) -> None:
        """Rebuild the in-memory view from committed rows (`restart_grace`: the store is opening)."""

    def begin_cycle(self, now: float) -> None:
        """Before a cycle's operations run."""

    def end_cycle(self, batch: CommitGroup, now: float) -> None:
        """After a cycle's operations staged their rows, before the commit."""

    def committed(self) -> None:
        """After a cycle committed."""

    def next_deadline(self) -> float | None:
        """When this facet next needs a cycle even if no operation arrives."""
        return None


class Writer:
    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, *, max_batch: int, idle_seconds: float) -> None:
        self.path = path
        self.max_batch = max_batch
        self.idle_seconds = idle_seconds
        self._con = con
        self._facets: list[Facet] = []
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursor_lock = threading.Lock()
        self._ops: queue.SimpleQueue[tuple[Operation, Future] | object] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dropwire-store-writer", daemon=True)

    def attach(self, facet: Facet) -> None:
        if self._thread.is_alive():
            raise RuntimeError("facets attach before the writer starts")
        self._facets.append(facet)

    def start(self) -> None:
        """Load every facet's view from the committed rows, then start writing."""
        self._load(restart_grace=True)
        prepare_scans(self._con)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Finish every submitted operation, stop the thread, close the file."""
        if self._closed:
            return
        self._closed = True
        self._ops.put(_STOP)
        if self._thread.is_alive():
            self._thread.join()
        with self._cursor_lock:
            for cursor in self._cursors:
                cursor.close()
        self._con.close()

    # ------------------------------------------------------------------ writing

    def submit(self, op: Operation[T]) -> Future:
        """Queue an operation; the future resolves once its cycle committed."""
        if self._closed:
            raise StoreClosed(f"the store for {self.path} is closed")
        future: Future = Future()
        self._ops.put((op, future))
        return future

    def call(self, op: Operation[T]) -> T:
        """Submit an operation and wait for its answer."""
        return self.submit(op).result()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The writer's own connection, for reads inside an operation (writer thread only)."""
        return self._con

    def _run(self) -> None:
        stopping = False
        while not stopping:
            deadlines = [d for d in (f.next_deadline() for f in self._facets) if d is not None]
            timeout = self.idle_seconds
            if deadlines:
                timeout = max(0.0, min(timeout, min(deadlines) - time.time()))
            ops: list[tuple[Operation, Future]] = []
            try:
                first = self._ops.get(timeout=timeout)
                while True:
                    if first is _STOP:
                        stopping = True
                    else:
                        ops.append(first)
                    if len(ops) >= self.max_batch:
                        break
                    first = self._ops.get_nowait()
            except queue.Empty:
                pass
            self._cycle(ops)

    def _cycle(self, ops: list[tuple[Operation, Future]], *, isolate: bool = True) -> None:
        now = time.time()
        batch = CommitGroup()
        outcomes: list[tuple[Future, Any, BaseException | None]] = []
        broken: list[tuple[Operation, Future]] = []
        for facet in self._facets:
            facet.begin_cycle(now)
        for op, future in ops:
            try:
                outcomes.append((future, op(batch, now), None))
            except DropwireError as exc:
                outcomes.append((future, None, exc))
            except Exception as exc:  # a bug: a view may be half-changed, so drop the batch
                log.exception("store operation failed unexpectedly; the batch is rolled back")
                outcomes.append((future, None, exc))
                broken.append((op, future))
        if not broken:
            for facet in self._facets:
                facet.end_cycle(batch, now)
        try:
            if broken:
                raise StoreWriteFailed("an operation in this group commit failed unexpectedly; nothing was written, retry")
            if batch:
                batch.commit(self._con)
        except Exception as exc:
            if self._in_transaction():
                self._con.execute("ROLLBACK")
            self._load(restart_grace=False)
            if isolate and len(ops) > 1 and not isinstance(exc, _NOT_A_ROW):
                self._isolate(ops, broken, outcomes, exc)
                return
            failure = exc if isinstance(exc, DropwireError) else StoreWriteFailed(f"writing to {self.path} failed, nothing was written: {exc}")
            for future, _, own in outcomes:
                future.set_exception(own or failure)
            return
        for future, result, exc in outcomes:
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)
        for facet in self._facets:
            facet.committed()

    def _isolate(self, ops: list[tuple[Operation, Future]], broken: list[tuple[Operation, Future]],
                 outcomes: list[tuple[Future, Any, BaseException | None]], exc: Exception) -> None:
        """One operation's rows (or its bug) must not fail the others it was grouped with: the
        operations that raised a bug fail with it, and every other one runs again on its own,
        against the views reloaded from what is committed, so only the one at fault fails."""
        own = {id(future): error for future, _, error in outcomes}
        for _op, future in broken:
            future.set_exception(own[id(future)])
        rest = [item for item in ops if item not in broken]
        log.warning("a group commit of %d operation(s) failed (%s: %s); running %d of them again one by one",
                    len(ops), type(exc).__name__, exc, len(rest))
        for item in rest:
            self._cycle([item], isolate=False)

    def _in_transaction(self) -> bool:
        try:
            self._con.execute("BEGIN TRANSACTION")
        except duckdb.Error:
            return True
        self._con.execute("ROLLBACK")
        return False

    def _load(self, *, restart_grace: bool) -> None:
        for facet in self._facets:
            facet.load(self._con, restart_grace=restart_grace)

    # ------------------------------------------------------------------ reading

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's read cursor: committed data only."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            if self._closed:
                raise StoreClosed(f"the store for {self.path} is closed")
            cursor = self._con.cursor()
            self._local.cursor = cursor
            with self._cursor_lock:
                self._cursors.append(cursor)
        return cursor
