"""Numba kernels that build the blocked index: static pruning, clustering into blocks, and
the quantised block summaries. Orchestrated by `pipeline.index.blocked`."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pipeline.index.bits import (ENTRY_BLOCK_SHIFT, ENTRY_CODE_MASK, PAIR_GROUP, SEGMENT_BLOCKS,
                                 U8_LEVELS, block_id_bits, read_bits, read_varint)


@njit(cache=True, nogil=True)
def _reserve(buf, need):
    """``buf`` if it holds ``need`` items, else a copy with room for at least ``need``."""
    if need <= buf.size:
        return buf
    out = np.empty(max(need, 2 * buf.size), buf.dtype)
    out[:buf.size] = buf
    return out


# ---------------------------------------------------------------------------------------------
# Static pruning
# ---------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, parallel=True)
def heaviest_term(indptr, indices, data):
    """Each document's heaviest term (ties: lower term; -1 for an empty document)."""
    n_docs = indptr.size - 1
    out = np.full(n_docs, -1, np.int32)
    for d in prange(n_docs):
        best = -1
        for e in range(indptr[d], indptr[d + 1]):
            if best < 0 or data[e] > data[best]:
                best = e
        if best >= 0:
            out[d] = indices[best]
    return out


@njit(cache=True, nogil=True, parallel=True)
def pruned_entries(col_ptr, row_idx, values, keep, top_term, cap):
    """Mask of the (CSC) entries static pruning keeps: per list its ``cap`` heaviest entries
    among ``keep`` (ties: lower doc), plus every entry that is its document's heaviest term
    (``top_term[doc] == term``), cap or not, so that no document drops out of every list."""
    vocab = col_ptr.size - 1
    out = np.zeros(row_idx.size, np.bool_)
    for t in prange(vocab):
        a, b = col_ptr[t], col_ptr[t + 1]
        n = 0
        for p in range(a, b):
            if keep[p]:
                n += 1
        if n <= cap:
            for p in range(a, b):
                out[p] = keep[p]
        else:
            pos = np.empty(n, np.int64)
            vals = np.empty(n, np.float32)
            n = 0
            for p in range(a, b):
                if keep[p]:
                    pos[n] = p
                    vals[n] = values[p]
                    n += 1
            # positions ascend by doc, so a stable sort on -value breaks ties by lower doc
            order = np.argsort(-vals, kind="mergesort")
            for j in range(cap):
                out[pos[order[j]]] = True
        for p in range(a, b):
            if top_term[row_idx[p]] == t:
                out[p] = True
    return out


# ---------------------------------------------------------------------------------------------
# Per-document heaviest terms (the clustering's approximate document vectors)
# ---------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, parallel=True)
def kept_per_list(col_ptr, chosen):
    """Entries of each (CSC) list that ``chosen`` keeps (no nnz-sized temporary)."""
    vocab = col_ptr.size - 1
    out = np.zeros(vocab, np.int64)
    for t in prange(vocab):
        n = 0
        for p in range(col_ptr[t], col_ptr[t + 1]):
            if chosen[p]:
                n += 1
        out[t] = n
    return out


@njit(cache=True, nogil=True, parallel=True)
def heaviest_terms(indptr, indices, data, doc_cut):
    """(n_docs, doc_cut) term ids (-1 padded) and weights of each document's heaviest terms."""
    n_docs = indptr.size - 1
    terms = np.full((n_docs, doc_cut), -1, np.int32)
    weights = np.zeros((n_docs, doc_cut), np.float32)
    for d in prange(n_docs):
        a, b = indptr[d], indptr[d + 1]
        n = b - a
        if n <= doc_cut:
            for j in range(n):
                terms[d, j] = indices[a + j]
                weights[d, j] = data[a + j]
        else:
            order = np.argsort(-data[a:b], kind="mergesort")
            for j in range(doc_cut):
                terms[d, j] = indices[a + order[j]]
                weights[d, j] = data[a + order[j]]
    return terms, weights


# ---------------------------------------------------------------------------------------------
# Blocking and summaries, one posting list at a time
# ---------------------------------------------------------------------------------------------

