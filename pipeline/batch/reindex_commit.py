"""The commit step of a re-indexing run: staged rows + base shards -> a new generation.

1. Duplicate ids in the new snapshot: the indexing job's check (same policy, same rejects).
2. Routes and claims (`pipeline.batch.reindex_diff`): kept, changed, deleted, added documents.
3. The new generation's shard list (`pipeline.batch.reindex_shards`).
4. One Ray task per rebuilt or added shard (its only writer): the base shard's remaining
   rows with their stored vectors (and stored fields), changed rows with their staged
   vectors (and fields), added rows; postings, kept fields, index and COMMITTED.json through
   the indexing job's `write_shard`. Shards
   committed by an earlier attempt of the same plan are kept (checksums verified).
5. Rejects gathered, counts checked; CURRENT still names the base generation (else some
   other writer moved it: nothing is committed); manifest, then CURRENT.

When no document was added, changed or deleted and no index setting changed, nothing is
committed: the base generation stays live and the staging is removed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import scipy.sparse as sp

from pipeline.batch.config import IndexJobConfig
from pipeline.batch.dedup import check_duplicates
from pipeline.batch.generation import count_empty, gather_rejects, new_manifest, publish
from pipeline.batch.plan import JobPlan, max_docs_per_shard
from pipeline.batch.shard_writer import ShardResult, committed_shards, reused_shard, write_shard
from pipeline.batch.staging import (ShardState, discard_staging, read_staged_unit, staged_fields,
                                    staged_postings)
from pipeline.batch.reindex_diff import Diff, ReindexError, resolve_claims, route_units
from pipeline.batch.reindex_shards import BaseShardChange, OutputShard, plan_output_shards
from pipeline.catalog import IndexLayout, Manifest, WriterLock, read_current_generation
from pipeline.format import ShardPostings, read_postings
from pipeline.format.fields import read_fields
from pipeline.catalog.manifest import ShardEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseSegment:
    """The remaining documents of one base shard, as they go into an output shard."""

    entry: ShardEntry
    keep_rows: np.ndarray        # int64: base rows kept, ascending
    replaced_at: np.ndarray      # int64: positions in keep_rows whose vectors were re-encoded
    replaced_by: np.ndarray      # int64 (k, 2): the (unit, row) of their staged rows


@dataclass(frozen=True)
class BuildSpec:
    """Everything one output shard is made of, in order: base segments, then added rows."""

    name: str
    position: int
    segments: tuple[BaseSegment, ...]
    added: np.ndarray            # int64 (k, 2): (unit, row) of added documents, corpus order


class StagedRows:
    """Staged rows of a plan fetched by (unit, row), one read per unit."""

    COLUMNS = ["row", "doc_id", "fingerprint", "indices", "values", "encoded"]

    def __init__(self, plan: JobPlan, layout: IndexLayout, vocab_size: int,
                 field_schema: tuple = ()):
        self.plan, self.layout, self.vocab_size = plan, layout, vocab_size
        self.field_schema = field_schema
        self.columns = self.COLUMNS + (["fields_json"] if field_schema else [])
        self._units: dict[int, pa.Table] = {}

    def _unit(self, unit: int) -> pa.Table:
        if unit not in self._units:
            self._units[unit] = read_staged_unit(self.plan, self.layout, unit, columns=self.columns)
        return self._units[unit]

    def take(self, pairs: np.ndarray) -> tuple[ShardPostings, list[dict]]:
        """The postings of the staged rows `pairs` ((k, 2) unit/row), in that order, and their
        kept fields (empty without kept fields)."""
        pieces, origin = [], []
        for unit in np.unique(pairs[:, 0]):
            at = np.flatnonzero(pairs[:, 0] == unit)
            pieces.append(self._unit(int(unit)).take(pa.array(pairs[at, 1])))
            origin.append(at)
        table = pa.concat_tables(pieces).take(pa.array(np.argsort(np.concatenate(origin))))
        if not table.column("encoded").to_numpy(zero_copy_only=False).all():
            raise ReindexError("a staged row needed for its new vector was not encoded; "
                               "re-run to redo the plan")
        fields = staged_fields(table, self.field_schema)
        return staged_postings(table, self.vocab_size), (fields[1] if fields else [])


def _base_field_rows(layout: IndexLayout, entry: ShardEntry, rows: np.ndarray,
                     schema: tuple) -> list[dict]:
    """The kept fields of base rows `rows`, read from the base shard's fields group."""
    if not schema:
        return []
    if entry.fields_checksum is None:
        raise ReindexError(f"shard {entry.name}: the base generation kept no fields; re-index "
                           f"with --full to add them")
    _, columns = read_fields(layout.fields(entry.name))
    return [{spec.name: columns[spec.name].value(int(r)) for spec in schema} for r in rows]


