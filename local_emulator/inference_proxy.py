"""The gateway's forwarding of direct inference requests (/v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/models) to the OpenAI-compatible runtime, on its
interactive lane, so one base_url serves a client's batches and its direct requests.
Answers (streamed ones included) pass through as they come; pooled connections. With a meter,
each POST first acquires its budget from the same quota as the batch lines (a spent quota is a
429 with Retry-After in the one error shape), and the runtime's rate-limit headers update it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import msgspec
from litestar import Request, Router, get, post
from litestar.background_tasks import BackgroundTask
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.response import Stream

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.kit.headers import PRIORITY_HEADER
from dropwire.functions.kit.openai_errors import openai_exception_handlers
from dropwire.functions.kit.openapi import body_operation, error_responses
from dropwire.functions.platform.api_ports import GATEWAY_ERRORS
from dropwire.functions.quota.meter import Meter

FORWARDED_POSTS = ["/chat/completions", "/completions", "/embeddings"]
# Headers that describe one hop's connection, not the answer.
HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})


# What the runtime answers (its error body carries OpenAI's error object), beside the gateway's own.
FORWARDED = {400: "The runtime refused the request: a bad parameter, or a prompt longer than the model's context "
                  "(OpenAI's error object in error, with param naming the field)",
             404: "The runtime serves no such model for this endpoint",
             502: "The runtime did not answer",
             429: "The quota of batches.quota_service is spent (quota.services); Retry-After says when it resets",
             504: "The runtime did not finish within its runtime.textgen.request_timeout_s"}
REQUEST = body_operation("The OpenAI request, passed to the runtime as sent (see the runtime's /schema for its fields)",
                         {"application/json": Schema(type=OpenAPIType.OBJECT)})


class RuntimeUnavailable(DropwireError):
    http_status = 502
    code = "runtime_unavailable"


def build_inference_proxy(base_url: str, timeout_seconds: float,
                          meter: Meter | None = None) -> tuple[Router, Callable[[], Awaitable[None]]]:
    """The router, and what closes its connections at shutdown. `base_url`: the runtime's
    OpenAI-compatible root, e.g. http://127.0.0.1:8765/v1."""
    base = base_url.rstrip("/")
    clients: list[httpx.AsyncClient] = []

    def client() -> httpx.AsyncClient:
        # Made on first use, inside the server's event loop.
        if not clients:
            clients.append(httpx.AsyncClient(timeout=timeout_seconds))
        return clients[0]

    async def forward(request: Request, method: str) -> Stream:
        path = request.url.path.removeprefix("/v1")
        headers = {"content-type": request.headers.get("content-type", "application/json"),
                   # A direct request goes on the interactive lane unless it asks otherwise.
                   PRIORITY_HEADER: request.headers.get(PRIORITY_HEADER, "interactive")}
        content = await request.body() if method == "POST" else None
        outgoing = client().build_request(method, base + path, content=content, headers=headers,
                                          params=request.query_params.dict())
        body, grant = {}, None
        if meter is not None and content is not None:
            try:
                body = msgspec.json.decode(content)
            except msgspec.DecodeError:
                body = {}  # the runtime answers what is wrong with it
            grant = await meter.admit(body if isinstance(body, dict) else {})  # QuotaExceeded: 429
        try:
            answer = await client().send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            if grant is not None and meter is not None:
                await meter.answered(grant, body, None, {})
            raise RuntimeUnavailable(f"the runtime at {base} did not answer {method} {path}: {type(exc).__name__}: {exc}",
                                     runtime=base) from None
        if grant is not None and meter is not None:
            await meter.answered(grant, body, answer.status_code, answer.headers, usage_known=False)
        return Stream(answer.aiter_raw(), status_code=answer.status_code,
                      headers={k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS},
                      background=BackgroundTask(answer.aclose))

    @post(FORWARDED_POSTS, status_code=200, operation_class=REQUEST,
          responses=error_responses(400, 404, 413, 429, 502, 504, *GATEWAY_ERRORS, meanings=FORWARDED))
    async def inference(request: Request) -> Stream:
        return await forward(request, "POST")

    @get("/models", responses=error_responses(502, *GATEWAY_ERRORS, meanings=FORWARDED))
    async def models(request: Request) -> Stream:
        return await forward(request, "GET")

    async def close() -> None:
        for opened in clients:
            await opened.aclose()

    return Router("/v1", route_handlers=[inference, models], tags=["inference"],
                  exception_handlers=openai_exception_handlers()), close
