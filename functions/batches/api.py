"""OpenAI's Files and Batch API under /v1, in OpenAI's exact shapes, so the unmodified
official client works with only base_url and api_key set (the gateway's bearer tokens).

File bytes go into the bucket (under batch-files/, which no trigger watches); every change
(a file registered or deleted, a batch created, cancelled or retried) is an HTTP-triggered
function of functions/batches/handlers.py that the request waits for, so the API itself
writes no state. Reads come from the committed state (functions/batches/reads.py).
Beyond OpenAI: ``POST /v1/batches/{id}/retry`` makes a new batch of the lines of a finished
batch that failed, were cancelled or expired."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import IO, Annotated, Any

import msgspec
from litestar import Request, Router, delete, get, post
from litestar.concurrency import sync_to_thread
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from dropwire.functions.batches import reads
from dropwire.functions.batches.core.output import BatchList, BatchObject, FileDeletedObject, FileList, FileObject
from dropwire.functions.batches.core.validation import ENDPOINTS, check_upload
from dropwire.functions.batches.handlers import (
    CANCEL_FUNCTION,
    CANCELLABLE,
    CREATE_FUNCTION,
    FILES_FUNCTION,
    FILES_PREFIX,
    RETRY_FUNCTION,
    resume_key,
)
from dropwire.functions.batches.settings import batch_settings
from dropwire.functions.batches.states import PARKED, TERMINAL, openai_status
from dropwire.functions.batches.states import BatchState as B
from dropwire.functions.batches.upload import Received, receive
from dropwire.functions.kit.errors import Conflict, DropwireError
from dropwire.functions.kit.openai_errors import openai_exception_handlers
from dropwire.functions.kit.openapi import error_responses, upload_operation
from dropwire.functions.platform.api_ports import GATEWAY_ERRORS, ApiPorts, invoke_and_wait

PURPOSES = ("batch",)
MAX_LIST = 100
# OpenAI's bounds for expires_after[seconds] (one hour to thirty days).
EXPIRY_BOUNDS = (3600, 30 * 86400)

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIST, description="items per page")]

READ = error_responses(400, 404, *GATEWAY_ERRORS)
# A change waits for its handler: 409 when the handler refused it, 503 (ask again) past the wait.
CHANGE = error_responses(400, 404, 409, *GATEWAY_ERRORS)
FILE_UPLOAD = upload_operation(
    "OpenAI's file upload: the JSONL batch input in field 'file', its purpose, and optionally when it expires",
    media_types=(), form_fields={
        "purpose": (Schema(type=OpenAPIType.STRING, enum=list(PURPOSES)), True),
        "expires_after[anchor]": (Schema(type=OpenAPIType.STRING, enum=["created_at"]), False),
        "expires_after[seconds]": (Schema(type=OpenAPIType.INTEGER, minimum=EXPIRY_BOUNDS[0],
                                          maximum=EXPIRY_BOUNDS[1]), False)})


class InvalidRequest(DropwireError):
    code = "invalid_request_error"


class OverLimit(DropwireError):
    """A file past batches.max_lines or max_bytes (its code names which)."""

    http_status = 413
    code = "too_many_lines"


# A file refused for one of these is over a limit (413), not malformed (400).
LIMIT_CODES = ("too_many_lines", "file_too_large")


class NotCancellable(Conflict):
    code = "batch_not_cancellable"


class CreateBatch(msgspec.Struct, kw_only=True):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _chunks(stream: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(size):
            yield chunk


def build_router(ports: ApiPorts) -> Router:
    settings = batch_settings(ports.config)
    query = ports.store.query

    def run(function: str, body: Any) -> Any:
        return invoke_and_wait(ports, function, msgspec.to_builtins(body))

    # ------------------------------------------------------------ files

    @post("/files", status_code=200, operation_class=FILE_UPLOAD,
          responses=error_responses(400, 409, 413, *GATEWAY_ERRORS))
    async def create_file(request: Request) -> FileObject:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        key = f"{FILES_PREFIX}{file_id}.jsonl"

        def write(pieces: Iterator[bytes]) -> int:
            return ports.objects.write_stream(ports.bucket, key, pieces)[1]

        received = await receive(request.stream(), request.headers.get("content-type", ""), max_bytes=settings.max_bytes,
                                 write=write)
        try:
            purpose = received.fields.get("purpose")
            if purpose not in PURPOSES:
                raise InvalidRequest(f"purpose must be one of {list(PURPOSES)}, got {purpose!r}", param="purpose")
            if received.size is None:
                raise InvalidRequest("the multipart upload has no file in field 'file'", param="file")
            expires_in = _expiry(received.fields.get("expires_after[anchor]"), received.fields.get("expires_after[seconds]"))
            return await sync_to_thread(register_file, file_id, key, received, purpose, expires_in)
        except BaseException:
            await sync_to_thread(ports.objects.delete, ports.bucket, key)  # refused: nothing of it stays
            raise

    def register_file(file_id: str, key: str, received: Received, purpose: str, expires_in: float | None) -> FileObject:
        with ports.objects.open(ports.bucket, key) as stream:
            problems = check_upload(stream, max_lines=settings.max_lines, max_bytes=settings.max_bytes)
        filename = received.filename or "input.jsonl"
        if problems:
            message = f"{filename}: " + "; ".join(p.message for p in problems)
            errors = msgspec.to_builtins(problems)  # a list in details, not JSON inside JSON
            limit = next((p for p in problems if p.code in LIMIT_CODES), None)
            if limit is None:
                raise InvalidRequest(message, param="file", errors=errors)
            refused = OverLimit(message, param="file", errors=errors)
            refused.code = limit.code
            raise refused
        now = time.time()
        run(FILES_FUNCTION, {"action": "add", "id": file_id, "filename": filename, "purpose": purpose,
                             "bytes": received.size, "key": key, "created_at": now,
                             "expires_at": expires_in and now + expires_in})
        return reads.file(query, file_id).public()

    @get("/files", sync_to_thread=True, responses=READ)
    def list_files(purpose: FromQuery[str | None] = None, limit: Limit = 20, order: FromQuery[str] = "desc",
                   after: FromQuery[str | None] = None) -> FileList:
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order")
        if after is not None:
            reads.file(query, after)
        found = reads.files(query, purpose=purpose, limit=limit + 1, newest_first=order == "desc", after=after)
        page = [f.public() for f in found[:limit]]
        return FileList(data=page, has_more=len(found) > limit, first_id=page[0].id if page else None,
                        last_id=page[-1].id if page else None)

    @get("/files/{file_id:str}", sync_to_thread=True, responses=READ)
    def get_file(file_id: FromPath[str]) -> FileObject:
        return reads.file(query, file_id).public()

    @get("/files/{file_id:str}/content", sync_to_thread=True, media_type="application/octet-stream", responses=READ)
    def file_content(file_id: FromPath[str]) -> Stream:
        found = reads.file(query, file_id)
        return Stream(_chunks(ports.objects.open(found.bucket, found.key)), media_type="application/octet-stream")

    @delete("/files/{file_id:str}", status_code=200, sync_to_thread=True, responses=CHANGE)
    def delete_file(file_id: FromPath[str]) -> FileDeletedObject:
        reads.file(query, file_id)
        run(FILES_FUNCTION, {"action": "delete", "id": file_id})
        return FileDeletedObject(id=file_id)

    # ------------------------------------------------------------ batches

    @post("/batches", status_code=200, sync_to_thread=True, responses=error_responses(400, 404, 409, 413, *GATEWAY_ERRORS))
    def create_batch(data: JSONBody[CreateBatch]) -> BatchObject:
        if data.endpoint not in ENDPOINTS:
            raise InvalidRequest(f"endpoint must be one of {list(ENDPOINTS)}, got {data.endpoint!r}", param="endpoint")
        if data.completion_window not in settings.completion_windows:
            raise InvalidRequest(f"completion_window must be one of {settings.completion_windows}, got "
                                 f"{data.completion_window!r}", param="completion_window")
        source = reads.file(query, data.input_file_id)
        if source.purpose != "batch":
            raise InvalidRequest(f"file {source.id} has purpose {source.purpose!r}; a batch's input must have purpose "
                                 "'batch'", param="input_file_id")
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        run(CREATE_FUNCTION, {"id": batch_id, "input_file_id": data.input_file_id, "endpoint": data.endpoint,
                              "completion_window": data.completion_window, "metadata": data.metadata})
        return reads.batch_object(query, batch_id)

    @get("/batches/{batch_id:str}", sync_to_thread=True, responses=READ)
    def get_batch(batch_id: FromPath[str]) -> BatchObject:
        return reads.batch_object(query, batch_id)

    @get("/batches", sync_to_thread=True, responses=READ)
    def list_batches(limit: Limit = 20, after: FromQuery[str | None] = None) -> BatchList:
        if after is not None:
            reads.batch(query, after)
        ids = reads.batch_ids(query, limit=limit + 1, after=after)
        page = [reads.batch_object(query, batch_id) for batch_id in ids[:limit]]
        return BatchList(data=page, has_more=len(ids) > limit, first_id=page[0].id if page else None,
                         last_id=page[-1].id if page else None)

    @post("/batches/{batch_id:str}/cancel", status_code=200, sync_to_thread=True, responses=CHANGE)
    def cancel_batch(batch_id: FromPath[str]) -> BatchObject:
        status = reads.status(query, batch_id)
        if status not in (*CANCELLABLE, B.CANCELLING, *PARKED):
            raise NotCancellable(f"batch {batch_id} is {openai_status(status)}: only a batch validating or in progress "
                                 "can be cancelled", status=openai_status(status))
        run(CANCEL_FUNCTION, {"id": batch_id})
        if status in PARKED and ports.wake is not None:
            ports.wake(resume_key(batch_id))  # its parked chunks stop now, not at their timer
        return reads.batch_object(query, batch_id)

    @post("/batches/{batch_id:str}/retry", status_code=200, sync_to_thread=True, responses=CHANGE)
    def retry_batch(batch_id: FromPath[str]) -> BatchObject:
        status = reads.status(query, batch_id)
        if status not in TERMINAL or status == B.FAILED:
            raise Conflict(f"batch {batch_id} is {openai_status(status)}: its lines can be retried once it is completed, "
                           "cancelled or expired", status=openai_status(status))
        new_id = f"batch_{uuid.uuid4().hex[:24]}"
        run(RETRY_FUNCTION, {"id": batch_id, "new_id": new_id, "new_file_id": f"file-{uuid.uuid4().hex[:24]}"})
        return reads.batch_object(query, new_id)

    return Router("/v1", route_handlers=[create_file, list_files, get_file, file_content, delete_file, create_batch,
                                         get_batch, list_batches, cancel_batch, retry_batch], tags=["batches"],
                  exception_handlers=openai_exception_handlers())


def _expiry(anchor: Any, seconds: Any) -> float | None:
    """Seconds after creation at which the file expires (OpenAI's expires_after), or None."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(f"expires_after[anchor] must be 'created_at', got {anchor!r}", param="expires_after[anchor]")
    try:
        value = int(seconds)
    except (TypeError, ValueError):
        raise InvalidRequest(f"expires_after[seconds] must be a whole number, got {seconds!r}",
                             param="expires_after[seconds]") from None
    low, high = EXPIRY_BOUNDS
    if not low <= value <= high:
        raise InvalidRequest(f"expires_after[seconds] must be between {low} and {high}, got {value}",
                             param="expires_after[seconds]")
    return float(value)