def _base_part(layout: IndexLayout, segment: BaseSegment, staged: StagedRows
               ) -> tuple[ShardPostings, list[dict]]:
    entry = segment.entry
    base = read_postings(layout.postings(entry.name), verify=True)
    if base.checksum != entry.postings_checksum:
        raise ReindexError(f"shard {entry.name}: postings checksum differs from the base manifest")
    keep = segment.keep_rows
    vectors = base.vectors[keep]
    doc_ids = base.doc_ids[keep]
    fingerprints = base.fingerprints[keep].copy()
    field_rows = _base_field_rows(layout, entry, keep, staged.field_schema)
    if len(segment.replaced_at):
        new, new_fields = staged.take(segment.replaced_by)
        # Rows of the stack [kept base vectors; new vectors], the new ones at their places.
        order = np.arange(len(keep))
        order[segment.replaced_at] = len(keep) + np.arange(len(segment.replaced_at))
        vectors = sp.vstack([vectors, new.vectors], format="csr")[order]
        doc_ids[segment.replaced_at] = new.doc_ids
        fingerprints[segment.replaced_at] = new.fingerprints
        for at, values in zip(segment.replaced_at, new_fields):
            field_rows[at] = values
    return ShardPostings(doc_ids=doc_ids, fingerprints=fingerprints, vectors=vectors), field_rows


@ray.remote
def _build_output_shard(plan: JobPlan, layout: IndexLayout, spec: BuildSpec, index_kind: str,
                        index_params: dict, values_dtype: str, vocab_size: int,
                        threads: int, field_schema: tuple = ()) -> ShardResult:
    """Step 4 of the module docstring for one output shard."""
    started = time.perf_counter()
    staged = StagedRows(plan, layout, vocab_size, field_schema)
    parts_and_fields = [_base_part(layout, segment, staged) for segment in spec.segments]
    if len(spec.added):
        parts_and_fields.append(staged.take(spec.added))
    parts = [p for p, _ in parts_and_fields]
    field_rows = [row for _, rows in parts_and_fields for row in rows]
    vectors = sp.vstack([p.vectors for p in parts], format="csr")
    vectors.sort_indices()
    postings = ShardPostings(doc_ids=np.concatenate([p.doc_ids for p in parts]),
                             fingerprints=np.concatenate([p.fingerprints for p in parts]),
                             vectors=vectors)
    read_s = time.perf_counter() - started
    result = write_shard(layout, spec.name, postings, index_kind=index_kind,
                         index_params=index_params, values_dtype=values_dtype,
                         record=output_record(plan, spec),
                         threads=threads,
                         fields=(field_schema, field_rows) if field_schema else None)
    result.write_s += read_s
    return result


def build_specs(base: Manifest, diff: Diff, outputs: list[OutputShard]) -> list[BuildSpec]:
    """What each non-reused output shard is made of."""
    specs = []
    for position, out in enumerate(outputs):
        if out.reused:
            continue
        segments = []
        for b in out.base:
            fate = diff.fates[b]
            keep_rows = np.flatnonzero(fate.kept).astype(np.int64)
            rows, by = fate.replacements()
            segments.append(BaseSegment(base.shards[b], keep_rows,
                                        np.searchsorted(keep_rows, rows).astype(np.int64), by))
        start, stop = out.added
        specs.append(BuildSpec(out.name, position, tuple(segments), diff.added[start:stop]))
    return specs


@dataclass
class ReindexCommit:
    manifest: Manifest | None        # None: nothing changed, nothing committed
    diff: Diff
    outputs: list[OutputShard]
    docs_in: int
    docs_rejected: int
    shards_resumed: int
    build_s: float
    built_docs: int


def output_record(plan: JobPlan, spec: BuildSpec) -> dict:
    """What a re-indexing output shard's COMMITTED.json must hold to belong to `plan`."""
    return {"plan_id": plan.plan_id, "position": spec.position}


