"""Kept fields through the real jobs (issue 15, index time): `lsr index --field NAME:TYPE`.

The corpus is the first N_DOCS scifact documents with fields derived reproducibly from each
document (written into a JSONL copy here): ``lang`` keyword (the title's first letter,
lowercased), ``tlen`` int (title length), ``even`` bool (even title length), ``ratio`` float,
and ``title`` stored. Every expectation is read from that corpus file, never from our store:

* the index job writes the fields with every shard (checksum in the commit record) and records
  the schema in the manifest; hits return them equal to the corpus; a filter returns only
  documents whose corpus values match it;
* a bad field value is a bad record with its reason (rejects under "skip", one error under
  "fail");
* re-indexing: a document whose only change is a field is a changed document (re-encoded, its
  new value served); the other documents keep their fields, read from the base shards;
* a pre-encoded vectors corpus keeps fields the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.batch import IndexJobConfig, ReindexConfig, run_index_job, run_reindex

N_DOCS = 120
SHARD_SIZE = 50                     # 3 shards
FIELDS = ("lang:keyword", "tlen:int", "even:bool", "ratio:float", "title:stored")


def derived_fields(doc: dict) -> dict:
    title = doc.get("title") or ""
    return {"lang": title[:1].lower() or "_", "tlen": len(title), "even": len(title) % 2 == 0,
            "ratio": round(len(title) / (1 + len(doc["text"])), 6)}


def write_corpus(scifact_dir: Path, out: Path, edit=None) -> list[dict]:
    docs = []
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
        for line, _ in zip(f, range(N_DOCS)):
            doc = json.loads(line)
            doc.update(derived_fields(doc))
            docs.append(doc)
    if edit is not None:
        edit(docs)
    out.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return docs


def expected_fields(doc: dict) -> dict:
    return {"lang": doc["lang"], "tlen": doc["tlen"], "even": doc["even"], "ratio": doc["ratio"],
            "title": doc["title"]}


@pytest.fixture(scope="module")
def fields_index(ray_local, scifact_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("fields-job")
    docs = write_corpus(scifact_dir, work / "corpus.jsonl")
    root = work / "index"
    summary = run_index_job(IndexJobConfig(corpus=str(work / "corpus.jsonl"), output=str(root),
                                           shard_size=SHARD_SIZE, fields=FIELDS))
    return work, root, docs, summary


def test_fields_are_written_with_shards_and_returned_equal_to_the_corpus(fields_index):
    from pipeline.catalog import IndexLayout, read_manifest
    from pipeline.search import ShardedIndex

    work, root, docs, summary = fields_index
    assert summary.docs_indexed == N_DOCS and summary.shards == 3
    layout = IndexLayout.at(str(root))
    manifest = read_manifest(layout)
    assert [f"{f['name']}:{f['type']}" for f in manifest.fields] == list(FIELDS)
    for entry in manifest.shards:
        assert entry.fields_checksum
        record = json.loads(Path(layout.shard_commit(entry.name).path).read_text())
        assert record["fields_checksum"] == entry.fields_checksum
    index = ShardedIndex.open(str(root))
    by_id = {str(d["_id"]): d for d in docs}
    queries = ["cancer treatment in children", "vitamin D deficiency", "gene expression"]
    names = [f.split(":")[0] for f in FIELDS]
    for hits in index.search(queries, k=20, exact=True, fields=names):
        assert hits
        for hit in hits:
            assert hit.fields == expected_fields(by_id[hit.doc_id])


@pytest.mark.parametrize("flt", [
    {"term": {"lang": "a"}},
    {"and": [{"range": {"tlen": {"gte": 60}}}, {"term": {"even": True}}]},
    {"or": [{"terms": {"lang": ["b", "c", "d"]}}, {"range": {"ratio": {"lt": 0.05}}}]},
])
def test_filters_on_job_built_fields_match_the_corpus(fields_index, flt):
    from pipeline.search import ShardedIndex

    _, root, docs, _ = fields_index

    def allowed(doc) -> bool:      # the filter, evaluated here on the corpus values
        def ev(node) -> bool:
            (op, arg), = node.items()
            if op == "and":
                return all(ev(c) for c in arg)
            if op == "or":
                return any(ev(c) for c in arg)
            (name, value), = arg.items()
            if op == "term":
                return doc[name] == value
            if op == "terms":
                return doc[name] in value
            return all({"gte": doc[name] >= v, "gt": doc[name] > v, "lte": doc[name] <= v,
                        "lt": doc[name] < v}[bound] for bound, v in value.items())
        return ev(node=flt)

    want = {str(d["_id"]) for d in docs if allowed(d)}
    assert 0 < len(want) < N_DOCS
    index = ShardedIndex.open(str(root))
    queries = ["clinical trial outcomes", "protein structure"]
    # Reference: unfiltered exact search over every document, then the corpus-evaluated filter.
    unfiltered = index.search(queries, k=N_DOCS, exact=True)
    for exact in (True, False):
        filtered = index.search(queries, k=N_DOCS, exact=exact, filter=flt)
        for all_hits, hits in zip(unfiltered, filtered, strict=True):
            got = [h.doc_id for h in hits]
            assert set(got) <= want
            if exact:       # exactly the allowed documents with a positive score, in rank order
                expected = [h for h in all_hits if h.doc_id in want]
                assert got == [h.doc_id for h in expected]
                np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected],
                                           rtol=1e-6)


def test_bad_field_values_are_bad_records_with_reasons(ray_local, scifact_dir, tmp_path):
    from pipeline.batch.datasource import BadRecordError

    def edit(docs):
        docs[3]["tlen"] = "long"          # a string where an int is declared
        docs[7]["lang"] = ["e", "n"]      # a list where a scalar is expected
    write_corpus(scifact_dir, tmp_path / "corpus.jsonl", edit)
    summary = run_index_job(IndexJobConfig(corpus=str(tmp_path / "corpus.jsonl"),
                                           output=str(tmp_path / "skip"), shard_size=SHARD_SIZE,
                                           fields=FIELDS, on_bad_record="skip"))
    assert summary.docs_rejected == 2 and summary.docs_indexed == N_DOCS - 2
    rejects = [json.loads(line) for p in sorted((tmp_path / "skip" / "rejects").rglob("*.jsonl"))
               for line in p.read_text().splitlines()]
    reasons = {r["reason"] for r in rejects}
    assert any("'tlen'" in r and "number" in r for r in reasons), reasons
    assert any("'lang'" in r and "list" in r for r in reasons), reasons
    assert all("line" in r["source"] for r in rejects)
    with pytest.raises(BadRecordError, match="tlen"):
        run_index_job(IndexJobConfig(corpus=str(tmp_path / "corpus.jsonl"),
                                     output=str(tmp_path / "fail"), shard_size=SHARD_SIZE,
                                     fields=FIELDS))


def test_reindex_a_changed_field_is_a_changed_document(fields_index, scifact_dir, tmp_path):
    import shutil

    from pipeline.search import ShardedIndex

    work, root, _, _ = fields_index
    copy = tmp_path / "index"
    shutil.copytree(root, copy)

    def edit(docs):
        docs[10]["lang"] = "zz"           # only a field changes: same text
        docs[60]["tlen"] = 9999
    docs = write_corpus(scifact_dir, tmp_path / "corpus.jsonl", edit)
    summary = run_reindex(ReindexConfig(corpus=str(tmp_path / "corpus.jsonl"), index=str(copy)))
    assert not summary.full_rebuild
    assert (summary.docs_changed, summary.docs_added, summary.docs_deleted) == (2, 0, 0)
    index = ShardedIndex.open(str(copy))
    assert index.generation == 2
    by_id = {str(d["_id"]): d for d in docs}
    names = [f.split(":")[0] for f in FIELDS]
    seen = set()
    for hits in index.search(["cancer", "vitamin", "gene", "protein", "cell", "risk"], k=N_DOCS,
                             exact=True, fields=names):
        for hit in hits:
            assert hit.fields == expected_fields(by_id[hit.doc_id])
            seen.add(hit.doc_id)
    assert str(docs[10]["_id"]) in seen or str(docs[60]["_id"]) in seen
    zz = index.search(["cancer"], k=10, exact=True, filter={"term": {"lang": "zz"}})[0]
    assert {h.doc_id for h in zz} <= {str(docs[10]["_id"])}


def test_vectors_corpus_keeps_fields(fields_index, tmp_path):
    """Fields beside pre-encoded vectors (Parquet list columns): kept and returned the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.format import read_postings
    from pipeline.catalog import IndexLayout, read_manifest
    from pipeline.search import ShardedIndex

    _, root, docs, _ = fields_index
    layout = IndexLayout.at(str(root))
    ids, indices, values = [], [], []
    for entry in read_manifest(layout).shards:
        p = read_postings(layout.postings(entry.name))
        for r in range(p.n_docs):
            lo, hi = p.vectors.indptr[r], p.vectors.indptr[r + 1]
            ids.append(str(p.doc_ids[r]))
            indices.append(p.vectors.indices[lo:hi].astype(np.int32).tolist())
            values.append(p.vectors.data[lo:hi].astype(np.float32).tolist())
    by_id = {str(d["_id"]): d for d in docs}
    table = pa.table({"id": ids, "indices": indices, "values": values,
                      **{name: [by_id[i][name] for i in ids]
                         for name in ("lang", "tlen", "even", "ratio", "title")}})
    pq.write_table(table, tmp_path / "vectors.parquet", row_group_size=40)
    summary = run_index_job(IndexJobConfig(corpus=str(tmp_path / "vectors.parquet"),
                                           output=str(tmp_path / "idx"), format="vectors",
                                           shard_size=SHARD_SIZE, fields=FIELDS))
    assert summary.docs_indexed == N_DOCS
    index = ShardedIndex.open(str(tmp_path / "idx"))
    hits = index.search(["cancer treatment"], k=15, exact=True,
                        fields=["lang", "tlen", "even", "ratio", "title"],
                        filter={"range": {"tlen": {"gte": 40}}})[0]
    assert hits
    for hit in hits:
        assert hit.fields == expected_fields(by_id[hit.doc_id]) and hit.fields["tlen"] >= 40
