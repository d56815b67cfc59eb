"""A generation's bookkeeping, shared by both jobs: its rejects and document counts, its
manifest, and publishing it (manifest, then CURRENT, then the plan's staging goes)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from pipeline.batch.config import IndexJobConfig
from pipeline.batch.dedup import Duplicate, record_positions
from pipeline.batch.plan import JobPlan
from pipeline.batch.staging import ShardState, discard_staging, read_loc, rejects_loc
from pipeline.catalog import IndexLayout, Manifest, ShardEntry, commit_generation
from pipeline.catalog.manifest import now_utc
from pipeline.catalog.writer_lock import WriterLock
from pipeline.faults import fault_point
from pipeline.format.fields import schema_to_json
from pipeline.objstore import exists, read_bytes, read_json, write_bytes_atomic

log = logging.getLogger(__name__)


def index_params(config: IndexJobConfig) -> dict:
    """The index parameters as the manifest records them (every default spelled out)."""
    if config.index_kind == "exact":
        return {}
    from pipeline.index import BlockedIndexConfig

    return asdict(BlockedIndexConfig(**config.index_params))


def index_format_version(kind: str) -> int:
    """The stored-index format version this build writes for ``kind``."""
    from pipeline.index import BlockedIndex, ExactIndex

    return (ExactIndex if kind == "exact" else BlockedIndex).FORMAT_VERSION


def new_manifest(config: IndexJobConfig, plan: JobPlan, shards: list[ShardEntry], encoder_settings: dict,
                 counts: dict, timing: dict, extra: dict | None = None) -> Manifest:
    """The manifest of `plan`'s generation: what the corpus, encoder and index were."""
    return Manifest(
        generation=plan.generation, created_at=now_utc(), encoder=encoder_settings,
        index={"kind": config.index_kind, "params": index_params(config),
               "format_version": index_format_version(config.index_kind)},
        shards=shards,
        corpus={"url": config.corpus, "format": config.format, "fingerprint": plan.corpus_fingerprint,
                "files": [f.url for f in plan.files],
                "fields": {"id": config.id_field, "title": config.title_field,
                           "text": config.text_field}},
        counts=counts, timing={k: round(v, 4) for k, v in timing.items()},
        parent_generation=plan.parent_generation,
        extra={"plan_id": plan.plan_id, "shard_size": config.shard_size,
               "values_dtype": config.values_dtype, **(extra or {})},
        fields=schema_to_json(config.field_schema),
    )


def publish(layout: IndexLayout, plan: JobPlan, manifest: Manifest, lock: WriterLock) -> None:
    """Manifest, then CURRENT (the visible step), each only while `lock` is still this run's;
    then the plan's staging goes."""
    fault_point("commit:before-manifest")
    commit_generation(layout, manifest, fence=lock.check)
    discard_staging(layout, plan)


def count_empty(layout: IndexLayout, entries: list[ShardEntry], known: dict[str, int]) -> int:
    """Empty documents (no term) in the generation's shards: `known` per shard name from this
    run's writers, the others from their commit records' stats. Logged once when non-zero."""
    total = 0
    for entry in entries:
        if entry.name in known:
            total += known[entry.name]
        else:
            loc = layout.shard_commit(entry.name)
            total += int(read_json(loc).get("stats", {}).get("empty_docs", 0)) if exists(loc) else 0
    if total:
        log.info("%d empty document(s) (title and text blank) are indexed as empty vectors: "
                 "counted, never retrieved", total)
    return total


def gather_rejects(config: IndexJobConfig, plan: JobPlan, layout: IndexLayout, dups: list[Duplicate],
                   indexed: int, states: list[ShardState], write: bool = True) -> dict:
    """Write every rejected record with its reason; return the document counts.

    `indexed`: documents the generation holds. A unit committed by an earlier attempt whose
    read summary is gone counts with the documents its commit record holds. `write=False`
    only counts (for a run that commits no generation the rejects could belong to).
    """
    lines: list[str] = []
    docs_in = 0
    by_reason: dict[str, int] = {}
    for s in range(len(plan.shards)):
        summary = read_json(read_loc(plan, layout, s)) if exists(read_loc(plan, layout, s)) else None
        if summary is None:
            # Committed by an earlier attempt whose staging is gone: its counts live in the record.
            if not states[s].committed:
                raise RuntimeError(f"read unit {s} of plan {plan.plan_id} has no read summary; "
                                   f"re-run the job to redo it")
            summary = {"n_records": states[s].committed["n_docs"], "n_rejected": 0}
        docs_in += summary["n_records"]
        if summary["n_rejected"]:
            text = read_bytes(rejects_loc(plan, layout, s)).decode("utf-8")
            for line in text.splitlines():
                lines.append(line)
                reason = json.loads(line)["reason"].split(" (")[0]
                by_reason[reason] = by_reason.get(reason, 0) + 1
    where = record_positions(config, plan, layout, states,
                             [p for d in dups for p in ((d.shard, d.row), (d.first_shard, d.first_row))])
    for d in dups:
        lines.append(json.dumps({"source": where[(d.shard, d.row)], "doc_id": d.doc_id,
                                 "reason": f"duplicate id (first at {where[(d.first_shard, d.first_row)]})"}))
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
