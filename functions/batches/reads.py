"""What the batches domain reads from the committed state (the tables of migration 0006 and
the batch's history), for its handlers and its API alike: one place for the domain's SQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from dropwire.functions.batches.core.output import (
    STATUS_TIMES,
    BatchErrorItem,
    BatchErrors,
    BatchObject,
    FileObject,
    RequestCounts,
    Usage,
)
from dropwire.functions.batches.states import KIND, BatchState, openai_status
from dropwire.functions.kit.errors import NotFound

Query = Callable[[str, list], list[tuple]]
# Input lines per page of stored results (~4 MB of responses at 4 KB a line).
PAGE_LINES = 250


class UnknownFile(NotFound):
    code = "file_not_found"


class UnknownBatch(NotFound):
    code = "batch_not_found"


class FileInfo(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    filename: str
    purpose: str
    bytes: int
    bucket: str
    key: str
    created_at: float
    expires_at: float | None
    deleted: bool

    def public(self) -> FileObject:
        return FileObject(id=self.id, bytes=self.bytes, created_at=int(self.created_at), filename=self.filename,
                          purpose=self.purpose, expires_at=None if self.expires_at is None else int(self.expires_at))


class BatchInfo(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    source: str
    name: str | None
    retried_from: str | None
    created_at: float
    expires_at: float
    model: str | None
    total: int | None
    chunks: int | None
    errors: list[dict[str, Any]] | None
    output_file_id: str | None
    error_file_id: str | None


_FILE_COLUMNS = "id, filename, purpose, bytes, bucket, \"key\", epoch(created_at), epoch(expires_at), deleted_at IS NOT NULL"
_BATCH_COLUMNS = ("id, input_file_id, endpoint, completion_window, metadata, source, name, retried_from, epoch(created_at), "
                  "epoch(expires_at), model, total, chunks, errors, output_file_id, error_file_id")


def _file(row: tuple) -> FileInfo:
    return FileInfo(id=row[0], filename=row[1], purpose=row[2], bytes=row[3], bucket=row[4], key=row[5],
                    created_at=row[6], expires_at=row[7], deleted=row[8])


def _decode(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)


def _batch(row: tuple) -> BatchInfo:
    return BatchInfo(id=row[0], input_file_id=row[1], endpoint=row[2], completion_window=row[3], metadata=_decode(row[4]),
                     source=row[5], name=row[6], retried_from=row[7], created_at=row[8], expires_at=row[9], model=row[10],
                     total=row[11], chunks=row[12], errors=_decode(row[13]), output_file_id=row[14], error_file_id=row[15])


# A file past its expires_at reads as gone (its bytes go at the next sweep).
_LIVE = "deleted_at IS NULL AND (expires_at IS NULL OR epoch(expires_at) > epoch(now()))"


def file(query: Query, file_id: str, *, expired_too: bool = False) -> FileInfo:
    """A file that exists, is not deleted and (unless `expired_too`: the input of an old batch
    retried) has not expired, else UnknownFile."""
    live = "deleted_at IS NULL" if expired_too else _LIVE
    rows = query(f"SELECT {_FILE_COLUMNS} FROM batch_files WHERE id = ? AND {live}", [file_id])
    if not rows:
        raise UnknownFile(f"no file with id {file_id!r}", file_id=file_id)
    return _file(rows[0])


def input_file(query: Query, file_id: str) -> FileInfo:
    """The input of a batch that has not ended: read while its bytes are stored, even when
    deleted or expired meanwhile (they stay until the batch ends), else UnknownFile."""
    rows = query(f"SELECT {_FILE_COLUMNS} FROM batch_files WHERE id = ? AND removed_at IS NULL", [file_id])
    if not rows:
        raise UnknownFile(f"the bytes of file {file_id!r} are gone", file_id=file_id)
    return _file(rows[0])


def files(query: Query, *, purpose: str | None, limit: int, newest_first: bool, after: str | None) -> list[FileInfo]:
    """Up to `limit` live files in created order, starting after the file `after`."""
    order = "DESC" if newest_first else "ASC"
    compare = "<" if newest_first else ">"
    cursor = ""
    params: list = [purpose, purpose]
    if after is not None:
        cursor = (f"AND (created_at, id) {compare} (SELECT (created_at, id) FROM batch_files WHERE id = ?)")
        params.append(after)
    rows = query(f"SELECT {_FILE_COLUMNS} FROM batch_files WHERE {_LIVE} AND (? IS NULL OR purpose = ?) "
                 f"{cursor} ORDER BY created_at {order}, id {order} LIMIT ?", [*params, limit])
    return [_file(row) for row in rows]


def removable_files(query: Query, unfinished: tuple[str, ...], file_id: str | None = None) -> list[tuple[str, str, str]]:
    """(id, bucket, key) of files deleted or past their expires_at whose bytes are still
    stored (of all, or of `file_id`), but for the input of a batch still in one of the
    `unfinished` states (its lines read it)."""
    marks = ", ".join("?" for _ in unfinished)
    return query("SELECT f.id, f.bucket, f.\"key\" FROM batch_files f WHERE f.removed_at IS NULL "
                 "AND (f.deleted_at IS NOT NULL OR epoch(f.expires_at) <= epoch(now())) AND (? IS NULL OR f.id = ?) "
                 "AND NOT EXISTS (SELECT 1 FROM batches b JOIN entity_states s ON s.kind = ? AND s.entity_id = b.id "
                 f"WHERE b.input_file_id = f.id AND s.state IN ({marks})) ORDER BY coalesce(f.deleted_at, f.expires_at)",
                 [file_id, file_id, KIND, *unfinished])


def batch(query: Query, batch_id: str) -> BatchInfo:
    rows = query(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", [batch_id])
    if not rows:
        raise UnknownBatch(f"no batch with id {batch_id!r}", batch_id=batch_id)
    return _batch(rows[0])


def batch_ids(query: Query, *, limit: int, after: str | None) -> list[str]:
    """Newest first, as OpenAI lists batches."""
    cursor, params = "", []
    if after is not None:
        cursor = "WHERE (created_at, id) < (SELECT (created_at, id) FROM batches WHERE id = ?)"
        params.append(after)
    return [row[0] for row in query(f"SELECT id FROM batches {cursor} ORDER BY created_at DESC, id DESC LIMIT ?",
                                    [*params, limit])]


def batch_id_named(query: Query, name: str) -> str | None:
    """The newest batch made from a file dropped as batches/<name>.jsonl, once it has a state."""
    rows = query("SELECT b.id FROM batches b JOIN entity_states s ON s.kind = ? AND s.entity_id = b.id "
                 "WHERE b.source = 'file' AND b.name = ? ORDER BY b.created_at DESC LIMIT 1", [KIND, name])
    return rows[0][0] if rows else None


def status(query: Query, batch_id: str) -> str:
    rows = query("SELECT state FROM entity_states WHERE kind = ? AND entity_id = ?", [KIND, batch_id])
    if not rows:
        raise UnknownBatch(f"no batch with id {batch_id!r}", batch_id=batch_id)
    return rows[0][0]


class Counts(msgspec.Struct, kw_only=True, frozen=True):
    completed: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    first_finished: float | None
    last_finished: float | None


def counts(query: Query, batch_id: str) -> Counts:
    (completed, failed, prompt, completion, first, last), = query(
        "SELECT count(*) FILTER (WHERE status_code BETWEEN 200 AND 299), "
        "count(*) FILTER (WHERE status_code IS NULL OR status_code NOT BETWEEN 200 AND 299), "
        "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), epoch(min(finished_at)), "
        "epoch(max(finished_at)) FROM batch_lines WHERE batch_id = ?", [batch_id])
    return Counts(completed=completed, failed=failed, prompt_tokens=int(prompt), completion_tokens=int(completion),
                  first_finished=first, last_finished=last)


def status_times(query: Query, batch_id: str) -> dict[str, float]:
    """status -> when the batch first entered it (from its history)."""
    rows = query("SELECT to_state, epoch(min(happened_at)) FROM state_history WHERE kind = ? AND entity_id = ? "
                 "GROUP BY to_state", [KIND, batch_id])
    return {state: at for state, at in rows}


def done_lines(query: Query, batch_id: str, first: int, last: int) -> set[int]:
    """Line numbers in [first, last] whose outcome is stored."""
    rows = query("SELECT line FROM batch_lines WHERE batch_id = ? AND line BETWEEN ? AND ?", [batch_id, first, last])
    return {row[0] for row in rows}


def chunks_done(query: Query, batch_id: str) -> int:
    return query("SELECT count(*) FROM batch_chunks_done WHERE batch_id = ?", [batch_id])[0][0]


_SUCCEEDED = {None: "", True: "AND status_code BETWEEN 200 AND 299",
              False: "AND (status_code IS NULL OR status_code NOT BETWEEN 200 AND 299)"}


def stored_lines(query: Query, batch_id: str, *, succeeded: bool | None = None) -> Iterator[tuple]:
    """(line, custom_id, status_code, request_id, response, error_code, error_message) in line
    order, a page of input lines at a time (the output is never whole in memory); `succeeded`
    filters. Each page is a range of line numbers, not "the next N after": DuckDB then reads
    the responses of that range alone, where ORDER BY ... LIMIT read every later line's
    response for each page (its memory grew with the batch)."""
    (last,), = query("SELECT coalesce(max(line), 0) FROM batch_lines WHERE batch_id = ?", [batch_id])
    for first in range(1, last + 1, PAGE_LINES):
        yield from query("SELECT line, custom_id, status_code, request_id, CAST(response AS VARCHAR), error_code, "
                         f"error_message FROM batch_lines WHERE batch_id = ? AND line BETWEEN ? AND ? {_SUCCEEDED[succeeded]} "
                         "ORDER BY line", [batch_id, first, first + PAGE_LINES - 1])


def unsucceeded_lines(query: Query, batch_id: str) -> set[int]:
    """Line numbers whose stored outcome is not a success (failed, cancelled, expired)."""
    return {row[0] for row in query(f"SELECT line FROM batch_lines WHERE batch_id = ? {_SUCCEEDED[False]}", [batch_id])}


def resume_at(query: Query, batch_id: str) -> float | None:
    """When the batch's last quota_exceeded transition said it would resume."""
    rows = query("SELECT CAST(json_extract(metadata, '$.resume_at') AS DOUBLE) FROM state_history WHERE kind = ? "
                 "AND entity_id = ? AND to_state = ? ORDER BY seq DESC LIMIT 1", [KIND, batch_id, BatchState.QUOTA_EXCEEDED])
    return rows[0][0] if rows else None


