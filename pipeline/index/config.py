"""Configuration of the Seismic-style blocked index: build parameters and search defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pipeline.index.bits import CODECS
from pipeline.index.validate import check_float, check_int

FILTER_EXACT_FRACTION = 0.05
"""Filtered search on a blocked shard switches to exact scoring of the allowed documents
through the forward index when they are at most this fraction of the shard (OpenSearch's
rule for filtered ANN); overridable per call (``exact_below``).

Measured (`jobs/bench_filters.py --docs 100000 --queries 200`, synthetic SPLADE-like, k=10,
one thread, 2-core AMD EPYC box, 2026-12-02; BENCHMARKS.md "Filtered search: latency against
selectivity"): scoring only the allowed documents costs ~0.4 µs a document (4.0 ms at 10%,
0.18 ms at 1%), walking the blocks with the others pre-visited 2.3-3.1 ms below 10% (and its
recall@10 falls: 0.95 at 1%, 0.82 at 0.1%). The two cross near 6-7% of the shard; 5% keeps
the switch on the side where the exact path is both faster and exact. The walk's cost grows
with the shard and the exact path's with the allowed count, so the rule is a fraction."""


@dataclass(frozen=True)
class BlockedIndexConfig:
    """Build parameters and search defaults of `BlockedIndex`, validated at construction.

    Build (names follow Seismic, Bruch et al., SIGIR 2024):

    * ``n_postings``: average posting-list length kept by static pruning. The globally
      largest ``vocab_size * n_postings`` (document, term) weights are kept ...
    * ``max_fraction``: ... and no list keeps more than ``n_postings * max_fraction``,
      except that every document stays in the list of its heaviest term (ties: lower term),
      so that none becomes unreachable by search.
    * ``centroid_fraction``: each list is clustered around ``max(1, centroid_fraction *
      len(list))`` randomly chosen member documents; each cluster becomes one block.
    * ``min_cluster_size``: clusters with at most this many documents are dissolved and their
      documents reassigned to the nearest surviving centroid.
    * ``doc_cut``: clustering compares a document with the centroids through its
      ``doc_cut`` heaviest terms only (Seismic's approximate assignment).
    * ``summary_energy``: a block's summary (coordinate-wise max over its documents) keeps
      its heaviest components until they hold this fraction of its L1 mass.
    * ``forward_values``: precision of the weights in the forward index used for exact
      scoring: ``"float16"`` (half the memory; vocabularies up to 65,536 terms; weights up
      to 65,504) or ``"float32"`` (scores bit-identical to `ExactIndex`).
    * ``seed``: seeds centroid selection; the same documents and config give the same index.

    Search defaults (overridable per call):

    * ``query_cut``: only the posting lists of the query's ``query_cut`` heaviest terms are
      scanned.
    * ``heap_factor``: a block is skipped when the top-k heap is full and its summary score
      is below ``heap_factor`` times the k-th best score so far (0 disables skipping).

    Defaults that fit the collection: ``n_postings``, ``centroid_fraction``,
    ``summary_energy``, ``query_cut`` and ``heap_factor`` left at ``None`` are derived from
    the shard at build time by `derived` (rules in its docstring); values given explicitly
    win. The built index's config holds the values used and ``derived`` names the fields
    that were derived, so a saved index records both.
    """

    n_postings: int | None = None
    max_fraction: float = 1.5
    centroid_fraction: float | None = None
    min_cluster_size: int = 2
    doc_cut: int = 15
    summary_energy: float | None = None
    forward_values: str = "float16"
    seed: int = 42
    query_cut: int | None = None
    heap_factor: float | None = None
    derived: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_postings is not None:
            check_int(self.n_postings, "n_postings", 1)
        check_float(self.max_fraction, "max_fraction", 0.0, 1e9, low_open=True)
        if self.centroid_fraction is not None:
            check_float(self.centroid_fraction, "centroid_fraction", 0.0, 1.0, low_open=True)
        check_int(self.min_cluster_size, "min_cluster_size", 0)
        check_int(self.doc_cut, "doc_cut", 1)
        if self.summary_energy is not None:
            check_float(self.summary_energy, "summary_energy", 0.0, 1.0, low_open=True)
        if self.forward_values not in CODECS:
            raise ValueError(f"forward_values must be one of {sorted(CODECS)}, "
                             f"got {self.forward_values!r}")
        check_int(self.seed, "seed", 0)
        if self.query_cut is not None:
            check_int(self.query_cut, "query_cut", 1)
        if self.heap_factor is not None:
            check_float(self.heap_factor, "heap_factor", 0.0, 1e9)
        if self.n_postings is not None and self.n_postings * self.max_fraction < 1:
            raise ValueError("n_postings * max_fraction must be >= 1 (the longest list allowed)")
        derived = tuple(self.derived)
        unknown = set(derived) - set(DERIVED_FIELDS)
        if unknown:
            raise ValueError(f"derived: not derivable field(s) {sorted(unknown)}")
        object.__setattr__(self, "derived", derived)

    @property
    def resolved(self) -> bool:
        """Every derivable field holds a value (true of a built index's config)."""
        return all(getattr(self, name) is not None for name in DERIVED_FIELDS)

    def derived_for(self, n_docs: int, vocab_size: int, nnz: int,
                    used_terms: int | None = None) -> "BlockedIndexConfig":
        """This config with every ``None`` field derived from the shard's statistics:
        ``nnz`` (document, term) entries over ``n_docs`` documents and ``vocab_size`` terms,
        ``used_terms`` of which occur in some document (default: all of them).

        * ``n_postings = max(1, round(postings_for_list(nnz / used_terms)))``: a multiple of
          the mean length of the lists that exist (a fixed value is either a no-op on a small
          shard, 3000 against a mean list of 34, or prunes a large one blind), 2.5 up to a
          mean list of `LONG_LIST` and falling beyond it (`postings_for_list`). The mean over
          the whole vocabulary would be wrong on a shard that uses few of its terms (a 131k
          vocabulary, a few thousand documents): it derives 1 and caps every list at one
          document.
        * ``centroid_fraction = clamp(MIN_LIST_BLOCKS / n_postings, CENTROID_FRACTION,
          MAX_CENTROID_FRACTION)``: Seismic's 0.1 (blocks of ~10 documents) on long lists;
          on short ones, enough blocks per mean list that summaries can still skip some.
        * ``summary_energy = SUMMARY_ENERGY``: Seismic's guidance (0.4-0.6).
        * ``query_cut = clamp(round(QUERY_CUT_PER_SQRT_DOC_TERMS * sqrt(nnz / n_docs) *
          pruning_factor), MIN_QUERY_CUT, MAX_QUERY_CUT)`` (``MAX_QUERY_CUT`` on a shard whose
          mean list is shorter than ``CUT_FREE_MEAN_LIST``), where ``pruning_factor =
          max(1, POSTINGS_PER_USED_LIST * used_list / n_postings) ** CUT_PER_PRUNING_EXPONENT``
          widens the cut when the build keeps less than the usual multiple of the lists, and
          ``heap_factor = HEAP_FACTOR``: see the constants' notes.
        """
        values, _ = self._derive(n_docs, vocab_size, nnz, used_terms)
        return dataclasses.replace(self, derived=tuple(sorted(set(self.derived) | set(values))),
                                   **values)

    def derivation(self, n_docs: int, vocab_size: int, nnz: int,
                   used_terms: int | None = None) -> dict[str, str]:
        """How `derived_for` derives, from these shard statistics, each field this config
        leaves at ``None`` or names in ``derived`` (a built index's config: its derived values
        are set aside and derived again): field -> one line with the rule and its numbers, in
        `DERIVED_FIELDS` order. ``lsr info`` prints it for every shard."""
        # the derived fields back at None (what was given explicitly stays): the input of the
        # derivation that produced this config
        given = dataclasses.replace(self, derived=(), **{name: None for name in self.derived})
        _, reasons = given._derive(n_docs, vocab_size, nnz, used_terms)
        return {name: reasons[name] for name in DERIVED_FIELDS if name in reasons}

    def _derive(self, n_docs: int, vocab_size: int, nnz: int, used_terms: int | None
                ) -> tuple[dict[str, Any], dict[str, str]]:
        """(derived values, one explanatory line each) for the fields left at ``None``."""
        values: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        mean_list = nnz / max(1, vocab_size)
        used = vocab_size if used_terms is None else used_terms
        used_list = nnz / max(1, used)
        if self.n_postings is None:
            values["n_postings"] = max(1, round(postings_for_list(used_list)),
                                       math.ceil(1 / self.max_fraction))
            lists = f"the mean used list {used_list:.1f} ({nnz:,} postings / {used:,} terms in use)"
            reasons["n_postings"] = (
                f"{POSTINGS_PER_USED_LIST:g} x {lists}" if used_list <= LONG_LIST else
                f"{POSTINGS_PER_USED_LIST:g} x {LONG_LIST:g} x (list / {LONG_LIST:g}) ** "
                f"{LONG_LIST_EXPONENT:g}, list = {lists}")
        n_postings = values.get("n_postings", self.n_postings)
        if self.centroid_fraction is None:
            values["centroid_fraction"] = float(min(MAX_CENTROID_FRACTION, max(
                CENTROID_FRACTION, MIN_LIST_BLOCKS / n_postings)))
            reasons["centroid_fraction"] = (
                f"{MIN_LIST_BLOCKS} blocks / n_postings {n_postings} = "
                f"{MIN_LIST_BLOCKS / n_postings:.3g}, within {CENTROID_FRACTION:g}.."
                f"{MAX_CENTROID_FRACTION:g}")
        if self.summary_energy is None:
            values["summary_energy"] = SUMMARY_ENERGY
            reasons["summary_energy"] = f"the default {SUMMARY_ENERGY:g} (Seismic's guidance 0.4-0.6)"
        if self.query_cut is None:
            pruning = max(1.0, POSTINGS_PER_USED_LIST * used_list / n_postings)
            doc_terms = nnz / max(1, n_docs)
            if mean_list < CUT_FREE_MEAN_LIST:
                values["query_cut"] = MAX_QUERY_CUT
                reasons["query_cut"] = (f"the maximum: the mean list {mean_list:.2f} is under "
                                        f"{CUT_FREE_MEAN_LIST:g}, so visiting a list costs nothing")
            else:
                raw = (QUERY_CUT_PER_SQRT_DOC_TERMS * math.sqrt(doc_terms)
                       * pruning ** CUT_PER_PRUNING_EXPONENT)
                values["query_cut"] = int(min(MAX_QUERY_CUT, max(MIN_QUERY_CUT, round(raw))))
                reasons["query_cut"] = (
                    f"{QUERY_CUT_PER_SQRT_DOC_TERMS:g} x sqrt({doc_terms:.1f} terms a document) x "
                    f"{pruning:.2f} ** {CUT_PER_PRUNING_EXPONENT:g} ({POSTINGS_PER_USED_LIST:g} x "
                    f"the mean used list / n_postings {n_postings}, at least 1) = {raw:.2f}, "
                    f"rounded within {MIN_QUERY_CUT}..{MAX_QUERY_CUT}")
        if self.heap_factor is None:
            values["heap_factor"] = HEAP_FACTOR
            reasons["heap_factor"] = f"the default {HEAP_FACTOR:g}"
        return values, reasons

    @property
    def list_cap(self) -> int:
        """The longest posting list static pruning keeps."""
        if self.n_postings is None:
            raise ValueError("n_postings is not set: derive it first (derived_for)")
        return max(1, int(self.n_postings * self.max_fraction))

    def replace(self, **overrides: Any) -> "BlockedIndexConfig":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown BlockedIndexConfig parameter(s): {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "BlockedIndexConfig":
        """Read `to_dict`'s output, including dicts written before fields were added (an old
        index's values were all explicit: nothing in it was derived)."""
        return cls().replace(**params)


DERIVED_FIELDS = ("n_postings", "centroid_fraction", "summary_energy", "query_cut",
                  "heap_factor")
"""Fields `BlockedIndexConfig.derived_for` fills from the shard when left at ``None``."""

POSTINGS_PER_USED_LIST = 2.5
"""Derived ``n_postings`` as a multiple of the mean length of the non-empty posting lists
``nnz / used_terms``, up to a mean list of `LONG_LIST`; with the per-list cap
(``max_fraction``) lists keep up to 3.75 x that mean. (Before 2026-12-02 the rule was
5 x ``nnz / vocab``: 2-2.4 x the used-list mean on the three collections of BENCHMARKS §7,
where 13-19k of the 30,522 terms occur.)"""
LONG_LIST = 150.0
LONG_LIST_EXPONENT = 0.73
"""Beyond a mean list of `LONG_LIST` postings, derived ``n_postings`` grows as the mean list
to the power `LONG_LIST_EXPONENT`, from 2.5 x `LONG_LIST` at the joint: a top-10 needs a
smaller share of a longer list. Measured (BENCHMARKS §7): the multiple that reaches recall@10
0.95-0.98 cheapest is 1.2-3.4 on the real collections of 1.5k-18k documents (mean lists 24-141,
all under the joint: their derived values are as before), 1-1.5 on 100k synthetic documents
(mean list 517) and 1.0 on 1M (4,366: Seismic's best build at both targets; ours there took
0.82-0.92x its time at equal parameters on one box, 1.00-1.07x at equal recall on another).
The exponent puts the curve through the 1M point (1.0 x); at 100k it gives 1.8 x, above the
cheapest, on the side of recall. Not fitted on real collections over 18k documents: none is
at hand."""


def postings_for_list(mean_list: float) -> float:
    """Derived ``n_postings`` for a shard whose non-empty posting lists hold ``mean_list``
    postings on average: `POSTINGS_PER_USED_LIST` x it up to `LONG_LIST`, then growing as its
    `LONG_LIST_EXPONENT` power (continuous at the joint)."""
    if mean_list <= LONG_LIST:
        return POSTINGS_PER_USED_LIST * mean_list
    return POSTINGS_PER_USED_LIST * LONG_LIST * (mean_list / LONG_LIST) ** LONG_LIST_EXPONENT


CENTROID_FRACTION = 0.1
MAX_CENTROID_FRACTION = 0.5
MIN_LIST_BLOCKS = 4
"""Derived ``centroid_fraction``: Seismic's 0.1, raised (up to 0.5) so that a list of
``n_postings`` documents has at least ``MIN_LIST_BLOCKS`` blocks."""
SUMMARY_ENERGY = 0.4
QUERY_CUT_PER_SQRT_DOC_TERMS = 0.7
MIN_QUERY_CUT = 4
MAX_QUERY_CUT = 16
"""Derived ``query_cut``: grows with the square root of the mean document length
``nnz / n_docs`` (longer documents come with longer, flatter queries from the same
encoder, so the heaviest few terms hold less of a query's mass), within 4..16."""
CUT_PER_PRUNING_EXPONENT = 0.65
"""Derived ``query_cut`` is also multiplied by ``(POSTINGS_PER_USED_LIST x used list /
n_postings) ** CUT_PER_PRUNING_EXPONENT`` when that ratio is over 1: a build that keeps a
smaller multiple of the lists (a long-list shard under `postings_for_list`, or an explicit
smaller ``n_postings``) has dropped more of each top document's postings from the lists of
the query's heaviest terms, and more lists must be visited to find it. Without it recall at
the derived defaults fell with shard size (BENCHMARKS §7, synthetic vectors of the seventh
calibration): 0.978-0.985 on the real collections (2.5x, factor 1), 0.969 at 100k documents
(1.77x, query_cut 8), 0.944 at 1M (1.0x, query_cut 8), where query_cut 10 at 100k reached
0.981 and 15 at 1M 0.979. The exponent puts 1M at 15 (8.3 x 2.5 ** 0.65) and gives 10 at
100k. Fitted on those two synthetic shard sizes; the real collections are unaffected."""
CUT_FREE_MEAN_LIST = 1.0
"""Below one posting per term on average (a tiny shard, or a vocabulary far larger than the
shard), visiting a query term costs about nothing: cutting terms would save no time and only
lose recall, so such shards visit ``MAX_QUERY_CUT`` terms. Every collection benchmarked in
BENCHMARKS §7 has mean lists of 7 or more postings and is unaffected."""
HEAP_FACTOR = 0.8
"""Derived ``heap_factor``."""
