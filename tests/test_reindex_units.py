"""Re-indexing pieces without Ray: shard planning, claims, settings resolution, garbage collection.

GC runs on real index roots on disk (manifests, CURRENT, shard folders, lease files written by
the Serve helper's `write_lease`), with file ages set through their modification times.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.batch.config import IndexJobConfig
from pipeline.batch import EncoderOverrides, ReindexConfig
from pipeline.catalog import collect_garbage
from pipeline.index import BlockedIndex
from pipeline.batch.reindex_diff import BaseTable, ReindexError, UnitRoutes, resolve_claims
from pipeline.batch.reindex_job import decide
from pipeline.batch.reindex_shards import BaseShardChange, plan_output_shards
from pipeline.catalog.leases import write_lease
from pipeline.objstore import write_json_atomic
from pipeline.catalog import IndexLayout, Manifest, ShardEntry, commit_generation, list_generations

ENCODER = {"model": "splade-tiny", "source": "/x", "fingerprint": "sha256:abc", "max_length": 256,
           "query_max_length": 64, "top_k": None, "threshold": 0.0, "dtype": "float32",
           "vocab_size": 30522}


# --------------------------------------------------------------------------- shard planning
def change(pos, n, kept=None, changed=0):
    return BaseShardChange(pos, f"g000001-s{pos:05d}", n, n if kept is None else kept, changed)


def kinds(outputs):
    return [(o.kind, o.base, o.added, o.n_docs) for o in outputs]


def test_untouched_shards_are_reused_and_touched_ones_rebuilt():
    out = plan_output_shards([change(0, 100, kept=90, changed=3), change(1, 100), change(2, 100)],
                             n_added=0, shard_size=100, generation=2)
    assert kinds(out) == [("rebuilt", (0,), (0, 0), 90), ("reused", (1,), (0, 0), 100),
                          ("reused", (2,), (0, 0), 100)]
    assert [o.name for o in out] == ["g000002-s00000", "g000001-s00001", "g000001-s00002"]
    # A change alone (no deletion) rebuilds too; an emptied shard disappears.
    out = plan_output_shards([change(0, 100, changed=1), change(1, 100, kept=0)], 0, 100, 2)
    assert kinds(out) == [("rebuilt", (0,), (0, 0), 100)]


def test_consecutive_rebuilt_shards_merge_up_to_shard_size():
    out = plan_output_shards([change(0, 100, kept=40), change(1, 100, kept=50), change(2, 100, kept=30),
                              change(3, 100)], 0, 100, 5)
    assert kinds(out) == [("rebuilt", (0, 1), (0, 0), 90), ("rebuilt", (2,), (0, 0), 30),
                          ("reused", (3,), (0, 0), 100)]
    assert [o.name for o in out] == ["g000005-s00000", "g000005-s00001", "g000001-s00003"]


def test_added_documents_fill_a_rebuilt_or_small_tail_then_new_shards():
    # Tail rebuilt anyway: filled up to shard_size, the rest in new shards of shard_size.
    out = plan_output_shards([change(0, 100), change(1, 100, kept=60)], 150, 100, 2)
    assert kinds(out) == [("reused", (0,), (0, 0), 100), ("rebuilt", (1,), (0, 40), 100),
                          ("added", (), (40, 140), 100), ("added", (), (140, 150), 10)]
    # Untouched tail at least half full: kept as it is, additions go to a new shard.
    out = plan_output_shards([change(0, 100), change(1, 60)], 5, 100, 2)
    assert kinds(out) == [("reused", (0,), (0, 0), 100), ("reused", (1,), (0, 0), 60),
                          ("added", (), (0, 5), 5)]
    # Untouched tail under half full (an earlier run's additions): rebuilt with the new ones.
    out = plan_output_shards([change(0, 100), change(1, 5)], 5, 100, 3)
    assert kinds(out) == [("reused", (0,), (0, 0), 100), ("rebuilt", (1,), (0, 5), 10)]
    # Nothing left of the base: only added shards.
    assert kinds(plan_output_shards([change(0, 10, kept=0)], 3, 100, 2)) == [("added", (), (0, 3), 3)]


def test_rebuild_all_rebuilds_every_kept_shard():
    out = plan_output_shards([change(0, 100), change(1, 100)], 0, 100, 2, rebuild_all=True)
    assert kinds(out) == [("rebuilt", (0,), (0, 0), 100), ("rebuilt", (1,), (0, 0), 100)]


# --------------------------------------------------------------------------- claims
def _table(keys, fingerprints, shards, rows):
    keys = np.asarray(keys, np.uint64).reshape(-1, 2)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    return BaseTable(keys[order, 0], keys[order, 1], np.asarray(fingerprints, np.uint64)[order],
                     np.asarray(shards, np.int32)[order], np.asarray(rows, np.int64)[order])


def test_base_table_lookup_tells_apart_ids_whose_first_64_bits_collide():
    table = _table([(50, 1), (10, 7), (30, 2), (10, 3)], [1, 2, 3, 4], [0, 0, 1, 1], [0, 1, 0, 1])
    queries = np.asarray([(10, 3), (10, 7), (10, 5), (20, 0), (30, 2), (50, 1), (60, 0)], np.uint64)
    assert table.lookup(queries).tolist() == [0, 1, -1, -1, 2, 3, -1]
    empty = _table([], [], [], [])
    assert empty.lookup(np.asarray([(1, 1)], np.uint64)).tolist() == [-1]


def test_forced_id_hash_collisions_never_confuse_documents(monkeypatch):
    """With the first hash word cut to 1 bit every id collides with half the others there;
    classification must still find each document's own base slot, and new ids none."""
    import pyarrow as pa

    from pipeline.batch.reindex_diff import TEST_HASH_BITS_ENV, classify_batch, id_keys
    from pipeline.format.postings import fingerprint_texts

    monkeypatch.setenv(TEST_HASH_BITS_ENV, "1")
    base_ids = [f"doc-{i}" for i in range(200)]
    texts = [f"text {i}" for i in range(200)]
    keys = id_keys(base_ids)
    assert len(np.unique(keys[:, 0])) <= 2       # the collisions are really there
    table = _table(keys, fingerprint_texts(texts), np.zeros(200), np.arange(200))
    new_ids = base_ids[::-1] + ["new-1", "new-2"]
    new_texts = texts[::-1][:-1] + ["changed"] + ["x", "y"]
    out = classify_batch(pa.table({"doc_id": new_ids, "text": new_texts}), table)
    rows = out.column("base_row").to_pylist()
    assert rows[:200] == list(range(199, -1, -1)) and rows[200:] == [-1, -1]
    unchanged = [t is None for t in out.column("text").to_pylist()]
    assert unchanged == [True] * 199 + [False] * 3


