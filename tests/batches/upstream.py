"""An OpenAI-compatible HTTP server for the batch tests, standing in for the runtime's /v1
until the text-generation runtime is merged: real HTTP on a loopback port, deterministic
answers (the prompt echoed, tokens counted as words), and behaviour a test asks for in the
prompt itself: "fail" answers 400, "flaky" answers 429 (retry-after-ms) the first time,
"slow" waits `slow_seconds`. It counts every answer per prompt, so a test can tell what ran.
`hold_models()` makes GET /v1/models wait until `release_models()` (a batch then stays in
validating, which asks it for the models served)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.params import JSONBody

from tests.platform.conftest import free_port

MODEL = "echo-1"


class Upstream:
    def __init__(self, slow_seconds: float = 0.0, port: int | None = None) -> None:
        self.slow_seconds = slow_seconds
        self.answered: Counter[str] = Counter()
        self.priorities: Counter[str] = Counter()
        self._flaky_seen: set[str] = set()
        self._models_open = threading.Event()
        self._models_open.set()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def _app(self) -> Litestar:
        upstream = self

        @get("/v1/models")
        async def models() -> dict:
            await asyncio.to_thread(upstream._models_open.wait, 30)
            return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "tests"}]}

        async def answer(request: Request, body: dict[str, Any], kind: str) -> Response:
            upstream.priorities[request.headers.get("x-dropwire-priority", "interactive")] += 1
            prompt = _prompt(body)
            if body.get("model") != MODEL:
                return Response({"error": {"message": f"model {body.get('model')!r} not found"}}, status_code=404)
            if "flaky" in prompt and prompt not in upstream._flaky_seen:
                upstream._flaky_seen.add(prompt)
                return Response({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after-ms": "20"})
            if "slow" in prompt:
                await asyncio.sleep(upstream.slow_seconds)
            if "fail" in prompt:
                return Response({"error": {"message": f"cannot answer {prompt!r}", "type": "invalid_request_error"}},
                                status_code=400)
            upstream.answered[prompt] += 1
            words = len(prompt.split())
            usage = {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words}
            if kind == "embeddings":
                return Response({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [float(words)]}],
                                 "model": MODEL, "usage": {"prompt_tokens": words, "total_tokens": words}}, status_code=200)
            message = {"role": "assistant", "content": f"echo: {prompt}"}
            return Response({"id": f"chatcmpl-{abs(hash(prompt))}", "object": "chat.completion", "created": int(time.time()),
                             "model": MODEL, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                             "usage": usage}, status_code=200)

        @post("/v1/chat/completions")
        async def chat(request: Request, data: JSONBody[dict[str, Any]]) -> Response:
            return await answer(request, data, "chat")

        @post("/v1/embeddings")
        async def embeddings(request: Request, data: JSONBody[dict[str, Any]]) -> Response:
            return await answer(request, data, "embeddings")

        return Litestar([models, chat, embeddings], logging_config=None)

    def hold_models(self) -> None:
        self._models_open.clear()

    def release_models(self) -> None:
        self._models_open.set()

    def start(self) -> Upstream:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            assert time.monotonic() < deadline, "the test upstream did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def _prompt(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("input", body.get("prompt", "")))


def chat_line(custom_id: str, prompt: str, *, url: str = "/v1/chat/completions", model: str = MODEL) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": prompt}]}}


def serve(port: int, slow_seconds: float = 0.0) -> None:
    """Run the server in this process until it is stopped (benchmarks run it on its own core)."""
    server = Upstream(slow_seconds=slow_seconds, port=port)
    server._server.run()