def batch_object(query: Query, batch_id: str) -> BatchObject:
    info = batch(query, batch_id)
    state = status(query, batch_id)
    times = status_times(query, batch_id)
    tally = counts(query, batch_id)
    errors = None
    if info.errors:
        errors = BatchErrors(data=[msgspec.convert(e, BatchErrorItem) for e in info.errors])
    if BatchState.PARTIALLY_PROCESSED in times:  # shown as completed
        times.setdefault(BatchState.COMPLETED, times[BatchState.PARTIALLY_PROCESSED])
    stamps: dict[str, Any] = {field: int(times[state_name]) for state_name, field in STATUS_TIMES.items() if state_name in times}
    return BatchObject(
        id=info.id, endpoint=info.endpoint, input_file_id=info.input_file_id, completion_window=info.completion_window,
        status=openai_status(state), created_at=int(info.created_at), expires_at=int(info.expires_at),
        request_counts=RequestCounts(total=info.total or 0, completed=tally.completed, failed=tally.failed),
        usage=Usage(input_tokens=tally.prompt_tokens, output_tokens=tally.completion_tokens,
                    total_tokens=tally.prompt_tokens + tally.completion_tokens),
        errors=errors, output_file_id=info.output_file_id, error_file_id=info.error_file_id, metadata=info.metadata,
        model=info.model, **stamps)