@njit(inline="always")
def _best_centroid(d, top_terms, top_weights, slot_of, slot_ptr, slot_cent, slot_val,
                   scores, n_cent, dissolved):
    """Centroid with the largest approximate dot product with doc ``d`` (first on ties)."""
    scores[:n_cent] = 0.0
    for j in range(top_terms.shape[1]):
        t = top_terms[d, j]
        if t < 0:
            break
        s = slot_of[t]
        if s < 0:
            continue
        w = top_weights[d, j]
        for e in range(slot_ptr[s], slot_ptr[s + 1]):
            scores[slot_cent[e]] += w * slot_val[e]
    best = -1
    best_score = np.float32(-1.0)
    for c in range(n_cent):
        if dissolved[c]:
            continue
        if scores[c] > best_score:
            best_score = scores[c]
            best = c
    return best


@njit(cache=True, nogil=True)
def _cluster_list(docs, n_cent, indptr, indices, data, top_terms, top_weights,
                  min_cluster_size, slot_of, assign):
    """Random-centroid, one-round k-means by (approximate) dot product; fills ``assign``.

    Centroids are ``n_cent`` member documents drawn with numba's per-thread generator
    (seeded by the caller). Clusters with at most ``min_cluster_size`` documents are
    dissolved and their documents move to the nearest surviving centroid.
    """
    m = docs.size
    # partial Fisher-Yates: the first n_cent positions of perm are the chosen members
    perm = np.arange(m)
    for i in range(n_cent):
        j = i + np.random.randint(0, m - i)
        perm[i], perm[j] = perm[j], perm[i]
    cent_docs = docs[perm[:n_cent]]

    # a small inverted index over the centroids' full vectors, keyed by compact term slots
    n_entries = 0
    for c in range(n_cent):
        d = cent_docs[c]
        n_entries += indptr[d + 1] - indptr[d]
    slot_terms = np.empty(n_entries, np.int32)
    n_slots = 0
    for c in range(n_cent):
        d = cent_docs[c]
        for e in range(indptr[d], indptr[d + 1]):
            t = indices[e]
            if slot_of[t] < 0:
                slot_of[t] = n_slots
                slot_terms[n_slots] = t
                n_slots += 1
    slot_ptr = np.zeros(n_slots + 1, np.int64)
    for c in range(n_cent):
        d = cent_docs[c]
        for e in range(indptr[d], indptr[d + 1]):
            slot_ptr[slot_of[indices[e]] + 1] += 1
    for s in range(n_slots):
        slot_ptr[s + 1] += slot_ptr[s]
    fill = slot_ptr[:-1].copy()
    slot_cent = np.empty(n_entries, np.int32)
    slot_val = np.empty(n_entries, np.float32)
    for c in range(n_cent):
        d = cent_docs[c]
        for e in range(indptr[d], indptr[d + 1]):
            s = slot_of[indices[e]]
            slot_cent[fill[s]] = c
            slot_val[fill[s]] = data[e]
            fill[s] += 1

    scores = np.zeros(n_cent, np.float32)
    dissolved = np.zeros(n_cent, np.bool_)
    counts = np.zeros(n_cent, np.int64)
    for i in range(m):
        c = _best_centroid(docs[i], top_terms, top_weights, slot_of, slot_ptr, slot_cent,
                           slot_val, scores, n_cent, dissolved)
        assign[i] = c
        counts[c] += 1
    n_alive = 0
    for c in range(n_cent):
        if counts[c] <= min_cluster_size:
            dissolved[c] = True
        else:
            n_alive += 1
    if n_alive == 0:
        assign[:] = 0
    elif n_alive < n_cent:
        for i in range(m):
            if dissolved[assign[i]]:
                assign[i] = _best_centroid(docs[i], top_terms, top_weights, slot_of, slot_ptr,
                                           slot_cent, slot_val, scores, n_cent, dissolved)
    for s in range(n_slots):
        slot_of[slot_terms[s]] = -1


ENERGY_BUCKETS = 64


