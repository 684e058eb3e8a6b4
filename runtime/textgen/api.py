"""The /v1 routes (OpenAI-compatible) of the runtime's Litestar app.

    POST /v1/chat/completions   POST /v1/completions   POST /v1/embeddings   GET /v1/models

Interactive by default; the request header ``X-Dropwire-Priority: background`` puts a
request on the background lane. ``stream: true`` answers server-sent events
(``data: {chunk}`` ... ``data: [DONE]``). Errors answer OpenAI's error body (what its
clients read) with the product's error fields beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Router, get, post
from litestar.params import Parameter
from litestar.response import Stream

from dropwire.functions.kit.headers import PRIORITY_HEADER
from dropwire.functions.kit.openai_errors import openai_exception_handlers
from dropwire.functions.kit.openapi import error_responses
from dropwire.runtime.textgen.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModelList,
)
from dropwire.runtime.textgen.rate_limit import RequestRateLimit, rate_limit_middleware
from dropwire.runtime.textgen.serving import TextGenService, lane_of

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
        exception_handlers=openai_exception_handlers(),
        middleware=[rate_limit_middleware(service.rate_limit)] if service.rate_limit else [],
    )


class EventStream(Stream):
    """A Stream whose own media type wins over the handler's (JSON, for the OpenAPI doc of
    the non-streaming answer): Litestar 2 prefers the handler's."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return super().to_asgi_response(*args, **{**kwargs, "media_type": self.media_type})


def _stream(events: AsyncIterator[bytes]) -> Stream:
    return EventStream(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _disconnected(request: Request):
    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait
