"""A metered call's budget: admit before the call (a short wait is slept in place, a longer
one raises QuotaExceeded for the workflow to park), then tell the store what the answer cost
and what the upstream said about its limits.

A meter made with `tally=True` (a batch chunk's) counts the requests of a service without
limits itself, while the store says the upstream has told of none, and hands the counts over
in one call per `flush()` (with the chunk's line saves): two control-plane round trips per
request were most of a batch's platform overhead."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from dropwire.functions.kit.errors import QuotaExceeded
from dropwire.functions.platform.context import QuotaPort
from dropwire.functions.quota.headers import observations
from dropwire.functions.quota.settings import QuotaSettings
from dropwire.storage.quota import MINUTE, Grant, Usage


class _Tallied(msgspec.Struct, frozen=True):
    """A request admitted by the meter itself (nothing can refuse it), counted at its answer."""

    minute: float
    tokens: int
    cost_usd: float


class Meter:
    def __init__(self, port: QuotaPort, settings: QuotaSettings, service: str, *, tally: bool = False) -> None:
        self.port, self.settings, self.service = port, settings, service
        self.quota = settings.service(service)
        self.limits = self.quota.limits()
        self._may_tally = tally and self.limits.unlimited
        # Off until the store's first grant says nothing can refuse (its upstream told of no limits).
        self._tallying = False
        self._tally: dict[float, list] = {}

    def estimate(self, body: dict[str, Any]) -> tuple[int, float]:
        """Tokens and cost to count a request for before its answer: its max_tokens plus about a
        token per 4 characters of its body."""
        output = body.get("max_completion_tokens") or body.get("max_tokens") or self.quota.default_max_tokens
        prompt = len(msgspec.json.encode(body.get("messages") or body.get("prompt") or body.get("input") or "")) // 4
        output = int(output) if isinstance(output, int) and output > 0 else self.quota.default_max_tokens
        return prompt + output, self.quota.cost(str(body.get("model", "")), prompt, output)

    async def admit(self, body: dict[str, Any]) -> Grant | _Tallied:
        tokens, cost = self.estimate(body)
        if self._tallying:
            return _Tallied(minute=math.floor(time.time() / MINUTE) * MINUTE, tokens=tokens, cost_usd=cost)
        while True:
            try:
                grant = await asyncio.to_thread(self.port.acquire, self.service, self.limits, tokens=tokens, cost_usd=cost)
            except QuotaExceeded as exc:
                if exc.wait > self.settings.wait_in_place_seconds:
                    raise
                await asyncio.sleep(exc.wait)
                continue
            self._tallying = self._may_tally and not grant.durable
            return grant

    async def answered(self, grant: Grant | _Tallied, body: dict[str, Any], status: int | None, headers: Mapping[str, str],
                       input_tokens: int = 0, output_tokens: int = 0, *, usage_known: bool = True) -> None:
        """Settle the grant and note the upstream's limits; a 429 takes the request back. With
        `usage_known` False (an answer streamed through unread) the admission's estimate stands."""
        refused = status == 429
        seen = observations(headers, time.time(), service=self.service, refused=refused)
        if seen:
            self._tallying = False  # the upstream has limits now: admit each request through the store
            await asyncio.to_thread(self.port.observe, self.service, seen)
        sent = status is not None and not refused
        if isinstance(grant, _Tallied):
            if sent:  # else it never reached the upstream: nothing to count
                spent = ((1, input_tokens + output_tokens, input_tokens, output_tokens,
                          self.quota.cost(str(body.get("model", "")), input_tokens, output_tokens))
                         if usage_known else (1, grant.tokens, 0, 0, grant.cost_usd))
                row = self._tally.setdefault(grant.minute, [0, 0, 0, 0, 0.0])
                for i, value in enumerate(spent):
                    row[i] += value
            return
        if sent and not usage_known:
            return
        cost = self.quota.cost(str(body.get("model", "")), input_tokens, output_tokens) if sent else 0.0
        await asyncio.to_thread(self.port.settle, grant, sent=sent, input_tokens=input_tokens,
                                output_tokens=output_tokens, cost_usd=cost)

    def flush(self) -> None:
        """Hand what this meter counted to the store (one call); the store's answer says whether
        the upstream has told of limits since (then each request is admitted through it again)."""
        if not self._tally:
            return
        usage = [Usage(minute=minute, requests=r, tokens=t, input_tokens=i, output_tokens=o, cost_usd=c)
                 for minute, (r, t, i, o, c) in self._tally.items()]
        self._tally = {}
        if self.port.count(self.service, usage):
            self._tallying = False