def commit_reindex(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout, base: Manifest,
                   states: list[ShardState], encoder_settings: dict, timing: dict,
                   build_threads: int, rebuild_all: bool, report: dict,
                   run_started: float, lock: WriterLock) -> ReindexCommit:
    """Steps 1-5 of the module docstring. `report` (the run's reindex report so far) is
    completed with the diff and shard counts and stored in the manifest's `extra`;
    `run_started` (perf_counter) dates the run for its wall time there."""
    started = time.perf_counter()
    dups, drop = check_duplicates(config, plan, layout, states)
    routes = route_units(plan, layout, drop, cpus=config.resources.read_cpus)
    diff = resolve_claims(base, routes)
    changes = [BaseShardChange(i, e.name, e.n_docs, f.n_kept, f.n_changed)
               for i, (e, f) in enumerate(zip(base.shards, diff.fates))]
    # Per-shard limit from the base generation's own postings per document (checked before
    # any shard is written, not found when one overflows).
    shard_size = min(config.shard_size, max_docs_per_shard(base.nnz / max(1, base.n_docs)))
    outputs = plan_output_shards(changes, len(diff.added), shard_size, plan.generation,
                                 rebuild_all)
    timing["diff_s"] = time.perf_counter() - started
    kinds = [o.kind for o in outputs]
    report.update(docs_added=len(diff.added), docs_changed=diff.changed, docs_deleted=diff.deleted,
                  docs_unchanged=diff.unchanged, shards_rebuilt=kinds.count("rebuilt"),
                  shards_reused=kinds.count("reused"), shards_added=kinds.count("added"))
    log.info("diff against generation %d: %d added, %d changed, %d deleted, %d unchanged; "
             "shards: %d reused, %d rebuilt, %d added", base.generation, report["docs_added"],
             report["docs_changed"], report["docs_deleted"], report["docs_unchanged"],
             report["shards_reused"], report["shards_rebuilt"], report["shards_added"])
    n_indexed = sum(o.n_docs for o in outputs)
    if n_indexed != diff.unchanged + diff.changed + len(diff.added):
        raise RuntimeError(f"document accounting failed: {n_indexed} placed != {diff.unchanged} "
                           f"unchanged + {diff.changed} changed + {len(diff.added)} added")
    if not (len(diff.added) or diff.changed or diff.deleted or rebuild_all):
        counts = gather_rejects(config, plan, layout, dups, n_indexed, states, write=False)
        discard_staging(layout, plan)
        log.info("no document changed: generation %d stays live", base.generation)
        if counts["docs_rejected"]:
            log.warning("%d record(s) of %s were rejected (%s); nothing was committed, so they are "
                        "not written to rejects/", counts["docs_rejected"], config.corpus,
                        ", ".join(f"{k}: {v}" for k, v in counts.items() if k.startswith("rejected[")))
        return ReindexCommit(None, diff, outputs, counts["docs_in"], counts["docs_rejected"], 0, 0.0, 0)

    specs = build_specs(base, diff, outputs)
    results: dict[int, ShardResult] = {}
    futures = {}
    earlier = committed_shards(layout, [(spec.name, output_record(plan, spec)) for spec in specs])
    for spec, record in zip(specs, earlier):
        if record is not None:
            results[spec.position] = reused_shard(record)
        else:
            futures[spec.position] = _build_output_shard.options(
                num_cpus=config.resources.build_cpus).remote(
                plan, layout, spec, config.index_kind, config.index_params, config.values_dtype,
                int(encoder_settings["vocab_size"]), build_threads, config.field_schema)
    started = time.perf_counter()
    for position, result in zip(futures, ray.get(list(futures.values()))):
        results[position] = result
    timing["assemble_wall_s"] = time.perf_counter() - started
    by_name = {e.name: e for e in base.shards}
    entries = [by_name[o.name] if o.reused else results[i].entry for i, o in enumerate(outputs)]

    counts = gather_rejects(config, plan, layout, dups, n_indexed, states)
    counts["docs_empty"] = count_empty(layout, entries, {
        r.entry.name: int(r.stats.get("empty_docs", 0)) for r in results.values() if r.entry})
    live = read_current_generation(layout)
    if live != base.generation:
        raise ReindexError(f"{layout.url}: CURRENT moved from generation {base.generation} to "
                           f"{live} during re-indexing (another writer?); nothing was committed")
    report["wall_s"] = round(time.perf_counter() - run_started, 3)
    manifest = new_manifest(config, plan, entries, encoder_settings, counts, timing,
                            {"reindex": report})
    publish(layout, plan, manifest, lock)
    built = [results[p] for p in futures]
    return ReindexCommit(manifest, diff, outputs, counts["docs_in"], counts["docs_rejected"],
                         shards_resumed=len(specs) - len(futures),
                         build_s=sum(r.build_s for r in built),
                         built_docs=sum(r.entry.n_docs for r in built))
