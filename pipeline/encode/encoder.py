"""SpladeEncoder: texts -> SPLADE sparse vectors through the fused head.

The masked-LM (or causal LM) runs up to its vocabulary projection (`pipeline.encode.mlm`); the
head (`lsr_kernels.splade_head`: max pooling through the fused kernel on CUDA or the vocabulary-tiled
twin on CPU, sum pooling through a vocabulary-tiled path) turns the final hidden states into
(B, V) weights without materialising (B, L, V) logits; pruning and CSR conversion follow
(`pipeline.encode.sparse`). Texts are batched by token length to cut padding.

The model directory decides the layout (`pipeline.encode.layouts`): a masked-LM, a causal LM, a
sentence-transformers SparseEncoder (pooling, activation and max_active_dims read from it; a
Router with separate query and document routes), or a document model with an idf.json query
table. Inference-free query routes encode queries with `StaticQueryEncoder` (no network).

Echo (Echo-Mistral-SPLADE): the model reads every text twice and only the second copy's tokens
are pooled, so each pooled token has seen the whole text despite causal attention.

For pipelines that tokenize in a separate stage, `tokenize` and `encode_tokenized` are the two
halves of `encode` (documents; echo is applied inside `encode_tokenized`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import scipy.sparse as sp
import torch

import os

from lsr_kernels import splade_head
from lsr_kernels.checks import check_activation, check_pooling
from pipeline.encode.batching import length_buckets, pad_token_ids
from pipeline.encode.config import EncoderConfig, dtype_name, resolve_device, resolve_dtype
from pipeline.encode.fingerprint import model_fingerprint
from pipeline.encode.layouts import ModelLayout, NeuralRoute, StaticRoute, UnsupportedLayout, read_layout
from pipeline.encode.mlm import load_masked_lm
from pipeline.encode.models import resolve_model
from pipeline.encode.sparse import prune_to_csr
from pipeline.encode.static import StaticQueryEncoder, load_static_weights
from pipeline.encode.tokens import load_tokenizer, token_ids

logger = logging.getLogger(__name__)

TextKind = Literal["document", "query"]


class _Route:
    """A loaded neural route: tokenizer, model body, and its head settings."""

    def __init__(self, spec: NeuralRoute, device: torch.device, dtype: torch.dtype, pooling: str | None,
                 activation: str | None, echo: bool):
        self.spec = spec
        self.pooling = check_pooling(pooling or spec.pooling)
        self.activation = check_activation(activation or spec.activation)
        self.echo = echo
        if echo and spec.architecture != "causal-lm":
            raise UnsupportedLayout("echo applies to decoder-only (causal) LMs; "
                                    f"{spec.folder} is a {spec.architecture}")
        self.tokenizer, self.body = load_masked_lm(spec.folder, device, dtype, spec.architecture)
        if spec.do_lower_case and self.tokenizer.tokenize("Heart") != self.tokenizer.tokenize("heart"):
            raise UnsupportedLayout(f"{spec.folder}: sentence_bert_config.json sets do_lower_case but the "
                                    "tokenizer does not lowercase; lowercasing outside it is not supported")
        if self.body.vocab_size < len(self.tokenizer):
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but the vocabulary projection "
                             f"only {self.body.vocab_size} rows")
        # Causal LMs pad on the right here: positions then count from each row's first token.
        self.padding_side = "right" if spec.architecture == "causal-lm" else \
            getattr(self.tokenizer, "padding_side", "right")
        self.special_ids = frozenset(int(i) for i in getattr(self.tokenizer, "all_special_ids", []))

    @property
    def max_positions(self) -> int | None:
        limits = []
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            limits.append(limit)
        else:
            limit = getattr(self.body.model.config, "max_position_embeddings", None)
            if isinstance(limit, int) and limit > 0:
                limits.append(limit)
        if self.spec.max_seq_length:
            limits.append(self.spec.max_seq_length)
        return min(limits) if limits else None


def echo_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: frozenset[int],
                pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Echo a batch: each row P + T + S (leading special tokens P, text T, trailing special S)
    becomes P + T + T + S, right-padded; returns (input_ids, attention_mask, pool_mask) where
    pool_mask marks the second copy of T only."""
    rows, pools = [], []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        tokens = [t for t, m in zip(ids, mask) if m]
        start = 0
        while start < len(tokens) and tokens[start] in special_ids:
            start += 1
        end = len(tokens)
        while end > start and tokens[end - 1] in special_ids:
            end -= 1
        text = tokens[start:end]
        rows.append(tokens[:start] + text + text + tokens[end:])
        pools.append([0] * (start + len(text)) + [1] * len(text) + [0] * (len(tokens) - end))
    width = max((len(r) for r in rows), default=0) or 1
    out_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    out_mask = torch.zeros((len(rows), width), dtype=torch.long)
    out_pool = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, pool) in enumerate(zip(rows, pools)):
        out_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        out_mask[i, :len(row)] = 1
        out_pool[i, :len(pool)] = torch.tensor(pool, dtype=torch.long)
    return out_ids, out_mask, out_pool


