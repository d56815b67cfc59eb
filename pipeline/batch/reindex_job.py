"""Incremental re-indexing: a new corpus snapshot -> a new generation beside the live one.

    read (Ray Data source, strict, read blocks; the indexing job's) -> classify (fingerprint,
    look up the base generation; unchanged documents lose their text) -> tokenize -> encode
    (actor pool; only added and changed documents) -> stage parts -> commit
    (`pipeline.batch.reindex_commit`: rebuild only shards that changed; manifest, then CURRENT)
    -> garbage collection (`pipeline.catalog.gc`)

A full rebuild (the indexing job on the new snapshot, a new generation beside the old one)
happens instead when there is no live generation yet, when `full` is asked for, or when the
requested vectors differ from the live ones (model fingerprint, lengths, pruning, dtype,
stored value dtype): vectors of two models are never mixed. The reason is logged and
reported. Changed index settings alone rebuild every shard's index from the stored vectors.

Re-running after a crash resumes the same plan (same snapshot, settings and base
generation): staged read blocks are not encoded again, output shards committed by the
interrupted attempt are kept. CURRENT moves last, so until then the base generation serves.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field

from pipeline.batch.config import IndexJobConfig
from pipeline.batch.generation import index_format_version, index_params
from pipeline.batch.index_job import run_index_job
from pipeline.batch.plan import make_plan
from pipeline.batch.reindex_commit import commit_reindex
from pipeline.batch.reindex_config import ReindexConfig
from pipeline.batch.reindex_diff import ReindexError, classify_batch, load_base_partitions
from pipeline.batch.runtime import (Placement, connect_ray, encoder_settings, pending_blocks,
                                    plan_resources, record_vector_facts, stage_pending, stage_report)
from pipeline.batch.staging import scan_staging
from pipeline.catalog.gc import collect_garbage_after_commit
from pipeline.catalog import (IndexLayout, Manifest, WriterLock, acquire_writer_lock,
                              read_current_generation, read_manifest)

log = logging.getLogger(__name__)

# Encoder settings that determine the document vectors (and the query encoder that matches).
VECTOR_SETTINGS = ("fingerprint", "vocab_size", "max_length", "query_max_length", "top_k",
                   "threshold", "dtype", "run")


@dataclass
class ReindexSummary:
    """What a re-indexing run did. Diff counts are None for a full rebuild (nothing compared)."""

    index: str
    generation: int                  # the live generation after the run
    base_generation: int | None
    committed: bool                  # False: nothing changed, base generation still live
    full_rebuild: bool
    rebuild_reason: str | None
    plan_id: str
    resumed: bool
    docs_in: int
    docs_indexed: int
    docs_rejected: int
    docs_empty: int                  # indexed with an empty vector (title and text blank)
    docs_added: int | None
    docs_changed: int | None
    docs_deleted: int | None
    docs_unchanged: int | None
    docs_reencoded: int              # encoded by this run (the encoder actors' own count)
    shards: int
    shards_rebuilt: int
    shards_reused: int
    shards_added: int
    wall_s: float
    stages: dict[str, dict] = field(default_factory=dict)
    gc: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    full: bool
    reason: str | None               # why everything is re-encoded, or why every shard is rebuilt
    rebuild_all: bool = False


def vector_differences(recorded: dict, requested: dict) -> list[str]:
    """Settings that make the requested vectors differ from the recorded ones."""
    return [f"{key} {recorded.get(key)!r} -> {requested.get(key)!r}" for key in VECTOR_SETTINGS
            if recorded.get(key) != requested.get(key)]


def decide(config: ReindexConfig, job: IndexJobConfig, base: Manifest | None,
           settings: dict) -> Decision:
    """Full rebuild, all shards rebuilt, or incremental; with the reason."""
    if base is None:
        return Decision(True, "no committed generation at the index root yet")
    if config.full:
        return Decision(True, "full rebuild requested")
    recorded_fields = [(f["name"], f["type"]) for f in base.fields]
    wanted_fields = [(spec.name, spec.type) for spec in job.field_schema]
    if recorded_fields != wanted_fields:
        return Decision(True, f"kept fields changed: {recorded_fields or 'none'} -> "
                              f"{wanted_fields or 'none'}")
    changed = vector_differences(base.encoder, settings)
    recorded_values = base.extra.get("values_dtype", job.values_dtype)
    if recorded_values != job.values_dtype:
        changed.append(f"values_dtype {recorded_values!r} -> {job.values_dtype!r}")
    if changed:
        return Decision(True, "encoder settings changed: " + ", ".join(changed))
    wanted = {"kind": job.index_kind, "params": index_params(job)}
    if not _same_index(base.index, job):
        return Decision(False, f"index settings changed: {base.index} -> {wanted}; every shard's "
                               f"index is rebuilt from the stored vectors", rebuild_all=True)
    # manifests from before the field was recorded hold version 1 indexes of either kind
    recorded_format = base.index.get("format_version", 1)
    current_format = index_format_version(job.index_kind)
    if recorded_format != current_format:
        return Decision(False, f"stored index format version {recorded_format} -> "
                               f"{current_format} (this lsr-pipeline reads only the latter); "
                               f"every shard's index is rebuilt from the stored vectors",
                        rebuild_all=True)
    return Decision(False, None)


def _same_index(recorded: dict, job: IndexJobConfig) -> bool:
    """The recorded index kind and parameters, read with this build's defaults, are the job's.

    (A parameter added since the base was built compares by its default.)"""
    if recorded.get("kind") != job.index_kind:
        return False
    try:
        as_recorded = index_params(dataclasses.replace(job, index_params=recorded.get("params") or {}))
    except (TypeError, ValueError):   # a parameter this build no longer knows
        return False
    return as_recorded == index_params(job)


def run_reindex(config: ReindexConfig) -> ReindexSummary:
    """Re-index `config.corpus` into `config.index` (resuming an interrupted identical run).

    Holds the root's writer lock throughout (`WriterLockHeld` names a live holder)."""
    layout = IndexLayout.at(config.index, config.storage_options)
    with acquire_writer_lock(layout, "lsr reindex", ttl_s=config.lock_ttl_s) as lock:
        return _run(config, layout, lock)


