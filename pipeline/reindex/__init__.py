"""Scheduled incremental re-indexing: change detection, re-encoding of what changed, shard
rebuilds, a new generation committed beside the live one, and garbage collection."""

from pipeline.reindex.config import EncoderOverrides, ReindexConfig
from pipeline.reindex.diff import ReindexError
from pipeline.store.gc import GcReport, collect_garbage
from pipeline.reindex.job import ReindexSummary, run_reindex

__all__ = ["EncoderOverrides", "ReindexConfig", "ReindexError", "GcReport", "collect_garbage",
           "ReindexSummary", "run_reindex"]
