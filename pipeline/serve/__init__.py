"""Ray Serve query endpoint: scatter-gather over a generation's shards, zero-downtime switches.

Deployments: Ingress (FastAPI), IndexController (generation lifecycle, leases), QueryEncoder
(batched SPLADE query encoding), ShardSearcher (one replica set per shard group). Entry
points: `build_app` (Serve config), `run_endpoint` / `stop_endpoint`, `lsr serve`. The
server leases it writes live with the storage layout, in `pipeline.catalog.leases`.

Searches through `pipeline.search` and encodes through `pipeline.encode.query`; must not
import `pipeline.batch` or `pipeline.cli` (`lsr serve` lives in `pipeline.cli.serve`).
"""

from pipeline.serve.config import ServeConfig

__all__ = ["ServeConfig", "build_app", "run_endpoint", "stop_endpoint"]


def __getattr__(name: str):
    # Ray Serve is imported only by code that deploys, not by readers of ServeConfig.
    if name in ("build_app", "run_endpoint", "stop_endpoint"):
        from pipeline.serve import app

        return getattr(app, name)
    raise AttributeError(name)
