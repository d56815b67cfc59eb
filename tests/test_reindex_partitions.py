"""The re-index base table split by id-hash partition (`pipeline.batch.reindex_diff`): lookups
equal a brute-force dict, each partition holds only its own hash range, and the driver only
ever holds actor handles and counts, never the documents."""

from __future__ import annotations

import dataclasses
import gc
import time

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.batch import reindex_diff
from pipeline.batch.reindex_diff import (BasePartitions, BaseTablePartition, ReindexError, id_keys,
                                         load_base_partitions,
                                         partition_bits, partition_of, send_pieces)
from pipeline.catalog import IndexLayout, Manifest, ShardEntry
from pipeline.format import ShardPostings
from pipeline.format.postings import write_postings


def _brute_force(keys, fingerprints, shards, rows) -> dict:
    """id hash -> (fingerprint, shard, row), ids sharing all 128 bits left out (indexed as added)."""
    seen: dict = {}
    for k, f, s, r in zip(map(tuple, keys.tolist()), fingerprints.tolist(), shards.tolist(), rows.tolist()):
        seen.setdefault(k, []).append((f, s, r))
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


def _assert_equals_dict(partitions: BasePartitions, queries: np.ndarray, want: dict) -> None:
    hits = partitions.lookup(queries)
    for i, k in enumerate(map(tuple, queries.tolist())):
        if k in want:
            assert hits.found[i], k
            assert (int(hits.fingerprint[i]), int(hits.shard[i]), int(hits.row[i])) == want[k]
        else:
            assert not hits.found[i], k


def test_partition_count_follows_the_base_size():
    assert partition_bits(0) == 0 and partition_bits(1000) == 0
    assert partition_bits(10**9) == 7                       # 128 partitions of ~250 MB
    assert (10**9 * 32) / (1 << 7) <= reindex_diff.PARTITION_BYTES
    assert partition_bits(100, partition_bytes=32 * 100) == 0
    assert partition_bits(101, partition_bytes=32 * 100) == 1
    assert partition_bits(10**15) == reindex_diff.MAX_PARTITION_BITS


