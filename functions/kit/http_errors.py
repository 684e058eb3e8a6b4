"""Every HTTP error of every dropwire app in one JSON shape, {error, message, details,
timestamp}: errors raised on purpose keep their code and status, Litestar's own (404, 405,
validation, 413, ...) are translated, anything unexpected is logged and answered 500."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from dropwire.functions.kit.errors import DropwireError, ErrorBody, error_body, error_body_for

log = logging.getLogger("dropwire.http")


def exception_handlers(too_large: Callable[[], DropwireError] | None = None) -> dict:
    """Litestar exception handlers; `too_large` names the upload limit in 413 answers."""

    def ours(_: Request, exc: DropwireError) -> Response[ErrorBody]:
        if exc.http_status >= 500 and exc.http_status != 503:  # 503: shutting down or busy, expected
            log.error("%s: %s", exc.code, exc.message)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(error_body_for(exc), status_code=exc.http_status, headers=headers)

    def litestars(request: Request, exc: HTTPException) -> Response[ErrorBody]:
        if exc.status_code == 413 and too_large is not None:
            return ours(request, too_large())
        if isinstance(exc, ValidationException):
            # The message names what is wrong, not only that something is.
            said = "; ".join(f"{e.get('source', '')} {e.get('key', '')}: {e.get('message', '')}".strip()
                             for e in exc.extra if isinstance(e, dict)) if isinstance(exc.extra, list) else ""
            body = error_body("invalid_request", f"{exc.detail}: {said}" if said else exc.detail,
                              {"errors": exc.extra or []})
        else:
            code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
            body = error_body(code, exc.detail)
        return Response(body, status_code=exc.status_code, headers=exc.headers)

    def unexpected(request: Request, exc: Exception) -> Response[ErrorBody]:
        log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return Response(error_body("internal_error", f"unexpected error: {type(exc).__name__}: {exc}"), status_code=500)

    return {DropwireError: ours, HTTPException: litestars, Exception: unexpected}
