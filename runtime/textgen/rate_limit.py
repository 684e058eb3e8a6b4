"""An optional rate limit on the /v1 POST routes, answered as OpenAI's API answers it: every
admitted request's answer carries x-ratelimit-limit-requests, x-ratelimit-remaining-requests
and x-ratelimit-reset-requests (as OpenAI: the time until the limit is whole again, a duration
such as `1.5s`), and a request past the limit gets 429 with Retry-After and retry-after-ms
(the time until one request fits) and OpenAI's error object (code rate_limit_exceeded).
The window is pyrate-limiter's sliding log: never more than the limit in any window."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import msgspec
from pyrate_limiter import InMemoryBucket, Rate, RateItem

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.kit.openai_errors import openai_error_body


class RateLimited(DropwireError):
    http_status = 429
    code = "rate_limit_exceeded"


@dataclass
class Decision:
    allowed: bool
    remaining: int
    #: Until the window is empty again (every admitted request aged out).
    reset_s: float
    #: Until one more request fits.
    retry_s: float

    def headers(self, limit: int) -> list[tuple[bytes, bytes]]:
        out = [(b"x-ratelimit-limit-requests", str(limit).encode()),
               (b"x-ratelimit-remaining-requests", str(self.remaining).encode()),
               (b"x-ratelimit-reset-requests", _duration(self.reset_s).encode())]
        if not self.allowed:
            out += [(b"retry-after", str(max(1, math.ceil(self.retry_s))).encode()),
                    (b"retry-after-ms", str(max(1, math.ceil(self.retry_s * 1000))).encode())]
        return out


def _duration(seconds: float) -> str:
    """OpenAI's spelling: 12ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


class RequestRateLimit:
    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_ms = limit, int(window_s * 1000)
        self._bucket = InMemoryBucket([Rate(limit, self.window_ms)])
        self.admitted = 0
        self.refused = 0

    def admit(self) -> Decision:
        now = int(time.time() * 1000)
        self._bucket.leak(now)
        item = RateItem("request", now)
        allowed = self._bucket.put(item)
        items = self._bucket.items
        in_window = [i for i in items if i.timestamp > now - self.window_ms]
        oldest = in_window[0].timestamp if in_window else now
        newest = in_window[-1].timestamp if in_window else now
        retry_s = max(0.0, (oldest + self.window_ms - now) / 1000)
        reset_s = max(0.0, (newest + self.window_ms - now) / 1000)
        if allowed:
            self.admitted += 1
        else:
            self.refused += 1
        return Decision(allowed, max(0, self.limit - len(in_window)), reset_s, retry_s)


def rate_limit_middleware(limit: RequestRateLimit):
    """ASGI middleware for the /v1 router: POSTs are admitted or answered 429."""

    def factory(app):
        async def middleware(scope, receive, send):
            if scope["type"] != "http" or scope.get("method") != "POST":
                await app(scope, receive, send)
                return
            decision = limit.admit()
            headers = decision.headers(limit.limit)
            if not decision.allowed:
                error = RateLimited(f"rate limit reached: {limit.limit} requests per {limit.window_ms / 1000:g}s; try "
                                    f"again in {decision.retry_s:.3g}s", limit=limit.limit)
                body = msgspec.json.encode(openai_error_body(error))
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), *headers]})
                await send({"type": "http.response.body", "body": body})
                return

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *headers]}
                await send(message)

            await app(scope, receive, send_with_headers)

        return middleware

    return factory