class WorkerBeat(msgspec.Struct, kw_only=True, frozen=True):
    worker: str
    host: str
    pid: int
    batch_id: str
    chunk: int
    lines_done: int
    last_beat: float
    alive: bool


def workers(query: Query, alive_seconds: float) -> list[WorkerBeat]:
    """Every worker that ran batch lines, with its latest beat (alive: beat within `alive_seconds`)."""
    rows = query("SELECT worker, arg_max(host, beat_at), arg_max(pid, beat_at), arg_max(batch_id, beat_at), "
                 "arg_max(chunk, beat_at), arg_max(lines_done, beat_at), epoch(max(beat_at)), "
                 "epoch(max(beat_at)) >= epoch(now()) - ? FROM batch_worker_heartbeats GROUP BY worker "
                 "ORDER BY max(beat_at) DESC", [alive_seconds])
    return [WorkerBeat(worker=w, host=h, pid=p, batch_id=b, chunk=c, lines_done=n, last_beat=at, alive=alive)
            for w, h, p, b, c, n, at, alive in rows]


class Figures(msgspec.Struct, kw_only=True, frozen=True):
    """Throughput of one batch, or of every batch of one model (summed lines and tokens over
    summed durations)."""

    name: str
    model: str
    batches: int
    lines: int
    failed: int
    tokens: int
    duration_s: float
    lines_per_s: float
    tokens_per_s: float


def benchmarks(query: Query, *, by_model: bool, limit: int = 50) -> list[Figures]:
    if by_model:
        rows = query("SELECT model, model, count(*), sum(lines), sum(failed), sum(prompt_tokens + completion_tokens), "
                     "sum(duration_s) FROM batch_benchmarks GROUP BY model ORDER BY model LIMIT ?", [limit])
    else:
        rows = query("SELECT batch_id, model, 1, lines, failed, prompt_tokens + completion_tokens, duration_s "
                     "FROM batch_benchmarks ORDER BY finished_at DESC LIMIT ?", [limit])
    return [Figures(name=name, model=model, batches=count, lines=lines, failed=failed, tokens=int(tokens),
                    duration_s=duration, lines_per_s=lines / duration if duration else 0.0,
                    tokens_per_s=tokens / duration if duration else 0.0)
            for name, model, count, lines, failed, tokens, duration in rows]
