"""The indexing job end to end on a real local Ray, real data, real model, real S3 API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SCIFACT_HEAD_DOCS, assert_same_ranking, tiny_encoder
from ray_procs import kill_when, ray_head, submit_job, subprocess_env
from pipeline.index import ExactIndex
from pipeline.batch import IndexJobConfig, run_index_job
from pipeline.batch.datasource import BadRecordError
from pipeline.catalog import IndexLayout, read_manifest
from pipeline.format import read_postings
from pipeline.search import ShardedIndex

LSR = [sys.executable, "-m", "pipeline.cli"]


_env = subprocess_env


def _exact_reference(docs, doc_ids, queries, k=10):
    idx, scores = ExactIndex(docs).search(queries, k=k)
    ids = [[doc_ids[i] for i in row if i >= 0] for row in idx]
    return ids, [s[:len(i)] for s, i in zip(scores, ids)]


def _shard_postings(root: str, storage_options=None) -> list:
    """Each shard's postings of the live generation (verified), in manifest order."""
    layout = IndexLayout.at(root, storage_options)
    return [read_postings(layout.postings(s.name), verify=True) for s in read_manifest(layout).shards]


def _concatenated(parts: list):
    """Shards' postings concatenated in shard order: (ids, csr)."""
    import scipy.sparse as sp

    return [i for p in parts for i in p.doc_ids], sp.vstack([p.vectors for p in parts], format="csr")


def _stored_vectors(root: str, storage_options=None):
    """All postings of the live generation, concatenated in shard order: (ids, csr)."""
    return _concatenated(_shard_postings(root, storage_options))


