"""Ray Data source: the pending shards of a plan, read strictly, in read blocks.

One read task per pending shard. It parses its chunk in corpus order, cuts the valid
records into read blocks of `block_rows`, and yields what earlier attempts did not stage:
blocks not done, and of a block partly staged only its rows no kept part holds. Bad records fail the task (policy "fail") or go to the shard's rejects
file (policy "skip"). At the end it writes the shard's read summary, which tells the
commit step how many rows the shard must have.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.data.corpus import read_chunk, read_vector_chunk
from pipeline.data.records import BadRecord, FieldMap
from pipeline.data.vectors import VectorSource
from pipeline.format.fields import FieldSpec, extract_fields
from pipeline.format.postings import fingerprint_texts, fingerprint_vectors
from pipeline.errors import UserError
from pipeline.objstore import write_bytes_atomic, write_json_atomic
from pipeline.catalog import IndexLayout
from pipeline.batch.plan import JobPlan
from pipeline.batch.staging import read_loc, rejects_loc

log = logging.getLogger(__name__)

READ_SCHEMA = pa.schema([
    ("shard", pa.int32()), ("seq", pa.int32()), ("row", pa.int64()),
    ("doc_id", pa.string()), ("text", pa.string()), ("offset", pa.int64()),
    ("t_read", pa.float64()),
])


VECTOR_SCHEMA = pa.schema([
    ("shard", pa.int32()), ("seq", pa.int32()), ("row", pa.int64()),
    ("doc_id", pa.string()), ("offset", pa.int64()), ("t_read", pa.float64()),
    ("fingerprint", pa.uint64()), ("indices", pa.large_list(pa.int32())),
    ("values", pa.large_list(pa.float32())), ("encoded", pa.bool_()),
    ("t_tokenize", pa.float64()), ("t_encode", pa.float64()),
])
"""Read blocks of a vectors corpus: already in the encode stage's output form (`vector_block`)."""


class BadRecordError(UserError, RuntimeError):
    """The job met a bad record under the "fail" policy. The message names file and record."""


@dataclass(frozen=True)
class UnitResume:
    """What earlier attempts staged of one unit: read blocks done, and per unfinished block
    the rows its kept parts hold."""

    done: frozenset[int] = frozenset()
    staged_rows: dict[int, frozenset[int]] = field(default_factory=dict)


KEPT_FIELDS_COLUMNS = [("fields_json", pa.string()), ("fingerprint", pa.uint64())]
"""Added to read blocks when fields are kept (`lsr index --field`): each document's checked
field values as compact JSON (staged with the row, written by the shard's writer), and its
content fingerprint over text (or vector) and fields, so a changed field is a changed document."""


def block_schema(vectors: bool, kept_fields: bool) -> pa.Schema:
    """The schema of the read blocks of a text (READ_SCHEMA) or vectors (VECTOR_SCHEMA) corpus."""
    schema = VECTOR_SCHEMA if vectors else READ_SCHEMA
    if not kept_fields:
        return schema
    extra = [f for f in KEPT_FIELDS_COLUMNS if f[0] not in schema.names]
    return pa.schema(list(schema) + [pa.field(name, kind) for name, kind in extra])


def kept_fields_reader(schema: tuple[FieldSpec, ...]):
    """`read_chunk`'s `extra`: a record's declared fields checked (`extract_fields`) and
    written as compact JSON; a bad value makes the record bad, with the reason."""
    def extra(record) -> str:
        try:
            values = extract_fields(schema, record)
        except ValueError as exc:
            raise BadRecord(str(exc)) from None
        return json.dumps(values, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return extra


def _block(shard: int, seq: int, first_row: int, records, seconds: float,
           skip: frozenset[int] = frozenset(), kept_fields: bool = False) -> pa.Table | None:
    rows = [first_row + i for i in range(len(records)) if first_row + i not in skip]
    if skip:
        records = [r for i, r in enumerate(records) if first_row + i not in skip]
    n = len(records)
    if n == 0:
        return None
    columns = {
        "shard": pa.array([shard] * n, pa.int32()),
        "seq": pa.array([seq] * n, pa.int32()),
        "row": pa.array(rows, pa.int64()),
        "doc_id": pa.array([r.doc_id for r in records], pa.string()),
        "text": pa.array([r.text for r in records], pa.string()),
        "offset": pa.array([r.offset for r in records], pa.int64()),
        "t_read": pa.array([seconds / max(n, 1)] * n, pa.float64()),
    }
    if kept_fields:
        fields_json = [r.extra for r in records]
        columns["fields_json"] = pa.array(fields_json, pa.string())
        columns["fingerprint"] = pa.array(fingerprint_texts([r.text for r in records], fields_json),
                                          pa.uint64())
    return pa.table(columns, schema=block_schema(False, kept_fields))


def vector_block(shard: int, seq: int, first_row: int, records, seconds: float,
                 skip: frozenset[int] = frozenset(), kept_fields: bool = False) -> pa.Table | None:
    """`_block` of pre-encoded vectors: rows in the form the encode stage leaves them
    (`pipeline.batch.stages`: indices/values as large_list, `encoded` true, zero tokenize and
    encode time) plus each vector's content fingerprint, ready to stage."""
    keep = [i for i in range(len(records)) if first_row + i not in skip]
    n = len(keep)
    if n == 0:
        return None
    records = [records[i] for i in keep]
    vectors = [r.vector for r in records]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(v.indices) for v in vectors], out=indptr[1:])
    indices = np.concatenate([v.indices for v in vectors]).astype(np.int32, copy=False)
    values = np.concatenate([v.values for v in vectors]).astype(np.float32, copy=False)
    fields_json = [r.extra for r in records] if kept_fields else None
    columns = {
        "shard": pa.array(np.full(n, shard), pa.int32()),
        "seq": pa.array(np.full(n, seq), pa.int32()),
        "row": pa.array([first_row + i for i in keep], pa.int64()),
        "doc_id": pa.array([r.doc_id for r in records], pa.string()),
        "offset": pa.array([r.offset for r in records], pa.int64()),
        "t_read": pa.array(np.full(n, seconds / n), pa.float64()),
        "fingerprint": pa.array(fingerprint_vectors([v.indices for v in vectors],
                                                    [v.values for v in vectors], fields_json),
                                pa.uint64()),
        "indices": pa.LargeListArray.from_arrays(pa.array(indptr), pa.array(indices)),
        "values": pa.LargeListArray.from_arrays(pa.array(indptr), pa.array(values)),
        "encoded": pa.array(np.ones(n, dtype=bool), pa.bool_()),
        "t_tokenize": pa.array(np.zeros(n), pa.float64()),
        "t_encode": pa.array(np.zeros(n), pa.float64()),
    }
    if kept_fields:
        columns["fields_json"] = pa.array(fields_json, pa.string())
    return pa.table(columns, schema=block_schema(True, kept_fields))


