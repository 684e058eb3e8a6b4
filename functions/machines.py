"""Every domain's state machines: what the store validates transitions against, derived from
the catalog's domains. Kept apart from the registry so that tools opening the store import no
handler (a DOMAIN record names its handlers by module path; catalog builds the registry)."""

from __future__ import annotations

from dropwire.functions.catalog import DOMAINS
from dropwire.functions.platform.domain import machines_of

MACHINES = machines_of(DOMAINS)
