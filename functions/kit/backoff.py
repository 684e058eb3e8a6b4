"""How long to wait before trying again: the one backoff every retry loop of the product uses."""

from __future__ import annotations

import random


def equal_jitter(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: a random wait between half and all of
    ``base * 2**(attempt - 1)``, capped at ``cap`` (attempt 1 is the first retry). Half is kept
    so a retry never comes at once; the random half spreads retries that failed together."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