def _manifest(shard_sizes, generation=1):
    shards = [ShardEntry(f"g{generation:06d}-s{i:05d}", n, n * 10, "c" * 64, "exact")
              for i, n in enumerate(shard_sizes)]
    return Manifest(generation=generation, created_at="2026-01-01T00:00:00+00:00", encoder=dict(ENCODER),
                    index={"kind": "exact", "params": {}}, shards=shards,
                    corpus={"url": "c", "format": "jsonl", "fingerprint": "f", "files": [],
                            "fields": {"id": None, "title": "title", "text": "text"}},
                    counts={"docs_in": sum(shard_sizes), "docs_indexed": sum(shard_sizes),
                            "docs_rejected": 0},
                    extra={"shard_size": 4, "values_dtype": "float32"})


def _routes(unit, kept=(), changed=(), added=()):
    kept = np.asarray(kept, np.int64).reshape(-1, 2)
    changed = np.asarray(changed, np.int64).reshape(-1, 3)
    return UnitRoutes(unit, (kept[:, 0].astype(np.int32), kept[:, 1]),
                      (changed[:, 0].astype(np.int32), changed[:, 1], changed[:, 2]),
                      np.asarray(added, np.int64))


def test_claims_count_kept_changed_deleted_added():
    base = _manifest([4, 3])
    diff = resolve_claims(base, [
        _routes(0, kept=[(0, 0), (0, 2)], changed=[(0, 3, 2)], added=[3]),
        _routes(1, kept=[(1, 0)], changed=[(1, 2, 0)], added=[1, 2]),
    ])
    assert (diff.unchanged, diff.changed, diff.deleted, len(diff.added)) == (3, 2, 2, 3)
    assert diff.fates[0].kept.tolist() == [True, False, True, True]
    assert diff.fates[1].kept.tolist() == [True, False, True]
    rows, by = diff.fates[0].replacements()
    assert rows.tolist() == [3] and by.tolist() == [[0, 2]]
    assert diff.added.tolist() == [[0, 3], [1, 1], [1, 2]]


