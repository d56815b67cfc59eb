"""Index persistence: Zarr v3 round trips on local disk and on S3 (moto server), and clear
`IndexFormatError`s for truncated, corrupt, foreign and other-version groups."""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.format import IndexFormatError, load_blocked, load_exact, load_index, save_index
from pipeline.index import BlockedIndex, ExactIndex
from pipeline.objstore.fs import resolve


@pytest.fixture(scope="module")
def docs_queries(encodings):
    cisi = encodings("cisi")
    return cisi.docs[:600], cisi.queries


@pytest.fixture(scope="module")
def blocked(docs_queries):
    return BlockedIndex.build(docs_queries[0], n_postings=40)


@pytest.fixture(scope="module")
def exact(docs_queries):
    return ExactIndex(docs_queries[0])


def _same_results(a, b, queries):
    for threads in (1, None):
        da, sa = a.search(queries, k=10, threads=threads)
        db, sb = b.search(queries, k=10, threads=threads)
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(sa, sb)


def test_local_round_trip(tmp_path, blocked, exact, docs_queries):
    save_index(blocked, str(tmp_path / "blocked"))
    save_index(exact, str(tmp_path / "exact"))
    b2 = load_blocked(str(tmp_path / "blocked"))
    e2 = load_exact(str(tmp_path / "exact"))
    for name, arr in blocked.arrays().items():
        np.testing.assert_array_equal(arr, b2.arrays()[name])
        assert arr.dtype == b2.arrays()[name].dtype
    assert b2.config == blocked.config and b2.n_docs == blocked.n_docs
    # the statistics the derived fields came from travel with the index
    assert b2.used_terms == np.unique(docs_queries[0].indices).size == blocked.used_terms
    assert b2.derivation() == blocked.derivation() != {}
    assert b2.nbytes == blocked.nbytes and e2.nbytes == exact.nbytes
    _same_results(blocked, b2, docs_queries[1])
    _same_results(exact, e2, docs_queries[1])
    assert isinstance(load_index(str(tmp_path / "blocked")), BlockedIndex)
    assert isinstance(load_index("file://" + str(tmp_path / "exact")), ExactIndex)


def test_s3_round_trip(s3_server, blocked, exact, docs_queries):
    opts = s3_server["storage_options"]
    base = f"s3://{s3_server['bucket']}/index-test"
    save_index(blocked, f"{base}/blocked", storage_options=opts)
    save_index(exact, f"{base}/exact", storage_options=opts)
    _same_results(blocked, load_blocked(f"{base}/blocked", storage_options=opts),
                  docs_queries[1])
    _same_results(exact, load_exact(f"{base}/exact", storage_options=opts),
                  docs_queries[1])
    with pytest.raises(FileExistsError):
        save_index(blocked, f"{base}/blocked", storage_options=opts)
    loc = resolve(f"{base}/blocked/entry_codes/zarr.json", opts)
    loc.fs.rm(loc.path)
    with pytest.raises(IndexFormatError, match="'entry_codes' is missing"):
        load_blocked(f"{base}/blocked", storage_options=opts)


def test_empty_index_round_trip(tmp_path):
    for index in (BlockedIndex.build(sp.csr_matrix((0, 5), dtype=np.float32)),
                  ExactIndex(sp.csr_matrix((0, 5), dtype=np.float32))):
        path = str(tmp_path / type(index).__name__)
        save_index(index, path)
        loaded = load_index(path)
        assert loaded.n_docs == 0 and loaded.vocab_size == 5
        assert (loaded.search(np.ones((1, 5)), k=2)[0] == -1).all()


def test_save_is_write_once(tmp_path, blocked):
    save_index(blocked, str(tmp_path / "x"))
    with pytest.raises(FileExistsError):
        save_index(blocked, str(tmp_path / "x"))
    (tmp_path / "empty").mkdir()
    save_index(blocked, str(tmp_path / "empty"))   # an empty directory is a fresh location


def _saved(tmp_path, index, name="ix"):
    path = tmp_path / name
    save_index(index, str(path))
    return path


def _chunk_files(array_dir):
    return [os.path.join(r, f) for r, _, fs in os.walk(array_dir) for f in fs if f != "zarr.json"]


def test_truncated_group_is_refused(tmp_path, blocked):
    path = _saved(tmp_path, blocked)
    chunk = _chunk_files(path / "fwd_words")[0]
    os.remove(chunk)   # zarr would read the fill value: the checksum notices
    with pytest.raises(IndexFormatError, match="'fwd_words' fails its checksum"):
        load_blocked(str(path))


def test_interrupted_write_is_refused(tmp_path, blocked):
    path = _saved(tmp_path, blocked)
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"] = {}      # the writer died before the attributes (the commit point)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="no 'format' attribute"):
        load_blocked(str(path))


def test_corrupt_chunk_is_refused(tmp_path, exact):
    path = _saved(tmp_path, exact)
    chunk = _chunk_files(path / "data")[0]
    with open(chunk, "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xfe")
    with pytest.raises(IndexFormatError, match="'data'"):
        load_exact(str(path))


def _set_attrs(path, **changes):
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].update(changes)
    meta_path.write_text(json.dumps(meta))


