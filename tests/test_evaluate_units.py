"""Evaluation on small collections the tests write: loaders' errors, BEIR conventions, reports, run files."""

from __future__ import annotations

import json
from pathlib import Path

import ir_measures
import numpy as np
import pytest

from pipeline.evaluate.beir import DatasetError, iter_corpus, load_qrels, load_queries, open_beir
from pipeline.evaluate.bm25 import BM25Backend, top_k
from pipeline.evaluate.metrics import (drop_self_hit, evaluate_rankings, judged_split, overlap_at,
                                       parse_measures)
from pipeline.evaluate.report import format_table, format_trec_run, to_json, write_trec_run
from pipeline.evaluate.runner import EvalConfig, load_collection, run_evaluation

DOCS = [
    {"_id": "d1", "title": "Solar panels", "text": "Photovoltaic cells turn sunlight into electricity."},
    {"_id": "d2", "title": "Wind turbines", "text": "Blades turn a generator when the wind blows."},
    {"_id": "d3", "title": "", "text": "Hydroelectric dams store water and release it through turbines."},
    {"_id": "q2", "title": "Batteries", "text": "Lithium cells store electricity for the grid."},
    {"_id": "d5", "title": "Sourdough", "text": "Bread rises when wild yeast ferments the dough."},
]
QUERIES = [
    {"_id": "q1", "text": "how do solar cells make electricity"},
    {"_id": "q2", "text": "store electricity in lithium batteries or water turbines"},
    {"_id": "q3", "text": "wind turbine generator"},
    {"_id": "q4", "text": "baking bread with yeast"},  # no judgments: skipped
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tq2\t1\nq2\td3\t1\nq3\td2\t2\nq3\tmissing-doc\t1\n"


def write_collection(root: Path, docs=DOCS, queries=QUERIES, qrels=QRELS, split="test") -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return root


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return write_collection(tmp_path / "tiny")


# ------------------------------------------------------------------------------------------ loaders

def test_loaders_read_beir_files(tiny: Path) -> None:
    docs = list(iter_corpus(str(tiny / "corpus.jsonl")))
    assert docs[0] == ("d1", "Solar panels Photovoltaic cells turn sunlight into electricity.")
    assert docs[2][1] == "Hydroelectric dams store water and release it through turbines."  # empty title
    queries = load_queries(str(tiny / "queries.jsonl"))
    assert list(queries) == ["q1", "q2", "q3", "q4"]
    qrels = load_qrels(str(tiny / "qrels" / "test.tsv"))
    assert qrels == {"q1": {"d1": 1}, "q2": {"q2": 1, "d3": 1}, "q3": {"d2": 2, "missing-doc": 1}}
    assert all(isinstance(g, int) for judged in qrels.values() for g in judged.values())


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_missing_file_is_named(tiny: Path, missing: str) -> None:
    (tiny / missing).unlink()
    with pytest.raises(DatasetError) as err:
        load_collection(str(tiny))
    assert str(tiny / missing) in str(err.value) and "not found" in str(err.value)


def test_missing_split_lists_present_ones(tiny: Path) -> None:
    with pytest.raises(DatasetError, match=r"dev\.tsv: file not found \(splits present: test\)"):
        open_beir(str(tiny), "dev")
    with pytest.raises(DatasetError, match="collection folder does not exist"):
        open_beir(str(tiny / "nope"))


BAD_CORPUS = [
    ('{"_id": "x1", "text": "fine"}\n{"_id": "x2", "text": "broken"\n', 2, "not valid JSON"),
    ('{"_id": "x1", "text": "fine"}\n\n{"title": "t", "text": "no id"}\n', 3, "missing id"),
    ('{"_id": "x1", "text": "fine"}\n{"_id": "x1", "text": "again"}\n', 2, "repeats the one on line 1"),
    ('["a", "list"]\n', 1, "expected a JSON object"),
    ('{"_id": "x1", "text": 7}\n', 1, "must be a string"),
]


@pytest.mark.parametrize("content,line,reason", BAD_CORPUS)
def test_malformed_corpus_line_is_named(tmp_path: Path, content: str, line: int, reason: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        list(iter_corpus(str(path)))
    assert err.value.line == line and err.value.path == str(path)
    assert f"{path} line {line}:" in str(err.value) and reason in str(err.value)


def test_an_empty_document_is_a_document(tmp_path: Path) -> None:
    """Title and text both blank: kept (indexed as an empty vector), not a malformed line."""
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "x1", "title": " ", "text": "  "}\n{"_id": "x2", "text": "fine"}\n',
                    encoding="utf-8")
    docs = list(iter_corpus(str(path)))
    assert [d[0] for d in docs] == ["x1", "x2"] and docs[0][1] == ""