@njit(cache=True, nogil=True)
def _energy_summary(terms, vals, n, energy, out_terms, out_vals):
    """Keep the heaviest components of (terms, vals)[:n] until they hold ``energy`` of the
    L1 mass, the one that crosses the line included (ties: lower term first).

    A histogram over [0, max] finds the bucket where the line falls; only that bucket is
    sorted. Returns the number kept; the out arrays receive them (in no particular order).
    """
    total = 0.0
    vmax = np.float32(0.0)
    for j in range(n):
        total += vals[j]
        if vals[j] > vmax:
            vmax = vals[j]
    bucket_sum = np.zeros(ENERGY_BUCKETS, np.float64)
    bucket_cnt = np.zeros(ENERGY_BUCKETS, np.int64)
    scale = ENERGY_BUCKETS / vmax
    for j in range(n):
        b = min(ENERGY_BUCKETS - 1, int(vals[j] * scale))
        bucket_sum[b] += vals[j]
        bucket_cnt[b] += 1
    until = energy * total
    line = 0
    acc = 0.0
    for b in range(ENERGY_BUCKETS - 1, -1, -1):
        if acc + bucket_sum[b] >= until:
            line = b
            break
        acc += bucket_sum[b]
    acc = 0.0                      # mass above the line bucket, recomputed exactly
    for b in range(line + 1, ENERGY_BUCKETS):
        acc += bucket_sum[b]
    # everything above the line bucket, heaviest first, then the line bucket sorted
    above_t = np.empty(n, np.int64)
    above_v = np.empty(n, np.float32)
    n_above = 0
    line_t = np.empty(bucket_cnt[line], np.int64)
    line_v = np.empty(bucket_cnt[line], np.float32)
    n_line = 0
    for j in range(n):
        b = min(ENERGY_BUCKETS - 1, int(vals[j] * scale))
        if b > line:
            above_t[n_above] = terms[j]
            above_v[n_above] = vals[j]
            n_above += 1
        elif b == line:
            line_t[n_line] = terms[j]
            line_v[n_line] = vals[j]
            n_line += 1
    kept = 0
    for j in range(n_above):
        out_terms[kept] = above_t[j]
        out_vals[kept] = above_v[j]
        kept += 1
    # order the line bucket by (value desc, term asc)
    by_term = np.argsort(line_t[:n_line], kind="mergesort")
    order = by_term[np.argsort(-line_v[by_term], kind="mergesort")]
    for j in range(n_line):
        o = order[j]
        out_terms[kept] = line_t[o]
        out_vals[kept] = line_v[o]
        kept += 1
        acc += line_v[o]
        if acc >= until:
            break
    return kept


@njit(cache=True, nogil=True)
def _close_segment(trip_terms, trip_codes, n_trip, n_seg_blocks, slot_count, touched,
                   seg_sizes, pair_terms, pair_counts, entries, n_segs, n_pairs, n_entries):
    """Invert a segment's (term, code word) triples into pairs and entries (counting sort).

    seg_sizes[n_segs] = (blocks, pairs, entries); pair_counts holds entries per pair - 1.
    """
    n_distinct = 0
    for j in range(n_trip):
        t = trip_terms[j]
        if slot_count[t] == 0:
            touched[n_distinct] = t
            n_distinct += 1
        slot_count[t] += 1
    distinct = np.sort(touched[:n_distinct])
    seg_sizes = _reserve_rows(seg_sizes, n_segs + 1)
    pair_terms = _reserve(pair_terms, n_pairs + n_distinct)
    pair_counts = _reserve(pair_counts, n_pairs + n_distinct)
    entries = _reserve(entries, n_entries + n_trip)
    start = n_entries
    for j in range(n_distinct):
        t = distinct[j]
        cnt = slot_count[t]
        pair_terms[n_pairs + j] = t
        pair_counts[n_pairs + j] = cnt - 1
        slot_count[t] = start          # now the fill position
        start += cnt
    for j in range(n_trip):                       # triples come in block order
        t = trip_terms[j]
        entries[slot_count[t]] = trip_codes[j]
        slot_count[t] += 1
    for j in range(n_distinct):
        slot_count[distinct[j]] = 0
    seg_sizes[n_segs, 0] = n_seg_blocks
    seg_sizes[n_segs, 1] = n_distinct
    seg_sizes[n_segs, 2] = n_trip
    return (seg_sizes, pair_terms, pair_counts, entries, n_segs + 1, n_pairs + n_distinct,
            n_entries + n_trip)


