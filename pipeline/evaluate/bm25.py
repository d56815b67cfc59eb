"""BM25 through `bm25s`, for orientation beside SPLADE (the same runner and conventions evaluate both).

Configuration (`BM25Config` defaults): Lucene BM25 (``method="lucene"``, idf = ln(1 + (N - df + 0.5) /
(df + 0.5))) with k1 = 0.9, b = 0.4 (Anserini's defaults, the setting behind the reference numbers in
the field notes); tokens are bm25s's default: lower-cased words of two or more word characters
(``(?u)\\b\\w\\w+\\b``), no stemming; English stop words removed (bm25s's list). Document text is
BEIR's title + " " + text, like SPLADE's. Ranking: every document scoring > 0, by score, ties by
corpus order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from pipeline.evaluate.metrics import Ranked

_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


@dataclass(frozen=True)
class BM25Config:
    """BM25 parameters; validated at construction."""

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stopwords: str | None = "en"

    def __post_init__(self) -> None:
        if not self.k1 > 0:
            raise ValueError(f"k1 must be > 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {self.b}")
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest positive scores, best first, ties by lower index."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        # the k-th largest score, then everything strictly above it plus the lowest-index ties
        kth = np.partition(scores[positive], len(positive) - k)[len(positive) - k]
        positive = positive[scores[positive] >= kth]
    order = np.lexsort((positive, -scores[positive]))
    return positive[order][:k]


class BM25Backend:
    """A bm25s index over the collection, searched one query at a time with exact top-k."""

    exact = True

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], config: BM25Config = BM25Config(),
                 name: str = "BM25"):
        import bm25s

        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(texts)} texts for {len(doc_ids)} document ids")
        if not texts:
            raise ValueError("cannot index an empty collection")
        self.config = config
        self.name = name
        self.doc_ids = np.asarray(list(doc_ids), dtype=object)
        self._retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        corpus_tokens = bm25s.tokenize(list(texts), stopwords=config.stopwords, show_progress=False)
        self._retriever.index(corpus_tokens, show_progress=False)

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    def encode_queries(self, texts: Sequence[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(list(texts), stopwords=self.config.stopwords, return_ids=False,
                              show_progress=False)

    def search(self, encoded: list[list[str]], k: int, threads: int | None = None) -> list[Ranked]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out: list[Ranked] = []
        for tokens in encoded:
            known = self._retriever.get_tokens_ids(tokens)
            if not known:  # every term unseen in the collection: nothing matches
                out.append([])
                continue
            scores = self._retriever.get_scores_from_ids(known)
            best = top_k(scores, k)
            out.append(list(zip(self.doc_ids[best].tolist(), scores[best].astype(float).tolist())))
        return out

    def settings(self) -> dict:
        return {"model": {"model": "bm25", "tokens": "bm25s default (lower-cased \\w\\w+, no stemming)",
                          **asdict(self.config)},
                "index": {"type": "bm25s.BM25"}}
