"""Batch inference as handlers (seed 5): a batch is validated in one streamed pass, then run
as queued chunks whose lines are saved as they finish, then its output and error files are
assembled from the saved lines in input order.

    batches/<name>.jsonl   a batch dropped into bucket `local` (one request per line);
    batches/<name>.json    optional, written first: {"endpoint", "completion_window", "metadata"}

Its output lands as ``batch-outputs/<name>.output.jsonl`` (and ``.errors.jsonl`` when a line
failed, ``.validation-errors.jsonl`` when the file failed validation); a batch made through
the API (functions/batches/api.py) gets ``batch-outputs/<batch id>/output.jsonl``. No trigger watches either prefix. The API's
writes (files registered or deleted, batches created, cancelled or retried) are HTTP-triggered
functions here, so every change goes through a handler and the store.

Steps: ``batches-validate`` (validating -> in_progress | failed), ``batches-chunk`` per chunk
of ``batches.chunk_lines`` lines (each finished line saved at once, first-wins, so a chunk run
again after a crash or kill -9 skips what is saved), and ``batches-finalize`` once every chunk
has reported: the end state (completed, cancelled, expired), the lines never run as error
lines (batch_cancelled / batch_expired), the files, the benchmark figures, the webhook.

Each line acquires its budget from the quota of `batches.quota_service` before it runs
(functions/quota). A quota spent for longer than `quota.wait_in_place_seconds` (a local
limit, or the upstream's 429) stops the chunk with its finished lines saved: the batch goes to
`quota_exceeded` and the chunk is parked as a ``batches-resume`` task on the queue's durable
timer until the reset; the resume moves the batch back to `in_progress` and queues the rest
of the chunk. A suspended batch's chunks park the same way until an operator resumes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import posixpath
import socket
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from dropwire.functions.batches import reads
from dropwire.functions.batches.core.backend import LineBackend, LineOutcome, retry_wait, served_models
from dropwire.functions.batches.core.output import split_lines, webhook_event
from dropwire.functions.batches.core.validation import ENDPOINTS, ChunkPlan, read_chunk, request_ids, validate
from dropwire.functions.batches.settings import BatchSettings, batch_settings, window_seconds
from dropwire.functions.batches.states import KIND, PARKED, TERMINAL, openai_status
from dropwire.functions.batches.states import BatchState as B
from dropwire.functions.kit.errors import NotFound, QuotaExceeded
from dropwire.functions.platform.context import HandlerContext
from dropwire.functions.platform.registry import (
    FunctionRegistry,
    HttpEvent,
    Invocation,
    ObjectEvent,
    OnHttp,
    OnQueue,
    OnSchedule,
    OnUpload,
    Output,
    ScheduledEvent,
    task_name,
)
from dropwire.functions.platform.tasks import PermanentTaskError, Refused
from dropwire.functions.quota import Meter, quota_settings
from dropwire.storage.batches import (
    BatchRow,
    Benchmark,
    ChunkDone,
    FileBytesRemoved,
    FileDeleted,
    FileRow,
    LineResults,
    LineRow,
    Outputs,
    Validated,
)
from dropwire.storage.records import Effects, TaskSpec

BUCKET = "local"
DROP_PREFIX = "batches/"
FILES_PREFIX = "batch-files/"
OUTPUT_PREFIX = "batch-outputs/"

FILES_FUNCTION = "batches-files"
CREATE_FUNCTION = "batches-create"
CANCEL_FUNCTION = "batches-cancel"
RETRY_FUNCTION = "batches-retry"
DROP_FUNCTION = "batches-drop"
VALIDATE_FUNCTION = "batches-validate"
CHUNK_FUNCTION = "batches-chunk"
FINALIZE_FUNCTION = "batches-finalize"
RESUME_FUNCTION = "batches-resume"
REMOVE_FILES_FUNCTION = "batches-remove-files"
# How often the bytes of files deleted or expired are removed where they could not go at once
# (a running batch's input); such files read as gone from the moment they are deleted or expire.
REMOVE_FILES_SWEEP_S = 600.0
CHUNK_TIMEOUT_S = 6 * 3600.0
CHUNK_MAX_ATTEMPTS = 5
STEP_TIMEOUT_S = 1800.0
CHUNK_PRIORITY = -1
# Error codes of lines that never ran.
NOT_RUN = {B.CANCELLING: "batch_cancelled", B.EXPIRED: "batch_expired"}
CANCELLABLE = (B.VALIDATING, B.IN_PROGRESS)
UNFINISHED = tuple(state.value for state in B if state not in TERMINAL)
FILL_LINES = 1000


# ---------------------------------------------------------------- bodies of the HTTP-triggered functions


class NewFile(msgspec.Struct, kw_only=True, frozen=True, tag_field="action", tag="add"):
    id: str
    filename: str
    purpose: str
    bytes: int
    key: str
    created_at: float
    expires_at: float | None = None


class DeleteFile(msgspec.Struct, kw_only=True, frozen=True, tag_field="action", tag="delete"):
    id: str


class NewBatch(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class BatchRef(msgspec.Struct, kw_only=True, frozen=True):
    id: str


class RetryBatch(msgspec.Struct, kw_only=True, frozen=True):
    """A new batch `new_id` from the failed, cancelled or expired lines of batch `id`."""

    id: str
    new_id: str
    new_file_id: str


class DropOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    endpoint: str = "/v1/chat/completions"
    completion_window: str | None = None
    metadata: dict[str, str] | None = None


class ChunkArgs(msgspec.Struct, kw_only=True, frozen=True):
    batch_id: str
    plan: ChunkPlan
    #: Set by the chunk's on-dead effects: record its unfinished lines as failed and report.
    abandon: bool = False
    #: How often the chunk found the runtime unreachable and parked (its backoff grows).
    parked: int = 0
    #: Continuations of this chunk so far (slices and parks), which keeps each task's key apart.
    step: int = 0


class StepArgs(msgspec.Struct, kw_only=True, frozen=True):
    batch_id: str


def register(functions: FunctionRegistry) -> None:
    outputs = [Output(bucket=BUCKET, prefix=OUTPUT_PREFIX)]
    functions.function(FILES_FUNCTION, on=[OnHttp()], timeout_seconds=60)(change_file)
    functions.function(CREATE_FUNCTION, on=[OnHttp()], timeout_seconds=60)(create_batch)
    functions.function(CANCEL_FUNCTION, on=[OnHttp()], timeout_seconds=60)(cancel_batch)
    functions.function(RETRY_FUNCTION, on=[OnHttp()], outputs=[Output(bucket=BUCKET, prefix=FILES_PREFIX)],
                       timeout_seconds=STEP_TIMEOUT_S)(retry_batch)
    functions.function(DROP_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=DROP_PREFIX, suffix=".jsonl")],
                       timeout_seconds=60)(batch_dropped)
    functions.function(VALIDATE_FUNCTION, on=[OnQueue()], outputs=outputs, timeout_seconds=STEP_TIMEOUT_S)(validate_batch)
    functions.function(CHUNK_FUNCTION, on=[OnQueue()], timeout_seconds=CHUNK_TIMEOUT_S,
                       max_attempts=CHUNK_MAX_ATTEMPTS)(run_chunk)
    functions.function(FINALIZE_FUNCTION, on=[OnQueue()], outputs=outputs, timeout_seconds=STEP_TIMEOUT_S)(finalize_batch)
    functions.function(RESUME_FUNCTION, on=[OnQueue()], timeout_seconds=60)(resume_chunk)
    functions.function(REMOVE_FILES_FUNCTION, on=[OnSchedule(name=REMOVE_FILES_FUNCTION, every_seconds=REMOVE_FILES_SWEEP_S)],
                       timeout_seconds=STEP_TIMEOUT_S)(remove_gone_files)


def _query(context: HandlerContext):
    return context.state.query


def _step(function: str, body: Any, idempotency_key: str, **extra: Any) -> TaskSpec:
    event = HttpEvent(body=msgspec.to_builtins(body), received_at=datetime.now(UTC).isoformat())
    return TaskSpec(name=task_name(function), args=Invocation(function=function, source="queue", event=event),
                    idempotency_key=idempotency_key, **extra)


def _body(event: HttpEvent, kind: type) -> Any:
    """A step's arguments, which the platform wrote itself: one that does not decode is a bug."""
    try:
        return msgspec.convert(event.body, kind)
    except msgspec.ValidationError as exc:
        raise PermanentTaskError(f"the request body is not a {kind.__name__}: {exc}") from None


