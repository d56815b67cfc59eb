"""Ray Serve query endpoint: scatter-gather over a generation's shards, zero-downtime switches.

Deployments: Ingress (FastAPI), IndexController (generation lifecycle, leases), QueryEncoder
(batched SPLADE query encoding), ShardSearcher (one replica set per shard group). Entry
points: `build_app` (Serve config), `run_endpoint` / `stop_endpoint`, `lsr serve`.
"""

from pipeline.serve.config import ServeConfig
from pipeline.store.leases import Lease, leased_generations, read_leases, release_lease, write_lease

__all__ = ["ServeConfig", "Lease", "leased_generations", "read_leases", "release_lease",
           "write_lease", "build_app", "run_endpoint", "stop_endpoint"]


def __getattr__(name: str):
    # Ray Serve is imported only by code that deploys, not by lease readers such as GC.
    if name in ("build_app", "run_endpoint", "stop_endpoint"):
        from pipeline.serve import app

        return getattr(app, name)
    raise AttributeError(name)