@njit(cache=True, nogil=True)
def _reserve_rows(buf, need):
    if need <= buf.shape[0]:
        return buf
    out = np.empty((max(need, 2 * buf.shape[0]), buf.shape[1]), buf.dtype)
    out[:buf.shape[0]] = buf
    return out


@njit(cache=True, nogil=True)
def build_lists(first_term, last_term, seed, list_ptr, list_docs, indptr, indices, data,
                top_terms, top_weights, vocab, centroid_fraction, min_cluster_size,
                summary_energy):
    """Block and summarise the posting lists of terms ``[first_term, last_term)``.

    A list's blocks are cut into segments of at most `SEGMENT_BLOCKS` consecutive blocks;
    each segment stores its summaries inverted: per summary term (ascending), the blocks
    holding it with the term's u8 code.

    Returns, for those lists in term order:
      list_n_blocks int32 (n_lists)       blocks per list
      list_n_segs   int32 (n_lists)       segments per list
      block_docs    int32 (n_postings)    the lists' documents, block after block, ascending
                                          doc index inside a block
      block_sizes   int32 (n_blocks)
      block_min     float32 (n_blocks)    summary dequantisation: value = min + step * code
      block_step    float32 (n_blocks)
      seg_sizes     int64 (n_segs, 3)     blocks, pairs and entries of each segment
      pair_terms    int32 (n_pairs)       per segment, its summary terms ascending
      pair_counts   uint8 (n_pairs)       entries of the pair, minus one
      entries       uint16 (n_entries)    per pair, ascending block: (segment-local block
                                          << ENTRY_BLOCK_SHIFT) | code
    """
    n_lists = last_term - first_term
    p0 = list_ptr[first_term]
    n_post = list_ptr[last_term] - p0
    list_n_blocks = np.zeros(n_lists, np.int32)
    block_docs = np.empty(n_post, np.int32)
    block_sizes = np.empty(max(16, n_post // 8), np.int32)
    block_min = np.empty(block_sizes.size, np.float32)
    block_step = np.empty(block_sizes.size, np.float32)
    list_n_segs = np.zeros(n_lists, np.int32)
    seg_sizes = np.empty((64, 3), np.int64)
    pair_terms = np.empty(1024, np.int32)
    pair_counts = np.empty(1024, np.uint8)
    entries = np.empty(4096, np.uint16)
    n_blocks_total = 0
    n_segs = 0
    n_pairs = 0
    n_entries = 0

    slot_of = np.full(vocab, -1, np.int32)   # scratch, always restored to -1
    dense = np.zeros(vocab, np.float32)      # scratch, always restored to 0
    touched = np.empty(vocab, np.int32)
    kept_t = np.empty(vocab, np.int64)
    kept_v = np.empty(vocab, np.float32)
    slot_count = np.zeros(vocab, np.int64)   # scratch, always restored to 0
    trip_terms = np.empty(1024, np.int64)
    trip_codes = np.empty(1024, np.uint16)

    for li in range(n_lists):
        t_list = first_term + li
        a, b = list_ptr[t_list], list_ptr[t_list + 1]
        m = b - a
        if m == 0:
            continue
        docs = list_docs[a:b]
        n_cent = min(m, max(1, int(centroid_fraction * m)))
        assign = np.zeros(m, np.int32)
        if n_cent > 1:
            np.random.seed((seed * 1000003 + t_list) % 4294967296)
            _cluster_list(docs, n_cent, indptr, indices, data, top_terms, top_weights,
                          min_cluster_size, slot_of, assign)
        # group by centroid (counting sort keeps ascending doc order inside a block)
        counts = np.zeros(n_cent + 1, np.int64)
        for i in range(m):
            counts[assign[i] + 1] += 1
        for c in range(n_cent):
            counts[c + 1] += counts[c]
        out0 = a - p0
        fill = counts[:-1].copy()
        for i in range(m):
            c = assign[i]
            block_docs[out0 + fill[c]] = docs[i]
            fill[c] += 1

        # summaries, one segment at a time
        n_trip = 0
        n_blk = 0
        seg_blk = 0
        segs_before = n_segs
        for c in range(n_cent):
            lo, hi = counts[c], counts[c + 1]
            if hi == lo:
                continue
            n_touched = 0
            for i in range(lo, hi):
                d = block_docs[out0 + i]
                for e in range(indptr[d], indptr[d + 1]):
                    t = indices[e]
                    old = dense[t]
                    touched[n_touched] = t          # branch-free: kept only on first touch
                    n_touched += old == 0
                    dense[t] = max(old, data[e])
            union_t = touched[:n_touched].copy()
            union_v = np.empty(n_touched, np.float32)
            for j in range(n_touched):
                union_v[j] = dense[union_t[j]]
                dense[union_t[j]] = 0
            kept = _energy_summary(union_t, union_v, n_touched, summary_energy, kept_t, kept_v)
            if seg_blk == SEGMENT_BLOCKS:
                (seg_sizes, pair_terms, pair_counts, entries, n_segs, n_pairs,
                 n_entries) = _close_segment(trip_terms, trip_codes, n_trip, seg_blk,
                                             slot_count, touched, seg_sizes, pair_terms,
                                             pair_counts, entries, n_segs, n_pairs, n_entries)
                n_trip = 0
                seg_blk = 0
            hi_v = kept_v[0]
            lo_v = kept_v[0]
            for j in range(1, kept):
                hi_v = max(hi_v, kept_v[j])
                lo_v = min(lo_v, kept_v[j])
            step = np.float32((hi_v - lo_v) / U8_LEVELS)
            trip_terms = _reserve(trip_terms, n_trip + kept)
            trip_codes = _reserve(trip_codes, n_trip + kept)
            for j in range(kept):
                code = 0
                if step > 0:
                    code = int(np.floor((kept_v[j] - lo_v) / step + 0.5))
                    code = min(max(code, 0), U8_LEVELS)
                trip_terms[n_trip] = kept_t[j]
                trip_codes[n_trip] = (seg_blk << ENTRY_BLOCK_SHIFT) | code
                n_trip += 1
            block_sizes = _reserve(block_sizes, n_blocks_total + 1)
            block_min = _reserve(block_min, n_blocks_total + 1)
            block_step = _reserve(block_step, n_blocks_total + 1)
            block_sizes[n_blocks_total] = hi - lo
            block_min[n_blocks_total] = lo_v
            block_step[n_blocks_total] = step
            n_blocks_total += 1
            n_blk += 1
            seg_blk += 1
        if n_trip > 0:
            (seg_sizes, pair_terms, pair_counts, entries, n_segs, n_pairs,
             n_entries) = _close_segment(trip_terms, trip_codes, n_trip, seg_blk, slot_count,
                                         touched, seg_sizes, pair_terms, pair_counts, entries,
                                         n_segs, n_pairs, n_entries)
        list_n_blocks[li] = n_blk
        list_n_segs[li] = n_segs - segs_before

    return (list_n_blocks, list_n_segs, block_docs, block_sizes[:n_blocks_total].copy(),
            block_min[:n_blocks_total].copy(), block_step[:n_blocks_total].copy(),
            seg_sizes[:n_segs].copy(), pair_terms[:n_pairs].copy(),
            pair_counts[:n_pairs].copy(), entries[:n_entries].copy())


@njit(cache=True, nogil=True)
def _varint_size(value):
    n = 1
    while value >= 128:
        value >>= 7
        n += 1
    return n


@njit(cache=True, nogil=True)
def pair_group_sizes(pair_terms, seg_pairs):
    """(groups, delta bytes) of the pairs' grouped layout: per segment ``ceil(pairs /
    PAIR_GROUP)`` groups, and a varint of the term delta for every pair but a group's first."""
    n_groups = 0
    n_bytes = 0
    p = 0
    for s in range(seg_pairs.size):
        n = seg_pairs[s]
        n_groups += (n + PAIR_GROUP - 1) // PAIR_GROUP
        for i in range(1, n):
            if i % PAIR_GROUP != 0:
                n_bytes += _varint_size(np.int64(pair_terms[p + i]) - np.int64(pair_terms[p + i - 1]))
        p += n
    return n_groups, n_bytes


@njit(cache=True, nogil=True)
def pack_pair_groups(pair_terms, pair_counts, seg_pairs, seg_group_ptr, group_term, group_entry,
                     group_byte, pair_deltas, pair_ends):
    """Fill the grouped pair layout (sized by `pair_group_sizes`; documented in
    `pipeline.index.blocked`) from the build's per-pair terms and counts (entries - 1);
    ``pair_ends`` must arrive zeroed."""
    g = 0
    b = 0
    e = 0
    p = 0
    seg_group_ptr[0] = 0
    for s in range(seg_pairs.size):
        n = seg_pairs[s]
        for i in range(n):
            t = np.int64(pair_terms[p + i])
            if i % PAIR_GROUP == 0:
                group_term[g] = t
                group_entry[g] = e
                group_byte[g] = b
                g += 1
            else:
                delta = t - np.int64(pair_terms[p + i - 1])
                while delta >= 128:
                    pair_deltas[b] = (delta & 127) | 128
                    delta >>= 7
                    b += 1
                pair_deltas[b] = delta
                b += 1
            e += np.int64(pair_counts[p + i]) + 1
            pair_ends[(e - 1) >> 6] |= np.uint64(1) << np.uint64((e - 1) & 63)
        p += n
        seg_group_ptr[s + 1] = g


@njit(cache=True, nogil=True)
def entry_block_bytes(seg_sizes, seg_block_bits, seg_block_byte):
    """Each segment's block-id width (`block_id_bits`) into ``seg_block_bits`` and the
    byte offsets of its packed ids into ``seg_block_byte`` (S + 1; the last is the total)."""
    total = 0
    seg_block_byte[0] = 0
    for s in range(seg_sizes.shape[0]):
        bits = block_id_bits(seg_sizes[s, 0])
        seg_block_bits[s] = bits
        total += (seg_sizes[s, 2] * bits + 7) // 8
        seg_block_byte[s + 1] = total


@njit(cache=True, nogil=True)
def pack_entries(entries, seg_sizes, seg_block_bits, seg_block_byte, entry_codes, entry_blocks):
    """Split the build's uint16 entries into codes (one byte each) and block ids packed at
    their segment's width, low bits first (an id may straddle two bytes); ``entry_blocks``
    must arrive zeroed."""
    e = 0
    for s in range(seg_sizes.shape[0]):
        bits = np.int64(seg_block_bits[s])
        base = seg_block_byte[s]
        for k in range(seg_sizes[s, 2]):
            x = np.int64(entries[e])
            entry_codes[e] = x & ENTRY_CODE_MASK
            if bits:
                pos = k * bits
                word = (x >> ENTRY_BLOCK_SHIFT) << (pos & 7)      # at most 15 bits
                entry_blocks[base + (pos >> 3)] |= word & 255
                entry_blocks[base + (pos >> 3) + 1] |= word >> 8
            e += 1


@njit(cache=True, nogil=True)
def unpack_pair_groups(seg_block_ptr, seg_pair_ptr, seg_group_ptr, group_term, pair_deltas,
                       pair_ends, seg_block_bits, seg_block_byte, entry_blocks, n):
    """(global block, term) of every summary entry: the inverse of `pack_pair_groups`, for
    diagnostics (`BlockedIndex.summary_entries`), not search."""
    blocks = np.empty(n, np.int64)
    terms = np.empty(n, np.int64)
    e = 0
    b = 0
    for s in range(seg_pair_ptr.size - 1):
        term = np.int64(0)
        bits = np.int64(seg_block_bits[s])
        mask = (np.int64(1) << bits) - 1
        e0 = e
        for i in range(seg_pair_ptr[s + 1] - seg_pair_ptr[s]):
            if i % PAIR_GROUP == 0:
                term = np.int64(group_term[seg_group_ptr[s] + i // PAIR_GROUP])
            else:
                delta, b = read_varint(pair_deltas, b)
                term += delta
            while True:
                blocks[e] = seg_block_ptr[s] + read_bits(entry_blocks, seg_block_byte[s],
                                                         (e - e0) * bits, mask)
                terms[e] = term
                last = (pair_ends[e >> 6] >> np.uint64(e & 63)) & np.uint64(1)
                e += 1
                if last:
                    break
    return blocks, terms
