"""Seeded synthetic SPLADE-like vectors, calibrated on real splade-tiny encodings.

Model: documents and queries mix *topic* terms and *background* terms.

* Background term popularity follows a document-frequency curve (`BACKGROUND_DF`): the
  probability of drawing rank ``r`` is ``-ln(1 - df(r)) / n`` (the per-draw probability
  that yields document frequency ``df(r)`` after ``n`` background draws), log-log
  interpolated between anchor ranks, with a power-law tail beyond them. Ranks map to term
  ids through a seeded permutation of the vocabulary.
* ``n_docs / docs_per_topic`` topics, each a set of ``topic_terms`` terms drawn from the
  background distribution flattened to the power ``topic_flatten``, with Zipf weights
  inside the topic. Each document and query belongs to one topic and draws a share of its
  terms from it (Beta-distributed around ``doc_topic_share`` / ``query_topic_share``): this
  is what makes a query's best documents share its heavy terms, as relevant documents do.
  A share ``topic_window`` of those draws falls near the vector's own centre on a ring of
  the topic's terms, so a topic holds graded sub-themes: the documents whose centre is
  near a query's share most of its terms, and its score falls off smoothly beyond them.
* Number of distinct terms per vector: log-normal (``doc_nnz_log``, ``query_nnz_log``).
* Weights: the measured weight quantile function (`DOC_WEIGHT_QUANTILES`,
  `QUERY_WEIGHT_QUANTILES`) at ``u ~ max(v1, v2)`` for topic terms and ``min(v1, v2)`` for
  background terms, so topic terms are the heavy ones while the pooled distribution stays
  close to the measured one. ``topic_weight_corr`` correlates a topic term's ``v`` across
  its topic (a Gaussian copula on a level per (topic, term)), so the vectors of one topic
  weight a term alike, as similar real documents do; the maximum over a block of them
  (what a block summary keeps) then stays close to any one of them, as on real vectors.

`describe` measures the statistics used for the calibration; ``jobs/bench_index.py``
reports them for the real and the synthetic collections side by side.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr, ndtri

# --- calibration constants -------------------------------------------------------------------
# Targets measured with `describe` on the splade-tiny encodings (reference settings: documents
# truncated at 256 tokens, queries at 64) of the union of the BEIR collections cisi, scifact
# and vaswani (18,072 documents, 1,314 queries; `jobs/bench_generator.py`). The parameters of
# the topic model, the background curve and the weight tables were then fitted so that
# `describe(generate(18072, 1314, 0))` reproduces them (see `CALIBRATION_TARGETS`), and the
# generator was checked against the real union on the recall-latency curves of our blocked
# index and Seismic (BENCHMARKS.md section 16). An earlier calibration (cisi and scifact
# alone, 5,000 documents) had 1.6x longer documents and pruned much worse than real vectors.
# The per-vector topic shares were then widened (`share_concentration` 1.5 -> 0.6, topical
# weights 1.6 -> 1.8) against the recall grid of section 16: synthetic recall lost too little
# at heap_factor 1.0. A fifth calibration traced that to block summaries (`jobs/summary_fidelity.py`):
# for a query's exact top-10 documents, their best block's summary overstates their score by a
# median 1.25x on the real union and 1.81x here, because topic-mates draw a term's weight
# independently. Topics of 650 terms with `topic_weight_corr` 0.875 fit that grid better but
# spread a query's terms thin: three overlap statistics fell 22-29% off their targets. The
# seventh calibration (2026-12-04) keeps the large topics and the weight levels (0.8) and puts
# 70% of a vector's topical draws near its own centre in the topic (`topic_window`), which
# brings the overlaps back; lengths were refitted (`doc_nnz_log`, `query_nnz_log`) and
# topical weights drawn heavier (2.2). Over seeds 0-4 every point of the recall grid is then
# within 0.03 of the real one for both libraries (ours: worst 0.022-0.028, against 0.042-0.053
# before). Still off: a little less recall at heap_factor 0.8, 0-20% more latency at equal
# parameters, weights 12-14% heavier (BENCHMARKS.md section 16).

#: (rank, document frequency) measured on the real encodings: the calibration target
MEASURED_DF = np.array([
    [1, 0.655], [10, 0.358], [100, 0.146], [1000, 0.0346], [3000, 0.0105],
    [10000, 0.000719],
])
#: (rank, document frequency) of the *background* distribution, fitted so that background
#: plus topic draws reproduce `MEASURED_DF`
BACKGROUND_DF = np.array([
    [1, 0.768], [3, 0.555], [10, 0.54], [30, 0.32], [100, 0.194], [300, 0.1015],
    [1000, 0.0416], [3000, 0.0124], [6000, 0.00185], [10000, 0.00077], [14000, 0.00015],
])
#: power-law exponent of the per-draw probability beyond the last background rank (fitted
#: to the share of the vocabulary the real collections use)
DF_TAIL_EXPONENT = 4.0
#: weight quantiles at `WEIGHT_PROBS` (documents, queries): fitted so that the generated
#: weights have the measured quantiles (topical terms are drawn heavier, see `_weight_table`,
#: and duplicate draws collapse, so the tables are not the measured quantiles themselves)
WEIGHT_PROBS = np.array([0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 0.999, 1.0])
DOC_WEIGHT_QUANTILES = np.array(
    [3e-6, 0.007829, 0.04088, 0.08517, 0.2358, 0.5743, 1.148, 1.613, 1.823, 2.114, 2.362, 2.756])
QUERY_WEIGHT_QUANTILES = np.array(
    [3e-6, 0.007057, 0.03778, 0.08025, 0.2241, 0.5618, 1.191, 1.74, 1.954, 2.258, 2.484, 2.678])
#: the statistics the fit aims at (`describe` keys, measured on the real union); reported
#: beside the achieved ones
CALIBRATION_TARGETS = {
    "doc_nnz_mean": 144.0, "query_nnz_mean": 55.1,
    "df_rank_1": 0.655, "df_rank_10": 0.358, "df_rank_100": 0.146, "df_rank_1000": 0.0346,
    "df_rank_3000": 0.0105, "df_rank_10000": 0.000719,
    "overlap_top1": 0.582, "overlap_top10": 0.476, "overlap_random": 0.0941,
    "score10_over_score1": 0.672, "vocab_used_share": 0.604,
}


@dataclass(frozen=True)
class SyntheticParams:
    """Shape of the generator; the defaults are the calibrated values."""

    doc_nnz_log: tuple[float, float] = (4.985, 1.05)     # (mean, std) of ln(draws / 1.3)
    query_nnz_log: tuple[float, float] = (3.74, 0.62)
    doc_nnz_max: int = 300            # target terms per vector capped here (0: no cap); the
    query_nnz_max: int = 230          # real ones are, by truncation at 256 / 64 tokens
    draw_factor: float = 1.3          # draws per target term (duplicates collapse)
    docs_per_topic: int = 100
    topic_terms: int = 650            # large topics, each vector near one part (`topic_window`)
    topic_flatten: float = 0.8        # topics draw terms from background ** this
    topic_zipf: float = 1.0           # Zipf exponent inside a topic
    doc_topic_share: float = 0.65     # mean share of a document's draws from its topic
    query_topic_share: float = 0.6
    topic_weight_power: float = 2.2   # how much heavier topical terms are drawn (`_weight_table`)
    share_concentration: float = 0.6  # per-vector shares ~ Beta with this a + b: vectors vary
    #                                   widely in how on-topic they are (1.5 lost too little
    #                                   recall at heap_factor 1.0 against real vectors)
    topic_weight_corr: float = 0.8    # correlation of a topic term's weight quantile between
    #                                   the vectors of its topic (0: independent draws)
    topic_window: float = 0.7         # share of a vector's topical draws taken near its own
    #                                   centre on the topic's ring of terms (0: none)
    window_width: float = 25.0        # std of those draws' offsets from the centre, in terms


def params_from_json(text: str) -> SyntheticParams:
    """The calibrated defaults with the fields of a JSON object overridden (JSON lists become
    tuples), as the benchmarks' ``--gen-params`` take them; an unknown field is an error."""
    overrides = json.loads(text)
    if not isinstance(overrides, dict):
        raise ValueError(f"generator parameters: a JSON object expected, got {text!r}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(SyntheticParams)})
    if unknown:
        raise ValueError(f"generator parameters: unknown field(s) {', '.join(unknown)}")
    return dataclasses.replace(SyntheticParams(), **{
        k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


_CHUNK_DOCS = 1 << 16


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table for sampling index i with probability p[i]."""
    n = p.size
    scaled = p / p.sum() * n
    prob = np.zeros(n, np.float32)
    alias = np.zeros(n, np.int32)
    small = list(np.flatnonzero(scaled < 1.0))
    large = list(np.flatnonzero(scaled >= 1.0))
    scaled = scaled.astype(np.float64)
    while small and large:
        s = small.pop()
        g = large[-1]
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        if scaled[g] < 1.0:
            large.pop()
            small.append(g)
    for i in large + small:
        prob[i] = 1.0
        alias[i] = i
    return prob, alias


def _draw(rng: np.random.Generator, table: tuple[np.ndarray, np.ndarray], n: int) -> np.ndarray:
    """n alias-method draws from one random 32-bit word each: the high bits pick the column,
    the low 16 bits decide between the column and its alias."""
    prob, alias = table
    bits = rng.integers(0, 2 ** 32, size=n, dtype=np.uint32)
    idx = ((bits >> np.uint32(16)).astype(np.uint64) * prob.size >> np.uint64(16)).astype(np.int32)
    keep = (bits & np.uint32(0xFFFF)) < prob16_of(prob)[idx]
    return np.where(keep, idx, alias[idx])


def prob16_of(prob: np.ndarray) -> np.ndarray:
    """Alias acceptance probabilities as 16-bit thresholds."""
    return np.minimum(np.rint(prob.astype(np.float64) * 65536), 65536).astype(np.uint32)


def background_probabilities(vocab_size: int, params: SyntheticParams,
                             background_df: np.ndarray = BACKGROUND_DF) -> np.ndarray:
    """Per-draw probability of each popularity rank (rank 0 = most frequent)."""
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    # background draws per document: the non-topic share of the draws
    mean_len = float(np.exp(params.doc_nnz_log[0] + params.doc_nnz_log[1] ** 2 / 2))
    draws = mean_len * params.draw_factor * (1.0 - params.doc_topic_share)
    r, df = background_df[:, 0], background_df[:, 1]
    p_known = -np.log1p(-df) / draws
    logp = np.interp(np.log(ranks), np.log(r), np.log(p_known))
    tail = ranks > r[-1]
    logp[tail] = np.log(p_known[-1]) - DF_TAIL_EXPONENT * (np.log(ranks[tail]) - np.log(r[-1]))
    p = np.exp(logp)
    return p / p.sum()


_QUANTILE_TABLE = 4096


def _weight_table(quantiles: np.ndarray, power: float = 2.0) -> np.ndarray:
    """The weight quantile function at u = v ** (1 / power) (entries 0..4095: topical terms)
    and u = 1 - (1 - v) ** (1 / power) (entries 4096..8191: background terms), v uniform;
    power 2 is the max / min of two uniforms, power 1 makes topical terms no heavier. One
    table lookup per weight instead of uniforms, a max/min and an interpolation."""
    v = (np.arange(_QUANTILE_TABLE, dtype=np.float64) + 0.5) / _QUANTILE_TABLE
    u = np.concatenate([v ** (1.0 / power), 1.0 - (1.0 - v) ** (1.0 / power)])
    return np.interp(u, WEIGHT_PROBS, quantiles).astype(np.float32)


def _hash_uniform(keys: np.ndarray, salt: int) -> np.ndarray:
    """A uniform in (0, 1) per uint64 key, equal for equal keys (splitmix64's finaliser)."""
    with np.errstate(over="ignore"):
        x = keys + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _weights(rng: np.random.Generator, background: np.ndarray, table: np.ndarray,
             topic_level: np.ndarray | None = None, corr: float = 0.0) -> np.ndarray:
    """One weight per entry from ``table`` (`_weight_table`). ``topic_level``: uniform levels
    of the topic entries' (topic, term) pairs; their quantile is ``corr`` x that level plus
    independent noise on the normal scale (a Gaussian copula: each entry stays uniform)."""
    background = background.astype(np.int32)
    if topic_level is None:
        idx = rng.integers(0, _QUANTILE_TABLE, size=background.size, dtype=np.int32)
    else:
        noise = rng.standard_normal(background.size)
        z = np.where(background, noise, corr * ndtri(topic_level) + np.sqrt(1.0 - corr ** 2) * noise)
        idx = np.minimum(ndtr(z) * _QUANTILE_TABLE, _QUANTILE_TABLE - 1).astype(np.int32)
    return table[idx + background * _QUANTILE_TABLE]


def _vectors(rng: np.random.Generator, n: int, topics: np.ndarray, nnz_log: tuple[float, float],
             nnz_max: int, topic_share: float, quantiles: np.ndarray, rank_to_term: np.ndarray,
             bg_table, topic_pos_table, topic_terms: np.ndarray, vocab_size: int,
             draw_factor: float, share_concentration: float,
             weight_power: float, weight_corr: float, salt: int,
             window: float, width: float) -> sp.csr_matrix:
    """``n`` sparse vectors of the given topics, generated in chunks of rows. ``salt`` seeds
    the per-(topic, term) weight levels, shared by documents and queries. A share ``window``
    of the topical draws lands near a per-vector centre (normal offsets of std ``width``
    positions, wrapping round the topic's terms) instead of at the topic's Zipf positions."""
    lengths = np.clip(np.rint(rng.lognormal(nnz_log[0], nnz_log[1], n)), 1,
                      min(vocab_size, nnz_max) if nnz_max > 0 else vocab_size)
    shares = rng.beta(topic_share * share_concentration,
                      (1.0 - topic_share) * share_concentration, n)
    # duplicate draws collapse into one term: draw a few more than the target length
    draws = np.rint(lengths * draw_factor).astype(np.int64)
    n_topical = rng.binomial(draws, shares)
    centers = rng.integers(0, topic_terms.shape[1], n) if window > 0 else None
    table = _weight_table(quantiles, weight_power)
    rank_to_term = rank_to_term.astype(np.uint32)
    topic_terms = topic_terms.astype(np.uint32)
    # keys fit uint32 when chunk rows * vocab * 2 < 2**32 (uint32 sorts much faster)
    chunk = max(1, min(_CHUNK_DOCS, (2 ** 32 - 1) // (2 * vocab_size) - 1))
    wide = chunk < 1024
    key_type = np.uint64 if wide else np.uint32
    if wide:
        chunk = _CHUNK_DOCS
    data, indices, counts = [], [], []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        m = stop - start
        local = np.arange(m, dtype=key_type)
        n_top = n_topical[start:stop]
        top_rows = np.repeat(local, n_top)
        bg_rows = np.repeat(local, draws[start:stop] - n_top)
        pos = _draw(rng, topic_pos_table, top_rows.size)
        if centers is not None:  # a share of the draws near the vector's centre, on a ring
            near = rng.random(pos.size) < window
            off = np.rint(rng.standard_normal(pos.size) * width).astype(np.int64)
            ring = (np.repeat(centers[start:stop], n_top) + off) % topic_terms.shape[1]
            pos = np.where(near, ring, pos)
        top_terms = topic_terms[np.repeat(topics[start:stop], n_top), pos]
        bg_terms = rank_to_term[_draw(rng, bg_table, bg_rows.size)]
        # key: row, term, background flag -> sorting groups a row's terms ascending and puts
        # a term's topical draw first, so dedup keeps the topical copy
        v2 = key_type(2 * vocab_size)
        key = np.concatenate([top_rows * v2 + top_terms.astype(key_type) * key_type(2),
                              bg_rows * v2 + bg_terms.astype(key_type) * key_type(2)
                              + key_type(1)])
        key.sort()
        base = key >> key_type(1)
        first = np.empty(key.size, np.bool_)
        first[:1] = True
        np.not_equal(base[1:], base[:-1], out=first[1:])
        key = key[first]
        base = base[first]
        row = base // key_type(vocab_size)
        terms = (base - row * key_type(vocab_size)).astype(np.int32)
        indices.append(terms)
        level = None
        if weight_corr > 0.0:  # one level per (topic, term); background entries ignore it
            pair = (topics[start:stop][row.astype(np.int64)].astype(np.uint64) * np.uint64(vocab_size)
                    + terms.astype(np.uint64))
            level = _hash_uniform(pair, salt)
        data.append(_weights(rng, key & key_type(1), table, level, weight_corr))
        counts.append(np.bincount(row.astype(np.int64), minlength=m))
    indptr = np.zeros(n + 1, np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=indptr[1:])
    return sp.csr_matrix(
        (np.concatenate(data) if data else np.zeros(0, np.float32),
         np.concatenate(indices) if indices else np.zeros(0, np.int32),
         indptr), shape=(n, vocab_size))


class SyntheticCorpus:
    """One generator model (term map, topics, each vector's topic), drawn in chunks.

    ``documents(chunk_docs)`` yields the documents in order, ``chunk_docs`` at a time, then
    ``queries()`` draws the queries of the same model. So a corpus too large to hold at once
    is still *one* corpus: every chunk shares the term map and the topics, as the documents
    of one real collection do (independent seeds per chunk would give each chunk its own
    term popularity and topics). Draws come from one random stream, consumed in that order:
    the output is deterministic in the arguments and ``chunk_docs``, and one chunk of all the
    documents gives exactly `generate`'s.
    """

    def __init__(self, n_docs: int, n_queries: int, seed: int, vocab_size: int = 30522, *,
                 params: SyntheticParams | None = None,
                 background_df: np.ndarray = BACKGROUND_DF) -> None:
        if n_docs < 0 or n_queries < 0 or vocab_size < 1:
            raise ValueError("n_docs and n_queries must be >= 0 and vocab_size >= 1")
        self.n_docs, self.n_queries, self.seed, self.vocab_size = n_docs, n_queries, seed, vocab_size
        self.params = params = params or SyntheticParams()
        rng = self._rng = np.random.default_rng(seed)
        self._rank_to_term = rng.permutation(vocab_size).astype(np.int64)
        p = background_probabilities(vocab_size, params, background_df)
        self._bg_table = _alias_table(p)
        n_topics = max(1, n_docs // params.docs_per_topic)
        size = min(params.topic_terms, vocab_size)
        flat = p ** params.topic_flatten
        flat /= flat.sum()
        # topic vocabularies: weighted draws without replacement (Gumbel top-k per topic)
        self._topic_terms = np.empty((n_topics, size), np.int64)
        logf = np.log(flat)
        for z in range(n_topics):
            g = logf - np.log(-np.log(rng.random(vocab_size)))
            self._topic_terms[z] = self._rank_to_term[np.argpartition(-g, size - 1)[:size]]
        self._topic_pos_table = _alias_table(1.0 / np.arange(1, size + 1) ** params.topic_zipf)
        self._doc_topics = rng.integers(0, n_topics, n_docs)
        self._query_topics = rng.integers(0, n_topics, n_queries)
        self._next_doc = 0
        self._queries_drawn = False

    def _draw(self, n: int, topics: np.ndarray, nnz_log, nnz_max, share, quantiles
              ) -> sp.csr_matrix:
        p = self.params
        return _vectors(self._rng, n, topics, nnz_log, nnz_max, share, quantiles,
                        self._rank_to_term, self._bg_table, self._topic_pos_table,
                        self._topic_terms, self.vocab_size, p.draw_factor, p.share_concentration,
                        p.topic_weight_power, p.topic_weight_corr, self.seed, p.topic_window,
                        p.window_width)

    def documents(self, chunk_docs: int):
        """The documents, ``chunk_docs`` rows a CSR matrix, in order (once per corpus)."""
        if chunk_docs < 1:
            raise ValueError(f"chunk_docs must be >= 1, got {chunk_docs}")
        if self._next_doc:
            raise RuntimeError("documents() of a SyntheticCorpus can be drawn only once")
        p = self.params
        for lo in range(0, self.n_docs, chunk_docs):
            hi = min(self.n_docs, lo + chunk_docs)
            self._next_doc = hi
            yield self._draw(hi - lo, self._doc_topics[lo:hi], p.doc_nnz_log, p.doc_nnz_max,
                             p.doc_topic_share, DOC_WEIGHT_QUANTILES)

    def queries(self) -> sp.csr_matrix:
        """The queries, drawn after every document (they share the documents' topics); once
        per corpus, since a second draw would silently give other queries."""
        if self._next_doc < self.n_docs:
            raise RuntimeError("draw every document of a SyntheticCorpus before its queries")
        if self._queries_drawn:
            raise RuntimeError("queries() of a SyntheticCorpus can be drawn only once")
        self._queries_drawn = True
        p = self.params
        return self._draw(self.n_queries, self._query_topics, p.query_nnz_log, p.query_nnz_max,
                          p.query_topic_share, QUERY_WEIGHT_QUANTILES)


def generate(n_docs: int, n_queries: int, seed: int, vocab_size: int = 30522, *,
             params: SyntheticParams | None = None,
             background_df: np.ndarray = BACKGROUND_DF) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Synthetic (docs, queries): float32 CSR matrices with ``vocab_size`` columns.

    Deterministic in the arguments. Queries share topics with the documents, so each query
    has documents that match its heavy terms. ``params``/``background_df`` exist for
    calibration; the defaults are the calibrated values. (`SyntheticCorpus` draws the same
    model in chunks, for corpora too large to hold at once.)
    """
    corpus = SyntheticCorpus(n_docs, n_queries, seed, vocab_size, params=params,
                             background_df=background_df)
    chunks = list(corpus.documents(max(1, n_docs)))
    docs = chunks[0] if chunks else sp.csr_matrix((0, vocab_size), dtype=np.float32)
    return docs, corpus.queries()


def describe(docs: sp.csr_matrix, queries: sp.csr_matrix, *, max_docs: int = 20000,
             max_queries: int = 200, seed: int = 0) -> dict[str, float]:
    """The statistics the generator is calibrated on.

    Term popularity (document frequency at fixed ranks, share of the vocabulary used),
    vector lengths, weight quantiles, and query-document overlap: the share of a query's
    terms found in its exact top-1 / mean top-10 documents / a random document, and the
    ratio of the 10th to the 1st exact score. Overlap statistics use at most ``max_docs``
    documents and ``max_queries`` queries (sampled with ``seed``).
    """
    docs = sp.csr_matrix(docs)
    queries = sp.csr_matrix(queries)
    n, vocab = docs.shape
    dn = np.diff(docs.indptr)
    qn = np.diff(queries.indptr)
    df = np.bincount(docs.indices, minlength=vocab)
    dfs = np.sort(df)[::-1] / max(1, n)
    out: dict[str, float] = {
        "n_docs": float(n), "n_queries": float(queries.shape[0]),
        "doc_nnz_mean": float(dn.mean()) if n else 0.0,
        "doc_nnz_log_mean": float(np.log(np.maximum(dn, 1)).mean()) if n else 0.0,
        "doc_nnz_log_std": float(np.log(np.maximum(dn, 1)).std()) if n else 0.0,
        "query_nnz_mean": float(qn.mean()) if qn.size else 0.0,
        "query_nnz_log_mean": float(np.log(np.maximum(qn, 1)).mean()) if qn.size else 0.0,
        "query_nnz_log_std": float(np.log(np.maximum(qn, 1)).std()) if qn.size else 0.0,
        "vocab_used_share": float((df > 0).mean()),
    }
    for r in (1, 10, 100, 1000, 3000, 10000):
        out[f"df_rank_{r}"] = float(dfs[r - 1]) if r <= vocab else 0.0
    for prob in (0.1, 0.5, 0.9, 0.99):
        out[f"doc_weight_q{int(prob * 100)}"] = float(np.quantile(docs.data, prob)) \
            if docs.nnz else 0.0
        out[f"query_weight_q{int(prob * 100)}"] = float(np.quantile(queries.data, prob)) \
            if queries.nnz else 0.0
    rng = np.random.default_rng(seed)
    d_sel = np.sort(rng.choice(n, min(n, max_docs), replace=False)) if n else np.zeros(0, int)
    q_sel = np.sort(rng.choice(queries.shape[0], min(queries.shape[0], max_queries),
                               replace=False)) if queries.shape[0] else np.zeros(0, int)
    sub, qs = docs[d_sel], queries[q_sel]
    if sub.shape[0] >= 10 and qs.shape[0]:
        scores = (qs @ sub.T).toarray()
        qbin = (qs > 0).astype(np.float32)
        dbin = (sub > 0).astype(np.float32)
        common = (qbin @ dbin.T).toarray()
        qlen = np.maximum(np.diff(qs.indptr), 1)[:, None]
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        rows = np.arange(qs.shape[0])[:, None]
        share = common / qlen
        out["overlap_top1"] = float(share[rows[:, 0], top[:, 0]].mean())
        out["overlap_top10"] = float(share[rows, top].mean())
        out["overlap_random"] = float(share.mean())
        s1 = scores[rows[:, 0], top[:, 0]]
        s10 = scores[rows[:, 0], top[:, 9]]
        ok = s1 > 0
        out["score10_over_score1"] = float((s10[ok] / s1[ok]).mean()) if ok.any() else 0.0
        out["positive_score_share"] = float((scores > 0).mean())
    return out
