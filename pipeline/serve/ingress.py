"""Ingress: the HTTP face of the endpoint (FastAPI through ``@serve.ingress``).

Two topologies (`ServeConfig.topology`):

* embedded: this replica holds every shard of the generation (`ShardedIndex`) and the query
  encoder, and answers ``POST /search`` in process, in one worker-thread call: encode,
  search each shard, merge, resolve ids. No handle hops.
  Concurrent single-query requests with the same search parameters are micro-batched
  (`pipeline.serve.batching`, ``embedded_batch_size``): one call encodes and searches them
  all, each answered exactly as alone.
* split: ``POST /search`` encodes the queries (QueryEncoder deployment, or in this replica),
  fans the encoded batch out to every ShardSearcher group of one generation at once; each
  group answers its own merged top-k as generation rows; this replica merges them with
  `pipeline.search.merge_rows` (the in-process merge) and resolves the ids.

Responses carry a ``Server-Timing`` header with the stages measured here (ms): ``route``
(from the request's arrival in this app to the handler: FastAPI's middleware, routing and
dependencies), ``encode``, ``search``, ``merge``, ``serialize`` and ``ingress`` (the handler,
end to end); in the embedded topology also ``wait``: from the handler's start to the encode
call in the worker thread (body read and parse, the thread hop, the wait for a GIL and,
micro-batched, for the batch). In the split topology ``encode`` includes the handle hop to
the encoder. With ``LSR_SERVE_TRACE=1`` in the replica's environment, responses also carry
``X-LSR-Clock``: this process's clock at the arrival and at the end of the handler (the
headers' format: `pipeline.serve.timing`).

Each request reads the active route once, so all its shards belong to one generation, and
the response names it. Shards that do not answer within the request's time budget (or whose
replica died twice) are missing: ``partial: true`` with their names, or 503 when partial
answers are not allowed. A shard call that fails because its replica died is retried once;
the router has by then marked that replica dead, so the retry goes to another one.
"""


import asyncio
import hmac
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from pipeline.serve.api import ReloadResponse, SearchRequest, SearchResponse
from pipeline.serve.config import ServeConfig
from pipeline.serve.direct import ARRIVED, validation_response
from pipeline.serve.protocol import GroupAnswer, QueryBatch, Route, SearchParams, encoder_key
from pipeline.serve.timing import CLOCK_HEADER, TRACE_ENV, clock, server_timing

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)

app = FastAPI(title="lsr-pipeline search",
              description="Learned sparse retrieval over a sharded, generation-versioned index.")


class _StampArrival:
    """Pure ASGI middleware, outermost in the app: stamps each request's arrival (one
    clock read; the ``route`` stage of Server-Timing starts here)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope[ARRIVED] = time.perf_counter()
        await self.inner(scope, receive, send)


app.add_middleware(_StampArrival)
_api_key_doc = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                            description="Required when the server runs with an API key.")
_SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SearchRequest.model_json_schema()}}}}


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_response(exc)


@dataclass(frozen=True)
class _Active:
    """A route with the handles (or in-process encoder) that serve it."""

    route: Route
    searchers: tuple[Any, ...]     # DeploymentHandle per group, method "search"
    infos: tuple[Any, ...]         # DeploymentHandle per group, method "info"
    encode: Any                    # DeploymentHandle (method "encode") or an encoder object
    doc_ids: Any                   # the generation's ids in row order (numpy object array)
    engine: Any = None             # ShardedIndex of an embedded route
    schema: tuple = ()             # the generation's field schema (FieldSpec tuple)


@dataclass(frozen=True)
class _Extras:
    """A request's checked filter, return fields and explain settings."""

    filter: Any = None             # pipeline.search.Filter or None
    fields: list[str] | None = None
    explain: bool = False
    explain_terms: int = 64

    @property
    def details(self) -> bool:
        return self.fields is not None or self.explain


def _merged_details(answers: list[GroupAnswer], rows) -> list[list[dict]]:
    """Each group's per-hit details, following its rows through the global merge (a
    generation row belongs to one group, so the row identifies its detail)."""
    out = []
    for q in range(rows.shape[0]):
        by_row = {}
        for a in answers:
            valid = a.rows[q][a.rows[q] >= 0]
            by_row.update(zip(valid.tolist(), a.details[q]))
        out.append([by_row[r] for r in rows[q][rows[q] >= 0].tolist()])
    return out


class _Missing(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64,
                  health_check_period_s=5)