def test_invalid_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "x1", "text": "fine"}\n{"_id": "x2", "text": "bad \xff byte"}\n')
    with pytest.raises(DatasetError, match=r"line 2: invalid UTF-8"):
        list(iter_corpus(str(path)))


BAD_QUERIES = [
    ('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": ""}\n', 2, "empty text"),
    ('{"_id": "1", "text": "ok"}\n{"text": "no id"}\n', 2, "missing query id"),
    ('{"_id": "1", "text": "ok"}\n{"_id": "1", "text": "twice"}\n', 2, "repeats the one on line 1"),
    ('{"_id": "1", "text": null}\n', 1, "must be a string"),
    ('{"_id": "1", "text": "ok"}\nnot json\n', 2, "not valid JSON"),
]


@pytest.mark.parametrize("content,line,reason", BAD_QUERIES)
def test_malformed_query_line_is_named(tmp_path: Path, content: str, line: int, reason: str) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_queries(str(path))
    assert f"{path} line {line}:" in str(err.value) and reason in str(err.value)


BAD_QRELS = [
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1 d2 1\n", 3, "expected 3 tab-separated fields"),
    ("q1\td1\t1\nq1\td2\tyes\n", 2, "relevance must be an integer"),
    ("q1\td1\t1\nq1\td2\t0.5\n", 2, "relevance must be an integer"),
    ("q1\td1\t1\nq1\td1\t2\n", 2, "judged twice with different grades"),
    ("q1\t\t1\n", 1, "empty query-id or corpus-id"),
]


@pytest.mark.parametrize("content,line,reason", BAD_QRELS)
def test_malformed_qrels_line_is_named(tmp_path: Path, content: str, line: int, reason: str) -> None:
    path = tmp_path / "test.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_qrels(str(path))
    assert f"{path} line {line}:" in str(err.value) and reason in str(err.value)


