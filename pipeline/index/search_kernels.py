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

Scratch arrays (dense query, visited bitset, ...) are allocated once per thread (or per
chunk of a batch) and left clean by every query: a query allocates nothing.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pipeline.index.bits import bits_to_f32, prefetch
from pipeline.index.topk import heap_push, heap_to_row, worse


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
def _scan_block(p_lo, p_hi, postings, words, term_mask, hi_shift, lo_shift, ordered,
                q_dense, visited, touched, n_touched, h_scores, h_docs, size, capacity):
    """Score the unvisited documents of one block; returns (heap size, n_touched)."""
    for p in range(p_lo, p_hi):
        if p + 2 < p_hi:
            prefetch(words, postings[p + 2])
        off = np.int64(postings[p])
        d = np.int64(words[off])
        word = d >> 6
        bit = np.uint64(1) << np.uint64(d & 63)
        if visited[word] & bit:
            continue
        visited[word] |= bit
        touched[n_touched] = d
        n_touched += 1
        score = _score_doc(words, off + 2, np.int64(words[off + 1]), q_dense,
                           term_mask, hi_shift, lo_shift, ordered)
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
def _pair_term(records, p, record_size):
    """Term of summary pair p (little-endian, 2 or 4 bytes at the start of its record)."""
    r = p * record_size
    if record_size == 3:
        return np.int64(records[r]) | (np.int64(records[r + 1]) << 8)
    return (np.int64(records[r]) | (np.int64(records[r + 1]) << 8)
            | (np.int64(records[r + 2]) << 16) | (np.int64(records[r + 3]) << 24))


@njit(inline="always")
def _pair_first(records, group_base, p, record_size):
    """Offset in ``entries`` of pair p's first entry: its group's base plus the sizes of
    the pairs before it in the group."""
    off = np.int64(group_base[p >> 4])
    for j in range((p >> 4) << 4, p):
        off += np.int64(records[j * record_size + record_size - 1]) + 1
    return off


@njit(inline="always")
def _grown(buf):
    out = np.empty(2 * buf.size, buf.dtype)
    out[:buf.size] = buf
    return out


