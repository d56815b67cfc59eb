"""The one shard writer of every path (indexing, re-indexing, the direct generation writer),
and the check that a shard an earlier attempt committed is whole.

A shard folder holds `postings/`, `fields/` (only when fields are kept), `index/` and
`COMMITTED.json`, written in that order by exactly one writer. COMMITTED.json is the shard's commit point: a folder without it (or
whose record does not verify) is an unfinished attempt that the next writer replaces.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import ray
import scipy.sparse as sp

from pipeline.catalog import IndexLayout, ShardEntry
from pipeline.catalog.manifest import now_utc
from pipeline.format import ShardPostings, save_index, write_postings
from pipeline.format.fields import (FieldColumn, FieldSpec, FieldsFormatError, build_columns,
                                    verify_fields, write_fields)
from pipeline.format.postings import PostingsFormatError, read_postings
from pipeline.faults import fault_point
from pipeline.objstore import exists, read_json, remove, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    entry: ShardEntry | None          # None when every row of the shard was rejected
    build_s: float = 0.0
    write_s: float = 0.0
    reused: bool = False
    stats: dict = field(default_factory=dict)


def build_index(vectors: sp.csr_matrix, kind: str, params: dict):
    from pipeline.index import BlockedIndex, BlockedIndexConfig, ExactIndex

    if kind == "exact":
        return ExactIndex(vectors)
    return BlockedIndex.build(vectors, BlockedIndexConfig(**params))


ShardFields = tuple[Sequence[FieldSpec], "Sequence[Mapping[str, Any]] | Mapping[str, FieldColumn]"]
"""A shard's declared fields: (schema, per-document dicts of checked values in shard order, or
the columns `build_columns` made of them)."""


def write_shard(layout: IndexLayout, name: str, postings: ShardPostings, *, index_kind: str,
                index_params: dict, values_dtype: str, record: dict, threads: int,
                fields: ShardFields | None = None) -> ShardResult:
    """Write one whole shard: postings, then its fields (when given), then its index, then
    COMMITTED.json (`record` added).

    The caller is the shard's only writer (one Ray task per shard).
    """
    from pipeline.index.fastcall import numba_threads

    with numba_threads(threads):
        return _write_shard(layout, name, postings, index_kind=index_kind, index_params=index_params,
                            values_dtype=values_dtype, record=record, fields=fields)


def clear_shard(layout: IndexLayout, name: str) -> None:
    """Remove whatever an earlier attempt left of a shard, commit record first (so the shard
    never looks committed while its data is going)."""
    remove(layout.shard_commit(name), recursive=False)
    remove(layout.postings(name))
    remove(layout.fields(name))
    remove(layout.index(name))


def _field_columns(fields: ShardFields, n_docs: int) -> tuple[tuple[FieldSpec, ...],
                                                              Mapping[str, FieldColumn]]:
    schema, data = tuple(fields[0]), fields[1]
    columns = data if isinstance(data, Mapping) else build_columns(schema, data)
    for spec in schema:
        if spec.name not in columns or columns[spec.name].present.shape != (n_docs,):
            raise ValueError(f"field {spec.name!r}: expected a column of {n_docs} documents")
    return schema, columns


def _write_shard(layout: IndexLayout, name: str, postings: ShardPostings, *, index_kind: str,
                 index_params: dict, values_dtype: str, record: dict,
                 fields: ShardFields | None) -> ShardResult:
    started = time.perf_counter()
    # The single writer replaces what a dead attempt of the same plan left under this name
    # (a run with another plan writes another generation, hence other names).
    clear_shard(layout, name)
    vectors = postings.vectors
    nnz_per_doc = np.diff(vectors.indptr)
    stats = {"nnz_per_doc_mean": float(nnz_per_doc.mean()) if len(nnz_per_doc) else 0.0,
             "nnz_per_doc_max": int(nnz_per_doc.max()) if len(nnz_per_doc) else 0,
             "distinct_terms": int(np.count_nonzero(np.bincount(vectors.indices,
                                                                minlength=vectors.shape[1]))),
             "empty_docs": int((nnz_per_doc == 0).sum())}
    checksum = write_postings(layout.postings(name), postings, values_dtype=values_dtype, stats=stats)
    fields_checksum = None
    if fields is not None:
        schema, columns = _field_columns(fields, postings.n_docs)
        fields_checksum = write_fields(layout.fields(name), schema, columns, postings.n_docs)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    index = build_index(vectors, index_kind, index_params)
    index_loc = layout.index(name)
    save_index(index, index_loc.url, storage_options=index_loc.storage_options)
    build_s = time.perf_counter() - started
    fault_point("commit:after-index-save")
    entry = ShardEntry(name=name, n_docs=postings.n_docs, nnz=int(vectors.nnz),
                       postings_checksum=checksum, index_kind=index_kind,
                       index_nbytes=int(index.nbytes), fields_checksum=fields_checksum)
    write_json_atomic(layout.shard_commit(name), {
        **record, **entry.__dict__, "committed_at": now_utc(), "stats": stats})
    return ShardResult(entry=entry, build_s=build_s, write_s=write_s, stats=stats)


def reused_shard(record: dict) -> ShardResult:
    """The result of a shard an earlier attempt committed, from its commit record."""
    fields = ShardEntry.__dataclass_fields__
    # records written before fields existed lack fields_checksum (its default: no fields)
    return ShardResult(entry=ShardEntry(**{k: record[k] for k in fields if k in record}),
                       reused=True,
                       stats=record.get("stats", {}))


def verify_shard(layout: IndexLayout, name: str, record: dict) -> bool:
    """The shard's stored postings, fields (when the record names them) and index agree with
    its commit record."""
    try:
        stored = read_postings(layout.postings(name), verify=True)
    except PostingsFormatError as exc:
        log.warning("shard %s: committed record present but postings fail verification (%s); "
                    "rebuilding it", name, exc)
        return False
    if stored.checksum != record.get("postings_checksum") or stored.n_docs != record.get("n_docs") \
            or not exists(layout.index(name)):
        log.warning("shard %s: commit record disagrees with stored data; rebuilding it", name)
        return False
    if record.get("fields_checksum") is not None:
        try:
            stored_fields = verify_fields(layout.fields(name))
        except FieldsFormatError as exc:
            log.warning("shard %s: fields fail verification (%s); rebuilding it", name, exc)
            return False
        if stored_fields != record["fields_checksum"]:
            log.warning("shard %s: fields checksum disagrees with the commit record; "
                        "rebuilding it", name)
            return False
    return True


def committed_record(layout: IndexLayout, name: str, expect: dict, verify: bool) -> dict | None:
    """The shard's commit record when it exists, holds every key/value of `expect` and (with
    `verify`) the stored data agrees with it; else None (the shard is to be written)."""
    loc = layout.shard_commit(name)
    if not exists(loc):
        return None
    record = read_json(loc)
    if any(record.get(k) != v for k, v in expect.items()):
        return None
    if verify and not verify_shard(layout, name, record):
        return None
    return record


@ray.remote
def _committed_records_task(layout: IndexLayout, wanted: list[tuple[str, dict]], verify: bool):
    return [committed_record(layout, name, expect, verify) for name, expect in wanted]


TASKS_PER_CPU = 2
"""Verification tasks per cluster CPU: enough to balance uneven shards, few enough that Ray's
per-task cost (~10 ms) stays small next to reading a shard's postings."""


def committed_shards(layout: IndexLayout, wanted: list[tuple[str, dict]], *, verify: bool = True,
                     cpus: float = 0.25) -> list[dict | None]:
    """`committed_record` of many shards, checked in parallel Ray tasks, each a contiguous
    batch of shards (about `TASKS_PER_CPU` tasks per CPU of the cluster)."""
    if not wanted:
        return []
    n_tasks = max(1, min(len(wanted), int(ray.cluster_resources().get("CPU", 1) * TASKS_PER_CPU)))
    bounds = [len(wanted) * i // n_tasks for i in range(n_tasks + 1)]
    futures = [_committed_records_task.options(num_cpus=cpus).remote(layout, wanted[a:b], verify)
               for a, b in zip(bounds[:-1], bounds[1:])]
    return [record for batch in ray.get(futures) for record in batch]