@serve.ingress(app)
class Ingress:
    async def __init__(self, config: dict, controller) -> None:
        from pipeline.serve.metrics import EndpointMetrics

        self.config = ServeConfig(**config)
        self.controller = controller
        self.api_key = None
        if self.config.api_key_env:
            self.api_key = os.environ.get(self.config.api_key_env) or None
            if self.api_key is None:
                raise RuntimeError(f"API key auth is on (api_key_env={self.config.api_key_env!r}) "
                                   f"but that environment variable is empty in the ingress replica")
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.trace = os.environ.get(TRACE_ENV) == "1"
        self.metrics = EndpointMetrics()
        self.inflight: Counter[int] = Counter()
        self._encoders: dict[str, Any] = {}   # encoder_key -> in-process encoder
        self._activation = asyncio.Lock()
        self.active: _Active | None = None
        self.batcher = None
        if self.config.embedded_batch_size > 1:
            from pipeline.serve.batching import MicroBatcher

            self.batcher = MicroBatcher(self._answer_embedded_batch, self.config.embedded_batch_size,
                                        self.config.embedded_batch_wait_s)
        await self._activate(await controller.get_route.remote())
        self._refresher = asyncio.create_task(self._refresh_loop())
        self.direct = None
        if self.config.direct_port is not None:
            from pipeline.serve.direct import start_direct_server

            prefix = self.config.route_prefix.rstrip("/")
            self.direct = await start_direct_server(
                self._direct_routes(prefix), self.config.direct_host, self.config.direct_ports(),
                f"the routes are {prefix}/search, /healthz, /stats, /metrics, /admin/reload, /docs")

    def _direct_routes(self, prefix: str) -> dict:
        """Every route of the Serve app, for this replica's own HTTP server (same handlers)."""
        from fastapi.openapi.docs import get_swagger_ui_html
        from starlette.responses import JSONResponse

        async def openapi(request):
            return JSONResponse(app.openapi())

        async def docs(request):
            return get_swagger_ui_html(openapi_url=f"{prefix}/openapi.json", title=app.title)

        async def healthz(request):
            return await self.healthz()

        async def metrics(request):
            return await self.metrics_text()

        return {f"{prefix}/search": {"POST": self.search},
                f"{prefix}/healthz": {"GET": healthz},
                f"{prefix}/stats": {"GET": self.stats},
                f"{prefix}/metrics": {"GET": metrics},
                f"{prefix}/admin/reload": {"POST": self.reload},
                f"{prefix}/openapi.json": {"GET": openapi},
                f"{prefix}/docs": {"GET": docs}}

    def check_health(self) -> None:
        """Serve's health check: a direct-port server that stopped on its own fails it, so
        Serve replaces the replica."""
        if self.direct is not None and self.direct.failed is not None:
            raise RuntimeError(f"direct port {self.direct.port}: {self.direct.failed!r}")

    async def __del__(self) -> None:
        """Serve's replica shutdown: let the direct port's accepted requests finish, then
        close it (Serve drains only the requests it routed itself)."""
        if getattr(self, "direct", None) is not None:
            await self.direct.stop()

    # -- routes ---------------------------------------------------------------------------------
    async def _activate(self, route: Route) -> None:
        """Warm the new route's handles, then swap the one reference requests read."""
        async with self._activation:
            if self.active is not None and self.active.route.version >= route.version:
                return
            if self.active is not None and self.active.route.generation == route.generation \
                    and self.active.route.embedded and route.embedded:
                engine = self.active.engine       # same generation (a restarted controller)
            else:
                engine = None
            searchers, infos = [], []
            for group in route.groups:
                handle = serve.get_deployment_handle(group.deployment, group.app)
                searchers.append(handle.options(method_name="search"))
                infos.append(handle.options(method_name="info"))
            # One call per group: the handles learn their replicas before user traffic does.
            await asyncio.gather(*(h.remote() for h in infos))
            if route.encoder_app is not None:
                encode = serve.get_deployment_handle("QueryEncoder", route.encoder_app) \
                    .options(method_name="encode")
                await encode.remote(["warm up"])
            else:
                key = encoder_key(route.encoder_settings)
                if key not in self._encoders:
                    from pipeline.serve.encoder import load_query_encoder

                    self._encoders[key] = await asyncio.to_thread(
                        load_query_encoder, route.encoder_settings, self.config.encoder_threads)
                encode = self._encoders[key]
            if route.embedded:
                if engine is None:
                    engine = await asyncio.to_thread(self._open_embedded, route, encode)
                doc_ids = engine.doc_ids
            elif self.active is not None and self.active.route.generation == route.generation:
                doc_ids = self.active.doc_ids
            else:
                doc_ids = await asyncio.to_thread(self._read_ids, route.generation)
            if route.embedded:
                schema = engine.schema
            else:
                schema = await asyncio.to_thread(self._read_schema, route.generation)
            previous = self.active
            self.active = _Active(route, tuple(searchers), tuple(infos), encode, doc_ids, engine,
                                  schema)
            self.metrics.generation(route.generation, switched=previous is not None)
            if previous is not None:
                log.info("ingress %s: generation %d -> %d", self.replica,
                         previous.route.generation, route.generation)

    def _open_embedded(self, route: Route, encoder):
        """Load every shard of the route's generation here, and compile its kernels."""
        from pipeline.search import ShardedIndex

        engine = ShardedIndex.open(self.config.index, self.config.storage_options,
                                   generation=route.generation,
                                   filter_cache_bytes=self.config.filter_cache_bytes)
        engine._encoder = encoder          # noqa: SLF001 - the replica's one encoder
        vectors = encoder.encode_queries(["warm up"])
        engine.search_rows(vectors, k=1, threads=1)
        return engine

    def _read_ids(self, generation: int):
        from pipeline.catalog import IndexLayout, read_manifest
        from pipeline.search import read_doc_ids

        layout = IndexLayout.at(self.config.index, self.config.storage_options)
        return read_doc_ids(layout, read_manifest(layout, generation))

    def _read_schema(self, generation: int) -> tuple:
        from pipeline.catalog import IndexLayout, read_manifest
        from pipeline.format.fields import schema_from_json

        layout = IndexLayout.at(self.config.index, self.config.storage_options)
        return schema_from_json(read_manifest(layout, generation).fields)

    async def _refresh(self) -> None:
        inflight = {g: n for g, n in self.inflight.items() if n}
        route = await self.controller.sync.remote(self.replica, self.active.route.version, inflight)
        if route is not None:
            await self._activate(route)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.route_refresh_s)
            try:
                await self._refresh()
            except Exception as exc:  # noqa: BLE001 - keep serving the route we have
                log.warning("route refresh failed: %s: %s", type(exc).__name__, exc)

    # -- request checks -----------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get(API_KEY_HEADER)
        if not given or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise HTTPException(status_code=401, detail=f"missing or invalid {API_KEY_HEADER} header",
                                headers={"WWW-Authenticate": API_KEY_HEADER})

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_large = HTTPException(status_code=413, detail=f"request body larger than {limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, body: bytes) -> SearchRequest:
        try:
            req = SearchRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
        errors = []
        texts = req.texts()
        if len(texts) > self.config.max_queries:
            errors.append({"loc": ("body", "queries"), "type": "too_long",
                           "msg": f"{len(texts)} queries; at most {self.config.max_queries} per request"})
        if req.k > self.config.max_k:
            errors.append({"loc": ("body", "k"), "type": "less_than_equal",
                           "msg": f"k must be <= {self.config.max_k}"})
        long = [i for i, t in enumerate(texts) if len(t) > self.config.max_query_chars]
        if long:
            errors.append({"loc": ("body", "queries" if req.queries is not None else "query"),
                           "type": "too_long",
                           "msg": f"queries {long[:5]} exceed {self.config.max_query_chars} characters"})
        if errors:
            raise RequestValidationError(errors)
        return req

    def _extras(self, active: _Active, req: SearchRequest) -> _Extras:
        """Check the request's filter, fields and explain against the generation's fields and
        the configured limits: 413 when too large, 422 when invalid."""
        from pipeline.search import FieldRequestError, FilterError, compile_filter
        from pipeline.search.filters import FilterTooLarge
        from pipeline.search.sharded import check_field_names

        cfg = self.config

        def invalid(where: str, msg: str) -> RequestValidationError:
            return RequestValidationError([{"loc": ("body", where), "type": "value_error",
                                            "msg": msg}])

        flt = None
        if req.filter is not None:
            size = len(json.dumps(req.filter, separators=(",", ":")).encode("utf-8"))
            if size > cfg.max_filter_bytes:
                raise HTTPException(413, detail=f"filter is {size} bytes; at most "
                                                f"{cfg.max_filter_bytes}")
            try:
                flt = compile_filter(req.filter, active.schema, max_nodes=cfg.max_filter_nodes)
            except FilterTooLarge as exc:
                raise HTTPException(413, detail=str(exc)) from None
            except FilterError as exc:
                raise invalid("filter", str(exc)) from None
        names = None
        if req.fields is not None:
            if len(req.fields) > cfg.max_fields:
                raise HTTPException(413, detail=f"{len(req.fields)} fields asked; at most "
                                                f"{cfg.max_fields}")
            try:
                names = check_field_names(active.schema, req.fields)
            except FieldRequestError as exc:
                raise invalid("fields", str(exc)) from None
        terms = cfg.max_explain_terms if req.explain_terms is None else req.explain_terms
        if terms > cfg.max_explain_terms:
            raise HTTPException(413, detail=f"explain_terms {terms}; at most "
                                            f"{cfg.max_explain_terms}")
        return _Extras(flt, names, req.explain, terms)

    # -- search ---------------------------------------------------------------------------------
    @app.post("/search", response_model=SearchResponse, openapi_extra=_SEARCH_BODY,
              dependencies=[Security(_api_key_doc)],
              responses={401: {"description": "API key missing or wrong"},
                         413: {"description": "Body too large"},
                         422: {"description": "Invalid request"},
                         503: {"description": "Shards or encoder unavailable"}})
    async def search(self, request: Request) -> Response:
        """Top-k documents for one query or a batch of queries."""
        started = time.perf_counter()
        try:
            self._authorize(request)
            req = self._parse(await self._read_body(request))
        except HTTPException as exc:
            self.metrics.request("rejected")
            raise exc
        except RequestValidationError:
            self.metrics.request("rejected")
            raise
        active = self.active            # the one read of the route for this request
        try:
            extras = self._extras(active, req)
        except (HTTPException, RequestValidationError):
            self.metrics.request("rejected")
            raise
        generation = active.route.generation
        self.inflight[generation] += 1
        try:
            if active.route.embedded and self.batcher is not None and len(req.texts()) == 1 \
                    and extras.filter is None and not extras.details:
                # Every request field that changes the answer belongs in the key.
                key = (id(active), req.k, req.exact, req.query_cut, req.heap_factor)
                body, status, stages = await self.batcher.submit(key, (active, req, started))
            elif active.route.embedded:
                body, status, stages = await asyncio.to_thread(self._answer_embedded, active,
                                                               req, extras, started)
            else:
                body, status, stages = await self._search(active, req, extras, started)
        except HTTPException:
            self.metrics.request("error", time.perf_counter() - started)
            raise
        finally:
            self.inflight[generation] -= 1
        before = time.perf_counter()
        content = json.dumps(body, separators=(",", ":")).encode("utf-8")
        done = time.perf_counter()
        stages["serialize"] = done - before
        stages["ingress"] = done - started
        arrived = request.scope.get(ARRIVED, started)
        stages["route"] = started - arrived
        self.metrics.request(status, done - started, len(req.texts()))
        headers = {"Server-Timing": server_timing(stages)}
        if self.trace:
            headers[CLOCK_HEADER] = clock(arrived, done)
        return Response(content, media_type="application/json", headers=headers)

    def _answer_embedded(self, active: _Active, req: SearchRequest, extras: _Extras,
                         started: float) -> tuple[dict, str, dict]:
        """Encode, search every shard, merge and resolve ids, in this worker thread."""
        return self._answer_embedded_batch([(active, req, started)], extras)[0]

    def _answer_embedded_batch(self, items: list[tuple[_Active, SearchRequest, float]],
                               extras: _Extras = _Extras()) -> list[tuple[dict, str, dict]]:
        """`_answer_embedded` for requests with the same route and search parameters: one
        encode call and one search per shard for all their queries; each query is encoded
        on its own and scored independently, so each answer equals the request's alone.
        `extras` (filter, fields, explain) apply to every item: the micro-batcher only
        batches requests without any, so a batch with extras is a batch of one."""
        from pipeline.search import merge_rows

        active, first, _ = items[0]
        engine = active.engine
        texts = [t for _, req, _ in items for t in req.texts()]
        begun = time.perf_counter()
        try:
            queries = active.encode.encode_queries(texts)
        except Exception as exc:  # noqa: BLE001 - the encoder's failure becomes a 503
            self.metrics.error("encode_failed")
            log.error("query encoding failed: %s: %s", type(exc).__name__, exc)
            raise HTTPException(503, detail=f"query encoder failed ({type(exc).__name__})") from None
        encoded = time.perf_counter()
        params = {"query_cut": first.query_cut, "heap_factor": first.heap_factor}
        params = {k: v for k, v in params.items() if v is not None}
        allowed = [None] * len(engine.shards) if extras.filter is None \
            else engine.allowed(extras.filter)
        parts = [s.search_rows(queries, first.k, exact=first.exact,
                               threads=self.config.search_threads,
                               **params, **({} if a is None else {"allowed": a}))
                 for s, a in zip(engine.shards, allowed)]
        searched = time.perf_counter()
        all_rows, all_scores = parts[0] if len(parts) == 1 else merge_rows(parts, first.k)
        merged = time.perf_counter()
        details = None
        if extras.details:      # only ever a batch of one (the batcher takes no extras)
            from pipeline.search.sharded import hit_details

            details = hit_details(engine.shards, all_rows, queries, extras.fields, extras.explain,
                                  first.exact, engine.tokens() if extras.explain else None,
                                  extras.explain_terms)
        out, start = [], 0
        for _, req, started in items:
            stop = start + len(req.texts())
            body = self._body(active, req, extras, all_rows[start:stop], all_scores[start:stop],
                              None if details is None else details[start:stop],
                              list(active.route.shards), [], started, encoded, searched, merged)
            start = stop
            stages = {"wait": begun - started, "encode": encoded - begun,
                      "search": searched - encoded, "merge": merged - searched}
            out.append((body, "ok", stages))
        return out

    def _body(self, active: _Active, req: SearchRequest, extras: _Extras, rows, scores,
              details: list[list[dict]] | None, shards: list[str], missing: list[str],
              started: float, encoded: float, searched: float, merged: float) -> dict:
        """The response body: ids resolved from the merged rows; with fields or explain
        asked, ``details`` holds per query a dict per hit (`hit_details`)."""
        doc_ids = active.doc_ids
        results = []
        for q in range(rows.shape[0]):
            keep = rows[q] >= 0
            result = {"doc_ids": doc_ids[rows[q, keep]].tolist(),
                      "scores": scores[q, keep].tolist()}
            if extras.fields is not None:
                result["fields"] = [d["fields"] for d in details[q]]
            if extras.explain:
                result["explain"] = [d["explain"] for d in details[q]]
            results.append(result)
        total = time.perf_counter()
        return {
            "generation": active.route.generation, "k": req.k, "exact": req.exact,
            "results": results, "shards": shards, "partial": bool(missing),
            "missing_shards": missing,
            "timing": {"encode_ms": round((encoded - started) * 1000, 3),
                       "search_ms": round((searched - encoded) * 1000, 3),
                       "total_ms": round((total - started) * 1000, 3)},
        }

    async def _encode(self, active: _Active, texts: list[str]) -> QueryBatch:
        if active.route.encoder_app is None:
            from pipeline.serve.encoder import encode_batch

            # The fast path encodes one call at a time (its lock): safe from many threads.
            return await asyncio.to_thread(encode_batch, active.encode, texts)
        try:
            return await active.encode.remote(texts)
        except _REPLICA_GONE:
            self.metrics.retry()
            return await active.encode.remote(texts)

    async def _ask(self, handle, batch: QueryBatch, params: SearchParams) -> GroupAnswer:
        try:
            return await handle.remote(batch, params)
        except _REPLICA_GONE as exc:
            self.metrics.retry()
            log.warning("shard replica gone (%s); retrying once", type(exc).__name__)
        try:
            return await handle.remote(batch, params)
        except _REPLICA_GONE as exc:
            raise _Missing("replica_died") from exc

    async def _search(self, active: _Active, req: SearchRequest, extras: _Extras,
                      started: float) -> tuple[dict, str, dict]:
        route = active.route
        deadline = started + self.config.timeout_s
        texts = req.texts()
        try:
            batch = await asyncio.wait_for(self._encode(active, texts),
                                           timeout=max(deadline - time.perf_counter(), 0.001))
        except asyncio.TimeoutError:
            self.metrics.error("encode_timeout")
            raise HTTPException(503, detail="query encoding did not finish in time") from None
        except Exception as exc:  # noqa: BLE001 - the encoder's failure becomes a 503
            self.metrics.error("encode_failed")
            log.error("query encoding failed: %s: %s", type(exc).__name__, exc)
            raise HTTPException(503, detail=f"query encoder unavailable ({type(exc).__name__})") from None
        encoded = time.perf_counter()

        params = SearchParams(req.k, req.exact, req.query_cut, req.heap_factor,
                              None if extras.filter is None else extras.filter.expr,
                              None if extras.fields is None else tuple(extras.fields),
                              extras.explain, extras.explain_terms)
        tasks = [asyncio.ensure_future(self._ask(h, batch, params)) for h in active.searchers]
        done, pending = await asyncio.wait(tasks, timeout=max(deadline - time.perf_counter(), 0.001))
        for task in pending:
            task.cancel()
        answers: list[GroupAnswer] = []
        missing: list[str] = []
        for group, task in zip(route.groups, tasks):
            if task in pending:
                reason = "timeout"
            elif task.exception() is not None:
                exc = task.exception()
                reason = exc.reason if isinstance(exc, _Missing) else type(exc).__name__
                if not isinstance(exc, _Missing):
                    log.warning("shard group %s failed: %s: %s", group.deployment,
                                type(exc).__name__, exc)
            else:
                answers.append(task.result())
                continue
            self.metrics.shard_failure(reason)
            missing.extend(group.shards)
        searched = time.perf_counter()

        allow_partial = req.allow_partial if req.allow_partial is not None \
            else self.config.on_shard_failure == "partial"
        if missing and (not allow_partial or not answers):
            self.metrics.error("shards_missing")
            raise HTTPException(503, detail={"error": "shards did not answer", "generation":
                                             route.generation, "missing_shards": missing})
        from pipeline.search import merge_rows

        parts = [(a.rows, a.scores) for a in answers]
        rows, scores = parts[0] if len(parts) == 1 else merge_rows(parts, req.k)
        merged = time.perf_counter()
        details = _merged_details(answers, rows) if extras.details else None
        body = self._body(active, req, extras, rows, scores, details,
                          [s for a in answers for s in a.shards], missing, started, encoded,
                          searched, merged)
        stages = {"encode": encoded - started, "search": searched - encoded,
                  "merge": time.perf_counter() - searched}
        return body, "partial" if missing else "ok", stages

    # -- operations -----------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness and the generation this replica answers from."""
        return {"status": "ok", "generation": self.active.route.generation}

    @app.get("/stats", dependencies=[Security(_api_key_doc)])
    async def stats(self, request: Request) -> dict:
        """Generation, shards, documents, and the state of every shard group."""
        self._authorize(request)
        active = self.active
        route = active.route

        async def probe(handle):
            return await asyncio.wait_for(handle.remote(), timeout=self.config.timeout_s)

        infos = await asyncio.gather(*(probe(h) for h in active.infos), return_exceptions=True)
        shards = []
        if route.embedded:
            for shard in active.engine.shards:
                shards.append({"name": shard.entry.name, "deployment": None, "app": self.replica,
                               "state": "ok", "replica": {
                                   "exact_loads": {shard.entry.name: shard.exact_loads},
                                   "n_docs": shard.entry.n_docs}})
        for group, info in zip(route.groups, infos):
            ok = not isinstance(info, BaseException)
            for name in group.shards:
                shards.append({"name": name, "deployment": group.deployment, "app": group.app,
                               "state": "ok" if ok else f"unreachable ({type(info).__name__})",
                               "replica": info if ok else None})
        try:
            controller = await asyncio.wait_for(self.controller.state.remote(),
                                                timeout=self.config.timeout_s)
        except Exception as exc:  # noqa: BLE001
            controller = {"error": f"{type(exc).__name__}: {exc}"}
        return {"generation": route.generation, "route_version": route.version,
                "n_shards": len(route.shards), "n_docs": route.n_docs,
                "encoder": route.encoder_app or "ingress", "ingress_replica": self.replica,
                "topology": "embedded" if route.embedded else "split",
                "inflight": {str(g): n for g, n in self.inflight.items() if n},
                "batching": None if self.batcher is None else {
                    "batches": self.batcher.batches, "requests": self.batcher.items},
                "shards": shards, "controller": controller}

    @app.post("/admin/reload", response_model=ReloadResponse,
              dependencies=[Security(_api_key_doc)])
    async def reload(self, request: Request) -> dict:
        """Switch to the generation CURRENT.json names now (returns once it answers)."""
        self._authorize(request)
        try:
            result = await self.controller.reload.remote()
        except Exception as exc:  # noqa: BLE001 - report why the switch did not happen
            self.metrics.error("reload_failed")
            cause = getattr(exc, "cause", None) or exc
            raise HTTPException(503, detail=f"reload failed: {cause}") from None
        await self._refresh()
        return result

    @app.get("/metrics")
    async def metrics_text(self) -> Response:
        """This replica's counters in Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)
