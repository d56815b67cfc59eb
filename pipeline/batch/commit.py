"""The commit step of an indexing job: from staged parts to a visible generation.

1. Duplicate ids across the whole plan are found by hash-partitioned Ray tasks (ids only);
   the first occurrence in corpus order is kept. Policy "fail" stops here, naming both.
2. Each shard is assembled by exactly one Ray task (one writer per shard, whole shards):
   its parts in row order, minus duplicates, become the postings group; its index is
   built beside it; COMMITTED.json is written last. Shards committed by an earlier
   attempt of the same plan are kept as they are.
3. Rejects are gathered into rejects/gNNNNNN/rejects.jsonl.
4. The manifest is written, then CURRENT moves to it (`pipeline.catalog.commit_generation`).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import scipy.sparse as sp

from pipeline.data.corpus import describe_position
from pipeline.batch.config import IndexJobConfig
from pipeline.batch.datasource import BadRecordError
from pipeline.batch.plan import (
    PART_RE,
    JobPlan,
    ShardState,
    parts_loc,
    read_loc,
    rejects_loc,
    staging_paths,
)
from pipeline.objstore import exists, list_dir, read_bytes, read_json, remove, write_bytes_atomic, write_json_atomic
from pipeline.catalog import IndexLayout, Manifest, ShardEntry, commit_generation
from pipeline.format import ShardPostings, read_postings, save_index, write_postings
from pipeline.catalog.manifest import now_utc

log = logging.getLogger(__name__)


@dataclass
class Duplicate:
    shard: int
    row: int
    doc_id: str
    first_shard: int
    first_row: int


def read_staged_shard(plan: JobPlan, layout: IndexLayout, shard: int,
                      columns: list[str] | None = None) -> pa.Table:
    """All staged parts of a shard, in row order, checked to cover rows 0..n_valid-1 once."""
    summary = read_json(read_loc(plan, layout, shard))
    loc = parts_loc(plan, layout, shard)
    tables = []
    for name in list_dir(loc):
        if PART_RE.match(name):
            tables.append(pq.read_table(io.BytesIO(read_bytes(loc.child(name))), columns=columns))
    if tables:
        table = pa.concat_tables(tables).sort_by("row")
    else:
        table = pa.table({"row": pa.array([], pa.int64())})
    rows = table.column("row").to_numpy()
    if len(rows) != summary["n_valid"] or (len(rows) and not np.array_equal(rows, np.arange(len(rows)))):
        raise RuntimeError(f"shard {shard}: staged rows do not cover 0..{summary['n_valid'] - 1} "
                           f"exactly ({len(rows)} rows staged); re-run the job to redo it")
    return table


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes (blake2b) of document ids: hash partitioning and id lookups."""
    import hashlib

    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64, count=len(ids))


@ray.remote
def _bucket_ids(plan: JobPlan, layout: IndexLayout, shard: int, committed: bool, n_buckets: int):
    """One shard's ids split by hash bucket: per bucket (shard, rows, ids)."""
    if committed:
        ids = [str(x) for x in read_postings(layout.postings(plan.shards[shard].name)).doc_ids]
        rows = np.arange(len(ids), dtype=np.int64)  # committed shards hold no duplicates any more
    else:
        table = read_staged_shard(plan, layout, shard, columns=["row", "doc_id"])
        ids = table.column("doc_id").to_pylist()
        rows = table.column("row").to_numpy()
    bucket = (id_hashes(ids) % np.uint64(n_buckets)).astype(np.int64)
    id_arr = np.asarray(ids, dtype=object)
    out = [(shard, rows[bucket == b], id_arr[bucket == b]) for b in range(n_buckets)]
    return out if n_buckets > 1 else out[0]


@ray.remote
def _find_duplicates(*parts) -> list[Duplicate]:
    first: dict[str, tuple[int, int]] = {}
    dups = []
    # Visit in corpus order: shards ascending, rows ascending within a shard.
    for shard, rows, ids in sorted(parts, key=lambda p: p[0]):
        for row, doc_id in zip(rows.tolist(), ids.tolist()):
            seen = first.get(doc_id)
            if seen is None:
                first[doc_id] = (shard, row)
            else:
                dups.append(Duplicate(shard, row, doc_id, *seen))
    return dups


