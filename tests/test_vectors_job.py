"""Pre-encoded vectors through the real indexing and re-indexing jobs (`--format vectors`).

One small text corpus (the first scifact documents) is indexed by the real job with the real
splade-tiny model; its stored vectors are the pre-encoded vectors every test here writes out in
the accepted shapes (Anserini JSONL with token or term-id keys, Parquet list columns).
The reference for "the same index" is the text index itself: equal stored vectors, and equal
top-10 results (ids and scores) for real scifact queries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from conftest import assert_same_ranking
from ray_procs import subprocess_env
from pipeline.batch import IndexJobConfig, ReindexConfig, run_index_job, run_reindex
from pipeline.batch.config import EncoderOptions
from pipeline.catalog import IndexLayout, read_manifest
from pipeline.format import read_postings
from pipeline.search import ShardedIndex

LSR = [sys.executable, "-m", "pipeline.cli"]
N_DOCS = 150
N_QUERIES = 20
ONE_SHARD = 10_000   # round trips keep one shard: JSONL is cut by bytes, and text and vectors
                     # lines differ in length (a blocked index depends on its shard's documents)


def _stored(root) -> tuple[list[str], sp.csr_matrix]:
    layout = IndexLayout.at(str(root))
    manifest = read_manifest(layout)
    parts = [read_postings(layout.postings(s.name), verify=True) for s in manifest.shards]
    return [str(i) for p in parts for i in p.doc_ids], sp.vstack([p.vectors for p in parts], format="csr")


def _tokens() -> np.ndarray:
    from pipeline.encode.models import resolve_model
    from pipeline.encode.tokens import load_tokenizer

    tokenizer = load_tokenizer(resolve_model("splade-tiny"))
    return np.asarray(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), dtype=object)


def _rows(csr: sp.csr_matrix):
    for r in range(csr.shape[0]):
        lo, hi = csr.indptr[r], csr.indptr[r + 1]
        yield csr.indices[lo:hi], csr.data[lo:hi]


def _write_jsonl(path: Path, ids, csr, names=None, extra=None) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, (terms, weights) in zip(ids, _rows(csr)):
            keys = names[terms] if names is not None else [str(int(t)) for t in terms]
            f.write(json.dumps({"id": doc_id, **(extra or {}),
                                "vector": {str(k): float(w) for k, w in zip(keys, weights)}}) + "\n")
    return path


def _vectors_job(corpus, output, **kwargs) -> IndexJobConfig:
    options = dict(format="vectors", shard_size=60, index_kind="exact")
    options.update(kwargs)
    return IndexJobConfig(corpus=str(corpus), output=str(output), **options)


@pytest.fixture(scope="module")
def text_index(ray_local, scifact_dir, tmp_path_factory):
    """(root, doc ids, stored vectors, query texts): the first scifact documents indexed from text."""
    base = tmp_path_factory.mktemp("vectors-text")
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
        lines = [next(f) for _ in range(N_DOCS)]
    (base / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    root = base / "index"
    run_index_job(IndexJobConfig(corpus=str(base / "corpus.jsonl"), output=str(root), shard_size=ONE_SHARD))
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(next(f))["text"] for _ in range(N_QUERIES)]
    ids, csr = _stored(root)
    return root, ids, csr, queries


@pytest.fixture(scope="module")
def id_export(text_index, tmp_path_factory):
    """`lsr export` of the text index with term-id keys, and that export indexed as vectors."""
    root = text_index[0]
    base = tmp_path_factory.mktemp("vectors-export")
    out = base / "export-ids.jsonl"
    subprocess.run([*LSR, "export", str(root), str(out), "--keys", "ids"], check=True,
                   env=subprocess_env(), capture_output=True, timeout=300)
    index = base / "from-ids"
    summary = run_index_job(IndexJobConfig(corpus=str(out), output=str(index), format="vectors",
                                           vector_keys="ids", shard_size=ONE_SHARD))
    return out, index, summary


def _assert_same_search(a, b, queries, exact=False) -> None:
    first, second = ShardedIndex.open(str(a)), ShardedIndex.open(str(b))
    vectors = first.encoder().encode_queries(queries)
    for hits_a, hits_b in zip(first.search_vectors(vectors, k=10, exact=exact),
                              second.search_vectors(vectors, k=10, exact=exact)):
        assert_same_ranking([h.doc_id for h in hits_a], [h.score for h in hits_a],
                            [h.doc_id for h in hits_b], [h.score for h in hits_b], tol=1e-5)


def test_export_reindexed_as_vectors_gives_identical_search_results(text_index, id_export, tmp_path):
    """Round trip: `lsr export` (ids and tokens keys) -> `lsr index --format vectors` -> same
    stored vectors and the same top-10 (ids, scores) for real queries, text queries included."""
    root, ids, csr, queries = text_index
    _, from_ids, summary = id_export
    assert summary.docs_indexed == N_DOCS and summary.stages["encode"]["busy_s"] == 0
    got_ids, got = _stored(from_ids)
    assert got_ids == ids and (got != csr).nnz == 0
    _assert_same_search(root, from_ids, queries)
    # Text queries through the vectors index's own query model (lsr search's path).
    text_hits = ShardedIndex.open(str(from_ids)).search(queries[:3], k=10)
    ref_hits = ShardedIndex.open(str(root)).search(queries[:3], k=10)
    assert [[h.doc_id for h in r] for r in text_hits] == [[h.doc_id for h in r] for r in ref_hits]
    encoder = read_manifest(IndexLayout.at(str(from_ids))).encoder
    assert encoder["run"] is False and encoder["input"] == "vectors"
    assert encoder["query_model"] == "splade-tiny" and encoder["quantised"] is False
    assert encoder["fingerprint"] == read_manifest(IndexLayout.at(str(root))).encoder["fingerprint"]

    tokens_out = tmp_path / "export-tokens.jsonl"
    subprocess.run([*LSR, "export", str(root), str(tokens_out), "--keys", "tokens"], check=True,
                   env=subprocess_env(), capture_output=True, timeout=300)
    out = subprocess.run([*LSR, "index", str(tokens_out), str(tmp_path / "from-tokens"), "--format",
                          "vectors", "--model", "splade-tiny", "--shard-size", str(ONE_SHARD), "--json"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["docs_indexed"] == N_DOCS
    got_ids, got = _stored(tmp_path / "from-tokens")
    assert got_ids == ids and (got != csr).nnz == 0
    _assert_same_search(root, tmp_path / "from-tokens", queries)


@pytest.mark.parametrize("terms", ["indices", "tokens"])
def test_parquet_list_columns(text_index, tmp_path, terms):
    """Parquet with `indices` (or `tokens`) + `values` list columns, as sentence-transformers'
    output saved with pyarrow; a `text` column is ignored (nothing is encoded)."""
    root, ids, csr, _ = text_index
    names = _tokens()
    rows = list(_rows(csr))
    column = [t.tolist() for t, _ in rows] if terms == "indices" else [names[t].tolist() for t, _ in rows]
    table = pa.table({"_id": ids, "text": ["not encoded"] * len(ids), terms: column,
                      "values": pa.array([w.tolist() for _, w in rows], pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "vectors.parquet", row_group_size=30)   # 3 shards of 60
    summary = run_index_job(_vectors_job(tmp_path / "vectors.parquet", tmp_path / "idx"))
    assert summary.docs_indexed == N_DOCS and summary.shards == 3
    got_ids, got = _stored(tmp_path / "idx")
    assert got_ids == ids and (got != csr).nnz == 0


BAD = {
    3: ({"id": "b3", "vector": {"heart": 1, "qqqxyzzy": 2}}, "unknown token 'qqqxyzzy'"),
    5: ({"id": "b5", "vector": {"heart": -1}}, "weight of 'heart' is negative"),
    7: ('{"id": "b7", "vector": {"heart": 1, "heart": 2}}', "given twice"),
    9: ('{"id": "b9", "vector": {"heart": NaN}}', "not finite"),
    11: ({"vector": {"heart": 1}}, "missing id"),
}


def _bad_corpus(path: Path) -> Path:
    """Anserini-style quantised impacts (integers), with bad records at known lines."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(20):
            record = BAD[i][0] if i in BAD else {"id": f"d{i}", "contents": "ignored",
                                                  "vector": {"heart": 3 + i, "disease": 12, "cause": 1}}
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def test_bad_vectors_are_rejected_with_reasons_and_quantised_weights_recorded(ray_local, tmp_path,
                                                                          scifact_dir):
    corpus = _bad_corpus(tmp_path / "anserini.jsonl")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in _tokens()), encoding="utf-8")
    summary = run_index_job(_vectors_job(corpus, tmp_path / "idx", on_bad_record="skip", vocab=str(vocab),
                                         encoder=EncoderOptions(model=None)))
    assert (summary.docs_in, summary.docs_indexed, summary.docs_rejected) == (20, 15, 5)
    layout = IndexLayout.at(str(tmp_path / "idx"))
    manifest = read_manifest(layout)
    rejects = [json.loads(line) for line in
               (tmp_path / "idx" / "rejects" / f"g{manifest.generation:06d}" / "rejects.jsonl")
               .read_text().splitlines()]
    assert len(rejects) == 5
    for reject, (line, (_, reason)) in zip(rejects, sorted(BAD.items())):
        assert reject["source"].endswith(f"anserini.jsonl line {line + 1}"), reject
        assert reason in reject["reason"], reject
    encoder = manifest.encoder
    assert encoder["run"] is False and encoder["query_model"] is None and encoder["quantised"] is True
    assert encoder["vocab"] == str(vocab) and encoder["vocab_size"] == 30522
    # Integer weights are indexed as the numbers they are.
    ids, csr = _stored(tmp_path / "idx")
    assert ids[0] == "d0" and sorted(csr[0].data.tolist()) == [1.0, 3.0, 12.0]
    # No query model: whatever needs text queries or token strings fails with one clear line
    # that says what to pass (search, evaluate, serve: --model when indexing; export: --keys ids).
    idx = str(tmp_path / "idx")
    for argv, said in (
            (["search", idx, "heart disease"], "--model"),
            (["evaluate", str(scifact_dir), "--index", idx, "--no-latency"], "--model"),
            (["serve", idx, "--port", "1"], "--model"),
            (["export", idx, str(tmp_path / "out.jsonl"), "--keys", "tokens"], "pass --keys ids")):
        out = subprocess.run([*LSR, *argv], env=subprocess_env(), capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 1 and "Traceback" not in out.stderr, (argv, out.stderr[-2000:])
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and said in errors[0], (argv, out.stderr[-2000:])
        assert "no query model" in errors[0] or "has none" in errors[0], errors[0]
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_vector_fails_the_cli_in_one_line(tmp_path):
    corpus = _bad_corpus(tmp_path / "anserini.jsonl")
    out = subprocess.run([*LSR, "index", str(corpus), str(tmp_path / "idx"), "--format", "vectors",
                          "--model", "splade-tiny", "--index-kind", "exact"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: bad record: "), out.stderr[-3000:]
    assert "anserini.jsonl line 4: unknown token 'qqqxyzzy'" in errors[0]
    assert "Traceback" not in out.stderr
    # Neither a model nor a vocabulary: one line before anything runs.
    out = subprocess.run([*LSR, "index", str(corpus), str(tmp_path / "idx"), "--format", "vectors"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    said = " ".join(out.stderr.replace("│", " ").split())    # typer may wrap it in a box
    assert out.returncode == 2 and "--format vectors needs --model" in said and "Traceback" not in said


def test_reindex_vectors_corpus(text_index, id_export, tmp_path):
    """A changed vector is a changed document; unchanged ones are reused; the result equals a
    clean index of the new snapshot (same vectors; same exact top-10: the two indexes are cut
    into different shards, so their blocked searches may differ within their approximation)."""
    _, ids, csr, queries = text_index
    _, base_root, _ = id_export
    root = tmp_path / "index"
    shutil.copytree(base_root, root, ignore=shutil.ignore_patterns("leases", "staging"))
    rng = np.random.default_rng(7)
    order = rng.permutation(N_DOCS)
    deleted, changed = set(order[:12].tolist()), set(order[12:22].tolist())
    rows = list(_rows(csr))
    new_ids, new_rows = [], []
    for i in range(N_DOCS):
        if i in deleted:
            continue
        terms, weights = rows[i]
        if i in changed:
            weights = weights * np.float32(1.5)
        new_ids.append(ids[i])
        new_rows.append((terms, weights))
    for j, i in enumerate(sorted(deleted)[:8]):     # 8 added documents (new ids)
        new_ids.append(f"new-{j}")
        new_rows.append(rows[i])
    snapshot = sp.csr_matrix((np.concatenate([w for _, w in new_rows]),
                              np.concatenate([t for t, _ in new_rows]),
                              np.concatenate([[0], np.cumsum([len(t) for t, _ in new_rows])])),
                             shape=(len(new_rows), csr.shape[1]))
    corpus = _write_jsonl(tmp_path / "snapshot.jsonl", new_ids, snapshot)
    summary = run_reindex(ReindexConfig(corpus=str(corpus), index=str(root)))
    assert not summary.full_rebuild and summary.committed
    assert (summary.docs_added, summary.docs_changed, summary.docs_deleted, summary.docs_unchanged) == \
        (8, 10, 12, N_DOCS - 22)
    assert summary.docs_reencoded == 18       # staged from the read: changed and added
    clean = tmp_path / "clean"
    run_index_job(IndexJobConfig(corpus=str(corpus), output=str(clean), format="vectors",
                                 vector_keys="ids", shard_size=60))
    got_ids, got = _stored(root)
    want_ids, want = _stored(clean)
    order_got, order_want = np.argsort(got_ids), np.argsort(want_ids)
    assert sorted(got_ids) == sorted(want_ids)
    assert (got[order_got] != want[order_want]).nnz == 0
    _assert_same_search(clean, root, queries, exact=True)
