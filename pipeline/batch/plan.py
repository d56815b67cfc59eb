"""The job plan (which chunk becomes which shard) and what earlier attempts left in staging.

The plan is written once per (corpus snapshot, output-affecting settings, base generation,
kind) under `staging/<plan_id>/plan.json`; re-running the same command finds it and resumes.
An indexing plan's chunks become the shards of its generation. A re-indexing plan
(kind "reindex") uses the same chunks only as read units: its shards are decided at commit
from the base generation's shards (`pipeline.batch`), so its units are never committed.

Staging layout under `staging/<plan_id>/`:

    plan.json                                   this plan
    parts/s00003/b000017-r0000004352-n256.parquet
                                                encoded rows [4352, 4352+256) of shard 3, read block 17
    read/s00003.json                            the shard's read summary (records, valid, rejected)
    rejects/s00003.jsonl                        the shard's rejected records (skip policy)

A read block is `block_rows` consecutive valid records of a shard; it is done when its
parts cover all its rows. The parts of an unfinished block are discarded before it is read
again (`discard_unfinished_blocks`): the new attempt may cut it into different parts.
Shards are done when their COMMITTED.json matches this plan and their postings checksum
verifies.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass, field

from pipeline.data.corpus import Chunk, CorpusFile, corpus_fingerprint, discover, plan_chunks
from pipeline.batch.config import IndexJobConfig
from pipeline.objstore import Location, exists, list_dir, read_json, remove, write_json_atomic
from pipeline.catalog import IndexLayout, list_generations, read_current_generation, shard_name
from pipeline.format.postings import PostingsFormatError, read_postings

log = logging.getLogger(__name__)

PART_RE = re.compile(r"^b(\d{6})-r(\d{10})-n(\d+)\.parquet$")
PLAN_KINDS = ("index", "reindex")


def part_name(seq: int, first_row: int, n_rows: int) -> str:
    return f"b{seq:06d}-r{first_row:010d}-n{n_rows}.parquet"


@dataclass(frozen=True)
class ShardPlan:
    shard: int
    name: str
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
    kind: str = "index"

    def to_json(self) -> dict:
        return {
            "plan_id": self.plan_id, "kind": self.kind, "generation": self.generation,
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
            kind=obj.get("kind", "index"), files=[CorpusFile(**f) for f in obj["files"]],
            shards=[ShardPlan(s["shard"], s["name"], Chunk.from_json(s["chunk"]))
                    for s in obj["shards"]])


def staging_paths(layout: IndexLayout, plan_id: str):
    base = layout.staging(plan_id)
    return {"plan": base.child("plan.json"), "parts": base.child("parts"),
            "read": base.child("read"), "rejects": base.child("rejects"), "base": base}


def shard_dir_name(shard: int) -> str:
    return f"s{shard:05d}"


def unit_name(unit: int) -> str:
    """Name of a re-indexing plan's read unit (never a shard directory)."""
    return f"unit-{unit:05d}"


def make_plan(config: IndexJobConfig, layout: IndexLayout, kind: str = "index") -> tuple[JobPlan, bool]:
    """Find the plan of an interrupted identical run, or make a new one. Returns (plan, resumed)."""
    if kind not in PLAN_KINDS:
        raise ValueError(f"plan kind must be one of {PLAN_KINDS}, got {kind!r}")
    files = discover(config.corpus, config.format, config.storage_options)
    fingerprint = corpus_fingerprint(files)
    parent = read_current_generation(layout)
    salt = "" if kind == "index" else f"|{kind}"
    plan_id = hashlib.sha256(
        f"{fingerprint}|{config.output_fingerprint()}|{parent}{salt}".encode()).hexdigest()[:16]
    paths = staging_paths(layout, plan_id)
    if exists(paths["plan"]):
        plan = JobPlan.from_json(read_json(paths["plan"]))
        log.info("resuming plan %s (generation %d, %d shards)", plan_id, plan.generation,
                 len(plan.shards))
        return plan, True
    chunks = plan_chunks(files, config.shard_size, config.storage_options)
    generation = max([parent or 0, *list_generations(layout)]) + 1
    name = (lambda i: shard_name(generation, i)) if kind == "index" else unit_name
    plan = JobPlan(plan_id=plan_id, generation=generation, parent_generation=parent,
                   corpus_fingerprint=fingerprint, files=files, block_rows=config.block_rows,
                   shards=[ShardPlan(i, name(i), c) for i, c in enumerate(chunks)], kind=kind)
    write_json_atomic(paths["plan"], plan.to_json())
    log.info("planned %d %s from %d files (generation %d, plan %s)", len(plan.shards),
             "shards" if kind == "index" else "read units", len(files), generation, plan_id)
    return plan, False


