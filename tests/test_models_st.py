"""sentence-transformers SparseEncoder layouts and inference-free query encoders.

Directories are written here as sentence-transformers saves them (modules.json, the pooling and
router configurations, module sub-folders) around small randomly initialised BERT masked-LMs
with splade-tiny's tokenizer; nothing is downloaded and sentence-transformers is not installed.
Every expectation is computed in the test from the documented expressions:

- SpladePooling (sentence-transformers docs; arXiv 2107.05720, 2109.10086, 2504.14839): on the
  full (B, L, V) MLM logits, masked, act = log1p(relu(x)) for "relu" and log1p(log1p(relu(x)))
  for "log1p_relu"; then max or sum over tokens; max_active_dims keeps the largest entries.
- SparseStaticEmbedding / OpenSearch doc-only: the query tokenized without special tokens, a
  binary presence vector (a repeated token counts once) times the per-token weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from typer.testing import CliRunner

from pipeline.encode import SpladeEncoder, StaticQueryEncoder, query_encoder_from_settings
from pipeline.encode.fingerprint import model_fingerprint
from pipeline.encode.layouts import UnsupportedLayout, read_layout
from pipeline.encode.models import resolve_model

TEXTS = [
    "what causes heart disease",
    "Aspirin reduces the risk of myocardial infarction in adults over fifty.",
    "",
    "Gene expression in the developing cortex " * 20,
    "heart heart heart disease",
]
MAX_LENGTH = 48


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("splade-tiny"))


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory, tokenizer) -> Path:
    """A random BERT masked-LM (random bias too) with splade-tiny's tokenizer."""
    from transformers import AutoModelForMaskedLM, BertConfig

    torch.manual_seed(7)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, pad_token_id=0)
    model = AutoModelForMaskedLM.from_config(config)
    with torch.no_grad():
        model.get_output_embeddings().bias.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("mlm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def copy_folder(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def st_splade_folder(root: Path, mlm: Path, pooling: str, activation: str, max_active_dims: int | None = None,
                     legacy: bool = True) -> Path:
    """A SparseEncoder saved as sentence-transformers 5.x does: [MLMTransformer, SpladePooling]."""
    copy_folder(mlm, root)
    transformer = ("sentence_transformers.sparse_encoder.models.MLMTransformer" if legacy
                   else "sentence_transformers.base.modules.transformer.Transformer")
    write_json(root / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": transformer},
        {"idx": 1, "name": "1", "path": "1_SpladePooling",
         "type": "sentence_transformers.sparse_encoder.models.SpladePooling"},
    ])
    write_json(root / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False,
                                                    **({} if legacy else {"transformer_task": "fill-mask"})})
    write_json(root / "1_SpladePooling" / "config.json", {"pooling_strategy": pooling,
                                                          "activation_function": activation,
                                                          "word_embedding_dimension": 30522})
    st_config = {"model_type": "SparseEncoder", "similarity_fn_name": "dot", "prompts": {}}
    if max_active_dims is not None:
        st_config["max_active_dims"] = max_active_dims
    write_json(root / "config_sentence_transformers.json", st_config)
    return root


def static_weights(vocab_size: int = 30522, seed: int = 3) -> np.ndarray:
    g = np.random.default_rng(seed)
    weights = g.uniform(0.1, 5.0, vocab_size).astype(np.float32)
    weights[g.random(vocab_size) < 0.2] = 0.0      # tokens without weight (absent from an idf table)
    return weights