def test_wrong_version_and_foreign_groups(tmp_path, blocked, exact):
    import zarr

    path = _saved(tmp_path, blocked, "v")
    _set_attrs(path, format_version=99)
    with pytest.raises(IndexFormatError, match="format version 99"):
        load_blocked(str(path))
    path = _saved(tmp_path, exact, "e")
    with pytest.raises(IndexFormatError, match="expected 'lsr-pipeline/blocked-index'"):
        load_blocked(str(path))
    foreign = tmp_path / "foreign"
    g = zarr.create_group(store=str(foreign), zarr_format=3)
    g.attrs["format"] = "something-else"
    g.create_array("x", shape=(3,), dtype="f4")
    with pytest.raises(IndexFormatError, match="something-else"):
        load_index(str(foreign))
    with pytest.raises(IndexFormatError):
        load_blocked(str(tmp_path / "does-not-exist"))
    (tmp_path / "not-zarr").mkdir()
    (tmp_path / "not-zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(IndexFormatError):
        load_exact(str(tmp_path / "not-zarr"))


def test_an_older_format_version_asks_for_a_rebuild(tmp_path, blocked):
    path = _saved(tmp_path, blocked, "old")
    _set_attrs(path, format_version=blocked.FORMAT_VERSION - 1)
    with pytest.raises(IndexFormatError, match="older lsr-pipeline: build it again"):
        load_blocked(str(path))


@pytest.mark.parametrize("damage, message", [
    ("end bit cleared", "summary pair offsets are inconsistent|overrun"),
    ("zero delta", "not ascending"),
    ("group term past the vocabulary", "not ascending inside the vocabulary"),
    ("group entry offset", "offsets are inconsistent"),
])
def test_damaged_summaries_are_refused(blocked, damage, message):
    """Summary arrays that pass their shape checks but break the layout: the structural check
    names the problem instead of letting the kernels read out of bounds."""
    a = {name: arr.copy() for name, arr in blocked.arrays().items()}
    if damage == "end bit cleared":
        word = int(np.flatnonzero(a["pair_ends"])[0])
        a["pair_ends"][word] &= a["pair_ends"][word] - np.uint64(1)   # its lowest set bit
    elif damage == "zero delta":
        a["pair_deltas"][int(np.flatnonzero(a["pair_deltas"] < 128)[0])] = 0
    elif damage == "group term past the vocabulary":
        a["group_term"][0] = blocked.vocab_size
    else:
        a["group_entry"][1] += 1
    with pytest.raises(ValueError, match=message):
        BlockedIndex.from_arrays(a, blocked.config, blocked.n_docs, blocked.vocab_size,
                                 blocked.nnz)


def test_wrong_dtype_or_shape_is_refused(tmp_path, blocked):
    import zarr

    path = _saved(tmp_path, blocked, "d")
    g = zarr.open_group(store=str(path), mode="r+", zarr_format=3)
    del g["block_min"]
    g.create_array("block_min", data=blocked.arrays()["block_min"].astype(np.float64))
    with pytest.raises(IndexFormatError, match="'block_min' has dtype"):
        load_blocked(str(path))
    path = _saved(tmp_path, blocked, "s")
    _set_attrs(path, n_docs=blocked.n_docs + 1)
    with pytest.raises(IndexFormatError, match="'fwd_words' has shape"):
        load_blocked(str(path))


def test_consistent_checksums_but_broken_structure_is_refused(tmp_path, blocked):
    """A group whose checksums match but whose postings point into the middle of a
    document: loading must refuse it rather than let the kernels read out of bounds."""
    import zarr

    path = _saved(tmp_path, blocked, "b")
    g = zarr.open_group(store=str(path), mode="r+", zarr_format=3)
    postings = blocked.arrays()["postings"].copy()
    postings[0] += 1
    g["postings"][:] = postings
    meta = dict(g.attrs["arrays"])
    meta["postings"] = {**meta["postings"], "crc32": zlib.crc32(postings.tobytes()) & 0xFFFFFFFF}
    g.attrs["arrays"] = meta
    with pytest.raises(IndexFormatError, match="posting does not point at a document"):
        load_blocked(str(path))


def test_check_index_refuses_what_a_load_refuses_first(tmp_path, blocked, exact):
    """The serving controller's pre-deploy check: one small read, and the same refusals a
    load starts with (missing, uncommitted, another kind or version, another size); a
    corrupt chunk is left to the load (its checksum needs the whole array)."""
    from pipeline.format.index_group import check_index

    path = _saved(tmp_path, blocked, "ok")
    check_index(str(path), None, "blocked", blocked.n_docs)
    with pytest.raises(IndexFormatError, match="no index here|not a Zarr"):
        check_index(str(tmp_path / "missing"), None, "blocked", blocked.n_docs)
    with pytest.raises(IndexFormatError, match=f"holds {blocked.n_docs} documents"):
        check_index(str(path), None, "blocked", blocked.n_docs + 1)
    with pytest.raises(IndexFormatError, match="expected 'lsr-pipeline/exact-index'"):
        check_index(str(path), None, "exact", blocked.n_docs)
    with pytest.raises(IndexFormatError, match="unknown index kind"):
        check_index(str(path), None, "bm25", blocked.n_docs)
    _set_attrs(path, format_version=99)
    with pytest.raises(IndexFormatError, match="format version 99"):
        check_index(str(path), None, "blocked", blocked.n_docs)
    uncommitted = _saved(tmp_path, exact, "uncommitted")
    meta = json.loads((uncommitted / "zarr.json").read_text())
    meta["attributes"] = {}
    (uncommitted / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="no 'format' attribute"):
        check_index(str(uncommitted), None, "exact", exact.n_docs)
    corrupt = _saved(tmp_path, exact, "corrupt")
    with open(_chunk_files(corrupt / "data")[0], "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xfe")
    check_index(str(corrupt), None, "exact", exact.n_docs)          # not its job
    with pytest.raises(IndexFormatError, match="'data'"):
        load_exact(str(corrupt))
