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
    port: int = typer.Option(8000, help="HTTP port: each ingress replica answers every route on "
                                        "its own server, on PORT .. PORT + replicas - 1."),
    serve_port: int = typer.Option(None, help="Also start Ray Serve's HTTP proxy on this port "
                                              "(off by default: one more hop per request)."),
    replicas_per_shard: int = typer.Option(1, help="ShardSearcher replicas per shard group."),
    shards_per_replica: int = typer.Option(1, help="Shards one searcher replica holds (0 = all)."),
    topology: str = typer.Option("auto", help="embedded (one replica encodes and searches every "
                                              "shard) | split (searcher deployments) | auto."),
    encoder_placement: str = typer.Option("deployment", help="deployment | ingress (split "
                                                              "topology)."),
    api_key_env: str = typer.Option(None, help="Environment variable holding the API key "
                                               "(X-API-Key header); unset = no auth."),
    timeout_s: float = typer.Option(2.0, help="Time budget of one request."),
    on_shard_failure: str = typer.Option("partial", help="partial | fail (503)."),
    poll_s: float = typer.Option(10.0, help="Seconds between reads of CURRENT.json (0 = off)."),
    max_queries: int = typer.Option(64, help="Most queries per request."),
    ingress_replicas: int = typer.Option(1, help="Ingress replicas (embedded: each encodes and "
                                                 "searches on its own)."),
    embedded_batch_size: int = typer.Option(8, help="Embedded: concurrent single queries "
                                                    "answered as one batch (1 = off)."),
    access_log: bool = typer.Option(False, help="Ray Serve's access log line per request (off: "
                                                "~0.9 ms a request on 2 cores; the endpoint's "
                                                "metrics count requests either way)."),
    app_name: str = typer.Option("lsr", help="Serve application name."),
    storage_options: str = typer.Option(None, help="JSON object passed to fsspec."),
    address: str = typer.Option(None, help="Ray cluster address; default: start Ray locally."),
    num_cpus: int = typer.Option(None, help="CPUs of a locally started Ray (default: all)."),
) -> None:
    """Serve an index over HTTP: POST /search, GET /healthz /stats /metrics, POST /admin/reload."""
    import os

    from pipeline.serve.config import ServeConfig

    try:
        config = ServeConfig(index=index, storage_options=parse_json_option(storage_options,
                                                                            "--storage-options"),
                             app_name=app_name, topology=topology,
                             replicas_per_shard=replicas_per_shard,
                             shards_per_replica=shards_per_replica,
                             encoder_placement=encoder_placement, api_key_env=api_key_env,
                             timeout_s=timeout_s, on_shard_failure=on_shard_failure, poll_s=poll_s,
                             max_queries=max_queries, ingress_replicas=ingress_replicas,
                             embedded_batch_size=embedded_batch_size, direct_port=port,
                             direct_host=host, access_log=access_log)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if api_key_env and not os.environ.get(api_key_env):
        raise typer.BadParameter(f"--api-key-env {api_key_env}: that variable is not set")
    if address is None:                     # the ingress replicas run on this machine
        from pipeline.serve.direct import check_ports_free

        try:
            check_ports_free(host, config.direct_ports())
        except (RuntimeError, OSError) as exc:
            raise typer.BadParameter(f"--port: {exc}") from None
    _check_index(config)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    run_until_signalled(config, host, serve_port, address, num_cpus)


def _check_index(config) -> None:
    """Refuse, before Ray starts, an index whose text queries nothing can encode (the endpoint
    takes text queries only)."""
    from pipeline.catalog import IndexLayout, read_manifest
    from pipeline.encode.query import check_query_model

    check_query_model(read_manifest(IndexLayout.at(config.index, config.storage_options)).encoder)


class _Stop(Exception):
    """SIGTERM or SIGINT arrived before the endpoint was up."""


def run_until_signalled(config, host: str, serve_port: int | None, address: str | None,
                        num_cpus: int | None) -> None:
    """Serve until SIGTERM or SIGINT (to this process or its whole process group), then stop
    the endpoint and everything started here, and return (exit status 0).

    Without ``address``, Ray runs as a `ray start --head` child in a session of its own: a
    signal sent to this process's group reaches this process only, which then deletes the
    endpoint, disconnects, and stops that Ray by its process group.
    """
    import ray
    from ray import serve

    from pipeline.serve.app import run_endpoint, stop_endpoint

    stop = threading.Event()
    started = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        if not started.is_set():
            raise _Stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    head = None
    try:
        if address is None:
            head, address = start_local_ray(num_cpus)
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        # Ray's core worker installs its own SIGTERM handler (it logs, then aborts the
        # process): put ours back over it.
        for s in previous:
            signal.signal(s, on_signal)
        if serve_port is None:
            serve.start(proxy_location="Disabled")
        else:
            serve.start(http_options={"host": host, "port": serve_port})
        run_endpoint(config)
        started.set()
        for url in config.direct_urls():
            typer.echo(f"serving {config.index} at {url} (docs: {url.removesuffix('/search')}"
                       f"/docs)", err=True)
        if serve_port is not None:
            typer.echo(f"  and through Ray Serve's proxy: http://{host}:{serve_port}"
                       f"{config.route_prefix.rstrip('/')}/search", err=True)
        typer.echo("Ctrl-C stops", err=True)
        while not stop.wait(0.5):
            pass
    except _Stop:
        pass
    finally:
        started.set()           # a second signal no longer interrupts the cleanup
        typer.echo("stopping the endpoint", err=True)
        try:
            if ray.is_initialized():
                stop_endpoint(config.app_name)
                if head is not None:
                    serve.shutdown()
        except Exception as exc:  # noqa: BLE001 - still stop Ray below
            log.warning("stopping the endpoint failed: %s", exc)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if head is not None:
                stop_local_ray(head)
            for s, handler in previous.items():
                signal.signal(s, handler)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int | None, timeout_s: float = 120.0):
    """`ray start --head --block` in its own session on 127.0.0.1; (process, GCS address)."""
    import os
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    ray_cli = Path(sys.executable).with_name("ray")
    cli = str(ray_cli) if ray_cli.exists() else (shutil.which("ray") or "ray")
    gcs = _free_port()
    ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    cmd = [cli, "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=false", *ports]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    env = dict(os.environ, RAY_ADDRESS="")
    head = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{gcs}"
    deadline = time.monotonic() + timeout_s
    import socket

    while True:
        if head.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with status {head.returncode}")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", gcs)) == 0:
                break
        if time.monotonic() > deadline:
            stop_local_ray(head)
            raise RuntimeError("`ray start --head` did not come up")
        time.sleep(0.5)
    return head, address


def stop_local_ray(head, timeout_s: float = 15.0) -> None:
    """Stop a `start_local_ray` head and every process of its session (workers included)."""
    import os

    import psutil

    pgid = head.pid           # the session's leader: its group id is its pid
    members = {p.pid: p for p in psutil.process_iter() if _pgid(p.pid) == pgid}
    try:
        members.update({p.pid: p for p in psutil.Process(head.pid).children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    members.pop(os.getpid(), None)
    remaining = list(members.values())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        for p in remaining:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, remaining = psutil.wait_procs(remaining, timeout=timeout_s if sig == signal.SIGTERM else 5)
        if not remaining:
            break
    try:
        head.wait(timeout=5)
    except Exception:  # noqa: BLE001 - already reaped or killed above
        pass


def _pgid(pid: int) -> int | None:
    import os

    try:
        return os.getpgid(pid)
    except OSError:
        return None
