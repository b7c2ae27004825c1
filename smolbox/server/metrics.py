"""Prometheus metrics: request counts and latencies, machines by state.

Why a registry per app: tests (and embedders) create several apps in one
process; the global default registry would reject the second set of metrics.
Machine counts are read from the store at scrape time, so they include machines
the CLI made, and the scrape runs in a worker thread (the store blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _MachineCollector(Collector):
    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self._count = count_by_state

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("smolbox_machines", "Machines in the store by state",
                                   labels=["state"])
        for state, count in sorted(self._count().items()):
            family.add_metric([state], count)
        yield family


class Metrics:
    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("smolbox_http_requests", "HTTP requests served",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("smolbox_http_request_duration_seconds",
                                 "Time to the end of the handler (streams: until closed)",
                                 ["method", "route"], registry=self.registry)
        self.registry.register(_MachineCollector(count_by_state))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
