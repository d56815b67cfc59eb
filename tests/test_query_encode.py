"""The single-query encoding fast path (lean BERT body, int8 / bfloat16 screens) against
`SpladeEncoder.encode_queries` of the same settings and against an independent expression:
Hugging Face `AutoModelForMaskedLM` logits -> log1p(relu) -> max over the tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pipeline.encode import SpladeEncoder
from pipeline.encode.models import resolve_model
from pipeline.encode.query import QueryFastPath

N_QUERIES = 40


def _texts(scifact_dir: Path, n: int) -> list[str]:
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


def _reference(model_dir: str, texts: list[str], max_length: int) -> sp.csr_matrix:
    """SPLADE of each query written out: the MLM logits of the whole unpadded sequence,
    log1p(relu(.)), max over its tokens; float64 after the logits."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**enc).logits[0].double().numpy()               # (L, V)
            rows.append(np.log1p(np.maximum(logits, 0.0)).max(axis=0))
    return sp.csr_matrix(np.vstack(rows))


def _assert_same_vectors(got: sp.csr_matrix, expected: sp.csr_matrix, rtol: float = 1e-4,
                         atol: float = 2e-5) -> None:
    """Same weights up to float32 rounding; a term present on one side only must be one
    whose weight rounds to zero there (a logit within rounding of 0)."""
    assert got.shape == expected.shape
    g, e = got.toarray(), expected.toarray()
    np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    only = (g > 0) != (e > 0)
    assert np.all(np.maximum(g, e)[only] < atol), "a term with a real weight is missing"


