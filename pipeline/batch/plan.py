"""The job plan: which chunk of the corpus becomes which read unit, and which generation
the run writes.

The plan is written once per (corpus snapshot, output-affecting settings, base generation,
purpose) under `staging/<plan_id>/plan.json`; re-running the same command finds it and
resumes. Each read unit is a contiguous chunk of the corpus. When the caller names the
units (the indexing job: one unit per shard), each unit becomes the shard of that name;
otherwise the units are only read units and the caller decides the shards at commit.

What earlier attempts left in staging is read by `pipeline.batch.staging`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Callable

from pipeline.batch.config import IndexJobConfig
from pipeline.catalog import IndexLayout, list_generations, parse_shard_name, read_current_generation
from pipeline.data.corpus import Chunk, CorpusFile, corpus_fingerprint, discover, plan_chunks
from pipeline.objstore import exists, list_dir, read_json, write_json_atomic

log = logging.getLogger(__name__)

MAX_SHARD_POSTINGS = 2**32 - 1
"""Postings (non-zeros) one shard may hold: its forward index addresses them with 32-bit words
(`pipeline.index`). Staged vectors are Arrow large_list (64-bit offsets) and postings groups
use int64 row pointers, so this is the binding per-shard limit."""

SHARD_LIMIT_SAFETY = 2.0
"""Headroom over the sampled postings per document: the corpus's first documents, which the
sample reads, may be lighter than the rest."""


def max_docs_per_shard(postings_per_doc: float) -> int:
    """The most documents a shard may hold when documents average `postings_per_doc` postings."""
    return max(1, int(MAX_SHARD_POSTINGS // max(1.0, postings_per_doc * SHARD_LIMIT_SAFETY)))


@dataclass(frozen=True)
class ShardPlan:
    shard: int              # the read unit's number
    name: str | None        # the shard it becomes; None for a unit that is only read
    chunk: Chunk


@dataclass
class JobPlan:
    plan_id: str
    generation: int
    parent_generation: int | None
    corpus_fingerprint: str
    files: list[CorpusFile]
    shards: list[ShardPlan]
    block_rows: int

    @property
    def units_are_shards(self) -> bool:
        return bool(self.shards) and self.shards[0].name is not None

    def to_json(self) -> dict:
        return {
            "plan_id": self.plan_id, "generation": self.generation,
            "parent_generation": self.parent_generation,
            "corpus_fingerprint": self.corpus_fingerprint, "block_rows": self.block_rows,
            "files": [asdict(f) for f in self.files],
            "shards": [{"shard": s.shard, "name": s.name, "chunk": s.chunk.to_json()}
                       for s in self.shards],
        }

    @classmethod
    def from_json(cls, obj: dict) -> "JobPlan":
        return cls(
            plan_id=obj["plan_id"], generation=obj["generation"],
            parent_generation=obj["parent_generation"],
            corpus_fingerprint=obj["corpus_fingerprint"], block_rows=obj["block_rows"],
            files=[CorpusFile(**f) for f in obj["files"]],
            shards=[ShardPlan(s["shard"], s.get("name"), Chunk.from_json(s["chunk"]))
                    for s in obj["shards"]])


def plan_location(layout: IndexLayout, plan_id: str):
    return layout.staging(plan_id).child("plan.json")


def next_generation(layout: IndexLayout, parent: int | None) -> int:
    """A generation number no run on this root has used: above CURRENT, every manifest, every
    shard folder and every plan in staging (a crashed run's plan keeps its number reserved,
    so a run with other settings never writes over its files under the same names)."""
    used = [parent or 0, *list_generations(layout)]
    for name in list_dir(layout.shards()):
        parsed = parse_shard_name(name)
        if parsed is not None:
            used.append(parsed[0])
    for plan_id in list_dir(layout.root.child("staging")):
        loc = plan_location(layout, plan_id)
        try:
            used.append(int(read_json(loc)["generation"]))
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            continue
    return max(used) + 1


def make_plan(config: IndexJobConfig, layout: IndexLayout, *, purpose: str = "index",
              name_unit: Callable[[int, int], str] | None = None,
              postings_per_doc: Callable[[list[CorpusFile]], float | None] | None = None,
              ) -> tuple[JobPlan, bool]:
    """Find the plan of an interrupted identical run, or make a new one. Returns (plan, resumed).

    `purpose` keeps plans of different jobs over the same inputs apart; `name_unit(generation,
    unit)` names the shard each unit becomes (None: units are only read). `postings_per_doc`
    estimates, from a sample of the corpus, the postings per document; units are then cut
    small enough that a shard fits `MAX_SHARD_POSTINGS` (checked here, not found at commit).
    """
    files = discover(config.corpus, config.format, config.storage_options)
    fingerprint = corpus_fingerprint(files)
    parent = read_current_generation(layout)
    salt = "" if purpose == "index" else f"|{purpose}"
    plan_id = hashlib.sha256(
        f"{fingerprint}|{config.output_fingerprint()}|{parent}{salt}".encode()).hexdigest()[:16]
    loc = plan_location(layout, plan_id)
    if exists(loc):
        plan = JobPlan.from_json(read_json(loc))
        log.info("resuming plan %s (generation %d, %d read units)", plan_id, plan.generation,
                 len(plan.shards))
        return plan, True
    shard_size = config.shard_size
    estimate = postings_per_doc(files) if postings_per_doc is not None else None
    if estimate:
        limit = max_docs_per_shard(estimate)
        if limit < shard_size:
            log.warning("shard size %d would exceed %d postings per shard at the sampled %.0f "
                        "postings per document; shards of %d documents instead", shard_size,
                        MAX_SHARD_POSTINGS, estimate, limit)
            shard_size = limit
    chunks = plan_chunks(files, shard_size, config.storage_options)
    generation = next_generation(layout, parent)
    plan = JobPlan(plan_id=plan_id, generation=generation, parent_generation=parent,
                   corpus_fingerprint=fingerprint, files=files, block_rows=config.block_rows,
                   shards=[ShardPlan(i, name_unit(generation, i) if name_unit else None, c)
                           for i, c in enumerate(chunks)])
    write_json_atomic(loc, plan.to_json())
    log.info("planned %d read units from %d files (generation %d, plan %s)", len(plan.shards),
             len(files), generation, plan_id)
    return plan, False
