"""Per-shard sparse retrieval indexes: exact (ground truth) and Seismic-style blocked."""

from pipeline.index.blocked import BlockedIndex
from pipeline.index.config import BlockedIndexConfig
from pipeline.index.exact import ExactIndex
from pipeline.index.serialize import IndexFormatError, load_index

__all__ = ["BlockedIndex", "BlockedIndexConfig", "ExactIndex", "IndexFormatError", "load_index"]
