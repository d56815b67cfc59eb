"""SpladeEncoder: parity with the plain naver/splade expression on real text and real models.

The real splade-tiny model on scifact, and small randomly initialised BERT, DistilBERT, RoBERTa
and XLM-R masked-LMs saved to disk and loaded back through `from_pretrained` (the generic
architecture path; nothing can be downloaded here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pipeline.data.records import parse_record
from pipeline.encode import SpladeEncoder
from pipeline.encode.mlm import MaskedLMBody, UnsupportedModel
from pipeline.encode.models import MODEL_ALIASES, ModelNotFound, resolve_model
from pipeline.encode.reference import encode_reference
from pipeline.encode.sparse import prune_to_csr

SENTENCES = [
    "what causes heart disease",
    "Aspirin reduces the risk of myocardial infarction in adults over fifty.",
    "",
    "Gene expression in the developing cortex " * 60,   # longer than max_length (256)
    "x",
    "The quick brown fox jumps over the lazy dog; the dog sleeps.",
]


def pattern(matrix: sp.csr_matrix) -> sp.csr_matrix:
    ones = matrix.copy()
    ones.data[:] = 1.0
    return ones


def assert_same_vectors(ours: sp.csr_matrix, reference: sp.csr_matrix, atol: float) -> None:
    """Identical non-zero pattern, values within `atol`."""
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert ours.has_canonical_format, "sorted indices, no duplicates"
    assert not (ours.data == 0).any(), "explicit zeros must be removed"
    assert (pattern(ours) != pattern(reference)).nnz == 0, "non-zero patterns differ"
    assert abs(ours - reference).max() <= atol


@pytest.fixture(scope="module")
def tiny() -> SpladeEncoder:
    return SpladeEncoder("splade-tiny", device="cpu")


@pytest.fixture(scope="module")
def scifact_docs(scifact_dir: Path) -> list[str]:
    texts = []
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
        for position, line in enumerate(f):
            texts.append(parse_record(json.loads(line), source="scifact", position=position)[1])
            if len(texts) == 64:
                break
    return texts


@pytest.fixture(scope="module")
def scifact_queries(scifact_dir: Path) -> list[str]:
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(64))]


# ---------------------------------------------------------------------------------- real model, real text

def test_scifact_documents_match_reference(tiny, scifact_docs):
    ours = tiny.encode(scifact_docs)
    reference = encode_reference("splade-tiny", scifact_docs, max_length=256)
    assert ours.shape == (64, 30522) and ours.nnz > 64 * 50
    assert_same_vectors(ours, reference, atol=1e-4)


def test_reference_runs_in_the_encoders_dtype(scifact_docs):
    """`encode_reference(..., device, dtype)` is the benchmark's like-for-like peer of a 16-bit
    encoder: the dtype takes effect, and the encoder agrees with it in that dtype."""
    docs = scifact_docs[:16]
    exact = encode_reference("splade-tiny", docs, max_length=256).toarray()
    plain16 = encode_reference("splade-tiny", docs, max_length=256, device="cpu",
                               dtype=torch.bfloat16).toarray()
    ours16 = SpladeEncoder("splade-tiny", device="cpu", dtype="bfloat16").encode(docs).toarray()
    assert not np.array_equal(plain16, exact)           # bf16 arithmetic, not float32
    for got in (plain16, ours16):
        assert np.abs(got - exact).max() <= 0.1 * exact.max()
        assert ((got > 0) & (exact > 0)).sum() >= 0.9 * (exact > 0).sum()


def test_scifact_queries_match_reference(tiny, scifact_queries):
    ours = tiny.encode_queries(scifact_queries)
    reference = encode_reference("splade-tiny", scifact_queries, max_length=64)
    assert_same_vectors(ours, reference, atol=1e-4)


def test_query_expansion_terms(tiny):
    row = tiny.encode_queries(["what causes heart disease"])
    top = tiny.id_to_term(row.indices[np.argsort(-row.data)][:6])
    assert {"heart", "disease"} <= set(top), top


# ---------------------------------------------------------------------------------- batching and split API

def test_length_buckets_keep_input_order(tiny):
    together = tiny.encode(SENTENCES)
    alone = sp.vstack([tiny.encode([text]) for text in SENTENCES], format="csr")
    assert_same_vectors(together, alone, atol=1e-5)


def test_split_api_equals_encode(tiny):
    tokens = tiny.tokenize(SENTENCES)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
    assert ids.shape == (len(SENTENCES), 256)  # padded to the batch max: the long text hits max_length
    assert mask.sum(axis=1).tolist() == [len(r) for r in tiny.tokenizer(
        SENTENCES, truncation=True, max_length=256)["input_ids"]]
    direct = tiny.encode(SENTENCES)
    assert_same_vectors(tiny.encode_tokenized(ids, mask), direct, atol=1e-5)
    hidden = tiny.hidden_states(ids[:2], mask[:2])
    assert hidden.shape == (2, 256, 128) and hidden.dtype == torch.float32
    # extra padding columns and torch inputs change nothing
    wide_ids = np.pad(ids[:2], ((0, 0), (0, 7)), constant_values=tiny.tokenizer.pad_token_id)
    wide_mask = np.pad(mask[:2], ((0, 0), (0, 7)))
    assert_same_vectors(tiny.encode_tokenized(torch.from_numpy(wide_ids), torch.from_numpy(wide_mask)),
                        direct[:2], atol=1e-5)


def test_queries_use_query_max_length(tiny):
    long_query = "does smoking cause lung cancer in people who never smoked " * 12
    tokens = tiny.tokenize([long_query, "short"], kind="query")
    assert tokens["input_ids"].shape == (2, 64)
    assert_same_vectors(tiny.encode_queries([long_query, "short"]),
                        tiny.encode_tokenized(**tokens), atol=1e-6)
    assert (tiny.encode_queries([long_query]) != tiny.encode([long_query])).nnz > 0


def test_empty_and_array_inputs(tiny):
    assert tiny.encode([]).shape == (0, tiny.vocab_size)
    assert tiny.encode_tokenized(np.zeros((0, 5), np.int64), np.zeros((0, 5), np.int64)).shape == (0, 30522)
    assert tiny.tokenize([])["input_ids"].shape == (0, 0)
    as_array = tiny.encode(np.array(SENTENCES[:2], dtype=object))
    assert_same_vectors(as_array, tiny.encode(SENTENCES[:2]), atol=0.0)


# ---------------------------------------------------------------------------------- pruning

def test_prune_to_csr_top_k_and_threshold():
    g = torch.Generator().manual_seed(0)
    dense = torch.relu(torch.randn(5, 300, generator=g))
    dense[2] = 0.0
    for top_k, threshold in [(None, 0.0), (None, 0.7), (10, 0.0), (10, 1.2), (1000, 0.5)]:
        out = prune_to_csr(dense, top_k, threshold)
        expected = dense.clone()
        if top_k is not None and top_k < dense.shape[1]:
            kth = torch.topk(dense, top_k, dim=1).values[:, -1:]
            expected[dense < kth] = 0.0
        expected[expected <= threshold] = 0.0
        assert out.has_canonical_format and not (out.data == 0).any()
        np.testing.assert_array_equal(out.toarray(), expected.numpy())
    with pytest.raises(FloatingPointError):
        prune_to_csr(torch.tensor([[1.0, float("nan")]]))


def test_encoder_top_k_threshold_and_settings(tiny):
    pruned = SpladeEncoder("splade-tiny", device="cpu", top_k=8, threshold=0.3)
    full = tiny.encode(SENTENCES).toarray()
    out = pruned.encode(SENTENCES)
    assert np.diff(out.indptr).max() <= 8
    expected = prune_to_csr(torch.from_numpy(full), 8, 0.3).toarray()
    np.testing.assert_allclose(out.toarray(), expected, atol=1e-6)
    a, b = tiny.settings(), pruned.settings()
    json.dumps(a)
    assert a["fingerprint"] == b["fingerprint"] and a["fingerprint"].startswith("sha256:")
    assert (b["top_k"], b["threshold"]) == (8, 0.3) and (a["top_k"], a["threshold"]) == (None, 0.0)
    assert a == {"model": "splade-tiny", "source": resolve_model("splade-tiny"), "fingerprint": a["fingerprint"],
                 "max_length": 256, "query_max_length": 64, "top_k": None, "threshold": 0.0,
                 "dtype": "float32", "vocab_size": 30522, "layout": "masked-lm", "architecture": "masked-lm",
                 "pooling": "max", "activation": "relu", "echo": False,
                 "query_encoder": {"type": "neural", "route": "document"}}


# ---------------------------------------------------------------------------------- generic architectures

def _tiny_config(arch: str):
    from transformers import BertConfig, DistilBertConfig, RobertaConfig, XLMRobertaConfig

    common = dict(vocab_size=30522, pad_token_id=0)
    if arch == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, **common)
    if arch == "distilbert":
        return DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, **common)
    cls = RobertaConfig if arch == "roberta" else XLMRobertaConfig
    # BERT's tokenizer with a RoBERTa-style model: positions start after padding_idx = 0.
    return cls(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=514, bos_token_id=101, eos_token_id=102, **common)


ARCHITECTURES = {"bert": "BertForMaskedLM", "distilbert": "DistilBertForMaskedLM",
                 "roberta": "RobertaForMaskedLM", "xlm-roberta": "XLMRobertaForMaskedLM"}


@pytest.fixture(scope="module")
def random_models(tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised masked-LMs (random bias too) with splade-tiny's tokenizer, saved to disk."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("splade-tiny"))
    folders = {}
    for i, arch in enumerate(ARCHITECTURES):
        torch.manual_seed(i)
        model = AutoModelForMaskedLM.from_config(_tiny_config(arch))
        assert type(model).__name__ == ARCHITECTURES[arch]
        with torch.no_grad():
            model.get_output_embeddings().bias.normal_(0.0, 0.2)
        folder = tmp_path_factory.mktemp(arch)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[arch] = folder
    return folders


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_generic_masked_lm_matches_reference(random_models, arch):
    folder = str(random_models[arch])
    encoder = SpladeEncoder(folder, device="cpu", max_length=48, batch_size=4)
    assert type(encoder.model).__name__ == ARCHITECTURES[arch]
    ours = encoder.encode(SENTENCES)
    reference = encode_reference(folder, SENTENCES, max_length=48)
    assert ours.nnz > 1000
    # Random weights put many maxima near 0: compare densely so a sign flip at 1e-7 cannot fail.
    np.testing.assert_allclose(ours.toarray(), reference.toarray(), rtol=1e-5, atol=1e-5)
    # batch_size 4 < 6 texts: several length buckets, input order restored on both paths
    split = encoder.encode_tokenized(**encoder.tokenize(SENTENCES))
    np.testing.assert_allclose(split.toarray(), ours.toarray(), rtol=1e-5, atol=1e-6)
    settings = encoder.settings()
    assert settings["source"] == folder and settings["fingerprint"].startswith("sha256:")


def test_fingerprint_tracks_model_content(random_models, tiny, tmp_path):
    import shutil

    from pipeline.encode.fingerprint import model_fingerprint

    bert = str(random_models["bert"])
    first = model_fingerprint(bert)
    assert first == model_fingerprint(bert) and first != tiny.settings()["fingerprint"]
    copy = tmp_path / "copy"
    shutil.copytree(bert, copy)
    assert model_fingerprint(str(copy)) == first  # content, not location
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(copy)) != first


def test_bf16_on_cpu_close_to_fp32(random_models):
    folder = str(random_models["bert"])
    fp32 = SpladeEncoder(folder, device="cpu", max_length=48)
    bf16 = SpladeEncoder(folder, device="cpu", max_length=48, dtype="bf16")
    assert fp32.settings()["dtype"] == "float32" and bf16.settings()["dtype"] == "bfloat16"
    np.testing.assert_allclose(bf16.encode(SENTENCES).toarray(), fp32.encode(SENTENCES).toarray(),
                               atol=5e-2)


def test_head_that_is_not_a_projection_is_refused(random_models):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertModel

    with pytest.raises(UnsupportedModel, match="no linear vocabulary projection"):
        MaskedLMBody(BertModel(_tiny_config("bert")))

    class ScaledLogits(torch.nn.Module):
        """A masked-LM whose logits are scaled after the projection (like a softcap)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            out.logits = out.logits * 2.0
            return out

    folder = str(random_models["bert"])
    body = MaskedLMBody(ScaledLogits(AutoModelForMaskedLM.from_pretrained(folder).eval()))
    probe = AutoTokenizer.from_pretrained(folder)(["some probe text"], return_tensors="pt")
    with pytest.raises(UnsupportedModel, match="more than a linear projection"), torch.inference_mode():
        body.check_split(probe["input_ids"], probe["attention_mask"])