def _asked(event: HttpEvent, kind: Any) -> Any:
    """What a caller asked for: a body of the wrong shape is their mistake, refused."""
    try:
        return msgspec.convert(event.body, kind)
    except msgspec.ValidationError as exc:
        raise Refused(f"the request body is not a {kind.__name__}: {exc}") from None


def _hash(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:24]


def _state(context: HandlerContext, batch_id: str) -> str | None:
    try:
        return context.state.current(KIND, batch_id)[0]
    except NotFound:
        return None


# ---------------------------------------------------------------- files and batches asked for over HTTP


def change_file(event: HttpEvent, context: HandlerContext) -> dict:
    change = _asked(event, NewFile | DeleteFile)
    if isinstance(change, DeleteFile):
        try:
            reads.file(_query(context), change.id)
        except NotFound as exc:  # unknown or deleted meanwhile (the API answers 404 before it asks)
            raise Refused(exc.message) from None
        context.records.record("batches.delete_file", FileDeleted(id=change.id))  # gone for the API from here on
        # Its bytes now, unless a batch still running reads them (then the sweep, once it ends).
        return {"deleted": change.id, "bytes_removed": _remove_bytes(context, change.id) == 1}
    context.records.record("batches.add_file", FileRow(
        id=change.id, filename=change.filename, purpose=change.purpose, bytes=change.bytes, bucket=BUCKET, key=change.key,
        created_at=change.created_at, expires_at=change.expires_at))
    return {"file": change.id}


