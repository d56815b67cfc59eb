"""The manifest: what a generation of an index is made of, and the commit protocol.

A generation becomes visible in exactly one step: after every shard it names is
committed, its manifest is written (`manifests/NNNNNN.json`), then `CURRENT.json` is
rewritten atomically to point at it. Readers start from CURRENT and never list
directories, so a crashed job leaves nothing that a reader could mistake for data.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from pipeline.errors import UserError
from pipeline.faults import fault_point
from pipeline.objstore import exists, read_json, write_json_atomic
from pipeline.catalog.layout import IndexLayout, generation_file_name, parse_generation_file_name

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "lsr-index"
MANIFEST_VERSION = 1


class ManifestError(UserError, ValueError):
    """No index at a URL, or a manifest this build cannot read."""


@dataclass(frozen=True)
class ShardEntry:
    name: str                 # directory under shards/, e.g. g000001-s00003
    n_docs: int
    nnz: int
    postings_checksum: str    # sha256 of the postings arrays (see store.postings)
    index_kind: str           # "blocked" or "exact"
    index_nbytes: int = 0
    fields_checksum: str | None = None   # sha256 of the shard's fields group, None without one


@dataclass(frozen=True)
class Manifest:
    generation: int
    created_at: str
    encoder: dict[str, Any]           # SpladeEncoder.settings(): model, fingerprint, lengths...
    index: dict[str, Any]             # index kind and its parameters
    shards: list[ShardEntry]
    corpus: dict[str, Any]            # url, format, fingerprint, files
    counts: dict[str, int]            # docs_in, docs_indexed, docs_rejected, ...
    timing: dict[str, float] = field(default_factory=dict)
    parent_generation: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    fields: list[dict] = field(default_factory=list)   # field schema (fields.schema_to_json)
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION

    @property
    def n_docs(self) -> int:
        return sum(s.n_docs for s in self.shards)

    @property
    def nnz(self) -> int:
        return sum(s.nnz for s in self.shards)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = "manifest") -> "Manifest":
        if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{where}: not an lsr-pipeline manifest")
        if obj.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"{where}: manifest version {obj.get('version')!r}, "
                                f"this build reads {MANIFEST_VERSION}")
        try:
            shards = [ShardEntry(**s) for s in obj["shards"]]
            fields = {k: obj[k] for k in ("generation", "created_at", "encoder", "index", "corpus",
                                          "counts")}
            optional = {k: obj[k] for k in ("timing", "parent_generation", "extra",
                                                       "fields") if k in obj}
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{where}: malformed manifest ({exc})") from exc
        return cls(shards=shards, **fields, **optional)


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_current_generation(layout: IndexLayout) -> int | None:
    """The live generation number, or None when the root holds no committed index."""
    loc = layout.current()
    if not exists(loc):
        return None
    pointer = read_json(loc)
    if not isinstance(pointer, dict) or pointer.get("format") != MANIFEST_FORMAT \
            or not isinstance(pointer.get("generation"), int):
        raise ManifestError(f"{loc.url}: not an lsr-pipeline CURRENT pointer")
    return pointer["generation"]


def read_manifest(layout: IndexLayout, generation: int | None = None) -> Manifest:
    """The manifest of `generation`, or of the live one when None."""
    if generation is None:
        generation = read_current_generation(layout)
        if generation is None:
            raise ManifestError(f"{layout.url}: no index here (no {layout.current().url}); "
                                f"run `lsr index` first")
    loc = layout.manifest(generation)
    if not exists(loc):
        raise ManifestError(f"{layout.url}: generation {generation} has no manifest at {loc.url}")
    return Manifest.from_json(read_json(loc), where=loc.url)


def list_generations(layout: IndexLayout) -> list[int]:
    """Generations that have a manifest (committed or not yet pointed at), ascending."""
    from pipeline.objstore import list_dir

    parsed = (parse_generation_file_name(name) for name in list_dir(layout.manifests()))
    return sorted(g for g in parsed if g is not None)


def commit_generation(layout: IndexLayout, manifest: Manifest,
                      fence: Callable[[str], None] | None = None) -> None:
    """Write the manifest, then move CURRENT to it: the single visible step.

    `fence(step)` runs before each write and raises to stop (the writer lock's check)."""
    if fence is not None:
        fence("writing the manifest")
    write_json_atomic(layout.manifest(manifest.generation), manifest.to_json())
    fault_point("commit:before-current")
    if fence is not None:
        fence("moving CURRENT")
    write_json_atomic(layout.current(), {
        "format": MANIFEST_FORMAT,
        "generation": manifest.generation,
        "manifest": f"manifests/{generation_file_name(manifest.generation)}",
        "committed_at": now_utc(),
    })
    log.info("committed generation %d at %s (%d shards, %d docs)",
             manifest.generation, layout.url, len(manifest.shards), manifest.n_docs)