def st_router_folder(root: Path, mlm: Path, tokenizer, weights: np.ndarray, activation: str = "log1p_relu") -> Path:
    """A Router SparseEncoder: query -> SparseStaticEmbedding, document -> MLMTransformer + SpladePooling."""
    from safetensors.numpy import save_file

    root.mkdir()
    write_json(root / "modules.json", [{"idx": 0, "name": "0", "path": "",
                                        "type": "sentence_transformers.models.Router"}])
    write_json(root / "router_config.json", {
        "types": {"query_0_SparseStaticEmbedding": "sentence_transformers.sparse_encoder.models.SparseStaticEmbedding",
                  "document_0_MLMTransformer": "sentence_transformers.sparse_encoder.models.MLMTransformer",
                  "document_1_SpladePooling": "sentence_transformers.sparse_encoder.models.SpladePooling"},
        "structure": {"query": ["query_0_SparseStaticEmbedding"],
                      "document": ["document_0_MLMTransformer", "document_1_SpladePooling"]},
        "parameters": {"default_route": "document", "allow_empty_key": True},
    })
    query = root / "query_0_SparseStaticEmbedding"
    query.mkdir()
    tokenizer.save_pretrained(query)
    save_file({"weight": weights}, str(query / "model.safetensors"))
    write_json(query / "config.json", {"frozen": True})
    copy_folder(mlm, root / "document_0_MLMTransformer")
    write_json(root / "document_0_MLMTransformer" / "sentence_bert_config.json", {"max_seq_length": 512,
                                                                                  "do_lower_case": False})
    write_json(root / "document_1_SpladePooling" / "config.json",
               {"pooling_strategy": "max", "activation_function": activation, "word_embedding_dimension": 30522})
    write_json(root / "config_sentence_transformers.json", {"model_type": "SparseEncoder",
                                                            "similarity_fn_name": "dot"})
    return root


# ---------------------------------------------------------------------------------- the documented expressions