class SpladeEncoder:
    """Encode texts into SPLADE vectors (scipy CSR, float32, one row per text, input order).

    Args:
        model: "splade-tiny" (needs `lsr-pipeline[tiny]`), a local model directory, or a hub id
            of any Hugging Face masked-LM SPLADE model (BERT, DistilBERT, RoBERTa/XLM-R heads).
            A local directory may also be a causal LM (Mistral, Llama: config.json architectures
            *ForCausalLM), a sentence-transformers SparseEncoder directory (modules.json), or a
            document model with an idf.json query table (inference-free queries).
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N".
        max_length: documents are truncated to this many tokens (special tokens included).
        query_max_length: the same for `encode_queries`.
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32"/"fp32", "float16"/"fp16",
            "bfloat16"/"bf16".
        batch_size: texts per model forward.
        top_k: keep only the k largest weights of each vector (None: all).
        threshold: drop weights <= threshold (0: drop only zeros).
        pooling: "max" or "sum" over tokens (None: the model's, else "max").
        activation: "relu" (log1p(relu)) or "log1p_relu" (log1p(log1p(relu))) (None: the model's,
            else "relu").
        echo: causal LMs only: read each text twice, pool the second copy (Echo-Mistral-SPLADE).

    A sentence-transformers `max_active_dims` is the default `top_k`.
    """

    def __init__(self, model: str = "splade-tiny", device: str | torch.device = "auto", max_length: int = 256,
                 query_max_length: int = 64, dtype: str | torch.dtype = "auto", batch_size: int = 32,
                 top_k: int | None = None, threshold: float = 0.0, *, pooling: str | None = None,
                 activation: str | None = None, echo: bool = False):
        if isinstance(dtype, torch.dtype):
            dtype = dtype_name(dtype)
        self.config = EncoderConfig(model=model, device=str(device), max_length=max_length,
                                    query_max_length=query_max_length, dtype=dtype,
                                    batch_size=batch_size, top_k=top_k, threshold=threshold)
        if pooling is not None:
            check_pooling(pooling)
        if activation is not None:
            check_activation(activation)
        if not isinstance(echo, bool):
            raise ValueError(f"echo must be True or False, got {echo!r}")
        self._fingerprint: str | None = None
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        self.source = resolve_model(model)
        self.layout = model_layout(self.source)
        self.top_k = self.config.top_k if self.config.top_k is not None else self.layout.max_active_dims
        self._doc = _Route(self.layout.document, self.device, self.dtype, pooling, activation, echo)
        self.tokenizer, self._body = self._doc.tokenizer, self._doc.body
        self._query_route: _Route | None = self._doc
        self._static: StaticQueryEncoder | None = None
        if isinstance(self.layout.query, StaticRoute):
            self._query_route = None
            self._static = static_query_encoder(self.layout.query, self.vocab_size, self.config.query_max_length,
                                                self.top_k, self.config.threshold, settings=self.settings)
        elif self.layout.query != self.layout.document:
            self._query_route = _Route(self.layout.query, self.device, self.dtype, None, None, echo)
            if self._query_route.body.vocab_size != self.vocab_size:
                raise UnsupportedLayout(f"query route has {self._query_route.body.vocab_size} dimensions, "
                                        f"document route {self.vocab_size}")
        for name, route in (("max_length", self._doc), ("query_max_length", self._query_route)):
            limit = route.max_positions if route is not None else None
            value = getattr(self.config, name) * (2 if echo else 1)
            if limit is not None and value > limit:
                raise ValueError(f"{name}={getattr(self.config, name)}{' (x2 for echo)' if echo else ''} "
                                 f"exceeds the model's maximum of {limit} tokens")
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
        """Longest input the document model accepts: the tokenizer's limit (else the model config's),
        and sentence-transformers' max_seq_length when it sets one; None if unknown."""
        return self._doc.max_positions

    @property
    def inference_free(self) -> bool:
        """True when queries are encoded without a network (static per-token weights)."""
        return self._static is not None

    @property
    def query_encoder(self) -> "StaticQueryEncoder | SpladeEncoder":
        """What encodes queries: the `StaticQueryEncoder` of an inference-free model, else this encoder."""
        return self._static if self._static is not None else self

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
            "top_k": self.top_k,
            "threshold": self.config.threshold,
            "dtype": dtype_name(self.dtype),
            "vocab_size": self.vocab_size,
            "layout": self.layout.kind,
            "architecture": self._doc.spec.architecture,
            "pooling": self._doc.pooling,
            "activation": self._doc.activation,
            "echo": self._doc.echo,
            "query_encoder": self._query_settings(),
        }

    def _query_settings(self) -> dict[str, Any]:
        if self._static is not None:
            return {"type": "inference-free", "weights": self.layout.query.name}
        if self._query_route is not self._doc:
            return {"type": "neural", "route": os.path.relpath(self._query_route.spec.folder, self.source),
                    "pooling": self._query_route.pooling, "activation": self._query_route.activation}
        return {"type": "neural", "route": "document"}

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

    def _token_ids(self, texts: Sequence[str], max_length: int, route: _Route | None = None) -> list[list[int]]:
        if isinstance(texts, np.ndarray):  # e.g. a Ray Data batch column
            texts = texts.tolist()
        _check_texts(texts)
        return token_ids((route or self._doc).tokenizer, texts, max_length)

    def _pad(self, rows: Sequence[Sequence[int]], route: _Route | None = None) -> tuple[np.ndarray, np.ndarray]:
        route = route or self._doc
        return pad_token_ids(rows, route.tokenizer.pad_token_id or 0, route.padding_side)

    def tokenize(self, texts: Sequence[str], kind: TextKind = "document") -> dict[str, np.ndarray]:
        """Token ids and attention mask, int64 (n, longest row), truncated for `kind`, padded to the batch max.

        Queries of an inference-free model have no network input: use `encode_queries`.
        """
        length = self._length_for(kind)
        if kind == "query" and self._query_route is not self._doc:
            raise ValueError("this model's queries take their own route (inference-free or a separate "
                             "query model): use encode_queries, not tokenize(kind='query')")
        input_ids, attention_mask = self._pad(self._token_ids(texts, length))
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # ------------------------------------------------------------------ encoding

    def encode(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Documents -> CSR float32 (n, vocab_size), rows in input order."""
        return self._encode_texts(texts, self.config.max_length, self._doc)

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Queries (truncated at `query_max_length`) -> CSR float32 (n, vocab_size).

        Inference-free models: token presence times the static weights, no network.
        """
        if self._static is not None:
            return self._static.encode_queries(texts)
        return self._encode_texts(texts, self.config.query_max_length, self._query_route)

    def _encode_texts(self, texts: Sequence[str], max_length: int, route: _Route) -> sp.csr_matrix:
        rows = self._token_ids(texts, max_length, route)
        return self._encode_bucketed([len(r) for r in rows],
                                     lambda bucket: self._pad([rows[i] for i in bucket], route), route)

    def _encode_bucketed(self, lengths: Sequence[int], batch_for, route: _Route | None = None) -> sp.csr_matrix:
        """Encode rows in batches of similar length (`batch_for(indices)` -> (ids, mask)); input order out."""
        if len(lengths) == 0:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        buckets = length_buckets(lengths, self.config.batch_size)
        logger.debug("encoding %d rows in %d length buckets", len(lengths), len(buckets))
        parts = [self._encode_batch(*batch_for(bucket), route=route) for bucket in buckets]
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
                      attention_mask: np.ndarray | torch.Tensor, route: _Route | None = None) -> sp.csr_matrix:
        route = route or self._doc
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        attention_mask = torch.as_tensor(attention_mask, dtype=torch.long)
        if route.echo:
            input_ids, attention_mask, pool_mask = echo_inputs(
                input_ids, attention_mask, route.special_ids, route.tokenizer.pad_token_id or 0)
        used = torch.nonzero(attention_mask.any(dim=0))
        width = int(used.max()) + 1 if used.numel() else 1
        input_ids = input_ids[:, :width].to(self.device, non_blocking=True)
        attention_mask = attention_mask[:, :width].to(self.device, non_blocking=True)
        pool_mask = pool_mask[:, :width].to(self.device) if route.echo else attention_mask
        hidden = route.body.hidden_states(input_ids, attention_mask)
        weights = splade_head(hidden, route.body.weight, route.body.bias, pool_mask,
                              pooling=route.pooling, activation=route.activation)
        return prune_to_csr(weights, self.top_k, self.config.threshold)

    def __repr__(self) -> str:
        return (f"SpladeEncoder(model={self.config.model!r}, layout={self.layout.kind!r}, "
                f"device={str(self.device)!r}, dtype={dtype_name(self.dtype)!r}, "
                f"max_length={self.config.max_length}, query_max_length={self.config.query_max_length}, "
                f"top_k={self.top_k}, threshold={self.config.threshold}, pooling={self._doc.pooling!r}, "
                f"activation={self._doc.activation!r}, echo={self._doc.echo}, "
                f"inference_free_queries={self.inference_free})")


def model_layout(source: str) -> ModelLayout:
    """The layout of a resolved model source; a hub id (not a local folder) is read as a masked-LM."""
    if os.path.isdir(source):
        return read_layout(source)
    route = NeuralRoute(source, "masked-lm")
    return ModelLayout("masked-lm", route, route)


def static_query_encoder(route: StaticRoute, vocab_size: int | None, max_length: int, top_k: int | None,
                         threshold: float, settings: dict[str, Any] | None = None) -> StaticQueryEncoder:
    """The inference-free query encoder of a static route: its tokenizer and its (V,) weights."""
    tokenizer = load_tokenizer(route.tokenizer_folder)
    weights = load_static_weights(route.weights_file, tokenizer, vocab_size)
    return StaticQueryEncoder(tokenizer, weights, max_length=max_length, top_k=top_k, threshold=threshold,
                              settings=settings)


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
