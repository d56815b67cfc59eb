"""`lsr serve INDEX`: run the query endpoint on Ray Serve until interrupted."""

from __future__ import annotations

import logging
import signal
import threading

import typer

from pipeline.cli.common import parse_json_option

log = logging.getLogger(__name__)


def serve_command(
    index: str = typer.Argument(..., help="Index root written by `lsr index` (local or s3://)."),
    host: str = typer.Option("127.0.0.1", help="HTTP host to listen on."),
    port: int = typer.Option(8000, help="HTTP port."),
    replicas_per_shard: int = typer.Option(1, help="ShardSearcher replicas per shard group."),
    shards_per_replica: int = typer.Option(1, help="Shards one searcher replica holds (0 = all)."),
    encoder_placement: str = typer.Option("deployment", help="deployment | ingress."),
    api_key_env: str = typer.Option(None, help="Environment variable holding the API key "
                                               "(X-API-Key header); unset = no auth."),
    timeout_s: float = typer.Option(2.0, help="Time budget of one request."),
    on_shard_failure: str = typer.Option("partial", help="partial | fail (503)."),
    poll_s: float = typer.Option(10.0, help="Seconds between reads of CURRENT.json (0 = off)."),
    max_queries: int = typer.Option(64, help="Most queries per request."),
    app_name: str = typer.Option("lsr", help="Serve application name."),
    storage_options: str = typer.Option(None, help="JSON object passed to fsspec."),
    address: str = typer.Option(None, help="Ray cluster address; default: start Ray locally."),
    num_cpus: int = typer.Option(None, help="CPUs of a locally started Ray (default: all)."),
) -> None:
    """Serve an index over HTTP: POST /search, GET /healthz /stats /metrics, POST /admin/reload."""
    import os

    import ray
    from ray import serve

    from pipeline.serve.app import run_endpoint, stop_endpoint
    from pipeline.serve.config import ServeConfig

    try:
        config = ServeConfig(index=index, storage_options=parse_json_option(storage_options,
                                                                            "--storage-options"),
                             app_name=app_name, replicas_per_shard=replicas_per_shard,
                             shards_per_replica=shards_per_replica,
                             encoder_placement=encoder_placement, api_key_env=api_key_env,
                             timeout_s=timeout_s, on_shard_failure=on_shard_failure, poll_s=poll_s,
                             max_queries=max_queries)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if api_key_env and not os.environ.get(api_key_env):
        raise typer.BadParameter(f"--api-key-env {api_key_env}: that variable is not set")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started_ray = not ray.is_initialized() and address is None
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
             ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_endpoint(config)
        typer.echo(f"serving {index} at http://{host}:{port}/search (docs: /docs); Ctrl-C stops")
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping the endpoint")
        stop_endpoint(app_name)
        if started_ray:
            serve.shutdown()
            ray.shutdown()
