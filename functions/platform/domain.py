"""A domain is a plug-in: its folder's `__init__.py` exports one `DOMAIN` record, and
`functions/catalog.py` is the list of them. Everything central that a domain used to be
wired into by hand is derived from that list: the FunctionRegistry (its functions, triggers
and HTTP API; it keeps the list as `domains`), the state machines the store validates
against, the settings sections, and the migrations the store applies after the platform's.

The record names its handler and API modules by path, imported only when used: the store's
tools load the machines without any handler, and handler processes never import Litestar or
the API code."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dropwire.functions.platform.api_ports import ApiFactory
    from dropwire.functions.platform.registry import FunctionRegistry
    from dropwire.storage.state_machine import StateMachine


@dataclass(frozen=True)
class SettingsSection:
    """The domain's section of the settings file: `[name]`, decoded as `type` (a msgspec
    Struct whose every field has a default; the default section is `type()`)."""

    name: str
    type: type


@dataclass(frozen=True)
class Domain:
    name: str
    handlers: str | None = None
    """Module whose `register(registry)` declares the domain's functions and triggers."""
    api: str | None = None
    """Module whose `build_router(ports)` builds the domain's HTTP API (mounted by the gateway)."""
    machines: tuple[StateMachine, ...] = ()
    settings: SettingsSection | None = None
    migrations: str | None = None
    """Package of the domain's own migrations (NNNN_name.sql, numbered 0001.. within it),
    applied after the platform's (storage/migrate.py `chain`)."""

    def register(self, registry: FunctionRegistry) -> None:
        """Declare the domain's functions, triggers and HTTP API on `registry`."""
        if self.handlers is not None:
            importlib.import_module(self.handlers).register(registry)
        if self.api is not None:
            registry.http_api(lazy_api(self.api))


def lazy_api(module: str) -> ApiFactory:
    """The `build_router` of an API module, imported when the gateway builds it."""

    def build_router(ports: Any):
        return importlib.import_module(module).build_router(ports)

    build_router.__qualname__ = f"{module}.build_router"
    return build_router


def build_registry(domains: Iterable[Domain]) -> FunctionRegistry:
    from dropwire.functions.platform.registry import FunctionRegistry

    registry = FunctionRegistry()
    registry.domains = tuple(domains)
    for domain in registry.domains:
        domain.register(registry)
    return registry


def machines_of(domains: Iterable[Domain]) -> tuple[StateMachine, ...]:
    return tuple(machine for domain in domains for machine in domain.machines)


def migrations_of(domains: Iterable[Domain]) -> list[tuple[str, str]]:
    """(domain, migrations package) of the domains bringing migrations, for storage/migrate.py's chain."""
    return [(domain.name, domain.migrations) for domain in domains if domain.migrations is not None]


def settings_sections(domains: Iterable[Domain]) -> list[SettingsSection]:
    return [domain.settings for domain in domains if domain.settings is not None]
