"""A reverse proxy on loopback in front of the real Label Studio that loses the answer to
chosen import requests: it forwards them (Label Studio stores the tasks) and then answers 502,
as a gateway whose upstream timed out would. Everything else passes through unchanged."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from litestar import Litestar, Request, Response, route
from litestar.params import FromPath

from tests.platform.conftest import free_port


class LossyProxy:
    def __init__(self, target: str, lose_imports: set[int]) -> None:
        #: which import requests (1st, 2nd, ...) lose their answer
        self.lose_imports = lose_imports
        self.imports = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._target = target
        self._server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def _app(self) -> Litestar:
        proxy = self

        @route("/{path:path}", http_method=["GET", "POST"])
        async def forward(request: Request, path: FromPath[str]) -> Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            async with httpx.AsyncClient(base_url=proxy._target, timeout=60) as client:
                answer = await client.request(request.method, path, params=dict(request.query_params),
                                              content=await request.body(), headers=headers)
            if request.method == "POST" and path.endswith("/import"):
                proxy.imports += 1
                if proxy.imports in proxy.lose_imports:
                    return Response({"detail": "upstream timed out"}, status_code=502)
            return Response(answer.content, status_code=answer.status_code,
                            media_type=answer.headers.get("content-type", "application/json"))

        return Litestar([forward], logging_config=None)

    def start(self) -> LossyProxy:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
