"""The product's domains: what `dropwire emulate` serves by default (settings.functions).

Each domain is a plug-in, one folder whose `__init__.py` exports a `DOMAIN` record
(functions/platform/domain.py); adding a domain is its folder plus one line here. The
FunctionRegistry (functions, triggers, the HTTP API the gateway mounts), the state machines
(functions/machines.py) and the settings sections (local_emulator/settings.py) are derived
from this list; `functions` is built on first use, so that reading the list imports no
handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dropwire.functions import batches, curation, evaluation, forecasts, quota, training_analysis, workflow
from dropwire.functions.platform.domain import build_registry

if TYPE_CHECKING:
    from dropwire.functions.platform.registry import FunctionRegistry

DOMAINS = [
    forecasts.DOMAIN,
    evaluation.DOMAIN,
    batches.DOMAIN,
    training_analysis.DOMAIN,
    curation.DOMAIN,
    workflow.DOMAIN,
    quota.DOMAIN,
]

_registry: FunctionRegistry | None = None


def __getattr__(name: str) -> FunctionRegistry:
    """`functions`, the registry, built (importing every handler) on first use: tools that
    only need the machines import this list without any handler."""
    global _registry
    if name != "functions":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _registry is None:
        _registry = build_registry(DOMAINS)
    return _registry