def remove_gone_files(event: ScheduledEvent, context: HandlerContext) -> dict:
    """The bytes of files deleted or past their expires_at (OpenAI's expires_after), their
    rows marked deleted; the input of a batch still running stays until the batch ends."""
    return {"removed": _remove_bytes(context)}


def _remove_bytes(context: HandlerContext, file_id: str | None = None) -> int:
    removed = 0
    for gone_id, bucket, key in reads.removable_files(_query(context), UNFINISHED, file_id):
        context.objects.delete(bucket, key)  # bytes first: a crash here leaves a row the next sweep finishes
        context.records.record("batches.file_bytes_removed", FileBytesRemoved(id=gone_id))
        removed += 1
    return removed


def create_batch(event: HttpEvent, context: HandlerContext) -> dict:
    return _create(context, _asked(event, NewBatch), source="api")


def _create(context: HandlerContext, new: NewBatch, *, source: str, name: str | None = None,
            retried_from: str | None = None) -> dict:
    settings = batch_settings(context.config)
    if _state(context, new.id) is not None:
        return {"batch": new.id}  # this request ran before (a retried attempt)
    check_request(settings, new)
    try:
        input_file = reads.file(_query(context), new.input_file_id)
    except NotFound as exc:
        raise Refused(exc.message) from None
    if input_file.purpose != "batch":
        raise Refused(f"file {new.input_file_id} has purpose {input_file.purpose!r}; a batch's input file "
                                 "must have purpose 'batch'")
    now = time.time()
    context.records.record("batches.add_batch", BatchRow(
        id=new.id, input_file_id=new.input_file_id, endpoint=new.endpoint, completion_window=new.completion_window,
        metadata=new.metadata, source=source, name=name, retried_from=retried_from, created_at=now,
        expires_at=now + (window_seconds(new.completion_window) or 0.0)))
    context.state.create(KIND, new.id, reason=f"created from file {new.input_file_id} ({source})",
                         metadata={"input_file_id": new.input_file_id, "endpoint": new.endpoint, "source": source})
    context.state.enqueue(_step(VALIDATE_FUNCTION, StepArgs(batch_id=new.id), f"batch-validate:{new.id}"))
    return {"batch": new.id}


def check_request(settings: BatchSettings, new: NewBatch) -> None:
    """What a batch request must name, whoever sends it (the API checks the same first)."""
    if new.endpoint not in ENDPOINTS:
        raise Refused(f"endpoint {new.endpoint!r} is not supported; use one of {list(ENDPOINTS)}")
    if new.completion_window not in settings.completion_windows:
        raise Refused(f"completion_window {new.completion_window!r} is not allowed; allowed: "
                                 f"{settings.completion_windows} (batches.completion_windows)")


def cancel_batch(event: HttpEvent, context: HandlerContext) -> dict:
    ref = _asked(event, BatchRef)
    state = _state(context, ref.id)
    if state is None:
        # Not NotYet: a batch id is known only once its batch is committed (listed, or answered).
        raise Refused(f"no batch with id {ref.id!r}")
    if state in (B.CANCELLING, B.CANCELLED):
        return {"batch": ref.id, "status": state}
    if state not in (*CANCELLABLE, *PARKED):
        raise Refused(f"batch {ref.id} is {state}: only a batch validating or in progress can be cancelled")
    context.state.transition(KIND, ref.id, trigger="cancel", reason=f"cancel asked over HTTP while {state}")
    if state == B.VALIDATING:
        # No chunk will report, so the cancel queues finalize itself; validation, running
        # or not yet, sees the cancel and runs nothing.
        context.state.enqueue(_finalize_task(ref.id))
    return {"batch": ref.id, "status": B.CANCELLING}


