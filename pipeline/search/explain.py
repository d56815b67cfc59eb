"""Term-level explanations: which terms made a hit's score.

A SPLADE score is a dot product, so it splits exactly into per-term contributions
``query_weight * doc_weight`` over the terms the query and the document share. Token strings
come from the tokenizer the index recorded. Contributions are returned largest first; their
sum is the score up to float rounding (the index scores from the stored weights, which are
the ones read here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_EXPLAIN_TERMS = 64
"""Default cap on terms per explained hit: SPLADE queries expand to tens of terms, and a hit
rarely shares more than a few dozen; the cap bounds the response size."""


@dataclass(frozen=True)
class TermContribution:
    token: str
    term_id: int
    query_weight: float
    doc_weight: float
    contribution: float

    def to_json(self) -> dict:
        return {"token": self.token, "term_id": self.term_id, "query_weight": self.query_weight,
                "doc_weight": self.doc_weight, "contribution": self.contribution}


def explain(query_terms: np.ndarray, query_weights: np.ndarray, doc_terms: np.ndarray,
            doc_weights: np.ndarray, tokens: Sequence[str] | None,
            max_terms: int = MAX_EXPLAIN_TERMS) -> list[TermContribution]:
    """Contributions of the shared terms of one query and one document (both sorted by term
    id, as CSR rows are), largest first, at most ``max_terms``."""
    shared, qi, di = np.intersect1d(query_terms, doc_terms, assume_unique=True,
                                    return_indices=True)
    q = query_weights[qi].astype(np.float32)
    d = doc_weights[di].astype(np.float32)
    contrib = q * d
    order = np.argsort(-contrib, kind="stable")[:max_terms]
    return [TermContribution(tokens[int(shared[j])] if tokens is not None else str(int(shared[j])),
                             int(shared[j]), float(q[j]), float(d[j]), float(contrib[j]))
            for j in order]