@pytest.fixture(scope="module")
def random_bert(tmp_path_factory) -> str:
    """A small random BERT masked LM (3 layers, hidden 64, 4 heads) with splade-tiny's
    tokenizer, saved as a model directory."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random-bert")
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=3,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)
    BertForMaskedLM(config).eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model("splade-tiny")).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("model", ["splade-tiny", "random-bert"])
def test_fast_path_matches_the_written_out_expression(model, scifact_dir, random_bert):
    """Every screen, lean and HF body, against log1p(relu(MLM logits)) max over tokens."""
    model_dir = resolve_model("splade-tiny") if model == "splade-tiny" else random_bert
    texts = _texts(scifact_dir, N_QUERIES)
    fast = QueryFastPath.from_encoder(SpladeEncoder(model_dir, device="cpu"))
    assert fast.lean is not None, "a plain BERT masked LM gets the lean body"
    expected = _reference(model_dir, texts, fast.max_length)
    lean = fast.lean
    for body in (lean, None):
        fast.lean = body
        for screen in QueryFastPath.SCREENS:
            fast.screen = screen
            for _ in _int8_kernels(fast) if screen == "int8" else [None]:
                _assert_same_vectors(fast.encode_queries(texts), expected)


def test_top_k_and_threshold_prune_like_the_written_out_expression(scifact_dir):
    """With top_k 8 and threshold 0.3: the terms of weight > 0.3, the 8 heaviest of them, in
    ascending term order (the written-out expression, pruned with numpy), for every screen."""
    texts = _texts(scifact_dir, 20)
    model_dir = resolve_model("splade-tiny")
    fast = QueryFastPath.from_encoder(SpladeEncoder(model_dir, device="cpu", top_k=8,
                                                    threshold=0.3))
    dense = _reference(model_dir, texts, fast.max_length).toarray()
    for screen in QueryFastPath.SCREENS:
        fast.screen = screen
        for _ in _int8_kernels(fast) if screen == "int8" else [None]:
            for text, row in zip(texts, dense):
                terms, weights = fast.encode_one(text)
                kept = np.flatnonzero(row > 0.3)
                expected = np.sort(kept[np.argsort(-row[kept], kind="stable")[:8]])
                assert terms.tolist() == expected.tolist(), (screen, text)
                np.testing.assert_allclose(weights, row[expected], rtol=1e-4, atol=1e-5)


def _int8_kernels(fast):
    """Run the caller's loop body once per int8 matmul: oneDNN's prepacked one (where this
    CPU runs it) and `torch._int_mm`."""
    packed = fast.weight_i8_packed
    try:
        for kernel in ([packed] if packed is not None else []) + [None]:
            fast.weight_i8_packed = kernel
            yield "onednn" if kernel is not None else "int_mm"
    finally:
        fast.weight_i8_packed = packed


def test_lean_body_equals_the_encoder_on_real_queries(scifact_dir):
    """Lean body and the int8 screen (and each other screen) against `SpladeEncoder.
    encode_queries` of each query alone, same settings: the same terms, the same weights
    up to float32 rounding. (The lean body sums in another order than HF's modules: fused
    QKV, SDPA on (heads, L, d); measured differences reach 5e-6 absolute, 4e-5 relative, on
    weights of ~0.1, so the tolerance is 1e-4 relative / 1e-5 absolute; the HF body keeps
    test_serve_load's tighter one.)"""
    reference = SpladeEncoder("splade-tiny", device="cpu")
    fast = QueryFastPath.from_settings(reference.settings(), device="cpu")
    assert fast.lean is not None
    texts = _texts(scifact_dir, 150)
    expected = sp.vstack([reference.encode_queries([t]) for t in texts], format="csr")
    for screen in QueryFastPath.SCREENS:
        fast.screen = screen
        for _ in _int8_kernels(fast) if screen == "int8" else [None]:
            got = fast.encode_queries(texts)
            assert (got.indptr == expected.indptr).all() and (got.indices == expected.indices).all()
            np.testing.assert_allclose(got.data, expected.data, rtol=1e-4, atol=1e-5)


def _positive_terms(fast, hidden: torch.Tensor) -> set[int]:
    """Terms whose max logit, computed in float64 from the same hidden states, is > 0."""
    logits = hidden.double() @ fast.weight_rows.double().t() + fast.bias.double()
    return set(torch.nonzero(logits.amax(dim=0) > 0).squeeze(1).tolist())


def _screened(fast, hidden: torch.Tensor) -> dict[str, set[int]]:
    """Each screen's candidate terms (both int8 matmuls)."""
    out = {"bf16": set(fast._candidates_bf16(hidden).tolist())}        # noqa: SLF001
    for kernel in _int8_kernels(fast):
        out[kernel] = set(fast._candidates_int8(hidden).tolist())       # noqa: SLF001
    return out


def test_screens_keep_every_positive_term(scifact_dir):
    """The screens' candidate sets contain every term whose max logit is > 0, including on
    long queries (64 tokens) and on hidden states scaled up 30x; and they stay small."""
    fast = QueryFastPath.from_encoder(SpladeEncoder("splade-tiny", device="cpu"))
    texts = _texts(scifact_dir, 30) + [" ".join(_texts(scifact_dir, 12))]
    with torch.inference_mode():
        for text in texts:
            ids = fast.tokenizer(text, truncation=True, max_length=fast.max_length,
                                 return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]
            hidden = fast._hidden(ids)                           # noqa: SLF001
            for h in (hidden, hidden * 30):
                truth = _positive_terms(fast, h)
                for screen, candidates in _screened(fast, h).items():
                    assert truth <= candidates, (screen, sorted(truth - candidates)[:10])
                    assert len(candidates) < fast.vocab_size / 4, screen


def test_stacked_int8_screens_keep_every_positive_term_and_encode_alike(scifact_dir):
    """Queries screened together (one matmul, one scale for the stack, several stacks when
    they exceed SCREEN_ROWS): each query's candidates still contain every term whose max
    logit is > 0, including a query stacked with one 30x larger; and `encode_queries`
    gives the same vectors as `encode_one` of each query."""
    from pipeline.encode import query as query_module

    fast = QueryFastPath.from_encoder(SpladeEncoder("splade-tiny", device="cpu"))
    texts = _texts(scifact_dir, 40) + [" ".join(_texts(scifact_dir, 12))]
    with torch.inference_mode():
        hiddens = []
        for text in texts:
            ids = fast.tokenizer(text, truncation=True, max_length=fast.max_length,
                                 return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]
            hiddens.append(fast._hidden(ids))                   # noqa: SLF001
        hiddens.insert(3, hiddens[2] * 30)
        assert sum(h.shape[0] for h in hiddens) > query_module.SCREEN_ROWS   # two stacks at least
        for kernel in _int8_kernels(fast):
            stacked = fast._candidates_int8_many(hiddens)       # noqa: SLF001
            for hidden, candidates in zip(hiddens, stacked):
                truth = _positive_terms(fast, hidden)
                assert truth <= set(candidates.tolist()), kernel
    one_by_one = sp.vstack([sp.csr_matrix(
        (v, c, [0, len(c)]), shape=(1, fast.vocab_size)) for c, v in map(fast.encode_one, texts)],
        format="csr")
    together = fast.encode_queries(texts)
    assert (together.indptr == one_by_one.indptr).all()
    assert (together.indices == one_by_one.indices).all()
    np.testing.assert_allclose(together.data, one_by_one.data, rtol=1e-6, atol=0)


def test_screens_keep_terms_just_above_zero(scifact_dir):
    """The bound at its edge: the bias moved so that a third of the vocabulary has a max
    logit of +1e-4 (just kept), and another third -1e-4 (just dropped), on real queries."""
    fast = QueryFastPath.from_encoder(SpladeEncoder("splade-tiny", device="cpu"))
    weight, original = fast.weight_rows, fast.bias.clone()
    thirds = torch.arange(fast.vocab_size) % 3
    with torch.inference_mode():
        for text in _texts(scifact_dir, 10):
            ids = fast.tokenizer(text, truncation=True, max_length=fast.max_length,
                                 return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]
            hidden = fast._hidden(ids)                           # noqa: SLF001
            top = (hidden.double() @ weight.double().t()).amax(dim=0)
            shifted = torch.where(thirds == 0, -top + 1e-4,
                                  torch.where(thirds == 1, -top - 1e-4, original.double()))
            fast._load_head(weight, shifted.float())                # noqa: SLF001
            truth = _positive_terms(fast, hidden)
            assert len(truth) > fast.vocab_size / 4
            for screen, candidates in _screened(fast, hidden).items():
                assert truth <= candidates, (screen, sorted(truth - candidates)[:10])


def test_int8_screen_keeps_terms_at_its_worst_rounding():
    """Hidden states and weight rows built so that every element rounds down by 0.49 of a
    step, in the same direction: the int8 products then fall short of the true logit by
    most of the proven bound (checked below). The bias puts every true max logit at +0.01,
    so the integer estimate alone is negative for each term, and the screen must still keep
    all."""
    fast = QueryFastPath.from_encoder(SpladeEncoder("splade-tiny", device="cpu"))
    width, n_terms, n_tokens = 128, 600, 24
    gen = torch.Generator().manual_seed(7)
    levels = torch.randint(1, 127, (n_terms, 1), generator=gen).double()
    step = 0.01                                                      # t_v of every row
    weight = ((levels + 0.49) * step).repeat(1, width)               # rounds down to the level
    weight[:, 0] = 127 * step                                        # the row's max, exact
    scale = 0.02
    hidden = torch.full((n_tokens, width), (100 + 0.49) * scale, dtype=torch.float64)
    hidden[:, 0] = 127 * scale                                               # s, exact max
    true_top = (hidden @ weight.t()).amax(dim=0)
    bias = -true_top + 0.01
    integer = (torch.round(hidden / scale) @ torch.round(weight / step).t()).amax(dim=0) \
        * scale * step
    assert bool((integer + bias < 0).all()), "the construction must defeat the bare estimate"
    # The shortfall against the proven bound, in logits (query.py's docstring):
    # s max|r_l| |e_v| + max|h_l - s r_l| |w_v|, with the actual residuals.
    rounded = torch.round(hidden / scale)
    residual = weight - torch.round(weight / step) * step                   # e_v
    proven = (scale * torch.linalg.vector_norm(rounded, dim=1).max()
              * torch.linalg.vector_norm(residual, dim=1)
              + torch.linalg.vector_norm(hidden - rounded * scale, dim=1).max()
              * torch.linalg.vector_norm(weight, dim=1))
    tightness = float(((true_top - integer) / proven).max())
    assert 0.9 < tightness <= 1.0, tightness          # near the bound, and within it
    fast._load_head(weight.float(), bias.float())                            # noqa: SLF001
    truth = _positive_terms(fast, hidden.float())
    assert len(truth) == n_terms
    for kernel in _int8_kernels(fast):
        candidates = set(fast._candidates_int8(hidden.float()).tolist())      # noqa: SLF001
        assert truth <= candidates, (kernel, len(truth - candidates))


def test_other_architectures_keep_the_hf_body():
    """The lean body is only built for a plain float32 BertForMaskedLM."""
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    from pipeline.encode.lean_bert import LeanBert

    small = dict(vocab_size=100, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    assert LeanBert.from_model(BertForMaskedLM(BertConfig(num_hidden_layers=1, **small))) is not None
    assert LeanBert.from_model(BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_act="relu",
                                                          **small))) is None
    assert LeanBert.from_model(BertForMaskedLM(BertConfig(
        num_hidden_layers=1, position_embedding_type="relative_key", **small))) is None
    assert LeanBert.from_model(DistilBertForMaskedLM(DistilBertConfig(
        vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64))) is None


