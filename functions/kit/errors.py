"""The errors the product raises on purpose. Each message names the thing at fault and what
was expected; the CLI prints it as one line and the HTTP layer maps it to the error body."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec


class DropwireError(Exception):
    """Base of every error dropwire raises on purpose."""

    #: HTTP status the gateway answers with.
    http_status: int = 400
    #: Short machine-readable name, the ``error`` field of the HTTP error body.
    code: str = "bad_request"
    #: Seconds the client should wait before trying again (sent as Retry-After), if any.
    retry_after: int | None = None

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DropwireError):
    http_status = 404
    code = "not_found"


class Conflict(DropwireError):
    http_status = 409
    code = "conflict"


class DatabaseLocked(DropwireError):
    http_status = 503
    code = "database_locked"


class DatabaseUnusable(DropwireError):
    """Corrupt, foreign, or newer than this code."""

    http_status = 500
    code = "database_unusable"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class VersionConflict(Conflict):
    """Another writer changed the entity first; reload and retry."""

    code = "version_conflict"


class StaleLease(Conflict):
    """A worker reported on a task whose lease it no longer holds (fencing token too old)."""

    code = "stale_lease"


class UnknownTask(DropwireError):
    code = "unknown_task"


class QuotaExceeded(DropwireError):
    """A metered service's budget is spent (a local limit, or the upstream's own answer):
    `service`, the `limit` hit (e.g. requests_per_minute, upstream_requests, cost_per_day)
    and `wait`, the seconds until it resets."""

    http_status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, service: str, limit: str, wait: float, **details: object) -> None:
        super().__init__(message, service=service, limit=limit, wait=round(float(wait), 3), **details)
        self.service, self.limit, self.wait = service, limit, float(wait)
        if math.isfinite(self.wait):
            self.retry_after = max(1, math.ceil(self.wait))


class StoreClosed(DropwireError):
    http_status = 503
    code = "store_closed"


class OpenAIError(msgspec.Struct, kw_only=True, frozen=True):
    """OpenAI's error object: what OpenAI's clients read, so the ``error`` of the error body
    on the runtime's OpenAI-compatible routes."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct, frozen=True):
    """The one JSON shape of every HTTP error, in every app of the product. ``error`` is the
    short code, or on the OpenAI-compatible routes OpenAI's error object (with the code in it)."""

    error: str | OpenAIError
    message: str
    details: dict
    timestamp: str


def error_body(code: str, message: str, details: dict | None = None) -> ErrorBody:
    return ErrorBody(
        error=code,
        message=message,
        details=details or {},
        timestamp=datetime.now(UTC).isoformat(),
    )


def error_body_for(exc: DropwireError) -> ErrorBody:
    return error_body(exc.code, exc.message, {k: _jsonable(v) for k, v in exc.details.items()})


def _jsonable(value: object) -> object:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
