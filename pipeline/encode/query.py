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
    states are quantised with one scale ``s = max|h| / 127`` (``r_l = round(h_l / s)``) and
    each term's weight row with its own ``t_v = max|w_v| / 127`` (``q_v``). The integer
    products ``I_lv = r_l . q_v`` are exact, and with ``e_v = w_v - t_v q_v``

        h_l . w_v = s t_v I_lv + s r_l . e_v + (h_l - s r_l) . w_v
                 <= s t_v (I_lv + |r_l| E_v + D_l N_v)          (Cauchy-Schwarz, twice)

    where ``E_v = |e_v| / t_v``, ``N_v = |w_v| / t_v`` and ``D_l = |h_l - s r_l| / s`` are the
    actual rounding residuals' norms (about 0.58 of the worst case ``sqrt(H)/2`` each, so
    this keeps a third as many candidates as the worst case did). Divided by ``s t_v > 0``,
    a term's max logit can only be > 0 if

        max_l I_lv + R E_v + D N_v + (b_v / t_v) / s > 0,   R = max_l |r_l|, D = max_l D_l:

    ``E_v``, ``N_v`` and ``b_v / t_v`` are per-term constants (float64, rounded up), ``R``
    and ``D`` one number each per query (rounded up), so everything but ``I_lv`` is a bias
    vector built with four elementwise ops. The candidates' logits are then computed in float32,
    off the real ones by at most ``gamma (|h_l| |w_v| + |b_v|)`` with ``gamma = 2 (H + 1)
    2**-24`` (a dot product of H terms plus the bias); that is added to the constants
    (``|h_l| / s <= R + D``), so a term whose *float32* max logit is > 0 is kept. A cushion
    of one unit covers the float32 arithmetic of the bias vector itself (at most a few
    ulp of ``|I_lv|``, under 2**21). oneDNN adds the bias and writes
    ``clamp(round(I_lv + bias_v + 1), 0, 255)`` as bytes (at least 1 wherever the test
    above passes): a byte max over the tokens and a ``nonzero`` give the candidates. No
    float (L, V) product is written. Several queries (a serving micro-batch) are screened
    as one matmul over their stacked rows, with one ``s`` and the largest ``|r_l|`` and
    ``D_l`` of the stack: the bound holds row by row, so it holds for each query, and the
    3.9 MB weight the screen is bound by is read once for all of them;
  - bfloat16: the logits in bfloat16, off by at most ``3 * 2**-8 * |h_l| |w_v|`` (both
    operands and the result rounded to an 8-bit mantissa); SCREEN_ERROR = 0.02 leaves a
    margin of more than 2x.

  No term is lost and every kept weight is computed in float32;
* only the candidates go on: ReLU, log1p, the threshold, top-k and the CSR row run on a few
  hundred numbers, not on the vocabulary;
