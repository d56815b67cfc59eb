"""The commit phase of an indexing job, run by the job after staging has finished.

1. Duplicate ids across the whole plan (`pipeline.batch.dedup`); policy "fail" stops here.
2. Each shard is assembled by exactly one Ray task (one writer per shard, whole shards):
   its staged rows in row order, minus duplicates, go through `write_shard` (postings,
   kept fields, index, COMMITTED.json last). Shards committed by an earlier attempt of the same plan
   are kept as they are.
3. Rejects are gathered into rejects/gNNNNNN/rejects.jsonl, counts are checked.
4. The manifest is written, then CURRENT moves to it (`pipeline.batch.generation.publish`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from pipeline.batch.config import IndexJobConfig
from pipeline.batch.dedup import check_duplicates
from pipeline.batch.generation import count_empty, gather_rejects, new_manifest, publish
from pipeline.batch.plan import JobPlan
from pipeline.batch.shard_writer import ShardResult, reused_shard, write_shard
from pipeline.batch.staging import ShardState, read_staged_unit, staged_fields, staged_postings
from pipeline.catalog import IndexLayout, Manifest, WriterLock

log = logging.getLogger(__name__)


def shard_record(plan: JobPlan, shard: int) -> dict:
    """What an indexing shard's COMMITTED.json must hold to belong to `plan`."""
    return {"plan_id": plan.plan_id, "shard": shard}


@ray.remote
def _assemble_shard(plan: JobPlan, layout: IndexLayout, shard: int, drop_rows: list[int],
                    index_kind: str, index_params: dict, values_dtype: str, vocab_size: int,
                    threads: int, field_schema: tuple = ()) -> ShardResult:
    """The single writer of one shard: postings, fields (when kept), index, commit record."""
    started = time.perf_counter()
    table = read_staged_unit(plan, layout, shard)
    if drop_rows:
        keep = np.ones(table.num_rows, dtype=bool)
        keep[np.asarray(drop_rows, dtype=np.int64)] = False
        table = table.filter(pa.array(keep))
    if table.num_rows == 0:
        return ShardResult(entry=None)
    postings = staged_postings(table, vocab_size)
    fields = staged_fields(table, field_schema)
    # The staged table is the largest thing alive besides the vectors: gone before the
    # postings are written and the index is built (`write_shard` streams the rest).
    del table
    read_s = time.perf_counter() - started
    result = write_shard(layout, plan.shards[shard].name, postings, index_kind=index_kind,
                         index_params=index_params, values_dtype=values_dtype,
                         record=shard_record(plan, shard), threads=threads, fields=fields)
    result.write_s += read_s
    return result


@dataclass
class CommitResult:
    manifest: Manifest
    shards_reused: int
    build_s: float
    assemble_write_s: float
    duplicates: int
    built_docs: int


def commit_plan(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout, states: list[ShardState],
                encoder_settings: dict, timing: dict, build_threads: int, lock: WriterLock,
                manifest_extra: dict | None = None) -> CommitResult:
    """Steps 1-4 of the module docstring. Returns the committed manifest."""
    started = time.perf_counter()
    dups, drop = check_duplicates(config, plan, layout, states)
    timing["dedup_s"] = time.perf_counter() - started

    vocab_size = int(encoder_settings["vocab_size"])
    futures = {}
    results: dict[int, ShardResult] = {}
    for s, state in enumerate(states):
        if state.committed:
            results[s] = reused_shard(state.committed)
        else:
            futures[s] = _assemble_shard.options(num_cpus=config.resources.build_cpus).remote(
                plan, layout, s, drop.get(s, []), config.index_kind, config.index_params,
                config.values_dtype, vocab_size, build_threads, config.field_schema)
    started = time.perf_counter()
    for s, result in zip(futures, ray.get(list(futures.values()))):
        results[s] = result
    timing["assemble_wall_s"] = time.perf_counter() - started

    shards = [results[s].entry for s in sorted(results) if results[s].entry is not None]
    counts = gather_rejects(config, plan, layout, dups, sum(e.n_docs for e in shards), states)
    counts["docs_empty"] = count_empty(layout, shards, {
        r.entry.name: int(r.stats.get("empty_docs", 0)) for r in results.values() if r.entry})
    manifest = new_manifest(config, plan, shards, encoder_settings, counts, timing, manifest_extra)
    publish(layout, plan, manifest, lock)
    return CommitResult(manifest=manifest, shards_reused=sum(r.reused for r in results.values()),
                        build_s=sum(r.build_s for r in results.values()),
                        assemble_write_s=sum(r.write_s for r in results.values()),
                        duplicates=len(dups),
                        built_docs=sum(r.entry.n_docs for r in results.values()
                                       if r.entry is not None and not r.reused))
