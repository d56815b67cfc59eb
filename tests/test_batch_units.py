"""Units of the batch jobs that need neither Ray nor the model: names of any width, generation
numbers, the writer lock's protocol, and the shard writer replacing a dead attempt's files."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.batch.plan import next_generation
from pipeline.batch.shard_writer import committed_record, write_shard
from pipeline.batch.staging import ShardState, parse_part_name, part_name, unit_dir_name
from pipeline.catalog import (IndexLayout, Manifest, ShardEntry, WriterLockHeld, WriterLockLost,
                              acquire_writer_lock, collect_garbage, commit_generation,
                              parse_shard_name, shard_name)
from pipeline.catalog.layout import generation_file_name, parse_generation_file_name
from pipeline.format.postings import ShardPostings, read_doc_ids
from pipeline.objstore import write_bytes_atomic, write_json_atomic


def test_names_of_any_width_round_trip_and_nothing_else_parses():
    for generation, shard in [(0, 0), (7, 3), (999_999, 99_999), (1_000_000, 100_000),
                              (123_456_789, 4_000_000)]:
        assert parse_shard_name(shard_name(generation, shard)) == (generation, shard)
        assert parse_generation_file_name(generation_file_name(generation)) == generation
    for seq, first, n in [(0, 0, 1), (999_999, 9_999_999_999, 256), (1_000_000, 256_000_000_000, 256)]:
        assert parse_part_name(part_name(seq, first, n)) == (seq, first, n)
    assert shard_name(1_000_000, 100_000) == "g1000000-s100000"
    for other in ["g1-s1", "g000001-s0001", "x000001-s00001", "g000001-s00001-old", "staging"]:
        assert parse_shard_name(other) is None
    assert parse_part_name(".b000001-r0000000000-n2.parquet.tmp") is None
    assert unit_dir_name(100_000) == "s100000"


def _postings(n: int, seed: int = 0, empty_rows=()) -> ShardPostings:
    rng = np.random.default_rng(seed)
    m = sp.random(n, 50, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    m.data = np.abs(m.data) + 0.01
    m = m.tolil()
    for r in empty_rows:
        m[r, :] = 0
    return ShardPostings(np.asarray([f"d{i}" for i in range(n)], dtype=object),
                         np.arange(n, dtype=np.uint64), m.tocsr())


def _manifest(generation: int, entries: list[ShardEntry]) -> Manifest:
    n = sum(e.n_docs for e in entries)
    return Manifest(generation=generation, created_at="2026-01-01T00:00:00+00:00", encoder={},
                    index={"kind": "exact", "params": {}}, shards=entries,
                    corpus={"url": "c", "format": "jsonl", "fingerprint": "f", "files": []},
                    counts={"docs_in": n, "docs_indexed": n, "docs_rejected": 0})


def test_wide_names_through_commit_resume_and_gc(tmp_path):
    """Generation 1,000,000, shard 100,000 and read block 1,000,000: written, found committed
    on resume, parsed from staging, kept by GC while referenced and collected after."""
    from pipeline.batch.plan import JobPlan, ShardPlan
    from pipeline.batch.staging import parts_loc, scan_staging
    from pipeline.data.corpus import Chunk, CorpusFile

    layout = IndexLayout.at(str(tmp_path / "idx"))
    wide = shard_name(1_000_000, 100_000)
    old = shard_name(999_999, 123_456)
    entries = {}
    for name in (wide, old):
        entries[name] = write_shard(layout, name, _postings(20), index_kind="exact", index_params={},
                                    values_dtype="float32", record={"plan_id": "p", "shard": 100_000},
                                    threads=1).entry
    commit_generation(layout, _manifest(999_999, [entries[old]]))
    commit_generation(layout, _manifest(1_000_000, [entries[wide]]))
    # Resume finds the wide shard committed (record and checksum verified).
    assert committed_record(layout, wide, {"plan_id": "p", "shard": 100_000}, verify=True)
    assert committed_record(layout, wide, {"plan_id": "other"}, verify=True) is None
    # Staging with a wide read block number is scanned like any other.
    chunk = Chunk(CorpusFile(str(tmp_path / "c.jsonl"), "jsonl", 1, "v"), 0, 1)
    plan = JobPlan("planw", 1_000_001, 1_000_000, "f", [chunk.file], [ShardPlan(0, None, chunk)],
                   block_rows=256)
    write_bytes_atomic(parts_loc(plan, layout, 0).child(part_name(1_000_000, 256_000_000, 256)), b"x")
    assert scan_staging(plan, layout)[0].covered_rows == {1_000_000: 256}
    # A new plan's generation is above every manifest, shard folder and staged plan.
    write_json_atomic(layout.staging("planw").child("plan.json"), {"generation": 1_000_005})
    assert next_generation(layout, 1_000_000) == 1_000_006
    # GC: keep the newest generation only; the old wide-numbered shard goes, the live one stays.
    report = collect_garbage(layout, keep_generations=1, min_age_s=0)
    assert report.deleted_generations == [999_999] and report.deleted_shards == [old]
    assert sorted(os.listdir(tmp_path / "idx" / "shards")) == [wide]


def test_shard_writer_replaces_what_a_dead_attempt_left(tmp_path):
    """A dead attempt left postings, a half index and a stale record: the next writer of the
    shard replaces all of it (it used to fail with FileExistsError on the index)."""
    layout = IndexLayout.at(str(tmp_path / "idx"))
    name = shard_name(1, 0)
    first = write_shard(layout, name, _postings(30, seed=1), index_kind="exact", index_params={},
                        values_dtype="float32", record={"plan_id": "a"}, threads=1)
    write_bytes_atomic(layout.index(name).child("junk", "c", "0"), b"half written")
    second = write_shard(layout, name, _postings(25, seed=2, empty_rows=[3]), index_kind="exact",
                         index_params={}, values_dtype="float32", record={"plan_id": "b"}, threads=1)
    assert second.entry.n_docs == 25 and second.entry.postings_checksum != first.entry.postings_checksum
    assert second.stats["empty_docs"] == 1
    record = committed_record(layout, name, {"plan_id": "b"}, verify=True)
    assert record and record["n_docs"] == 25
    assert list(read_doc_ids(layout.postings(name))) == [f"d{i}" for i in range(25)]
    assert not (tmp_path / "idx" / "shards" / name / "index" / "junk").exists()


def test_writer_lock_excludes_renews_fences_and_is_taken_over_after_expiry(tmp_path):
    layout = IndexLayout.at(str(tmp_path / "idx"))
    first = acquire_writer_lock(layout, "lsr index", ttl_s=1.5, renew=False)
    with pytest.raises(WriterLockHeld, match=rf"lsr index on host \S+ pid {os.getpid()}, started 20"):
        acquire_writer_lock(layout, "lsr reindex")
    first.renew()
    first.check("moving CURRENT")
    time.sleep(1.6)                                    # not renewed: expired
    with pytest.raises(WriterLockLost):
        first.check("moving CURRENT")
    second = acquire_writer_lock(layout, "lsr reindex", ttl_s=30)
    first.renew()
    assert first.lost                                  # it noticed the takeover
    second.check("moving CURRENT")
    second.release()
    third = acquire_writer_lock(layout, "again", ttl_s=30, renew=False)   # released: free at once
    third.release()
    assert len(os.listdir(tmp_path / "idx" / "locks" / "writer")) <= 3


def test_renewal_thread_keeps_a_live_lock(tmp_path):
    layout = IndexLayout.at(str(tmp_path / "idx"))
    lock = acquire_writer_lock(layout, "long run", ttl_s=0.9)
    try:
        time.sleep(2.0)                                # > 2 TTLs: only renewal keeps it held
        with pytest.raises(WriterLockHeld):
            acquire_writer_lock(layout, "other")
    finally:
        lock.release()


def test_shards_are_sized_at_plan_time_to_fit_the_per_shard_postings_limit(tmp_path):
    import json

    from pipeline.batch.config import IndexJobConfig
    from pipeline.batch.plan import MAX_SHARD_POSTINGS, make_plan, max_docs_per_shard

    assert max_docs_per_shard(130.0) == MAX_SHARD_POSTINGS // 260
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"t {i}"}) + "\n" for i in range(30)))
    config = IndexJobConfig(corpus=str(corpus), output=str(tmp_path / "idx"), shard_size=1000)
    layout = IndexLayout.at(config.output)
    # Documents of 2^29 postings each: 3 per shard by the limit (with its safety factor of 2);
    # byte-range chunks are cut from the mean record length, so a shard may hold a few more,
    # never more than the limit itself (7).
    plan, _ = make_plan(config, layout, name_unit=shard_name, postings_per_doc=lambda files: 2.0**29)
    assert max_docs_per_shard(2.0**29) == 3
    assert len(plan.shards) >= 10
    from pipeline.data.corpus import read_chunk
    sizes = [sum(1 for _ in read_chunk(sp.chunk)) for sp in plan.shards]
    assert sum(sizes) == 30 and max(sizes) * 2**29 <= MAX_SHARD_POSTINGS


def test_evaluation_encodes_an_empty_document_as_an_empty_vector():
    from pipeline.evaluate.runner import encode_documents

    class Fake:
        def encode(self, texts):
            return sp.csr_matrix(np.asarray([[len(t), 1.0, 0.0] for t in texts], np.float32))

        def settings(self):
            return {"vocab_size": 3}

    vectors = encode_documents(Fake(), ["ab", "", "abcd", ""])
    assert vectors.shape == (4, 3) and vectors.getrow(1).nnz == 0 and vectors.getrow(3).nnz == 0
    assert vectors.toarray()[[0, 2]].tolist() == [[2.0, 1.0, 0.0], [4.0, 1.0, 0.0]]
    assert encode_documents(Fake(), ["", ""]).nnz == 0


def test_plan_id_follows_the_vocab_files_contents_not_its_path(tmp_path):
    """An edited vocab.txt at the same path maps tokens to other ids: its run must not resume
    the old plan; the same contents at another path may."""
    import json
    import shutil

    from pipeline.batch.config import EncoderOptions, IndexJobConfig
    from pipeline.batch.plan import make_plan
    from pipeline.data.vectors import VectorVocabularyError

    corpus = tmp_path / "v.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "vector": {"a": 1.0}}) + "\n"
                              for i in range(5)))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\n")

    def plan_id(vocab_path):
        config = IndexJobConfig(corpus=str(corpus), output=str(tmp_path / "idx"), format="vectors",
                                vocab=str(vocab_path), encoder=EncoderOptions(model=None))
        plan, resumed = make_plan(config, IndexLayout.at(config.output), name_unit=shard_name)
        return plan.plan_id, resumed

    first, resumed = plan_id(vocab)
    assert not resumed
    assert plan_id(vocab) == (first, True)
    moved = tmp_path / "elsewhere" / "vocab.txt"
    moved.parent.mkdir()
    shutil.copy(vocab, moved)
    assert plan_id(moved) == (first, True)
    vocab.write_text("b\na\n")          # same path, other ids
    changed, resumed = plan_id(vocab)
    assert changed != first and not resumed
    with pytest.raises(VectorVocabularyError, match="cannot read --vocab"):
        plan_id(tmp_path / "missing.txt")


def test_staged_vectors_from_several_and_sliced_chunks():
    """The CSR of staged rows equals the rows' own (term, weight) lists, whatever the chunks
    of the table (one per staged part, sliced by a filter) and unsorted terms within a row."""
    import pyarrow as pa

    from pipeline.batch.staging import staged_vectors

    rng = np.random.default_rng(3)
    rows = []
    for _ in range(40):
        n = int(rng.integers(0, 6))
        rows.append((rng.choice(50, n, replace=False).astype(np.int32).tolist(),
                     rng.random(n).astype(np.float32).tolist()))

    def part(lo, hi):
        return pa.table({"indices": pa.array([r[0] for r in rows[lo:hi]], pa.large_list(pa.int32())),
                         "values": pa.array([r[1] for r in rows[lo:hi]], pa.large_list(pa.float32()))})

    table = pa.concat_tables([part(0, 13), part(13, 14), part(14, 30).slice(3, 10), part(30, 40)])
    kept = rows[:14] + rows[17:27] + rows[30:]
    got = staged_vectors(table, 50)
    want = np.zeros((len(kept), 50), np.float32)
    for i, (terms, weights) in enumerate(kept):
        want[i, terms] = weights
    assert got.shape == (len(kept), 50) and got.has_sorted_indices
    assert got.indices.dtype == np.int32 and got.data.dtype == np.float32
    assert np.array_equal(got.toarray(), want)


def test_read_blocks_default_to_the_formats_size_and_an_explicit_size_wins():
    """Vectors corpora stage fewer, larger parts (nothing to encode again after a kill); text
    keeps the encoder-sized block; a given --block-rows is kept; re-indexing resolves the same."""
    from pipeline.batch.config import BLOCK_ROWS, VECTOR_BLOCK_ROWS, IndexJobConfig
    from pipeline.batch.reindex_config import ReindexConfig

    text = IndexJobConfig(corpus="c", output="o")
    vectors = IndexJobConfig(corpus="c", output="o", format="vectors")
    assert (text.block_rows, vectors.block_rows) == (BLOCK_ROWS, VECTOR_BLOCK_ROWS)
    assert VECTOR_BLOCK_ROWS > BLOCK_ROWS
    assert IndexJobConfig(corpus="c", output="o", format="vectors", block_rows=64).block_rows == 64
    reindex = ReindexConfig(corpus="c", index="o", format="vectors", vocab="v.txt")
    assert reindex.job_config(None).block_rows == VECTOR_BLOCK_ROWS
    assert ReindexConfig(corpus="c", index="o").job_config(None).block_rows == BLOCK_ROWS
    with pytest.raises(ValueError, match="block_rows"):
        IndexJobConfig(corpus="c", output="o", block_rows=0)
