"""Errors of the OpenAI-compatible /v1 endpoints (the runtime's, and the gateway's Files and
Batch API): each names the request field at fault (OpenAI's ``param``), and every answer
carries OpenAI's error object as its ``error``, what OpenAI's clients read."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from dropwire.functions.kit.errors import DropwireError, ErrorBody, NotFound, OpenAIError, error_body_for

log = logging.getLogger("dropwire.http")


class InvalidRequest(DropwireError):
    http_status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None, **details: object) -> None:
        super().__init__(message, param=param, **details)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message, **details)
        self.param = "model"


class ClientGone(DropwireError):
    """The client disconnected; nobody reads this answer (nginx's 499)."""

    http_status = 499
    code = "client_closed_request"


def openai_type(status: int) -> str:
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def openai_error_body(exc: DropwireError) -> ErrorBody:
    """The error body with OpenAI's error object as its ``error`` (what OpenAI's clients read)."""
    base = error_body_for(exc)
    return ErrorBody(
        error=OpenAIError(message=exc.message, type=openai_type(exc.http_status),
                          param=getattr(exc, "param", None) or _text(exc.details.get("param")), code=exc.code),
        message=base.message,
        details=base.details,
        timestamp=base.timestamp,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _param_of(message: str, key: str | None) -> str | None:
    """The request field a validation message is about ("... - at `$.messages[0].role`",
    "Object missing required field `messages`"), else Litestar's key unless it is the body."""
    found = re.search(r"at `\$\.([^`]+)`", message) or re.search(r"field `([^`]+)`", message)
    if found:
        return found.group(1)
    return key if key and key != "data" else None


def openai_exception_handlers() -> dict:
    """Litestar exception handlers of a router whose errors answer OpenAI's error object."""

    def ours(_: Request, exc: DropwireError) -> Response[ErrorBody]:
        if exc.http_status >= 500 and exc.http_status != 503:
            log.error("%s: %s", exc.code, exc.message)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(openai_error_body(exc), status_code=exc.http_status, headers=headers)

    def litestars(request: Request, exc: HTTPException) -> Response[ErrorBody]:
        if isinstance(exc, ValidationException):
            problems = exc.extra if isinstance(exc.extra, list) else []
            first: dict[str, Any] = problems[0] if problems and isinstance(problems[0], dict) else {}
            param = _param_of(str(first.get("message", "")), first.get("key"))
            said = "; ".join(f"{p.get('key', '')}: {p.get('message', '')}" for p in problems if isinstance(p, dict))
            error = InvalidRequest(f"invalid request body: {said or exc.detail}", param=param, errors=problems)
            return ours(request, error)
        error = DropwireError(exc.detail)
        error.http_status = exc.status_code
        error.code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return ours(request, error)

    def unexpected(request: Request, exc: Exception) -> Response[ErrorBody]:
        log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        error = DropwireError(f"unexpected error: {type(exc).__name__}: {exc}")
        error.http_status, error.code = 500, "internal_error"
        return ours(request, error)

    return {DropwireError: ours, HTTPException: litestars, Exception: unexpected}
