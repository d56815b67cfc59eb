"""The lifecycle of an index root: its layout, manifests and CURRENT, server leases, and
garbage collection.

Knows where things live and when they are committed, not how a shard's bytes are encoded
(`pipeline.format`) or searched (`pipeline.search`). Imports only `pipeline.objstore`,
`pipeline.errors` and `pipeline.faults`; must never import `pipeline.search`, `pipeline.batch` or `pipeline.serve`.
"""

from pipeline.catalog.gc import GcReport, collect_garbage
from pipeline.catalog.layout import IndexLayout, parse_shard_name, shard_name
from pipeline.catalog.writer_lock import (LOCK_TTL_S, WriterLock, WriterLockHeld, WriterLockLost,
                                          acquire_writer_lock)
from pipeline.catalog.leases import Lease, leased_generations, read_leases, release_lease, write_lease
from pipeline.catalog.manifest import (
    Manifest,
    ManifestError,
    ShardEntry,
    commit_generation,
    list_generations,
    read_current_generation,
    read_manifest,
)

__all__ = [
    "IndexLayout", "parse_shard_name", "shard_name", "Manifest", "ManifestError", "ShardEntry", "commit_generation",
    "list_generations", "read_current_generation", "read_manifest",
    "GcReport", "collect_garbage", "Lease", "leased_generations", "read_leases", "release_lease",
    "write_lease", "LOCK_TTL_S", "WriterLock", "WriterLockHeld", "WriterLockLost",
    "acquire_writer_lock",
]
