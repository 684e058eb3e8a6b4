"""GET /metrics on the gateway (Prometheus text format, prometheus-client), read from the
committed state at each scrape: queue depth by task and status, invocations by outcome,
batch lines by status, workflows by kind and state, and each metered service's quota left;
and, from the event router's memory (since the process started), each event source's events
that could not be admitted: every failure counted, and those failing now; and, from the
running folder source, the files its reconciliation admitted (the watcher had not reported
them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dropwire.functions.quota import reads as quota_reads
from dropwire.functions.quota.settings import QuotaSettings
from dropwire.local_emulator.router import AdmissionHealth

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Query = Callable[[str, list], list[tuple]]
Recovered = Callable[[], Mapping[str, int]]
RECONCILIATIONS = ("start", "overflow", "periodic")


class GatewayCollector(Collector):
    def __init__(self, query: Query, quota: QuotaSettings, admission: AdmissionHealth | None = None,
                 recovered: Recovered | None = None) -> None:
        self.query, self.quota, self.admission, self.recovered = query, quota, admission, recovered

    def _grouped(self, family: type, name: str, documentation: str, labels: list[str], sql: str) -> Any:
        """One metric family from a query whose rows are its label values then a count."""
        metric = family(name, documentation, labels=labels)
        for *values, count in self.query(sql, []):
            metric.add_metric(list(values), count)
        return metric

    def collect(self) -> Iterator[Any]:
        yield self._grouped(GaugeMetricFamily, "dropwire_queue_tasks", "Tasks by task name and status", ["task", "status"],
                            "SELECT name, status, count(*) FROM tasks GROUP BY name, status")
        yield self._grouped(CounterMetricFamily, "dropwire_invocations", "Handler attempts by function and outcome",
                            ["function", "outcome"],
                            "SELECT function, outcome, count(*) FROM invocations GROUP BY function, outcome")
        yield self._grouped(CounterMetricFamily, "dropwire_batch_lines", "Batch lines saved, by outcome", ["status"],
                            "SELECT CASE WHEN status_code BETWEEN 200 AND 299 THEN 'completed' ELSE 'failed' END, "
                            "count(*) FROM batch_lines GROUP BY 1")
        yield self._grouped(GaugeMetricFamily, "dropwire_workflows", "Workflows by kind and state", ["kind", "state"],
                            "SELECT kind, state, count(*) FROM entity_states GROUP BY kind, state")
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
        if self.admission is not None:
            yield from self._admission(self.admission)
        if self.recovered is not None:
            counts = dict(self.recovered())
            recovered = CounterMetricFamily("dropwire_folder_recovered",
                                            "Files of the folder bucket admitted by its reconciliation, not by a watch "
                                            "event (one per function fired), by when it ran", labels=["reconciliation"])
            for when in RECONCILIATIONS:
                recovered.add_metric([when], counts.get(when, 0))
            yield recovered

    @staticmethod
    def _admission(admission: AdmissionHealth) -> Iterator[Any]:
        failures = CounterMetricFamily("dropwire_event_admission_failures",
                                       "Object events a source could not admit, every attempt counted", labels=["source"])
        failing = GaugeMetricFamily("dropwire_events_not_admitted",
                                    "Object events a source could not admit and that have not been admitted since",
                                    labels=["source"])
        for source in admission.sources():
            failures.add_metric([source.source], source.failures)
            failing.add_metric([source.source], len(source.failing))
        yield from (failures, failing)


def metrics_text(query: Query, quota: QuotaSettings, admission: AdmissionHealth | None = None,
                 recovered: Recovered | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(query, quota, admission, recovered))
    return generate_latest(registry)
