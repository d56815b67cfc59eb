"""Write an inference-free model: a SPLADE document model plus per-token IDF query weights.

The weights are BM25's IDF over a corpus tokenized as queries are (the tokenizer without
special tokens): idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)); special tokens get 0.
Two layouts can be written, both loaded by `SpladeEncoder` / `--model DIR`:

- "sentence-transformers": a SparseEncoder Router directory as sentence-transformers saves one
  (modules.json, router_config.json, query_0_SparseStaticEmbedding/ with the weights and the
  tokenizer, document_0_Transformer/ with the model, document_1_SpladePooling/);
- "idf-json": the document model's files plus idf.json (token -> weight), OpenSearch's layout.

`jobs/make_inference_free.py` runs this over a BEIR corpus.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Iterable

import numpy as np

from pipeline.encode.layouts import read_layout
from pipeline.encode.models import resolve_model
from pipeline.encode.tokens import load_tokenizer

logger = logging.getLogger(__name__)

LAYOUTS = ("sentence-transformers", "idf-json")
_ROUTER = "sentence_transformers.base.modules.router.Router"
_STATIC = "sentence_transformers.sparse_encoder.modules.sparse_static_embedding.SparseStaticEmbedding"
_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
_POOLING = "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"


def corpus_idf(tokenizer, texts: Iterable[str], vocab_size: int, batch: int = 1024) -> np.ndarray:
    """(V,) float32 BM25 IDF of every token over `texts` (tokenized without special tokens)."""
    df = np.zeros(vocab_size, dtype=np.int64)
    n_docs = 0
    chunk: list[str] = []

    def count(part: list[str]) -> None:
        for ids in tokenizer(part, add_special_tokens=False, return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"]:
            df[np.unique(np.asarray(ids, dtype=np.int64))] += 1

    for text in texts:
        chunk.append(text)
        n_docs += 1
        if len(chunk) == batch:
            count(chunk)
            chunk = []
    if chunk:
        count(chunk)
    if n_docs == 0:
        raise ValueError("corpus_idf needs at least one text")
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    special = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < vocab_size]
    idf[special] = 0.0
    return idf


def write_inference_free_model(document_model: str, texts: Iterable[str], out_dir: str,
                               layout: str = "sentence-transformers", pooling: str = "max",
                               activation: str = "relu") -> str:
    """Write `out_dir` (must not exist): `document_model`'s files with IDF query weights from `texts`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} already exists")
    source = resolve_model(document_model)
    doc_layout = read_layout(source)
    if doc_layout.kind not in ("masked-lm", "causal-lm"):
        raise ValueError(f"document model must be a plain Hugging Face folder, got a {doc_layout.kind} layout")
    tokenizer = load_tokenizer(source)
    with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
        vocab_size = int(json.load(f)["vocab_size"])
    idf = corpus_idf(tokenizer, texts, vocab_size)
    staging = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    if layout == "idf-json":
        shutil.copytree(source, staging)
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        table = {token: float(idf[i]) for i, token in enumerate(vocab) if token is not None and idf[i] > 0}
        with open(os.path.join(staging, "idf.json"), "w", encoding="utf-8") as f:
            json.dump(table, f, ensure_ascii=False)
    else:
        from safetensors.numpy import save_file

        os.makedirs(staging)
        doc_dir = os.path.join(staging, "document_0_Transformer")
        shutil.copytree(source, doc_dir)
        _write_json(os.path.join(doc_dir, "sentence_bert_config.json"),
                    {"transformer_task": "fill-mask", "max_seq_length": 512, "do_lower_case": False})
        _write_json(os.path.join(staging, "document_1_SpladePooling", "config.json"),
                    {"pooling_strategy": pooling, "activation_function": activation, "embedding_dimension": vocab_size})
        query_dir = os.path.join(staging, "query_0_SparseStaticEmbedding")
        os.makedirs(query_dir)
        tokenizer.save_pretrained(query_dir)
        save_file({"weight": idf}, os.path.join(query_dir, "model.safetensors"))
        _write_json(os.path.join(query_dir, "config.json"), {"frozen": True})
        _write_json(os.path.join(staging, "router_config.json"), {
            "types": {"query_0_SparseStaticEmbedding": _STATIC, "document_0_Transformer": _TRANSFORMER,
                      "document_1_SpladePooling": _POOLING},
            "structure": {"query": ["query_0_SparseStaticEmbedding"],
                          "document": ["document_0_Transformer", "document_1_SpladePooling"]},
            "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}},
        })
        _write_json(os.path.join(staging, "modules.json"),
                    [{"idx": 0, "name": "0", "path": "", "type": _ROUTER}])
        _write_json(os.path.join(staging, "config_sentence_transformers.json"),
                    {"model_type": "SparseEncoder", "similarity_fn_name": "dot"})
    os.replace(staging, out_dir)
    logger.info("wrote inference-free model %s (%s layout) from %s", out_dir, layout, source)
    return out_dir


def _write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
