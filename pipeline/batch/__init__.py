"""The Ray Data batch jobs over an index root: `run_index_job` (corpus -> sharded postings and
indexes -> a committed generation) and `run_reindex` (only what changed -> a new generation).

Both share the plan, the read/tokenize/encode stages, the staging sink and one shard writer
(`pipeline.batch.commit`). Imports `pipeline.catalog`, `pipeline.format`, `pipeline.index`,
`pipeline.encode`, `pipeline.data` and `pipeline.objstore`; must not import `pipeline.search`,
`pipeline.serve` or `pipeline.cli`.
"""

from pipeline.batch.config import EncoderOptions, IndexJobConfig, ResourceOptions
from pipeline.batch.index_job import JobSummary, run_index_job
from pipeline.batch.reindex_config import EncoderOverrides, ReindexConfig
from pipeline.batch.reindex_diff import ReindexError
from pipeline.batch.reindex_job import ReindexSummary, run_reindex

__all__ = ["EncoderOptions", "IndexJobConfig", "ResourceOptions", "JobSummary", "run_index_job",
           "EncoderOverrides", "ReindexConfig", "ReindexError", "ReindexSummary", "run_reindex"]
