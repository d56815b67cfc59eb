"""A shard's postings: the forward CSR of its documents, their ids and content fingerprints.

Zarr v3 group layout (attributes ``format="lsr-postings"``, ``version``):

    indptr        int64   (n_docs + 1,)   row pointers of the forward CSR
    indices       int32   (nnz,)          term ids, ascending within a row
    values        float16 | float32 (nnz,) term weights (> 0)
    doc_ids       string  (n_docs,)       external document ids, shard order
    fingerprints  uint64  (n_docs,)       content fingerprint of each document's text
                                          (of its vector for a pre-encoded corpus)

The checksum (sha256 over the arrays' bytes in the order above) is stored in the
attributes and in the manifest; `verify` recomputes it from storage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from pipeline.errors import UserError
from pipeline.faults import fault_point
from pipeline.objstore import Location, with_retries, zarr_store

POSTINGS_FORMAT = "lsr-postings"
POSTINGS_VERSION = 1
_CHUNK = 1 << 22  # 4 Mi elements: objects of 8-16 MiB on S3 before compression


class PostingsFormatError(UserError, ValueError):
    """A postings group is missing, truncated, or not ours."""


def hash_strings(strings, words: int = 1) -> np.ndarray:
    """Hashes of strings (blake2b of the UTF-8 bytes, 64 bits per word, little-endian): the
    project's one string hasher, for id partitioning and lookups and content fingerprints.

    words=1: uint64 (n,); words=2: uint64 (n, 2), a 128-bit hash (word 0 first)."""
    return _hash_bytes([text.encode("utf-8") for text in strings], words)


def _hash_bytes(items, words: int = 1) -> np.ndarray:
    """blake2b of each bytes object, `words` little-endian 64-bit words each (see `hash_strings`)."""
    out = np.empty((len(items), words), dtype=np.uint64)
    for i, data in enumerate(items):
        digest = hashlib.blake2b(data, digest_size=8 * words).digest()
        for w in range(words):
            out[i, w] = int.from_bytes(digest[8 * w:8 * w + 8], "little")
    return out[:, 0] if words == 1 else out


def _with_fields(contents: list[bytes], fields_json) -> list[bytes]:
    """Each content's bytes, then a NUL and its kept fields' compact JSON when fields are kept.
    JSON text never holds a raw NUL, so the last NUL splits content from fields unambiguously."""
    if fields_json is None:
        return contents
    return [c + b"\x00" + f.encode("utf-8") for c, f in zip(contents, fields_json)]


def fingerprint_texts(texts, fields_json=None) -> np.ndarray:
    """Content fingerprints of document texts, for change detection (`hash_strings`).
    `fields_json`: per document, its kept fields as compact JSON (`lsr index --field`): a
    changed field is a changed document. None (no kept fields) hashes the text alone."""
    if fields_json is None:
        return hash_strings(texts)
    return _hash_bytes(_with_fields([t.encode("utf-8") for t in texts], fields_json))


def fingerprint_vectors(indices, values, fields_json=None) -> np.ndarray:
    """Content fingerprints of pre-encoded document vectors (uint64 (n,)): the same blake2b
    over canonical bytes, the term ids as little-endian int32 then the weights as
    little-endian float32 (ascending ids, as `pipeline.data.vectors` parses them). A vector
    whose ids or float32 weights change gets a new fingerprint. `fields_json`: as
    `fingerprint_texts`'."""
    return _hash_bytes(_with_fields([np.ascontiguousarray(i, dtype="<i4").tobytes()
                                     + np.ascontiguousarray(v, dtype="<f4").tobytes()
                                     for i, v in zip(indices, values)], fields_json))


@dataclass
class ShardPostings:
    doc_ids: np.ndarray          # object/str array (n_docs,)
    fingerprints: np.ndarray     # uint64 (n_docs,)
    vectors: sp.csr_matrix       # float32 (n_docs, vocab_size), sorted indices
    checksum: str | None = None  # as stored (set by read_postings)

    def __post_init__(self) -> None:
        n = self.vectors.shape[0]
        if len(self.doc_ids) != n or len(self.fingerprints) != n:
            raise ValueError(f"postings: {n} vectors but {len(self.doc_ids)} ids and "
                             f"{len(self.fingerprints)} fingerprints")

    @property
    def n_docs(self) -> int:
        return self.vectors.shape[0]

    @property
    def nnz(self) -> int:
        return int(self.vectors.nnz)


def _checksum(indptr, indices, values, doc_ids, fingerprints) -> str:
    h = hashlib.sha256()
    for arr in (indptr, indices, values):
        h.update(np.ascontiguousarray(arr))   # the buffer itself: no bytes copy
    for doc_id in doc_ids:
        h.update(str(doc_id).encode("utf-8"))
        h.update(b"\0")
    h.update(np.ascontiguousarray(fingerprints, dtype=np.uint64))
    return h.hexdigest()