@njit(cache=True, nogil=True)
def search_query(q_terms, q_values, query_cut, heap_factor,
                 words, term_mask, hi_shift, lo_shift, q_scale, ordered,
                 list_block_ptr, block_post_ptr, postings, block_min, block_step,
                 list_seg_ptr, seg_block_ptr, seg_pair_ptr, pair_records, record_size,
                 pair_group_base, entries,
                 q_dense, visited, touched, cand_block, acc_code, acc_q, dots, heap, cut,
                 h_scores, h_docs, out_docs, out_scores):
    """Top-k of one query (terms ascending) into ``out_docs``/``out_scores`` (one row)."""
    nt = q_terms.size
    capacity = h_scores.size
    # matched summary pairs of this query: at most |q| per segment of a cut list
    n_alloc = max(16, min(query_cut, nt) * nt)
    match_first = np.empty(n_alloc, np.int64)
    match_last = np.empty(n_alloc, np.int64)
    match_base = np.empty(n_alloc, np.int64)
    match_w = np.empty(n_alloc, np.float32)
    for i in range(nt):
        q_dense[q_terms[i]] = q_values[i] * q_scale

    # the query_cut heaviest terms, heaviest first (ties: lower term id first): each pick
    # is the best-ranked term ranking strictly below the previous pick
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

    # phase 1: the summary score of every block of the cut lists, in two passes: find the
    # (term, blocks) pairs of the query's terms and prefetch their entries, then read them
    # (by then mostly in cache: the entries of ~60 pairs a list sit on ~60 cold lines)
    n_cand = 0
    n_match = 0
    for c in range(n_cut):
        t = q_terms[cut[c]]
        b0 = list_block_ptr[t]
        nb = list_block_ptr[t + 1] - b0
        if nb == 0:
            continue
        for j in range(nb):
            cand_block[n_cand + j] = b0 + j
            acc_code[n_cand + j] = 0.0
            acc_q[n_cand + j] = 0.0
        for s in range(list_seg_ptr[t], list_seg_ptr[t + 1]):
            seg_base = n_cand + (seg_block_ptr[s] - b0)
            p_end = seg_pair_ptr[s + 1]
            p = seg_pair_ptr[s]
            # merge the ascending query terms into the ascending pair terms, galloping
            # over the pairs: O(|q| log(pairs / |q|)) probes instead of a pass over all
            for i in range(nt):
                qt = np.int64(q_terms[i])
                if p >= p_end:
                    break
                if _pair_term(pair_records, p, record_size) < qt:
                    step = 1
                    while p + step < p_end and _pair_term(pair_records, p + step,
                                                          record_size) < qt:
                        step <<= 1
                    lo = p + (step >> 1) + 1
                    hi = min(p + step, p_end)
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if _pair_term(pair_records, mid, record_size) < qt:
                            lo = mid + 1
                        else:
                            hi = mid
                    p = lo
                    if p >= p_end:
                        break
                if _pair_term(pair_records, p, record_size) == qt:
                    first = _pair_first(pair_records, pair_group_base, p, record_size)
                    last = first + np.int64(pair_records[p * record_size + record_size - 1]) + 1
                    prefetch(entries, first)
                    prefetch(entries, last - 1)
                    if n_match == match_first.size:
                        match_first = _grown(match_first)
                        match_last = _grown(match_last)
                        match_base = _grown(match_base)
                        match_w = _grown(match_w)
                    match_first[n_match] = first
                    match_last[n_match] = last
                    match_base[n_match] = seg_base
                    match_w[n_match] = q_values[i]
                    n_match += 1
                    p += 1
        n_cand += nb
    for m in range(n_match):
        w = match_w[m]
        seg_base = match_base[m]
        for j in range(match_first[m], match_last[m]):
            x = entries[j]
            bl = seg_base + (x >> 8)
            acc_code[bl] += w * np.float32(x & 255)
            acc_q[bl] += w
    for j in range(n_cand):
        blk = cand_block[j]
        dots[j] = block_step[blk] * acc_code[j] + block_min[blk] * acc_q[j]

    # phase 2: blocks best summary first (a max-heap over the candidates); stop at the
    # first block the heap lets us skip, since every later one scores lower still
    for j in range(n_cand):
        heap[j] = j
    for i in range(n_cand // 2 - 1, -1, -1):
        _sift_down_max(heap, dots, n_cand, i)
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
        blk = cand_block[j]
        size, n_touched = _scan_block(
            np.int64(block_post_ptr[blk]), np.int64(block_post_ptr[blk + 1]), postings, words,
            term_mask, hi_shift, lo_shift, ordered, q_dense, visited, touched, n_touched,
            h_scores, h_docs, size, capacity)

    for i in range(nt):
        q_dense[q_terms[i]] = 0.0
    for j in range(n_touched):
        visited[touched[j] >> 6] = 0
    heap_to_row(h_scores, h_docs, size, out_docs, out_scores)


@njit(cache=True, nogil=True)
def alloc_scratch(vocab, n_docs, n_candidates, capacity, query_cut):
    """Scratch for one thread: dense query, visited bitset and log, candidate blocks, heaps."""
    n_candidates = max(n_candidates, 1)
    return (np.zeros(vocab, np.float32),
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
def search_serial(q_indptr, q_indices, q_data, query_cut, heap_factor,
                  words, term_mask, hi_shift, lo_shift, q_scale, ordered,
                  list_block_ptr, block_post_ptr, postings, block_min, block_step,
                  list_seg_ptr, seg_block_ptr, seg_pair_ptr, pair_records, record_size,
                  pair_group_base, entries,
                  q_dense, visited, touched, cand_block, acc_code, acc_q, dots, heap, cut,
                  h_scores, h_docs, out_docs, out_scores):
    """Queries one after another on the calling thread, with the caller's scratch."""
    for qi in range(q_indptr.size - 1):
        a, b = q_indptr[qi], q_indptr[qi + 1]
        search_query(q_indices[a:b], q_data[a:b], query_cut, heap_factor,
                     words, term_mask, hi_shift, lo_shift, q_scale, ordered,
                     list_block_ptr, block_post_ptr, postings, block_min, block_step,
                     list_seg_ptr, seg_block_ptr, seg_pair_ptr, pair_records, record_size,
                     pair_group_base,
                     entries, q_dense, visited, touched, cand_block, acc_code, acc_q, dots,
                     heap, cut, h_scores, h_docs, out_docs[qi], out_scores[qi])


@njit(cache=True, nogil=True, parallel=True)
def search_parallel(q_indptr, q_indices, q_data, query_cut, heap_factor, n_chunks,
                    vocab, n_docs, n_candidates, capacity,
                    words, term_mask, hi_shift, lo_shift, q_scale, ordered,
                    list_block_ptr, block_post_ptr, postings, block_min, block_step,
                    list_seg_ptr, seg_block_ptr, seg_pair_ptr, pair_records, record_size,
                    pair_group_base, entries,
                    out_docs, out_scores):
    """Chunks of queries over numba's thread pool, one scratch set per chunk."""
    nq = q_indptr.size - 1
    for c in prange(n_chunks):
        (q_dense, visited, touched, cand_block, acc_code, acc_q, dots, heap, cut, h_scores,
         h_docs) = alloc_scratch(vocab, n_docs, n_candidates, capacity, query_cut)
        lo, hi = c * nq // n_chunks, (c + 1) * nq // n_chunks
        # q_indptr's entries are absolute offsets into q_indices, so a slice of it is a batch
        search_serial(q_indptr[lo:hi + 1], q_indices, q_data, query_cut, heap_factor,
                      words, term_mask, hi_shift, lo_shift, q_scale, ordered,
                      list_block_ptr, block_post_ptr, postings, block_min, block_step,
                      list_seg_ptr, seg_block_ptr, seg_pair_ptr, pair_records, record_size,
                      pair_group_base, entries,
                      q_dense, visited, touched, cand_block, acc_code, acc_q, dots, heap, cut,
                      h_scores, h_docs, out_docs[lo:hi], out_scores[lo:hi])


@njit(cache=True, nogil=True)
def check_structure(n_docs, vocab, words, term_mask, list_block_ptr, block_post_ptr, postings,
                    list_seg_ptr, seg_block_ptr, seg_pair_ptr, pair_records, record_size,
                    pair_group_base, entries):
    """The invariants the search kernels index by without bounds checks; returns "" or the
    first violation. Run on every loaded index, so a foreign or damaged group fails cleanly
    instead of reading or writing out of bounds."""
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
    # pair offsets: each group's base is the running total of the pairs' sizes
    n_pairs = pair_records.size // record_size
    total = np.int64(0)
    for p in range(n_pairs):
        if p % 16 == 0 and np.int64(pair_group_base[p >> 4]) != total:
            return "summary pair offsets are inconsistent"
        total += np.int64(pair_records[p * record_size + record_size - 1]) + 1
    if total != entries.size:
        return "summary pairs do not cover the entries"
    # segments: inside their list's blocks; pairs ascending by term; entries inside the
    # segment's blocks
    for t in range(list_block_ptr.size - 1):
        for s in range(list_seg_ptr[t], list_seg_ptr[t + 1]):
            b_lo, b_hi = seg_block_ptr[s], seg_block_ptr[s + 1]
            if b_lo < list_block_ptr[t] or b_hi > list_block_ptr[t + 1] or b_hi - b_lo > 256:
                return "segment blocks outside its list"
            for p in range(seg_pair_ptr[s], seg_pair_ptr[s + 1]):
                term = _pair_term(pair_records, p, record_size)
                if term >= vocab:
                    return "summary term outside the vocabulary"
                if p > seg_pair_ptr[s] and term <= _pair_term(pair_records, p - 1, record_size):
                    return "summary terms not ascending"
                first = _pair_first(pair_records, pair_group_base, p, record_size)
                for j in range(first, first + np.int64(pair_records[p * record_size
                                                                    + record_size - 1]) + 1):
                    if np.int64(entries[j] >> 8) >= b_hi - b_lo:
                        return "summary entry outside its segment"
    return ""