def assert_same_vectors(got, want, atol: float = 1e-5) -> None:
    """Equal sparse vectors up to float noise. Batches of other shapes round differently, so a
    weight within `atol` of zero may exist on one side only; it must then be below `atol`."""
    assert got.shape == want.shape
    assert abs(got.nnz - want.nnz) <= max(2, want.nnz // 100_000), (got.nnz, want.nnz)
    assert abs(got - want).max() <= atol


def _write_corpus(path: Path, records) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def assert_job_equals_reference(root, summary, encoded, n_shards: int) -> None:
    """A job's index holds the reference encodings in corpus order; exact search over it is
    exact search over them; its blocked default reaches recall 0.95 against that."""
    n = len(encoded.doc_ids)
    assert summary.docs_in == summary.docs_indexed == n and summary.docs_rejected == 0
    assert summary.shards == n_shards and summary.bound_stage == "encode"

    index = ShardedIndex.open(str(root))
    manifest = index.manifest
    assert manifest.counts == {"docs_in": n, "docs_indexed": n, "docs_rejected": 0, "docs_empty": 0}
    assert sum(s.n_docs for s in manifest.shards) == n
    assert manifest.encoder["fingerprint"] == tiny_encoder().settings()["fingerprint"]

    # The stored vectors are the reference encodings, document by document, in corpus order.
    ids, vectors = _stored_vectors(str(root))
    assert ids == encoded.doc_ids
    assert_same_vectors(vectors, encoded.docs)

    want_ids, want_scores = _exact_reference(encoded.docs, encoded.doc_ids, encoded.queries)
    got = index.search_vectors(encoded.queries, k=10, exact=True)
    for q in range(len(encoded.query_ids)):
        assert_same_ranking([h.doc_id for h in got[q]], [h.score for h in got[q]],
                            want_ids[q], want_scores[q])

    # The blocked index with its default parameters, against exact search.
    approx = index.search_vectors(encoded.queries, k=10)
    recall = np.mean([len({h.doc_id for h in a} & set(w)) / max(1, len(w)) for a, w in zip(approx, want_ids)])
    assert recall >= 0.95, recall


def test_scifact_job_equals_exact_search_over_reference_encodings(scifact_index, scifact_head):
    root, summary = scifact_index
    assert len(scifact_head.doc_ids) == SCIFACT_HEAD_DOCS
    assert_job_equals_reference(root, summary, scifact_head, n_shards=3)


@pytest.mark.slow
def test_whole_scifact_job_equals_exact_search_over_reference_encodings(ray_local, scifact_dir,
                                                                        encodings, tmp_path):
    """All 5,183 documents (about 4 min on 2 cores; the default run indexes the first 1,500)."""
    root = tmp_path / "index"
    summary = run_index_job(IndexJobConfig(corpus=str(scifact_dir), output=str(root),
                                           shard_size=2000))
    assert_job_equals_reference(root, summary, encodings("scifact"), n_shards=3)


def test_lsr_search_cli_equals_python_api(scifact_index, scifact_head_dir):
    root, _ = scifact_index
    queries = [json.loads(line)["text"] for line in open(scifact_head_dir / "queries.jsonl")][:3]
    out = subprocess.run([*LSR, "search", str(root), *queries, "--k", "10", "--exact", "--json"],
                         capture_output=True, text=True, env=_env(), check=True, timeout=300)
    cli = json.loads(out.stdout)
    api = ShardedIndex.open(str(root)).search(queries, k=10, exact=True)
    assert cli["generation"] == 1 and [r["query"] for r in cli["results"]] == queries
    for result, hits in zip(cli["results"], api):
        assert [h["doc_id"] for h in result["hits"]] == [h.doc_id for h in hits]
        assert np.allclose([h["score"] for h in result["hits"]], [h.score for h in hits], atol=1e-5)


def test_job_reads_and_writes_s3_from_the_standard_aws_environment(s3_server, data_dir, encodings, tmp_path):
    """Corpus on S3, index on S3, credentials and endpoint only in the AWS environment variables.
    The first 400 of cisi's 1,460 documents, in 3 shards: every S3 path of the job, with less
    to encode."""
    import boto3

    n_docs = 400
    s3 = boto3.client("s3", endpoint_url=s3_server["endpoint"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    with open(data_dir / "cisi" / "corpus.jsonl", "rb") as f:
        head = b"".join(line for _, line in zip(range(n_docs), f))
    s3.put_object(Bucket=s3_server["bucket"], Key="corpora/cisi/corpus.jsonl", Body=head)
    corpus = f"s3://{s3_server['bucket']}/corpora/cisi/"
    output = f"s3://{s3_server['bucket']}/indexes/cisi"
    env = _env(**s3_server["env"])
    subprocess.run([*LSR, "index", corpus, output, "--shard-size", "150", "--json"], env=env, check=True,
                   capture_output=True, text=True, timeout=900)
    encoded = encodings("cisi")
    parts = _shard_postings(output, s3_server["storage_options"])
    ids, vectors = _concatenated(parts)
    assert len(parts) == 3
    assert ids == encoded.doc_ids[:n_docs]
    assert_same_vectors(vectors, encoded.docs[:n_docs])

    queries = [json.loads(line)["text"] for line in open(data_dir / "cisi" / "queries.jsonl")][:5]
    out = subprocess.run([*LSR, "search", output, *queries, "--exact", "--json"], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    cli = json.loads(out.stdout)["results"]
    want_ids, want_scores = _exact_reference(encoded.docs[:n_docs], encoded.doc_ids[:n_docs],
                                             encoded.queries[:5])
    for q, result in enumerate(cli):
        assert_same_ranking([h["doc_id"] for h in result["hits"]], [h["score"] for h in result["hits"]],
                            want_ids[q], want_scores[q])

    # `lsr info` over S3: every shard's derived parameters explained from its recorded statistics
    out = subprocess.run([*LSR, "info", output, "--json"], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    info = json.loads(out.stdout)
    assert sum(s["n_docs"] for s in info["shards"]) == n_docs and len(info["shards"]) == 3
    for shard, part in zip(info["shards"], parts, strict=True):
        assert shard["used_terms"] == np.unique(part.vectors.indices).size
        assert set(shard["derivation"]) == set(shard["config"]["derived"]) and shard["derivation"]


BAD_LINES = {
    3: b'{"_id": "bad-utf8", "text": "caf\xe9 \xff"}\n',
    5: b'{"_id": "t", "text": \n',
    8: b'{"text": "no id at all"}\n',
    11: b'{"_id": "n", "text": 42}\n',
    14: b'{"_id": "e", "title": " ", "text": ""}\n',
    17: b'{"_id": "d7", "text": "a duplicate of document seven"}\n',
}


def _bad_corpus(path: Path, n=40) -> Path:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(BAD_LINES.get(i) or (json.dumps({"_id": f"d{i}", "title": f"Doc {i}",
                                                      "text": f"about topic number {i} and more"}) + "\n").encode())
    return path


def test_bad_record_fails_fast_naming_file_and_line(ray_local, tmp_path):
    corpus = _bad_corpus(tmp_path / "c.jsonl")
    with pytest.raises(BadRecordError, match=r"c\.jsonl line 4: invalid UTF-8"):
        run_index_job(IndexJobConfig(corpus=str(corpus), output=str(tmp_path / "idx"), index_kind="exact"))
    assert not (tmp_path / "idx" / "CURRENT.json").exists()
    # The CLI says the same in one line and exits 1.
    out = subprocess.run([*LSR, "index", str(corpus), str(tmp_path / "idx2")], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert out.returncode == 1
    assert "error: bad record:" in out.stderr and "c.jsonl line 4" in out.stderr
    # One line says it all: no traceback, no Ray retry advice (those come with -v).
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: bad record: "), out.stderr[-3000:]
    assert "invalid UTF-8 at byte" in errors[0]
    assert "Traceback" not in out.stderr and "DataContext" not in out.stderr, out.stderr[-3000:]


def test_duplicate_ids_fail_naming_both_records(ray_local, tmp_path):
    lines = {k: v for k, v in BAD_LINES.items() if k == 17}
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "wb") as f:
        for i in range(30):
            f.write(lines.get(i) or (json.dumps({"_id": f"d{i}", "text": f"text {i}"}) + "\n").encode())
    with pytest.raises(BadRecordError, match=r"duplicate id 'd7' at .*c\.jsonl line 18 .*first seen at .*line 8"):
        run_index_job(IndexJobConfig(corpus=str(corpus), output=str(tmp_path / "idx"), index_kind="exact",
                                     shard_size=10))


def test_skip_policy_writes_every_rejected_record_and_accounts_for_all(ray_local, tmp_path):
    corpus = _bad_corpus(tmp_path / "c.jsonl")
    summary = run_index_job(IndexJobConfig(corpus=str(corpus), output=str(tmp_path / "idx"), index_kind="exact",
                                           on_bad_record="skip", shard_size=12))
    # Line 15 (blank title and text) is an empty document: indexed, counted, not rejected.
    assert summary.docs_in == 40 and summary.docs_rejected == 5 and summary.docs_indexed == 35
    assert summary.docs_empty == 1
    rejects = [json.loads(line) for line in open(tmp_path / "idx" / "rejects" / "g000001" / "rejects.jsonl")]
    reasons = sorted(r["reason"].split(" (")[0] for r in rejects)
    expected = sorted(["invalid UTF-8", "not valid JSON", "missing id", "field 'text' must be a string",
                       "duplicate id"])
    assert len(reasons) == 5 and all(r.startswith(e) for r, e in zip(reasons, expected)), reasons
    # Every reject names its file and line, duplicates included.
    by_reason = {r["reason"].split(" (")[0]: r for r in rejects}
    assert by_reason["duplicate id"]["source"].endswith("c.jsonl line 18"), by_reason["duplicate id"]
    assert "c.jsonl line 8" in by_reason["duplicate id"]["reason"]
    manifest = read_manifest(IndexLayout.at(str(tmp_path / "idx")))
    assert manifest.counts["docs_in"] == manifest.counts["docs_indexed"] + manifest.counts["docs_rejected"]
    assert manifest.counts["docs_empty"] == 1
    ids, vectors = _stored_vectors(str(tmp_path / "idx"))
    assert "d7" in ids and ids.count("d7") == 1 and len(ids) == 35
    assert vectors[ids.index("e")].nnz == 0
    # The kept d7 is the first one (its own text), not the duplicate's.
    index = ShardedIndex.open(str(tmp_path / "idx"))
    top = index.search(["about topic number 7 and more"], k=1, exact=True)[0][0]
    assert top.doc_id == "d7"


def test_resume_after_kill_reencodes_only_what_was_lost(ray_local, data_dir, tmp_path):
    """Kill the job (and its own Ray) midway; the same command again resumes and completes."""
    src = [json.loads(line) for line in open(data_dir / "cisi" / "corpus.jsonl")][:400]
    corpus = _write_corpus(tmp_path / "c.jsonl", src)
    output = tmp_path / "idx"
    args = [*LSR, "index", str(corpus), str(output), "--shard-size", "100", "--block-rows", "20",
            "--index-kind", "exact", "--json"]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    kill_when(proc, lambda: len(list((output / "staging").glob("*/parts/*/*.parquet"))) >= 4)
    assert not (output / "CURRENT.json").exists()
    staged_before = len(list((output / "staging").glob("*/parts/*/*.parquet")))
    assert 0 < staged_before < 20

    summary = run_index_job(IndexJobConfig(corpus=str(corpus), output=str(output), shard_size=100,
                                           block_rows=20, index_kind="exact"))
    assert summary.resumed and summary.docs_indexed == 400
    assert summary.blocks_encoded <= 20 - staged_before + 4  # only lost blocks (+ partial ones) again
    ids, vectors = _stored_vectors(str(output))
    want = tiny_encoder().encode([(r["title"] + " " + r["text"]).strip() for r in src])
    assert ids == [r["_id"] for r in src]
    assert_same_vectors(vectors, want)
    assert not (output / "staging").exists()


@pytest.mark.slow
def test_ray_job_submit_against_a_head_node(data_dir, tmp_path):
    """`ray job submit` of jobs/index.py to a `ray start --head` cluster on 127.0.0.1, stopped by PID."""
    output = tmp_path / "idx"
    with ray_head() as address:
        # This interpreter: `python` on PATH need not be the one with the project installed.
        out = submit_job(address, [sys.executable, "jobs/index.py", str(data_dir / "cisi"), str(output),
                                   "--shard-size", "800", "--json"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    manifest = read_manifest(IndexLayout.at(str(output)))
    assert manifest.counts["docs_indexed"] == 1460 and len(manifest.shards) == 2


def test_duplicates_across_many_units_keep_the_first_in_corpus_order(ray_local, tmp_path):
    """9 units, so 9 hash buckets: ids repeated within a unit, across units and three times;
    each kept copy is the first in corpus order, every other copy is a reject naming its line
    and the first one's."""
    repeats = {12: 3, 13: 3, 25: 3, 31: 0, 40: 0, 44: 20}    # line -> the line whose id it repeats
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as f:
        for i in range(45):
            src = repeats.get(i, i)
            f.write(json.dumps({"_id": f"d{src}", "text": f"line {i} of the corpus"}) + "\n")
    summary = run_index_job(IndexJobConfig(corpus=str(corpus), output=str(tmp_path / "idx"),
                                           index_kind="exact", on_bad_record="skip", shard_size=5))
    assert summary.shards == 9 and summary.docs_rejected == len(repeats)
    rejects = [json.loads(line) for line in open(tmp_path / "idx" / "rejects" / "g000001" / "rejects.jsonl")]
    assert sorted(int(r["source"].rsplit(" ", 1)[1]) for r in rejects) == sorted(i + 1 for i in repeats)
    for r in rejects:
        line = int(r["source"].rsplit(" ", 1)[1]) - 1
        assert f"line {repeats[line] + 1}" in r["reason"], r
    ids, _ = _stored_vectors(str(tmp_path / "idx"))
    assert sorted(ids) == sorted(f"d{i}" for i in range(45) if i not in repeats)
    index = ShardedIndex.open(str(tmp_path / "idx"))
    for src in (3, 0, 20):              # the kept copy is the first line's text
        top = index.search([f"line {src} of the corpus"], k=1, exact=True)[0][0]
        assert top.doc_id == f"d{src}"
