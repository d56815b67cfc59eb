"""Single-query encoding fast path: one query text -> one SPLADE CSR row, for serving.

`SpladeEncoder.encode_queries` is built for batches: length buckets, padding, a forward
pre-hook registered and removed on the shared model at every call, the vocabulary-tiled
head over (B, L, V). For one query at a time none of that is needed:

* the model is this object's own copy, its vocabulary projection replaced once by an
  identity, so the forward returns the final hidden states (no per-call hooks);
* no padding: the query's L tokens are all real, so the SPLADE max over the sequence is a
  plain ``amax`` over the (L, V) logits, and ReLU and log1p run on the (V,) maximum only
  (both are monotone: ``max log1p(relu(x)) == log1p(relu(max x))``);
* lean body (`pipeline.encode.lean_bert`): for a plain BERT masked LM the body runs as a few
  torch calls per layer on the model's own weights (the HF module stack costs more than the
  arithmetic of a 2-layer BERT-tiny); any other architecture keeps the HF forward;
* screened head (CPU): a term can only have a non-zero weight if an upper bound of its
  maximum logit exceeds zero, and only those candidate terms (a few hundred of 30k) are
  computed again, in float32. Two screens (int8 where this CPU runs `torch._int_mm`, else
  bfloat16 if faster than no screen):

  - int8 (oneDNN's prepacked int8 matmul where it runs, else `torch._int_mm`): the hidden
    states are quantised with one scale ``s = max|h| / 127`` and each term's weight row with
    its own ``t_v = max|w_v| / 127``; the int32 products are exact, so ``h_l . w_v`` differs
    from ``s t_v (hq_l . wq_v)`` only by the rounding of the operands: at most
    ``|h - ĥ| |w| + |ĥ| |w - ŵ| <= sqrt(H)/2 (s |w_v| + t_v |ĥ_l|)`` (Cauchy-Schwarz, each
    element off by at most half a step). The bound used is 1.5 times that (float32 rounding of
    the scales and sums, and oneDNN's float32 product of the integer and the scales, are
    orders smaller);
  - bfloat16: the logits in bfloat16, off by at most ``3 * 2**-8 * |h_l| |w_v|`` (both
    operands and the result rounded to an 8-bit mantissa); SCREEN_ERROR = 0.02 leaves a
    margin of more than 2x.

  No term is lost and every kept weight is computed in float32;
* the CSR row is built directly from the non-zero weights;
* everything under ``torch.inference_mode``, and one call at a time (a lock): an HF fast
  tokenizer is not safe to share between threads ("Already borrowed"), and one thread per
  replica is the intended use. The caller sets torch's thread count (`set_torch_threads`).

The vectors equal `SpladeEncoder.encode_queries` of the same settings up to float32
rounding (same terms; tests check it on real queries), and served and in-process queries
both use this path, so they are the same vectors.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.errors import UserError

log = logging.getLogger(__name__)

SCREEN_ERROR = 0.02


def set_torch_threads(threads: int) -> None:
    """Intra-op threads of this process's torch (one per replica on a shared node)."""
    if threads >= 1 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _replace_module(root: torch.nn.Module, target: torch.nn.Module,
                    replacement: torch.nn.Module) -> str:
    """Put `replacement` where `target` sits in `root`'s module tree; returns its path."""
    for path, module in root.named_modules():
        if module is target and path:
            parent_path, _, name = path.rpartition(".")
            parent = root.get_submodule(parent_path) if parent_path else root
            setattr(parent, name, replacement)
            return path
    raise ValueError("the vocabulary projection is not a submodule of the model")