def find_duplicates(plan: JobPlan, layout: IndexLayout, states: list[ShardState]) -> list[Duplicate]:
    shards = [s for s in range(len(plan.shards))
              if states[s].committed or (states[s].read_summary or {}).get("n_valid", 0)]
    if not shards:
        return []
    n_buckets = max(1, min(len(shards), 64))
    maps = [_bucket_ids.options(num_returns=n_buckets, num_cpus=0.25).remote(
        plan, layout, s, bool(states[s].committed), n_buckets) for s in shards]
    if n_buckets == 1:
        maps = [[m] for m in maps]
    reduces = [_find_duplicates.options(num_cpus=0.25).remote(*[m[b] for m in maps])
               for b in range(n_buckets)]
    return sorted((d for r in ray.get(reduces) for d in r), key=lambda d: (d.shard, d.row))


def check_duplicates(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout,
                     states: list[ShardState]) -> tuple[list[Duplicate], dict[int, list[int]]]:
    """Step 1: the duplicates and, per shard, the rows to drop; raises under policy "fail"."""
    dups = find_duplicates(plan, layout, states)
    files = {s.shard: s.chunk.file for s in plan.shards}
    if dups and config.on_bad_record == "fail":
        d = dups[0]
        # Offsets of the two records, for a message a user can act on.
        def position(shard: int, row: int) -> str:
            t = read_staged_shard(plan, layout, shard, columns=["row", "offset"]) \
                if not states[shard].committed else None
            if t is None:
                return f"shard {shard} row {row}"
            return describe_position(files[shard], int(t.column("offset")[row].as_py()),
                                     config.storage_options)
        raise BadRecordError(
            f"bad record: duplicate id {d.doc_id!r} at {position(d.shard, d.row)} "
            f"(first seen at {position(d.first_shard, d.first_row)}); "
            f"{len(dups)} duplicate(s) in all (use --on-bad-record skip to keep the first of each)")
    drop: dict[int, list[int]] = {}
    for d in dups:
        drop.setdefault(d.shard, []).append(d.row)
    return dups, drop


@dataclass
class ShardResult:
    entry: ShardEntry | None          # None when every row of the shard was rejected
    build_s: float = 0.0
    write_s: float = 0.0
    reused: bool = False
    stats: dict = field(default_factory=dict)


def _build_index(vectors: sp.csr_matrix, kind: str, params: dict):
    from pipeline.index import BlockedIndex, BlockedIndexConfig, ExactIndex

    if kind == "exact":
        return ExactIndex(vectors)
    return BlockedIndex.build(vectors, BlockedIndexConfig(**params))


def staged_vectors(table: pa.Table, vocab_size: int) -> sp.csr_matrix:
    """The `indices`/`values` list columns of staged rows as a CSR matrix (sorted indices)."""
    indices = table.column("indices").combine_chunks()
    values = table.column("values").combine_chunks()
    indptr = indices.offsets.to_numpy().astype(np.int64)
    indptr = indptr - indptr[0]
    vectors = sp.csr_matrix((values.values.to_numpy(zero_copy_only=False).astype(np.float32),
                             indices.values.to_numpy(zero_copy_only=False).astype(np.int32), indptr),
                            shape=(table.num_rows, vocab_size))
    vectors.sort_indices()
    return vectors


def staged_postings(table: pa.Table, vocab_size: int) -> ShardPostings:
    """Staged rows (doc_id, fingerprint, indices, values) as shard postings, in table order."""
    return ShardPostings(doc_ids=np.asarray(table.column("doc_id").to_pylist(), dtype=object),
                         fingerprints=table.column("fingerprint").to_numpy(),
                         vectors=staged_vectors(table, vocab_size))


def write_shard(layout: IndexLayout, name: str, postings: ShardPostings, *, index_kind: str,
                index_params: dict, values_dtype: str, record: dict, threads: int) -> ShardResult:
    """Write one whole shard: postings, then its index, then COMMITTED.json (`record` added).

    The caller is the shard's only writer (one Ray task per shard).
    """
    from pipeline.index.fastcall import numba_threads

    with numba_threads(threads):
        return _write_shard(layout, name, postings, index_kind=index_kind, index_params=index_params,
                            values_dtype=values_dtype, record=record)


