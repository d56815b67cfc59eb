"""The in-process query engine over a committed generation: load its shards, search each,
merge the top-k. Used by `lsr search`, evaluation and the Serve searchers.

Imports `pipeline.catalog`, `pipeline.format` and `pipeline.index`; must not import
`pipeline.batch`, `pipeline.serve` or `pipeline.cli`.
"""

from pipeline.search.filter_cache import DEFAULT_FILTER_CACHE_BYTES, FilterCache
from pipeline.search.filters import Filter, FilterError, compile_filter
from pipeline.search.sharded import (
    PARALLEL_KERNEL_LOCK,
    FieldRequestError,
    Hit,
    LoadedShard,
    ShardedIndex,
    check_shards,
    load_shard,
    merge_rows,
    merge_top_k,
    read_doc_ids,
    rows_to_hits,
    shard_offsets,
)

__all__ = ["DEFAULT_FILTER_CACHE_BYTES", "FilterCache", "Filter", "FilterError", "compile_filter",
           "FieldRequestError", "PARALLEL_KERNEL_LOCK", "Hit", "LoadedShard", "ShardedIndex", "check_shards", "load_shard",
           "merge_rows", "merge_top_k", "read_doc_ids", "rows_to_hits", "shard_offsets"]
