"""A metered service's usage as the API and CLI show it, from the committed quota tables."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import msgspec

from dropwire.functions.kit.errors import NotFound
from dropwire.functions.quota.settings import QuotaSettings, metered_service, quota_settings

Query = Callable[[str, list], list[tuple]]


class LimitUsage(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    limit: float
    used: float
    remaining: float
    resets_at: float


class HourUsage(msgspec.Struct, kw_only=True, frozen=True):
    hour: float
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class UpstreamLimit(msgspec.Struct, kw_only=True, frozen=True):
    metric: str
    limit: int | None
    remaining: int | None
    resets_at: float
    observed_at: float


class QuotaUsage(msgspec.Struct, kw_only=True, frozen=True):
    service: str
    #: Each configured limit: used in its current window (minute or UTC day), what is left, when it resets.
    limits: list[LimitUsage]
    requests_today: int
    tokens_today: int
    cost_today_usd: float
    #: What the upstream last said about its own limits (x-ratelimit-*, Retry-After).
    upstream: list[UpstreamLimit]
    #: The last 24 hours, per hour (hours with no use left out).
    last_24h: list[HourUsage]


def known_services(query: Query, settings: QuotaSettings, metered: tuple[str, ...] = ()) -> list[str]:
    """Services used, configured, or ``metered`` (those the product meters, used yet or not)."""
    used = {row[0] for row in query("SELECT DISTINCT service FROM quota_usage", [])}
    return sorted(used | set(settings.services) | set(metered))


def configured_usage(query: Query, service: str, config: dict[str, Any]) -> QuotaUsage:
    """`usage` under the quota and batches sections of the product's settings (domain_config)."""
    return usage(query, service, quota_settings(config), metered=(metered_service(config),))


def usage(query: Query, service: str, settings: QuotaSettings, now: float | None = None,
          metered: tuple[str, ...] = ()) -> QuotaUsage:
    now = time.time() if now is None else now
    known = known_services(query, settings, metered)
    if service not in known:
        raise NotFound(f"no metered service {service!r}; known: {known} (configure one under quota.services)",
                       service=service)
    minute, day = math.floor(now / 60) * 60, math.floor(now / 86400) * 86400
    (minute_requests, minute_tokens), = query(
        "SELECT coalesce(sum(requests), 0), coalesce(sum(tokens), 0) FROM quota_usage WHERE service = ? "
        "AND minute = to_timestamp(?)", [service, minute])
    (day_requests, day_tokens, day_cost), = query(
        "SELECT coalesce(sum(requests), 0), coalesce(sum(tokens), 0), coalesce(sum(cost_usd), 0) FROM quota_usage "
        "WHERE service = ? AND minute >= to_timestamp(?)", [service, day])
    quota = settings.service(service)
    limits = []
    for name, limit, used, resets in (("requests_per_minute", quota.requests_per_minute, minute_requests, minute + 60),
                                      ("tokens_per_minute", quota.tokens_per_minute, minute_tokens, minute + 60),
                                      ("requests_per_day", quota.requests_per_day, day_requests, day + 86400),
                                      ("tokens_per_day", quota.tokens_per_day, day_tokens, day + 86400),
                                      ("cost_per_day_usd", quota.cost_per_day_usd, day_cost, day + 86400)):
        if limit:
            limits.append(LimitUsage(name=name, limit=limit, used=used, remaining=max(0, limit - used), resets_at=resets))
    upstream = [UpstreamLimit(metric=m, limit=l, remaining=r, resets_at=at, observed_at=seen) for m, l, r, at, seen in query(
        'SELECT metric, "limit", remaining, epoch(reset_at), epoch(observed_at) FROM quota_upstream WHERE service = ? '
        "ORDER BY metric", [service])]
    hours = [HourUsage(hour=h, requests=r, input_tokens=i, output_tokens=o, cost_usd=c) for h, r, i, o, c in query(
        "SELECT epoch(hour), requests, input_tokens, output_tokens, cost_usd FROM quota_usage_hourly WHERE service = ? "
        "AND hour >= to_timestamp(?) ORDER BY hour", [service, now - 86400])]
    return QuotaUsage(service=service, limits=limits, requests_today=day_requests, tokens_today=day_tokens,
                      cost_today_usd=day_cost, upstream=upstream, last_24h=hours)
