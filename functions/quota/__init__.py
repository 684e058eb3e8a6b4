"""Quotas of metered services: limits from settings, upstream rate-limit headers, admission."""


# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.platform.domain import Domain, SettingsSection
from dropwire.functions.quota.settings import QuotaSettings as _QuotaSettings

DOMAIN = Domain("quota", api="dropwire.functions.quota.api", settings=SettingsSection("quota", _QuotaSettings))
