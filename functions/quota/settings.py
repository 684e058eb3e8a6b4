"""The quota domain's settings (section `quota`: DROPWIRE_QUOTA__<FIELD>): limits per metered
service, prices per model, and how long a workflow waits in place before it parks."""

from __future__ import annotations

from typing import Any

import msgspec

from dropwire.functions.batches import BatchSettings
from dropwire.storage.quota import Limits


class ServiceQuota(Limits, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One metered service (e.g. the batch upstream): its limits as the store applies them
    (storage/quota.py Limits; 0 means no limit of that kind, the daily cost budget from
    `prices`), and how a request is priced and counted before its answer."""

    # Tokens a request is counted for before its answer tells: its max_tokens (or this
    # when it names none) plus about one token per 4 characters of its body.
    default_max_tokens: int = 256
    # model -> [USD per 1K input tokens, USD per 1K output tokens]; "*" for any other model.
    prices: dict[str, list[float]] = msgspec.field(default_factory=dict)

    def limits(self) -> Limits:
        """The limits alone: what the store is sent."""
        return Limits(**{name: getattr(self, name) for name in Limits.__struct_fields__})

    def price(self, model: str) -> tuple[float, float]:
        found = self.prices.get(model) or self.prices.get("*") or [0.0, 0.0]
        return found[0], found[1]

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        per_input, per_output = self.price(model)
        return (input_tokens * per_input + output_tokens * per_output) / 1000


class QuotaSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # service name -> its limits (from the environment as JSON:
    # DROPWIRE_QUOTA__SERVICES='{"batch-upstream": {"requests_per_minute": 60}}').
    services: dict[str, ServiceQuota] = {}
    # A wait up to this long is slept where it arises (pacing); longer, the workflow goes to
    # QUOTA_EXCEEDED and its work is parked on the queue's durable timer until the reset.
    wait_in_place_seconds: float = 2.0
    # A park lasts at most this long, then the workflow looks again (a clock moved or a
    # reset that never came does not park it forever).
    max_park_seconds: float = 3600.0
    # Parked chunks of one workflow wake this far apart, so a reset does not wake them all at once.
    wake_spread_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.wait_in_place_seconds < 0:
            raise ValueError(f"quota.wait_in_place_seconds must be >= 0, got {self.wait_in_place_seconds}")
        if self.max_park_seconds <= 0:
            raise ValueError(f"quota.max_park_seconds must be > 0 (a park needs a timer), got {self.max_park_seconds}")
        if self.wake_spread_seconds < 0:
            raise ValueError(f"quota.wake_spread_seconds must be >= 0, got {self.wake_spread_seconds}")
        for name, service in self.services.items():
            where = f"quota.services.{name}"
            for field in ("requests_per_minute", "tokens_per_minute", "requests_per_day", "tokens_per_day",
                          "cost_per_day_usd"):
                if getattr(service, field) < 0:
                    raise ValueError(f"{where}.{field} must be >= 0 (0: no limit), got {getattr(service, field)}")
            if service.request_burst < 1:
                raise ValueError(f"{where}.request_burst must be at least 1, got {service.request_burst}")
            if service.default_max_tokens < 1:
                raise ValueError(f"{where}.default_max_tokens must be at least 1, got {service.default_max_tokens}")
            for field in ("tokens_per_minute", "tokens_per_day"):
                limit = getattr(service, field)
                if limit and limit < service.default_max_tokens:
                    raise ValueError(f"{where}.{field} is {limit}, below one request's tokens "
                                     f"({where}.default_max_tokens = {service.default_max_tokens}): no request could run")
            if service.requests_per_day and service.requests_per_minute > service.requests_per_day:
                raise ValueError(f"{where}.requests_per_minute ({service.requests_per_minute}) is above "
                                 f"{where}.requests_per_day ({service.requests_per_day})")
            for model, price in service.prices.items():
                if len(price) != 2 or any(p < 0 for p in price):
                    raise ValueError(f"{where}.prices.{model} must be [USD per 1K input, USD per 1K output] tokens, "
                                     f"both >= 0, got {price}")
            if service.cost_per_day_usd and not service.prices:
                raise ValueError(f"{where}.cost_per_day_usd is set but {where}.prices is empty: nothing would cost")

    def service(self, name: str) -> ServiceQuota:
        """A service's limits; one not configured is metered (usage kept) but not limited."""
        return self.services.get(name) or ServiceQuota()


def quota_settings(config: dict[str, Any]) -> QuotaSettings:
    return msgspec.convert(config.get("quota", {}), QuotaSettings)


def metered_service(config: dict[str, Any]) -> str:
    """The service batch lines and direct /v1 requests are metered under (batches.quota_service):
    known before its first request, limits or not."""
    return config.get("batches", {}).get("quota_service", BatchSettings().quota_service)