def retry_batch(event: HttpEvent, context: HandlerContext) -> dict:
    """Beyond OpenAI: the lines of a finished batch that did not succeed (failed, cancelled or
    expired), as the input of a new batch with the same endpoint and window."""
    retry = _asked(event, RetryBatch)
    query = _query(context)
    if _state(context, retry.new_id) is not None:
        return {"batch": retry.new_id}
    try:
        old = reads.batch(query, retry.id)
    except NotFound as exc:
        raise Refused(exc.message) from None
    state = reads.status(query, retry.id)
    if state not in TERMINAL or state == B.FAILED:
        raise Refused(f"batch {retry.id} is {state}: lines can be retried once it is completed, cancelled "
                                 "or expired")
    failed = reads.unsucceeded_lines(query, retry.id)
    if not failed:
        raise Refused(f"batch {retry.id} has no failed, cancelled or expired lines to retry")
    source = reads.file(query, old.input_file_id, expired_too=True)
    key = f"{FILES_PREFIX}{retry.new_file_id}.jsonl"
    with context.objects.open(source.bucket, source.key) as stream:
        _, size = context.outputs.write_stream(BUCKET, key, (raw if raw.endswith(b"\n") else raw + b"\n"
                                                             for line, _, raw in request_ids(stream) if line in failed))
    context.records.record("batches.add_file", FileRow(
        id=retry.new_file_id, filename=f"{retry.id}_retry.jsonl", purpose="batch", bytes=size, bucket=BUCKET, key=key,
        created_at=time.time()))
    return _create(context, NewBatch(id=retry.new_id, input_file_id=retry.new_file_id, endpoint=old.endpoint,
                                     completion_window=old.completion_window, metadata=old.metadata),
                   source=old.source, name=old.name and f"{old.name}-retry", retried_from=retry.id)


# ---------------------------------------------------------------- a batch dropped as a file


def drop_name(key: str) -> str:
    return key[len(DROP_PREFIX):-len(".jsonl")]


def batch_dropped(event: ObjectEvent, context: HandlerContext) -> dict:
    settings = batch_settings(context.config)
    name = drop_name(event.key)
    options_key = f"{DROP_PREFIX}{name}.json"
    options = DropOptions()
    if context.objects.modified(event.bucket, options_key) is not None:
        with context.objects.open(event.bucket, options_key) as stream:
            try:
                options = msgspec.json.decode(stream.read(), type=DropOptions)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise Refused(f"{options_key}: {exc} (expected {{\"endpoint\", \"completion_window\", "
                                         "\"metadata\"}})") from None
    file_id = f"file-{_hash(event.key, event.version)}"
    context.records.record("batches.add_file", FileRow(
        id=file_id, filename=posixpath.basename(event.key), purpose="batch", bytes=event.size, bucket=event.bucket,
        key=event.key, created_at=time.time()))
    new = NewBatch(id=f"batch_{_hash(event.key, event.version)}", input_file_id=file_id, endpoint=options.endpoint,
                   completion_window=options.completion_window or settings.completion_windows[0], metadata=options.metadata)
    try:
        return _create(context, new, source="file", name=name)
    except Refused as exc:
        raise Refused(f"{event.key}: {exc.message}") from None


# ---------------------------------------------------------------- validation


def base_url(context: HandlerContext, settings: BatchSettings) -> str:
    return settings.base_url or f"{context.runtime_url}/v1"


def validate_batch(event: HttpEvent, context: HandlerContext) -> dict:
    batch_id = _body(event, StepArgs).batch_id
    settings = batch_settings(context.config)
    query = _query(context)
    state = _state(context, batch_id)
    if state != B.VALIDATING:
        return {"batch": batch_id, "skipped": state}
    info = reads.batch(query, batch_id)
    source = reads.input_file(query, info.input_file_id)
    known = set(settings.models) or served_models(base_url(context, settings), settings.upstream_urls(),
                                                  settings.upstream_api_token)
    with context.objects.open(source.bucket, source.key) as stream:
        plan = validate(stream, endpoint=info.endpoint, model_known=known.__contains__, max_lines=settings.max_lines,
                        max_bytes=settings.max_bytes, chunk_lines=settings.chunk_lines)
    if (now_state := _state(context, batch_id)) != B.VALIDATING:
        # Cancelled while its file was read: nothing of it runs (the cancel queued finalize).
        return {"batch": batch_id, "skipped": now_state}
    errors = [msgspec.to_builtins(e) for e in plan.errors]
    context.records.record("batches.validated", Validated(id=batch_id, model=plan.model, total=plan.total,
                                                          chunks=len(plan.chunks), errors=errors))
    if plan.errors:
        # Where the user looks for the output: every problem with its line, one JSON object each.
        key = validation_errors_key(info)
        context.outputs.write_stream(BUCKET, key, (msgspec.json.encode(e) + b"\n" for e in plan.errors))
        said = f"{len(plan.errors)} problem(s) in {source.filename}, each with its line in {key}"
        context.state.transition(KIND, batch_id, trigger="validation_failed", reason=said,
                                 metadata={"errors": errors[:20], "errors_key": key})
        _notify(context, batch_id, B.FAILED, f"{said}; the first: {plan.errors[0].message}")
        return {"batch": batch_id, "errors": len(plan.errors), "errors_key": key}
    context.state.transition(KIND, batch_id, trigger="validated",
                             reason=f"{plan.total} requests in {len(plan.chunks)} chunk(s)",
                             metadata={"total": plan.total, "chunks": len(plan.chunks), "model": plan.model})
    for chunk in plan.chunks:
        context.state.enqueue(_chunk_task(batch_id, chunk))
    return {"batch": batch_id, "total": plan.total, "chunks": len(plan.chunks)}


