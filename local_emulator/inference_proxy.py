"""The gateway's forwarding of direct inference requests (/v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/models) to the OpenAI-compatible runtime, on its
interactive lane, so one base_url serves a client's batches and its direct requests.
Answers (streamed ones included) pass through as they come; pooled connections."""

from __future__ import annotations

from typing import Awaitable, Callable

import httpx
from litestar import Request, Router, get, post
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from dropwire.storage.errors import DropwireError

FORWARDED_POSTS = ["/chat/completions", "/completions", "/embeddings"]
PRIORITY_HEADER = "x-dropwire-priority"
# Headers that describe one hop's connection, not the answer.
HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})


class RuntimeUnavailable(DropwireError):
    http_status = 502
    code = "runtime_unavailable"


def build_inference_proxy(base_url: str, timeout_seconds: float) -> tuple[Router, Callable[[], Awaitable[None]]]:
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
        outgoing = client().build_request(method, base + path, content=await request.body() if method == "POST" else None,
                                          headers=headers, params=request.query_params.dict())
        try:
            answer = await client().send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            raise RuntimeUnavailable(f"the runtime at {base} did not answer {method} {path}: {type(exc).__name__}: {exc}",
                                     runtime=base) from None
        return Stream(answer.aiter_raw(), status_code=answer.status_code,
                      headers={k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS},
                      background=BackgroundTask(answer.aclose))

    @post(FORWARDED_POSTS, status_code=200, include_in_schema=True)
    async def inference(request: Request) -> Stream:
        return await forward(request, "POST")

    @get("/models")
    async def models(request: Request) -> Stream:
        return await forward(request, "GET")

    async def close() -> None:
        for opened in clients:
            await opened.aclose()

    return Router("/v1", route_handlers=[inference, models], tags=["inference"]), close
