"""The on-storage form of an index: layout, shard postings, manifests and generations."""

from pipeline.store.layout import IndexLayout, shard_name
from pipeline.store.manifest import (
    Manifest,
    ManifestError,
    ShardEntry,
    commit_generation,
    list_generations,
    read_current_generation,
    read_manifest,
)
from pipeline.store.gc import GcReport, collect_garbage
from pipeline.store.leases import Lease, leased_generations, read_leases, release_lease, write_lease
from pipeline.store.reader import Hit, LoadedShard, ShardedIndex, load_shard, merge_top_k
from pipeline.store.postings import (
    PostingsFormatError,
    ShardPostings,
    fingerprint_texts,
    read_postings,
    write_postings,
)

__all__ = [
    "IndexLayout", "shard_name", "Manifest", "ManifestError", "ShardEntry", "commit_generation",
    "list_generations", "read_current_generation", "read_manifest", "PostingsFormatError",
    "ShardPostings", "fingerprint_texts", "read_postings", "write_postings",
    "Hit", "LoadedShard", "ShardedIndex", "load_shard", "merge_top_k",
    "GcReport", "collect_garbage", "Lease", "leased_generations", "read_leases", "release_lease", "write_lease",
]