class QueryFastPath:
    """Encodes queries one at a time with a private copy of an encoder's model.

    Build with `from_settings` (an index manifest's encoder settings, fingerprint checked)
    or `from_encoder` (takes the encoder over: do not use it for anything else afterwards).
    ``screen`` is the head in use: "int8", "bf16" or "none" (float32 over the vocabulary);
    ``lean`` the lean BERT body, or None where the HF forward runs.
    """

    SCREENS = ("int8", "bf16", "none")

    def __init__(self, encoder) -> None:
        from pipeline.encode.lean_bert import LeanBert

        body = encoder._body                      # noqa: SLF001 - the split masked LM
        self.tokenizer = encoder.tokenizer
        self.max_length = encoder.config.query_max_length
        self.top_k = encoder.config.top_k
        self.threshold = float(encoder.config.threshold)
        self.vocab_size = body.vocab_size
        self.device = encoder.device
        self.model = body.model
        # Logits = hidden @ weight.T + bias, computed by addmm on a transposed contiguous copy.
        self.weight_t = body.weight.t().contiguous()
        self.bias = body.bias if body.bias is not None else torch.zeros(
            self.vocab_size, dtype=body.weight.dtype, device=body.weight.device)
        self.projection_path = _replace_module(self.model, body.projection, torch.nn.Identity())
        self.lean = LeanBert.from_model(self.model) if self.device.type == "cpu" else None
        self._lock = threading.Lock()
        self.screen = "none"
        if self.device.type == "cpu" and self.weight_t.dtype == torch.float32:
            weight = body.weight.detach().contiguous()                              # (V, H)
            self.weight_rows = weight                   # gathered per candidate (contiguous rows)
            self.weight_norms = torch.linalg.vector_norm(weight, dim=1)             # (V,)
            self.weight_bf16 = weight.to(torch.bfloat16)
            step = weight.abs().amax(dim=1) / 127                                   # (V,)
            self.weight_step = torch.where(step > 0, step, torch.ones_like(step))
            self.weight_i8_t = torch.round(weight / self.weight_step[:, None]).clamp_(
                -127, 127).to(torch.int8).t()                                       # (H, V) view
            self.weight_i8_packed = _onednn_pack(self.weight_i8_t.t())
            self.weight_zero_points = torch.zeros(self.vocab_size, dtype=torch.long) \
                if self.weight_i8_packed is not None else None
            self.screen = self._fastest_screen()
        log.info("query fast path: %s body, %s screen", "lean" if self.lean else "HF", self.screen)

    @property
    def screened(self) -> bool:
        return self.screen != "none"

    def _fastest_screen(self) -> str:
        """int8 wherever `torch._int_mm` runs on this CPU (2-3x faster than the others with
        VNNI, and a fixed choice, so every process of a machine encodes alike); else bfloat16
        or none, timed on a real query (bfloat16 matmul is slow without hardware support)."""
        import time

        ids = self.tokenizer("what causes heart disease and how is it treated",
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        with torch.inference_mode():
            hidden = self._hidden(ids)
            try:
                self._head(hidden, "int8")
                return "int8"
            except RuntimeError:      # no int8 matmul kernel for this CPU
                pass
            best = {}
            for name in ("bf16", "none"):
                self._head(hidden, name)
                started = time.perf_counter()
                for _ in range(5):
                    self._head(hidden, name)
                best[name] = time.perf_counter() - started
        return min(best, key=best.get)

    def _head(self, hidden: torch.Tensor, screen: str) -> torch.Tensor:
        """(L, H) -> max logits (V,): exact (float32) wherever the maximum may be > 0, and a
        negative number elsewhere (those terms get weight 0 either way)."""
        if screen == "none":
            logits = torch.addmm(self.bias, hidden.to(self.weight_t.dtype), self.weight_t)
            return logits.amax(dim=0).float()
        hidden = hidden.float()
        upper = self._upper_int8(hidden) if screen == "int8" else self._upper_bf16(hidden)
        candidates = torch.nonzero(upper > 0).squeeze(1)
        out = torch.full((self.vocab_size,), -1.0, dtype=torch.float32)
        if candidates.numel():
            exact = torch.addmm(self.bias[candidates], hidden, self.weight_rows[candidates].t())
            out[candidates] = exact.amax(dim=0)
        return out

    def _upper_bf16(self, hidden: torch.Tensor) -> torch.Tensor:
        """An upper bound of every term's max logit, from bfloat16 logits."""
        approx = torch.nn.functional.linear(hidden.to(torch.bfloat16), self.weight_bf16)
        slack = SCREEN_ERROR * torch.linalg.vector_norm(hidden, dim=1).max() * self.weight_norms
        return approx.float().amax(dim=0) + slack + self.bias

    def _upper_int8(self, hidden: torch.Tensor) -> torch.Tensor:
        """An upper bound of every term's max logit, from exact int32 products of int8 operands
        (oneDNN's prepacked int8 matmul where it runs: it returns ``s t_v (hq . wq_v)`` in
        float32, the exact integer times a rounded scale, off by a few ulp, which the bound's
        1.5x margin covers by orders of magnitude; else `torch._int_mm`)."""
        scale = hidden.abs().max() / 127
        if not scale > 0:
            scale = torch.ones((), dtype=torch.float32)
        rounded = torch.round(hidden / scale).clamp_(-127, 127)                       # (L, H)
        if self.weight_i8_packed is not None:
            # u8 activations with zero point 128: oneDNN's x86 int8 matmul is u8 x s8.
            products = torch.ops.onednn.qlinear_pointwise(
                (rounded + 128).to(torch.uint8), float(scale), 128, self.weight_i8_packed,
                self.weight_step, self.weight_zero_points, None, 1.0, 0, torch.float32, "none", [], "")
            top = products.amax(dim=0)                                                 # (V,)
        else:
            products = torch._int_mm(rounded.to(torch.int8), self.weight_i8_t)         # (L, V) int32
            top = products.amax(dim=0).float() * (scale * self.weight_step)
        hidden_norm = torch.linalg.vector_norm(rounded, dim=1).max() * scale
        half_steps = 1.5 * (hidden.shape[1] ** 0.5) / 2
        slack = half_steps * (scale * self.weight_norms + hidden_norm * self.weight_step)
        return top + slack + self.bias

    @classmethod
    def from_encoder(cls, encoder) -> "QueryFastPath":
        return cls(encoder)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], device: str = "auto") -> "QueryFastPath":
        from pipeline.encode.settings import encoder_from_settings

        return cls(encoder_from_settings(settings, device=device))

    def _hidden(self, ids: list[int]) -> torch.Tensor:
        """(L, H) input of the vocabulary projection: the lean body, else the HF forward."""
        if self.lean is not None:
            return self.lean.hidden_states(ids)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        return out.logits[0] if hasattr(out, "logits") else out[0][0]

    @torch.inference_mode()
    def _weights(self, ids: list[int]) -> torch.Tensor:
        top = self._head(self._hidden(ids), self.screen)
        return torch.log1p(torch.relu(top))                                  # (V,)

    def encode_one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One query -> (term ids int32 ascending, weights float32)."""
        if not isinstance(text, str):
            raise TypeError(f"a query must be a string, got {type(text).__name__}")
        with self._lock:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_length,
                                 return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]
            weights = self._weights(ids)
            if not bool(torch.isfinite(weights).all()):
                raise FloatingPointError("SPLADE weights contain NaN or inf")
            if self.top_k is not None and self.top_k < self.vocab_size:
                values, cols = torch.topk(weights, self.top_k, sorted=False)
                cols, order = torch.sort(cols)
                values = values[order]
                keep = values > self.threshold
                cols, values = cols[keep], values[keep]
            else:
                cols = torch.nonzero(weights > self.threshold).squeeze(1)
                values = weights[cols]
        return cols.cpu().numpy().astype(np.int32), values.cpu().numpy().astype(np.float32)

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Queries -> CSR float32 (n, vocab_size), each encoded on its own (no padding)."""
        if isinstance(texts, str):
            raise TypeError("encode_queries takes a list of strings")
        rows = [self.encode_one(t) for t in texts]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(c) for c, _ in rows], out=indptr[1:])
        indices = np.concatenate([c for c, _ in rows]) if rows else np.zeros(0, np.int32)
        data = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(rows), self.vocab_size))


