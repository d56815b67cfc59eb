"""`lsr evaluate` end to end on a small collection the test writes: real encoder, real indexes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from test_evaluate_units import write_collection

runner = CliRunner()


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return write_collection(tmp_path / "tiny")


def test_evaluate_json_report_and_run_file(tiny: Path, tmp_path: Path) -> None:
    run_path = tmp_path / "out" / "run.trec"
    result = runner.invoke(app, ["evaluate", str(tiny), "--json", "--run-file", str(run_path), "--bm25"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    splade, bm25 = report["results"]
    assert splade["system"] == "splade-tiny approx" and bm25["system"] == "BM25"
    assert splade["counts"] == {"docs": 5, "queries": 4, "judged": 3, "skipped": 1, "qrels_rows": 5,
                                "unknown_doc_qrels": 1, "qrels_queries_without_text": 0, "self_id_qrels": 1}
    assert set(splade["metrics"]) == {"nDCG@10", "R@100", "R@1000", "RR@10", "R@10 vs exact"}
    # the blocked index scans only the query_cut heaviest query terms: close to exact, not always equal
    assert 0.5 <= splade["metrics"]["R@10 vs exact"] <= 1.0
    assert splade["metrics"]["nDCG@10"] > 0 and bm25["metrics"]["nDCG@10"] > 0
    assert splade["model"]["model"] == "splade-tiny" and splade["model"]["max_length"] == 256
    assert splade["index"]["type"] == "BlockedIndex" and "query_cut" in splade["index"]
    for key in ("latency_ms_mean", "latency_ms_p99", "qps", "search_qps"):
        assert splade["efficiency"][key] > 0
    lines = run_path.read_text(encoding="utf-8").splitlines()
    rows = [line.split() for line in lines]
    assert {r[0] for r in rows} == {"q1", "q2", "q3"}  # judged queries only
    assert all(len(r) == 6 and r[1] == "Q0" and r[5] == "splade-tiny-approx" for r in rows)
    assert not any(r[0] == r[2] for r in rows)  # no self hits
    q1 = [r for r in rows if r[0] == "q1"]
    assert [int(r[3]) for r in q1] == list(range(1, len(q1) + 1))
    assert [float(r[4]) for r in q1] == sorted((float(r[4]) for r in q1), reverse=True)


def test_evaluate_exact_table(tiny: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tiny), "--exact", "--k", "100", "--no-latency"])
    assert result.exit_code == 0, result.output
    assert "3 judged, 1 skipped" in result.stdout and "1 naming unknown documents" in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("| collection"))
    assert "nDCG@10" in header and "MRR@10" in header and "R@1000" not in header and "latency" not in header
    assert "splade-tiny exact" in result.stdout


def test_evaluate_bad_input_exits_with_the_file_and_line(tiny: Path) -> None:
    with open(tiny / "queries.jsonl", "a", encoding="utf-8") as f:
        f.write('{"_id": "q9", "text": \n')
    result = runner.invoke(app, ["evaluate", str(tiny)])
    assert result.exit_code == 1
    assert f"{tiny / 'queries.jsonl'} line 5: not valid JSON" in result.output
    (tiny / "qrels" / "test.tsv").unlink()
    result = runner.invoke(app, ["evaluate", str(tiny)])
    assert result.exit_code == 1 and f"{tiny / 'qrels' / 'test.tsv'}: file not found" in result.output


@pytest.mark.slow  # the Ray indexing job: ~90 s for five documents on a busy 2-core box
def test_evaluate_index_written_by_the_indexing_job(tiny: Path, tmp_path: Path, ray_local) -> None:
    """`--index`: every shard searched and merged gives the in-process rankings (exact search)."""
    from pipeline.batch import IndexJobConfig, run_index_job

    root = tmp_path / "index"
    run_index_job(IndexJobConfig(corpus=str(tiny), output=str(root), shard_size=2))  # 3 shards
    in_process = runner.invoke(app, ["evaluate", str(tiny), "--exact", "--json", "--no-latency",
                                      "--run-file", str(tmp_path / "local.trec")])
    from_index = runner.invoke(app, ["evaluate", str(tiny), "--index", str(root), "--exact", "--json",
                                     "--no-latency", "--run-file", str(tmp_path / "index.trec")])
    assert in_process.exit_code == 0, in_process.output
    assert from_index.exit_code == 0, from_index.output
    local, sharded = json.loads(in_process.stdout), json.loads(from_index.stdout)
    assert sharded["system"] == "splade-tiny exact (index)"
    assert sharded["index"]["shards"] == 3 and sharded["counts"] == local["counts"]
    assert sharded["metrics"] == pytest.approx(local["metrics"], abs=1e-6)

    def ranked(path: Path) -> list[tuple[str, str, str]]:
        return [tuple(line.split()[:4]) for line in path.read_text(encoding="utf-8").splitlines()]

    assert ranked(tmp_path / "index.trec") == ranked(tmp_path / "local.trec")
    approx = runner.invoke(app, ["evaluate", str(tiny), "--index", str(root), "--json", "--no-latency"])
    assert approx.exit_code == 0, approx.output
    report = json.loads(approx.stdout)
    assert report["system"] == "splade-tiny approx (index)" and 0.5 <= report["metrics"]["R@10 vs exact"] <= 1
