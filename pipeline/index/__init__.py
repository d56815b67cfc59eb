"""Per-shard sparse retrieval indexes and their numba kernels: exact (ground truth) and
Seismic-style blocked. One data structure per module.

Must not import: `pipeline.format` (it saves and loads these classes through `arrays()` and
`from_arrays()`), storage, Ray, or anything above this package.
"""

from pipeline.index.blocked import BlockedIndex
from pipeline.index.config import BlockedIndexConfig
from pipeline.index.exact import ExactIndex
from pipeline.index.topk import recall_at_k

__all__ = ["BlockedIndex", "BlockedIndexConfig", "ExactIndex", "recall_at_k"]