@dataclass
class ShardState:
    committed: dict | None = None                 # COMMITTED.json if valid for this plan
    read_summary: dict | None = None              # read/sXXXXX.json
    covered_rows: dict[int, int] = field(default_factory=dict)  # seq -> rows present in parts
    parts: dict[int, list[str]] = field(default_factory=dict)   # seq -> part file names

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


def scan_state(plan: JobPlan, layout: IndexLayout, verify_committed: bool = True) -> list[ShardState]:
    """What earlier attempts of this plan completed, shard by shard."""
    paths = staging_paths(layout, plan.plan_id)
    read_done = set(list_dir(paths["read"]))
    states = []
    for sp in plan.shards:
        state = ShardState()
        commit_loc = layout.shard_commit(sp.name)
        if plan.kind == "index" and exists(commit_loc):
            record = read_json(commit_loc)
            if record.get("plan_id") == plan.plan_id and verify_shard(layout, sp.name, record,
                                                                        verify_committed):
                state.committed = record
        sdir = shard_dir_name(sp.shard)
        if f"{sdir}.json" in read_done:
            state.read_summary = read_json(paths["read"].child(f"{sdir}.json"))
        if state.committed is None:
            for name in list_dir(paths["parts"].child(sdir)):
                m = PART_RE.match(name)
                if m:
                    seq, n = int(m.group(1)), int(m.group(3))
                    state.covered_rows[seq] = state.covered_rows.get(seq, 0) + n
                    state.parts.setdefault(seq, []).append(name)
        states.append(state)
    return states


def discard_unfinished_blocks(plan: JobPlan, layout: IndexLayout, states: list[ShardState]) -> int:
    """Remove the parts of read blocks that are not complete; returns how many were removed.

    Such a block is read and encoded again, and the new attempt may batch it differently:
    its parts must not overlap what a crashed attempt left.
    """
    removed = 0
    for sp, state in zip(plan.shards, states):
        done = state.done_blocks(plan.block_rows)
        for seq, names in state.parts.items():
            if seq in done:
                continue
            for name in names:
                remove(parts_loc(plan, layout, sp.shard).child(name), recursive=False)
                removed += 1
            state.covered_rows.pop(seq, None)
        state.parts = {seq: names for seq, names in state.parts.items() if seq in done}
    if removed:
        log.info("discarded %d staged part(s) of unfinished read blocks", removed)
    return removed


def verify_shard(layout: IndexLayout, name: str, record: dict, verify: bool) -> bool:
    if not verify:
        return True
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
    return True


def read_loc(plan: JobPlan, layout: IndexLayout, shard: int) -> Location:
    return staging_paths(layout, plan.plan_id)["read"].child(f"{shard_dir_name(shard)}.json")


def rejects_loc(plan: JobPlan, layout: IndexLayout, shard: int) -> Location:
    return staging_paths(layout, plan.plan_id)["rejects"].child(f"{shard_dir_name(shard)}.jsonl")


def parts_loc(plan: JobPlan, layout: IndexLayout, shard: int) -> Location:
    return staging_paths(layout, plan.plan_id)["parts"].child(shard_dir_name(shard))