def test_single_text_tokenizer_cuts_like_the_hf_call(scifact_dir):
    """`SingleTextTokenizer` (the fast path's tokenizer) gives the ids of the Hugging Face
    tokenizer's own call on real queries and on edge cases, at two truncation lengths; a
    tokenizer without a Rust backend, and one whose call disagrees with its backend, keep
    the call."""
    from transformers import AutoTokenizer

    from pipeline.encode.tokens import SingleTextTokenizer

    folder = resolve_model("splade-tiny")
    hf = AutoTokenizer.from_pretrained(folder)
    texts = _texts(scifact_dir, 300) + [
        "", " ", "UPPER lower MiXeD", "e.g. COVID-19's R0 > 2.5 (p<0.05)", "[CLS] [SEP] [PAD]",
        "emoji 🧬🦠 and 中文 and ümlauts", "x" * 500, " ".join(["word"] * 200)]

    def hf_ids(tokenizer, text, max_length):
        return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]

    for max_length in (8, 64):
        single = SingleTextTokenizer(hf, max_length)
        assert single.backend is not None
        for text in texts:
            assert single(text) == hf_ids(hf, text, max_length), text

    class NoBackend:
        """A tokenizer with only a call (as a Python-only tokenizer has)."""

        def __call__(self, texts, **kwargs):
            return hf(texts, **kwargs)

    single = SingleTextTokenizer(NoBackend(), 64)
    assert single.backend is None
    assert [single(t) for t in texts[:20]] == [hf_ids(hf, t, 64) for t in texts[:20]]

    class Disagrees:
        """A fast tokenizer whose call appends an id its backend does not."""

        backend_tokenizer = hf.backend_tokenizer

        def __call__(self, texts, **kwargs):
            out = hf(texts, **kwargs)
            return {"input_ids": [ids + [999] for ids in out["input_ids"]]}

    single = SingleTextTokenizer(Disagrees(), 64)
    assert single.backend is None
    assert single("heart disease") == hf_ids(hf, "heart disease", 64) + [999]


def test_every_single_query_length_is_screened_once_at_load(monkeypatch):
    """oneDNN builds its int8 matmul per input shape on first use: the fast path runs the
    screen at load for every token count a single query can have, so no single query pays
    for building one (stacked micro-batches still build theirs on first use)."""
    seen: list[int] = []
    screen_rows = QueryFastPath._screen_rows                                 # noqa: SLF001

    def recording(self, hidden):
        seen.append(int(hidden.shape[0]))
        return screen_rows(self, hidden)

    monkeypatch.setattr(QueryFastPath, "_screen_rows", recording)
    fast = QueryFastPath.from_encoder(SpladeEncoder("splade-tiny", device="cpu"))
    if fast.screen != "int8" or fast.weight_i8_packed is None:
        pytest.skip("no oneDNN int8 matmul on this CPU: nothing is built per shape")
    assert set(range(1, fast.max_length + 1)) <= set(seen)
    seen.clear()
    fast.encode_one("what causes heart disease")
    assert len(seen) == 1                       # a query runs the screen once, as before
