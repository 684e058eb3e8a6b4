"""GET /metrics on the gateway (Prometheus text format, prometheus-client), read from the
committed state at each scrape: queue depth by task and status, invocations by outcome,
batch lines by status, workflows by kind and state, and each metered service's quota left."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dropwire.functions.quota import reads as quota_reads
from dropwire.functions.quota.settings import QuotaSettings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Query = Callable[[str, list], list[tuple]]


class GatewayCollector(Collector):
    def __init__(self, query: Query, quota: QuotaSettings) -> None:
        self.query, self.quota = query, quota

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("dropwire_queue_tasks", "Tasks by task name and status", labels=["task", "status"])
        for name, status, count in self.query("SELECT name, status, count(*) FROM tasks GROUP BY name, status", []):
            depth.add_metric([name, status], count)
        yield depth
        calls = CounterMetricFamily("dropwire_invocations", "Handler attempts by function and outcome",
                                    labels=["function", "outcome"])
        for function, outcome, count in self.query(
                "SELECT function, outcome, count(*) FROM invocations GROUP BY function, outcome", []):
            calls.add_metric([function, outcome], count)
        yield calls
        lines = CounterMetricFamily("dropwire_batch_lines", "Batch lines saved, by outcome", labels=["status"])
        for status, count in self.query(
                "SELECT CASE WHEN status_code BETWEEN 200 AND 299 THEN 'completed' ELSE 'failed' END, count(*) "
                "FROM batch_lines GROUP BY 1", []):
            lines.add_metric([status], count)
        yield lines
        flows = GaugeMetricFamily("dropwire_workflows", "Workflows by kind and state", labels=["kind", "state"])
        for kind, state, count in self.query("SELECT kind, state, count(*) FROM entity_states GROUP BY kind, state", []):
            flows.add_metric([kind, state], count)
        yield flows
        remaining = GaugeMetricFamily("dropwire_quota_remaining", "What is left of each limit in its current window",
                                      labels=["service", "limit"])
        used = GaugeMetricFamily("dropwire_quota_used", "What is spent of each limit in its current window",
                                 labels=["service", "limit"])
        for service in quota_reads.known_services(self.query, self.quota):
            usage = quota_reads.usage(self.query, service, self.quota)
            for limit in usage.limits:
                remaining.add_metric([service, limit.name], limit.remaining)
                used.add_metric([service, limit.name], limit.used)
            for seen in usage.upstream:
                if seen.remaining is not None:
                    remaining.add_metric([service, f"upstream_{seen.metric}"], seen.remaining)
        yield from (remaining, used)


def metrics_text(query: Query, quota: QuotaSettings) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(query, quota))
    return generate_latest(registry)