def write_postings(loc: Location, postings: ShardPostings, *, values_dtype: str = "float16",
                   stats: dict | None = None) -> str:
    """Write a shard's postings group (write-once) and return its checksum."""
    import zarr

    if values_dtype not in ("float16", "float32"):
        raise ValueError(f"values_dtype must be float16 or float32, got {values_dtype!r}")
    csr = postings.vectors.tocsr()
    csr.sort_indices()
    indptr = csr.indptr.astype(np.int64)
    indices = csr.indices.astype(np.int32, copy=False)    # a shard's vectors: no second copy
    values = csr.data.astype(values_dtype, copy=False)
    doc_ids = np.asarray([str(x) for x in postings.doc_ids], dtype=object)
    fingerprints = np.asarray(postings.fingerprints, dtype=np.uint64)
    checksum = _checksum(indptr, indices, values, doc_ids, fingerprints)

    def _write() -> None:
        group = zarr.open_group(zarr_store(loc, read_only=False), mode="w")
        for name, arr, dtype in (("indptr", indptr, "int64"), ("indices", indices, "int32"),
                                 ("values", values, values_dtype),
                                 ("fingerprints", fingerprints, "uint64")):
            z = group.create_array(name, shape=arr.shape, dtype=dtype,
                                   chunks=(max(1, min(_CHUNK, arr.shape[0])),))
            if arr.size:
                z[:] = arr
        z = group.create_array("doc_ids", shape=doc_ids.shape, dtype=str,
                               chunks=(max(1, min(1 << 18, doc_ids.shape[0])),))
        if doc_ids.size:
            z[:] = doc_ids
        fault_point("commit:mid-postings")
        # Attributes last: a group without them reads as truncated.
        group.attrs.update({
            "format": POSTINGS_FORMAT, "version": POSTINGS_VERSION,
            "n_docs": int(csr.shape[0]), "vocab_size": int(csr.shape[1]), "nnz": int(csr.nnz),
            "values_dtype": values_dtype, "checksum": checksum, "stats": stats or {},
        })

    with_retries(_write, what=f"write postings {loc.url}")
    return checksum


def read_doc_ids(loc: Location) -> np.ndarray:
    """Only the document ids of a postings group (not its vectors)."""
    return read_columns(loc, ("doc_ids",))["doc_ids"]


def read_columns(loc: Location, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Some arrays of a postings group (e.g. doc_ids, fingerprints), checked against n_docs."""
    import zarr

    try:
        group = zarr.open_group(zarr_store(loc, read_only=True), mode="r")
        attrs = dict(group.attrs)
        if attrs.get("format") != POSTINGS_FORMAT:
            raise PostingsFormatError(f"{loc.url}: not a postings group")
        out = {name: group[name][:] for name in names}
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise PostingsFormatError(f"{loc.url}: postings group or array missing ({exc})") from exc
    for name, arr in out.items():
        if len(arr) != attrs["n_docs"] + (1 if name == "indptr" else 0):
            raise PostingsFormatError(f"{loc.url}: {name} has {len(arr)} entries, n_docs={attrs['n_docs']}")
    if "doc_ids" in out:
        out["doc_ids"] = np.asarray(out["doc_ids"], dtype=object)
    return out


def read_postings(loc: Location, *, verify: bool = False) -> ShardPostings:
    """Read a postings group; with `verify`, recompute and compare its checksum."""
    import zarr

    try:
        group = zarr.open_group(zarr_store(loc, read_only=True), mode="r")
        attrs = dict(group.attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise PostingsFormatError(f"{loc.url}: no postings group") from exc
    if attrs.get("format") != POSTINGS_FORMAT:
        raise PostingsFormatError(f"{loc.url}: not a postings group (format={attrs.get('format')!r})")
    if attrs.get("version") != POSTINGS_VERSION:
        raise PostingsFormatError(f"{loc.url}: postings version {attrs.get('version')!r}, "
                                  f"this build reads {POSTINGS_VERSION}")
    try:
        arrays = {name: group[name][:] for name in
                  ("indptr", "indices", "values", "doc_ids", "fingerprints")}
    except KeyError as exc:
        raise PostingsFormatError(f"{loc.url}: postings array missing: {exc}") from exc
    n, nnz = attrs["n_docs"], attrs["nnz"]
    if arrays["indptr"].shape != (n + 1,) or arrays["indices"].shape != (nnz,) \
            or arrays["values"].shape != (nnz,) or len(arrays["doc_ids"]) != n \
            or arrays["fingerprints"].shape != (n,) or (n and arrays["indptr"][-1] != nnz):
        raise PostingsFormatError(f"{loc.url}: array shapes disagree with n_docs={n}, nnz={nnz}")
    if verify:
        actual = _checksum(arrays["indptr"], arrays["indices"], arrays["values"],
                           arrays["doc_ids"], arrays["fingerprints"])
        if actual != attrs["checksum"]:
            raise PostingsFormatError(f"{loc.url}: checksum mismatch (stored {attrs['checksum'][:12]}, "
                                      f"actual {actual[:12]})")
    vectors = sp.csr_matrix((arrays["values"].astype(np.float32), arrays["indices"], arrays["indptr"]),
                            shape=(n, attrs["vocab_size"]))
    return ShardPostings(doc_ids=np.asarray(arrays["doc_ids"], dtype=object),
                         fingerprints=arrays["fingerprints"], vectors=vectors,
                         checksum=attrs["checksum"])
