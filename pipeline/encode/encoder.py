"""SpladeEncoder: texts -> SPLADE sparse vectors through the fused head.

The masked-LM runs up to its vocabulary projection (`pipeline.encode.mlm`); the fused head
(`kernels.splade_max`: Triton on CUDA, the vocabulary-tiled twin on CPU) turns the final hidden
states into (B, V) weights without materialising (B, L, V) logits; pruning and CSR conversion
follow (`pipeline.encode.sparse`). Texts are batched by token length to cut padding.

For pipelines that tokenize in a separate stage, `tokenize` and `encode_tokenized` are the two
halves of `encode`.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from kernels import splade_max
from pipeline.encode.batching import length_buckets, pad_token_ids
from pipeline.encode.config import EncoderConfig, dtype_name, resolve_device, resolve_dtype
from pipeline.encode.fingerprint import model_fingerprint
from pipeline.encode.mlm import load_masked_lm
from pipeline.encode.models import resolve_model
from pipeline.encode.sparse import prune_to_csr
from pipeline.encode.tokens import token_ids

logger = logging.getLogger(__name__)

TextKind = Literal["document", "query"]


class SpladeEncoder:
    """Encode texts into SPLADE vectors (scipy CSR, float32, one row per text, input order).

    Args:
        model: "splade-tiny" (needs `lsr-pipeline[tiny]`), a local model directory, or a hub id
            of any Hugging Face masked-LM SPLADE model (BERT, DistilBERT, RoBERTa/XLM-R heads).
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N".
        max_length: documents are truncated to this many tokens (special tokens included).
        query_max_length: the same for `encode_queries`.
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32"/"fp32", "float16"/"fp16",
            "bfloat16"/"bf16".
        batch_size: texts per model forward.
        top_k: keep only the k largest weights of each vector (None: all).
        threshold: drop weights <= threshold (0: drop only zeros).
    """

    def __init__(self, model: str = "splade-tiny", device: str | torch.device = "auto", max_length: int = 256,
                 query_max_length: int = 64, dtype: str | torch.dtype = "auto", batch_size: int = 32,
                 top_k: int | None = None, threshold: float = 0.0):
        if isinstance(dtype, torch.dtype):
            dtype = dtype_name(dtype)
        self.config = EncoderConfig(model=model, device=str(device), max_length=max_length,
                                    query_max_length=query_max_length, dtype=dtype,
                                    batch_size=batch_size, top_k=top_k, threshold=threshold)
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        self.source = resolve_model(model)
        self.tokenizer, self._body = load_masked_lm(self.source, self.device, self.dtype)
        limit = self.max_positions
        for name in ("max_length", "query_max_length"):
            if limit is not None and getattr(self.config, name) > limit:
                raise ValueError(f"{name}={getattr(self.config, name)} exceeds the model's "
                                 f"maximum of {limit} tokens")
        if self._body.vocab_size < len(self.tokenizer):
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but the vocabulary projection "
                             f"only {self._body.vocab_size} rows")
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Dimension of the vectors (rows of the vocabulary projection)."""
        return self._body.vocab_size

    @property
    def model(self) -> torch.nn.Module:
        """The underlying Hugging Face masked-LM (eval mode, on `device`, in `dtype`)."""
        return self._body.model

    @property
    def max_positions(self) -> int | None:
        """Longest input the model accepts, from the tokenizer (else the model config), or None."""
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
        return getattr(self._body.model.config, "max_position_embeddings", None)

    def settings(self) -> dict[str, Any]:
        """JSON-able description of what determines the vectors (for manifests and mixing checks).

        The fingerprint (sha256 of config, weights and tokenizer files) is computed on first use.
        """
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.source)
        return {
            "model": self.config.model,
            "source": self.source,
            "fingerprint": self._fingerprint,
            "max_length": self.config.max_length,
            "query_max_length": self.config.query_max_length,
            "top_k": self.config.top_k,
            "threshold": self.config.threshold,
            "dtype": dtype_name(self.dtype),
            "vocab_size": self.vocab_size,
        }

    def id_to_term(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        """Vocabulary terms of dimension ids (e.g. a CSR row's indices)."""
        array = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"term ids must be integers, got dtype {array.dtype}")
        ids = array.astype(np.int64).ravel().tolist()
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"term id {i} outside the vocabulary [0, {self.vocab_size})")
        terms = self.tokenizer.convert_ids_to_tokens(ids)
        return [t if t is not None else f"[{i}]" for i, t in zip(ids, terms)]

    # ------------------------------------------------------------------ tokenization

    def _length_for(self, kind: TextKind) -> int:
        if kind == "document":
            return self.config.max_length
        if kind == "query":
            return self.config.query_max_length
        raise ValueError(f"kind must be 'document' or 'query', got {kind!r}")

    def _token_ids(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        if isinstance(texts, np.ndarray):  # e.g. a Ray Data batch column
            texts = texts.tolist()
        _check_texts(texts)
        return token_ids(self.tokenizer, texts, max_length)

    def _pad(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        return pad_token_ids(rows, self.tokenizer.pad_token_id or 0,
                             getattr(self.tokenizer, "padding_side", "right"))

    def tokenize(self, texts: Sequence[str], kind: TextKind = "document") -> dict[str, np.ndarray]:
        """Token ids and attention mask, int64 (n, longest row), truncated for `kind`, padded to the batch max."""
        input_ids, attention_mask = self._pad(self._token_ids(texts, self._length_for(kind)))
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # ------------------------------------------------------------------ encoding

    def encode(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Documents -> CSR float32 (n, vocab_size), rows in input order."""
        return self._encode_texts(texts, self.config.max_length)

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Queries (truncated at `query_max_length`) -> CSR float32 (n, vocab_size)."""
        return self._encode_texts(texts, self.config.query_max_length)

    def _encode_texts(self, texts: Sequence[str], max_length: int) -> sp.csr_matrix:
        rows = self._token_ids(texts, max_length)
        return self._encode_bucketed([len(r) for r in rows],
                                     lambda bucket: self._pad([rows[i] for i in bucket]))

    def _encode_bucketed(self, lengths: Sequence[int], batch_for) -> sp.csr_matrix:
        """Encode rows in batches of similar length (`batch_for(indices)` -> (ids, mask)); input order out."""
        if len(lengths) == 0:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        buckets = length_buckets(lengths, self.config.batch_size)
        logger.debug("encoding %d rows in %d length buckets", len(lengths), len(buckets))
        parts = [self._encode_batch(*batch_for(bucket)) for bucket in buckets]
        order = np.concatenate(buckets)
        if (order[1:] > order[:-1]).all():  # already in input order
            return sp.vstack(parts, format="csr")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return sp.vstack(parts, format="csr")[inverse]

    def encode_tokenized(self, input_ids: np.ndarray | torch.Tensor,
                         attention_mask: np.ndarray | torch.Tensor) -> sp.csr_matrix:
        """Token ids and mask (n, L), e.g. from `tokenize` -> CSR float32 (n, vocab_size), same row order.

        Rows are batched by length like `encode` (batches of `batch_size`, each trimmed to its last
        non-padding column), so a large, loosely padded input costs little padding work.
        """
        input_ids = torch.as_tensor(input_ids)
        attention_mask = torch.as_tensor(attention_mask)
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(attention_mask.shape)} must both be (n, L)")
        if input_ids.dtype.is_floating_point or attention_mask.dtype.is_floating_point:
            raise ValueError("input_ids and attention_mask must be integer arrays")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise ValueError(f"input_ids outside the vocabulary [0, {self.vocab_size})")
        limit = self.max_positions
        if limit is not None and input_ids.shape[1] > limit:
            raise ValueError(f"input has {input_ids.shape[1]} tokens per row; the model takes at most {limit}")
        lengths = (attention_mask != 0).sum(dim=1).tolist()
        return self._encode_bucketed(
            lengths, lambda bucket: (input_ids[torch.from_numpy(bucket)], attention_mask[torch.from_numpy(bucket)]))

    @torch.inference_mode()
    def hidden_states(self, input_ids: np.ndarray | torch.Tensor,
                      attention_mask: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, L, H) on `device`: the fused head's input (the model without its
        vocabulary projection)."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).to(self.device)
        attention_mask = torch.as_tensor(attention_mask, dtype=torch.long).to(self.device)
        return self._body.hidden_states(input_ids, attention_mask)

    @torch.inference_mode()
    def _encode_batch(self, input_ids: np.ndarray | torch.Tensor,
                      attention_mask: np.ndarray | torch.Tensor) -> sp.csr_matrix:
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        attention_mask = torch.as_tensor(attention_mask, dtype=torch.long)
        used = torch.nonzero(attention_mask.any(dim=0))
        width = int(used.max()) + 1 if used.numel() else 1
        input_ids = input_ids[:, :width].to(self.device, non_blocking=True)
        attention_mask = attention_mask[:, :width].to(self.device, non_blocking=True)
        hidden = self._body.hidden_states(input_ids, attention_mask)
        weights = splade_max(hidden, self._body.weight, self._body.bias, attention_mask)
        return prune_to_csr(weights, self.config.top_k, self.config.threshold)

    def __repr__(self) -> str:
        return (f"SpladeEncoder(model={self.config.model!r}, device={str(self.device)!r}, "
                f"dtype={dtype_name(self.dtype)!r}, max_length={self.config.max_length}, "
                f"query_max_length={self.config.query_max_length}, top_k={self.config.top_k}, "
                f"threshold={self.config.threshold})")


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
