"""The batch-inference tables (migration 0006) as a store facet (`store.batches`).

Promises:
- `record(op, payload)` stages the named operation's rows (OPS: files registered, deleted or
  their bytes removed, batches created, validated or given their outputs, line results with the worker's
  heartbeat, chunk marks, benchmark figures) into the writer's group commit, and returns
  once they are durable. It is the only write: handlers reach it through their context's
  `records` port, in the control plane or over its socket; there is no arbitrary SQL.
- Lines, failed requests, chunk marks, files, batches and figures are first-wins (ON CONFLICT
  DO NOTHING on their keys): a line computed again after a crash or kill -9 never replaces
  the outcome kept, so no line is in the output twice and none is lost once saved.
- Reads are plain SELECTs over committed data (store.query; functions/batches/reads.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from dropwire.functions.kit.errors import DropwireError
from dropwire.storage.commit_group import EPOCH, INT32, INT64, STRING, CommitGroup, TableSpec
from dropwire.storage.writer import Facet

_S, _I, _B, _F = STRING, INT32, INT64, EPOCH


@dataclass(frozen=True, eq=False)
class FirstWins(TableSpec):
    """An append-only table with a primary key: a row whose key is already stored is skipped."""

    def insert_statement(self, source: str) -> str:
        return super().insert_statement(source) + " ON CONFLICT DO NOTHING"


FILES = FirstWins("batch_files", (("id", _S), ("filename", _S), ("purpose", _S), ("bytes", _B), ("bucket", _S), ("key", _S),
                              ("created_at", _F), ("expires_at", _F)),
                  timestamps=frozenset({"created_at", "expires_at"}))
BATCHES = FirstWins("batches", (("id", _S), ("input_file_id", _S), ("endpoint", _S), ("completion_window", _S), ("metadata", _S),
                          ("source", _S), ("name", _S), ("retried_from", _S), ("created_at", _F), ("expires_at", _F)),
                    timestamps=frozenset({"created_at", "expires_at"}))
LINES = FirstWins("batch_lines", (("batch_id", _S), ("line", _I), ("custom_id", _S), ("status_code", _I), ("request_id", _S),
                              ("response", _S), ("error_code", _S), ("error_message", _S), ("prompt_tokens", _I),
                              ("completion_tokens", _I), ("attempts", _I), ("worker", _S), ("finished_at", _F)),
                  timestamps=frozenset({"finished_at"}))
CHUNKS_DONE = FirstWins("batch_chunks_done", (("batch_id", _S), ("chunk", _I), ("outcome", _S), ("finished_at", _F)),
                        timestamps=frozenset({"finished_at"}))
FAILED = FirstWins("batch_failed_requests", (("batch_id", _S), ("line", _I), ("custom_id", _S), ("status_code", _I),
                                        ("error_code", _S), ("error_message", _S), ("attempts", _I), ("failed_at", _F)),
                   timestamps=frozenset({"failed_at"}))
HEARTBEATS = TableSpec("batch_worker_heartbeats", (("worker", _S), ("pid", _I), ("host", _S), ("batch_id", _S), ("chunk", _I),
                                          ("lines_done", _I), ("beat_at", _F)),
                       timestamps=frozenset({"beat_at"}))
BENCHMARKS = FirstWins("batch_benchmarks", (("batch_id", _S), ("model", _S), ("lines", _I), ("completed", _I), ("failed", _I),
                                   ("prompt_tokens", _B), ("completion_tokens", _B), ("duration_s", _F), ("lines_per_s", _F),
                                   ("tokens_per_s", _F), ("started_at", _F), ("finished_at", _F)),
                       timestamps=frozenset({"started_at", "finished_at"}))


# ---------------------------------------------------------------- what the domain may record


class FileRow(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    filename: str
    purpose: str
    bytes: int
    bucket: str
    key: str
    created_at: float
    expires_at: float | None = None


class FileDeleted(msgspec.Struct, kw_only=True, frozen=True):
    id: str


class FileBytesRemoved(msgspec.Struct, kw_only=True, frozen=True):
    """The file's bytes are gone from the bucket (it is deleted too, if it was not yet)."""

    id: str


