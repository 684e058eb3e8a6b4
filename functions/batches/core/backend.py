"""Where a batch line runs: an OpenAI-compatible endpoint (the runtime's /v1, or a model's own
upstream), called with pooled connections on the background lane, retried with backoff on
408/429/5xx and connection errors, honouring retry-after-ms / Retry-After. With a meter
(functions/quota/meter.py) each attempt first acquires its budget, and a 429 is a quota the
upstream reports, not a failed attempt: the meter notes it, and the next admission waits for
its reset in place or raises QuotaExceeded for the chunk to park."""

from __future__ import annotations

import asyncio
import email.utils
import time
import uuid
from typing import Any

import httpx
import msgspec

from dropwire.functions.kit.backoff import equal_jitter
from dropwire.functions.kit.headers import PRIORITY_HEADER
from dropwire.functions.quota import Meter

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class LineOutcome(msgspec.Struct, kw_only=True, frozen=True):
    status_code: int | None
    request_id: str | None
    #: The answer's JSON bytes (None when no answer came).
    body: bytes | None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Answer(msgspec.Struct):
    usage: _Usage | None = None


def retry_wait(response: httpx.Response | None, attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before attempt `attempt + 1`: what the server asked for, else backoff
    between half and all of base·2^(attempt−1), capped."""
    if response is not None:
        milliseconds = response.headers.get("retry-after-ms")
        if milliseconds:
            try:
                return min(cap, max(0.0, float(milliseconds) / 1000))
            except ValueError:
                pass
        after = response.headers.get("retry-after")
        if after:
            try:
                return min(cap, max(0.0, float(after)))
            except ValueError:
                when = email.utils.parsedate_to_datetime(after) if after else None
                if when is not None:
                    return min(cap, max(0.0, when.timestamp() - time.time()))
    return equal_jitter(attempt, base, cap)


class LineBackend:
    """One pooled async client for a chunk; `call` never raises for an upstream's failure:
    the outcome says what happened."""

    def __init__(self, base_url: str, *, upstreams: dict[str, str] | None = None, api_key: str = "",
                 timeout_seconds: float = 120.0, max_attempts: int = 4, retry_base_seconds: float = 0.5,
                 retry_max_seconds: float = 30.0, max_connections: int = 8, meter: Meter | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.upstreams = {model: url.rstrip("/") for model, url in (upstreams or {}).items()}
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.meter = meter
        headers = {PRIORITY_HEADER: "background"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(timeout=timeout_seconds, headers=headers,
                                         limits=httpx.Limits(max_connections=max_connections,
                                                             max_keepalive_connections=max_connections))

    def target(self, url: str, model: str) -> str:
        """The line's url (e.g. /v1/chat/completions) on the base URL that serves its model."""
        base = self.upstreams.get(model, self.base_url)
        return base + (url[len("/v1"):] if url.startswith("/v1/") else url)

    async def call(self, url: str, body: dict[str, Any]) -> LineOutcome:
        target = self.target(url, str(body.get("model", "")))
        content = msgspec.json.encode(body)
        response: httpx.Response | None = None
        error: tuple[str, str] = ("request_failed", "")
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            response = None
            grant = await self.meter.admit(body) if self.meter is not None else None  # may raise QuotaExceeded
            try:
                response = await self._client.post(target, content=content, headers={"Content-Type": "application/json"})
            except httpx.TimeoutException as exc:
                error = ("timeout", f"no answer from {target} in time: {type(exc).__name__}")
            except httpx.TransportError as exc:
                error = ("request_failed", f"{target}: {type(exc).__name__}: {exc}")
            if grant is not None and self.meter is not None:
                outcome = self._outcome(response, attempt) if response is not None else None
                await self.meter.answered(grant, body, None if response is None else response.status_code,
                                          {} if response is None else response.headers,
                                          outcome.prompt_tokens if outcome else 0, outcome.completion_tokens if outcome else 0)
                if response is not None and response.status_code == 429:
                    attempt -= 1  # a quota, not a failed attempt: the next admission waits for its reset
                    if not _told_wait(response):
                        await asyncio.sleep(retry_wait(None, 1, self.retry_base_seconds, self.retry_max_seconds))
                    continue
            if response is not None and response.status_code not in RETRY_STATUSES:
                return self._outcome(response, attempt)
            if attempt < self.max_attempts:
                await asyncio.sleep(retry_wait(response, attempt, self.retry_base_seconds, self.retry_max_seconds))
        if response is not None:
            return self._outcome(response, self.max_attempts)
        return LineOutcome(status_code=None, request_id=None, body=None, error_code=error[0], error_message=error[1],
                           attempts=self.max_attempts)

    @staticmethod
    def _outcome(response: httpx.Response, attempts: int) -> LineOutcome:
        raw = response.content
        request_id = response.headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
        try:
            usage = msgspec.json.decode(raw, type=_Answer).usage or _Usage()
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Not JSON: keep it as a JSON string so the output line stays valid JSON.
            raw, usage = msgspec.json.encode(raw.decode("utf-8", "replace")), _Usage()
        ok = 200 <= response.status_code < 300
        return LineOutcome(status_code=response.status_code, request_id=request_id, body=raw, attempts=attempts,
                           error_code=None if ok else f"http_{response.status_code}",
                           error_message=None if ok else raw[:500].decode("utf-8", "replace"),
                           prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)

    async def aclose(self) -> None:
        await self._client.aclose()


def _told_wait(response: httpx.Response) -> bool:
    """Whether a 429 said when to come back (else the next admission would not wait)."""
    return any(name in ("retry-after", "retry-after-ms") or name.startswith("x-ratelimit-reset-")
               for name in response.headers)


def served_models(base_url: str, upstreams: dict[str, str], api_key: str = "", timeout: float = 10.0) -> set[str]:
    """Models GET {base_url}/models lists, plus every upstream's model."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=timeout)
    response.raise_for_status()
    return {entry["id"] for entry in response.json().get("data", [])} | set(upstreams)
