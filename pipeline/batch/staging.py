"""Staging: what the read/encode stages leave under `staging/<plan_id>/`, and how a resumed
run reads it back.

    plan.json                                   the plan (`pipeline.batch.plan`)
    parts/s00003/b000017-r0000004352-n256.parquet
                                                encoded rows [4352, 4352+256) of unit 3, read block 17
    read/s00003.json                            the unit's read summary (records, valid, rejected)
    rejects/s00003.jsonl                        the unit's rejected records (skip policy)

A read block is `block_rows` consecutive valid records of a unit; it is done when its
parts cover all its rows. The unit of resume is the part (one encoder batch of rows), not
the block: the parts of an unfinished block are kept, and only its rows no part holds are
read and encoded again (`settle_unfinished_blocks`; a part overlapping one kept before it,
which a retried task may leave, is removed).
Numbers in names are zero-padded to a minimum width and grow past it; `part_name` and
`parse_part_name` are the only writer and reader of part names, `unit_dir_name` of folders.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from pipeline.batch.plan import JobPlan, plan_location
from pipeline.catalog import IndexLayout
from pipeline.format.postings import ShardPostings
from pipeline.objstore import Location, list_dir, read_bytes, read_json, remove

log = logging.getLogger(__name__)

_PART_NAME = re.compile(r"^b(\d{6,})-r(\d{10,})-n(\d+)\.parquet$")


def part_name(seq: int, first_row: int, n_rows: int) -> str:
    """The file name of `n_rows` staged rows of read block `seq`, starting at `first_row`."""
    return f"b{seq:06d}-r{first_row:010d}-n{n_rows}.parquet"


def parse_part_name(name: str) -> tuple[int, int, int] | None:
    """(read block, first row, rows) of a name `part_name` wrote; None for any other file."""
    m = _PART_NAME.match(name)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def unit_dir_name(unit: int) -> str:
    return f"s{unit:05d}"


def staging_base(layout: IndexLayout, plan: JobPlan | str) -> Location:
    return layout.staging(plan if isinstance(plan, str) else plan.plan_id)


def read_loc(plan: JobPlan, layout: IndexLayout, unit: int) -> Location:
    return staging_base(layout, plan).child("read", f"{unit_dir_name(unit)}.json")


def rejects_loc(plan: JobPlan, layout: IndexLayout, unit: int) -> Location:
    return staging_base(layout, plan).child("rejects", f"{unit_dir_name(unit)}.jsonl")


def parts_loc(plan: JobPlan, layout: IndexLayout, unit: int) -> Location:
    return staging_base(layout, plan).child("parts", unit_dir_name(unit))


@dataclass
class ShardState:
    committed: dict | None = None                 # COMMITTED.json if valid for this plan
    read_summary: dict | None = None              # read/sXXXXX.json
    covered_rows: dict[int, int] = field(default_factory=dict)  # seq -> rows present in parts
    parts: dict[int, list[str]] = field(default_factory=dict)   # seq -> part file names kept
    redundant: dict[int, list[str]] = field(default_factory=dict)  # seq -> parts overlapping kept ones
    staged_rows: dict[int, frozenset[int]] = field(default_factory=dict)  # unfinished seq -> rows kept

    def done_blocks(self, block_rows: int) -> set[int]:
        """Read blocks whose parts hold all their rows."""
        n_valid = self.read_summary["n_valid"] if self.read_summary else None
        done = set()
        for seq, rows in self.covered_rows.items():
            expected = block_rows if n_valid is None else min(block_rows, n_valid - seq * block_rows)
            if rows == expected:
                done.add(seq)
        return done

    def fully_staged(self, block_rows: int) -> bool:
        if self.read_summary is None:
            return False
        n_blocks = -(-self.read_summary["n_valid"] // block_rows)
        return self.done_blocks(block_rows) >= set(range(n_blocks))


def scan_staging(plan: JobPlan, layout: IndexLayout,
                 committed: list[dict | None] | None = None) -> list[ShardState]:
    """What earlier attempts of this plan staged, unit by unit. `committed`: per unit, the
    valid commit record of its shard (`pipeline.batch.shard_writer.committed_shards`);
    the parts of committed units are not listed."""
    read_done = set(list_dir(staging_base(layout, plan).child("read")))
    states = []
    for sp_ in plan.shards:
        state = ShardState(committed=committed[sp_.shard] if committed else None)
        sdir = unit_dir_name(sp_.shard)
        if f"{sdir}.json" in read_done:
            state.read_summary = read_json(read_loc(plan, layout, sp_.shard))
        if state.committed is None:
            kept, redundant = sort_parts(list_dir(parts_loc(plan, layout, sp_.shard)))
            for (seq, _, n), name in kept:
                state.covered_rows[seq] = state.covered_rows.get(seq, 0) + n
                state.parts.setdefault(seq, []).append(name)
            for (seq, _, _), name in redundant:
                state.redundant.setdefault(seq, []).append(name)
        states.append(state)
    return states


def sort_parts(names: list[str]):
    """Part files in row order, split into those kept and those overlapping a kept one.

    Each part holds the contiguous rows [first, first + n) (`stage_part`). Parts are kept in
    order of their first row unless they overlap one kept before (a retried task may have cut
    the same rows differently). Returns ([((seq, first, n), name)], same for the redundant).
    """
    found = sorted((parsed, name) for name in names if (parsed := parse_part_name(name)))
    kept, redundant = [], []
    end: dict[int, int] = {}
    for (seq, first, n), name in found:
        if first < end.get(seq, -1):
            redundant.append(((seq, first, n), name))
        else:
            end[seq] = first + n
            kept.append(((seq, first, n), name))
    return kept, redundant


def settle_unfinished_blocks(plan: JobPlan, layout: IndexLayout, states: list[ShardState]) -> int:
    """Remove parts that overlap kept ones, and record the rows the kept parts of unfinished
    read blocks hold (`ShardState.staged_rows`); returns how many parts were removed.

    The next attempt reads such a block again but encodes only the rows no kept part holds,
    so the parts of a block never overlap and a kill loses at most the batches in flight.
    Only part names are read (each part is the contiguous rows its name gives).
    """
    removed = kept_rows = 0
    for sp_, state in zip(plan.shards, states):
        loc = parts_loc(plan, layout, sp_.shard)
        for names in state.redundant.values():
            for name in names:
                remove(loc.child(name), recursive=False)
                removed += 1
        state.redundant = {}
        done = state.done_blocks(plan.block_rows)
        for seq, names in state.parts.items():
            if seq in done:
                continue
            rows: set[int] = set()
            for name in names:
                _, first, n = parse_part_name(name)
                rows.update(range(first, first + n))
            state.staged_rows[seq] = frozenset(rows)
            kept_rows += len(rows)
    if kept_rows or removed:
        log.info("unfinished read blocks: %d staged row(s) kept, %d overlapping part(s) removed",
                 kept_rows, removed)
    return removed


def read_staged_unit(plan: JobPlan, layout: IndexLayout, unit: int,
                     columns: list[str] | None = None) -> pa.Table:
    """All staged parts of a unit, in row order, checked to cover rows 0..n_valid-1 once."""
    summary = read_json(read_loc(plan, layout, unit))
    loc = parts_loc(plan, layout, unit)
    tables = []
    for _, name in sort_parts(list_dir(loc))[0]:
        tables.append(pq.read_table(io.BytesIO(read_bytes(loc.child(name))), columns=columns))
    if tables:
        table = pa.concat_tables(tables)
        del tables
        rows = table.column("row").to_numpy()
        if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():
            # parts are listed in row order (`sort_parts`), so this copy is the rare case
            table = table.sort_by("row")
            rows = table.column("row").to_numpy()
    else:
        table = pa.table({"row": pa.array([], pa.int64())})
        rows = table.column("row").to_numpy()
    if len(rows) != summary["n_valid"] or (len(rows) and not np.array_equal(rows, np.arange(len(rows)))):
        raise RuntimeError(f"read unit {unit}: staged rows do not cover 0..{summary['n_valid'] - 1} "
                           f"exactly ({len(rows)} rows staged); re-run the job to redo it")
    return table


def staged_vectors(table: pa.Table, vocab_size: int) -> sp.csr_matrix:
    """The `indices`/`values` list columns of staged rows as a CSR matrix (sorted indices).

    The flat arrays are filled chunk by chunk straight into the matrix's own arrays: one copy
    of the postings, not the two that combining the chunks and then converting would make."""
    indices, values = table.column("indices"), table.column("values")
    n_rows = table.num_rows
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    row = 0
    for chunk in indices.chunks:
        offsets = chunk.offsets.to_numpy()
        indptr[row + 1:row + len(chunk) + 1] = indptr[row] + offsets[1:] - offsets[0]
        row += len(chunk)
    nnz = int(indptr[-1])
    flat_indices = np.empty(nnz, dtype=np.int32)
    flat_values = np.empty(nnz, dtype=np.float32)
    for column, out in ((indices, flat_indices), (values, flat_values)):
        at = 0
        for chunk in column.chunks:
            offsets = chunk.offsets.to_numpy()
            lo, hi = int(offsets[0]), int(offsets[-1])
            out[at:at + hi - lo] = chunk.values.slice(lo, hi - lo).to_numpy(zero_copy_only=False)
            at += hi - lo
        if at != nnz:
            raise RuntimeError("staged indices and values differ in length")
    vectors = sp.csr_matrix((flat_values, flat_indices, indptr), shape=(n_rows, vocab_size),
                            copy=False)
    vectors.sort_indices()
    return vectors


def staged_postings(table: pa.Table, vocab_size: int) -> ShardPostings:
    """Staged rows (doc_id, fingerprint, indices, values) as shard postings, in table order."""
    return ShardPostings(doc_ids=np.asarray(table.column("doc_id").to_pylist(), dtype=object),
                         fingerprints=table.column("fingerprint").to_numpy(),
                         vectors=staged_vectors(table, vocab_size))


def staged_fields(table: pa.Table, schema: tuple) -> tuple | None:
    """The kept fields of staged rows, in table order, as `write_shard` takes them:
    (schema, one dict of checked values per row, from the `fields_json` column); None when
    no field is kept."""
    if not schema:
        return None
    return tuple(schema), [json.loads(text) for text in table.column("fields_json").to_pylist()]


def discard_staging(layout: IndexLayout, plan: JobPlan) -> None:
    """Remove the plan's staging (and the staging folder when nothing else is in it)."""
    remove(staging_base(layout, plan))
    if not list_dir(layout.root.child("staging")):
        remove(layout.root.child("staging"))


__all__ = ["ShardState", "discard_staging", "settle_unfinished_blocks", "parse_part_name",
           "part_name", "parts_loc", "plan_location", "read_loc", "read_staged_unit",
           "rejects_loc", "scan_staging", "staged_fields", "staged_postings", "staged_vectors",
           "unit_dir_name"]
