"""Ray Data sink that stages encoded rows; it commits nothing.

Its protocol: `write` (per write task) stages rows as Parquet parts keyed by unit, read
block and first row; each part is written whole (atomic rename locally, one PUT on S3), so
a retried or resumed task rewrites the same names. `on_write_complete` only adds up what
the tasks staged (`StagingSink.staged`); `on_write_failed` leaves staging in place for
resume. The job runs the commit phase itself, as its own Ray tasks, after
`write_datasink` returns (`pipeline.batch.commit`, `pipeline.batch.reindex_commit`).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink

from pipeline.faults import fault_point
from pipeline.objstore import write_bytes_atomic
from pipeline.catalog import IndexLayout
from pipeline.batch.plan import JobPlan
from pipeline.batch.staging import part_name, parts_loc

log = logging.getLogger(__name__)


# Columns that only route rows or time stages: not staged.
TRANSIENT_COLUMNS = ("shard", "seq", "t_read", "t_tokenize", "t_encode")


@dataclass
class StageTimes:
    """Busy seconds summed over all workers, per stage, and the rows they covered.

    `encoded` counts the rows the encoder actors actually encoded (the rest passed through
    with vectors supplied elsewhere, see `stages`).
    """

    rows: int = 0
    encoded: int = 0
    read: float = 0.0
    tokenize: float = 0.0
    encode: float = 0.0
    write: float = 0.0

    def add(self, other: "StageTimes") -> None:
        for name in ("rows", "encoded", "read", "tokenize", "encode", "write"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def stage_part(table: pa.Table, plan: JobPlan, layout: IndexLayout) -> StageTimes:
    """Write one block's rows as parts, one per (shard, read block)."""
    started = time.perf_counter()
    times = StageTimes(rows=table.num_rows,
                       encoded=int(pc.sum(table.column("encoded")).as_py() or 0),
                       read=float(pc.sum(table.column("t_read")).as_py() or 0.0),
                       tokenize=float(pc.sum(table.column("t_tokenize")).as_py() or 0.0),
                       encode=float(pc.sum(table.column("t_encode")).as_py() or 0.0))
    keep = table.select([c for c in table.column_names if c not in TRANSIENT_COLUMNS])
    shard = table.column("shard").to_numpy()
    seq = table.column("seq").to_numpy()
    row = table.column("row").to_numpy()
    keys = np.stack([shard, seq], axis=1)
    for s, b in np.unique(keys, axis=0):
        sel = np.flatnonzero((shard == s) & (seq == b))
        sel = sel[np.argsort(row[sel], kind="stable")]
        # One part per run of consecutive rows: a part's name then says exactly which rows it
        # holds, which is what resume reads (`pipeline.batch.staging`).
        runs = np.split(sel, np.flatnonzero(np.diff(row[sel]) != 1) + 1)
        for run in runs:
            buf = io.BytesIO()
            pq.write_table(keep.take(pa.array(run)), buf, compression="zstd")
            name = part_name(int(b), int(row[run[0]]), len(run))
            write_bytes_atomic(parts_loc(plan, layout, int(s)).child(name), buf.getvalue())
            fault_point("stage:after-part")
    times.write = time.perf_counter() - started
    return times


class StagingSink(Datasink[StageTimes]):
    """Stages encoded rows under the plan's staging folder; `staged` totals what it wrote."""

    def __init__(self, plan: JobPlan, layout: IndexLayout):
        self._plan = plan
        self._layout = layout
        self.staged: StageTimes | None = None     # set when every write task has finished

    def get_name(self) -> str:
        return "StagedParts"

    def on_write_start(self, schema=None) -> None:
        log.info("staging encoded rows under %s", self._layout.staging(self._plan.plan_id).url)

    def write(self, blocks: Iterable, ctx) -> StageTimes:
        total = StageTimes()
        for block in blocks:
            table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
            if table.num_rows:
                total.add(stage_part(table, self._plan, self._layout))
        return total

    def on_write_complete(self, write_result) -> None:
        """Every part is staged: add up the write tasks' stage times. No commit here."""
        total = StageTimes()
        for times in write_result.write_returns:
            total.add(times)
        self.staged = total

    def on_write_failed(self, error: Exception) -> None:
        # The job re-raises the error (a bad record as one line); Ray's own text is for -v.
        log.info("staging stopped; staged work is kept for resume under %s",
                 self._layout.staging(self._plan.plan_id).url)
        log.debug("staging failed: %s", error)
