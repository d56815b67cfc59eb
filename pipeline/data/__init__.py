"""Corpus input: discovery of files (JSONL, Parquet, BEIR folders; local or s3://), splitting
into read chunks, strict parsing and record validation, and the demo corpus.

Imports only `pipeline.objstore` and `pipeline.errors`; no Ray, torch or index code.
"""