* the text goes straight to the tokenizer's Rust backend (`SingleTextTokenizer`: the same
  ids as the batch encoder's `token_ids`, without the Python wrapper's ~40 µs a call);
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
# Token rows screened by one int8 matmul: a micro-batch of queries shares one read of the
# weight; the (rows, V) byte output stays a few MB.
SCREEN_ROWS = 256


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
        from pipeline.encode.tokens import SingleTextTokenizer

        body = encoder._body                      # noqa: SLF001 - the split masked LM
        self.tokenizer = encoder.tokenizer
        self.max_length = encoder.config.query_max_length
        self.token_ids = SingleTextTokenizer(self.tokenizer, self.max_length)
        self.top_k = encoder.config.top_k
        self.threshold = float(encoder.config.threshold)
        self.device = encoder.device
        self.model = body.model
        self.projection_path = _replace_module(self.model, body.projection, torch.nn.Identity())
        self.lean = LeanBert.from_model(self.model) if self.device.type == "cpu" else None
        self._lock = threading.Lock()
        self._load_head(body.weight.detach(), None if body.bias is None else body.bias.detach())
        self.screen = self._fastest_screen() if self.screened else "none"
        self._warm_screen()
        log.info("query fast path: %s body, %s screen", "lean" if self.lean else "HF", self.screen)

    def _load_head(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """The vocabulary projection (V, H) and bias (V,), and on CPU in float32 the screens'
        forms of it; ``screen`` becomes "int8" there (the fastest is picked after), else "none"."""
        self.vocab_size = int(weight.shape[0])
        # Logits = hidden @ weight.T + bias, computed by addmm on a transposed contiguous copy.
        self.weight_t = weight.t().contiguous()
        self.bias = bias if bias is not None else torch.zeros(
            self.vocab_size, dtype=weight.dtype, device=weight.device)
        self.screen = "none"
        if self.device.type != "cpu" or weight.dtype != torch.float32:
            return
        weight = weight.contiguous()                                                    # (V, H)
        self.weight_rows = weight                       # gathered per candidate (contiguous rows)
        self.weight_norms = torch.linalg.vector_norm(weight, dim=1)                     # (V,)
        self.weight_bf16 = weight.to(torch.bfloat16)
        step = weight.abs().amax(dim=1) / 127                                           # (V,)
        self.weight_step = torch.where(step > 0, step, torch.ones_like(step))
        levels = torch.round(weight / self.weight_step[:, None]).clamp_(-127, 127)
        self.weight_i8_t = levels.to(torch.int8).t()                                    # (H, V) view
        self.weight_i8_packed = _onednn_pack(self.weight_i8_t.t())
        # The int8 bound's per-term constants, in units of s t_v (module docstring): from
        # the float32 weights in float64, then rounded up to float32.
        w64, t64, b64 = weight.double(), self.weight_step.double(), self.bias.double()
        residual = torch.linalg.vector_norm(w64 - levels.double() * t64[:, None], dim=1) / t64
        norm = torch.linalg.vector_norm(w64, dim=1) / t64
        gamma = 2 * (weight.shape[1] + 1) * 2.0 ** -24
        self.residual_units = _round_up(residual + gamma * norm)        # E_v (+ float32 error)
        self.norm_units = _round_up((1 + gamma) * norm)                  # N_v (+ float32 error)
        self.bias_units = _round_up((b64 + gamma * b64.abs()) / t64)     # b_v / t_v (+ error)
        self.unit_scales = torch.ones(self.vocab_size, dtype=torch.float32)        # for oneDNN
        self.zero_points = torch.zeros(self.vocab_size, dtype=torch.long)
        self.screen = "int8"

    @property
    def screened(self) -> bool:
        return self.screen != "none"

    def _fastest_screen(self) -> str:
        """int8 wherever `torch._int_mm` runs on this CPU (2-3x faster than the others with
        VNNI, and a fixed choice, so every process of a machine encodes alike); else bfloat16
        or none, timed on a real query (bfloat16 matmul is slow without hardware support)."""
        import time

        ids = self.token_ids("what causes heart disease and how is it treated")
        with torch.inference_mode():
            hidden = self._hidden(ids)
            try:
                self._top_logits(hidden, "int8")
                return "int8"
            except RuntimeError:      # no int8 matmul kernel for this CPU
                pass
            best = {}
            for name in ("bf16", "none"):
                self._top_logits(hidden, name)
                started = time.perf_counter()
                for _ in range(5):
                    self._top_logits(hidden, name)
                best[name] = time.perf_counter() - started
        return min(best, key=best.get)

    def _warm_screen(self) -> None:
        """Run the int8 screen once for every token count a single query can have.

        oneDNN creates its matmul primitive per input shape on first use: about 1.6 ms
        extra for each query length seen for the first time (2-core EPYC, BENCHMARKS.md §14),
        so a fresh replica's first queries paid it. 64 shapes take about 0.08 s here (192
        more, to `SCREEN_ROWS`, would take 1 s: stacked micro-batches create theirs on first
        use)."""
        if self.screen != "int8" or self.weight_i8_packed is None:
            return
        width = int(self.weight_rows.shape[1])
        with torch.inference_mode():
            for rows in range(1, min(self.max_length, SCREEN_ROWS) + 1):
                self._screen_rows(torch.zeros(rows, width))

    def _top_logits(self, hidden: torch.Tensor, screen: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, H) -> (terms, their max logits in float32): ascending term ids that include
        every term whose max logit is > 0 (all other terms get weight 0)."""
        return self._top_logits_many([hidden], screen)[0]

    def _top_logits_many(self, hiddens: Sequence[torch.Tensor], screen: str
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`_top_logits` of several queries; the int8 screen runs them as one matmul (it
        reads the 30k x H weight once for all of them, which is what it is bound by)."""
        if screen == "none":
            out = []
            for hidden in hiddens:
                top = torch.addmm(self.bias, hidden.to(self.weight_t.dtype),
                                  self.weight_t).amax(dim=0).float()
                terms = torch.nonzero(top > 0).squeeze(1)
                out.append((terms, top[terms]))
            return out
        hiddens = [h.float() for h in hiddens]
        if screen == "int8":
            candidates = self._candidates_int8_many(hiddens)
        else:
            candidates = [self._candidates_bf16(h) for h in hiddens]
        return [(terms, self._exact_top(hidden, terms))
                for hidden, terms in zip(hiddens, candidates)]

    def _exact_top(self, hidden: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
        """float32 max logits over the tokens of ``terms`` (a screen's candidates) only."""
        if not terms.numel():
            return torch.zeros(0, dtype=torch.float32)
        return torch.addmm(self.bias[terms], hidden, self.weight_rows[terms].t()).amax(dim=0)

    def _finish(self, terms: torch.Tensor, top: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Candidates and their max logits -> the query's (term ids int32, weights float32):
        log1p(relu), the threshold and top-k, on a few hundred numbers in numpy (18 against
        47 µs a query in torch, BENCHMARKS.md §14)."""
        terms = terms.cpu().numpy().astype(np.int32)
        weights = np.log1p(np.maximum(top.float().cpu().numpy(), np.float32(0)))
        if not np.isfinite(weights).all():
            raise FloatingPointError("SPLADE weights contain NaN or inf")
        keep = weights > np.float32(self.threshold)
        terms, weights = terms[keep], weights[keep]
        if self.top_k is not None and weights.size > self.top_k:
            order = torch.sort(torch.topk(torch.from_numpy(weights), self.top_k,
                                          sorted=False).indices).values.numpy()
            terms, weights = terms[order], weights[order]
        return terms, weights

    def _candidates_bf16(self, hidden: torch.Tensor) -> torch.Tensor:
        """Terms whose max logit may be > 0, from bfloat16 logits and their error bound."""
        approx = torch.nn.functional.linear(hidden.to(torch.bfloat16), self.weight_bf16)
        slack = SCREEN_ERROR * torch.linalg.vector_norm(hidden, dim=1).max() * self.weight_norms
        return torch.nonzero(approx.float().amax(dim=0) + slack + self.bias > 0).squeeze(1)

    def _candidates_int8(self, hidden: torch.Tensor) -> torch.Tensor:
        """Terms whose max logit may be > 0 for one query's (L, H) hidden states."""
        return self._candidates_int8_many([hidden])[0]

    def _candidates_int8_many(self, hiddens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each query's terms whose max logit may be > 0, from exact int32 products of int8
        operands and the bound of the module docstring (oneDNN's prepacked int8 matmul,
        writing bytes, where it runs; else `torch._int_mm`). Queries are stacked up to
        `SCREEN_ROWS` token rows a matmul, with one scale ``s`` and the largest ``|r_l|`` of
        the stack: the bound holds for every row of it, so it holds for each query (a query
        stacked with larger ones may keep a few more candidates, never fewer)."""
        out: list[torch.Tensor] = []
        start = 0
        while start < len(hiddens):
            stop, rows = start + 1, hiddens[start].shape[0]
            while stop < len(hiddens) and rows + hiddens[stop].shape[0] <= SCREEN_ROWS:
                rows += hiddens[stop].shape[0]
                stop += 1
            group = hiddens[start:stop]
            stacked = group[0] if len(group) == 1 else torch.cat(group)
            hits = self._screen_rows(stacked)                            # (rows, V)
            out.extend(torch.nonzero(part.amax(dim=0) > 0).squeeze(1)
                       for part in hits.split([h.shape[0] for h in group]))
            start = stop
        return out

    def _screen_rows(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows, H) -> (rows, V), > 0 where a row's integer estimate plus the bound is > 0
        (bytes from oneDNN; float32 sums from `torch._int_mm`)."""
        largest = float(hidden.abs().max())
        scale = largest / 127 if largest > 0 else 1.0
        rounded = torch.round(hidden * (1.0 / scale)).clamp_(-127, 127)               # (rows, H)
        # R = max_l |r_l| and D = max_l |h_l - s r_l| / s in float64, rounded up.
        rounded64 = rounded.double()
        reach = float(torch.linalg.vector_norm(rounded64, dim=1).max()) * (1 + 1e-9)
        error = float(torch.linalg.vector_norm(hidden.double() - rounded64 * scale,
                                               dim=1).max()) / scale * (1 + 1e-9)
        bound = torch.mul(self.bias_units, 1.0 / scale).add_(
            self.residual_units, alpha=reach).add_(self.norm_units, alpha=error).add_(1.0)
        if self.weight_i8_packed is not None:
            # u8 activations with zero point 128 (oneDNN's x86 int8 matmul is u8 x s8); the
            # output is clamp(round(I + bound + 1), 0, 255): non-zero wherever I + bound > 0.
            return torch.ops.onednn.qlinear_pointwise(
                rounded.add_(128).to(torch.uint8), 1.0, 128, self.weight_i8_packed,
                self.unit_scales, self.zero_points, bound.add_(1.0), 1.0, 0, torch.uint8,
                "none", [], "")
        products = torch._int_mm(rounded.to(torch.int8), self.weight_i8_t)            # int32
        return products.float().add_(bound)

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

    def encode_one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One query -> (term ids int32 ascending, weights float32)."""
        if not isinstance(text, str):
            raise TypeError(f"a query must be a string, got {type(text).__name__}")
        return self._encode([text])[0]

    @torch.inference_mode()
    def _encode(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Queries -> per query (term ids int32 ascending, weights float32); each query's own
        body (no padding), their screens as one matmul."""
        with self._lock:
            hiddens = []
            for text in texts:
                hidden = self._hidden(self.token_ids(text))
                if not bool(torch.isfinite(hidden).all()):
                    raise FloatingPointError("the model's hidden states contain NaN or inf")
                hiddens.append(hidden)
            return [self._finish(terms, top)
                    for terms, top in self._top_logits_many(hiddens, self.screen)]

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Queries -> CSR float32 (n, vocab_size): each query's own body (no padding), the
        int8 screens of up to `SCREEN_ROWS` token rows as one matmul; the same vectors as
        `encode_one` of each."""
        if isinstance(texts, str):
            raise TypeError("encode_queries takes a list of strings")
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"a query must be a string, got {type(text).__name__}")
        rows = self._encode(texts)
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(c) for c, _ in rows], out=indptr[1:])
        indices = np.concatenate([c for c, _ in rows]) if rows else np.zeros(0, np.int32)
        data = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(rows), self.vocab_size))


def _round_up(values: torch.Tensor) -> torch.Tensor:
    """float64 -> float32, never below the float64 value (the cast moves it by at most
    2**-24 of itself)."""
    return (values + values.abs() * 1e-6).float()


def _onednn_pack(weight_i8: torch.Tensor):
    """oneDNN's prepacked form of an int8 (V, H) weight for `qlinear_pointwise` with a byte
    output, or None where this torch or CPU has no oneDNN int8 matmul or it does not write
    ``clamp(round(x . w_v + bias_v), 0, 255)`` as the int8 screen needs. On a 2-core Sapphire
    Rapids it took 0.47 ms for a 19-token query against 1.1-1.5 ms for `torch._int_mm`
    (BENCHMARKS.md §14)."""
    vocab, width = weight_i8.shape
    try:
        packed = torch.ops.onednn.qlinear_prepack(weight_i8.contiguous(), [1, width])
        # A row of ones (u8 129 with zero point 128) times the weight gives each row's sum;
        # the bias takes it away and leaves `offsets`, which must come out rounded and clamped.
        sums = weight_i8.to(torch.float32).sum(dim=1)
        offsets = torch.tensor([-3.0, -0.3, 0.7, 1.0, 1.3, 2.0, 300.0]).repeat(vocab // 7 + 1)[:vocab]
        probe = torch.ops.onednn.qlinear_pointwise(
            torch.full((1, width), 129, dtype=torch.uint8), 1.0, 128, packed,
            torch.ones(vocab), torch.zeros(vocab, dtype=torch.long), offsets - sums, 1.0, 0,
            torch.uint8, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    if probe.dtype != torch.uint8 or not torch.equal(
            probe[0], torch.round(offsets).clamp(0, 255).to(torch.uint8)):
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
