"""What an OpenAI-compatible upstream says about its rate limits: `x-ratelimit-limit-*`,
`x-ratelimit-remaining-*`, `x-ratelimit-reset-*` (durations such as `6m0s`, `1.5s`, `12ms`),
`Retry-After` (seconds or an HTTP date) and `retry-after-ms`. A malformed or contradictory
header is logged once per service and header and ignored: the local limit stands."""

from __future__ import annotations

import email.utils
import logging
import re
from collections.abc import Mapping

from dropwire.storage.quota import Observation

log = logging.getLogger("dropwire.quota")

METRICS = ("requests", "tokens")
_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?(?:(?P<s>\d+(?:\.\d+)?)s)?"
                       r"(?:(?P<ms>\d+(?:\.\d+)?)ms)?$")
_logged: set[tuple[str, str]] = set()


def duration_seconds(text: str) -> float | None:
    """'6m0s' -> 360.0, '12ms' -> 0.012, '1h2m3.5s' -> 3723.5, '2' -> 2.0; None when malformed."""
    text = text.strip()
    try:
        return _non_negative(float(text))
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not text or match is None or not any(match.groupdict().values()):
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0) + parts.get("ms", 0) / 1000


def _non_negative(value: float) -> float | None:
    return value if value >= 0 and value == value and value != float("inf") else None


def _warn_once(service: str, header: str, value: str, expected: str) -> None:
    if (service, header) not in _logged:
        _logged.add((service, header))
        log.warning("%s: ignored rate-limit header %s: %r (expected %s); the local limit stands", service, header,
                    value, expected)


def retry_after_seconds(headers: Mapping[str, str], now: float, service: str = "") -> float | None:
    """What retry-after-ms / Retry-After ask for, in seconds; None when absent or malformed."""
    raw = headers.get("retry-after-ms")
    if raw is not None:
        try:
            value = _non_negative(float(raw) / 1000)
        except ValueError:
            value = None
        if value is not None:
            return value
        _warn_once(service, "retry-after-ms", raw, "milliseconds >= 0")
    raw = headers.get("retry-after")
    if raw is not None:
        try:
            value = _non_negative(float(raw))
        except ValueError:
            when = email.utils.parsedate_to_datetime(raw) if _looks_like_date(raw) else None
            value = None if when is None or when.tzinfo is None else max(0.0, when.timestamp() - now)
        if value is not None:
            return value
        _warn_once(service, "retry-after", raw, "seconds >= 0 or an HTTP date")
    return None


def _looks_like_date(raw: str) -> bool:
    try:
        return email.utils.parsedate_to_datetime(raw) is not None
    except (TypeError, ValueError, IndexError):
        return False


def _count(headers: Mapping[str, str], name: str, service: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        _warn_once(service, name, raw, "a whole number >= 0")
        return None
    return value


def observations(headers: Mapping[str, str], now: float, *, service: str, refused: bool) -> list[Observation]:
    """The upstream's limits as observations (one per metric it told a reset for); when it
    refused the request (429), the block until Retry-After too."""
    found: list[Observation] = []
    for metric in METRICS:
        limit = _count(headers, f"x-ratelimit-limit-{metric}", service)
        remaining = _count(headers, f"x-ratelimit-remaining-{metric}", service)
        raw_reset = headers.get(f"x-ratelimit-reset-{metric}")
        reset = None if raw_reset is None else duration_seconds(raw_reset)
        if raw_reset is not None and reset is None:
            _warn_once(service, f"x-ratelimit-reset-{metric}", raw_reset, "a duration such as 6m0s, 1.5s or 12ms")
        if limit is not None and remaining is not None and remaining > limit:
            _warn_once(service, f"x-ratelimit-remaining-{metric}", str(remaining),
                       f"at most x-ratelimit-limit-{metric} ({limit})")
            continue
        if remaining is None or reset is None:
            continue
        found.append(Observation(metric=metric, limit=limit, remaining=remaining, reset_at=now + reset))
    if refused:
        wait = retry_after_seconds(headers, now, service)
        if wait is None:
            told = [o.reset_at - now for o in found if o.remaining == 0]
            wait = max(told) if told else None
        if wait is not None:
            found = [o for o in found if o.metric != "requests"]
            found.append(Observation(metric="requests", limit=None, remaining=0, reset_at=now + wait))
    return found
