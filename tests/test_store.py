"""Shard postings and the manifest protocol, on local disk and on S3 (moto server)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.objstore import resolve
from pipeline.catalog import IndexLayout, Manifest, ManifestError, ShardEntry, commit_generation, list_generations, read_current_generation, read_manifest
from pipeline.format import PostingsFormatError, ShardPostings, fingerprint_texts, read_postings, write_postings


def _postings(n=50, vocab=1000, seed=0):
    rng = np.random.default_rng(seed)
    m = sp.random(n, vocab, density=0.02, random_state=rng, format="csr", dtype=np.float32)
    m.data = np.abs(m.data) + 0.01
    ids = np.array([f"doc-{i}-é" for i in range(n)], dtype=object)
    return ShardPostings(ids, fingerprint_texts([f"text {i}" for i in range(n)]), m)


def _roundtrip(url, storage_options=None, dtype="float32"):
    p = _postings()
    loc = resolve(url, storage_options)
    checksum = write_postings(loc, p, values_dtype=dtype, stats={"x": 1})
    back = read_postings(loc, verify=True)
    assert back.checksum == checksum
    assert list(back.doc_ids) == list(p.doc_ids)
    assert np.array_equal(back.fingerprints, p.fingerprints)
    tol = 0 if dtype == "float32" else 1e-3
    assert np.array_equal(back.vectors.indices, p.vectors.indices)
    assert np.allclose(back.vectors.toarray(), p.vectors.toarray(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_postings_roundtrip_local(tmp_path, dtype):
    _roundtrip(str(tmp_path / "p"), dtype=dtype)


def test_postings_roundtrip_s3(s3_server):
    _roundtrip(f"s3://{s3_server['bucket']}/store-test/p", s3_server["storage_options"])


def test_s3_from_standard_environment(s3_server, monkeypatch):
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    _roundtrip(f"s3://{s3_server['bucket']}/store-env/p")


def test_damaged_postings_fail_verification(tmp_path):
    loc = resolve(str(tmp_path / "p"))
    write_postings(loc, _postings())
    meta = tmp_path / "p" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["checksum"] = "0" * 64
    meta.write_text(json.dumps(doc))
    with pytest.raises(PostingsFormatError, match="checksum mismatch"):
        read_postings(loc, verify=True)
    with pytest.raises(PostingsFormatError, match="no postings group"):
        read_postings(resolve(str(tmp_path / "missing")))


def _manifest(generation, n_docs=10):
    return Manifest(generation=generation, created_at="t", encoder={"model": "m"}, index={"kind": "exact"},
                    shards=[ShardEntry(f"g{generation:06d}-s00000", n_docs, 100, "c" * 64, "exact")],
                    corpus={"url": "x"}, counts={"docs_in": n_docs})


def test_commit_protocol_and_generations(tmp_path):
    layout = IndexLayout.at(str(tmp_path / "idx"))
    assert read_current_generation(layout) is None
    with pytest.raises(ManifestError, match="no index here"):
        read_manifest(layout)
    commit_generation(layout, _manifest(1))
    commit_generation(layout, _manifest(2, n_docs=20))
    assert read_current_generation(layout) == 2
    assert read_manifest(layout).n_docs == 20
    assert read_manifest(layout, 1).n_docs == 10
    assert list_generations(layout) == [1, 2]
    (tmp_path / "idx" / "manifests" / "000002.json").write_text('{"format": "other"}')
    with pytest.raises(ManifestError, match="not an lsr-pipeline manifest"):
        read_manifest(layout)
