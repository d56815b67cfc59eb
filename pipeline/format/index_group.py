"""Index persistence: one Zarr v3 group per index, on any fsspec URL (local path or s3://).

Group attributes hold the format name and version, the sizes, the build parameters, and per
array its dtype, shape and CRC-32. Arrays are written first and the attributes last, so a
writer that died midway leaves a group without them, which `load` refuses. Loading checks
presence, dtype, shape and checksum of every array (a missing chunk reads back as the fill
value, so the checksum is what catches a truncated copy) and the pointer arrays' structure.
Nothing is ever unpickled. Saving is write-once: the target must not exist yet.

This module imports the index classes (it saves their `arrays()` and rebuilds them with
`from_arrays`); the classes never import it.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.index.bits import CODECS
from pipeline.index.blocked import BlockedIndex
from pipeline.index.config import BlockedIndexConfig
from pipeline.index.exact import ExactIndex
from pipeline.objstore.fs import exists, list_dir, resolve, zarr_store

CHUNK_BYTES = 64 * 1024 * 1024


class IndexFormatError(UserError, ValueError):
    """A stored index is missing, incomplete, corrupt, foreign, or of another version."""


def _crc32(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B")) & 0xFFFFFFFF


def _write_group(url: str, storage_options: dict | None, arrays: dict[str, np.ndarray],
                 attrs: dict[str, Any]) -> None:
    import zarr

    loc = resolve(url, storage_options)
    if exists(loc) and (not loc.is_local or list_dir(loc)):
        raise FileExistsError(f"{loc.url} already exists: indexes are written once, "
                              "to a fresh location")
    root = zarr.create_group(store=zarr_store(loc, read_only=False), zarr_format=3)
    meta = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        chunk = max(1, min(a.size, CHUNK_BYTES // max(1, a.itemsize)))
        z = root.create_array(name, shape=a.shape, dtype=a.dtype, chunks=(chunk,),
                              fill_value=0)
        # one chunk per write: zarr encodes the chunks of one write together, and a whole
        # large array at once held about another copy of it (the build's peak, at 100k docs)
        for lo in range(0, a.size, chunk):
            z[lo:lo + chunk] = a[lo:lo + chunk]
        meta[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "crc32": _crc32(a)}
    root.attrs.update({**attrs, "arrays": meta})   # the commit point: attributes last


def _open_group(url: str, storage_options: dict | None, fmt: str, version: int):
    import zarr

    loc = resolve(url, storage_options)
    try:
        root = zarr.open_group(store=zarr_store(loc, read_only=True), mode="r", zarr_format=3)
        attrs = dict(root.attrs)
    except FileNotFoundError as exc:
        raise IndexFormatError(f"{loc.url}: no index here ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for foreign data
        raise IndexFormatError(f"{loc.url}: not a Zarr v3 group ({type(exc).__name__}: "
                               f"{exc})") from exc
    found = attrs.get("format")
    if found is None:
        raise IndexFormatError(f"{loc.url}: group has no 'format' attribute: an incomplete "
                               "write or not an lsr-pipeline index")
    if found != fmt:
        raise IndexFormatError(f"{loc.url}: holds {found!r}, expected {fmt!r}")
    found_version = attrs.get("format_version")
    if found_version != version:
        older = isinstance(found_version, int) and found_version < version
        raise IndexFormatError(f"{loc.url}: format version {found_version!r}, this code reads "
                               f"version {version}" + ("; it was built by an older "
                               "lsr-pipeline: build it again (`lsr reindex` of the same corpus "
                               "rebuilds every shard's index from the stored vectors)"
                               if older else ""))
    return loc, root, attrs


def _arrays_meta(loc, attrs: dict) -> dict:
    """The per-array records (dtype, shape, CRC-32) the commit wrote last."""
    meta = attrs.get("arrays")
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{loc.url}: 'arrays' attribute missing")
    return meta


def _read_arrays(loc, root, attrs: dict, expected: dict[str, tuple[tuple[str, ...], tuple]]
                 ) -> dict[str, np.ndarray]:
    """Read the named arrays, checking dtype (one of the allowed), shape and checksum."""
    meta = _arrays_meta(loc, attrs)
    out = {}
    for name, (dtypes, shape) in expected.items():
        if name not in meta:
            raise IndexFormatError(f"{loc.url}: array {name!r} not listed in the attributes")
        try:
            z = root[name]
        except KeyError as exc:
            raise IndexFormatError(f"{loc.url}: array {name!r} is missing") from exc
        dtype = np.dtype(z.dtype) if not hasattr(z.dtype, "to_native_dtype") else \
            np.dtype(z.dtype.to_native_dtype())
        if dtype.str not in dtypes or meta[name].get("dtype") != dtype.str:
            raise IndexFormatError(f"{loc.url}: array {name!r} has dtype {dtype.str}, "
                                   f"expected one of {list(dtypes)}")
        if tuple(z.shape) != tuple(shape) or list(shape) != meta[name].get("shape"):
            raise IndexFormatError(f"{loc.url}: array {name!r} has shape {tuple(z.shape)}, "
                                   f"expected {tuple(shape)}")
        try:
            a = np.asarray(z[:]) if z.size else np.zeros(shape, dtype)
        except Exception as exc:  # noqa: BLE001 - a chunk that cannot be decoded
            raise IndexFormatError(f"{loc.url}: array {name!r} cannot be read "
                                   f"({type(exc).__name__}: {exc})") from exc
        if _crc32(a) != meta[name].get("crc32"):
            raise IndexFormatError(f"{loc.url}: array {name!r} fails its checksum "
                                   "(truncated or corrupt copy)")
        out[name] = a
    return out


def _int_attr(loc, attrs: dict, name: str) -> int:
    v = attrs.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise IndexFormatError(f"{loc.url}: attribute {name!r} missing or invalid ({v!r})")
    return v


def _check_ptr(loc, name: str, ptr: np.ndarray, total: int) -> None:
    if ptr.size == 0 or ptr[0] != 0 or int(ptr[-1]) != total or (np.diff(
            ptr.astype(np.int64)) < 0).any():
        raise IndexFormatError(f"{loc.url}: pointer array {name!r} is inconsistent")


# ---------------------------------------------------------------------------------------------
# ExactIndex
# ---------------------------------------------------------------------------------------------

def save_exact(index: ExactIndex, url: str, storage_options: dict | None = None) -> None:
    _write_group(url, storage_options, index.arrays(),
                 {"format": index.FORMAT, "format_version": index.FORMAT_VERSION,
                  "n_docs": index.n_docs, "vocab_size": index.vocab_size,
                  "nnz": int(index.docs.nnz)})


def load_exact(url: str, storage_options: dict | None = None) -> ExactIndex:
    loc, root, attrs = _open_group(url, storage_options, ExactIndex.FORMAT,
                                   ExactIndex.FORMAT_VERSION)
    n, vocab, nnz = (_int_attr(loc, attrs, k) for k in ("n_docs", "vocab_size", "nnz"))
    a = _read_arrays(loc, root, attrs, {"indptr": (("<i8",), (n + 1,)),
                                        "indices": (("<i4",), (nnz,)),
                                        "data": (("<f4",), (nnz,))})
    _check_ptr(loc, "indptr", a["indptr"], nnz)
    try:
        return ExactIndex.from_arrays(a, n, vocab)
    except ValueError as exc:
        raise IndexFormatError(f"{loc.url}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# BlockedIndex
# ---------------------------------------------------------------------------------------------

def save_blocked(index: BlockedIndex, url: str, storage_options: dict | None = None) -> None:
    a = index.arrays()
    _write_group(url, storage_options, a, {
        "format": index.FORMAT, "format_version": index.FORMAT_VERSION,
        "n_docs": index.n_docs, "vocab_size": index.vocab_size, "nnz": index.nnz,
        "n_blocks": int(a["block_min"].size), "n_postings_total": int(a["postings"].size),
        "n_segments": int(a["seg_pair_ptr"].size - 1),
        "n_summary_pairs": int(index.stats()["summary_pairs"]),
        "n_summary_groups": int(a["group_term"].size),
        "n_summary_delta_bytes": int(a["pair_deltas"].size),
        "n_summary_entries": int(a["entry_codes"].size),
        "n_summary_block_bytes": int(a["entry_blocks"].size),
        "config": index.config.to_dict(),
        **({} if index.used_terms is None else {"used_terms": index.used_terms}),
    })


def _blocked_config(loc, attrs: dict) -> BlockedIndexConfig:
    try:
        return BlockedIndexConfig.from_dict(dict(attrs.get("config") or {}))
    except (TypeError, ValueError) as exc:
        raise IndexFormatError(f"{loc.url}: invalid build parameters ({exc})") from exc


def _used_terms(loc, attrs: dict) -> int | None:
    """The shard's terms in use, which its derived parameters came from; None for an index
    saved before they were recorded (2026-12-05)."""
    return _int_attr(loc, attrs, "used_terms") if "used_terms" in attrs else None


def load_blocked(url: str, storage_options: dict | None = None) -> BlockedIndex:
    loc, root, attrs = _open_group(url, storage_options, BlockedIndex.FORMAT,
                                   BlockedIndex.FORMAT_VERSION)
    n, vocab, nnz, nb, npost, nseg, npairs, ngroups, ndelta, nent, nblockbytes = (
        _int_attr(loc, attrs, k) for k in (
            "n_docs", "vocab_size", "nnz", "n_blocks", "n_postings_total", "n_segments",
            "n_summary_pairs", "n_summary_groups", "n_summary_delta_bytes",
            "n_summary_entries", "n_summary_block_bytes"))
    config = _blocked_config(loc, attrs)
    word = np.dtype(CODECS[config.forward_values].word_dtype).str
    a = _read_arrays(loc, root, attrs, {
        "fwd_words": ((word,), (2 * n + nnz,)),
        "list_block_ptr": (("<i8",), (vocab + 1,)),
        "block_post_ptr": (("<u4",), (nb + 1,)),
        "postings": (("<u4",), (npost,)),
        "block_min": (("<f4",), (nb,)),
        "block_step": (("<f4",), (nb,)),
        "list_seg_ptr": (("<i8",), (vocab + 1,)),
        "seg_block_ptr": (("<i8",), (nseg + 1,)),
        "seg_pair_ptr": (("<i8",), (nseg + 1,)),
        "seg_group_ptr": (("<i8",), (nseg + 1,)),
        "group_term": (("<u4",), (ngroups,)),
        "group_entry": (("<u4",), (ngroups,)),
        "group_byte": (("<u4",), (ngroups,)),
        "pair_deltas": (("|u1",), (ndelta,)),
        "pair_ends": (("<u8",), ((nent + 63) // 64,)),
        "seg_block_bits": (("|u1",), (nseg,)),
        "seg_block_byte": (("<i8",), (nseg + 1,)),
        "entry_codes": (("|u1",), (nent,)),
        "entry_blocks": (("|u1",), (nblockbytes,)),
    })
    _check_ptr(loc, "list_block_ptr", a["list_block_ptr"], nb)
    _check_ptr(loc, "block_post_ptr", a["block_post_ptr"], npost)
    _check_ptr(loc, "list_seg_ptr", a["list_seg_ptr"], nseg)
    _check_ptr(loc, "seg_pair_ptr", a["seg_pair_ptr"], npairs)
    _check_ptr(loc, "seg_group_ptr", a["seg_group_ptr"], ngroups)
    _check_ptr(loc, "seg_block_ptr", a["seg_block_ptr"], nb)
    try:
        return BlockedIndex.from_arrays(a, config, n, vocab, nnz, _used_terms(loc, attrs))
    except ValueError as exc:
        raise IndexFormatError(f"{loc.url}: {exc}") from exc


def _committed_attrs(url: str, storage_options: dict | None, kind: str, n_docs: int):
    """(location, attributes) of the index group at ``url`` after `check_index`'s checks."""
    cls = {"blocked": BlockedIndex, "exact": ExactIndex}.get(kind)
    if cls is None:
        raise IndexFormatError(f"{url}: unknown index kind {kind!r}")
    loc, _, attrs = _open_group(url, storage_options, cls.FORMAT, cls.FORMAT_VERSION)
    _arrays_meta(loc, attrs)
    if _int_attr(loc, attrs, "n_docs") != n_docs:
        raise IndexFormatError(f"{loc.url}: holds {attrs.get('n_docs')} documents, "
                               f"the manifest says {n_docs}")
    return loc, attrs


