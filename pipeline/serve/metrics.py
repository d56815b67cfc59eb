"""The endpoint's own metrics, recorded twice: Ray Serve metrics (exported with Serve's own
through the Ray metrics agent) and a per-replica prometheus_client registry served as text at
``GET /metrics`` (scrapable and testable without the Ray dashboard)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                     0.25, 0.5, 1.0, 2.5, 5.0)


class EndpointMetrics:
    """Counters of one ingress replica. Status: ok, partial, rejected (4xx), error (5xx)."""

    def __init__(self) -> None:
        from ray.serve import metrics as serve_metrics

        self.registry = CollectorRegistry()
        self._requests = Counter("lsr_search_requests", "Search requests by outcome",
                                 ["status"], registry=self.registry)
        self._queries = Counter("lsr_search_queries", "Queries answered", registry=self.registry)
        self._latency = Histogram("lsr_search_latency_seconds", "Search latency in the ingress",
                                  buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self._partial = Counter("lsr_partial_responses", "Responses missing some shards",
                                registry=self.registry)
        self._shard_failures = Counter("lsr_shard_failures", "Shard calls that failed or timed out",
                                       ["reason"], registry=self.registry)
        self._retries = Counter("lsr_shard_retries", "Shard calls retried after a replica died",
                                registry=self.registry)
        self._errors = Counter("lsr_errors", "Errors by kind", ["kind"], registry=self.registry)
        self._generation = Gauge("lsr_generation", "Generation answering requests",
                                 registry=self.registry)
        self._switches = Counter("lsr_generation_switches", "Generation switches seen",
                                 registry=self.registry)
        self._ray_requests = serve_metrics.Counter(
            "lsr_search_requests", description="Search requests by outcome", tag_keys=("status",))
        self._ray_latency = serve_metrics.Histogram(
            "lsr_search_latency_ms", description="Search latency in the ingress (ms)",
            boundaries=[b * 1000 for b in LATENCY_BUCKETS_S])
        self._ray_partial = serve_metrics.Counter(
            "lsr_partial_responses", description="Responses missing some shards")
        self._ray_errors = serve_metrics.Counter(
            "lsr_errors", description="Errors by kind", tag_keys=("kind",))

    def request(self, status: str, latency_s: float | None = None, n_queries: int = 0) -> None:
        self._requests.labels(status).inc()
        self._ray_requests.inc(tags={"status": status})
        if latency_s is not None:
            self._latency.observe(latency_s)
            self._ray_latency.observe(latency_s * 1000)
        if n_queries:
            self._queries.inc(n_queries)
        if status == "partial":
            self._partial.inc()
            self._ray_partial.inc()

    def shard_failure(self, reason: str) -> None:
        self._shard_failures.labels(reason).inc()

    def retry(self) -> None:
        self._retries.inc()

    def error(self, kind: str) -> None:
        self._errors.labels(kind).inc()
        self._ray_errors.inc(tags={"kind": kind})

    def generation(self, generation: int, switched: bool) -> None:
        self._generation.set(generation)
        if switched:
            self._switches.inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
