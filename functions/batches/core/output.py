"""OpenAI's output and error line shapes, and the objects of its Files and Batch API, built
from stored rows. A response body is carried as the upstream's bytes (msgspec.Raw): never
parsed again, never reformatted."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec


class LineResponse(msgspec.Struct, kw_only=True):
    status_code: int
    request_id: str
    body: msgspec.Raw


class LineErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str


class OutputLine(msgspec.Struct, kw_only=True):
    id: str
    custom_id: str
    response: LineResponse | None
    error: LineErrorBody | None


_encode = msgspec.json.Encoder().encode


def request_id_of(batch_id: str, line: int) -> str:
    """A stable id per line of a batch: assembling the output twice gives the same bytes."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


def output_line(batch_id: str, line: int, custom_id: str, status_code: int | None, request_id: str | None,
                response: str | None, error_code: str | None, error_message: str | None) -> bytes:
    answer = None
    if status_code is not None:
        answer = LineResponse(status_code=status_code, request_id=request_id or "",
                              body=msgspec.Raw(response.encode() if response is not None else b"null"))
    # An answered line that failed (e.g. 400 from the model) has its reason in the response body.
    error = LineErrorBody(code=error_code, message=error_message or "") if status_code is None and error_code else None
    return _encode(OutputLine(id=request_id_of(batch_id, line), custom_id=custom_id, response=answer, error=error)) + b"\n"


def is_success(status_code: int | None) -> bool:
    return status_code is not None and 200 <= status_code < 300


def split_lines(batch_id: str, rows: Iterable[tuple]) -> Iterator[tuple[bool, bytes]]:
    """(success?, output line) per stored row (line, custom_id, status_code, request_id,
    response, error_code, error_message), in the rows' order."""
    for line, custom_id, status_code, request_id, response, error_code, error_message in rows:
        yield is_success(status_code), output_line(batch_id, line, custom_id, status_code, request_id, response,
                                                   error_code, error_message)


class FileObject(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    object: str = "file"
    status: str = "processed"
    status_details: str | None = None


class FileList(msgspec.Struct, kw_only=True):
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: str = "list"


class FileDeletedObject(msgspec.Struct, kw_only=True):
    id: str
    deleted: bool = True
    object: str = "file"


class BatchErrorItem(msgspec.Struct, kw_only=True, omit_defaults=False):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchErrors(msgspec.Struct, kw_only=True):
    data: list[BatchErrorItem]
    object: str = "list"


class RequestCounts(msgspec.Struct, kw_only=True):
    total: int
    completed: int
    failed: int


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class BatchObject(msgspec.Struct, kw_only=True):
    """Every field of OpenAI's batch object."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int | None
    request_counts: RequestCounts
    usage: Usage
    object: str = "batch"
    errors: BatchErrors | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None


class BatchList(msgspec.Struct, kw_only=True):
    data: list[BatchObject]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: str = "list"


#: status -> the batch object's timestamp field it sets
STATUS_TIMES = {"in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
                "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at", "cancelled": "cancelled_at"}


def webhook_event(batch_id: str, status: str, at: float) -> dict[str, Any]:
    """OpenAI's webhook event for a batch reaching a terminal status."""
    return {"id": "evt_" + hashlib.sha256(f"{batch_id}:{status}".encode()).hexdigest()[:24], "object": "event",
            "type": f"batch.{status}", "created_at": int(at), "data": {"id": batch_id}}
