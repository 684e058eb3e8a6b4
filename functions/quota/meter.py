"""A metered call's budget: admit before the call (a short wait is slept in place, a longer
one raises QuotaExceeded for the workflow to park), then tell the store what the answer cost
and what the upstream said about its limits."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping

import msgspec

from dropwire.functions.platform.context import QuotaPort
from dropwire.functions.quota.headers import observations
from dropwire.functions.quota.settings import QuotaSettings
from dropwire.storage.errors import QuotaExceeded
from dropwire.storage.quota import Grant


class Meter:
    def __init__(self, port: QuotaPort, settings: QuotaSettings, service: str) -> None:
        self.port, self.settings, self.service = port, settings, service
        self.quota = settings.service(service)
        self.limits = self.quota.limits()

    def estimate(self, body: dict[str, Any]) -> tuple[int, float]:
        """Tokens and cost to count a request for before its answer: its max_tokens plus about a
        token per 4 characters of its body."""
        output = body.get("max_completion_tokens") or body.get("max_tokens") or self.quota.default_max_tokens
        prompt = len(msgspec.json.encode(body.get("messages") or body.get("prompt") or body.get("input") or "")) // 4
        output = int(output) if isinstance(output, int) and output > 0 else self.quota.default_max_tokens
        return prompt + output, self.quota.cost(str(body.get("model", "")), prompt, output)

    async def admit(self, body: dict[str, Any]) -> Grant:
        tokens, cost = self.estimate(body)
        while True:
            try:
                return await asyncio.to_thread(self.port.acquire, self.service, self.limits, tokens=tokens, cost_usd=cost)
            except QuotaExceeded as exc:
                if exc.wait > self.settings.wait_in_place_seconds:
                    raise
                await asyncio.sleep(exc.wait)

    async def answered(self, grant: Grant, body: dict[str, Any], status: int | None, headers: Mapping[str, str],
                       input_tokens: int = 0, output_tokens: int = 0, *, usage_known: bool = True) -> None:
        """Settle the grant and note the upstream's limits; a 429 takes the request back. With
        `usage_known` False (an answer streamed through unread) the admission's estimate stands."""
        refused = status == 429
        seen = observations(headers, time.time(), service=self.service, refused=refused)
        if seen:
            await asyncio.to_thread(self.port.observe, self.service, seen)
        sent = status is not None and not refused
        if sent and not usage_known:
            return
        cost = self.quota.cost(str(body.get("model", "")), input_tokens, output_tokens) if sent else 0.0
        await asyncio.to_thread(self.port.settle, grant, sent=sent, input_tokens=input_tokens,
                                output_tokens=output_tokens, cost_usd=cost)