@torch.inference_mode()
def splade_pooling_expected(folder: Path, texts: list[str], pooling: str, activation: str,
                            max_length: int = MAX_LENGTH, max_active_dims: int | None = None) -> np.ndarray:
    """SpladePooling as documented, on the full logits of the Hugging Face model (float64)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder, dtype=torch.float32).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    logits = model(**batch).logits.double()
    x = torch.log1p(torch.relu(logits * batch["attention_mask"].unsqueeze(-1)))
    if activation == "log1p_relu":
        x = torch.log1p(x)
    pooled = x.max(dim=1).values if pooling == "max" else x.sum(dim=1)
    if max_active_dims is not None:
        top = torch.topk(pooled.abs(), max_active_dims, dim=1).indices
        pooled = torch.zeros_like(pooled).scatter_(1, top, pooled.gather(1, top))
    return pooled.numpy()


def presence_times_weights(tok, texts: list[str], weights: np.ndarray) -> np.ndarray:
    """Inference-free query vectors: binary token presence (no special tokens) times the weights."""
    out = np.zeros((len(texts), weights.size))
    for row, text in enumerate(texts):
        presence = np.zeros(weights.size)
        presence[tok(text, add_special_tokens=False)["input_ids"]] = 1.0
        out[row] = presence * weights
    return out


# ---------------------------------------------------------------------------------- MLM + SpladePooling

@pytest.mark.parametrize("pooling, activation", [("max", "relu"), ("max", "log1p_relu"),
                                                 ("sum", "relu"), ("sum", "log1p_relu")])
def test_st_splade_pooling_matches_documented_expression(tmp_path, mlm_folder, pooling, activation):
    folder = st_splade_folder(tmp_path / "st", mlm_folder, pooling, activation, legacy=pooling == "max")
    encoder = SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH, query_max_length=MAX_LENGTH,
                            batch_size=2)
    settings = encoder.settings()
    assert (settings["layout"], settings["pooling"], settings["activation"]) == \
        ("sentence-transformers", pooling, activation)
    assert settings["query_encoder"] == {"type": "neural", "route": "document"}
    expected = splade_pooling_expected(folder, TEXTS, pooling, activation)
    ours = encoder.encode(TEXTS)
    assert ours.has_canonical_format and not (ours.data == 0).any()
    assert (expected > 0).sum() > 1000
    np.testing.assert_allclose(ours.toarray(), expected, rtol=1e-5, atol=1e-5)
    # queries take the same route (symmetric model), and the split API agrees
    np.testing.assert_allclose(encoder.encode_queries(TEXTS).toarray(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_tokenized(**encoder.tokenize(TEXTS)).toarray(), expected,
                               rtol=1e-5, atol=1e-5)


def test_st_max_active_dims_is_the_default_top_k(tmp_path, mlm_folder):
    folder = st_splade_folder(tmp_path / "st", mlm_folder, "max", "relu", max_active_dims=16)
    encoder = SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH)
    assert encoder.settings()["top_k"] == 16
    ours = encoder.encode(TEXTS[:2] + TEXTS[3:])
    expected = splade_pooling_expected(folder, TEXTS[:2] + TEXTS[3:], "max", "relu", max_active_dims=16)
    assert np.diff(ours.indptr).max() == 16
    np.testing.assert_allclose(ours.toarray(), expected, rtol=1e-5, atol=1e-5)
    # an explicit top_k overrides it
    assert SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH, top_k=4).settings()["top_k"] == 4


# ---------------------------------------------------------------------------------- Router, inference-free

def test_st_router_with_sparse_static_embedding(tmp_path, mlm_folder, tokenizer):
    weights = static_weights()
    weights[tokenizer.convert_tokens_to_ids("heart")] = 2.5
    folder = st_router_folder(tmp_path / "router", mlm_folder, tokenizer, weights)
    layout = read_layout(str(folder))
    assert layout.inference_free and layout.document.activation == "log1p_relu"
    encoder = SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH, query_max_length=64)
    assert encoder.inference_free
    settings = encoder.settings()
    assert settings["query_encoder"] == {"type": "inference-free", "weights": "query_0_SparseStaticEmbedding"}
    assert settings["layout"] == "sentence-transformers" and settings["activation"] == "log1p_relu"
    # documents: the document route (MLM + SpladePooling log1p_relu, max)
    doc_folder = folder / "document_0_MLMTransformer"
    np.testing.assert_allclose(encoder.encode(TEXTS).toarray(),
                               splade_pooling_expected(doc_folder, TEXTS, "max", "log1p_relu"), rtol=1e-5, atol=1e-5)
    # queries: presence times weights, no network (the model is never called)
    queries = ["what causes heart disease", "heart heart heart", "", "Vitamin D and bone fractures?"]
    calls = []
    handle = encoder.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        ours = encoder.encode_queries(queries)
    finally:
        handle.remove()
    assert not calls, "an inference-free query must not run the network"
    expected = presence_times_weights(tokenizer, queries, weights)
    np.testing.assert_allclose(ours.toarray(), expected, rtol=1e-6, atol=0)
    assert ours.has_canonical_format and ours.dtype == np.float32
    assert ours[1].nnz == 1  # a repeated token counts once
    with pytest.raises(ValueError, match="encode_queries"):
        encoder.tokenize(queries, kind="query")
    # the light query encoder rebuilt from the settings (what search, evaluate and serve use)
    light = query_encoder_from_settings(json.loads(json.dumps(settings)))
    assert isinstance(light, StaticQueryEncoder) and light.settings() == settings
    assert (light.encode_queries(queries) != ours).nnz == 0
    # a separate tokenize stage (the indexing job) gets the document route's tokenizer
    from pipeline.encode.tokens import load_tokenizer, token_ids

    ids = token_ids(load_tokenizer(str(folder)), TEXTS, MAX_LENGTH)
    np.testing.assert_array_equal(encoder.tokenize(TEXTS)["attention_mask"].sum(axis=1), [len(r) for r in ids])
    # the fingerprint covers the module sub-folders: new static weights, another model
    from safetensors.numpy import save_file

    save_file({"weight": weights * 2}, str(folder / "query_0_SparseStaticEmbedding" / "model.safetensors"))
    assert model_fingerprint(str(folder)) != settings["fingerprint"]


def test_opensearch_idf_json_beside_a_document_model(tmp_path, mlm_folder, tokenizer):
    folder = copy_folder(mlm_folder, tmp_path / "doc-only")
    vocab = tokenizer.get_vocab()
    rng = np.random.default_rng(11)
    chosen = ["heart", "disease", "causes", "what", "vitamin", "d", "bone", "##s", "the"]
    table = {token: float(rng.uniform(0.5, 8.0)) for token in chosen}
    write_json(folder / "idf.json", table)
    encoder = SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH)
    settings = encoder.settings()
    assert settings["layout"] == "idf-json" and settings["query_encoder"]["type"] == "inference-free"
    weights = np.zeros(30522)
    for token, value in table.items():
        weights[vocab[token]] = value
    queries = ["What causes heart disease?", "vitamin d bones and the heart", "nothing known here"]
    np.testing.assert_allclose(encoder.encode_queries(queries).toarray(),
                               presence_times_weights(tokenizer, queries, weights), rtol=1e-6, atol=0)
    # documents: the naver/splade expression (max, log1p(relu)) of the masked-LM
    np.testing.assert_allclose(encoder.encode(TEXTS).toarray(),
                               splade_pooling_expected(folder, TEXTS, "max", "relu"), rtol=1e-5, atol=1e-5)
    # the fingerprint covers idf.json: other weights, another model
    before = model_fingerprint(str(folder))
    write_json(folder / "idf.json", {**table, "heart": 99.0})
    assert model_fingerprint(str(folder)) != before
    from pipeline.encode.settings import EncoderMismatch

    with pytest.raises(EncoderMismatch, match="not the model the index"):
        query_encoder_from_settings(settings)


def test_static_query_encoder_top_k_threshold_and_truncation(tokenizer):
    weights = static_weights()
    encoder = StaticQueryEncoder(tokenizer, weights, max_length=3, top_k=2, threshold=0.5)
    out = encoder.encode_queries(["heart disease causes vitamin bone", "x"])
    ids = tokenizer("heart disease causes", add_special_tokens=False)["input_ids"]   # truncated at 3 tokens
    kept = sorted((i for i in set(ids) if weights[i] > 0.5), key=lambda i: -weights[i])[:2]
    np.testing.assert_array_equal(out[0].indices, sorted(kept))
    np.testing.assert_allclose(out[0].data, weights[sorted(kept)])
    assert encoder.encode_queries([]).shape == (0, 30522)
    with pytest.raises(TypeError, match="sequence of strings"):
        encoder.encode_queries("one string")


# ---------------------------------------------------------------------------------- errors

def test_unsupported_layouts_are_named(tmp_path, mlm_folder):
    folder = st_splade_folder(tmp_path / "st", mlm_folder, "max", "relu")
    write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.sparse_encoder.models.MLMTransformer"},
        {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": "sentence_transformers.sparse_encoder.models.SpladePooling"},
        {"idx": 2, "name": "2", "path": "2_SparseAutoEncoder", "type": "sentence_transformers.sparse_encoder.models.SparseAutoEncoder"},
    ])
    with pytest.raises(UnsupportedLayout, match="SparseAutoEncoder"):
        SpladeEncoder(str(folder), device="cpu")
    write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.sparse_encoder.models.MLMTransformer"},
        {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": "sentence_transformers.sparse_encoder.models.SpladePooling"},
    ])
    write_json(folder / "1_SpladePooling" / "config.json", {"pooling_strategy": "mean"})
    with pytest.raises(UnsupportedLayout, match="pooling_strategy 'mean'"):
        SpladeEncoder(str(folder), device="cpu")
    with pytest.raises(ValueError, match="activation"):
        SpladeEncoder(str(mlm_folder), device="cpu", activation="gelu")


# ---------------------------------------------------------------------------------- lsr evaluate

def test_lsr_evaluate_with_an_inference_free_router_model(tmp_path, mlm_folder, tokenizer):
    from test_evaluate_units import write_collection

    from pipeline.cli import app

    folder = st_router_folder(tmp_path / "router", mlm_folder, tokenizer, static_weights())
    collection = write_collection(tmp_path / "tiny")
    result = CliRunner().invoke(app, ["evaluate", str(collection), "--model", str(folder), "--exact", "--json",
                                      "--k", "100"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    report = report["results"][0] if "results" in report else report
    assert report["model"]["query_encoder"]["type"] == "inference-free"
    assert report["efficiency"]["latency_ms_mean"] > 0


# ---------------------------------------------------------------------------------- a committed index

def test_lsr_search_on_an_inference_free_index(tmp_path, mlm_folder, tokenizer):
    """An index whose manifest records an inference-free model: `lsr search` and `lsr evaluate --index`
    encode queries with the static weights and match exact scoring written here."""
    from test_evaluate_units import write_collection

    from pipeline.cli import app
    from pipeline.evaluate.backends import ShardedBackend
    from pipeline.testing.direct_writer import write_generation

    weights = static_weights()
    folder = st_router_folder(tmp_path / "router", mlm_folder, tokenizer, weights)
    encoder = SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH)
    collection = write_collection(tmp_path / "tiny")
    rows = [json.loads(line) for line in (collection / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    doc_ids = [str(r["_id"]) for r in rows]
    docs = encoder.encode([(r.get("title", "") + " " + r["text"]).strip() for r in rows])
    root = tmp_path / "index"
    write_generation(str(root), 1, doc_ids, docs, 2, encoder.settings(), index_kind="exact")
    query = "what causes heart disease"
    result = CliRunner().invoke(app, ["search", str(root), query, "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["results"][0]["hits"]
    scores = (sp.csr_matrix(presence_times_weights(tokenizer, [query], weights)) @ docs.T).toarray()[0]
    best = np.argsort(-scores, kind="stable")[:len(hits)]
    assert [h["doc_id"] for h in hits] == [doc_ids[i] for i in best if scores[i] > 0][:len(hits)]
    np.testing.assert_allclose([h["score"] for h in hits], scores[best][:len(hits)], rtol=1e-5)
    backend = ShardedBackend.open(str(root), exact=True)
    assert isinstance(backend.query_encoder(), StaticQueryEncoder)
    result = CliRunner().invoke(app, ["evaluate", str(collection), "--index", str(root), "--json", "--k", "100"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("pooling, activation, fast", [("max", "relu", True), ("sum", "relu", False),
                                                       ("max", "log1p_relu", False)])
def test_served_query_encoder_matches_the_layout(tmp_path, mlm_folder, pooling, activation, fast):
    """The query encoder search and every Serve placement load (`load_query_encoder`) computes the
    documented expression of the model's layout: the single-query fast path only where it applies."""
    from pipeline.encode.query import QueryFastPath
    from pipeline.serve.encoder import load_query_encoder

    folder = st_splade_folder(tmp_path / "st", mlm_folder, pooling, activation, legacy=pooling == "max")
    settings = SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH,
                             query_max_length=MAX_LENGTH).settings()
    served = load_query_encoder(settings)
    assert isinstance(served, QueryFastPath) == fast
    queries = [t for t in TEXTS if t]
    expected = splade_pooling_expected(folder, queries, pooling, activation)
    np.testing.assert_allclose(served.encode_queries(queries).toarray(), expected, rtol=1e-4, atol=1e-5)


def test_served_query_encoder_of_an_inference_free_model_runs_no_network(tmp_path, mlm_folder, tokenizer):
    from pipeline.serve.encoder import load_query_encoder

    weights = static_weights()
    folder = st_router_folder(tmp_path / "router", mlm_folder, tokenizer, weights)
    settings = SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH).settings()
    served = load_query_encoder(settings)
    queries = ["what causes heart disease", "heart heart heart disease"]
    np.testing.assert_allclose(served.encode_queries(queries).toarray(),
                               presence_times_weights(tokenizer, queries, weights), rtol=1e-6)