def test_a_changed_document_whose_slot_is_taken_is_indexed_as_added():
    """Two ids sharing a hash: the second claim on a base slot becomes an added document."""
    base = _manifest([2])
    diff = resolve_claims(base, [_routes(0, kept=[(0, 1)], changed=[(0, 1, 5), (0, 0, 6)]),
                                 _routes(1, changed=[(0, 0, 1)])])
    assert diff.changed == 1 and diff.added.tolist() == [[0, 5], [1, 1]]
    assert diff.fates[0].kept.tolist() == [True, True]
    with pytest.raises(ReindexError, match="id hash collision"):
        resolve_claims(base, [_routes(0, kept=[(0, 1)]), _routes(1, kept=[(0, 1)])])


# --------------------------------------------------------------------------- settings
def test_settings_default_to_the_recorded_ones_and_overrides_apply():
    base = _manifest([4])
    base.extra.update(shard_size=1234, values_dtype="float16")
    base.encoder.update(max_length=128, top_k=50)
    job = ReindexConfig(corpus="/c", index="/i").job_config(base)
    assert (job.shard_size, job.values_dtype, job.index_kind, job.encoder.max_length,
            job.encoder.top_k, job.title_field) == (1234, "float16", "exact", 128, 50, "title")
    job = ReindexConfig(corpus="/c", index="/i", shard_size=10, title_field="",
                        encoder=EncoderOverrides(top_k=0, max_length=64)).job_config(base)
    assert (job.shard_size, job.title_field, job.encoder.top_k, job.encoder.max_length) == \
        (10, None, None, 64)
    # No base: the indexing job's defaults.
    assert ReindexConfig(corpus="/c", index="/i").job_config(None).shard_size == \
        IndexJobConfig(corpus="/c", output="/i").shard_size


def test_decide_full_rebuild_only_when_vectors_would_differ():
    base = _manifest([4])
    config = ReindexConfig(corpus="/c", index="/i")
    job = config.job_config(base)
    assert decide(config, job, base, dict(ENCODER, source="/elsewhere", model="alias")).full is False
    full = decide(config, job, base, dict(ENCODER, max_length=128))
    assert full.full and "max_length 256 -> 128" in full.reason
    assert "fingerprint" in decide(config, job, base, dict(ENCODER, fingerprint="sha256:other")).reason
    assert decide(ReindexConfig(corpus="/c", index="/i", full=True), job, base, ENCODER).full
    assert decide(config, job, None, ENCODER).reason.startswith("no committed generation")
    values = ReindexConfig(corpus="/c", index="/i", values_dtype="float16")
    assert "values_dtype" in decide(values, values.job_config(base), base, ENCODER).reason
    blocked = ReindexConfig(corpus="/c", index="/i", index_kind="blocked")
    d = decide(blocked, blocked.job_config(base), base, ENCODER)
    assert not d.full and d.rebuild_all and "index settings changed" in d.reason
    # Recorded blocked parameters are read with this build's defaults: one left implicit is no
    # change, one changed is.
    blocked_base = _manifest([4])
    blocked_base.index.update(kind="blocked", params={"n_postings": 3000},
                              format_version=BlockedIndex.FORMAT_VERSION)
    assert decide(config, config.job_config(blocked_base), blocked_base, ENCODER).rebuild_all is False
    other = ReindexConfig(corpus="/c", index="/i", index_params={"n_postings": 2000})
    assert decide(other, other.job_config(blocked_base), blocked_base, ENCODER).rebuild_all is True


def test_decide_rebuilds_indexes_stored_in_an_older_format():
    """A generation written before the blocked index's summary layout changed (its manifest
    records no format version, or an older one): the next reindex rebuilds every shard's index
    from the stored vectors, without re-encoding, so the new generation can be served."""
    config = ReindexConfig(corpus="/c", index="/i")
    for recorded in (None, BlockedIndex.FORMAT_VERSION - 1):
        base = _manifest([4])
        base.index.update(kind="blocked", params={})
        if recorded is not None:
            base.index["format_version"] = recorded
        d = decide(config, config.job_config(base), base, ENCODER)
        assert not d.full and d.rebuild_all
        assert f"format version {recorded or 1} -> {BlockedIndex.FORMAT_VERSION}" in d.reason
    exact_base = _manifest([4])      # exact indexes are still at version 1: nothing to do
    assert decide(config, config.job_config(exact_base), exact_base, ENCODER).rebuild_all is False


