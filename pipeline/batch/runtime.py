"""What both jobs run before their commit phase: Ray and the encoder pool sized for the
cluster, the encoder's settings, and the read -> tokenize -> encode -> stage pipeline over
a plan's pending read blocks (`stage_pending`). A pre-encoded vectors corpus runs read ->
stage (its settings: `vector_settings`; the corpus facts found by reading it:
`record_vector_facts`)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from pipeline.batch.config import EncoderOptions, IndexJobConfig
from pipeline.batch.datasource import BadRecordError, CorpusDatasource, UnitResume
from pipeline.batch.plan import JobPlan
from pipeline.batch.sink import StageTimes, StagingSink
from pipeline.batch.stages import EncodeActor, on_vector_rows, tokenize_batch
from pipeline.batch.staging import ShardState, settle_unfinished_blocks
from pipeline.catalog import IndexLayout
from pipeline.data.records import FieldMap
from pipeline.faults import DRIVER_PID_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """How many encoder actors, and what each one reserves."""

    num_encoders: int
    encoder_cpus: float
    encoder_gpus: float
    torch_threads: int
    build_threads: int


def plan_resources(config: IndexJobConfig, cluster: dict) -> Placement:
    """Size the encoder pool from the cluster; explicit options win."""
    opts = config.resources
    cpus = float(cluster.get("CPU", os.cpu_count() or 1))
    gpus = float(cluster.get("GPU", 0))
    encoder_gpus = opts.encoder_gpus if opts.encoder_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if opts.num_encoders is not None:
        num = opts.num_encoders
    elif encoder_gpus > 0:
        num = max(1, int(gpus // encoder_gpus))
    else:
        num = max(1, int(cpus // 8)) if cpus >= 8 else 1
    if opts.encoder_cpus is not None:
        enc_cpus = opts.encoder_cpus
    elif encoder_gpus > 0:
        enc_cpus = min(2.0, max(0.5, (cpus - 1) / num))
    else:
        # Leave room for the read, tokenize and write tasks: whole CPUs for every actor
        # on a 2-core machine would deadlock the read stage (field notes).
        enc_cpus = max(0.5, min(cpus / num - 1.0, 7.0))
    torch_threads = max(1, int(cpus // num)) if encoder_gpus == 0 else 1
    return Placement(num, enc_cpus, encoder_gpus, torch_threads,
                     build_threads=max(1, int(config.resources.build_cpus)))


def connect_ray(address: str | None) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Crash tests: a fault point reached in a local worker kills this driver too.
    os.environ[DRIVER_PID_ENV] = str(os.getpid())
    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        log.info("starting a local Ray instance (pass --address to use a cluster)")
        # "local", not None: ray.init(None) would attach to whatever `ray start` last noted in
        # /tmp/ray/ray_current_cluster, and hang when that head is gone.
        address = "local"
    # Workers' own output (tracebacks of a failed task, Ray's retry advice) reaches the
    # driver only with debug logging (`lsr -v`): the job reports what stopped it itself.
    verbose = log.isEnabledFor(logging.DEBUG)
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    ray.init(address=address, ignore_reinit_error=True, configure_logging=False,
             log_to_driver=verbose)


def load_encoder(config: IndexJobConfig):
    """The job's encoder, on the driver's CPU (settings, plan-time estimates)."""
    from pipeline.encode import SpladeEncoder

    opts = config.encoder
    return SpladeEncoder(opts.model, device="cpu", max_length=opts.max_length,
                         query_max_length=opts.query_max_length, dtype=opts.dtype,
                         batch_size=opts.batch_size, top_k=opts.top_k, threshold=opts.threshold)


SAMPLE_DOCS = 32
"""Documents encoded on the driver at plan time to estimate postings per document: one
encoder batch (a few seconds on a CPU), enough for the mean within a few percent."""


def postings_estimator(config: IndexJobConfig, encoder):
    """`make_plan`'s estimate: mean postings per document of the corpus's first documents."""
    from pipeline.data.corpus import sample_texts

    def estimate(files) -> float | None:
        fields = FieldMap.from_options(config.id_field, config.title_field, config.text_field)
        texts = sample_texts(files, fields, SAMPLE_DOCS, config.storage_options)
        return encoder.encode(texts).nnz / len(texts) if texts else None

    return estimate


def encoder_settings(config: IndexJobConfig, placement: Placement | None = None,
                     encoder=None) -> dict:
    """What the encoder actors' vectors are (model fingerprint, lengths, pruning, dtype).
    For a vectors corpus: `vector_settings`.

    The model is loaded here on the CPU unless given; the dtype recorded is the one the
    actors resolve on their device ("auto" is bfloat16 on GPU actors, float32 on CPU ones).
    """
    import torch

    from pipeline.encode.config import dtype_name, resolve_dtype

    if config.vectors:
        return vector_settings(config)
    opts = config.encoder
    encoder = encoder or load_encoder(config)
    settings = encoder.settings()
    # The settings describe what the vectors are, not where they were computed.
    settings.pop("device", None)
    on_gpu = placement is not None and placement.encoder_gpus > 0
    settings["dtype"] = dtype_name(resolve_dtype(opts.dtype, torch.device("cuda" if on_gpu else "cpu")))
    return settings


@lru_cache(maxsize=4)
def _query_model_settings(options: EncoderOptions) -> dict:
    """The query model's settings (loaded once per process: `stage_pending` asks again)."""
    config = IndexJobConfig(corpus="-", output="-", encoder=options)
    return encoder_settings(config, None, load_encoder(config))


