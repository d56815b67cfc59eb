"""Incremental re-indexing end to end: real local Ray, real model, real data, the real endpoint.

* scifact (the session index, copied: re-indexing mutates it) with documents of its first
  shard changed and deleted and new documents added, re-indexed while the Serve endpoint
  answers a continuous stream of queries and switches generations by itself (polling).
* A small cisi index: an unchanged corpus (nothing committed); a changed encoder setting (a
  full rebuild, reported); a user error. Slow: the Ray job entry point in a subprocess killed
  midway, then run again; `ray job submit` of jobs/reindex.py to a head node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import REPO, SCIFACT_HEAD_DOCS, tiny_encoder
from pipeline.batch import IndexJobConfig, run_index_job
from pipeline.batch import ReindexConfig, run_reindex
from pipeline.catalog import collect_garbage
from pipeline.catalog import IndexLayout, read_current_generation, read_manifest
from pipeline.format import read_postings
from pipeline.search import ShardedIndex
from ray_procs import kill_when, ray_head, submit_job, subprocess_env
from serve_fixtures import LoadLoop, serve_http_port, wait_until

LSR = [sys.executable, "-m", "pipeline.cli"]


def _records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def _text(r: dict) -> str:
    return f"{r.get('title') or ''} {r['text']}".strip()


def _stored(root: Path, generation: int | None = None):
    """(ids, fingerprints, vectors) of a generation, shards concatenated in manifest order."""
    layout = IndexLayout.at(str(root))
    parts = [read_postings(layout.postings(s.name), verify=True)
             for s in read_manifest(layout, generation).shards]
    return ([i for p in parts for i in p.doc_ids], np.concatenate([p.fingerprints for p in parts]),
            sp.vstack([p.vectors for p in parts], format="csr"))


def _same_rows(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    a, b = a.tocsr(), b.tocsr()
    a.sort_indices()
    b.sort_indices()
    return a.shape == b.shape and np.array_equal(a.indptr, b.indptr) \
        and np.array_equal(a.indices, b.indices) and np.allclose(a.data, b.data, atol=1e-5, rtol=0)


# ============================================================================ scifact + endpoint
N_CHANGED, N_DELETED, N_ADDED = 20, 15, 25


@pytest.fixture(scope="module")
def scifact_reindexed(scifact_index, scifact_head_dir, data_dir, tmp_path_factory, ray_local):
    """scifact gen 1 copied; its first shard changed; re-indexed under load on the endpoint."""
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    work = tmp_path_factory.mktemp("reindex-scifact")
    root = work / "index"
    shutil.copytree(scifact_index[0], root, ignore=shutil.ignore_patterns("leases", "staging"))
    layout = IndexLayout.at(str(root))
    first = read_manifest(layout).shards[0]
    ids0 = list(read_postings(layout.postings(first.name)).doc_ids)
    picks = np.random.default_rng(7).choice(len(ids0), N_CHANGED + N_DELETED, replace=False)
    changed = {ids0[i] for i in picks[:N_CHANGED]}
    deleted = {ids0[i] for i in picks[N_CHANGED:]}
    # New texts (changed and added documents) are real documents of another collection.
    donors = iter(_records(data_dir / "cisi" / "corpus.jsonl"))
    old = _records(scifact_head_dir / "corpus.jsonl")
    new = []
    for r in old:
        if r["_id"] in deleted:
            continue
        if r["_id"] in changed:
            d = next(donors)
            r = {**r, "title": d["title"], "text": d["text"]}
        new.append(r)
    added = [{"_id": f"added-{i}", "title": d["title"], "text": d["text"]}
             for i, d in zip(range(N_ADDED), donors)]
    corpus = _write(work / "corpus.jsonl", new + added)

    config = ServeConfig(index=str(root), app_name="lsrr", route_prefix="/r", encoder_placement="ingress",
                         shards_per_replica=0, poll_s=1.0, route_refresh_s=0.2, timeout_s=5.0,
                         server_id="test-reindex")
    port = serve_http_port()
    run_endpoint(config)
    queries = [json.loads(line)["text"] for line in open(scifact_head_dir / "queries.jsonl")][:50]
    try:
        with LoadLoop(httpx.Client(base_url=f"http://127.0.0.1:{port}/r", timeout=60.0), "/search",
                      queries) as loop:
            loop.wait_for(10)
            summary = run_reindex(ReindexConfig(corpus=str(corpus), index=str(root)))
            wait_until(lambda: loop.generations and loop.generations[-1] == 2, 180,
                       "answers from generation 2")
            loop.wait_for(10)
        from pipeline.catalog.leases import read_leases

        lease = {x.server_id: x for x in read_leases(layout)}["test-reindex"]
    finally:
        stop_endpoint(config.app_name)
    yield SimpleNamespace(root=root, summary=summary, loop=loop, lease=lease, old=old, new=new,
                          added=added, changed=changed, deleted=deleted, first_shard=first.name)


def test_report_counts_are_exact(scifact_reindexed):
    s, r = scifact_reindexed.summary, scifact_reindexed
    assert (s.base_generation, s.generation, s.committed, s.full_rebuild) == (1, 2, True, False)
    assert s.rebuild_reason is None
    assert (s.docs_added, s.docs_changed, s.docs_deleted) == (N_ADDED, N_CHANGED, N_DELETED)
    assert s.docs_unchanged == SCIFACT_HEAD_DOCS - N_CHANGED - N_DELETED
    assert s.docs_in == s.docs_indexed == SCIFACT_HEAD_DOCS - N_DELETED + N_ADDED and s.docs_rejected == 0
    # Only the first shard changed: rebuilt; the other two are reused; the additions get a
    # shard of their own (the last base shard is more than half full and unchanged).
    assert (s.shards, s.shards_rebuilt, s.shards_reused, s.shards_added) == (4, 1, 2, 1)
    manifest = read_manifest(IndexLayout.at(str(r.root)))
    assert manifest.generation == 2 and manifest.parent_generation == 1
    names = [e.name for e in manifest.shards]
    assert names == ["g000002-s00000", "g000001-s00001", "g000001-s00002", "g000002-s00003"]
    report = manifest.extra["reindex"]
    for key in ("docs_added", "docs_changed", "docs_deleted", "docs_unchanged", "docs_reencoded",
                "shards_rebuilt", "shards_reused", "shards_added", "full_rebuild"):
        assert report[key] == getattr(s, key), key
    assert report["wall_s"] > 0 and manifest.counts["docs_indexed"] == s.docs_indexed
    assert not (r.root / "staging").exists()


def test_only_added_and_changed_documents_are_encoded(scifact_reindexed):
    s, r = scifact_reindexed.summary, scifact_reindexed
    # The encoder actors' own count, and the stage report built from it.
    assert s.docs_reencoded == N_ADDED + N_CHANGED == s.stages["encode"]["rows"]
    ids1, _, vectors1 = _stored(r.root, 1)
    ids2, fingerprints2, vectors2 = _stored(r.root, 2)
    assert sorted(ids2) == sorted([x["_id"] for x in r.new + r.added])
    # Re-encoded documents hold the encoder's vectors of their new text...
    fresh = [x for x in r.new if x["_id"] in r.changed] + r.added
    at2 = {doc_id: i for i, doc_id in enumerate(ids2)}
    rows = [at2[x["_id"]] for x in fresh]
    assert _same_rows(vectors2[rows], tiny_encoder().encode([_text(x) for x in fresh]))
    from pipeline.format import fingerprint_texts

    assert np.array_equal(fingerprints2[rows], fingerprint_texts([_text(x) for x in fresh]))
    # ...and every other document the very vectors generation 1 stored, in the same order.
    at1 = {doc_id: i for i, doc_id in enumerate(ids1)}
    same = [doc_id for doc_id in ids2 if doc_id in at1 and doc_id not in r.changed]
    assert len(same) == SCIFACT_HEAD_DOCS - N_CHANGED - N_DELETED
    assert [at1[d] for d in same] == sorted(at1[d] for d in same)
    v1, v2 = vectors1[[at1[d] for d in same]], vectors2[[at2[d] for d in same]]
    assert np.array_equal(v1.indptr, v2.indptr) and np.array_equal(v1.indices, v2.indices) \
        and np.array_equal(v1.data, v2.data)


def test_search_finds_added_never_deleted_and_unchanged_results_stay_identical(scifact_reindexed, scifact_dir):
    r = scifact_reindexed
    gen1 = ShardedIndex.open(str(r.root), generation=1)
    gen2 = ShardedIndex.open(str(r.root))
    assert gen2.generation == 2
    # Added and changed documents are found by their new text (blocked index, as served).
    fresh = r.added + [x for x in r.new if x["_id"] in r.changed]
    hits = gen2.search([_text(x) for x in fresh], k=10)
    found = [x["_id"] in {h.doc_id for h in row} for x, row in zip(fresh, hits)]
    assert sum(found) >= len(fresh) - 2, found
    # Deleted documents never come back, whatever the query: their own old text, exact search.
    gone = [x for x in r.old if x["_id"] in r.deleted]
    before = gen1.search([_text(x) for x in gone], k=100, exact=True)
    assert all(x["_id"] in {h.doc_id for h in row} for x, row in zip(gone, before))
    after = gen2.search([_text(x) for x in gone], k=100, exact=True)
    assert not {h.doc_id for row in after for h in row} & r.deleted
    # Queries whose top-10 touch no added, changed or deleted document: identical answers.
    queries = [json.loads(line)["text"] for line in open(scifact_dir / "queries.jsonl")][:300]
    vectors = gen2.encoder().encode_queries(queries)
    touched = r.changed | r.deleted | {x["_id"] for x in r.added}
    a = gen1.search_vectors(vectors, k=10, exact=True)
    b = gen2.search_vectors(vectors, k=10, exact=True)
    untouched = [q for q in range(len(queries))
                 if not ({h.doc_id for h in a[q]} | {h.doc_id for h in b[q]}) & touched]
    # (the comparison must cover most queries: on the 1,500-document head the 60 documents
    # touched reach the top-10 of 64 of these 300)
    assert len(untouched) >= 200
    for q in untouched:
        assert [h.doc_id for h in a[q]] == [h.doc_id for h in b[q]], q
        assert [h.score for h in a[q]] == [h.score for h in b[q]], q


def test_endpoint_switches_generation_with_zero_failed_requests(scifact_reindexed):
    loop = scifact_reindexed.loop
    assert loop.errors == [] and set(loop.statuses) == {200} and loop.partial == 0
    assert loop.generations[0] == 1 and loop.generations[-1] == 2
    assert loop.generations == sorted(loop.generations)
    assert len(loop.statuses) >= 20
    lease = scifact_reindexed.lease
    assert lease.generation == 2 and not lease.expired()


def test_gc_keeps_shared_shards_and_leased_generations(scifact_reindexed):
    r = scifact_reindexed
    layout = IndexLayout.at(str(r.root))
    gc = r.summary.gc
    assert gc["kept_generations"] == [1, 2] and gc["deleted_generations"] == []
    assert gc["deleted_shards"] == []
    # A server still on generation 1 keeps it alive even with keep_generations=1...
    from pipeline.catalog.leases import release_lease, write_lease

    write_lease(layout, "old-server", 1, ttl_s=300)
    assert collect_garbage(layout, keep_generations=1).deleted_generations == []
    release_lease(layout, "old-server")
    release_lease(layout, "test-reindex")
    # ...once released, generation 1 goes, with its rebuilt shard only: the shards generation 2
    # reuses stay.
    report = collect_garbage(layout, keep_generations=1)
    assert report.deleted_generations == [1] and report.deleted_shards == [r.first_shard]
    assert sorted(p.name for p in (r.root / "shards").iterdir()) == \
        ["g000001-s00001", "g000001-s00002", "g000002-s00000", "g000002-s00003"]
    assert ShardedIndex.open(str(r.root)).n_docs == r.summary.docs_indexed


# ============================================================================ small cisi index
SMALL = 120


@pytest.fixture(scope="module")
def small_index(data_dir, tmp_path_factory, ray_local):
    """120 cisi documents, exact index, 3 shards: (index root, corpus records)."""
    work = tmp_path_factory.mktemp("reindex-small")
    records = _records(data_dir / "cisi" / "corpus.jsonl")[:SMALL]
    corpus = _write(work / "corpus.jsonl", records)
    root = work / "index"
    run_index_job(IndexJobConfig(corpus=str(corpus), output=str(root), shard_size=40, index_kind="exact"))
    assert len(read_manifest(IndexLayout.at(str(root))).shards) == 3
    return root, records


@pytest.mark.slow  # its own Ray in a subprocess, killed, then a resumed run: minutes on 2 cores
def test_killed_reindex_leaves_the_old_generation_serving_and_a_rerun_completes(small_index, tmp_path):
    base_root, records = small_index
    root = tmp_path / "index"
    shutil.copytree(base_root, root)
    new = [{**r, "text": r["text"] + " (revised edition)"} if i % 2 == 0 else r
           for i, r in enumerate(records) if i % 30 != 7]
    added = [{"_id": f"extra-{i}", "title": f"Extra {i}", "text": f"catalogue entry number {i}"}
             for i in range(20)]
    corpus = _write(tmp_path / "corpus.jsonl", new + added)
    n_changed = sum(1 for i in range(SMALL) if i % 2 == 0 and i % 30 != 7)
    n_deleted = sum(1 for i in range(SMALL) if i % 30 == 7)
    probe = ["information retrieval evaluation", "library classification"]
    served_before = [[(h.doc_id, h.score) for h in row] for row in ShardedIndex.open(str(root)).search(probe)]

    # The Ray job entry point the scheduled jobs run, in its own process with its own Ray.
    args = [sys.executable, "jobs/reindex.py", str(corpus), str(root), "--block-rows", "8",
            "--batch-size", "4", "--json"]
    proc = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    kill_when(proc, lambda: len(list((root / "staging").glob("*/parts/*/*.parquet"))) >= 2)
    # The old generation is untouched and answers exactly as before.
    layout = IndexLayout.at(str(root))
    assert read_current_generation(layout) == 1
    served = [[(h.doc_id, h.score) for h in row] for row in ShardedIndex.open(str(root)).search(probe)]
    assert served == served_before
    assert list((root / "staging").glob("*/plan.json"))

    summary = run_reindex(ReindexConfig(corpus=str(corpus), index=str(root), block_rows=8,
                                        encoder=_overrides(batch_size=4)))
    assert summary.resumed and summary.generation == 2 and read_current_generation(layout) == 2
    assert (summary.docs_changed, summary.docs_deleted, summary.docs_added) == (n_changed, n_deleted, 20)
    assert summary.docs_unchanged == SMALL - n_deleted - n_changed
    assert summary.docs_reencoded < n_changed + 20      # the killed run's staged blocks are kept
    ids, _, vectors = _stored(root)
    expected = new + added
    assert ids == [r["_id"] for r in expected]          # changed in place, additions last
    assert _same_rows(vectors, tiny_encoder().encode([_text(r) for r in expected]))
    assert not (root / "staging").exists()


def _overrides(**kwargs):
    from pipeline.batch import EncoderOverrides

    return EncoderOverrides(**kwargs)


@pytest.mark.slow  # two more job runs (~70 s on 2 cores); the default run keeps the scifact re-index tests
def test_unchanged_corpus_commits_nothing_and_a_changed_setting_rebuilds_everything(small_index, tmp_path):
    from pipeline.batch.datasource import BadRecordError

    base_root, records = small_index
    root = tmp_path / "index"
    shutil.copytree(base_root, root)
    layout = IndexLayout.at(str(root))
    # The same documents plus one bad record: the indexing job's policies and reporting.
    corpus = _write(tmp_path / "corpus.jsonl", records + [{"_id": "broken", "text": 42}])
    with pytest.raises(BadRecordError, match=rf"corpus\.jsonl line {SMALL + 1}: field 'text' must be a string"):
        run_reindex(ReindexConfig(corpus=str(corpus), index=str(root)))
    assert read_current_generation(layout) == 1

    same = run_reindex(ReindexConfig(corpus=str(corpus), index=str(root), on_bad_record="skip"))
    assert (same.committed, same.generation, same.docs_reencoded) == (False, 1, 0)
    assert (same.docs_unchanged, same.docs_added, same.docs_changed, same.docs_deleted) == (SMALL, 0, 0, 0)
    assert (same.docs_in, same.docs_rejected) == (SMALL + 1, 1)
    assert read_current_generation(layout) == 1 and same.shards_reused == 3
    assert not (root / "rejects" / "g000002").exists()
    # The skip run's staging is gone; the failed run's stays for a resume.
    assert len(list((root / "staging").iterdir())) == 1
    corpus = _write(tmp_path / "corpus.jsonl", records)

    # A new truncation length changes every vector: a full rebuild, said so. Its generation is
    # 3: the failed run's plan, still staged for a resume, keeps 2 reserved (`next_generation`,
    # so that a run with other settings never writes files under that run's names).
    full = run_reindex(ReindexConfig(corpus=str(corpus), index=str(root),
                                     encoder=_overrides(max_length=128)))
    assert full.full_rebuild is True and "max_length 256 -> 128" in full.rebuild_reason
    assert (full.generation, full.base_generation, full.docs_reencoded) == (3, 1, SMALL)
    assert full.docs_added is None and full.shards == full.shards_rebuilt == 3
    manifest = read_manifest(layout)
    assert manifest.encoder["max_length"] == 128 and manifest.parent_generation == 1
    assert manifest.extra["reindex"]["full_rebuild"] is True
    assert manifest.extra["reindex"]["rebuild_reason"] == full.rebuild_reason
    from pipeline.encode import SpladeEncoder

    short = SpladeEncoder("splade-tiny", device="cpu", max_length=128)
    ids, _, vectors = _stored(root)
    assert ids == [r["_id"] for r in records]
    assert _same_rows(vectors[:40], short.encode([_text(r) for r in records[:40]]))
    assert read_manifest(layout, 1).encoder["max_length"] == 256   # the old generation is kept

    # A user error (an impossible override) is one line and exit code 1.
    bad = subprocess.run([*LSR, "reindex", str(corpus), str(root), "--index-kind", "nope"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith("error: invalid re-indexing settings")


def _mark_as_format_1(root: Path) -> None:
    """Make generation 1 look written by a release before the blocked index's format 2: its
    shards' index groups say version 1 and its manifest records no format version. (This
    build cannot write the old layout itself; loading now refuses the groups, as it would
    refuse real version-1 data.)"""
    (manifest_path,) = (root / "manifests").iterdir()
    manifest = json.loads(manifest_path.read_text())
    del manifest["index"]["format_version"]
    manifest_path.write_text(json.dumps(manifest))
    for group in (root / "shards").glob("*/index/zarr.json"):
        meta = json.loads(group.read_text())
        meta["attributes"]["format_version"] = 1
        group.write_text(json.dumps(meta))


def test_reindex_after_an_upgrade_rebuilds_old_format_indexes_without_encoding(data_dir, tmp_path,
                                                                             ray_local):
    from pipeline.format import IndexFormatError

    records = _records(data_dir / "cisi" / "corpus.jsonl")[:80]
    corpus = _write(tmp_path / "corpus.jsonl", records)
    root = tmp_path / "index"
    run_index_job(IndexJobConfig(corpus=str(corpus), output=str(root), shard_size=40,
                                 index_kind="blocked"))
    probe = ["information retrieval evaluation", "library classification"]
    before = [[(h.doc_id, h.score) for h in row] for row in ShardedIndex.open(str(root)).search(probe)]
    _mark_as_format_1(root)
    with pytest.raises(IndexFormatError, match="older lsr-pipeline: build it again"):
        ShardedIndex.open(str(root))

    summary = run_reindex(ReindexConfig(corpus=str(corpus), index=str(root)))
    assert summary.committed and summary.generation == 2 and summary.full_rebuild is False
    assert "format version 1 -> 2" in summary.rebuild_reason
    assert summary.docs_reencoded == 0 and summary.shards_rebuilt == summary.shards == 2
    layout = IndexLayout.at(str(root))
    assert read_manifest(layout).index["format_version"] == 2
    after = [[(h.doc_id, h.score) for h in row] for row in ShardedIndex.open(str(root)).search(probe)]
    assert after == before


@pytest.mark.slow
def test_ray_job_submit_of_the_reindex_entry_point(small_index, tmp_path):
    """`ray job submit` of jobs/reindex.py (what the scheduled jobs run) to a `ray start --head`
    cluster on 127.0.0.1, stopped by PID; the job's JSON report says what changed."""
    base_root, records = small_index
    root = tmp_path / "index"
    shutil.copytree(base_root, root)
    corpus = _write(tmp_path / "corpus.jsonl",
                    [{**r, "text": "revised: " + r["text"]} if i < 5 else r for i, r in enumerate(records[3:])])
    with ray_head() as address:
        out = submit_job(address, [sys.executable, "jobs/reindex.py", str(corpus), str(root), "--json"])
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "succeeded" in out.stdout.lower()
        lines = out.stdout.splitlines()   # the driver's log, then the JSON report
        start = lines.index("{")
        report = json.loads("\n".join(lines[start:lines.index("}", start) + 1]))
        assert (report["docs_changed"], report["docs_deleted"], report["docs_added"]) == (5, 3, 0)
        assert report["docs_reencoded"] == 5 and report["generation"] == 2
        assert read_current_generation(IndexLayout.at(str(root))) == 2
