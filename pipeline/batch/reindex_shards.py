"""Which shards the new generation lists: reused base shards, rebuilt ones, added ones.

Re-indexing rebuilds whole shards rather than writing delta shards: a shard index has no
deletion (tombstone) support and readers merge shards without filters, so a changed or
deleted document can only leave the results by rewriting the shard that holds it. Rules:

1. A base shard none of whose documents changed or went away is *reused*: the new manifest
   lists it under its old name (its files are shared by both generations).
2. A base shard with changed or deleted documents is *rebuilt*: its remaining documents,
   in their order, changed ones with their new vectors; the others' stored vectors are
   reused (no re-encoding). A shard whose documents are all gone disappears.
3. Consecutive rebuilt shards are merged while the merged shard holds at most
   `shard_size` documents (compaction at no extra cost: both are rewritten anyway).
4. Added documents (corpus order) fill the last shard up to `shard_size` when that shard
   is rebuilt anyway or holds less than half of `shard_size`; the rest go to new shards of
   `shard_size`. So every shard but the last holds at least half of `shard_size` unless
   deletions shrank it; `--full` compacts completely.
5. With `rebuild_all` (the index kind or parameters changed) every kept shard is rebuilt.

Shard order is base order with new shards last: merged results break score ties in this
order, so documents that did not change keep their relative order, and their results,
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.catalog import shard_name


@dataclass(frozen=True)
class BaseShardChange:
    """How many documents of one base shard remain, and how many of those changed."""

    position: int        # in the base manifest
    name: str
    n_docs: int
    n_kept: int          # unchanged + changed
    n_changed: int

    @property
    def untouched(self) -> bool:
        return self.n_kept == self.n_docs and self.n_changed == 0


@dataclass(frozen=True)
class OutputShard:
    """One shard of the new generation."""

    name: str
    base: tuple[int, ...]        # base shards (positions) whose remaining documents it holds
    added: tuple[int, int]       # [start, stop) of the added documents (corpus order) it holds
    n_docs: int
    reused: bool                 # an untouched base shard, listed as it is

    @property
    def kind(self) -> str:
        """"reused", "rebuilt" (holds base documents, rewritten) or "added" (only new ones)."""
        if self.reused:
            return "reused"
        return "rebuilt" if self.base else "added"


def plan_output_shards(changes: list[BaseShardChange], n_added: int, shard_size: int,
                       generation: int, rebuild_all: bool = False) -> list[OutputShard]:
    """Apply rules 1-5 of the module docstring; rebuilt and added shards are named for
    `generation` and their position."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    groups: list[dict] = []
    for c in changes:
        if c.n_kept == 0:
            continue
        reuse = c.untouched and not rebuild_all
        last = groups[-1] if groups else None
        if not reuse and last is not None and not last["reused"] \
                and last["n"] + c.n_kept <= shard_size:
            last["base"].append(c.position)
            last["n"] += c.n_kept
        else:
            groups.append({"base": [c.position], "n": c.n_kept, "reused": reuse,
                           "name": c.name, "added": (0, 0)})
    start = 0
    if n_added and groups:
        last = groups[-1]
        room = shard_size - last["n"]
        if room > 0 and (not last["reused"] or 2 * last["n"] < shard_size):
            take = min(room, n_added)
            last.update(added=(0, take), reused=False, n=last["n"] + take)
            start = take
    while start < n_added:
        take = min(shard_size, n_added - start)
        groups.append({"base": [], "n": take, "reused": False, "name": None,
                       "added": (start, start + take)})
        start += take
    return [OutputShard(name=g["name"] if g["reused"] else shard_name(generation, i),
                        base=tuple(g["base"]), added=g["added"], n_docs=g["n"], reused=g["reused"])
            for i, g in enumerate(groups)]