def _chunk_task(batch_id: str, chunk: ChunkPlan, abandon: bool = False, parked: int = 0, step: int = 0,
                delay_seconds: float = 0.0) -> TaskSpec:
    args = ChunkArgs(batch_id=batch_id, plan=chunk, abandon=abandon, parked=parked, step=step)
    key = f"batch-chunk:{batch_id}:{chunk.chunk}:{step}" + (":abandon" if abandon else "")
    # A chunk whose attempts are all spent still reports: its unfinished lines become failed lines.
    on_dead = None if abandon else Effects(tasks=[_chunk_task(batch_id, chunk, abandon=True, step=step)])
    # Below every other function: a queued API call or evaluation step goes before the next slice.
    return _step(CHUNK_FUNCTION, args, key, max_attempts=CHUNK_MAX_ATTEMPTS, on_dead=on_dead, delay_seconds=delay_seconds,
                 priority=CHUNK_PRIORITY)


def _resume_task(batch_id: str, chunk: ChunkPlan, step: int, delay_seconds: float) -> TaskSpec:
    args = ChunkArgs(batch_id=batch_id, plan=chunk, step=step)
    return _step(RESUME_FUNCTION, args, f"{resume_key(batch_id)}{chunk.chunk}:{step}", delay_seconds=delay_seconds)


def resume_key(batch_id: str) -> str:
    """The idempotency-key prefix of a batch's parked chunks (queue.wake moves them to now)."""
    return f"batch-resume:{batch_id}:"


def _park(context: HandlerContext, args: ChunkArgs, info: reads.BatchInfo, exceeded: QuotaExceeded | None) -> dict:
    """Park the rest of a chunk on the queue's timer: until the quota's reset (the batch goes to
    quota_exceeded, unless it is there already), or while the batch is suspended. A park lasts
    at most quota.max_park_seconds and never past the batch's window; a batch's chunks wake
    quota.wake_spread_seconds apart."""
    quota = quota_settings(context.config)
    now = time.time()
    state = _state(context, args.batch_id)
    if exceeded is not None:
        wait = exceeded.wait
    elif state == B.QUOTA_EXCEEDED:
        wait = max(0.0, (reads.resume_at(_query(context), args.batch_id) or now + quota.max_park_seconds) - now)
    else:
        wait = quota.max_park_seconds  # suspended: the operator's resume wakes it sooner
    delay = min(wait, quota.max_park_seconds, max(0.0, info.expires_at - now)) + quota.wake_spread_seconds * args.plan.chunk
    if exceeded is not None and state in (B.IN_PROGRESS, B.QUOTA_EXCEEDED):
        context.state.transition(KIND, args.batch_id, trigger="quota_exceeded", reason=exceeded.message,
                                 metadata={"service": exceeded.service, "limit": exceeded.limit,
                                           "wait_seconds": round(wait, 3), "resume_at": now + delay})
    context.state.enqueue(_resume_task(args.batch_id, args.plan, args.step + 1, delay))
    return {"batch": args.batch_id, "chunk": args.plan.chunk, "outcome": "parked", "state": state,
            "resume_in_s": round(delay, 3)}


def resume_chunk(event: HttpEvent, context: HandlerContext) -> dict:
    """A parked chunk's timer (or an operator's resume): the batch back to in_progress and the
    rest of the chunk queued; still suspended, it parks again."""
    args = _body(event, ChunkArgs)
    state = _state(context, args.batch_id)
    if state is None or state in TERMINAL:
        return {"batch": args.batch_id, "chunk": args.plan.chunk, "skipped": state}
    if state == B.SUSPENDED:
        return _park(context, args, reads.batch(_query(context), args.batch_id), None)
    if state == B.QUOTA_EXCEEDED:
        context.state.transition(KIND, args.batch_id, trigger="quota_reset", reason="the quota reset: resumed on its timer")
    context.state.enqueue(_chunk_task(args.batch_id, args.plan, step=args.step + 1))
    return {"batch": args.batch_id, "chunk": args.plan.chunk, "resumed": True}


