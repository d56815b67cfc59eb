"""Filtered search, stored fields and explain over an index with fields (issue 15, query time).

Differential tests on real data: scifact encoded by the real splade-tiny model (the
`encodings` fixture), with fields derived reproducibly from the corpus records, written by
the direct writer into a few shards. Every expectation is computed independently with scipy
(``Q @ D[allowed].T``) and from the corpus JSONL, never through the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.batch.shard_writer import committed_record, verify_shard
from pipeline.catalog import IndexLayout, read_manifest
from pipeline.format.fields import parse_schema, read_fields
from pipeline.testing.direct_writer import write_generation


def _small(n=60, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    docs = sp.random(n, vocab, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    rows = [{"tag": "ab"[i % 2], "n": i, "keep": {"i": i}} for i in range(n)]
    return docs, rows


def test_fields_written_with_shards_and_verified(tmp_path):
    docs, rows = _small()
    schema = parse_schema(["tag:keyword", "n:int", "keep:stored"])
    root = str(tmp_path / "ix")
    manifest = write_generation(root, 1, [f"d{i}" for i in range(60)], docs, 3, {},
                                fields=(schema, rows))
    layout = IndexLayout.at(root)
    assert read_manifest(layout).fields == [{"name": "tag", "type": "keyword"},
                                            {"name": "n", "type": "int"},
                                            {"name": "keep", "type": "stored"}]
    for s, entry in enumerate(manifest.shards):
        assert entry.fields_checksum
        record = committed_record(layout, entry.name, {}, verify=True)
        assert record is not None and record["fields_checksum"] == entry.fields_checksum
        _, columns = read_fields(layout.fields(entry.name), verify=True)
        assert [columns["n"].value(r) for r in range(entry.n_docs)] == \
            list(range(20 * s, 20 * s + entry.n_docs))
    # a damaged fields group fails the shard's verification (it is then rewritten)
    name = manifest.shards[0].name
    record = committed_record(layout, name, {}, verify=False)
    record = {**record, "fields_checksum": "0" * 64}
    assert not verify_shard(layout, name, record)
