"""The /v1 routes (OpenAI-compatible) of the runtime's Litestar app.

    POST /v1/chat/completions   POST /v1/completions   POST /v1/embeddings   GET /v1/models

Interactive by default; the request header ``X-Dropwire-Priority: background`` puts a
request on the background lane. ``stream: true`` answers server-sent events
(``data: {chunk}`` ... ``data: [DONE]``). Errors answer OpenAI's error body (what its
clients read) with the product's error fields beside it.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any, AsyncIterator

from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import Parameter
from litestar.response import Stream

from dropwire.runtime.textgen.errors import InvalidRequest, openai_error_body
from dropwire.runtime.textgen.rate_limit import RequestRateLimit, rate_limit_middleware
from dropwire.runtime.textgen.protocol import (
    PRIORITY_HEADER,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModelList,
)
from dropwire.runtime.textgen.serving import TextGenService, lane_of
from dropwire.runtime.openapi import error_responses
from dropwire.storage.errors import DropwireError, ErrorBody

log = logging.getLogger("dropwire.http")

# Each answered in the one error body, whose error is OpenAI's error object here (what its clients read).
MEANINGS = {400: "Bad parameters, or a prompt longer than the model's context; error.param names the field",
            404: "No such model served for this endpoint",
            500: "The computation failed on the device",
            503: "The runtime is shutting down",
            504: "Not done within runtime.textgen.request_timeout_s",
            429: "Past runtime.textgen.rate_limit_requests per rate_limit_window_s (when set); Retry-After says when"}
ERRORS = error_responses(400, 404, 413, 429, 500, 503, 504, meanings=MEANINGS)
STREAM_DOC = "With stream: true, text/event-stream: data: {chunk} events, then data: [DONE]."
Priority = Parameter(header=PRIORITY_HEADER, required=False, description="'background' for the background lane")


def textgen_router(service: TextGenService) -> Router:
    @post("/chat/completions", status_code=200, responses=ERRORS, description=STREAM_DOC)
    async def chat_completions(
        request: Request, data: ChatCompletionRequest, priority: str | None = Priority
    ) -> ChatCompletion:
        answer = await service.chat(data, lane_of(priority), _disconnected(request))
        return _stream(answer) if isinstance(answer, AsyncIterator) else answer  # type: ignore[return-value]

    @post("/completions", status_code=200, responses=ERRORS, description=STREAM_DOC)
    async def completions(request: Request, data: CompletionRequest, priority: str | None = Priority) -> Completion:
        answer = await service.complete(data, lane_of(priority), _disconnected(request))
        return _stream(answer) if isinstance(answer, AsyncIterator) else answer  # type: ignore[return-value]

    @post("/embeddings", status_code=200, responses=ERRORS)
    async def embeddings(data: EmbeddingRequest, priority: str | None = Priority) -> EmbeddingList:
        return await service.embeddings(data, lane_of(priority))

    @get("/models", responses=error_responses(500, 503, meanings=MEANINGS))
    async def models() -> ModelList:
        return service.list_models()

    settings = service.settings
    service.rate_limit = (RequestRateLimit(settings.rate_limit_requests, settings.rate_limit_window_s)
                          if settings.rate_limit_requests else None)
    return Router(
        "/v1",
        route_handlers=[chat_completions, completions, embeddings, models],
        exception_handlers=exception_handlers(),
        middleware=[rate_limit_middleware(service.rate_limit)] if service.rate_limit else [],
    )


class EventStream(Stream):
    """A Stream whose own media type wins over the handler's (JSON, for the OpenAPI doc of
    the non-streaming answer): Litestar 2 prefers the handler's."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return super().to_asgi_response(*args, **{**kwargs, "media_type": self.media_type})


def _stream(events: AsyncIterator[bytes]) -> Stream:
    return EventStream(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _disconnected(request: Request):  # noqa: ANN202 (an awaitable factory)
    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait


def _param_of(message: str, key: str | None) -> str | None:
    """The request field a validation message is about ("... - at `$.messages[0].role`",
    "Object missing required field `messages`"), else Litestar's key unless it is the body."""
    found = re.search(r"at `\$\.([^`]+)`", message) or re.search(r"field `([^`]+)`", message)
    if found:
        return found.group(1)
    return key if key and key != "data" else None


def exception_handlers() -> dict:
    def ours(_: Request, exc: DropwireError) -> Response[ErrorBody]:
        if exc.http_status >= 500 and exc.http_status != 503:
            log.error("%s: %s", exc.code, exc.message)
        return Response(openai_error_body(exc), status_code=exc.http_status)

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
