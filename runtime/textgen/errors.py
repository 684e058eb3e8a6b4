"""Errors of the /v1 endpoints. Each names the request field at fault (OpenAI's ``param``)."""

from __future__ import annotations

from dropwire.storage.errors import DropwireError, ErrorBody, NotFound, OpenAIError, error_body_for


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
        error=OpenAIError(message=exc.message, type=openai_type(exc.http_status), param=getattr(exc, "param", None),
                          code=exc.code),
        message=base.message,
        details=base.details,
        timestamp=base.timestamp,
    )
