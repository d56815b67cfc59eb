"""Numba search over the blocked index (layout documented in `pipeline.index.blocked`).

Per query: the ``query_cut`` heaviest query terms, heaviest first; per term, every block's
summary score ``summary . q`` (u8 codes dequantised as ``min + step * code``, the whole
query, accumulated term by term through the list's inverted summaries); a block is skipped
when the heap is full and its summary score is below ``heap_factor`` x the heap's k-th
score; otherwise its not-yet-visited documents are scored exactly from the forward index.
Unlike Seismic, which scans the lists one after another (only the first one sorted), the
blocks of all the cut lists are visited in one order, best summary score first: the heap
fills with strong candidates early, raising the bar for every later block, and the scan
stops at the first block it may skip, since all later blocks score lower still.

The kernels take the index as one `IndexView` (its arrays and decoding constants) and the
per-thread working memory as one `Scratch`, both named tuples numba types once. A query is
four composable steps, each an ``@njit`` function callable (and tested) on its own:
`select_cut_terms`, `score_summaries`, `order_blocks`, `score_blocks`.

Scratch arrays (dense query, visited bitset, ...) are allocated once per thread (or per
chunk of a batch) and left clean by every query.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange

from pipeline.index.bits import (PAIR_GROUP, PAIR_GROUP_SHIFT, SEGMENT_BLOCKS, bits_to_f32,
                                 popcount_u64, prefetch, read_bits, read_varint,
                                 trailing_zeros_u64)
from pipeline.index.topk import heap_push, heap_to_row, worse

SCAN_PAIRS_PER_TERM = 8
"""`score_summaries` reads a segment straight through when it has at most this many pairs
per query term, and searches it (galloping) otherwise."""

IndexView = namedtuple("IndexView", [
    "words", "term_mask", "hi_shift", "lo_shift", "q_scale", "ordered",
    "list_block_ptr", "block_post_ptr", "postings", "block_min", "block_step",
    "list_seg_ptr", "seg_block_ptr", "seg_pair_ptr", "seg_group_ptr", "group_term",
    "group_entry", "group_byte", "pair_deltas", "pair_ends", "seg_block_bits", "seg_block_byte",
    "entry_codes", "entry_blocks"])
IndexView.__doc__ = """What the search kernels read of a `BlockedIndex`: its arrays (layout in
`pipeline.index.blocked`) plus the forward codec's decoding constants (``term_mask``,
``hi_shift``, ``lo_shift`` of the word dtype; ``q_scale`` float32; ``ordered``: float32
words, scored in one ascending accumulator)."""

Scratch = namedtuple("Scratch", [
    "q_dense", "q_weight", "visited", "touched", "cand_block", "acc_code", "acc_q", "dots", "heap", "cut",
    "h_scores", "h_docs"])
Scratch.__doc__ = """One thread's working memory, left clean by every query: ``q_dense``
float32 (V) the query scaled for the forward codec and ``q_weight`` float32 (V) unscaled,
both zero outside its terms; ``visited`` uint64 (N/64 + 1) bitset of scored
documents and ``touched`` int64 (N) their log; per candidate block (``n_candidates``):
``cand_block`` int64 global block id, ``acc_code``/``acc_q``/``dots`` float32 summary
accumulators and score, ``heap`` int64 block order; ``cut`` int64 (query_cut) positions of the
cut terms; ``h_scores`` float32 / ``h_docs`` int64 (capacity) the top-k heap."""


@njit(fastmath={"reassoc", "contract", "nsz", "arcp"})
def _dot_half(words, start, end, q_dense):
    """float16 words: term in the low 16 bits, half-float bits in the high 16 (decoded as
    (w >> 16) << 13 against a query scaled by 2**112); constant masks let LLVM vectorise
    with 32-bit-index gathers."""
    s = np.float32(0.0)
    for j in range(start, end):
        w = words[j]
        s += q_dense[w & np.uint32(0xFFFF)] * bits_to_f32(np.uint32((w >> np.uint32(16)) << np.uint32(13)))
    return s


@njit(inline="always")
def _score_doc(words, start, n, q_dense, term_mask, hi_shift, lo_shift, ordered):
    """Exact dot product of the dense query with one forward-index document."""
    end = start + n
    if ordered:
        # ascending-term, one-accumulator float32 sum: bit-identical to scipy / ExactIndex
        s = np.float32(0.0)
        for j in range(start, end):
            w = words[j]
            s += q_dense[w & term_mask] * bits_to_f32(np.uint32((w >> hi_shift) << lo_shift))
        return s
    return _dot_half(words, start, end, q_dense)
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    j = start
    while j + 4 <= end:
        w0 = words[j]
        w1 = words[j + 1]
        w2 = words[j + 2]
        w3 = words[j + 3]
        s0 += q_dense[w0 & term_mask] * bits_to_f32(np.uint32((w0 >> hi_shift) << lo_shift))
        s1 += q_dense[w1 & term_mask] * bits_to_f32(np.uint32((w1 >> hi_shift) << lo_shift))
        s2 += q_dense[w2 & term_mask] * bits_to_f32(np.uint32((w2 >> hi_shift) << lo_shift))
        s3 += q_dense[w3 & term_mask] * bits_to_f32(np.uint32((w3 >> hi_shift) << lo_shift))
        j += 4
    while j < end:
        w0 = words[j]
        s0 += q_dense[w0 & term_mask] * bits_to_f32(np.uint32((w0 >> hi_shift) << lo_shift))
        j += 1
    return (s0 + s1) + (s2 + s3)


@njit(inline="always")
def _is_visited(visited, d):
    """Whether document ``d`` is marked in the bitset (bit ``d & 63`` of word ``d >> 6``)."""
    return (visited[d >> 6] & (np.uint64(1) << np.uint64(d & 63))) != 0


@njit(inline="always")
def _scan_block(ix, p_lo, p_hi, q_dense, visited, touched, n_touched, h_scores, h_docs, size):
    """Score the unvisited documents of one block; returns (heap size, n_touched)."""
    postings = ix.postings
    words = ix.words
    capacity = h_scores.size
    line = 64 // words.itemsize
    for p in range(p_lo, min(p_lo + 3, p_hi)):
        prefetch(words, postings[p])
    for p in range(p_lo, p_hi):
        # two-stage prefetch: the header of the document three ahead, and every cache line
        # of the one two ahead (its header, fetched a step ago, gives its length), so
        # scoring streams from cache instead of waiting on the first lines of each document
        # (a block's first three headers are fetched above; its first two bodies are not
        # prefetched). A document already scored from another list (about a quarter of the
        # postings a query scans) is not fetched: its lines would only evict useful ones.
        # Alternating A/B, BENCHMARKS.md §7 run G: the skip -4 to -6% a query, two ahead
        # instead of one a further -2%.
        if p + 3 < p_hi:
            prefetch(words, postings[p + 3])
        if p + 2 < p_hi:
            nxt = np.int64(postings[p + 2])
            if not _is_visited(visited, np.int64(words[nxt])):
                for w in range(nxt + line, nxt + 2 + np.int64(words[nxt + 1]), line):
                    prefetch(words, w)
        off = np.int64(postings[p])
        d = np.int64(words[off])
        if _is_visited(visited, d):
            continue
        visited[d >> 6] |= np.uint64(1) << np.uint64(d & 63)
        touched[n_touched] = d
        n_touched += 1
        score = _score_doc(words, off + 2, np.int64(words[off + 1]), q_dense,
                           ix.term_mask, ix.hi_shift, ix.lo_shift, ix.ordered)
        if score > 0:
            if size < capacity or worse(h_scores[0], h_docs[0], score, d):
                size = heap_push(h_scores, h_docs, size, capacity, score, d)
    return size, n_touched


@njit(inline="always")
def _sift_down_max(heap, keys, n, i):
    """Restore the max-heap property (on keys[heap[.]]) below position i."""
    item = heap[i]
    key = keys[item]
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and keys[heap[child + 1]] > keys[heap[child]]:
            child += 1
        if keys[heap[child]] > key:
            heap[i] = heap[child]
            i = child
        else:
            break
    heap[i] = item


@njit(inline="always")
def _skip_pairs(ends, e, k):
    """Offset of the first entry ``k`` pairs after the pair starting at entry ``e``: the
    position after the ``k``-th set bit of ``ends`` at or after bit ``e`` (one POPCNT a
    64-entry word, then clearing the lowest set bits of the last word)."""
    while k > 0:
        w = e >> 6
        x = ends[w] >> np.uint64(e & 63)
        c = popcount_u64(x)
        if c >= k:
            for _ in range(k - 1):
                x &= x - np.uint64(1)
            return e + trailing_zeros_u64(x) + 1
        k -= c
        e = (w + 1) << 6
    return e


@njit(cache=True, nogil=True, inline="always")
def select_cut_terms(q_values, query_cut, cut):
    """Positions of the ``query_cut`` heaviest query terms into ``cut``, heaviest first (ties:
    lower position first); returns how many. Each pick is the best-ranked term ranking
    strictly below the previous pick."""
    nt = q_values.size
    n_cut = min(query_cut, nt)
    prev = -1
    for c in range(n_cut):
        best = -1
        for i in range(nt):
            if prev >= 0 and not (q_values[i] < q_values[prev]
                                  or (q_values[i] == q_values[prev] and i > prev)):
                continue
            if best < 0 or q_values[i] > q_values[best]:
                best = i
        cut[c] = best
        prev = best
    return n_cut


@njit(inline="always")
def _add_pair(codes, packed, base, bits, mask, e0, first, last, w, seg_base, acc_code, acc_q):
    """Add one summary pair's entries ``first:last`` (weight ``w``) to its blocks'
    accumulators. The segment's block ids are ``bits`` wide (``mask``) from byte ``base`` of
    ``packed``, counted from its first entry ``e0``."""
    for j in range(first, last):
        bl = seg_base + read_bits(packed, base, (j - e0) * bits, mask)
        acc_code[bl] += w * np.float32(codes[j])
        acc_q[bl] += w


@njit(cache=True, nogil=True, inline="always")
def score_summaries(ix, q_terms, q_values, q_weight, cut, n_cut, cand_block, acc_code, acc_q,
                    dots):
    """Summary score ``summary . q`` (whole query, ``q_values`` unscaled; ``q_weight`` the
    same query dense over the vocabulary, zero elsewhere) of every block of the lists of
    ``q_terms[cut[:n_cut]]``, in list order then block order: candidate ``j`` is global
    block ``cand_block[j]`` with score ``dots[j]``. Returns the candidate count.

    Per segment, the query's (term, blocks) pairs are found one of two ways: a segment with
    at most ``SCAN_PAIRS_PER_TERM`` x |q| pairs is read straight through, each pair's
    weight gathered from ``q_weight`` (sequential, no search); a larger one is searched by
    a merge of the ascending query terms into its pair groups (galloping over the groups'
    first terms, then stepping through at most one group's deltas). The accumulators keep
    ``sum w * code`` and ``sum w`` per block, dequantised once at the end:
    ``step * sum(w * code) + min * sum(w)``."""
    nt = q_terms.size
    codes = ix.entry_codes
    packed = ix.entry_blocks
    ends = ix.pair_ends
    deltas = ix.pair_deltas
    group_term = ix.group_term
    scan_limit = SCAN_PAIRS_PER_TERM * nt
    n_cand = 0
    for c in range(n_cut):
        t = q_terms[cut[c]]
        b0 = ix.list_block_ptr[t]
        nb = ix.list_block_ptr[t + 1] - b0
        if nb == 0:
            continue
        for j in range(nb):
            cand_block[n_cand + j] = b0 + j
            acc_code[n_cand + j] = 0.0
            acc_q[n_cand + j] = 0.0
        for s in range(ix.list_seg_ptr[t], ix.list_seg_ptr[t + 1]):
            seg_base = n_cand + (ix.seg_block_ptr[s] - b0)
            n_pairs = ix.seg_pair_ptr[s + 1] - ix.seg_pair_ptr[s]
            g = ix.seg_group_ptr[s]
            g_end = ix.seg_group_ptr[s + 1]
            if g == g_end:
                continue
            e0 = np.int64(ix.group_entry[g])
            base = ix.seg_block_byte[s]
            bits = np.int64(ix.seg_block_bits[s])
            mask = (np.int64(1) << bits) - 1
            # entries are located lazily: ``e`` is the first entry of the group's pair ``i_e``,
            # advanced (through ``pair_ends``) only to a pair the query holds
            b = np.int64(ix.group_byte[g])
            term = np.int64(0)
            e = np.int64(0)
            i_e = 0
            if n_pairs <= scan_limit:
                for i in range(n_pairs):
                    i_in = i & (PAIR_GROUP - 1)
                    if i_in == 0:
                        gg = g + (i >> PAIR_GROUP_SHIFT)
                        term = np.int64(group_term[gg])
                        e = np.int64(ix.group_entry[gg])
                        i_e = 0
                    else:
                        delta, b = read_varint(deltas, b)
                        term += delta
                    w = q_weight[term]
                    if w != 0:
                        e = _skip_pairs(ends, e, i_in - i_e)
                        last = _skip_pairs(ends, e, 1)
                        _add_pair(codes, packed, base, bits, mask, e0, e, last, w, seg_base,
                                  acc_code, acc_q)
                        e = last
                        i_e = i_in + 1
                continue
            # merge: the cursor is pair ``i`` of group ``g`` (term ``term``, next delta at
            # ``b``); it only moves forward
            last_group_pairs = n_pairs - ((g_end - g - 1) << PAIR_GROUP_SHIFT)
            term = np.int64(group_term[g])
            e = np.int64(ix.group_entry[g])
            i = 0
            for k in range(nt):
                qt = np.int64(q_terms[k])
                if term < qt:
                    if g + 1 < g_end and np.int64(group_term[g + 1]) <= qt:
                        # gallop to the last group starting at or before qt
                        lo = g + 1
                        step = 1
                        while lo + step < g_end and np.int64(group_term[lo + step]) <= qt:
                            lo += step
                            step <<= 1
                        hi = min(lo + step, g_end)
                        while hi - lo > 1:
                            mid = (lo + hi) >> 1
                            if np.int64(group_term[mid]) <= qt:
                                lo = mid
                            else:
                                hi = mid
                        g = lo
                        term = np.int64(group_term[g])
                        e = np.int64(ix.group_entry[g])
                        b = np.int64(ix.group_byte[g])
                        i = 0
                        i_e = 0
                    n_in = PAIR_GROUP if g + 1 < g_end else last_group_pairs
                    while term < qt and i + 1 < n_in:
                        delta, b = read_varint(deltas, b)
                        term += delta
                        i += 1
                    if term < qt:
                        # qt lies between this group's last pair and the next group's first
                        if g + 1 == g_end:
                            break
                        g += 1
                        term = np.int64(group_term[g])
                        e = np.int64(ix.group_entry[g])
                        b = np.int64(ix.group_byte[g])
                        i = 0
                        i_e = 0
                if term == qt:
                    e = _skip_pairs(ends, e, i - i_e)
                    last = _skip_pairs(ends, e, 1)
                    _add_pair(codes, packed, base, bits, mask, e0, e, last, q_values[k], seg_base,
                              acc_code, acc_q)
                    e = last
                    i_e = i + 1
                    n_in = PAIR_GROUP if g + 1 < g_end else last_group_pairs
                    if i + 1 < n_in:
                        delta, b = read_varint(deltas, b)
                        term += delta
                        i += 1
                    elif g + 1 < g_end:
                        # e and b already point at the next group's first entry and delta
                        g += 1
                        term = np.int64(group_term[g])
                        i = 0
                        i_e = 0
                    else:
                        break
        n_cand += nb
    for j in range(n_cand):
        blk = cand_block[j]
        dots[j] = ix.block_step[blk] * acc_code[j] + ix.block_min[blk] * acc_q[j]
    return n_cand


@njit(cache=True, nogil=True, inline="always")
def order_blocks(dots, heap, n_cand):
    """Arrange candidates ``0..n_cand`` in ``heap`` as a max-heap on ``dots``."""
    for j in range(n_cand):
        heap[j] = j
    for i in range(n_cand // 2 - 1, -1, -1):
        _sift_down_max(heap, dots, n_cand, i)


@njit(cache=True, nogil=True, inline="always")
def score_blocks(ix, heap_factor, n_cand, sc):
    """Score documents block by block, best summary first (popping ``sc.heap``), into the
    top-k heap ``sc.h_scores``/``sc.h_docs``; stop at the first block the heap lets us skip
    (heap full and summary score < ``heap_factor`` x its k-th score), since every later block
    scores lower still. Returns (heap size, documents scored); the scored documents are
    marked in ``sc.visited`` and logged in ``sc.touched`` for the caller to clear."""
    h_scores = sc.h_scores
    heap = sc.heap
    dots = sc.dots
    capacity = h_scores.size
    size = 0
    n_touched = 0
    n_heap = n_cand
    while n_heap > 0:
        j = heap[0]
        if size == capacity and dots[j] < heap_factor * h_scores[0]:
            break
        n_heap -= 1
        heap[0] = heap[n_heap]
        _sift_down_max(heap, dots, n_heap, 0)
        blk = sc.cand_block[j]
        size, n_touched = _scan_block(
            ix, np.int64(ix.block_post_ptr[blk]), np.int64(ix.block_post_ptr[blk + 1]),
            sc.q_dense, sc.visited, sc.touched, n_touched, h_scores, sc.h_docs, size)
    return size, n_touched


@njit(cache=True, nogil=True)
def search_query(ix, q_terms, q_values, query_cut, heap_factor, sc, out_docs, out_scores,
                 blocked):
    """Top-k of one query (terms ascending) into ``out_docs``/``out_scores`` (one row).

    ``blocked``: empty (no filter), or the bitset of the documents a filter excludes, laid
    out like ``sc.visited``: they start the query marked visited, so they are never scored
    and never enter the heap (its k-th score, the skipping bar, is the k-th *allowed* one).
    The check is outside the hot loop: the unfiltered path does no extra work."""
    filtered = blocked.size > 0
    if filtered:
        sc.visited[:] = blocked
    nt = q_terms.size
    for i in range(nt):
        sc.q_dense[q_terms[i]] = q_values[i] * ix.q_scale
        sc.q_weight[q_terms[i]] = q_values[i]
    n_cut = select_cut_terms(q_values, query_cut, sc.cut)
    n_cand = score_summaries(ix, q_terms, q_values, sc.q_weight, sc.cut, n_cut, sc.cand_block,
                             sc.acc_code, sc.acc_q, sc.dots)
    order_blocks(sc.dots, sc.heap, n_cand)
    size, n_touched = score_blocks(ix, heap_factor, n_cand, sc)
    for i in range(nt):
        sc.q_dense[q_terms[i]] = 0.0
        sc.q_weight[q_terms[i]] = 0.0
    if filtered:
        sc.visited[:] = 0
    else:
        for j in range(n_touched):
            sc.visited[sc.touched[j] >> 6] = 0
    heap_to_row(sc.h_scores, sc.h_docs, size, out_docs, out_scores)


@njit(cache=True, nogil=True)
def alloc_scratch(vocab, n_docs, n_candidates, capacity, query_cut):
    """`Scratch` for one thread (zeroed where a query expects it clean)."""
    n_candidates = max(n_candidates, 1)
    return Scratch(np.zeros(vocab, np.float32),
                   np.zeros(vocab, np.float32),
                   np.zeros(n_docs // 64 + 1, np.uint64),
                   np.empty(max(n_docs, 1), np.int64),
                   np.empty(n_candidates, np.int64),
                   np.empty(n_candidates, np.float32),
                   np.empty(n_candidates, np.float32),
                   np.empty(n_candidates, np.float32),
                   np.empty(n_candidates, np.int64),
                   np.empty(query_cut, np.int64),
                   np.empty(capacity, np.float32),
                   np.empty(capacity, np.int64))


@njit(cache=True, nogil=True)
def search_serial(ix, q_indptr, q_indices, q_data, query_cut, heap_factor, sc, out_docs,
                  out_scores, blocked):
    """Queries one after another on the calling thread, with the caller's scratch."""
    for qi in range(q_indptr.size - 1):
        a, b = q_indptr[qi], q_indptr[qi + 1]
        search_query(ix, q_indices[a:b], q_data[a:b], query_cut, heap_factor, sc,
                     out_docs[qi], out_scores[qi], blocked)


@njit(cache=True, nogil=True, parallel=True)
def search_parallel(ix, q_indptr, q_indices, q_data, query_cut, heap_factor, n_chunks,
                    vocab, n_docs, n_candidates, capacity, out_docs, out_scores, blocked):
    """Chunks of queries over numba's thread pool, one scratch set per chunk."""
    nq = q_indptr.size - 1
    for c in prange(n_chunks):
        sc = alloc_scratch(vocab, n_docs, n_candidates, capacity, query_cut)
        lo, hi = c * nq // n_chunks, (c + 1) * nq // n_chunks
        # q_indptr's entries are absolute offsets into q_indices, so a slice of it is a batch
        search_serial(ix, q_indptr[lo:hi + 1], q_indices, q_data, query_cut, heap_factor, sc,
                      out_docs[lo:hi], out_scores[lo:hi], blocked)


# -- exact scoring of a filter's allowed documents through the forward index --------------

@njit(cache=True, nogil=True)
def forward_starts(words, n_docs):
    """Word offset of each document's header in the forward index (walks the headers)."""
    out = np.empty(n_docs, np.int64)
    pos = np.int64(0)
    for d in range(n_docs):
        out[d] = pos
        pos += 2 + np.int64(words[pos + 1])
    return out


@njit(cache=True, nogil=True)
def score_allowed_query(ix, doc_start, docs, q_terms, q_values, q_dense, h_scores, h_docs,
                        out_docs, out_scores):
    """Exact top-k of one query over the documents ``docs`` only (ascending rows), scored
    from the forward index like every document the blocked search scores."""
    nt = q_terms.size
    for i in range(nt):
        q_dense[q_terms[i]] = q_values[i] * ix.q_scale
    words = ix.words
    capacity = h_scores.size
    size = 0
    for j in range(docs.size):
        d = docs[j]
        off = doc_start[d]
        if j + 2 < docs.size:
            prefetch(words, doc_start[docs[j + 2]])
        score = _score_doc(words, off + 2, np.int64(words[off + 1]), q_dense,
                           ix.term_mask, ix.hi_shift, ix.lo_shift, ix.ordered)
        if score > 0:
            if size < capacity or worse(h_scores[0], h_docs[0], score, d):
                size = heap_push(h_scores, h_docs, size, capacity, score, d)
    for i in range(nt):
        q_dense[q_terms[i]] = 0.0
    heap_to_row(h_scores, h_docs, size, out_docs, out_scores)


@njit(cache=True, nogil=True)
def score_allowed_serial(ix, doc_start, docs, q_indptr, q_indices, q_data, q_dense, h_scores,
                         h_docs, out_docs, out_scores):
    for qi in range(q_indptr.size - 1):
        a, b = q_indptr[qi], q_indptr[qi + 1]
        score_allowed_query(ix, doc_start, docs, q_indices[a:b], q_data[a:b], q_dense,
                            h_scores, h_docs, out_docs[qi], out_scores[qi])


@njit(cache=True, nogil=True, parallel=True)
def score_allowed_parallel(ix, doc_start, docs, q_indptr, q_indices, q_data, n_chunks, vocab,
                           capacity, out_docs, out_scores):
    nq = q_indptr.size - 1
    for c in prange(n_chunks):
        q_dense = np.zeros(vocab, np.float32)
        h_scores = np.empty(capacity, np.float32)
        h_docs = np.empty(capacity, np.int64)
        lo, hi = c * nq // n_chunks, (c + 1) * nq // n_chunks
        score_allowed_serial(ix, doc_start, docs, q_indptr[lo:hi + 1], q_indices, q_data,
                             q_dense, h_scores, h_docs, out_docs[lo:hi], out_scores[lo:hi])


@njit(cache=True, nogil=True)
def check_structure(ix, n_docs, vocab):
    """The invariants the search kernels index by without bounds checks; returns "" or the
    first violation. Run on every loaded index, so a foreign or damaged group fails cleanly
    instead of reading or writing out of bounds."""
    words = ix.words
    term_mask = ix.term_mask
    list_block_ptr = ix.list_block_ptr
    postings = ix.postings
    list_seg_ptr = ix.list_seg_ptr
    seg_block_ptr = ix.seg_block_ptr
    seg_pair_ptr = ix.seg_pair_ptr
    seg_group_ptr = ix.seg_group_ptr
    group_term = ix.group_term
    group_entry = ix.group_entry
    group_byte = ix.group_byte
    deltas = ix.pair_deltas
    ends = ix.pair_ends
    seg_block_bits = ix.seg_block_bits
    seg_block_byte = ix.seg_block_byte
    codes = ix.entry_codes
    packed = ix.entry_blocks
    # forward index: headers [d, len] in order, entries inside the array, terms in the vocab
    doc_start = np.empty(n_docs, np.int64)
    pos = np.int64(0)
    for d in range(n_docs):
        if pos + 2 > words.size or np.int64(words[pos]) != d:
            return "forward index header out of place"
        n = np.int64(words[pos + 1])
        if pos + 2 + n > words.size:
            return "forward index document overruns the array"
        for j in range(pos + 2, pos + 2 + n):
            if np.int64(words[j] & term_mask) >= vocab:
                return "forward index term outside the vocabulary"
        doc_start[d] = pos
        pos += 2 + n
    if pos != words.size:
        return "forward index has trailing words"
    # postings point at document headers
    for p in range(postings.size):
        off = np.int64(postings[p])
        i = np.searchsorted(doc_start, off)
        if i >= n_docs or doc_start[i] != off:
            return "posting does not point at a document"
    # segments: inside their list's blocks
    for t in range(list_block_ptr.size - 1):
        for s in range(list_seg_ptr[t], list_seg_ptr[t + 1]):
            b_lo, b_hi = seg_block_ptr[s], seg_block_ptr[s + 1]
            if b_lo < list_block_ptr[t] or b_hi > list_block_ptr[t + 1] or b_hi - b_lo > SEGMENT_BLOCKS:
                return "segment blocks outside its list"
    # pairs, segment after segment: each segment's groups as many as its pairs need, each
    # group's first term and offsets where the previous group ended, terms strictly ascending
    # inside the vocabulary, every entry inside the segment's blocks, the offsets covering the
    # delta and entry arrays exactly
    n_segs = seg_pair_ptr.size - 1
    if seg_group_ptr.size != n_segs + 1 or seg_group_ptr[0] != 0:
        return "summary groups do not match the segments"
    if seg_group_ptr[n_segs] != group_term.size or group_entry.size != group_term.size \
            or group_byte.size != group_term.size:
        return "summary groups do not match the segments"
    if ends.size != (codes.size + 63) // 64:
        return "summary pair ends do not match the entries"
    if seg_block_bits.size != n_segs or seg_block_byte.size != n_segs + 1 \
            or seg_block_byte[0] != 0 or seg_block_byte[n_segs] + 2 != packed.size:
        return "summary block ids do not match the segments"
    e = np.int64(0)
    b = np.int64(0)
    for s in range(n_segs):
        n_pairs = seg_pair_ptr[s + 1] - seg_pair_ptr[s]
        g0, g1 = seg_group_ptr[s], seg_group_ptr[s + 1]
        if g1 - g0 != (n_pairs + PAIR_GROUP - 1) // PAIR_GROUP:
            return "summary groups do not match the segments"
        n_seg_blocks = seg_block_ptr[s + 1] - seg_block_ptr[s]
        bits = np.int64(seg_block_bits[s])
        if bits > 8:
            return "summary block ids do not match the segments"
        mask = (np.int64(1) << bits) - 1
        base = seg_block_byte[s]
        e0 = e
        term = np.int64(-1)
        for i in range(n_pairs):
            if i % PAIR_GROUP == 0:
                g = g0 + i // PAIR_GROUP
                if np.int64(group_entry[g]) != e or np.int64(group_byte[g]) != b:
                    return "summary pair offsets are inconsistent"
                nxt = np.int64(group_term[g])
            else:
                nxt = np.int64(0)
                shift = 0
                while True:
                    if b >= deltas.size or shift > 28:
                        return "summary term deltas are malformed"
                    x = np.int64(deltas[b])
                    b += 1
                    nxt |= (x & 127) << shift
                    shift += 7
                    if x < 128:
                        break
                nxt += term
            if nxt <= term or nxt >= vocab:
                return "summary terms not ascending inside the vocabulary"
            term = nxt
            while True:    # the pair's entries: up to and including the next end bit
                if e >= codes.size:
                    return "summary pairs overrun the entries"
                if read_bits(packed, base, (e - e0) * bits, mask) >= n_seg_blocks:
                    return "summary entry outside its segment"
                last = (ends[e >> 6] >> np.uint64(e & 63)) & np.uint64(1)
                e += 1
                if last:
                    break
        if seg_block_byte[s + 1] - base != ((e - e0) * bits + 7) // 8:
            return "summary block ids do not match the segments"
    if e != codes.size or b != deltas.size:
        return "summary pairs do not cover the entries"
    return ""