def _finalize_task(batch_id: str) -> TaskSpec:
    return _step(FINALIZE_FUNCTION, StepArgs(batch_id=batch_id), f"batch-finalize:{batch_id}")


def _notify(context: HandlerContext, batch_id: str, status: str, summary: str) -> None:
    event = webhook_event(batch_id, status, time.time())
    context.state.notify(event["type"], f"Batch {batch_id} {status}", summary, entity_kind=KIND, entity_id=batch_id,
                         metadata={"event": event})


# ---------------------------------------------------------------- chunks


def _stop_reason(context: HandlerContext, info: reads.BatchInfo) -> str | None:
    """Why a chunk stops before its last line: the batch is being cancelled or was suspended,
    or its window passed."""
    state = _state(context, info.id)
    if state in (B.CANCELLING, B.SUSPENDED):
        return state
    if time.time() >= info.expires_at:
        return B.EXPIRED
    return None


def run_chunk(event: HttpEvent, context: HandlerContext) -> dict:
    args = _body(event, ChunkArgs)
    settings = batch_settings(context.config)
    query = _query(context)
    info = reads.batch(query, args.batch_id)
    state = _state(context, args.batch_id)
    if state in PARKED and not args.abandon:
        # Another chunk met the quota (or an operator suspended the batch) since this one was queued.
        return _park(context, args, info, None)
    if state not in (B.IN_PROGRESS, B.CANCELLING, *PARKED):
        return {"batch": args.batch_id, "chunk": args.plan.chunk, "skipped": state}
    plan = args.plan
    done = reads.done_lines(query, args.batch_id, plan.first_line, 2**31 - 1) if plan.requests else set()
    if args.abandon:
        outcome = "abandoned"
        _fill_not_run(context, info, plan, done, "chunk_failed",
                      f"chunk {plan.chunk} failed on all {CHUNK_MAX_ATTEMPTS} attempts; see dropwire dlq list")
    elif (reason := _stop_reason(context, info)) is not None:
        outcome = B.SUSPENDED if reason == B.SUSPENDED else "stopped"
    else:
        outcome = asyncio.run(_run_lines(context, settings, info, plan, done))
    if isinstance(outcome, QuotaExceeded) or outcome == B.SUSPENDED:
        return _park(context, args, info, outcome if isinstance(outcome, QuotaExceeded) else None)
    if outcome == "unreachable":
        # The runtime is down (or restarting), not the lines wrong: park the chunk on the
        # queue's durable timer, its saved lines kept, until the runtime answers again, the
        # batch is cancelled or its window passes. No attempt is spent on waiting.
        delay = retry_wait(None, args.parked + 1, settings.retry_base_seconds, settings.retry_max_seconds)
        context.state.enqueue(_chunk_task(args.batch_id, plan, parked=args.parked + 1, step=args.step + 1,
                                          delay_seconds=delay))
        return {"batch": args.batch_id, "chunk": plan.chunk, "outcome": "parked", "retry_in_s": round(delay, 2)}
    if outcome == "sliced":
        # Its time slice is up: the rest of the chunk goes back to the queue, so a chunk never
        # holds a worker for long (API calls and other functions run in between).
        context.state.enqueue(_chunk_task(args.batch_id, plan, step=args.step + 1))
        return {"batch": args.batch_id, "chunk": plan.chunk, "outcome": "sliced"}
    context.records.record("batches.chunk_done", ChunkDone(batch_id=args.batch_id, chunk=plan.chunk, outcome=outcome))
    if reads.chunks_done(query, args.batch_id) >= (info.chunks or 0):
        context.state.enqueue(_finalize_task(args.batch_id))
    return {"batch": args.batch_id, "chunk": plan.chunk, "outcome": outcome}


class _Saver:
    """Finished lines, saved every few lines or fractions of a second (durable when saved),
    each save a heartbeat of this worker."""

    def __init__(self, context: HandlerContext, settings: BatchSettings, batch_id: str, chunk: int, meter: Meter) -> None:
        self.context, self.settings, self.batch_id, self.chunk, self.meter = context, settings, batch_id, chunk, meter
        self.pending: list[LineRow] = []
        self.saved_at = time.monotonic()
        self.done = 0
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def add(self, line: int, custom_id: str, outcome: LineOutcome) -> None:
        self.pending.append(LineRow(
            line=line, custom_id=custom_id, status_code=outcome.status_code, request_id=outcome.request_id,
            response=None if outcome.body is None else outcome.body.decode("utf-8", "replace"),
            error_code=outcome.error_code, error_message=outcome.error_message, prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens, attempts=outcome.attempts))

    def due(self) -> bool:
        return (len(self.pending) >= self.settings.save_every_lines
                or time.monotonic() - self.saved_at >= self.settings.save_every_seconds)

    def save(self) -> None:
        self.done += len(self.pending)
        self.context.records.record("batches.line_results", LineResults(
            batch_id=self.batch_id, worker=self.worker, pid=os.getpid(), host=socket.gethostname(), chunk=self.chunk,
            lines_done=self.done, lines=self.pending))
        self.meter.flush()  # the saved lines' usage, counted with their save
        self.pending = []
        self.saved_at = time.monotonic()