# ---------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, error, message", [
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"top_k": 0}, ValueError, "top_k"),
    ({"threshold": -0.1}, ValueError, "threshold"),
    ({"dtype": "int8"}, ValueError, "dtype"),
    ({"max_length": 1}, ValueError, "max_length"),
    ({"max_length": 4096}, ValueError, "exceeds the model's maximum of 512"),
    ({"device": "not-a-device"}, ValueError, "device"),
    ({"model": "/no/such/model/dir"}, ModelNotFound, "does not exist"),
])
def test_bad_settings_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        SpladeEncoder(**{"model": "splade-tiny", "device": "cpu", **kwargs})


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(MODEL_ALIASES, "splade-missing", ("no_such_package_for_lsr", "model", "tiny"))
    with pytest.raises(ModelNotFound, match=r"lsr-pipeline\[tiny\]"):
        SpladeEncoder("splade-missing")


def test_bad_inputs_rejected(tiny):
    with pytest.raises(TypeError, match="sequence of strings"):
        tiny.encode("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tiny.encode(["ok", None])
    with pytest.raises(ValueError, match="kind"):
        tiny.tokenize(["x"], kind="passage")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.encode_tokenized(np.array([[101, 40000]]), np.array([[1, 1]]))
    with pytest.raises(ValueError, match="must both be"):
        tiny.encode_tokenized(np.array([[101, 102]]), np.array([[1, 1, 0]]))
    with pytest.raises(ValueError, match="at most 512"):
        tiny.encode_tokenized(np.full((1, 600), 101), np.ones((1, 600), np.int64))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.id_to_term([30522])


def test_settings_without_the_new_keys_still_load(tiny):
    """Manifests written before layouts were recorded (no pooling/activation/echo keys)."""
    from pipeline.encode import encoder_from_settings, query_encoder_from_settings

    old = {key: value for key, value in tiny.settings().items()
           if key not in ("layout", "architecture", "pooling", "activation", "echo", "query_encoder")}
    for rebuilt in (encoder_from_settings(old, device="cpu"), query_encoder_from_settings(old, device="cpu")):
        assert isinstance(rebuilt, SpladeEncoder) and rebuilt.settings() == tiny.settings()


def test_lazy_top_level_export():
    import pipeline

    assert pipeline.SpladeEncoder is SpladeEncoder


# ---------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# fp16 keeps 3 more mantissa bits than bf16: its bound is bf16's over ~8 (set before any GPU run)
@pytest.mark.parametrize("dtype, atol", [("float32", 1e-4), ("bfloat16", 0.1), ("float16", 0.02)])
def test_cuda_encoder_matches_reference(scifact_docs, dtype, atol):
    encoder = SpladeEncoder("splade-tiny", device="cuda", dtype=dtype)
    assert encoder.settings()["dtype"] == dtype
    ours = encoder.encode(scifact_docs)
    reference = encode_reference("splade-tiny", scifact_docs, max_length=256)
    if dtype == "float32":
        np.testing.assert_allclose(ours.toarray(), reference.toarray(), atol=atol)
    else:  # 16-bit model body: compare the vectors, not the bits
        dense, ref = ours.toarray(), reference.toarray()
        assert np.abs(dense - ref).max() <= atol * max(1.0, ref.max())
        overlap = ((dense > 0) & (ref > 0)).sum() / max(1, (ref > 0).sum())
        assert overlap > 0.9