class BatchRow(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    source: str
    created_at: float
    expires_at: float
    name: str | None = None
    retried_from: str | None = None


class Validated(msgspec.Struct, kw_only=True, frozen=True):
    """What validation learnt: the lines and chunks to run, or every problem found."""

    id: str
    model: str | None
    total: int
    chunks: int
    errors: list[dict[str, Any]]


class Outputs(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    output_file_id: str
    error_file_id: str | None


class LineRow(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    line: int
    custom_id: str
    status_code: int | None
    request_id: str | None
    #: The upstream's JSON answer as text, kept verbatim.
    response: str | None
    error_code: str | None
    error_message: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int


class LineResults(msgspec.Struct, kw_only=True, frozen=True):
    """Lines that finished since the last save, a chunk's worker heartbeat with them."""

    batch_id: str
    worker: str
    pid: int
    host: str
    chunk: int
    lines_done: int
    lines: list[LineRow]


class ChunkDone(msgspec.Struct, kw_only=True, frozen=True):
    batch_id: str
    chunk: int
    outcome: str


class Benchmark(msgspec.Struct, kw_only=True, frozen=True):
    batch_id: str
    model: str
    lines: int
    completed: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    started_at: float
    finished_at: float


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _add_file(row: FileRow, batch: CommitGroup, now: float) -> None:
    batch.add(FILES, (row.id, row.filename, row.purpose, row.bytes, row.bucket, row.key, row.created_at,
                              row.expires_at))


def _delete_file(row: FileDeleted, batch: CommitGroup, now: float) -> None:
    batch.execute("UPDATE batch_files SET deleted_at = to_timestamp(?) WHERE id = ? AND deleted_at IS NULL", (now, row.id))


def _bytes_removed(row: FileBytesRemoved, batch: CommitGroup, now: float) -> None:
    batch.execute("UPDATE batch_files SET deleted_at = coalesce(deleted_at, to_timestamp(?)), removed_at = to_timestamp(?) "
                  "WHERE id = ? AND removed_at IS NULL", (now, now, row.id))


def _add_batch(row: BatchRow, batch: CommitGroup, now: float) -> None:
    batch.add(BATCHES, (row.id, row.input_file_id, row.endpoint, row.completion_window, _json(row.metadata), row.source,
                          row.name, row.retried_from, row.created_at, row.expires_at))


def _validated(row: Validated, batch: CommitGroup, now: float) -> None:
    batch.execute("UPDATE batches SET model = ?, total = ?, chunks = ?, errors = ? WHERE id = ?",
                  (row.model, row.total, row.chunks, _json(row.errors), row.id))


def _outputs(row: Outputs, batch: CommitGroup, now: float) -> None:
    batch.execute("UPDATE batches SET output_file_id = ?, error_file_id = ? WHERE id = ?",
                  (row.output_file_id, row.error_file_id, row.id))


def _line_results(row: LineResults, batch: CommitGroup, now: float) -> None:
    for line in row.lines:
        batch.add(LINES, (row.batch_id, line.line, line.custom_id, line.status_code, line.request_id, line.response,
                                  line.error_code, line.error_message, line.prompt_tokens, line.completion_tokens,
                                  line.attempts, row.worker, now))
        if line.status_code is None or not 200 <= line.status_code < 300:
            batch.add(FAILED, (row.batch_id, line.line, line.custom_id, line.status_code,
                                                line.error_code or f"http_{line.status_code}",
                                                line.error_message or "", line.attempts, now))
    batch.add(HEARTBEATS, (row.worker, row.pid, row.host, row.batch_id, row.chunk, row.lines_done, now))


def _chunk_done(row: ChunkDone, batch: CommitGroup, now: float) -> None:
    batch.add(CHUNKS_DONE, (row.batch_id, row.chunk, row.outcome, now))


def _benchmark(row: Benchmark, batch: CommitGroup, now: float) -> None:
    duration = max(row.finished_at - row.started_at, 1e-9)
    batch.add(BENCHMARKS, (row.batch_id, row.model, row.lines, row.completed, row.failed, row.prompt_tokens,
                                   row.completion_tokens, duration, row.lines / duration,
                                   (row.prompt_tokens + row.completion_tokens) / duration, row.started_at,
                                   row.finished_at))


#: op name -> (payload type, how it stages its rows)
OPS: dict[str, tuple[type, Callable[[Any, CommitGroup, float], None]]] = {
    "batches.add_file": (FileRow, _add_file),
    "batches.delete_file": (FileDeleted, _delete_file),
    "batches.file_bytes_removed": (FileBytesRemoved, _bytes_removed),
    "batches.add_batch": (BatchRow, _add_batch),
    "batches.validated": (Validated, _validated),
    "batches.outputs": (Outputs, _outputs),
    "batches.line_results": (LineResults, _line_results),
    "batches.chunk_done": (ChunkDone, _chunk_done),
    "batches.benchmark": (Benchmark, _benchmark),
}


class UnknownRecord(DropwireError):
    code = "unknown_record"


class Batches(Facet):
    """The batches domain's records port, in the process that owns the store."""

    def record(self, op: str, payload: Any) -> None:
        """Stage `payload` (a Struct of the op's type, or its builtins) as op `op`; returns
        once it is durable."""
        try:
            kind, stage = OPS[op]
        except KeyError:
            raise UnknownRecord(f"no record operation {op!r}; known: {sorted(OPS)}") from None
        value = payload if isinstance(payload, kind) else msgspec.convert(payload, kind)
        self.writer.call(lambda batch, now: stage(value, batch, now))
