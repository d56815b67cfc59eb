"""Building and running the endpoint: the Serve app builder and start/stop helpers.

``build_app`` is the import path a Serve config names (``pipeline.serve.app:build_app``, used
by `serve run`, `serve deploy` and a RayService's ``serveConfigV2``); its ``args`` are
`ServeConfig` fields. The application holds the Ingress and the IndexController; the
controller starts one Serve application per shard group of the live generation (and one for
the QueryEncoder) and replaces them at every generation switch.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve import Application

from pipeline.serve.config import ServeConfig
from pipeline.serve.controller import IndexController
from pipeline.serve.ingress import Ingress

log = logging.getLogger(__name__)


def build_endpoint(config: ServeConfig, ingress_env: dict[str, str] | None = None,
                   controller_env: dict[str, str] | None = None) -> Application:
    """The endpoint as a Serve application graph.

    ``ingress_env``: environment variables for the ingress replicas only, for a cluster whose
    workers were started without them (e.g. the API key in tests); in Kubernetes the key
    comes from a Secret in the pod environment instead. ``controller_env``: the same for the
    controller (tests: ``LSR_TEST_SWITCH_DELAY_S``).
    """
    args = config.to_args()
    controller_options: dict[str, Any] = {"num_cpus": config.controller_cpus}
    if controller_env:
        controller_options["runtime_env"] = {"env_vars": dict(controller_env)}
    controller = IndexController.options(ray_actor_options=controller_options,
                                         logging_config=config.logging_config()).bind(args)
    actor_options: dict[str, Any] = {"num_cpus": config.ingress_cpus}
    if ingress_env:
        actor_options["runtime_env"] = {"env_vars": dict(ingress_env)}
    return Ingress.options(num_replicas=config.ingress_replicas, ray_actor_options=actor_options,
                           logging_config=config.logging_config()).bind(args, controller)


def build_app(args: dict[str, Any]) -> Application:
    """Serve config entry point: ``import_path: pipeline.serve.app:build_app``."""
    return build_endpoint(ServeConfig.from_args(dict(args)))


def run_endpoint(config: ServeConfig, ingress_env: dict[str, str] | None = None,
                 controller_env: dict[str, str] | None = None) -> None:
    """Deploy the endpoint on the connected Ray cluster; returns once it answers."""
    serve.run(build_endpoint(config, ingress_env, controller_env), name=config.app_name,
              route_prefix=config.route_prefix)


def endpoint_apps(app_name: str) -> list[str]:
    """The endpoint's Serve applications: its own and those of its generations and encoders."""
    names = serve.status().applications
    return [n for n in names if n == app_name or n.startswith(f"{app_name}-g")
            or n.startswith(f"{app_name}-enc-")]


def stop_endpoint(app_name: str = "lsr") -> None:
    """Delete the endpoint and every generation application it started."""
    if app_name in serve.status().applications:
        serve.delete(app_name)   # the controller first: nothing starts new generations after
    for name in endpoint_apps(app_name):
        serve.delete(name)
