"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from embedpipe.pipeline.cache import EmbeddingCache
from embedpipe.runtime.microbatch import PassStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """Every metric `/metrics` exposes; the app and the batchers call the `observe_*` methods."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "embedpipe_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "embedpipe_request_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "embedpipe_queue_seconds",
            "Time a request waited for its first forward pass",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "embedpipe_inference_seconds", "Forward pass time", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.requests_per_pass = Histogram(
            "embedpipe_requests_per_pass",
            "Requests merged into one forward pass",
            ["model"],
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.sequences_per_pass = Histogram(
            "embedpipe_sequences_per_pass",
            "Sequences in one forward pass",
            ["model"],
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.tokens_per_pass = Histogram(
            "embedpipe_tokens_per_pass", "Tokens in one forward pass", ["model"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.tokens_embedded = Counter("embedpipe_tokens_embedded", "Tokens run through a model", ["model"], registry=r)
        self.inputs = Counter("embedpipe_inputs", "Inputs embedded (cache hits included)", ["model"], registry=r)
        self.truncated = Counter(
            "embedpipe_truncated_inputs", "Inputs cut to the model's context", ["model"], registry=r
        )
        self.rejected = Counter("embedpipe_rejected_requests", "Requests refused for load (429)", ["model"], registry=r)
        self.model_load_seconds = Gauge(
            "embedpipe_model_load_seconds", "Seconds to load a model", ["model"], registry=r
        )
        self.ready = Gauge("embedpipe_ready", "1 once every model and index is loaded and warmed", registry=r)
        self._queues: dict[str, Callable[[], tuple[int, int]]] = {}
        self._cache: EmbeddingCache | None = None
        r.register(_LiveCollector(self))

    def pass_observer(self, model: str) -> Callable[[PassStats], None]:
        def observe(stats: PassStats) -> None:
            self.inference_seconds.labels(model).observe(stats.seconds)
            self.requests_per_pass.labels(model).observe(stats.requests)
            self.sequences_per_pass.labels(model).observe(stats.sequences)
            self.tokens_per_pass.labels(model).observe(stats.tokens)
            self.tokens_embedded.labels(model).inc(stats.tokens)
            for wait in stats.queue_waits:
                self.queue_seconds.labels(model).observe(wait)

        return observe

    def watch_queue(self, model: str, depth: Callable[[], tuple[int, int]]) -> None:
        """`depth()` -> (queued requests, queued tokens), read at scrape time."""
        self._queues[model] = depth

    def watch_cache(self, cache: EmbeddingCache | None) -> None:
        self._cache = cache

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Values read at scrape time: queue gauges and the cache's own counters."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("embedpipe_queue_depth", "Requests waiting for a forward pass", labels=["model"])
        tokens = GaugeMetricFamily("embedpipe_queued_tokens", "Tokens waiting for a forward pass", labels=["model"])
        for model, read in self.metrics._queues.items():
            n, t = read()
            depth.add_metric([model], n)
            tokens.add_metric([model], t)
        yield depth
        yield tokens
        cache = self.metrics._cache
        if cache is None:
            return
        s = cache.stats()
        for name, value, doc in (
            ("hits", s.hits, "Inputs answered by the embedding cache"),
            ("misses", s.misses, "Inputs the embedding cache did not have"),
        ):
            c = CounterMetricFamily(f"embedpipe_cache_{name}", doc)
            c.add_metric([], value)
            yield c
        hits = CounterMetricFamily("embedpipe_cache_level_hits", "Cache hits by level", labels=["level"])
        hits.add_metric(["memory"], s.memory_hits)
        hits.add_metric(["disk"], s.disk_hits)
        yield hits
        ev = CounterMetricFamily("embedpipe_cache_evictions", "Entries evicted by level", labels=["level"])
        ev.add_metric(["memory"], s.memory_evictions)
        ev.add_metric(["disk"], s.disk_evictions)
        yield ev
        size = GaugeMetricFamily("embedpipe_cache_bytes", "Bytes held by level", labels=["level"])
        size.add_metric(["memory"], s.memory_bytes)
        if s.disk_bytes is not None:
            size.add_metric(["disk"], s.disk_bytes)
        yield size
