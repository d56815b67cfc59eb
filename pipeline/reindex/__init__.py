"""Scheduled incremental re-indexing: change detection, re-encoding of what changed, shard
rebuilds, a new generation committed beside the live one, then garbage collection
(`pipeline.store.gc`, shared with the indexing job)."""

from pipeline.reindex.config import EncoderOverrides, ReindexConfig
from pipeline.reindex.diff import ReindexError
from pipeline.reindex.job import ReindexSummary, run_reindex

__all__ = ["EncoderOverrides", "ReindexConfig", "ReindexError", "ReindexSummary", "run_reindex"]
