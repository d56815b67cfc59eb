"""Configuration of the query endpoint: one frozen dataclass, validated at construction.

The same settings come from `lsr serve` options, from the ``args`` of a Serve config file
(`cluster/serve.yaml`, a RayService's ``serveConfigV2``) through `ServeConfig.from_args`, and
travel to every deployment as a plain dict (`to_args`).
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from typing import Any

ENCODER_PLACEMENTS = ("deployment", "ingress")
TOPOLOGIES = ("auto", "embedded", "split")
SHARD_FAILURE_POLICIES = ("partial", "fail")
MAX_K = 1000


@dataclass(frozen=True)
class ServeConfig:
    """Everything the endpoint needs; defaults suit a 2-core development machine.

    Topology
      * ``topology``: "embedded" = each ingress replica answers HTTP, encodes and searches
        every shard in process (no handle hops; one node); "split" = QueryEncoder and
        ShardSearcher deployments (clusters); "auto" (default) = embedded when the
        generation fits this node's memory (`embedded_fits`), else split.
      * ``replicas_per_shard``: ShardSearcher replicas per shard group (>= 2 survives a replica
        loss without a failed request).
      * ``shards_per_replica``: consecutive shards one ShardSearcher replica loads and answers
        for (0 = all shards of the generation in one replica: fewest hops, least parallelism).
      * ``encoder_placement``: "deployment" runs the QueryEncoder as its own deployment with
        ``@serve.batch`` across concurrent requests; "ingress" encodes inside the ingress
        replica (one handle hop less per request).
      * ``embedded_batch_size``: embedded topology, concurrent single-query requests with the
        same search parameters that one replica encodes and searches as one batch (those
        arriving while the previous batch runs; `pipeline.serve.batching`); 1 = off.
        ``embedded_batch_wait_s``: extra wait to fill a batch (0: none, a lone request runs at
        once). Answers equal the unbatched ones.
      * ``direct_port``: each ingress replica (either topology) also runs its own HTTP
        server (uvicorn on the replica's event loop, `pipeline.serve.direct`) on the first free
        port of ``direct_port`` .. ``direct_port + ingress_replicas - 1``, on ``direct_host``.
        It answers every route of the app with the same handlers, and a request skips the
        Serve proxy and Serve's request path (BENCHMARKS.md §14). A Serve proxy, where one
        runs, keeps answering too. `lsr serve --port` sets it (and starts no proxy).
      * ``access_log``: Ray Serve's per-request access log line, in every deployment the
        endpoint starts (ingress, controller, searchers, query encoder: `logging_config`). Off
        by default: on the ingress it cost ~0.9 ms of a 4-5 ms served p50 on 2 cores
        (BENCHMARKS.md §14), and the endpoint's own metrics and Server-Timing cover every
        request anyway.
      * ``*_cpus`` / ``encoder_gpus``: Ray resources per replica. Fractional by default: a switch
        holds two generations' searchers at once, and they must all fit.

    Requests
      * ``timeout_s``: budget of one request, encoding included; shards that have not answered
        by then are missing. ``on_shard_failure``: "partial" answers from the shards that did
        (``partial: true`` and the missing shards named), "fail" answers 503.
      * ``max_queries``/``max_k``/``max_query_chars``/``max_body_bytes``: request limits (4xx).
      * ``max_filter_nodes``/``max_filter_bytes``: largest filter (clauses plus listed values;
        compact JSON bytes), ``max_fields``: most return fields, ``max_explain_terms``: most
        term contributions per explained hit (also the default); exceeded: 413.
        ``filter_cache_bytes``: bound of each replica's filter bitset cache (LRU).
      * ``api_key_env``: name of the environment variable holding the API key; None = no auth.

    Generations
      * ``poll_s``: how often CURRENT.json is read to notice a new generation (0 = only
        ``POST /admin/reload``). ``route_refresh_s``: how often ingress replicas fetch the
        routing table from the controller. ``drain_timeout_s``: longest wait for requests
        still running on a retired generation before its replicas are deleted.
      * ``lease_ttl_s``: lifetime of the lease file that protects served generations from
        garbage collection (renewed every third of it). ``server_id`` names the lease file.
    """

    index: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    app_name: str = "lsr"
    route_prefix: str = "/"
    # topology
    topology: str = "auto"
    replicas_per_shard: int = 1
    shards_per_replica: int = 1
    searcher_cpus: float = 0.1
    search_threads: int = 1
    encoder_placement: str = "deployment"
    encoder_replicas: int = 1
    encoder_cpus: float = 0.25
    encoder_gpus: float = 0.0
    encoder_threads: int = 1
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.002
    embedded_batch_size: int = 8
    embedded_batch_wait_s: float = 0.0
    ingress_replicas: int = 1
    ingress_cpus: float = 0.1
    direct_port: int | None = None
    direct_host: str = "127.0.0.1"
    access_log: bool = False
    controller_cpus: float = 0.05
    # requests
    api_key_env: str | None = None
    timeout_s: float = 2.0
    on_shard_failure: str = "partial"
    max_queries: int = 64
    max_k: int = MAX_K
    max_query_chars: int = 2048
    max_body_bytes: int = 1 << 20
    max_filter_nodes: int = 256
    max_filter_bytes: int = 16 << 10
    max_fields: int = 32
    max_explain_terms: int = 64
    filter_cache_bytes: int = 256 << 20
    # generations
    poll_s: float = 10.0
    route_refresh_s: float = 0.5
    drain_timeout_s: float = 60.0
    deploy_timeout_s: float = 600.0
    lease_ttl_s: float = 60.0
    server_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.index, str) or not self.index:
            raise ValueError(f"index must be a non-empty URL, got {self.index!r}")
        for name in ("replicas_per_shard", "encoder_replicas", "ingress_replicas", "max_queries",
                     "max_k", "max_query_chars", "max_body_bytes", "max_batch_size",
                     "search_threads", "encoder_threads", "max_filter_nodes", "max_filter_bytes",
                     "max_fields", "max_explain_terms", "embedded_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.shards_per_replica, int) or self.shards_per_replica < 0:
            raise ValueError(f"shards_per_replica must be >= 0 (0 = all), got {self.shards_per_replica!r}")
        if not isinstance(self.filter_cache_bytes, int) or self.filter_cache_bytes < 0:
            raise ValueError(f"filter_cache_bytes must be an integer >= 0, got "
                             f"{self.filter_cache_bytes!r}")
        if self.max_k > MAX_K:
            raise ValueError(f"max_k must be <= {MAX_K}, got {self.max_k}")
        for name in ("searcher_cpus", "encoder_cpus", "encoder_gpus", "ingress_cpus",
                     "controller_cpus", "batch_wait_timeout_s", "embedded_batch_wait_s", "poll_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("timeout_s", "route_refresh_s", "drain_timeout_s", "deploy_timeout_s",
                     "lease_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, got {self.topology!r}")
        if self.encoder_placement not in ENCODER_PLACEMENTS:
            raise ValueError(f"encoder_placement must be one of {ENCODER_PLACEMENTS}, "
                             f"got {self.encoder_placement!r}")
        if self.on_shard_failure not in SHARD_FAILURE_POLICIES:
            raise ValueError(f"on_shard_failure must be one of {SHARD_FAILURE_POLICIES}, "
                             f"got {self.on_shard_failure!r}")
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        if self.direct_port is not None:
            if not isinstance(self.direct_port, int) or isinstance(self.direct_port, bool) \
                    or not 1 <= self.direct_port <= 65536 - self.ingress_replicas:
                raise ValueError(f"direct_port must be an integer port in 1..65535 (with room "
                                 f"for {self.ingress_replicas} ingress replicas), got "
                                 f"{self.direct_port!r}")
        if not isinstance(self.direct_host, str) or not self.direct_host:
            raise ValueError(f"direct_host must be a host name or address, got {self.direct_host!r}")
        if not isinstance(self.access_log, bool):
            raise ValueError(f"access_log must be true or false, got {self.access_log!r}")
        if self.api_key_env is not None and not self.api_key_env:
            raise ValueError("api_key_env must be an environment variable name or None")
        if self.server_id is not None:
            from pipeline.catalog.leases import check_server_id

            check_server_id(self.server_id)

    def embedded_fits(self, index_bytes: int, available_bytes: int) -> bool:
        """Whether every ingress replica (plus the controller's check during a switch, plus
        a second generation during a switch) can hold an index of `index_bytes` in half of
        this node's `available_bytes`."""
        return (self.ingress_replicas + 2) * index_bytes <= available_bytes // 2

    def direct_ports(self) -> range:
        """The ports the ingress replicas' own HTTP servers take (``direct_port``)."""
        if self.direct_port is None:
            return range(0)
        return range(self.direct_port, self.direct_port + self.ingress_replicas)

    def direct_urls(self) -> list[str]:
        """The ingress replicas' own search URLs (``direct_port``), one per replica."""
        prefix = self.route_prefix.rstrip("/")
        return [f"http://{self.direct_host}:{port}{prefix}/search" for port in self.direct_ports()]

    @property
    def lease_id(self) -> str:
        """The lease file name: ``server_id``, else the app name and this host's name."""
        if self.server_id:
            return self.server_id
        host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
        return f"{self.app_name}-{host}"[:128]

    def logging_config(self) -> dict[str, Any]:
        """Ray Serve ``logging_config`` of every deployment of the endpoint."""
        return {"enable_access_log": self.access_log}

    def to_args(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "ServeConfig":
        """Build from a Serve config's ``args`` (unknown keys are an error, not ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown serve settings {unknown}; known: {sorted(known)}")
        return cls(**args)
