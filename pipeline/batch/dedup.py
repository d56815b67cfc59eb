"""Duplicate ids across a whole plan, found by hash-partitioned Ray tasks that read only ids.

The first occurrence in corpus order (units ascending, rows ascending) is kept. Ids are
hashed only to partition them; within a partition they are compared exactly, so a hash
collision can never merge two different ids.

Map tasks (one per unit) write the unit's ids, bucketed, to the plan's staging folder: one
Parquet file per unit whose row group ``b`` holds bucket ``b`` (`dedup_loc`). Reduce tasks
(one per bucket) read their row group of every unit's file. The ids never become Ray
objects: returned as per-bucket objects they were small enough (under Ray's 100 KiB inline
limit once a plan has many units) to be stored in the memory of their owner, the driver,
which then held every id of the corpus at once (+240 MB at 5M documents, BENCHMARKS §15).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline.batch.config import IndexJobConfig
from pipeline.batch.datasource import BadRecordError
from pipeline.batch.plan import JobPlan
from pipeline.batch.staging import ShardState, read_staged_unit, staging_base, unit_dir_name
from pipeline.catalog import IndexLayout
from pipeline.data.corpus import describe_positions
from pipeline.format.postings import hash_strings, read_doc_ids
from pipeline.objstore import Location, write_bytes_atomic


@dataclass
class Duplicate:
    shard: int
    row: int
    doc_id: str
    first_shard: int
    first_row: int


DEDUP_SCHEMA = pa.schema([("row", pa.int64()), ("doc_id", pa.string())])


def dedup_loc(plan: JobPlan, layout: IndexLayout, unit: int) -> Location:
    """One unit's ids by hash bucket: a Parquet file, row group ``b`` = bucket ``b``."""
    return staging_base(layout, plan).child("dedup", f"{unit_dir_name(unit)}.parquet")


@ray.remote
def _bucket_ids(plan: JobPlan, layout: IndexLayout, unit: int, committed: bool,
                n_buckets: int) -> None:
    """Write one unit's (row, id) pairs split by hash bucket (`dedup_loc`)."""
    if committed:
        ids = [str(x) for x in read_doc_ids(layout.postings(plan.shards[unit].name))]
        rows = np.arange(len(ids), dtype=np.int64)  # committed shards hold no duplicates any more
    else:
        table = read_staged_unit(plan, layout, unit, columns=["row", "doc_id"])
        ids = table.column("doc_id").to_pylist()
        rows = table.column("row").to_numpy()
    bucket = (hash_strings(ids) % np.uint64(n_buckets)).astype(np.int64)
    id_arr = pa.array(ids, pa.string())
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, DEDUP_SCHEMA) as writer:
        for b in range(n_buckets):     # every bucket, empty or not: row group b is bucket b
            sel = np.flatnonzero(bucket == b)
            writer.write_table(pa.table({"row": pa.array(rows[sel], pa.int64()),
                                         "doc_id": id_arr.take(pa.array(sel))},
                                        schema=DEDUP_SCHEMA))
    write_bytes_atomic(dedup_loc(plan, layout, unit), buf.getvalue())


@ray.remote
def _find_duplicates(plan: JobPlan, layout: IndexLayout, bucket: int, n_buckets: int,
                     units: list[int]) -> list[Duplicate]:
    """The duplicates among one bucket's ids of every unit, visited in corpus order."""
    first: dict[str, tuple[int, int]] = {}
    dups = []
    for unit in sorted(units):         # units ascending, rows ascending within a unit
        loc = dedup_loc(plan, layout, unit)
        with loc.fs.open(loc.path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            if pf.num_row_groups != n_buckets:
                raise RuntimeError(f"{loc.url}: {pf.num_row_groups} row groups, expected "
                                   f"{n_buckets} (one per bucket)")
            group = pf.read_row_group(bucket)
        for row, doc_id in zip(group.column("row").to_pylist(), group.column("doc_id").to_pylist()):
            seen = first.get(doc_id)
            if seen is None:
                first[doc_id] = (unit, row)
            else:
                dups.append(Duplicate(unit, row, doc_id, *seen))
    return dups


MAX_DEDUP_BUCKETS = 64
"""Reduce tasks of the duplicate search: enough to spread a billion ids over a cluster
(~16 M ids, ~1 GiB, per reducer) without a flood of tiny row groups on small plans."""


def find_duplicates(plan: JobPlan, layout: IndexLayout, states: list[ShardState]) -> list[Duplicate]:
    units = [s for s in range(len(plan.shards))
             if states[s].committed or (states[s].read_summary or {}).get("n_valid", 0)]
    if not units:
        return []
    n_buckets = max(1, min(len(units), MAX_DEDUP_BUCKETS))
    # Every map's file exists before any reduce reads it.
    ray.get([_bucket_ids.options(num_cpus=0.25).remote(
        plan, layout, s, bool(states[s].committed), n_buckets) for s in units])
    reduces = [_find_duplicates.options(num_cpus=0.25).remote(plan, layout, b, n_buckets, units)
               for b in range(n_buckets)]
    return sorted((d for r in ray.get(reduces) for d in r), key=lambda d: (d.shard, d.row))


def record_positions(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout,
                     states: list[ShardState], pairs: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Where staged rows (unit, row) came from: "FILE line N" (JSONL) or "FILE row N"
    (Parquet). Reads each unit's offsets once and each file once."""
    out: dict[tuple[int, int], str] = {}
    by_file: dict[str, list[tuple[tuple[int, int], int]]] = {}
    for unit in sorted({u for u, _ in pairs}):
        rows = [r for u, r in pairs if u == unit]
        file = plan.shards[unit].chunk.file
        if states[unit].committed:
            for r in rows:
                out[(unit, r)] = f"{file.url} (document {r + 1} of shard {plan.shards[unit].name})"
            continue
        offsets = read_staged_unit(plan, layout, unit, columns=["row", "offset"]).column("offset")
        by_file.setdefault(file.url, []).extend(((unit, r), int(offsets[r].as_py())) for r in rows)
    files = {sp.chunk.file.url: sp.chunk.file for sp in plan.shards}
    for url, items in by_file.items():
        described = describe_positions(files[url], [o for _, o in items], config.storage_options)
        out.update({key: described[o] for key, o in items})
    return out


def check_duplicates(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout,
                     states: list[ShardState]) -> tuple[list[Duplicate], dict[int, list[int]]]:
    """The duplicates and, per unit, the rows to drop; raises under policy "fail"."""
    dups = find_duplicates(plan, layout, states)
    if dups and config.on_bad_record == "fail":
        d = dups[0]
        where = record_positions(config, plan, layout, states,
                                 [(d.shard, d.row), (d.first_shard, d.first_row)])
        raise BadRecordError(
            f"bad record: duplicate id {d.doc_id!r} at {where[(d.shard, d.row)]} (first seen at "
            f"{where[(d.first_shard, d.first_row)]}); "
            f"{len(dups)} duplicate(s) in all (use --on-bad-record skip to keep the first of each)")
    drop: dict[int, list[int]] = {}
    for d in dups:
        drop.setdefault(d.shard, []).append(d.row)
    return dups, drop
