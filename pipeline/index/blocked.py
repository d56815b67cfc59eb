"""The Seismic-style blocked inverted index (Bruch, Nardini, Rulli, Venturini, SIGIR 2024).

Build: static pruning (global threshold) -> per list, random-centroid clustering into
contiguous blocks -> per block a u8-quantised summary (coordinate-wise max, pruned to
``summary_energy`` of its L1 mass) -> a doc-major forward index for exact scoring.
Search: see `pipeline.index.search_kernels`.

Array layout (all little-endian numpy arrays; ``V`` vocabulary size, ``N`` documents,
``B`` blocks, ``P`` postings, ``S`` summary segments, ``T`` (segment, summary term) pairs,
``G`` pair groups, ``E`` summary entries):

``fwd_words`` uint32 (float16 values) or uint64 (float32 values), ``2N + nnz``
    Forward index, documents in corpus order. Document ``d`` starts at word
    ``2d + nnz(docs[:d])``: a header ``[d, nnz(d)]`` then its entries in ascending term
    order, one word each (bit layout in `pipeline.index.bits`).
``list_block_ptr`` int64, ``V + 1``
    The blocks of term ``t``'s posting list are ``list_block_ptr[t]:list_block_ptr[t+1]``.
``block_post_ptr`` uint32, ``B + 1``
    The postings of block ``b`` are ``postings[block_post_ptr[b]:block_post_ptr[b+1]]``.
``postings`` uint32, ``P``
    Word offset in ``fwd_words`` of each posting's document header (not a doc id: scoring
    needs no second lookup). Inside a block, ascending document order.
``block_min``, ``block_step`` float32, ``B``
    Summary dequantisation: ``value = block_min[b] + block_step[b] * code``.
``list_seg_ptr`` int64, ``V + 1``
    Summaries are stored inverted (a query touches only the entries of its own terms), per
    *segment* of at most 256 consecutive blocks of one list (so a block id inside a segment
    fits 8 bits). The segments of term ``t``'s list are ``list_seg_ptr[t]:list_seg_ptr[t+1]``.
``seg_block_ptr``, ``seg_pair_ptr``, ``seg_group_ptr`` int64, ``S + 1``
    Segment ``s`` covers blocks ``seg_block_ptr[s]:seg_block_ptr[s+1]``, (term, blocks)
    pairs ``seg_pair_ptr[s]:seg_pair_ptr[s+1]`` (terms strictly ascending) and pair groups
    ``seg_group_ptr[s]:seg_group_ptr[s+1]``: its pairs cut into groups of 32 (`PAIR_GROUP`;
    the last may be shorter), so a segment of ``n`` pairs has ``ceil(n / 32)`` groups.
``group_term``, ``group_entry``, ``group_byte`` uint32, ``G``
    Group ``g``'s first pair: its term, the index of its first entry (in ``entry_codes``), and the
    offset in ``pair_deltas`` of the group's second pair's delta.
``pair_deltas`` uint8
    Every pair but a group's first, in order: its term minus the previous pair's, as a LEB128
    varint (7 bits a byte, low first, high bit set on all but the last byte; one byte for a
    delta under 128). Each group's deltas follow the previous group's.
``pair_ends`` uint64, ``ceil(E / 64)``
    Bit ``j % 64`` of word ``j // 64`` is set when entry ``j`` is the last of its pair (so no
    per-pair count is stored: a pair's entries run to the next set bit, and the search finds
    the ``k``-th pair after a known one with a POPCNT a word).
``entry_codes`` uint8, ``E``
    Per pair, ascending block: the block's u8 summary code for the pair's term (value
    ``block_min + block_step * code``). Pair ``p``'s entries follow pair ``p - 1``'s.
``seg_block_bits`` uint8, ``S``; ``seg_block_byte`` int64, ``S + 1``; ``entry_blocks`` uint8
    The segment-local block of each entry, packed per segment at the segment's width ``w =
    seg_block_bits[s]``, the fewest bits that count its blocks (0 for one block; at most 8).
    The ``k``-th entry of segment ``s`` has its block in bits ``k * w .. k * w + w - 1``
    counted little-endian from byte ``seg_block_byte[s]`` (an id may straddle two bytes). Two
    zero bytes follow the last segment, so reading any id as two bytes stays in the array.

So a summary entry costs one byte and ``w + 1`` bits (on splade-tiny collections segments
hold 1 to 31 blocks and ``w`` averages 4-5 bits), and a pair about 1.4 bytes (its delta plus
12 bytes a group of 32): 2.4-2.8 bytes an entry in all on those collections (BENCHMARKS.md
section 7, "A smaller summary layout").
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import scipy.sparse as sp

import pipeline.index.build_kernels as bk
import pipeline.index.search_kernels as sk
from pipeline.index.bits import CODECS, HALF_MAX, EntryCodec
from pipeline.index.allowed import AllowedDocs
from pipeline.index.config import FILTER_EXACT_FRACTION, BlockedIndexConfig
from pipeline.index.fastcall import FastCall, numba_threads
from pipeline.index.topk import empty_results
from pipeline.index.validate import (as_csr, check_float, check_int, check_k, check_queries,
                                     check_threads)

log = logging.getLogger(__name__)

MAX_WORDS = 1 << 32             # postings are uint32 word offsets
_NO_FILTER = np.zeros(0, np.uint64)   # the kernels' "blocked" bitset when nothing is filtered

ARRAY_NAMES = ("fwd_words", "list_block_ptr", "block_post_ptr", "postings", "block_min",
               "block_step", "list_seg_ptr", "seg_block_ptr", "seg_pair_ptr", "seg_group_ptr",
               "group_term", "group_entry", "group_byte", "pair_deltas", "pair_ends",
               "seg_block_bits", "seg_block_byte", "entry_codes", "entry_blocks")
SUMMARY_ARRAYS = ARRAY_NAMES[ARRAY_NAMES.index("block_min"):]


def forward_words(csr: sp.csr_matrix, codec: EntryCodec) -> np.ndarray:
    """The forward index of a canonical CSR matrix (layout in the module docstring)."""
    n_docs = csr.shape[0]
    lengths = np.diff(csr.indptr)
    words = np.empty(2 * n_docs + csr.nnz, dtype=codec.word_dtype)
    starts = 2 * np.arange(n_docs, dtype=np.int64) + csr.indptr[:-1]
    words[starts] = np.arange(n_docs, dtype=codec.word_dtype)
    words[starts + 1] = lengths.astype(codec.word_dtype)
    entry_pos = np.arange(csr.nnz, dtype=np.int64) + 2 * np.repeat(
        np.arange(1, n_docs + 1, dtype=np.int64), lengths)
    words[entry_pos] = codec.encode(csr.indices, csr.data)
    return words


def kernel_view(arrays: dict[str, np.ndarray], codec: EntryCodec) -> sk.IndexView:
    """The arrays and decoding constants as the one `IndexView` the search kernels take."""
    wt = codec.word_dtype
    return sk.IndexView(
        arrays["fwd_words"], wt(codec.term_mask), wt(codec.hi_shift), wt(codec.lo_shift),
        np.float32(codec.query_scale), codec.name == "float32",
        arrays["list_block_ptr"], arrays["block_post_ptr"], arrays["postings"],
        arrays["block_min"], arrays["block_step"], arrays["list_seg_ptr"],
        arrays["seg_block_ptr"], arrays["seg_pair_ptr"], arrays["seg_group_ptr"],
        arrays["group_term"], arrays["group_entry"], arrays["group_byte"], arrays["pair_deltas"],
        arrays["pair_ends"], arrays["seg_block_bits"], arrays["seg_block_byte"],
        arrays["entry_codes"], arrays["entry_blocks"])


def used_terms(csr: sp.csr_matrix) -> int:
    """Terms that occur in some document of ``csr`` (the derived defaults' mean-list unit)."""
    return int(np.count_nonzero(np.bincount(csr.indices, minlength=csr.shape[1])))


def _global_keep(values: np.ndarray, budget: int) -> np.ndarray:
    """Mask of the ``budget`` largest values (ties at the threshold: first in term order)."""
    n = values.size
    if budget >= n:
        return np.ones(n, dtype=np.bool_)
    threshold = np.partition(values, n - budget)[n - budget]
    keep = values > threshold
    n_ties = budget - int(keep.sum())
    keep[np.flatnonzero(values == threshold)[:n_ties]] = True
    return keep


def _work_chunks(list_ptr: np.ndarray, centroid_fraction: float, n_chunks: int
                 ) -> list[tuple[int, int]]:
    """Split terms into contiguous ranges of about equal clustering + summary work."""
    m = np.diff(list_ptr).astype(np.float64)
    work = m * 256.0 + centroid_fraction * m * m + (m > 0)
    cum = np.cumsum(work)
    total = cum[-1] if cum.size else 0.0
    if total == 0:
        return [(0, len(m))]
    cuts = np.searchsorted(cum, total * np.arange(1, n_chunks) / n_chunks)
    bounds = np.unique(np.concatenate([[0], cuts, [len(m)]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class BlockedIndex:
    """Approximate top-k by sparse dot product over a Seismic-style blocked inverted index.

    Build with `BlockedIndex.build`; array layout in the module docstring.

    Results of `search`: ``(doc_idx int64 (nq, k), scores float32 (nq, k))``, each row
    sorted by score descending, ties by lower document index (corpus order). Scores are
    exact dot products of the query with the returned documents (in the forward index's
    precision: float16-rounded document weights unless ``forward_values='float32'``). Only
    documents with a positive score are returned; empty slots hold doc -1 and score 0.0.
    ``k`` may exceed ``n_docs``; a query with no terms returns only padding; an index of
    zero documents returns only padding.
    """

    FORMAT = "lsr-pipeline/blocked-index"
    FORMAT_VERSION = 2     # 2: grouped varint summary pairs (version 1: fixed pair records)

    def __init__(self, arrays: dict[str, np.ndarray], config: BlockedIndexConfig,
                 n_docs: int, vocab_size: int, nnz: int, used_terms: int | None = None) -> None:
        """Wrap already-built arrays; use `build` or `load` instead of calling this."""
        if not config.resolved:
            raise ValueError("config: an index needs every build and search parameter set "
                             "(BlockedIndexConfig.derived_for fills the missing ones)")
        self._a = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        self._config = config
        self._n_docs = int(n_docs)
        self._vocab = int(vocab_size)
        self._nnz = int(nnz)
        self._used_terms = None if used_terms is None else int(used_terms)
        self._codec = CODECS[config.forward_values]
        self._view = kernel_view(self._a, self._codec)
        lbp = arrays["list_block_ptr"]
        self._max_list_blocks = int(np.diff(lbp).max()) if lbp.size > 1 else 0
        self._local = threading.local()
        self._doc_start = None          # forward-index header offsets, on first filtered use
        self._doc_start_lock = threading.Lock()
        # the single-query path: argument types fixed per index by its view, `Scratch`
        # and `validate`
        self._serial = FastCall(sk.search_serial)

    # -- build -------------------------------------------------------------------------------
    @classmethod
    def build(cls, docs, config: BlockedIndexConfig | None = None, **overrides
              ) -> "BlockedIndex":
        """Build the index over ``docs`` ((n_docs, vocab) matrix, anything scipy converts).

        ``config`` defaults to `BlockedIndexConfig()`; keyword ``overrides`` replace single
        fields (``BlockedIndex.build(docs, n_postings=500)``). Parameters left at ``None``
        are derived from ``docs`` (`BlockedIndexConfig.derived_for`); the index's `config`
        holds the values used. Uses numba's thread count.
        """
        config = config if config is not None else BlockedIndexConfig()
        if not isinstance(config, BlockedIndexConfig):
            raise ValueError(f"config must be a BlockedIndexConfig, got {type(config).__name__}")
        if overrides:
            config = config.replace(**overrides)
        csr = as_csr(docs, "docs")
        n_docs, vocab = csr.shape
        n_used = used_terms(csr)
        config = config.derived_for(n_docs, vocab, csr.nnz, n_used)
        codec = CODECS[config.forward_values]
        if vocab > codec.max_vocab:
            raise ValueError(f"docs: vocabulary of {vocab} terms exceeds the {codec.max_vocab} "
                             f"that forward_values={codec.name!r} can address; use 'float32'")
        if codec.name == "float16" and csr.nnz and float(csr.data.max()) > HALF_MAX:
            raise ValueError(f"docs: weight {float(csr.data.max())} exceeds float16's "
                             f"{HALF_MAX}; use forward_values='float32'")
        if 2 * n_docs + csr.nnz >= MAX_WORDS:
            raise ValueError("docs: too many entries for one index (> 2**32 words); shard it")
        cap = config.list_cap
        t0 = time.perf_counter()
        threads = numba.get_num_threads()

        words = forward_words(csr, codec)
        doc_start = (2 * np.arange(n_docs, dtype=np.int64) + csr.indptr[:-1])

        # static pruning: the vocab * n_postings globally heaviest entries, lists capped,
        # every document kept in its heaviest term's list (reachable by search)
        csc = csr.tocsc()
        csc.sort_indices()
        col_ptr = csc.indptr.astype(np.int64)
        chosen = bk.pruned_entries(col_ptr, csc.indices, csc.data,
                                   _global_keep(csc.data, vocab * config.n_postings),
                                   bk.heaviest_term(csr.indptr, csr.indices, csr.data), cap)
        list_ptr = np.zeros(vocab + 1, dtype=np.int64)
        np.cumsum(bk.kept_per_list(col_ptr, chosen), out=list_ptr[1:])
        list_docs = csc.indices[chosen].astype(np.int32, copy=False)
        del csc, chosen, col_ptr
        t1 = time.perf_counter()

        # blocking and summaries, chunks of lists in parallel (the kernel releases the GIL)
        top_terms, top_weights = bk.heaviest_terms(csr.indptr, csr.indices, csr.data,
                                                   config.doc_cut)
        chunks = _work_chunks(list_ptr, config.centroid_fraction, 8 * threads)

        def run(chunk: tuple[int, int]):
            return bk.build_lists(chunk[0], chunk[1], config.seed, list_ptr, list_docs,
                                  csr.indptr, csr.indices, csr.data, top_terms, top_weights,
                                  vocab, config.centroid_fraction, config.min_cluster_size,
                                  config.summary_energy)

        if threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                parts = list(pool.map(run, chunks))
        else:
            parts = [run(c) for c in chunks]
        del top_terms, top_weights
        t2 = time.perf_counter()

        parts = [list(p) for p in parts]
        arrays = cls._assemble(parts, vocab, list_ptr, doc_start, words)
        del parts
        index = cls(arrays, config, n_docs, vocab, csr.nnz, n_used)
        log.info("BlockedIndex: %d docs, %d postings, %d blocks, %.1f MB; pruning %.2fs, "
                 "blocks+summaries %.2fs, total %.2fs", n_docs, arrays["postings"].size,
                 arrays["block_min"].size, index.nbytes / 1e6, t1 - t0, t2 - t1,
                 time.perf_counter() - t0)
        return index

    @staticmethod
    def _assemble(parts, vocab, list_ptr, doc_start, words) -> dict[str, np.ndarray]:
        # ``parts`` is a list of per-chunk lists: each piece is dropped once concatenated,
        # so the chunks' outputs and the index's arrays are not all alive at once
        def cat(i, dtype):
            pieces = [p[i].astype(dtype, copy=False) for p in parts]
            for p in parts:
                p[i] = None
            if not pieces:
                return np.zeros(0, dtype)
            out = np.concatenate(pieces)
            del pieces
            return out

        def gather_u32(ids):
            """doc_start[ids] as uint32, in slices (no int64 copy of every posting)."""
            out = np.empty(ids.size, np.uint32)
            step = 1 << 22
            for a in range(0, ids.size, step):
                out[a:a + step] = doc_start[ids[a:a + step]]
            return out

        def ptr(counts):
            out = np.zeros(counts.size + 1, np.int64)
            np.cumsum(counts, out=out[1:])
            return out

        list_n_blocks = cat(0, np.int64)
        if list_n_blocks.size != vocab:
            raise AssertionError("build chunks do not cover the vocabulary")
        block_post_ptr = ptr(cat(3, np.int64))
        if block_post_ptr[-1] != list_ptr[-1]:
            raise AssertionError("blocks do not hold every posting")
        seg_sizes = np.concatenate([p[6] for p in parts]) if parts else np.zeros((0, 3), np.int64)
        postings = gather_u32(cat(2, np.int64))
        pair_terms = cat(7, np.uint16 if vocab <= 1 << 16 else np.uint32)
        pair_counts = cat(8, np.uint8)
        n_entries = int(pair_counts.sum(dtype=np.int64)) + pair_counts.size
        if n_entries >= MAX_WORDS:
            raise ValueError("summaries too large for one index (> 2**32 entries); shard it")
        seg_pairs = np.ascontiguousarray(seg_sizes[:, 1])
        n_groups, n_bytes = bk.pair_group_sizes(pair_terms, seg_pairs)
        if n_bytes >= MAX_WORDS:
            raise ValueError("summary pairs too large for one index (> 2**32 delta bytes); "
                             "shard it")
        seg_group_ptr = np.empty(seg_pairs.size + 1, np.int64)
        group_term = np.empty(n_groups, np.uint32)
        group_entry = np.empty(n_groups, np.uint32)
        group_byte = np.empty(n_groups, np.uint32)
        pair_deltas = np.empty(n_bytes, np.uint8)
        pair_ends = np.zeros((n_entries + 63) // 64, np.uint64)
        bk.pack_pair_groups(pair_terms, pair_counts, seg_pairs, seg_group_ptr, group_term,
                            group_entry, group_byte, pair_deltas, pair_ends)
        del pair_terms, pair_counts
        entries = cat(9, np.uint16)
        seg_block_bits = np.empty(seg_sizes.shape[0], np.uint8)
        seg_block_byte = np.empty(seg_sizes.shape[0] + 1, np.int64)
        bk.entry_block_bytes(seg_sizes, seg_block_bits, seg_block_byte)
        entry_codes = np.empty(entries.size, np.uint8)
        entry_blocks = np.zeros(seg_block_byte[-1] + 2, np.uint8)    # + 2: see the layout
        bk.pack_entries(entries, seg_sizes, seg_block_bits, seg_block_byte, entry_codes,
                        entry_blocks)
        del entries
        return {
            "fwd_words": words,
            "list_block_ptr": ptr(list_n_blocks),
            "block_post_ptr": block_post_ptr.astype(np.uint32),
            "postings": postings,
            "block_min": cat(4, np.float32),
            "block_step": cat(5, np.float32),
            "list_seg_ptr": ptr(cat(1, np.int64)),
            "seg_block_ptr": ptr(seg_sizes[:, 0]),
            "seg_pair_ptr": ptr(seg_sizes[:, 1]),
            "seg_group_ptr": seg_group_ptr,
            "group_term": group_term,
            "group_entry": group_entry,
            "group_byte": group_byte,
            "pair_deltas": pair_deltas,
            "pair_ends": pair_ends,
            "seg_block_bits": seg_block_bits,
            "seg_block_byte": seg_block_byte,
            "entry_codes": entry_codes,
            "entry_blocks": entry_blocks,
        }

    # -- properties --------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return self._n_docs

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def nnz(self) -> int:
        return self._nnz

    @property
    def used_terms(self) -> int | None:
        """Terms that occur in some document: with ``n_docs``, ``vocab_size`` and ``nnz``, the
        statistics the config's derived fields came from (`derivation`); None for an index
        saved before they were recorded."""
        return self._used_terms

    def derivation(self) -> dict[str, str]:
        """How each derived field of the config was derived from this shard (field -> one
        line, `BlockedIndexConfig.derivation`); empty when nothing was derived, or when the
        shard's ``used_terms`` was not recorded (an index saved before 2026-12-05)."""
        if self._used_terms is None:
            return {}
        return self._config.derivation(self._n_docs, self._vocab, self._nnz, self._used_terms)

    @property
    def config(self) -> BlockedIndexConfig:
        return self._config

    def arrays(self) -> dict[str, np.ndarray]:
        """The index arrays by name (layout in the module docstring); read-only by contract."""
        return dict(self._a)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], config: BlockedIndexConfig,
                    n_docs: int, vocab_size: int, nnz: int, used_terms: int | None = None
                    ) -> "BlockedIndex":
        """Wrap arrays read back from storage, after a structural check of every pointer and
        offset (so a corrupt copy fails here, not as an out-of-bounds read in a kernel).
        Raises ``ValueError`` naming the first problem found."""
        view = kernel_view({n: np.ascontiguousarray(a) for n, a in arrays.items()},
                           CODECS[config.forward_values])
        problem = sk.check_structure(view, n_docs, vocab_size)
        if problem:
            raise ValueError(problem)
        return cls(arrays, config, n_docs, vocab_size, nnz, used_terms)

    def summary_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every block summary entry decoded: (global block int64, term int64, dequantised
        value float32), in storage order. For diagnostics; search never decodes this way."""
        a = self._a
        blocks, terms = bk.unpack_pair_groups(a["seg_block_ptr"], a["seg_pair_ptr"],
                                              a["seg_group_ptr"], a["group_term"],
                                              a["pair_deltas"], a["pair_ends"],
                                              a["seg_block_bits"], a["seg_block_byte"],
                                              a["entry_blocks"], a["entry_codes"].size)
        values = a["block_min"][blocks] + a["block_step"][blocks] * a["entry_codes"]
        return blocks, terms, values.astype(np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (forward index, postings, summaries)."""
        return int(sum(a.nbytes for a in self._a.values()))

    def stats(self) -> dict[str, int]:
        """Sizes of the parts of the index, for logs and benchmarks."""
        a = self._a
        return {"n_docs": self._n_docs, "vocab_size": self._vocab, "nnz": self._nnz,
                "postings": int(a["postings"].size), "blocks": int(a["block_min"].size),
                "segments": int(a["seg_pair_ptr"].size - 1),
                "summary_pairs": int(a["seg_pair_ptr"][-1]),
                "summary_groups": int(a["group_term"].size),
                "summary_entries": int(a["entry_codes"].size),
                "max_list_blocks": self._max_list_blocks,
                "forward_bytes": int(a["fwd_words"].nbytes),
                "posting_bytes": int(a["postings"].nbytes + a["block_post_ptr"].nbytes
                                     + a["list_block_ptr"].nbytes),
                "summary_bytes": int(sum(a[n].nbytes for n in SUMMARY_ARRAYS)),
                "nbytes": self.nbytes}

    # -- search ------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, query_cut: int | None = None,
               heap_factor: float | None = None, threads: int | None = None,
               allowed=None, exact_below: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k for each query row; result convention in the class docstring.

        ``query_cut``/``heap_factor`` default to the config's. ``threads``: None uses every
        core numba may use; a single query, or ``threads=1``, runs on the calling thread
        with per-thread scratch and no thread pool (the low-latency path).

        ``allowed``: a filter's allowed documents (bool mask of ``n_docs``, or an
        `AllowedDocs` built once and shared by many calls); no other document is scored or
        returned. When they are at most ``exact_below`` (a fraction of the shard, default
        `FILTER_EXACT_FRACTION`) the search scores exactly those documents through the
        forward index instead of walking the blocks (exact, and cheaper for a selective
        filter); otherwise blocks are walked with the others pre-marked as visited.
        """
        k = check_k(k)
        query_cut = check_int(self._config.query_cut if query_cut is None else query_cut,
                              "query_cut", 1)
        heap_factor = check_float(self._config.heap_factor if heap_factor is None
                                  else heap_factor, "heap_factor", 0.0, 1e9)
        exact_below = check_float(FILTER_EXACT_FRACTION if exact_below is None else exact_below,
                                  "exact_below", 0.0, 1.0)
        threads = check_threads(threads)
        q = check_queries(queries, self._vocab)
        allowed = None if allowed is None else AllowedDocs.of(allowed, self._n_docs)
        q_indptr = q.indptr.astype(np.int64, copy=False)
        nq = q.shape[0]
        out_docs, out_scores = empty_results(nq, k)
        if nq == 0 or self._n_docs == 0 or q.nnz == 0 or (allowed is not None
                                                          and allowed.count == 0):
            return out_docs, out_scores
        if allowed is not None and allowed.count <= exact_below * self._n_docs:
            return self._search_allowed(q, q_indptr, k, threads, allowed, out_docs, out_scores)
        blocked = _NO_FILTER if allowed is None else allowed.blocked_bits
        capacity = min(k, self._n_docs)
        longest = q.nnz if nq == 1 else int(np.diff(q_indptr).max())
        n_candidates = min(query_cut, longest) * self._max_list_blocks
        if nq == 1 or threads == 1:
            sc = self._scratch(n_candidates, query_cut, capacity)
            self._serial("serial", self._view, q_indptr, q.indices, q.data, query_cut, heap_factor,
                    sc, out_docs, out_scores, blocked)
        else:
            n_chunks = min(nq, 4 * threads)
            with numba_threads(threads):
                sk.search_parallel(self._view, q_indptr, q.indices, q.data, query_cut,
                                   heap_factor, n_chunks, self._vocab, self._n_docs,
                                   n_candidates, capacity, out_docs, out_scores, blocked)
        return out_docs, out_scores

    def _search_allowed(self, q, q_indptr, k, threads, allowed, out_docs, out_scores):
        """Exact top-k over the allowed documents only, from the forward index."""
        doc_start = self._forward_starts()
        capacity = min(k, allowed.count)
        nq = q.shape[0]
        if nq == 1 or threads == 1:
            sc = self._scratch(1, 1, capacity)
            sk.score_allowed_serial(self._view, doc_start, allowed.docs, q_indptr, q.indices,
                                    q.data, sc.q_dense, sc.h_scores, sc.h_docs, out_docs,
                                    out_scores)
        else:
            n_chunks = min(nq, 4 * threads)
            with numba_threads(threads):
                sk.score_allowed_parallel(self._view, doc_start, allowed.docs, q_indptr,
                                          q.indices, q.data, n_chunks, self._vocab, capacity,
                                          out_docs, out_scores)
        return out_docs, out_scores

    def document(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Document ``d`` as the forward index holds it: (int32 terms ascending, float32
        weights in the forward index's precision, the ones search scores with)."""
        if not 0 <= d < self._n_docs:
            raise IndexError(f"document {d} outside 0..{self._n_docs - 1}")
        words = self._a["fwd_words"]
        start = int(self._forward_starts()[d])
        return self._codec.decode(words[start + 2:start + 2 + int(words[start + 1])])

    def _forward_starts(self) -> np.ndarray:
        if self._doc_start is None:
            with self._doc_start_lock:
                if self._doc_start is None:
                    self._doc_start = sk.forward_starts(self._a["fwd_words"], self._n_docs)
        return self._doc_start

    def _scratch(self, n_candidates: int, query_cut: int, capacity: int) -> sk.Scratch:
        """This thread's `Scratch` (left clean by every query), grown on demand; the
        per-query parts (cut terms, top-k heap) sized for this call."""
        sc = getattr(self._local, "scratch", None)
        if sc is None or sc.cand_block.size < n_candidates:
            sc = sk.alloc_scratch(self._vocab, self._n_docs, n_candidates, 1, 1)
            self._local.scratch = sc
        if sc.cut.size != query_cut or sc.h_scores.size != capacity:
            sc = sc._replace(cut=np.empty(query_cut, np.int64),
                             h_scores=np.empty(capacity, np.float32),
                             h_docs=np.empty(capacity, np.int64))
            self._local.scratch = sc
        return sc

    def __repr__(self) -> str:
        return (f"BlockedIndex(n_docs={self._n_docs}, vocab_size={self._vocab}, "
                f"postings={self._a['postings'].size}, blocks={self._a['block_min'].size}, "
                f"forward_values={self._config.forward_values!r})")
