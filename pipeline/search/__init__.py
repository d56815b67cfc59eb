"""The in-process query engine over a committed generation: load its shards, search each,
merge the top-k. Used by `lsr search`, evaluation and the Serve searchers.

Imports `pipeline.catalog`, `pipeline.format` and `pipeline.index`; must not import
`pipeline.batch`, `pipeline.serve` or `pipeline.cli`.
"""

from pipeline.search.sharded import Hit, LoadedShard, ShardedIndex, load_shard, merge_top_k

__all__ = ["Hit", "LoadedShard", "ShardedIndex", "load_shard", "merge_top_k"]
