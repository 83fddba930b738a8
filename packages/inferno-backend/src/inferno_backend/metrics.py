"""Prometheus metrics of the daemon, in a registry of its own (never the global one).

Names follow vLLM's, with the ``inferno:`` prefix and a ``model`` label. Gauges of engine load
and memory are read from snapshots at scrape time by a collector; latencies and token counts are
observed by the API as requests stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from inferno_inference import EngineStats
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics", "ModelSnapshot"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """What the collector reads about one served model at scrape time."""

    model: str
    engine: EngineStats
    memory_current_bytes: int | None = None
    memory_peak_bytes: int | None = None
    memory_reserved_bytes: int | None = None


class _SnapshotCollector(Collector):
    def __init__(self, snapshots: Callable[[], Iterable[ModelSnapshot]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "inferno:num_requests_running", "Requests in the running batch.", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "inferno:num_requests_waiting", "Requests waiting to be scheduled.", labels=["model"]
        )
        kv = GaugeMetricFamily(
            "inferno:kv_cache_usage_perc", "Fraction of KV blocks in use (0-1).", labels=["model"]
        )
        kv_free = GaugeMetricFamily(
            "inferno:kv_cache_free_blocks", "KV blocks not in use.", labels=["model"]
        )
        queries = CounterMetricFamily(
            "inferno:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
            labels=["model"],
        )  # fmt: skip
        hits = CounterMetricFamily(
            "inferno:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
            labels=["model"],
        )  # fmt: skip
        preempt = CounterMetricFamily(
            "inferno:num_preemptions", "Sequences preempted by the scheduler.", labels=["model"]
        )
        drafted = CounterMetricFamily(
            "inferno:spec_decode_draft_tokens", "Draft tokens computed by speculation.",
            labels=["model"],
        )  # fmt: skip
        accepted = CounterMetricFamily(
            "inferno:spec_decode_accepted_tokens", "Draft tokens kept (sampled as drafted).",
            labels=["model"],
        )  # fmt: skip
        pool = GaugeMetricFamily(
            "inferno:memory_pool_bytes", "Bytes of the memory pool by kind (current, peak, "
            "reserved).", labels=["model", "kind"],
        )  # fmt: skip
        for snap in self._snapshots():
            s, m = snap.engine, [snap.model]
            running.add_metric(m, s.running)
            waiting.add_metric(m, s.waiting)
            kv.add_metric(m, s.kv_usage)
            kv_free.add_metric(m, s.kv_blocks_total - s.kv_blocks_used)
            queries.add_metric(m, s.prefix_cache_queries)
            hits.add_metric(m, s.prefix_cache_hits)
            preempt.add_metric(m, s.preemptions_total)
            drafted.add_metric(m, s.draft_tokens_total)
            accepted.add_metric(m, s.accepted_draft_tokens_total)
            for kind, value in (
                ("current", snap.memory_current_bytes),
                ("peak", snap.memory_peak_bytes),
                ("reserved", snap.memory_reserved_bytes),
            ):
                if value is not None:
                    pool.add_metric([snap.model, kind], value)
        yield from (running, waiting, kv, kv_free, queries, hits, preempt, drafted, accepted, pool)


class Metrics:
    """Every metric of one app, in its own `CollectorRegistry`.

    Args:
        snapshots: called at each scrape; returns one `ModelSnapshot` per served model.
    """

    def __init__(self, snapshots: Callable[[], Iterable[ModelSnapshot]] = tuple) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.time_to_first_token = Histogram(
            "inferno:time_to_first_token_seconds", "Seconds from arrival to the first token.",
            ["model"], registry=reg, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.inter_token_latency = Histogram(
            "inferno:inter_token_latency_seconds", "Seconds between consecutive tokens.",
            ["model"], registry=reg, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.e2e_latency = Histogram(
            "inferno:e2e_request_latency_seconds", "Seconds from arrival to the last token.",
            ["model"], registry=reg, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.queue_time = Histogram(
            "inferno:request_queue_time_seconds",
            "Seconds from arrival until the engine first scheduled the request (validation, "
            "templating, tokenization, and waiting in the engine's queue).",
            ["model"], registry=reg, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "inferno:prompt_tokens", "Prompt tokens processed.", ["model"], registry=reg
        )
        self.generation_tokens = Counter(
            "inferno:generation_tokens", "Tokens generated.", ["model"], registry=reg
        )
        self.requests = Counter(
            "inferno:request_success", "Finished requests by finish reason.",
            ["model", "finish_reason"], registry=reg,
        )  # fmt: skip
        self.structured_requests = Counter(
            "inferno:structured_requests",
            "Requests whose output is constrained, by kind: json_object, json_schema, tools, "
            "choice, regex, grammar.",
            ["model", "kind"], registry=reg,
        )  # fmt: skip
        self.embedding_requests = Counter(
            "inferno:embedding_requests",
            "Embedding requests by outcome: success, invalid, unavailable, error, abort.",
            ["model", "outcome"], registry=reg,
        )  # fmt: skip
        self.embedding_latency = Histogram(
            "inferno:embedding_request_latency_seconds",
            "Seconds from arrival to the response of a successful embedding request (all its "
            "inputs).",
            ["model"], registry=reg, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.tool_calls = Counter(
            "inferno:tool_calls", "Tool calls returned to clients.", ["model"], registry=reg
        )
        self.http_requests = Counter(
            "inferno:http_requests", "HTTP responses by route and status.",
            ["route", "status"], registry=reg,
        )  # fmt: skip
        self.rejected = Counter(
            "inferno:requests_rejected",
            "Requests refused before reaching the engine, by reason (overloaded: the model held "
            "max_num_seqs + max_queued_requests requests).",
            ["model", "reason"], registry=reg,
        )  # fmt: skip
        reg.register(_SnapshotCollector(snapshots))

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
