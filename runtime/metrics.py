"""GET /metrics on the runtime (Prometheus text format, prometheus-client): its lanes (work
waiting and on the device per lane, completed per lane), cache hit rates, and the optional
rate limit of its /v1 routes. Read from the runtime's own stats at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dropwire.runtime.forecast_schemas import Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RuntimeCollector(Collector):
    def __init__(self, stats: Callable[[], Stats], rate_limit: Callable[[], object | None]) -> None:
        self.stats, self.rate_limit = stats, rate_limit

    def collect(self) -> Iterator:
        stats = self.stats()
        waiting = GaugeMetricFamily("dropwire_runtime_lane_waiting", "Work waiting per job kind and lane",
                                    labels=["job", "lane"])
        active = GaugeMetricFamily("dropwire_runtime_lane_active", "Work on the device per job kind and lane",
                                   labels=["job", "lane"])
        done = CounterMetricFamily("dropwire_runtime_lane_completed", "Work completed per job kind and lane",
                                   labels=["job", "lane"])
        scheduler = stats.scheduler
        waiting.add_metric(["forecast", "interactive"], scheduler.interactive_queued)
        waiting.add_metric(["forecast", "background"], scheduler.background_remaining)
        active.add_metric(["forecast", "any"], scheduler.in_flight)
        done.add_metric(["forecast", "interactive"], scheduler.computed_interactive)
        done.add_metric(["forecast", "background"], scheduler.computed_background)
        if stats.textgen is not None:
            for lane in ("interactive", "background"):
                for family, stat in ((waiting, "waiting"), (active, "active"), (done, "completed")):
                    family.add_metric(["textgen", lane], getattr(stats.textgen, f"{stat}_{lane}"))
        yield from (waiting, active, done)
        hits = CounterMetricFamily("dropwire_runtime_cache_hits", "Cache hits", labels=["cache"])
        misses = CounterMetricFamily("dropwire_runtime_cache_misses", "Cache misses", labels=["cache"])
        ratio = GaugeMetricFamily("dropwire_runtime_cache_hit_ratio", "Hits over lookups since start", labels=["cache"])
        for name, cache in (("data", stats.data_cache), ("result", stats.result_cache)):
            hits.add_metric([name], cache.hits)
            misses.add_metric([name], cache.misses)
            lookups = cache.hits + cache.misses
            ratio.add_metric([name], cache.hits / lookups if lookups else 0.0)
        yield from (hits, misses, ratio)
        limit = self.rate_limit()
        if limit is not None:
            answers = CounterMetricFamily("dropwire_runtime_rate_limited_requests", "POST /v1 requests by the rate "
                                          "limit's answer", labels=["answer"])
            answers.add_metric(["admitted"], limit.admitted)
            answers.add_metric(["refused"], limit.refused)
            yield answers


def metrics_text(stats: Callable[[], Stats], rate_limit: Callable[[], object | None]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(stats, rate_limit))
    return generate_latest(registry)
