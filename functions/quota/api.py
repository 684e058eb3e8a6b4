"""A metered service's quota over HTTP: GET /api/v1/quota/usage/{service} (limits, used,
remaining, reset times, cost today, what the upstream said, the last 24 hours per hour)."""

from __future__ import annotations

from litestar import Router, get
from litestar.params import FromPath

from dropwire.functions.kit.openapi import error_responses
from dropwire.functions.platform.api_ports import GATEWAY_ERRORS, ApiPorts
from dropwire.functions.quota import reads


def build_router(ports: ApiPorts) -> Router:
    @get("/quota/usage/{service:str}", sync_to_thread=True, responses=error_responses(400, 404, *GATEWAY_ERRORS))
    def quota_usage(service: FromPath[str]) -> reads.QuotaUsage:
        return reads.configured_usage(ports.store.query, service, ports.config)

    return Router("/api/v1", route_handlers=[quota_usage], tags=["quota"])