def test_qrels_grades_are_ints_and_header_optional(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text("q1\td1\t1.0\nq1\td1\t1\nq2\td9\t0\n", encoding="utf-8")
    assert load_qrels(str(path)) == {"q1": {"d1": 1}, "q2": {"d9": 0}}
    path.write_text("query-id\tcorpus-id\tscore\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no judgments"):
        load_qrels(str(path))


# ---------------------------------------------------------------------------------------- conventions

def test_self_hit_removed_before_cut_to_k() -> None:
    ranked = [("a", 3.0), ("q1", 2.5), ("b", 2.0), ("c", 1.0)]
    assert drop_self_hit("q1", ranked, 3) == [("a", 3.0), ("b", 2.0), ("c", 1.0)]
    assert drop_self_hit("zz", ranked, 3) == ranked[:3]


def test_runner_applies_self_hit_rule_with_k_plus_one(tiny: Path) -> None:
    collection = load_collection(str(tiny))
    backend = BM25Backend(collection.doc_ids, collection.texts)
    kept = run_evaluation(collection, backend, EvalConfig(k=2, measures=("nDCG@2",), drop_self_hits=False,
                                                          measure_latency=False))
    assert kept.rankings["q2"][0][0] == "q2"  # the document sharing the query's id ranks first
    dropped = run_evaluation(collection, backend, EvalConfig(k=2, measures=("nDCG@2",), measure_latency=False))
    ids = [doc_id for doc_id, _ in dropped.rankings["q2"]]
    assert "q2" not in ids and len(ids) == 2  # asked for k + 1, so still k results
    assert ids[0] == kept.rankings["q2"][1][0]
    assert dropped.counts["self_id_qrels"] == 1 and dropped.conventions["drop_self_hits"] is True


def test_counts_skipped_judged_and_unknown_docs(tiny: Path) -> None:
    collection = load_collection(str(tiny))
    result = run_evaluation(collection, BM25Backend(collection.doc_ids, collection.texts),
                            EvalConfig(k=5, measures=("nDCG@5", "R@5", "RR@5"), measure_latency=True))
    assert result.counts == {"docs": 5, "queries": 4, "judged": 3, "skipped": 1, "qrels_rows": 5,
                             "unknown_doc_qrels": 1, "qrels_queries_without_text": 0, "self_id_qrels": 1}
    assert set(result.rankings) == {"q1", "q2", "q3"}  # the skipped query is not searched
    # q3's unknown document stays relevant: recall@5 of q3 can reach 1/2 at most
    assert result.metrics["R@5"] <= (1 + 0.5 + 0.5) / 3 + 1e-9
    eff = result.efficiency
    assert eff["qps"] > 0 and eff["search_qps"] >= eff["qps"]
    assert eff["latency_ms_mean"] > 0 and eff["latency_ms_p99"] > 0 and eff["search_latency_ms_mean"] > 0


def test_queries_judged_by_any_row_and_empty_rankings_score_zero() -> None:
    qrels = {"a": {"d1": 1}, "b": {"d2": 0}, "c": {"d3": 1}}
    judged, skipped = judged_split(["a", "b", "c", "x"], qrels)
    assert judged == ["a", "b", "c"] and skipped == ["x"]
    measures = parse_measures(["nDCG@10", "RR@10"], 10)
    # b is judged (grade 0 only) and scores 0; c has an empty ranking and scores 0
    got = evaluate_rankings({"a": [("d1", 1.0)], "b": [("d2", 1.0)], "c": []}, qrels, judged, measures)
    assert got == {"nDCG@10": pytest.approx(1 / 3), "RR@10": pytest.approx(1 / 3)}


def test_ranking_order_is_evaluated_as_returned_not_resorted_by_trec_eval() -> None:
    qrels = {"q": {"b": 1}}
    tied = [("b", 1.0), ("a", 1.0)]  # the backend's order; trec_eval alone re-sorts ties by doc id
    assert evaluate_rankings({"q": tied}, qrels, ["q"], parse_measures(["RR@10"], 10)) == {"RR@10": 1.0}
    raw = ir_measures.calc_aggregate([ir_measures.RR @ 10], qrels, {"q": dict(tied)})
    assert raw[ir_measures.RR @ 10] == 0.5  # the pitfall the rank-derived scores avoid


def test_measures_deeper_than_k_are_rejected() -> None:
    with pytest.raises(ValueError, match="R@1000 needs rankings of depth 1000 but k=100"):
        EvalConfig(k=100)
    with pytest.raises(ValueError, match="unknown measure"):
        parse_measures(["NotAMeasure@3"], 10)


def test_overlap_against_exact() -> None:
    exact = {"q": [("a", 3.0), ("b", 2.0)], "r": [("c", 1.0)], "empty": []}
    approx = {"q": [("a", 3.0), ("x", 1.0)], "r": [("c", 1.0)], "empty": []}
    assert overlap_at(approx, exact, ["q", "r", "empty"], depth=10) == pytest.approx((0.5 + 1.0) / 2)


def test_bm25_top_k_ties_by_corpus_order() -> None:
    scores = np.array([0.0, 1.0, 3.0, 3.0, 2.0, 0.0, 3.0], dtype=np.float32)
    assert top_k(scores, 2).tolist() == [2, 3]
    assert top_k(scores, 10).tolist() == [2, 3, 6, 4, 1]  # zero scores never returned


# -------------------------------------------------------------------------------------------- reports

def test_trec_run_format(tmp_path: Path) -> None:
    rankings = {"q1": [("d1", 12.5), ("d7", 3.25)], "q2": [("d3", 1.0)]}
    text = format_trec_run(rankings, tag="splade-tiny-exact")
    assert text.splitlines() == ["q1 Q0 d1 1 12.500000 splade-tiny-exact",
                                 "q1 Q0 d7 2 3.250000 splade-tiny-exact",
                                 "q2 Q0 d3 1 1.000000 splade-tiny-exact"]
    path = tmp_path / "runs" / "run.trec"
    write_trec_run(str(path), rankings, tag="t")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [len(line.split()) for line in lines] == [6, 6, 6]
    # the written file reads back through ir-measures as the same run
    parsed = {(r.query_id, r.doc_id): r.score for r in ir_measures.read_trec_run(str(path))}
    assert parsed == {("q1", "d1"): 12.5, ("q1", "d7"): 3.25, ("q2", "d3"): 1.0}
    with pytest.raises(ValueError, match="whitespace"):
        format_trec_run({"q 1": [("d1", 1.0)]}, tag="t")
    with pytest.raises(ValueError, match="run tag"):
        format_trec_run(rankings, tag="two words")


def test_table_and_json_report(tiny: Path) -> None:
    collection = load_collection(str(tiny))
    result = run_evaluation(collection, BM25Backend(collection.doc_ids, collection.texts),
                            EvalConfig(k=5, measures=("nDCG@5",), measure_latency=False))
    table = format_table([result])
    assert table.splitlines()[0].startswith("| collection | system | nDCG@5 |")
    assert "QPS" in table and "latency" not in table  # latency was not measured
    assert "| tiny" in table and "BM25" in table
    report = json.loads(to_json([result]))
    assert report["counts"]["unknown_doc_qrels"] == 1 and report["model"]["k1"] == 0.9
    assert set(report) >= {"metrics", "efficiency", "counts", "model", "index", "conventions", "k"}
    both = json.loads(to_json([result, result]))
    assert len(both["results"]) == 2