def vector_settings(config: IndexJobConfig) -> dict:
    """The manifest's encoder record of a pre-encoded vectors corpus: no encoder was run
    (``run: false``, ``input: "vectors"``; the model settings' own ``source`` is where the
    model was loaded from); ``query_model`` encodes queries (its settings are
    the record's, so search, evaluation and serving encode queries as for a model-built index),
    or None with a ``--vocab`` file alone; ``vocab_size`` bounds term ids (the query model's
    output, else the vocab file's length); ``quantised`` is filled in after reading
    (`record_vector_facts`)."""
    from pipeline.data.vectors import VectorVocabularyError

    model = config.encoder.model
    settings = dict(_query_model_settings(config.encoder)) if model else {}
    size = settings.get("vocab_size")
    if config.vocab:
        try:
            n_tokens = config.vector_source().vocabulary(config.storage_options).size
        except (FileNotFoundError, UnicodeDecodeError) as exc:
            raise VectorVocabularyError(f"cannot read --vocab {config.vocab}: {exc}") from None
        if size is not None and n_tokens > size:
            raise VectorVocabularyError(f"--vocab {config.vocab} has {n_tokens} tokens but the "
                                        f"query model {model!r} has a vocabulary of {size}")
        size = size or n_tokens
    return {**settings, "vocab_size": int(size), "run": False, "input": "vectors",
            "query_model": model, "vocab": config.vocab, "vector_keys": config.vector_keys,
            "quantised": None}


def record_vector_facts(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout,
                        states: list[ShardState], settings: dict) -> dict:
    """`settings` with ``quantised``: whether every weight of the corpus was an integer
    (Anserini's impacts), from the units' read summaries (a unit committed by an earlier
    attempt whose summary is gone: from its stored weights). Text corpora: unchanged."""
    if not config.vectors:
        return settings
    import numpy as np

    from pipeline.format.postings import read_postings

    n_valid = n_float = 0
    for sp_, state in zip(plan.shards, states):
        summary = state.read_summary
        if summary is not None:
            n_valid += summary["n_valid"]
            n_float += summary.get("n_float_weights", 0)
        elif state.committed:
            data = read_postings(layout.postings(sp_.name)).vectors.data
            n_valid += len(data) > 0
            n_float += bool(np.any(data != np.round(data)))
    return {**settings, "quantised": bool(n_valid and n_float == 0)}


def vector_postings_estimator(config: IndexJobConfig, vocab_size: int):
    """`make_plan`'s estimate for a vectors corpus: mean terms of its first vectors."""
    from pipeline.data.corpus import Chunk, read_vector_chunk

    def estimate(files) -> float | None:
        fields = FieldMap.from_options(config.id_field, config.title_field, config.text_field)
        source = config.vector_source(vocab_size)
        sizes: list[int] = []
        for f in files:
            chunk = Chunk(f, 0, 1 if f.format == "parquet" else 1 << 62)
            for record in read_vector_chunk(chunk, fields, source, config.storage_options):
                if record.error is None:
                    sizes.append(len(record.vector.indices))
                    if len(sizes) >= SAMPLE_DOCS:
                        return sum(sizes) / len(sizes)
        return sum(sizes) / len(sizes) if sizes else None

    return estimate


def pending_blocks(plan: JobPlan, layout: IndexLayout, states: list[ShardState]) -> dict[int, UnitResume]:
    """Units still to read, each with what is staged already: read blocks done, and the rows
    kept of unfinished blocks."""
    settle_unfinished_blocks(plan, layout, states)
    return {s: UnitResume(frozenset(state.done_blocks(plan.block_rows)), dict(state.staged_rows))
            for s, state in enumerate(states)
            if state.committed is None and not state.fully_staged(plan.block_rows)}


# An optional stage between read and tokenize: (function over a pyarrow batch, its kwargs).
ExtraStage = tuple[Callable[..., Any], dict[str, Any]]