def test_recorded_dtype_is_the_one_the_encoder_actors_use():
    from pipeline.batch.runtime import Placement, encoder_settings

    config = IndexJobConfig(corpus="/c", output="/i")
    on_cpu = encoder_settings(config, Placement(1, 1.0, 0.0, 1, 1))
    on_gpu = encoder_settings(config, Placement(1, 1.0, 1.0, 1, 1))
    assert (on_cpu["dtype"], on_gpu["dtype"]) == ("float32", "bfloat16")
    assert on_cpu["fingerprint"] == on_gpu["fingerprint"] and "device" not in on_cpu


# --------------------------------------------------------------------------- garbage collection
DAY = 24 * 3600.0


def _age(path: Path, seconds: float) -> None:
    """Set the modification time of `path` and everything under it `seconds` into the past."""
    when = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (when, when))


def _shard(root: Path, name: str) -> None:
    write_json_atomic(IndexLayout.at(str(root)).shard_commit(name), {"name": name})


def _generation(root: Path, generation: int, shard_names: list[str], current: bool = True) -> None:
    layout = IndexLayout.at(str(root))
    for name in shard_names:
        if not (root / "shards" / name).exists():
            _shard(root, name)
    m = _manifest([1] * len(shard_names), generation)
    m = Manifest(**{**m.__dict__, "shards": [ShardEntry(n, 1, 1, "c" * 64, "exact") for n in shard_names]})
    if current:
        commit_generation(layout, m)
    else:
        write_json_atomic(layout.manifest(generation), m.to_json())
    (root / "rejects" / f"g{generation:06d}").mkdir(parents=True, exist_ok=True)


@pytest.fixture
def history(tmp_path):
    """Five generations; each rebuilds shard 0 and shares the rest with its parent."""
    root = tmp_path / "idx"
    _generation(root, 1, ["g000001-s00000", "g000001-s00001"])
    for g in range(2, 6):
        _generation(root, g, [f"g{g:06d}-s00000", "g000001-s00001"])
    _age(root, 2 * DAY)
    return root


def _shards(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "shards").iterdir())


def test_gc_keeps_the_last_n_and_removes_only_unreferenced_shards(history):
    layout = IndexLayout.at(str(history))
    dry = collect_garbage(layout, keep_generations=2, dry_run=True)
    assert dry.deleted_generations == [1, 2, 3] and list_generations(layout) == [1, 2, 3, 4, 5]
    report = collect_garbage(layout, keep_generations=2)
    assert report.kept_generations == [4, 5] and report.deleted_generations == [1, 2, 3]
    assert list_generations(layout) == [4, 5]
    # g000001-s00001 belongs to generation 1 but generations 4 and 5 still list it.
    assert _shards(history) == ["g000001-s00001", "g000004-s00000", "g000005-s00000"]
    assert sorted(report.deleted_shards) == ["g000001-s00000", "g000002-s00000", "g000003-s00000"]
    assert sorted(p.name for p in (history / "rejects").iterdir()) == ["g000004", "g000005"]
    assert json.loads((history / "CURRENT.json").read_text())["generation"] == 5
    again = collect_garbage(layout, keep_generations=2)
    assert again.deleted_generations == [] and again.deleted_shards == []


def test_gc_honours_unexpired_leases_only(history):
    layout = IndexLayout.at(str(history))
    write_lease(layout, "server-a", 2, ttl_s=300)                 # serving 2
    write_lease(layout, "server-b", 4, ttl_s=300, also=[1])      # serving 4, draining 1
    write_lease(layout, "server-dead", 3, ttl_s=0.01)            # expired
    time.sleep(0.05)
    report = collect_garbage(layout, keep_generations=1)
    assert report.leased_generations == [1, 2, 4]
    assert report.kept_generations == [1, 2, 4, 5] and report.deleted_generations == [3]
    assert _shards(history) == ["g000001-s00000", "g000001-s00001", "g000002-s00000",
                                "g000004-s00000", "g000005-s00000"]
    assert (history / "leases" / "server-dead.json").exists()   # leases are the servers' files