def _onednn_pack(weight_i8: torch.Tensor):
    """oneDNN's prepacked form of an int8 (V, H) weight for `qlinear_pointwise`, or None where
    this torch or CPU has no oneDNN int8 matmul. On a 2-core Sapphire Rapids it took 0.47 ms
    for a 19-token query against 1.1-1.5 ms for `torch._int_mm` (BENCHMARKS.md §14)."""
    try:
        packed = torch.ops.onednn.qlinear_prepack(weight_i8.contiguous(), [1, weight_i8.shape[1]])
        probe = torch.ops.onednn.qlinear_pointwise(
            torch.full((1, weight_i8.shape[1]), 129, dtype=torch.uint8), 1.0, 128, packed,
            torch.ones(weight_i8.shape[0]), torch.zeros(weight_i8.shape[0], dtype=torch.long),
            None, 1.0, 0, torch.float32, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    # The probe multiplies a row of ones by the weight: it must give each row's sum, exactly.
    if not torch.equal(probe[0], weight_i8.to(torch.float32).sum(dim=1)):
        return None
    return packed


def fast_path_applies(settings: dict[str, Any]) -> bool:
    """Whether `QueryFastPath` computes the same vectors as the index's query encoder: a
    masked-LM head with max pooling and log1p(relu), no echo, queries through the document
    model. Manifests written before these settings existed describe exactly that."""
    query = settings.get("query_encoder") or {"type": "neural", "route": "document"}
    return (query.get("type") == "neural" and query.get("route") == "document"
            and settings.get("pooling", "max") == "max"
            and settings.get("activation", "relu") == "relu"
            and not settings.get("echo", False)
            and settings.get("architecture") in (None, "masked-lm")
            and settings.get("layout", "masked-lm") in ("masked-lm", "sentence-transformers"))


class _Serialised:
    """One `encode_queries` at a time: HF fast tokenizers are not safe to share between
    threads ("Already borrowed"), and a replica encodes on one thread anyway."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self._lock = threading.Lock()
        self.vocab_size = encoder.vocab_size

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        with self._lock:
            return self._encoder.encode_queries(list(texts))


class NoQueryModel(UserError, ValueError):
    """The index was built from pre-encoded vectors with a vocab file and no model: nothing
    here can encode a text query for it."""


def check_query_model(settings: dict[str, Any]) -> None:
    """Raise `NoQueryModel` when the index's encoder record names no model for queries.

    A vectors index (``run: false``, ``input: "vectors"``) built with ``--model`` carries that
    model's settings and encodes queries with it like any other index."""
    if settings.get("run") is False and not settings.get("query_model"):
        raise NoQueryModel(
            "this index has no query model: it was built from pre-encoded vectors with --vocab "
            f"{settings.get('vocab')} and no --model, so text queries cannot be encoded "
            "(re-index with --model MODEL, or search it with query vectors)")


def query_encoder(settings: dict[str, Any], device: str = "cpu"):
    """The thread-safe query encoder of an index built with ``settings``, for `ShardedIndex`
    and every Serve placement: `encode_queries(texts) -> CSR`.

    Inference-free models get their static weight table (no network, microseconds); the
    standard SPLADE head gets `QueryFastPath`; any other layout (sum pooling, log1p_relu, a
    separate neural query route, a causal LM, echo) gets its full encoder, serialised.
    """
    from pipeline.encode.settings import encoder_from_settings, query_encoder_from_settings

    check_query_model(settings)
    if (settings.get("query_encoder") or {}).get("type") == "inference-free":
        return _Serialised(query_encoder_from_settings(settings, device=device))
    if fast_path_applies(settings):
        return QueryFastPath.from_settings(settings, device=device)
    return _Serialised(encoder_from_settings(settings, device=device))