def _write_shard(layout: IndexLayout, name: str, postings: ShardPostings, *, index_kind: str,
                 index_params: dict, values_dtype: str, record: dict) -> ShardResult:
    started = time.perf_counter()
    vectors = postings.vectors
    nnz_per_doc = np.diff(vectors.indptr)
    stats = {"nnz_per_doc_mean": float(nnz_per_doc.mean()), "nnz_per_doc_max": int(nnz_per_doc.max()),
             "distinct_terms": int(np.unique(vectors.indices).size)}
    checksum = write_postings(layout.postings(name), postings, values_dtype=values_dtype, stats=stats)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    index = _build_index(vectors, index_kind, index_params)
    index_loc = layout.index(name)
    save_index(index, index_loc.url, storage_options=index_loc.storage_options)
    build_s = time.perf_counter() - started
    entry = ShardEntry(name=name, n_docs=postings.n_docs, nnz=int(vectors.nnz),
                       postings_checksum=checksum, index_kind=index_kind,
                       index_nbytes=int(index.nbytes))
    write_json_atomic(layout.shard_commit(name), {
        **record, **entry.__dict__, "committed_at": now_utc(), "stats": stats})
    return ShardResult(entry=entry, build_s=build_s, write_s=write_s, stats=stats)


@ray.remote
def _assemble_shard(plan: JobPlan, layout: IndexLayout, shard: int, drop_rows: list[int],
                    index_kind: str, index_params: dict, values_dtype: str, vocab_size: int,
                    threads: int) -> ShardResult:
    """The single writer of one shard: postings, index, commit record."""
    started = time.perf_counter()
    table = read_staged_shard(plan, layout, shard)
    if drop_rows:
        keep = np.ones(table.num_rows, dtype=bool)
        keep[np.asarray(drop_rows, dtype=np.int64)] = False
        table = table.filter(pa.array(keep))
    if table.num_rows == 0:
        return ShardResult(entry=None)
    postings = staged_postings(table, vocab_size)
    read_s = time.perf_counter() - started
    result = write_shard(layout, plan.shards[shard].name, postings, index_kind=index_kind,
                         index_params=index_params, values_dtype=values_dtype,
                         record={"plan_id": plan.plan_id, "shard": shard}, threads=threads)
    result.write_s += read_s
    return result


def reused_shard(record: dict) -> ShardResult:
    fields = ShardEntry.__dataclass_fields__
    return ShardResult(entry=ShardEntry(**{k: record[k] for k in fields}), reused=True,
                       stats=record.get("stats", {}))


@dataclass
class CommitResult:
    manifest: Manifest
    shards_reused: int
    build_s: float
    assemble_write_s: float
    duplicates: int
    built_docs: int


def commit_plan(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout, states: list[ShardState],
                encoder_settings: dict, timing: dict, build_threads: int,
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
                config.values_dtype, vocab_size, build_threads)
    started = time.perf_counter()
    for s, result in zip(futures, ray.get(list(futures.values()))):
        results[s] = result
    timing["assemble_wall_s"] = time.perf_counter() - started

    shards = [results[s].entry for s in sorted(results) if results[s].entry is not None]
    counts = gather_rejects(config, plan, layout, dups, sum(e.n_docs for e in shards),
                            {s: (r.entry.n_docs if r.entry else 0) for s, r in results.items()})
    manifest = new_manifest(config, plan, shards, encoder_settings, counts, timing, manifest_extra)
    publish(layout, plan, manifest)
    return CommitResult(manifest=manifest, shards_reused=sum(r.reused for r in results.values()),
                        build_s=sum(r.build_s for r in results.values()),
                        assemble_write_s=sum(r.write_s for r in results.values()),
                        duplicates=len(dups),
                        built_docs=sum(r.entry.n_docs for r in results.values()
                                       if r.entry is not None and not r.reused))