def _run(config: ReindexConfig, layout: IndexLayout, lock: WriterLock) -> ReindexSummary:
    import ray

    started = time.perf_counter()
    base_generation = read_current_generation(layout)
    base = read_manifest(layout, base_generation) if base_generation is not None else None
    try:
        job = config.job_config(base)
    except ValueError as exc:  # an override the recorded settings make invalid
        raise ReindexError(f"invalid re-indexing settings: {exc}") from None
    connect_ray(job.resources.address)
    placement = plan_resources(job, ray.cluster_resources())
    settings = encoder_settings(job, placement)
    decision = decide(config, job, base, settings)
    if decision.full:
        summary = _full_rebuild(job, decision, base_generation, lock)
    else:
        summary = _incremental(job, layout, base, settings, decision, placement, started, lock)
    summary.gc = collect_garbage_after_commit(layout, config.keep_generations,
                                              min_age_s=config.gc_min_age_s, lock=lock)
    summary.wall_s = round(time.perf_counter() - started, 3)
    log.info("re-indexed %s: generation %d (%s), %.1f s", layout.url, summary.generation,
             "full rebuild" if summary.full_rebuild else
             ("incremental" if summary.committed else "unchanged"), summary.wall_s)
    return summary


def _full_rebuild(job: IndexJobConfig, decision: Decision,
                  base_generation: int | None, lock: WriterLock) -> ReindexSummary:
    log.warning("FULL REBUILD of %s: %s; every document is encoded again", job.output,
                decision.reason)
    report = {"base_generation": base_generation, "full_rebuild": True,
              "rebuild_reason": decision.reason}
    s = run_index_job(job, manifest_extra={"reindex": report}, lock=lock)
    return ReindexSummary(
        index=s.output, generation=s.generation, base_generation=base_generation, committed=True,
        full_rebuild=True, rebuild_reason=decision.reason, plan_id=s.plan_id, resumed=s.resumed,
        docs_in=s.docs_in, docs_indexed=s.docs_indexed, docs_rejected=s.docs_rejected,
        docs_empty=s.docs_empty, docs_added=None, docs_changed=None, docs_deleted=None, docs_unchanged=None,
        docs_reencoded=s.stages["encode"]["rows"], shards=s.shards, shards_rebuilt=s.shards,
        shards_reused=0, shards_added=0, wall_s=s.wall_s, stages=s.stages)


def _incremental(job: IndexJobConfig, layout: IndexLayout, base: Manifest, settings: dict,
                 decision: Decision, placement: Placement, started: float,
                 lock: WriterLock) -> ReindexSummary:
    if decision.reason:
        log.warning("%s", decision.reason)
    plan, resumed = make_plan(job, layout, purpose="reindex")
    states = scan_staging(plan, layout)
    pending = pending_blocks(plan, layout, states)
    partitions = load_base_partitions(layout, base, job.resources.read_cpus) if pending else None
    timing: dict[str, float] = {"setup_s": time.perf_counter() - started}
    try:
        times = stage_pending(job, plan, layout, pending, placement, timing,
                              before_tokenize=(classify_batch, {"table": partitions}))
    finally:   # the base table's lookup actors are needed only while staging
        if partitions is not None:
            partitions.close()
    settings = record_vector_facts(job, plan, layout, scan_staging(plan, layout), settings)
    report = {"base_generation": base.generation, "full_rebuild": False,
              "rebuild_reason": decision.reason, "docs_reencoded": times.encoded}
    result = commit_reindex(job, plan, layout, base, scan_staging(plan, layout), settings, timing,
                            placement.build_threads, decision.rebuild_all, report, started, lock)
    stages, _ = stage_report(times, result.built_docs, result.build_s, placement)
    manifest = result.manifest
    return ReindexSummary(
        index=layout.url, generation=manifest.generation if manifest else base.generation,
        base_generation=base.generation, committed=manifest is not None, full_rebuild=False,
        rebuild_reason=decision.reason, plan_id=plan.plan_id, resumed=resumed,
        docs_in=result.docs_in, docs_indexed=sum(o.n_docs for o in result.outputs),
        docs_rejected=result.docs_rejected,
        docs_empty=manifest.counts.get("docs_empty", 0) if manifest else base.counts.get("docs_empty", 0),
        docs_added=report["docs_added"],
        docs_changed=report["docs_changed"], docs_deleted=report["docs_deleted"],
        docs_unchanged=report["docs_unchanged"], docs_reencoded=times.encoded,
        shards=len(result.outputs), shards_rebuilt=report["shards_rebuilt"],
        shards_reused=report["shards_reused"], shards_added=report["shards_added"],
        wall_s=0.0, stages=stages)

