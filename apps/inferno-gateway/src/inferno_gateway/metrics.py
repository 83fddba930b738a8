"""Prometheus metrics of the gateway, in its own `CollectorRegistry`.

Its own registry (not the process-global one) so that several gateways in one process, as in
tests, never collide, and ``/metrics`` shows exactly the gateway's series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from inferno_gateway.table import WorkerTable

__all__ = ["CONTENT_TYPE", "GatewayMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of the text exposition format."""


class GatewayMetrics:
    """Counters and gauges the forwarder and the table update."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inferno_gateway_requests",
            "Requests answered through a worker, by worker, route and HTTP status.",
            ["worker", "route", "status"],
            registry=r,
        )
        self.rejected = Counter(
            "inferno_gateway_rejected_requests",
            "Requests the gateway answered itself, by HTTP status and error code.",
            ["status", "code"],
            registry=r,
        )
        self.retries = Counter(
            "inferno_gateway_retries",
            "Attempts that failed before the first byte and moved to another worker.",
            ["worker", "reason"],
            registry=r,
        )
        self.decisions = Counter(
            "inferno_gateway_routing_decisions",
            "Routing decisions by policy and reason (affinity, overflow, least_load, ...).",
            ["policy", "reason"],
            registry=r,
        )
        self.stream_errors = Counter(
            "inferno_gateway_stream_errors",
            "Streams cut off by their worker and ended with an error event.",
            ["worker"],
            registry=r,
        )
        self.in_flight = Gauge(
            "inferno_gateway_in_flight",
            "Requests in flight through the gateway, by worker.",
            ["worker"],
            registry=r,
        )
        self.workers = Gauge(
            "inferno_gateway_workers",
            "Workers in the table, by readiness.",
            ["state"],
            registry=r,
        )
        self.first_byte = Histogram(
            "inferno_gateway_upstream_first_byte_seconds",
            "From dispatch to a worker until its response headers arrived.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self._in_flight_workers: set[str] = set()

    def observe_table(self, table: WorkerTable) -> None:
        """Refresh the table gauges (a `WorkerTable` listener)."""
        ready = len(table.ready_workers)
        self.workers.labels(state="ready").set(ready)
        self.workers.labels(state="not_ready").set(len(table) - ready)
        for gone in self._in_flight_workers - {w.id for w in table.workers}:
            # A departed worker's gauge would otherwise stay in /metrics forever.
            self.in_flight.remove(gone)
            self._in_flight_workers.discard(gone)

    def add_in_flight(self, worker_id: str, delta: int) -> None:
        """Move the in-flight gauge of one worker by ``delta``."""
        if delta < 0 and worker_id not in self._in_flight_workers:
            return  # its series was dropped when it left the table
        self._in_flight_workers.add(worker_id)
        self.in_flight.labels(worker=worker_id).inc(delta)

    def render(self) -> bytes:
        """The text exposition of every series."""
        return generate_latest(self.registry)
