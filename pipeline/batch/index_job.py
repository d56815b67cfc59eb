"""The indexing job: corpus -> encoded, sharded, indexed, committed generation.

    read (Ray Data source, CPU tasks) -> tokenize (CPU tasks) -> encode (actor pool,
    one GPU each, or CPU threads) -> stage parts (Datasink) -> commit phase (the job's own
    Ray tasks after staging: one writer per shard builds postings + index; manifest last)

A pre-encoded vectors corpus (`--format vectors`) skips tokenize and encode: its read blocks
are staged as read, and everything after is the same.

Re-running the same command after a crash resumes: staged read blocks are not encoded
again and committed shards are kept (their checksums verified in parallel Ray tasks).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from pipeline.batch.commit import commit_plan, shard_record
from pipeline.batch.config import IndexJobConfig
from pipeline.batch.plan import JobPlan, make_plan
from pipeline.batch.runtime import (connect_ray, encoder_settings, load_encoder, pending_blocks,
                                    plan_resources, postings_estimator, record_vector_facts,
                                    stage_pending, stage_report, vector_postings_estimator)
from pipeline.batch.shard_writer import committed_shards
from pipeline.batch.staging import ShardState, scan_staging
from pipeline.catalog import IndexLayout, WriterLock, acquire_writer_lock, shard_name
from pipeline.catalog.gc import collect_garbage_after_commit

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    output: str
    generation: int
    plan_id: str
    resumed: bool
    docs_in: int
    docs_indexed: int
    docs_rejected: int
    docs_empty: int                  # indexed with an empty vector (title and text blank)
    shards: int
    shards_reused: int
    blocks_encoded: int
    nnz: int
    wall_s: float
    docs_per_s: float
    stages: dict[str, dict] = field(default_factory=dict)
    bound_stage: str | None = None
    gc: dict = field(default_factory=dict)     # what garbage collection kept and deleted

    def to_json(self) -> dict:
        return asdict(self)


def scan_state(plan: JobPlan, layout: IndexLayout, verify: bool = True) -> list[ShardState]:
    """What earlier attempts of this plan left: committed shards (checked in parallel Ray
    tasks; Ray must be connected) and staged parts."""
    committed = committed_shards(layout, [(sp.name, shard_record(plan, sp.shard)) for sp in plan.shards],
                                 verify=verify)
    return scan_staging(plan, layout, committed)


def run_index_job(config: IndexJobConfig, manifest_extra: dict | None = None,
                  lock: WriterLock | None = None) -> JobSummary:
    """Run (or resume) the indexing job described by `config`; returns its summary.

    `manifest_extra`: more entries for the manifest's `extra` (re-indexing says why it
    rebuilt everything). `lock`: the root's writer lock when the caller holds it already;
    None takes it for the run (`WriterLockHeld` names a live holder).
    """
    layout = IndexLayout.at(config.output, config.storage_options)
    if lock is not None:
        return _run(config, layout, manifest_extra, lock)
    with acquire_writer_lock(layout, "lsr index", ttl_s=config.lock_ttl_s) as own:
        return _run(config, layout, manifest_extra, own)


def _run(config: IndexJobConfig, layout: IndexLayout, manifest_extra: dict | None,
         lock: WriterLock) -> JobSummary:
    import ray

    started = time.perf_counter()
    connect_ray(config.resources.address)
    placement = plan_resources(config, ray.cluster_resources())
    if config.vectors:  # pre-encoded: no encoder runs (the query model's settings, if any)
        settings = encoder_settings(config, placement)
        estimator = vector_postings_estimator(config, settings["vocab_size"])
    else:
        encoder = load_encoder(config)
        settings = encoder_settings(config, placement, encoder)
        estimator = postings_estimator(config, encoder)
    plan, resumed = make_plan(config, layout, name_unit=shard_name, postings_per_doc=estimator)
    estimator = encoder = None  # the driver's copy of the model is not needed any more
    states = scan_state(plan, layout)
    pending = pending_blocks(plan, layout, states)
    n_committed = sum(1 for st in states if st.committed)
    if resumed:
        log.info("resume: %d of %d shards committed, %d need reading", n_committed,
                 len(plan.shards), len(pending))
    # Discovery, planning, Ray start-up and the model fingerprint.
    timing: dict[str, float] = {"setup_s": time.perf_counter() - started}
    times = stage_pending(config, plan, layout, pending, placement, timing)
    # Staging is complete: read the state again (the stages just staged parts), then commit.
    fresh = scan_staging(plan, layout, [st.committed for st in states])
    settings = record_vector_facts(config, plan, layout, fresh, settings)
    result = commit_plan(config, plan, layout, fresh, settings, timing, placement.build_threads,
                         lock, manifest_extra)
    blocks_encoded = -(-times.rows // plan.block_rows) if times.rows else 0
    wall = time.perf_counter() - started
    manifest = result.manifest
    stages, bound = stage_report(times, result.built_docs, result.build_s, placement)
    summary = JobSummary(
        output=layout.url, generation=manifest.generation, plan_id=plan.plan_id, resumed=resumed,
        docs_in=manifest.counts["docs_in"], docs_indexed=manifest.counts["docs_indexed"],
        docs_rejected=manifest.counts["docs_rejected"],
        docs_empty=manifest.counts.get("docs_empty", 0), shards=len(manifest.shards),
        shards_reused=result.shards_reused, blocks_encoded=blocks_encoded, nnz=manifest.nnz,
        wall_s=round(wall, 3), docs_per_s=round(manifest.counts["docs_in"] / wall, 2) if wall else 0.0,
        stages=stages, bound_stage=bound,
        gc=collect_garbage_after_commit(layout, config.keep_generations, config.gc_min_age_s, lock))
    log.info("indexed %d docs (%d rejected) into %d shards, generation %d, in %.1fs (%.1f docs/s)",
             summary.docs_indexed, summary.docs_rejected, summary.shards, summary.generation,
             wall, summary.docs_per_s)
    return summary
