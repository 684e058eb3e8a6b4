"""Quotas of metered services: limits from settings, upstream rate-limit headers, admission."""

# What other domains may use of quota (import these from `dropwire.functions.quota`, never from
# its modules). Loaded on first use, so importing the package stays light.
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dropwire.functions.quota.meter import Meter
    from dropwire.functions.quota.settings import quota_settings

__all__ = ["Meter", "quota_settings"]


def __getattr__(name: str) -> Any:
    if name == "Meter":
        from dropwire.functions.quota import meter as module
    elif name == "quota_settings":
        from dropwire.functions.quota import settings as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)

# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.platform.domain import Domain, SettingsSection
from dropwire.functions.quota.settings import QuotaSettings as _QuotaSettings

DOMAIN = Domain("quota", api="dropwire.functions.quota.api", settings=SettingsSection("quota", _QuotaSettings))