async def _run_lines(context: HandlerContext, settings: BatchSettings, info: reads.BatchInfo, plan: ChunkPlan,
                     done: set[int]) -> str | QuotaExceeded:
    source = reads.input_file(_query(context), info.input_file_id)
    meter = Meter(context.quota, quota_settings(context.config), settings.quota_service, tally=True)
    saver = _Saver(context, settings, info.id, plan.chunk, meter)
    backend = LineBackend(base_url(context, settings), upstreams=settings.upstream_urls(),
                          api_key=settings.upstream_api_token, timeout_seconds=settings.request_timeout_seconds,
                          max_attempts=settings.max_attempts, retry_base_seconds=settings.retry_base_seconds,
                          retry_max_seconds=settings.retry_max_seconds, max_connections=settings.concurrency,
                          meter=meter)

    unreachable: list[str] = []
    exceeded: list[QuotaExceeded] = []

    async def one(request) -> None:
        try:
            outcome = await backend.call(request.url, request.body)
        except QuotaExceeded as exc:
            if math.isinf(exc.wait):  # bigger than the whole limit (e.g. its max_tokens): it never fits
                saver.add(request.line, request.custom_id, LineOutcome(
                    status_code=None, request_id=None, body=None, error_code="quota_exceeded", error_message=exc.message,
                    attempts=0))
                return
            # The quota is spent for longer than a wait in place: the line is not saved and the
            # chunk parks until the reset (run_chunk), to go on from where it stopped.
            exceeded.append(exc)
            return
        if outcome.error_code == "request_failed":
            # The runtime (or upstream) is down, not the line wrong: the line is not saved and
            # the chunk parks (run_chunk), to go on from where it stopped.
            unreachable.append(outcome.error_message or "")
            return
        saver.add(request.line, request.custom_id, outcome)

    running: set[asyncio.Task] = set()
    stopped = sliced = False
    slice_ends = time.monotonic() + settings.slice_seconds
    try:
        with context.objects.open(source.bucket, source.key) as stream:
            for request in read_chunk(stream, plan):
                if request.line in done:
                    continue
                while len(running) >= settings.concurrency:
                    _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                if unreachable or exceeded:
                    break
                if saver.due():
                    saver.save()
                    if (reason := _stop_reason(context, info)) is not None:
                        stopped = reason
                        break
                    if time.monotonic() >= slice_ends:
                        sliced = True
                        break
                running.add(asyncio.create_task(one(request)))
        if running:
            await asyncio.wait(running)
        saver.save()
        if exceeded:
            context.log.info("chunk %s of batch %s parks after %s saved line(s): %s", plan.chunk, info.id, saver.done,
                             exceeded[0].message)
            return max(exceeded, key=lambda exc: exc.wait)
        if unreachable:
            context.log.warning("chunk %s of batch %s parked after %s saved line(s): %s", plan.chunk, info.id, saver.done,
                                unreachable[0])
            return "unreachable"
    finally:
        for task in running:
            task.cancel()
        await backend.aclose()
        meter.flush()  # requests answered but not saved (the chunk stopped) were sent all the same
    if stopped == B.SUSPENDED:
        return B.SUSPENDED
    return "stopped" if stopped else "sliced" if sliced else "completed"


def _fill_not_run(context: HandlerContext, info: reads.BatchInfo, plan: ChunkPlan | None, done: set[int], code: str,
                  message: str) -> int:
    """Save every request with no stored outcome (of one chunk, or of the whole batch) as a
    line that never ran, with `code`."""
    source = reads.input_file(_query(context), info.input_file_id)
    filled: list[LineRow] = []
    count = 0

    def flush() -> None:
        context.records.record("batches.line_results", LineResults(
            batch_id=info.id, worker=f"{socket.gethostname()}:{os.getpid()}", pid=os.getpid(), host=socket.gethostname(),
            chunk=-1 if plan is None else plan.chunk, lines_done=count, lines=filled))

    with context.objects.open(source.bucket, source.key) as stream:
        requests = ((r.line, r.custom_id) for r in read_chunk(stream, plan)) if plan is not None else (
            (line, custom_id) for line, custom_id, _ in request_ids(stream))
        for line, custom_id in requests:
            if line in done:
                continue
            filled.append(LineRow(line=line, custom_id=custom_id, status_code=None, request_id=None, response=None,
                                  error_code=code, error_message=message, prompt_tokens=0, completion_tokens=0,
                                  attempts=0))
            count += 1
            if len(filled) >= FILL_LINES:
                flush()
                filled = []
    if filled:
        flush()
    return count