def test_partitioned_lookup_equals_a_dict_with_forced_first_word_collisions(ray_local):
    rng = np.random.default_rng(7)
    n = 6000
    keys = rng.integers(0, 2**63, size=(n, 2), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    keys[:2000, 0] = keys[2000:4000, 0]          # first words collide, second words differ
    keys[4000:4010] = keys[4010:4020]            # all 128 bits collide: neither can be found
    fingerprints = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    shards = rng.integers(0, 9, size=n).astype(np.int32)
    rows = np.arange(n, dtype=np.int64)
    want = _brute_force(keys, fingerprints, shards, rows)
    partitions = BasePartitions.start(bits=3)
    try:
        for part in np.array_split(np.arange(n), 5):       # as five base shards would send them
            send_pieces(partitions.actors, 3, keys[part], fingerprints[part], shards[part], rows[part])
        partitions.seal()
        assert partitions.n_docs == n - 20 and partitions.shared == 20
        absent = keys[:500].copy()
        absent[:, 1] ^= np.uint64(1)                          # same first word, other second word
        queries = np.concatenate([keys, absent, rng.integers(0, 2**64 - 1, size=(500, 2), dtype=np.uint64)])
        _assert_equals_dict(partitions, queries[rng.permutation(len(queries))], want)
        # Memory is split: each partition holds exactly the keys of its own hash range.
        held = ray_local.get([a.held_keys.remote() for a in partitions.actors])
        for p, h in enumerate(held):
            assert len(h) and bool(np.all(partition_of(h[:, 0], 3) == p))
            assert len(h) < n / 4                           # ~n/8 each, never the whole table
        assert sorted(map(tuple, np.concatenate(held).tolist())) == sorted(want)
    finally:
        partitions.close()


def _write_key_only_base(root: str, ids: list[str], fingerprints: np.ndarray, n_shards: int) -> Manifest:
    """A base generation's shards holding ids and fingerprints only (empty vectors): all the
    base table reads."""
    layout = IndexLayout.at(root)
    entries = []
    for s, part in enumerate(np.array_split(np.arange(len(ids)), n_shards)):
        name = f"g000001-s{s:05d}"
        postings = ShardPostings(doc_ids=np.asarray([ids[i] for i in part], dtype=object),
                                 fingerprints=fingerprints[part],
                                 vectors=sp.csr_matrix((len(part), 8), dtype=np.float32))
        write_postings(layout.postings(name), postings, values_dtype="float32")
        entries.append(ShardEntry(name, len(part), 0, "c" * 64, "exact"))
    return Manifest(generation=1, created_at="2026-01-01T00:00:00+00:00", encoder={},
                    index={"kind": "exact", "params": {}}, shards=entries, corpus={}, counts={})


def test_the_driver_holds_only_actor_handles_and_counts(ray_local, tmp_path, monkeypatch):
    ids = [f"doc-{i}" for i in range(3000)]
    fingerprints = np.arange(3000, dtype=np.uint64) * np.uint64(7919)
    base = _write_key_only_base(str(tmp_path / "idx"), ids, fingerprints, n_shards=6)

    # Everything the driver receives passes through ray.get: it must be counts, never arrays.
    received = []
    real_get = reindex_diff.ray.get

    def recording_get(refs, *args, **kwargs):
        out = real_get(refs, *args, **kwargs)
        received.extend(out if isinstance(out, list) else [out])
        return out

    def no_concatenate(*args, **kwargs):
        raise AssertionError("the driver concatenated base keys")

    monkeypatch.setattr(reindex_diff.ray, "get", recording_get)
    monkeypatch.setattr(reindex_diff.np, "concatenate", no_concatenate)
    partitions = load_base_partitions(IndexLayout.at(str(tmp_path / "idx")), base,
                                      partition_bytes=32 * 1000)      # 3,000 ids: 4 partitions
    monkeypatch.undo()
    try:
        assert received and all(isinstance(x, (int, tuple)) for x in received), received
        assert all(isinstance(v, int) for x in received if isinstance(x, tuple) for v in x)
        assert partitions.bits == 2 and len(partitions.actors) == 4 and partitions.n_docs == 3000
        assert all(isinstance(a, ray_local.actor.ActorHandle) for a in partitions.actors)
        assert not any(isinstance(v, np.ndarray) for v in vars(partitions).values())

        keys = id_keys(ids)
        shards = np.repeat(np.arange(6, dtype=np.int32), 500)
        rows = np.tile(np.arange(500, dtype=np.int64), 6)
        want = _brute_force(keys, fingerprints, shards, rows)
        _assert_equals_dict(partitions, np.concatenate([keys, id_keys(["new-1", "new-2"])]), want)
        held = ray_local.get([a.held_keys.remote() for a in partitions.actors])
        assert sum(len(h) for h in held) == 3000 and max(len(h) for h in held) < 1500
    finally:
        partitions.close()


def test_the_partition_actors_are_killed_when_loading_fails(ray_local, tmp_path, monkeypatch):
    ids = [f"doc-{i}" for i in range(40)]
    base = _write_key_only_base(str(tmp_path / "idx"), ids, np.arange(40, dtype=np.uint64), n_shards=2)
    wrong = dataclasses.replace(base, shards=[base.shards[0],
                                              ShardEntry(base.shards[1].name, 99, 0, "c" * 64, "exact")])
    started = []
    real_start = BasePartitions.start

    def recording_start(bits):
        partitions = real_start(bits)
        started.extend(partitions.actors)
        return partitions

    monkeypatch.setattr(BasePartitions, "start", staticmethod(recording_start))
    with pytest.raises(ReindexError, match="manifest says 99 documents"):
        load_base_partitions(IndexLayout.at(str(tmp_path / "idx")), wrong, partition_bytes=32 * 100)
    assert len(started) == 2                  # 119 documents by the manifest: 2 partitions
    for actor in started:                     # killed: calling one fails
        with pytest.raises(ray_local.exceptions.RayActorError):
            ray_local.get(actor.seal.remote(), timeout=60)


def test_feeds_still_sending_when_loading_fails_are_stopped_and_collected(ray_local, tmp_path, monkeypatch):
    # Partition actors that no node can place: the good shards' feeds wait to send for as long
    # as the bad shard takes to fail, every time. Each feed must then be stopped and its outcome
    # fetched; Ray reports an error nobody fetched as "Unhandled error" once its object is freed.
    ids = [f"doc-{i}" for i in range(40)]
    base = _write_key_only_base(str(tmp_path / "idx"), ids, np.arange(40, dtype=np.uint64), n_shards=4)
    wrong = dataclasses.replace(base, shards=base.shards[:-1] + [
        ShardEntry(base.shards[-1].name, 99, 0, "c" * 64, "exact")])

    def unplaceable_start(bits):
        return BasePartitions(bits, [BaseTablePartition.options(
            num_cpus=0, resources={"lsr-test-no-such-resource": 1}).remote(p, bits) for p in range(1 << bits)])

    unhandled = []
    monkeypatch.setattr(ray_local._private.worker, "_unhandled_error_handler", unhandled.append)
    monkeypatch.setattr(BasePartitions, "start", staticmethod(unplaceable_start))
    with pytest.raises(ReindexError, match="manifest says 99 documents"):
        load_base_partitions(IndexLayout.at(str(tmp_path / "idx")), wrong, partition_bytes=32 * 100)
    gc.collect()
    time.sleep(3)                             # Ray checks freed objects about once a second
    assert unhandled == []