def test_gc_spares_young_uncommitted_work_and_removes_it_when_stale(history):
    layout = IndexLayout.at(str(history))
    # A run writing generation 6: two shards and its staging, manifest not yet written.
    _shard(history, "g000006-s00000")
    (history / "staging" / "plan-live").mkdir(parents=True)
    (history / "staging" / "plan-live" / "plan.json").write_text("{}")
    # An abandoned plan and an uncommitted manifest, both long idle.
    (history / "staging" / "plan-old" / "parts").mkdir(parents=True)
    (history / "staging" / "plan-old" / "parts" / "x.parquet").write_text("x")
    _age(history / "staging" / "plan-old", 3 * DAY)
    _generation(history, 7, ["g000007-s00000"], current=False)
    _age(history / "manifests" / "000007.json", 3 * DAY)
    _age(history / "shards" / "g000007-s00000", 3 * DAY)
    report = collect_garbage(layout, keep_generations=5)
    assert report.deleted_staging == ["plan-old"] and report.deleted_generations == [7]
    assert sorted(report.deferred) == ["shards/g000006-s00000", "staging/plan-live"]
    assert (history / "shards" / "g000006-s00000").exists()
    assert not (history / "shards" / "g000007-s00000").exists()
    assert list_generations(layout) == [1, 2, 3, 4, 5]
    # Once idle for longer than the safety age, the half-written run goes too.
    later = collect_garbage(layout, keep_generations=5, now=time.time() + 2 * DAY)
    assert later.deleted_shards == ["g000006-s00000"] and later.deleted_staging == ["plan-live"]


def test_gc_refuses_an_unreadable_lease(history):
    (history / "leases").mkdir()
    (history / "leases" / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable lease"):
        collect_garbage(IndexLayout.at(str(history)), keep_generations=1)
    assert list_generations(IndexLayout.at(str(history))) == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- resume
def test_parts_of_unfinished_read_blocks_are_kept_and_only_missing_rows_are_read_again(tmp_path):
    """A crashed attempt staged block 0 whole and part of block 1 (plus a part overlapping it,
    as a retried task may leave): block 0 is done, block 1 keeps its first part, the overlapping
    one goes, and a resumed read yields only block 1's rows no kept part holds."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.batch.datasource import UnitResume, read_shard
    from pipeline.batch.plan import JobPlan, ShardPlan
    from pipeline.batch.staging import parts_loc, part_name, read_loc, scan_staging, settle_unfinished_blocks
    from pipeline.data.corpus import Chunk, CorpusFile
    from pipeline.data.records import FieldMap
    from pipeline.objstore import write_bytes_atomic

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(f'{{"_id": "d{i}", "text": "t {i}"}}\n' for i in range(7)))
    layout = IndexLayout.at(str(tmp_path / "idx"))
    chunk = Chunk(CorpusFile(str(corpus), "jsonl", corpus.stat().st_size, "v1"), 0, corpus.stat().st_size)
    plan = JobPlan("plan1", 2, 1, "f", [chunk.file], [ShardPlan(0, None, chunk)], block_rows=4)

    def part(seq, rows):
        buf = io.BytesIO()
        pq.write_table(pa.table({"row": pa.array(rows, pa.int64())}), buf)
        write_bytes_atomic(parts_loc(plan, layout, 0).child(part_name(seq, rows[0], len(rows))), buf.getvalue())

    part(0, [0, 1]), part(0, [2, 3]), part(1, [4]), part(1, [4, 5])     # the last overlaps
    write_json_atomic(read_loc(plan, layout, 0), {"shard": 0, "n_records": 7, "n_valid": 7,
                                                  "n_rejected": 0, "block_rows": 4})
    states = scan_staging(plan, layout)
    assert states[0].done_blocks(4) == {0} and states[0].committed is None
    assert settle_unfinished_blocks(plan, layout, states) == 1
    left = sorted(p.name for p in (tmp_path / "idx" / "staging" / "plan1" / "parts" / "s00000").iterdir())
    assert left == [part_name(0, 0, 2), part_name(0, 2, 2), part_name(1, 4, 1)]
    assert states[0].staged_rows == {1: frozenset({4})} and states[0].covered_rows == {0: 4, 1: 1}
    resume = UnitResume(frozenset(states[0].done_blocks(4)), states[0].staged_rows)
    blocks = list(read_shard(plan, layout, 0, resume, FieldMap(), "fail", {}))
    assert [b.column("row").to_pylist() for b in blocks] == [[5, 6]]
    assert [b.column("doc_id").to_pylist() for b in blocks] == [["d5", "d6"]]