def stage_pending(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout,
                  pending: dict[int, UnitResume], placement: Placement, timing: dict[str, float],
                  before_tokenize: ExtraStage | None = None) -> StageTimes:
    """Read the pending blocks, tokenize, encode and stage them; returns the stage times.

    The stages' busy times and the pipeline's wall time also go into `timing`. A bad record
    under the "fail" policy is raised as itself, not inside Ray's wrappers.
    """
    import ray
    from ray.data import ActorPoolStrategy

    started = time.perf_counter()
    times = StageTimes()
    if pending and config.vectors:
        ds = _vector_pipeline(config, plan, layout, pending, before_tokenize)
    elif pending:
        log.info("encoding %d read unit(s) with %d encoder actor(s) (%.2g CPU, %.2g GPU each)",
                 len(pending), placement.num_encoders, placement.encoder_cpus, placement.encoder_gpus)
        fields = FieldMap.from_options(config.id_field, config.title_field, config.text_field)
        source = CorpusDatasource(plan, layout, pending, fields, config.on_bad_record,
                                  config.storage_options, kept_fields=config.field_schema)
        ds = ray.data.read_datasource(source, num_cpus=config.resources.read_cpus)
        if before_tokenize is not None:
            fn, kwargs = before_tokenize
            ds = ds.map_batches(fn, batch_format="pyarrow", batch_size=None, fn_kwargs=kwargs,
                                num_cpus=config.resources.tokenize_cpus)
        ds = ds.map_batches(tokenize_batch, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"options": config.encoder},
                            num_cpus=config.resources.tokenize_cpus)
        ds = ds.map_batches(
            EncodeActor, batch_format="pyarrow", batch_size=config.encoder.batch_size * 4,
            compute=ActorPoolStrategy(size=placement.num_encoders),
            fn_constructor_kwargs={"options": config.encoder,
                                   "device": "cuda" if placement.encoder_gpus > 0 else "cpu",
                                   "torch_threads": placement.torch_threads},
            num_cpus=placement.encoder_cpus, num_gpus=placement.encoder_gpus or None)
    if pending:
        sink = StagingSink(plan, layout)
        try:
            ds.write_datasink(sink, ray_remote_args={"num_cpus": config.resources.tokenize_cpus})
        except Exception as exc:  # noqa: BLE001 - re-raised, unwrapped when it is the user's
            cause = user_error(exc)
            if cause is not None:
                raise cause from None
            raise
        times = sink.staged or StageTimes()
    timing.update({f"{name}_busy_s": getattr(times, name)
                   for name in ("read", "tokenize", "encode", "write")})
    timing["encode_pipeline_wall_s"] = time.perf_counter() - started
    return times


def _vector_pipeline(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout,
                     pending: dict[int, UnitResume], extra: ExtraStage | None):
    """read -> (extra stage) -> the sink: a vectors corpus's read blocks are staged as read."""
    import ray

    log.info("staging the pre-encoded vectors of %d read unit(s) (no encoder)", len(pending))
    fields = FieldMap.from_options(config.id_field, config.title_field, config.text_field)
    vectors = config.vector_source(vector_settings(config)["vocab_size"])
    source = CorpusDatasource(plan, layout, pending, fields, config.on_bad_record,
                              config.storage_options, vectors=vectors,
                              kept_fields=config.field_schema)
    ds = ray.data.read_datasource(source, num_cpus=config.resources.read_cpus)
    if extra is not None:
        fn, kwargs = extra
        ds = ds.map_batches(on_vector_rows, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"fn": fn, "fn_kwargs": kwargs},
                            num_cpus=config.resources.tokenize_cpus)
    return ds


def stage_report(times: StageTimes, built_docs: int, build_s: float,
                 placement: Placement) -> tuple[dict[str, dict], str | None]:
    """Per-stage rows and busy time, and the stage that bounds throughput (busy time per unit
    of capacity: the encoder pool has one unit per actor)."""
    stages = {
        "read": _stage(times.rows, times.read), "tokenize": _stage(times.encoded, times.tokenize),
        "encode": _stage(times.encoded, times.encode), "write": _stage(times.rows, times.write),
        "build": _stage(built_docs, build_s),
    }
    capacity = {"read": 1.0, "tokenize": 1.0, "write": 1.0, "build": 1.0,
                "encode": float(placement.num_encoders)}
    active = {k: v for k, v in stages.items() if v["busy_s"] > 0}
    bound = max(active, key=lambda k: active[k]["busy_s"] / capacity[k]) if active else None
    return stages, bound


def user_error(exc: BaseException) -> BaseException | None:
    """The task's own bad-record error inside Ray's wrappers, if that is what stopped the job."""
    from ray.exceptions import RayError

    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BadRecordError) and not isinstance(e, RayError):
            # Ray Data appends its retry advice to the task's message: keep our line only.
            message = str(e.args[0] if e.args else e).split("\n", 1)[0]
            return BadRecordError(message)
        # RayTaskError keeps the exception the task raised in `.cause`.
        stack.extend([e.__context__, e.__cause__, getattr(e, "cause", None)])
    return None


def _stage(rows: int, busy_s: float) -> dict:
    return {"rows": rows, "busy_s": round(busy_s, 4),
            "docs_per_busy_s": round(rows / busy_s, 2) if busy_s > 0 else None}
