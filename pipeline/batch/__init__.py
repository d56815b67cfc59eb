"""The distributed indexing job (Ray Data): corpus -> sharded postings + indexes -> manifest."""

from pipeline.indexing.config import EncoderOptions, IndexJobConfig, ResourceOptions
from pipeline.indexing.job import JobSummary, run_index_job

__all__ = ["EncoderOptions", "IndexJobConfig", "ResourceOptions", "JobSummary", "run_index_job"]
