"""IndexController: the one replica that decides which generation the endpoint serves.

Switch protocol (zero downtime; every request is answered by exactly one generation):

1. Notice: CURRENT.json names generation G' != G (polled every ``poll_s``, or on
   ``POST /admin/reload``). The lease is widened to {G, G'} before anything is loaded.
2. Load: G''s shard groups are deployed as new Serve applications (``<app>-gG'-NNN``, one per
   group, shard count free to differ from G), plus a QueryEncoder application when G' has
   encoder settings no running encoder has. The controller waits until every new replica has
   loaded its shards and reports healthy. If that fails, the new applications are deleted
   and G keeps serving; the error is returned to the caller of reload.
3. Flip: a new immutable `Route` (version + 1) replaces the old one. Ingress replicas fetch
   it (every ``route_refresh_s``, or at once after a reload they handled), warm their
   handles, and swap one reference. A request reads that reference once when it starts, so it
   uses G or G' for all its shards, never both.
4. Drain: ingress replicas report the route version they use and their requests in flight
   per generation. G's applications are deleted once every live ingress replica is on the new
   route with nothing in flight on G (or after ``drain_timeout_s``). Only then does the lease
   drop G.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ray import serve

from pipeline.serve.config import ServeConfig
from pipeline.catalog.leases import write_lease
from pipeline.serve.protocol import Route, ShardGroup, encoder_key

log = logging.getLogger(__name__)


class SwitchError(RuntimeError):
    """A generation could not be brought up; the previous one keeps serving."""


@dataclass
class _Report:
    at: float
    version: int
    inflight: dict[int, int]


def group_shards(names: list[str], shards_per_replica: int) -> list[list[str]]:
    """Consecutive runs of `shards_per_replica` shard names (0 = one run of all)."""
    size = len(names) if shards_per_replica == 0 else shards_per_replica
    return [names[i:i + size] for i in range(0, len(names), max(size, 1))]


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=100,
                  health_check_period_s=10)
class IndexController:
    async def __init__(self, config: dict) -> None:
        from pipeline.catalog import IndexLayout

        self.config = ServeConfig(**config)
        self.layout = IndexLayout.at(self.config.index, self.config.storage_options)
        self.prefix = serve.get_replica_context().app_name
        self.route: Route | None = None
        self._retiring: list[tuple[Route, float]] = []   # (route, when it stopped being active)
        self._loading: int | None = None
        self._reports: dict[str, _Report] = {}
        self._lock = asyncio.Lock()
        self._failed: dict[int, float] = {}               # generation -> when its switch failed
        self._last_poll: float | None = None
        self._switches = 0
        generation = await asyncio.to_thread(self._current_generation)
        if generation is None:
            raise SwitchError(f"{self.layout.url}: no committed index (no CURRENT.json); "
                              f"run `lsr index` first")
        await self._switch(generation)
        await self._remove_stale_apps(keep=self._apps_in_use())
        self._tasks = [asyncio.create_task(self._lease_loop()),
                       asyncio.create_task(self._retire_loop())]
        if self.config.poll_s > 0:
            self._tasks.append(asyncio.create_task(self._poll_loop()))

    # -- called by ingress replicas ------------------------------------------------------------
    async def get_route(self) -> Route:
        return self.route

    async def sync(self, replica: str, version: int, inflight: dict[int, int]) -> Route | None:
        """An ingress replica's heartbeat; returns the route when it is not the replica's."""
        self._reports[replica] = _Report(time.monotonic(), version, dict(inflight))
        return None if version == self.route.version else self.route

    async def reload(self) -> dict:
        """Switch to CURRENT's generation now if it is not the one served."""
        previous = self.route.generation
        generation = await asyncio.to_thread(self._current_generation)
        if generation is None:
            raise SwitchError(f"{self.layout.url}: CURRENT.json has disappeared")
        switched = await self._switch(generation)
        return {"generation": self.route.generation, "previous": previous, "switched": switched,
                "route_version": self.route.version}

    async def state(self) -> dict:
        now = time.monotonic()
        return {"generation": self.route.generation, "route_version": self.route.version,
                "loading": self._loading, "switches": self._switches,
                "retiring": [r.generation for r, _ in self._retiring],
                "last_poll_age_s": None if self._last_poll is None else round(now - self._last_poll, 3),
                "ingress_replicas": {k: {"version": r.version, "inflight": r.inflight,
                                         "age_s": round(now - r.at, 3)}
                                     for k, r in self._reports.items()},
                "lease": self.config.lease_id}

    # -- the switch --------------------------------------------------------------------------
    def _current_generation(self) -> int | None:
        from pipeline.catalog import read_current_generation

        return read_current_generation(self.layout)

    async def _switch(self, generation: int) -> bool:
        """Steps 1-3 of the module docstring. True when a new route was published."""
        async with self._lock:
            if self.route is not None and self.route.generation == generation:
                return False
            self._loading = generation
            try:
                await self._write_lease()
                route = await self._bring_up(generation)
            except BaseException:
                self._failed[generation] = time.monotonic()
                raise
            finally:
                self._loading = None
            if self.route is not None:
                self._retiring.append((self.route, time.monotonic()))
            self.route = route
            self._switches += 1
            self._failed.pop(generation, None)
            await self._write_lease()
            log.info("serving generation %d (route %d, %d shards in %d groups)", generation,
                     route.version, len(route.shards), len(route.groups))
            return True

    async def _bring_up(self, generation: int) -> Route:
        from pipeline.serve.encoder import QueryEncoder
        from pipeline.serve.searcher import ShardSearcher
        from pipeline.catalog import read_manifest

        cfg = self.config
        manifest = await asyncio.to_thread(read_manifest, self.layout, generation)
        if not manifest.shards:
            raise SwitchError(f"generation {generation} has no shards")
        targets, groups, apps = [], [], []
        by_name = {s.name: s for s in manifest.shards}
        for i, names in enumerate(group_shards([s.name for s in manifest.shards],
                                               cfg.shards_per_replica)):
            app = f"{self.prefix}-g{generation:06d}-{i:03d}"
            deployment = f"ShardSearcher-g{generation:06d}-{i:03d}"
            searcher = ShardSearcher.options(
                name=deployment, num_replicas=cfg.replicas_per_shard,
                ray_actor_options={"num_cpus": cfg.searcher_cpus},
            ).bind(cfg.index, cfg.storage_options, generation, names, cfg.search_threads)
            targets.append(serve.RunTarget(target=searcher, name=app, route_prefix=None))
            groups.append(ShardGroup(app, deployment, tuple(names),
                                     sum(by_name[n].n_docs for n in names)))
            apps.append(app)
        encoder_app = None
        if cfg.encoder_placement == "deployment":
            encoder_app = f"{self.prefix}-enc-{encoder_key(manifest.encoder)}"
            encoder = QueryEncoder.options(
                num_replicas=cfg.encoder_replicas,
                ray_actor_options={"num_cpus": cfg.encoder_cpus, "num_gpus": cfg.encoder_gpus},
            ).bind(manifest.encoder, cfg.encoder_threads, cfg.max_batch_size,
                   cfg.batch_wait_timeout_s)
            targets.append(serve.RunTarget(target=encoder, name=encoder_app, route_prefix=None))
        # Adopt applications that already run (shared encoder; a restarted controller): a
        # redeploy of the same application would replace its replicas for nothing.
        status = await asyncio.to_thread(serve.status)
        running = {name for name, app in status.applications.items() if app.status == "RUNNING"}
        new = [t for t in targets if t.name not in running]
        started = time.perf_counter()
        try:
            if new:
                await asyncio.wait_for(asyncio.to_thread(serve.run_many, new),
                                       timeout=cfg.deploy_timeout_s)
        except BaseException as exc:
            log.error("bringing up generation %d failed (%s: %s); removing its applications",
                      generation, type(exc).__name__, exc)
            await self._delete_apps([t.name for t in new if t.name not in self._apps_in_use()])
            raise SwitchError(f"generation {generation} could not be served: "
                              f"{type(exc).__name__}: {exc}") from exc
        log.info("generation %d: %d applications started, %d adopted, in %.1fs", generation,
                 len(new), len(targets) - len(new), time.perf_counter() - started)
        # Versions only grow, also across controller restarts: wall-clock milliseconds.
        version = max(int(time.time() * 1000), (self.route.version + 1) if self.route else 0)
        return Route(version=version, generation=generation, groups=tuple(groups),
                     encoder_settings=manifest.encoder, encoder_app=encoder_app,
                     n_docs=manifest.n_docs, apps=tuple(apps))

    # -- retiring old generations ----------------------------------------------------------------
    def _apps_in_use(self) -> set[str]:
        routes = [r for r, _ in self._retiring] + ([self.route] if self.route else [])
        return {a for r in routes for a in r.apps} | {r.encoder_app for r in routes if r.encoder_app}

    def _drained(self, route: Route, since: float, now: float) -> bool:
        if now - since >= self.config.drain_timeout_s:
            log.warning("generation %d: retiring after drain timeout (%.0fs) with requests "
                        "possibly in flight", route.generation, self.config.drain_timeout_s)
            return True
        if now - since < 2 * self.config.route_refresh_s:
            return False  # give every ingress replica a chance to report once
        alive = [r for r in self._reports.values()
                 if now - r.at < 4 * self.config.route_refresh_s + 1.0]
        return all(r.version >= self.route.version and r.inflight.get(route.generation, 0) == 0
                   for r in alive)

    async def _retire_ready(self) -> None:
        async with self._lock:
            now = time.monotonic()
            done = [(r, s) for r, s in self._retiring if self._drained(r, s, now)]
            if not done:
                return
            remaining = [(r, s) for r, s in self._retiring if (r, s) not in done]
            keep = {a for r in [self.route] + [r for r, _ in remaining] for a in r.apps} | \
                {r.encoder_app for r in [self.route] + [r for r, _ in remaining] if r.encoder_app}
            doomed = {a for r, _ in done for a in r.apps} | {r.encoder_app for r, _ in done
                                                            if r.encoder_app}
            await self._delete_apps(sorted(doomed - keep))
            # Only now: a generation stays listed (and leased) until its replicas are gone.
            self._retiring = remaining
            await self._write_lease()
            for r, _ in done:
                log.info("generation %d retired", r.generation)

    async def _delete_apps(self, names: list[str]) -> None:
        for name in names:
            try:
                await asyncio.to_thread(serve.delete, name, True)
            except Exception as exc:  # noqa: BLE001 - keep retiring the others
                log.warning("could not delete application %s: %s", name, exc)

    async def _remove_stale_apps(self, keep: set[str]) -> None:
        """Applications of ours left by an earlier controller (a crash mid-switch)."""
        status = await asyncio.to_thread(serve.status)
        stale = [name for name in status.applications
                 if (name.startswith(f"{self.prefix}-g") or name.startswith(f"{self.prefix}-enc-"))
                 and name not in keep]
        if stale:
            log.info("removing stale applications %s", stale)
            await self._delete_apps(stale)

    # -- background loops ------------------------------------------------------------------------
    async def _write_lease(self) -> None:
        held = [r.generation for r, _ in self._retiring]
        if self._loading is not None:
            held.append(self._loading)
        generation = self.route.generation if self.route else self._loading
        await asyncio.to_thread(write_lease, self.layout, self.config.lease_id, generation,
                                self.config.lease_ttl_s, held)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl_s / 3)
            try:
                async with self._lock:
                    await self._write_lease()
            except Exception as exc:  # noqa: BLE001 - storage hiccup: try again next round
                log.warning("lease renewal failed: %s", exc)

    async def _retire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.route_refresh_s)
            try:
                await self._retire_ready()
            except Exception as exc:  # noqa: BLE001
                log.warning("retiring generations failed: %s", exc)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_s)
            try:
                generation = await asyncio.to_thread(self._current_generation)
                self._last_poll = time.monotonic()
                if generation is None or generation == self.route.generation:
                    continue
                failed_at = self._failed.get(generation)
                if failed_at is not None and time.monotonic() - failed_at < 10 * self.config.poll_s:
                    continue  # back off from a generation that just failed to load
                log.info("CURRENT moved to generation %d; switching", generation)
                await self._switch(generation)
            except Exception as exc:  # noqa: BLE001 - keep serving the current generation
                log.error("generation poll/switch failed: %s", exc)
