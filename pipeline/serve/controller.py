"""IndexController: the one replica that decides which generation the endpoint serves.

Switch protocol (zero downtime; every request is answered by exactly one generation):

1. Notice: CURRENT.json names generation G' != G (polled every ``poll_s``, or on
   ``POST /admin/reload``). The lease is widened to {G, G'} before anything is loaded.
2. Load: every shard's stored index is checked first (committed, its format, its document
   count: one small read each), so a generation with a missing or unfinished index is refused
   in seconds, not after Serve's constructor retries. Then G''s shard groups are deployed as
   new Serve applications (``<app>-gG'-NNN``, one per
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

Embedded topology: step 2 deploys nothing; the controller loads G' once itself (in a worker
thread, then drops it) to refuse a generation that cannot load, and each ingress replica
loads G' before it swaps its route. Draining is the same, with no applications to delete.

The lease is renewed by its own loop under its own small lock, never behind a switch (which
may take up to ``deploy_timeout_s``): it always names the served, loading and retiring
generations. A restarted controller adopts the applications of other generations that it
finds running as retiring routes: they are drained like any retired generation, not deleted
at once (requests may still run on them).

Fault injection for tests: the environment variable ``LSR_TEST_SWITCH_DELAY_S`` in the
controller's replica slows every switch's load step by that many seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
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
        self._started = time.monotonic()
        self._retiring: list[tuple[Route, float]] = []   # (route, when it stopped being active)
        self._loading: int | None = None
        self._reports: dict[str, _Report] = {}
        self._lock = asyncio.Lock()
        self._lease_lock = asyncio.Lock()
        self._tasks = [asyncio.create_task(self._lease_loop())]
        self._failed: dict[int, float] = {}               # generation -> when its switch failed
        self._last_poll: float | None = None
        self._switches = 0
        generation = await asyncio.to_thread(self._current_generation)
        if generation is None:
            raise SwitchError(f"{self.layout.url}: no committed index (no CURRENT.json); "
                              f"run `lsr index` first")
        await self._adopt_running_apps(generation)
        await self._switch(generation)
        self._tasks.append(asyncio.create_task(self._retire_loop()))
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
        from pipeline.search import check_shards
        from pipeline.serve.encoder import QueryEncoder
        from pipeline.serve.searcher import ShardSearcher
        from pipeline.catalog import read_manifest

        cfg = self.config
        manifest = await asyncio.to_thread(read_manifest, self.layout, generation)
        if not manifest.shards:
            raise SwitchError(f"generation {generation} has no shards")
        delay = float(os.environ.get("LSR_TEST_SWITCH_DELAY_S", "0") or 0)
        if delay > 0:
            log.warning("LSR_TEST_SWITCH_DELAY_S: slowing the switch by %.1fs", delay)
            await asyncio.sleep(delay)
        if self._embedded(manifest):
            return await self._bring_up_embedded(manifest)
        try:
            await asyncio.to_thread(check_shards, self.layout, manifest)
        except Exception as exc:  # noqa: BLE001 - unreadable storage refuses it too
            log.error("generation %d cannot be served: %s", generation, exc)
            raise SwitchError(f"generation {generation} could not be served: {exc}") from exc
        targets, groups, apps = [], [], []
        by_name = {s.name: s for s in manifest.shards}
        for i, names in enumerate(group_shards([s.name for s in manifest.shards],
                                               cfg.shards_per_replica)):
            app = f"{self.prefix}-g{generation:06d}-{i:03d}"
            deployment = f"ShardSearcher-g{generation:06d}-{i:03d}"
            searcher = ShardSearcher.options(
                name=deployment, num_replicas=cfg.replicas_per_shard,
                ray_actor_options={"num_cpus": cfg.searcher_cpus},
                logging_config=cfg.logging_config(),
            ).bind(cfg.index, cfg.storage_options, generation, names, cfg.search_threads,
                   cfg.filter_cache_bytes)
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
                logging_config=cfg.logging_config(),
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

    def _embedded(self, manifest) -> bool:
        if self.config.topology != "auto":
            return self.config.topology == "embedded"
        import psutil

        index_bytes = sum(max(s.index_nbytes, 8 * s.nnz) for s in manifest.shards)
        return self.config.embedded_fits(index_bytes, psutil.virtual_memory().available)

    async def _bring_up_embedded(self, manifest) -> Route:
        """Check that the generation loads (then drop it); ingress replicas load their own."""
        from pipeline.search import ShardedIndex

        generation = manifest.generation
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.to_thread(
                lambda: ShardedIndex.open(self.config.index, self.config.storage_options,
                                          generation=generation) and None),
                timeout=self.config.deploy_timeout_s)
        except BaseException as exc:
            log.error("generation %d cannot be loaded (%s: %s)", generation,
                      type(exc).__name__, exc)
            raise SwitchError(f"generation {generation} could not be served: "
                              f"{type(exc).__name__}: {exc}") from exc
        log.info("generation %d (embedded) checked in %.1fs", generation,
                 time.perf_counter() - started)
        version = max(int(time.time() * 1000), (self.route.version + 1) if self.route else 0)
        return Route(version=version, generation=generation, groups=(),
                     encoder_settings=manifest.encoder, encoder_app=None, n_docs=manifest.n_docs,
                     apps=(), embedded=True,
                     shard_names=tuple(s.name for s in manifest.shards))

    # -- retiring old generations ----------------------------------------------------------------
    def _apps_in_use(self) -> set[str]:
        routes = [r for r, _ in self._retiring] + ([self.route] if self.route else [])
        return {a for r in routes for a in r.apps} | {r.encoder_app for r in routes if r.encoder_app}

    def _drained(self, route: Route, since: float, now: float) -> bool:
        if now - since >= self.config.drain_timeout_s:
            log.warning("generation %d: retiring after drain timeout (%.0fs) with requests "
                        "possibly in flight", route.generation, self.config.drain_timeout_s)
            return True
        window = 4 * self.config.route_refresh_s + 1.0
        if now - since < 2 * self.config.route_refresh_s:
            return False  # give every ingress replica a chance to report once
        if now - self._started < window:
            return False  # a restarted controller: every live replica has not reported yet
        alive = [r for r in self._reports.values() if now - r.at < window]
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

    async def _adopt_running_apps(self, serving: int) -> None:
        """Applications of ours left by an earlier controller (a restart, a crash mid-switch)
        become retiring routes: drained like any retired generation, then deleted. Those of
        the generation about to be served are adopted by `_bring_up` instead."""
        status = await asyncio.to_thread(serve.status)
        pattern = re.compile(rf"^{re.escape(self.prefix)}-g(\d+)-\d+$")
        by_generation: dict[int, list[str]] = {}
        encoders = []
        for name in status.applications:
            m = pattern.match(name)
            if m is not None and int(m.group(1)) != serving:
                by_generation.setdefault(int(m.group(1)), []).append(name)
            elif name.startswith(f"{self.prefix}-enc-"):
                encoders.append(name)
        now = time.monotonic()
        for generation, apps in sorted(by_generation.items()):
            log.info("adopting generation %d's running applications %s to drain them",
                     generation, apps)
            self._retiring.append((Route(version=0, generation=generation, groups=(),
                                         encoder_settings={}, encoder_app=None, n_docs=0,
                                         apps=tuple(sorted(apps))), now))
        # Encoders: retired with the adopted generations (unless the served route uses one).
        if encoders:
            self._retiring.append((Route(version=0, generation=serving, groups=(),
                                         encoder_settings={}, encoder_app=None, n_docs=0,
                                         apps=tuple(sorted(encoders))), now))

    # -- background loops ------------------------------------------------------------------------
    async def _write_lease(self) -> None:
        """Write the lease from the state as it is now (served, loading, retiring)."""
        async with self._lease_lock:
            held = [r.generation for r, _ in self._retiring]
            if self._loading is not None:
                held.append(self._loading)
            generation = self.route.generation if self.route else self._loading
            if generation is None:
                return
            await asyncio.to_thread(write_lease, self.layout, self.config.lease_id, generation,
                                    self.config.lease_ttl_s, held)

    async def _lease_loop(self) -> None:
        """Renew every third of the TTL; never waits for a switch (not under ``_lock``)."""
        while True:
            await asyncio.sleep(self.config.lease_ttl_s / 3)
            try:
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
