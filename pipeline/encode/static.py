"""Inference-free query encoding: token presence times one static weight per vocabulary entry.

As sentence-transformers' SparseStaticEmbedding computes it (and OpenSearch's doc-only models
with their idf.json): the query is tokenized without special tokens, each distinct token counts
once (a binary presence vector), and its value is the token's weight. No neural network runs;
only the tokenizer and a (V,) float32 table are loaded (numpy, no torch on this path).

Weights come from a SparseStaticEmbedding's model.safetensors (tensor "weight", shape (V,)) or
from an idf.json token -> weight table (tokens mapped through the tokenizer, absent tokens 0).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

from pipeline.errors import UserError

logger = logging.getLogger(__name__)


class StaticWeightsError(UserError, ValueError):
    """The static query weights cannot be read or do not fit the vocabulary."""


def load_static_weights(path: str, tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """(V,) float32 weights from model.safetensors ("weight") or an idf.json table.

    For idf.json, tokens are mapped with `tokenizer.convert_tokens_to_ids` in file order and
    written one after the other, exactly as SparseStaticEmbedding.from_json does (so a token
    missing from the vocabulary lands on the unknown token's id; the last such write wins).
    The vector is zero-padded to `vocab_size` (the document model's dimension) when shorter.
    """
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise StaticWeightsError(f"cannot read idf table {path}: {exc}") from None
        if not isinstance(table, dict) or not table:
            raise StaticWeightsError(f"{path} must be a non-empty JSON object token -> weight")
        tokens = list(table)
        ids = tokenizer.convert_tokens_to_ids(tokens)
        weights = np.zeros(len(tokenizer.get_vocab()), dtype=np.float32)
        if max(ids) >= weights.size:
            weights = np.pad(weights, (0, max(ids) + 1 - weights.size))
        for token, token_id in zip(tokens, ids):
            weights[token_id] = float(table[token])
        unknown = sum(1 for i in ids if i == tokenizer.unk_token_id)
        if unknown:
            logger.warning("%s: %d tokens are not in the tokenizer's vocabulary", path, unknown)
    else:
        from safetensors.numpy import load_file

        try:
            tensors = load_file(path)
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise StaticWeightsError(f"cannot read static weights {path}: {exc}") from None
        if "weight" not in tensors or tensors["weight"].ndim != 1:
            raise StaticWeightsError(f"{path} must hold a one-dimensional tensor 'weight' (V,)")
        weights = tensors["weight"].astype(np.float32)
    if vocab_size is not None:
        if weights.size > vocab_size:
            if weights[vocab_size:].any():
                raise StaticWeightsError(f"{path}: {weights.size} weights for a {vocab_size}-term vocabulary")
            weights = weights[:vocab_size]
        elif weights.size < vocab_size:
            weights = np.pad(weights, (0, vocab_size - weights.size))
    if not np.isfinite(weights).all():
        raise StaticWeightsError(f"{path}: weights contain NaN or inf")
    return np.ascontiguousarray(weights, dtype=np.float32)


class StaticQueryEncoder:
    """Queries -> CSR float32 (n, V): presence of each distinct token times its weight.

    Args:
        tokenizer: the query tokenizer (special tokens are not added).
        weights: (V,) float32 per-token weights.
        max_length: queries are truncated to this many tokens.
        top_k: keep the k largest weights per query (None: all).
        threshold: drop weights <= threshold (0: zeros and negative weights are dropped).
        settings: what `settings()` returns (the full encoder's settings, for manifests), or a
            callable returning it.
    """

    def __init__(self, tokenizer, weights: np.ndarray, *, max_length: int = 64, top_k: int | None = None,
                 threshold: float = 0.0, settings: dict[str, Any] | Callable[[], dict] | None = None):
        weights = np.asarray(weights, dtype=np.float32)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(f"weights must be a non-empty (V,) vector, got shape {weights.shape}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be None or >= 1, got {top_k}")
        self.tokenizer = tokenizer
        self.weights = weights
        self.max_length = int(max_length)
        self.top_k = top_k
        self.threshold = float(threshold)
        self._settings = settings if callable(settings) else dict(settings or {})

    @property
    def vocab_size(self) -> int:
        return int(self.weights.size)

    def settings(self) -> dict[str, Any]:
        """The settings of the model this query encoder belongs to (as recorded in a manifest)."""
        return dict(self._settings() if callable(self._settings) else self._settings)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each query, no special tokens, truncated to `max_length`."""
        if isinstance(texts, np.ndarray):
            texts = texts.tolist()
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Queries -> CSR float32 (n, V), sorted indices, no explicit zeros."""
        rows = self.token_ids(texts)
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for i, row in enumerate(rows):
            ids = np.unique(np.asarray(row, dtype=np.int64))     # a repeated token counts once
            if ids.size and (ids[0] < 0 or ids[-1] >= self.weights.size):
                raise ValueError(f"token id outside the vocabulary [0, {self.weights.size})")
            values = self.weights[ids]
            keep = values > self.threshold
            ids, values = ids[keep], values[keep]
            if self.top_k is not None and ids.size > self.top_k:
                top = np.sort(np.argpartition(-values, self.top_k - 1)[:self.top_k])
                ids, values = ids[top], values[top]
            cols.append(ids)
            vals.append(values)
            indptr[i + 1] = indptr[i] + ids.size
        indices = np.concatenate(cols).astype(np.int32) if cols else np.zeros(0, np.int32)
        data = np.concatenate(vals).astype(np.float32) if vals else np.zeros(0, np.float32)
        return sp.csr_matrix((data, indices, indptr.astype(np.int32)), shape=(len(rows), self.vocab_size))

    def __repr__(self) -> str:
        return (f"StaticQueryEncoder(vocab_size={self.vocab_size}, max_length={self.max_length}, "
                f"top_k={self.top_k}, threshold={self.threshold})")
