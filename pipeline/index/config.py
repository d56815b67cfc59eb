"""Configuration of the Seismic-style blocked index: build parameters and search defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.index.bits import CODECS
from pipeline.index.validate import check_float, check_int


@dataclass(frozen=True)
class BlockedIndexConfig:
    """Build parameters and search defaults of `BlockedIndex`, validated at construction.

    Build (names follow Seismic, Bruch et al., SIGIR 2024):

    * ``n_postings``: average posting-list length kept by static pruning. The globally
      largest ``vocab_size * n_postings`` (document, term) weights are kept ...
    * ``max_fraction``: ... and no list keeps more than ``n_postings * max_fraction``.
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
    """

    n_postings: int = 3000
    max_fraction: float = 1.5
    centroid_fraction: float = 0.1
    min_cluster_size: int = 2
    doc_cut: int = 15
    summary_energy: float = 0.4
    forward_values: str = "float16"
    seed: int = 42
    query_cut: int = 10
    heap_factor: float = 0.9

    def __post_init__(self) -> None:
        check_int(self.n_postings, "n_postings", 1)
        check_float(self.max_fraction, "max_fraction", 0.0, 1e9, low_open=True)
        check_float(self.centroid_fraction, "centroid_fraction", 0.0, 1.0, low_open=True)
        check_int(self.min_cluster_size, "min_cluster_size", 0)
        check_int(self.doc_cut, "doc_cut", 1)
        check_float(self.summary_energy, "summary_energy", 0.0, 1.0, low_open=True)
        if self.forward_values not in CODECS:
            raise ValueError(f"forward_values must be one of {sorted(CODECS)}, "
                             f"got {self.forward_values!r}")
        check_int(self.seed, "seed", 0)
        check_int(self.query_cut, "query_cut", 1)
        check_float(self.heap_factor, "heap_factor", 0.0, 1e9)
        if self.n_postings * self.max_fraction < 1:
            raise ValueError("n_postings * max_fraction must be >= 1 (the longest list allowed)")

    @property
    def list_cap(self) -> int:
        """The longest posting list static pruning keeps."""
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
        return cls().replace(**params)