# ---------------------------------------------------------------- finalizing


def output_keys(info: reads.BatchInfo) -> tuple[str, str]:
    if info.source == "file" and info.name:
        return f"{OUTPUT_PREFIX}{info.name}.output.jsonl", f"{OUTPUT_PREFIX}{info.name}.errors.jsonl"
    return f"{OUTPUT_PREFIX}{info.id}/output.jsonl", f"{OUTPUT_PREFIX}{info.id}/errors.jsonl"


def validation_errors_key(info: reads.BatchInfo) -> str:
    """Beside where the output would have gone (the per-line error file is OpenAI's shape, this
    one holds validation's problems: code, message, line, param)."""
    output_key, _ = output_keys(info)
    return output_key.removesuffix("output.jsonl") + "validation-errors.jsonl"


def finalize_batch(event: HttpEvent, context: HandlerContext) -> dict:
    batch_id = _body(event, StepArgs).batch_id
    query = _query(context)
    state = _state(context, batch_id)
    if state not in (B.IN_PROGRESS, B.CANCELLING):
        return {"batch": batch_id, "skipped": state}
    info = reads.batch(query, batch_id)
    tally = reads.counts(query, batch_id)
    missing = (info.total or 0) - tally.completed - tally.failed
    if state == B.CANCELLING:
        end, triggers = B.CANCELLED, ["cancelled"]
    elif missing > 0:
        end, triggers = B.EXPIRED, ["expire"]
    elif tally.failed and tally.completed:
        end, triggers = B.PARTIALLY_PROCESSED, ["finalize", "complete_partially"]
    else:
        end, triggers = B.COMPLETED, ["finalize", "complete"]
    if missing > 0:
        done = {row[0] for row in query("SELECT line FROM batch_lines WHERE batch_id = ?", [batch_id])}
        code = NOT_RUN[B.CANCELLING if end == B.CANCELLED else B.EXPIRED]
        _fill_not_run(context, info, None, done, code,
                      "the batch was cancelled before this line ran" if end == B.CANCELLED
                      else "the batch's completion window passed before this line ran")
        tally = reads.counts(query, batch_id)
    output_key, error_key = output_keys(info)
    output_id, error_id = f"file-{_hash(batch_id, 'output')}", None
    _, size = context.outputs.write_stream(BUCKET, output_key, (
        line for _, line in split_lines(batch_id, reads.stored_lines(query, batch_id, succeeded=True))))
    now = time.time()
    context.records.record("batches.add_file", FileRow(id=output_id, filename=f"{batch_id}_output.jsonl",
                                                       purpose="batch_output", bytes=size, bucket=BUCKET, key=output_key,
                                                       created_at=now))
    if tally.failed:
        error_id = f"file-{_hash(batch_id, 'errors')}"
        _, size = context.outputs.write_stream(BUCKET, error_key, (
            line for _, line in split_lines(batch_id, reads.stored_lines(query, batch_id, succeeded=False))))
        context.records.record("batches.add_file", FileRow(id=error_id, filename=f"{batch_id}_error.jsonl",
                                                           purpose="batch_output", bytes=size, bucket=BUCKET,
                                                           key=error_key, created_at=now))
    context.records.record("batches.outputs", Outputs(id=batch_id, output_file_id=output_id, error_file_id=error_id))
    started = reads.status_times(query, batch_id).get(B.IN_PROGRESS, info.created_at)
    context.records.record("batches.benchmark", Benchmark(
        batch_id=batch_id, model=info.model or "", lines=info.total or 0, completed=tally.completed, failed=tally.failed,
        prompt_tokens=tally.prompt_tokens, completion_tokens=tally.completion_tokens, started_at=started,
        finished_at=tally.last_finished or now))
    summary = f"{tally.completed} of {info.total} requests succeeded, {tally.failed} failed; output {output_key}"
    for trigger in triggers:
        context.state.transition(KIND, batch_id, trigger=trigger, reason=summary,
                                 metadata={"output_file_id": output_id, "error_file_id": error_id})
    _notify(context, batch_id, openai_status(end), summary)
    return {"batch": batch_id, "status": end, "completed": tally.completed, "failed": tally.failed}
