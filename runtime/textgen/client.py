"""The runtime's /v1 endpoints from Python, for handlers and the batch worker.

Requests go to the background lane unless told otherwise (a handler's work should never
delay an interactive user); the lane travels as the ``X-Dropwire-Priority`` header, so the
official ``openai`` client reaches the same lane with
``extra_headers={"X-Dropwire-Priority": "background"}``. It imports neither torch nor the
runtime's models: a handler only needs httpx.

    client = TextGenClient(context.runtime_url)
    status, body = client.post("/v1/chat/completions", {"model": "m", "messages": [...]})
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.kit.headers import PRIORITY_HEADER

Priority = Literal["interactive", "background"]
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


class RuntimeUnreachable(DropwireError):
    """The runtime did not answer (down, restarting, or the network): worth a retry later."""

    http_status = 503
    code = "runtime_unreachable"


class TextGenClient:
    def __init__(self, base_url: str, *, priority: Priority = "background", timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers={PRIORITY_HEADER: priority})

    def __enter__(self) -> TextGenClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body) of one request, errors included: what a batch
        output line records. Raises only when the runtime cannot be reached."""
        if path not in ENDPOINTS:
            raise DropwireError(f"{path!r} is not a text endpoint of the runtime; expected one of {', '.join(ENDPOINTS)}")
        if body.get("stream"):
            raise DropwireError("the Python client answers whole responses; send stream: false (or leave it out)")
        try:
            response = self._http.post(path, json=body)
        except httpx.TransportError as exc:
            raise RuntimeUnreachable(
                f"the runtime at {self.base_url} did not answer POST {path} ({type(exc).__name__}: {exc}); "
                "is `dropwire runtime serve` running?"
            ) from None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"error": {"message": response.text[:500], "type": "server_error",
                                                    "param": None, "code": None}}

    def models(self) -> list[str]:
        try:
            response = self._http.get("/v1/models")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise RuntimeUnreachable(f"the runtime at {self.base_url} did not list its models ({exc})") from None
        return [model["id"] for model in response.json()["data"]]