def check_index(url: str, storage_options: dict | None, kind: str, n_docs: int) -> None:
    """What a load refuses first, without reading an array: the group is there, committed
    (its attributes written), of ``kind`` ("blocked" or "exact") at this code's format
    version, and holds ``n_docs`` documents. One small read; raises `IndexFormatError`."""
    _committed_attrs(url, storage_options, kind, n_docs)


def index_info(url: str, storage_options: dict | None, kind: str, n_docs: int) -> dict:
    """What a shard's index group adds to its manifest entry, from the same one read as
    `check_index` (and after its checks): for a blocked index its build and search
    parameters (``config``; ``config["derived"]`` names the derived ones), the shard's terms
    in use and how each derived one came about (``derivation``; both empty for an index
    saved before the terms in use were recorded). Nothing for an exact index."""
    loc, attrs = _committed_attrs(url, storage_options, kind, n_docs)
    if kind != "blocked":
        return {}
    config, used = _blocked_config(loc, attrs), _used_terms(loc, attrs)
    vocab, nnz = _int_attr(loc, attrs, "vocab_size"), _int_attr(loc, attrs, "nnz")
    return {"config": config.to_dict(), "used_terms": used,
            "derivation": {} if used is None else config.derivation(n_docs, vocab, nnz, used)}


def load_index(url: str, storage_options: dict | None = None) -> BlockedIndex | ExactIndex:
    """Load whichever index type the group at ``url`` holds."""
    import zarr

    loc = resolve(url, storage_options)
    try:
        fmt = zarr.open_group(store=zarr_store(loc, read_only=True), mode="r",
                              zarr_format=3).attrs.get("format")
    except Exception as exc:  # noqa: BLE001
        raise IndexFormatError(f"{loc.url}: not a Zarr v3 group ({exc})") from exc
    if fmt == BlockedIndex.FORMAT:
        return load_blocked(url, storage_options)
    if fmt == ExactIndex.FORMAT:
        return load_exact(url, storage_options)
    raise IndexFormatError(f"{loc.url}: holds {fmt!r}, not an lsr-pipeline index")


def save_index(index: BlockedIndex | ExactIndex, url: str, storage_options: dict | None = None
               ) -> None:
    """Write either index type as a new Zarr v3 group at ``url`` (local path or s3://)."""
    if isinstance(index, BlockedIndex):
        save_blocked(index, url, storage_options)
    elif isinstance(index, ExactIndex):
        save_exact(index, url, storage_options)
    else:
        raise TypeError(f"cannot save a {type(index).__name__}")