def new_manifest(config: IndexJobConfig, plan: JobPlan, shards: list[ShardEntry], encoder_settings: dict,
                 counts: dict, timing: dict, extra: dict | None = None) -> Manifest:
    """The manifest of `plan`'s generation: what the corpus, encoder and index were."""
    return Manifest(
        generation=plan.generation, created_at=now_utc(), encoder=encoder_settings,
        index={"kind": config.index_kind, "params": index_params(config)},
        shards=shards,
        corpus={"url": config.corpus, "format": config.format, "fingerprint": plan.corpus_fingerprint,
                "files": [f.url for f in plan.files],
                "fields": {"id": config.id_field, "title": config.title_field,
                           "text": config.text_field}},
        counts=counts, timing={k: round(v, 4) for k, v in timing.items()},
        parent_generation=plan.parent_generation,
        extra={"plan_id": plan.plan_id, "shard_size": config.shard_size,
               "values_dtype": config.values_dtype, **(extra or {})},
    )


def publish(layout: IndexLayout, plan: JobPlan, manifest: Manifest) -> None:
    """Step 4: manifest, then CURRENT (the visible step); then the plan's staging goes."""
    commit_generation(layout, manifest)
    discard_staging(layout, plan)


def discard_staging(layout: IndexLayout, plan: JobPlan) -> None:
    """Remove the plan's staging (and the staging folder when nothing else is in it)."""
    remove(staging_paths(layout, plan.plan_id)["base"])
    if not list_dir(layout.root.child("staging")):
        remove(layout.root.child("staging"))


def index_params(config: IndexJobConfig) -> dict:
    """The index parameters as the manifest records them (every default spelled out)."""
    if config.index_kind == "exact":
        return {}
    from dataclasses import asdict

    from pipeline.index import BlockedIndexConfig

    return asdict(BlockedIndexConfig(**config.index_params))


def gather_rejects(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout, dups: list[Duplicate],
                   indexed: int, records_without_summary: dict[int, int] | None = None,
                   write: bool = True) -> dict:
    """Write every rejected record with its reason; return the document counts.

    `indexed`: documents the generation holds. `records_without_summary`: records of plan
    shards committed by an earlier attempt whose read summary is gone. `write=False` only
    counts (for a run that commits no generation the rejects could belong to).
    """
    lines: list[str] = []
    docs_in = 0
    by_reason: dict[str, int] = {}
    for s in range(len(plan.shards)):
        summary = read_json(read_loc(plan, layout, s)) if exists(read_loc(plan, layout, s)) else None
        if summary is None:
            # Committed by an earlier attempt whose staging is gone: its counts live in the record.
            if s not in (records_without_summary or {}):
                raise RuntimeError(f"read unit {s} of plan {plan.plan_id} has no read summary; "
                                   f"re-run the job to redo it")
            summary = {"n_records": records_without_summary[s], "n_rejected": 0}
        docs_in += summary["n_records"]
        if summary["n_rejected"]:
            text = read_bytes(rejects_loc(plan, layout, s)).decode("utf-8")
            for line in text.splitlines():
                lines.append(line)
                reason = json.loads(line)["reason"].split(" (")[0]
                by_reason[reason] = by_reason.get(reason, 0) + 1
    for d in dups:
        lines.append(json.dumps({"source": f"shard {d.shard} row {d.row}", "doc_id": d.doc_id,
                                 "reason": f"duplicate id (first at shard {d.first_shard} row {d.first_row})"}))
        by_reason["duplicate id"] = by_reason.get("duplicate id", 0) + 1
    if lines and write:
        write_bytes_atomic(layout.rejects(plan.generation).child("rejects.jsonl"),
                           ("\n".join(lines) + "\n").encode("utf-8"))
    rejected = len(lines)
    if docs_in != indexed + rejected:
        raise RuntimeError(f"document accounting failed: {docs_in} read != {indexed} indexed + "
                           f"{rejected} rejected; nothing was committed")
    return {"docs_in": docs_in, "docs_indexed": indexed, "docs_rejected": rejected,
            **{f"rejected[{k}]": v for k, v in sorted(by_reason.items())}}