def read_shard(plan: JobPlan, layout: IndexLayout, shard: int, resume: UnitResume,
               fields: FieldMap, on_bad_record: str, storage_options: dict,
               vectors: VectorSource | None = None,
               kept_fields: tuple[FieldSpec, ...] = ()) -> Iterator[pa.Table]:
    """Yield the rows of one shard not staged yet, by read block; write its rejects and read
    summary. With `vectors`, the chunk holds pre-encoded vectors (`vector_block`); the read
    summary then also counts the vectors with a non-integer weight (`n_float_weights`).
    `kept_fields`: the declared fields (`lsr index --field`), checked and staged per row."""

    def emit(seq: int, records, seconds: float) -> pa.Table | None:
        if seq in resume.done:
            return None
        return make_block(shard, seq, seq * block_rows, records, seconds,
                          resume.staged_rows.get(seq, frozenset()), kept_fields=bool(kept_fields))

    sp = plan.shards[shard]
    block_rows = plan.block_rows
    pending: list = []
    rejects: list[dict] = []
    n_records = n_valid = n_float = 0
    seq = 0
    extra = kept_fields_reader(kept_fields) if kept_fields else None
    names = tuple(spec.name for spec in kept_fields)
    if vectors is None:
        records = read_chunk(sp.chunk, fields, storage_options, extra, names)
        make_block = _block
    else:
        records = read_vector_chunk(sp.chunk, fields, vectors, storage_options, extra, names)
        make_block = vector_block
    started = time.perf_counter()
    for record in records:
        n_records += 1
        if record.error is not None:
            if on_bad_record == "fail":
                raise BadRecordError(f"bad record: {record.error} "
                                     f"(use --on-bad-record skip to write it to rejects instead)")
            rejects.append({"source": record.error.source, "reason": record.error.reason,
                            "record": record.error.record})
            continue
        n_valid += 1
        if vectors is not None and not record.vector.integer_weights and len(record.vector.indices):
            n_float += 1
        pending.append(record)
        if len(pending) == block_rows:
            block = emit(seq, pending, time.perf_counter() - started)
            if block is not None:
                yield block
            pending, seq, started = [], seq + 1, time.perf_counter()
    if pending:
        block = emit(seq, pending, time.perf_counter() - started)
        if block is not None:
            yield block
    if rejects:
        write_bytes_atomic(rejects_loc(plan, layout, shard),
                           "".join(json.dumps(r) + "\n" for r in rejects).encode("utf-8"))
    write_json_atomic(read_loc(plan, layout, shard), {
        "shard": shard, "n_records": n_records, "n_valid": n_valid,
        "n_rejected": len(rejects), "block_rows": block_rows,
        **({"n_float_weights": n_float} if vectors is not None else {}),
    })


class CorpusDatasource(Datasource):
    """The plan's pending shards as a Ray dataset of read blocks (schema READ_SCHEMA, or
    `vector_block`'s for a vectors corpus)."""

    def __init__(self, plan: JobPlan, layout: IndexLayout, pending: dict[int, UnitResume],
                 fields: FieldMap, on_bad_record: str, storage_options: dict,
                 vectors: VectorSource | None = None, kept_fields: tuple[FieldSpec, ...] = ()):
        self._vectors = vectors          # set: a pre-encoded vectors corpus (blocks of vector rows)
        self._kept_fields = kept_fields  # declared fields staged with each row (`--field`)
        self._plan = plan
        self._layout = layout
        self._pending = pending          # shard -> what is staged of it already
        self._fields = fields
        self._on_bad_record = on_bad_record
        self._storage_options = storage_options

    def get_name(self) -> str:
        return "Corpus"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(self._plan.shards[s].chunk.end - self._plan.shards[s].chunk.start
                   for s in self._pending) or None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        tasks = []
        for shard, resume in sorted(self._pending.items()):
            chunk = self._plan.shards[shard].chunk
            meta = BlockMetadata(num_rows=None, size_bytes=max(1, chunk.end - chunk.start),
                                 exec_stats=None, input_files=(chunk.file.url,))

            def read_fn(shard=shard, resume=resume):
                return read_shard(self._plan, self._layout, shard, resume, self._fields,
                                  self._on_bad_record, self._storage_options, self._vectors,
                                  self._kept_fields)

            tasks.append(ReadTask(read_fn, meta, schema=block_schema(self._vectors is not None,
                                                                     bool(self._kept_fields))))
        return tasks
