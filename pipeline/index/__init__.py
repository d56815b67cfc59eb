"""Per-shard sparse retrieval indexes: exact (ground truth) and Seismic-style blocked."""

from pipeline.index.blocked import BlockedIndex
from pipeline.index.config import BlockedIndexConfig
from pipeline.index.exact import ExactIndex
from pipeline.index.serialize import IndexFormatError, load_index
from pipeline.index.topk import recall_at_k

__all__ = ["BlockedIndex", "BlockedIndexConfig", "ExactIndex", "IndexFormatError", "load_index",
           "recall_at_k"]
