"""Validating a batch input file in one streamed pass, before anything runs: every problem
with its line number (OpenAI's error shape: code, line, message, param), and the plan the
chunks run from (where each chunk starts in the file, so a chunk seeks there instead of
reading what comes before it). Memory holds the custom_ids seen, never the file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO, Any

import msgspec

#: The problems kept on the batch; past this many, one last entry says how many more there were.
MAX_ERRORS = 1000
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


class LineError(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class ChunkPlan(msgspec.Struct, kw_only=True, frozen=True):
    chunk: int
    #: Line number (1-based) of the chunk's first request, and the byte offset of that line.
    first_line: int
    offset: int
    #: Requests in the chunk (blank lines are not requests).
    requests: int


class Plan(msgspec.Struct, kw_only=True):
    total: int = 0
    model: str | None = None
    chunks: list[ChunkPlan] = []
    errors: list[LineError] = []
    bytes: int = 0


class Request(msgspec.Struct, kw_only=True, frozen=True):
    """One input line as a chunk runs it."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


def numbered_lines(stream: IO[bytes], offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, line length in bytes, line) from `offset` on; the caller counts lines."""
    stream.seek(offset)
    position = offset
    for raw in stream:
        yield position, len(raw), raw
        position += len(raw)


def validate(stream: IO[bytes], *, endpoint: str, model_known: Callable[[str], bool], max_lines: int, max_bytes: int,
             chunk_lines: int) -> Plan:
    plan = Plan()
    seen: dict[str, int] = {}
    dropped = 0

    def problem(code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        nonlocal dropped
        if len(plan.errors) < MAX_ERRORS:
            plan.errors.append(LineError(code=code, message=message, line=line, param=param))
        else:
            dropped += 1

    number = 0
    for offset, length, raw in numbered_lines(stream):
        number += 1
        plan.bytes = offset + length
        if plan.bytes > max_bytes:
            problem("file_too_large", f"the file is larger than the limit of {max_bytes} bytes (batches.max_bytes); "
                                      f"line {number} ends past it", number)
            break
        if not raw.strip():
            continue
        if plan.total >= max_lines:
            problem("too_many_lines", f"the file has more than the limit of {max_lines} requests (batches.max_lines); "
                                      f"line {number} is request {plan.total + 1}", number)
            break
        if plan.total % chunk_lines == 0:
            plan.chunks.append(ChunkPlan(chunk=len(plan.chunks), first_line=number, offset=offset, requests=0))
        plan.total += 1
        last = plan.chunks[-1]
        plan.chunks[-1] = msgspec.structs.replace(last, requests=last.requests + 1)
        check_line(raw, number, endpoint, model_known, seen, plan, problem)
    if plan.total == 0 and not plan.errors:
        problem("empty_file", "the file holds no requests: one JSON object per line was expected")
    if dropped:
        plan.errors.append(LineError(code="too_many_errors", message=f"{dropped} more problems were found and not listed"))
    return plan


def check_line(raw: bytes, number: int, endpoint: str, model_known: Callable[[str], bool], seen: dict[str, int],
               plan: Plan, problem: Callable[..., None]) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem("invalid_encoding", f"line {number} is not UTF-8 (byte {exc.start + 1} of the line)", number)
        return
    try:
        item = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        problem("invalid_json_line", f"line {number} is not valid JSON: {exc}", number)
        return
    if not isinstance(item, dict):
        problem("invalid_json_line", f"line {number} is JSON but not an object", number)
        return
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        problem("missing_custom_id", f"line {number} has no custom_id (a non-empty string)", number, "custom_id")
    elif custom_id in seen:
        problem("duplicate_custom_id", f"line {number} repeats custom_id {custom_id!r} of line {seen[custom_id]}",
                number, "custom_id")
    else:
        seen[custom_id] = number
    if item.get("method") != "POST":
        problem("invalid_method", f"line {number}: method must be 'POST', got {item.get('method')!r}", number, "method")
    if item.get("url") != endpoint:
        problem("mismatched_url", f"line {number}: url {item.get('url')!r} is not the batch's endpoint {endpoint!r}",
                number, "url")
    body = item.get("body")
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        problem("missing_model", f"line {number}: body must be an object naming a model", number, "body.model")
    elif not model_known(model):
        problem("unknown_model", f"line {number}: model {model!r} is not served here", number, "body.model")
    elif plan.model is None:
        plan.model = model


def read_chunk(stream: IO[bytes], chunk: ChunkPlan) -> Iterator[Request]:
    """The chunk's requests in order, read from its offset (the file was validated)."""
    number = chunk.first_line - 1
    taken = 0
    for _, _, raw in numbered_lines(stream, chunk.offset):
        number += 1
        if taken == chunk.requests:
            return
        if not raw.strip():
            continue
        item = msgspec.json.decode(raw)
        taken += 1
        yield Request(line=number, custom_id=item["custom_id"], url=item["url"], body=item["body"])


def request_ids(stream: IO[bytes]) -> Iterator[tuple[int, str, bytes]]:
    """(line number, custom_id, raw line) of every request of a validated file."""
    for number, (_, _, raw) in enumerate(numbered_lines(stream), start=1):
        if raw.strip():
            yield number, msgspec.json.decode(raw, type=_CustomId).custom_id, raw


class _CustomId(msgspec.Struct):
    custom_id: str


def check_upload(stream: IO[bytes], *, max_lines: int, max_bytes: int, max_errors: int = 20) -> list[LineError]:
    """What a file of purpose batch must be before it is stored: UTF-8, one JSON object per
    line, within the limits (the batch's own rules are checked when a batch names it)."""
    errors: list[LineError] = []
    requests = number = 0
    for offset, length, raw in numbered_lines(stream):
        number += 1
        if offset + length > max_bytes:
            errors.append(LineError(code="file_too_large", line=number,
                                    message=f"the file is larger than the limit of {max_bytes} bytes (batches.max_bytes)"))
            break
        if not raw.strip():
            continue
        requests += 1
        if requests > max_lines:
            errors.append(LineError(code="too_many_lines", line=number,
                                    message=f"the file has more than the limit of {max_lines} requests (batches.max_lines)"))
            break
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(LineError(code="invalid_encoding", line=number,
                                    message=f"line {number} is not UTF-8 (byte {exc.start + 1} of the line)"))
        else:
            try:
                item = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                errors.append(LineError(code="invalid_json_line", line=number, message=f"line {number} is not valid JSON: {exc}"))
            else:
                if not isinstance(item, dict):
                    errors.append(LineError(code="invalid_json_line", line=number,
                                            message=f"line {number} is JSON but not an object"))
        if len(errors) >= max_errors:
            break
    if requests == 0 and not errors:
        errors.append(LineError(code="empty_file", message="the file holds no requests: one JSON object per line was expected"))
    return errors
