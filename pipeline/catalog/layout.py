"""Where everything of one index lives under its root URL.

    ROOT/
      CURRENT.json                   pointer to the live generation; rewritten atomically, last
      manifests/000007.json          one manifest per generation, written before CURRENT moves
      shards/g000007-s00003/
          postings/                  Zarr v3 group: the shard's forward CSR, ids, fingerprints
          index/                     Zarr v3 group: the shard's BlockedIndex (or ExactIndex)
          fields/                    Zarr v3 group: declared document fields (only when kept)
          COMMITTED.json             shard commit record (checksums); written after the groups
      staging/<plan-id>/             work in progress of a job (encoded parts, plan); resumable
      rejects/g000007/               rejected records of a generation, with reasons (JSONL)

Shards are named by the generation that wrote them, so a later generation's manifest
may list shards of an earlier one (re-indexing reuses what did not change), and garbage
collection removes a shard only when no kept manifest names it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.objstore import Location, resolve

CURRENT_NAME = "CURRENT.json"

# Numbers are zero-padded to a minimum width (names sort by number up to it) and grow
# beyond it: generation 1,234,567 is g1234567, shard 100,000 is s100000. Every name is
# written by one function and parsed by its inverse below; nothing else matches them.
_SHARD_NAME = re.compile(r"^g(\d{6,})-s(\d{5,})$")


def shard_name(generation: int, shard: int) -> str:
    """The folder name of shard `shard` written by generation `generation`."""
    if generation < 0 or shard < 0:
        raise ValueError(f"generation and shard must be >= 0, got {generation}, {shard}")
    return f"g{generation:06d}-s{shard:05d}"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(generation, shard) of a name `shard_name` wrote, or None for any other name."""
    m = _SHARD_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def generation_file_name(generation: int) -> str:
    return f"{generation:06d}.json"


def parse_generation_file_name(name: str) -> int | None:
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() and len(stem) >= 6 else None


@dataclass(frozen=True)
class IndexLayout:
    """Paths of one index root. Pure naming: nothing here touches storage."""

    root: Location

    @classmethod
    def at(cls, url: str, storage_options: dict | None = None) -> "IndexLayout":
        return cls(resolve(url, storage_options))

    @property
    def url(self) -> str:
        return self.root.url

    def current(self) -> Location:
        return self.root.child(CURRENT_NAME)

    def manifests(self) -> Location:
        return self.root.child("manifests")

    def manifest(self, generation: int) -> Location:
        return self.root.child("manifests", generation_file_name(generation))

    def shards(self) -> Location:
        return self.root.child("shards")

    def shard(self, name: str) -> Location:
        return self.root.child("shards", name)

    def postings(self, name: str) -> Location:
        return self.root.child("shards", name, "postings")

    def index(self, name: str) -> Location:
        return self.root.child("shards", name, "index")

    def fields(self, name: str) -> Location:
        return self.root.child("shards", name, "fields")

    def shard_commit(self, name: str) -> Location:
        return self.root.child("shards", name, "COMMITTED.json")

    def staging(self, plan_id: str) -> Location:
        return self.root.child("staging", plan_id)

    def rejects(self, generation: int) -> Location:
        return self.root.child("rejects", f"g{generation:06d}")
